"""The Pareto front of a sweep, and its CSV and plot.

A point is on the front when it is valid, fits the device (when the space names one and
resources were estimated), and no other such point is at least as fast
(``tok_s_projected``) and at most as costly in every cost while better in one. The
costs are the whole core's DSP and LUT counts; a sweep without resource estimates
(``resources: none``) ranks by the engine's peak MACs per cycle instead, and says so.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from hdl.estimate import device_fit

__all__ = ["costs_of", "fits", "pareto_front", "write_csv", "write_plot", "CSV_COLUMNS"]

#: Result columns of the CSV after the point's own fields (missing values left empty).
CSV_COLUMNS = ("valid", "on_front", "fits", "tok_s_projected", "decode_cycles",
               "prefill_ms_projected", "prefill_cycles", "dsp", "lut", "ff", "bram", "uram",
               "peak_macs_per_cycle", "clock_mhz", "config_hash", "cached", "key", "reason")


def costs_of(rows) -> tuple:
    """The cost columns the front minimizes: DSP and LUT when every valid row has them,
    else the peak MACs per cycle."""
    valid = [r for r in rows if r["valid"]]
    if valid and all("dsp" in r and "lut" in r for r in valid):
        return ("dsp", "lut")
    return ("peak_macs_per_cycle",)


def fits(row, device) -> bool | None:
    """Whether a valid row's estimate fits ``device`` (None: no device or no estimate)."""
    if device is None or not row["valid"] or "dsp" not in row:
        return None
    return device_fit(row, device)["fits"]


def pareto_front(rows, device=None) -> list[bool]:
    """For each row, whether it is on the front (see the module docstring)."""
    costs = costs_of(rows)
    cand = [i for i, r in enumerate(rows) if r["valid"] and fits(r, device) is not False]

    def dominates(a, b):
        ra, rb = rows[a], rows[b]
        no_worse = ra["tok_s_projected"] >= rb["tok_s_projected"] and all(
            ra[c] <= rb[c] for c in costs)
        better = ra["tok_s_projected"] > rb["tok_s_projected"] or any(
            ra[c] < rb[c] for c in costs)
        return no_worse and better

    front = {i for i in cand if not any(dominates(j, i) for j in cand if j != i)}
    return [i in front for i in range(len(rows))]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_csv(rows, front, device, path) -> None:
    """One line per point: its varied fields, then :data:`CSV_COLUMNS`."""
    fields = list(dict.fromkeys(k for r in rows for k in r["point"]))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields + list(CSV_COLUMNS))
    for r, on in zip(rows, front):
        extra = {"on_front": on, "fits": fits(r, device)}
        w.writerow([r["point"].get(f, "") for f in fields] + [
            "" if (v := extra.get(c, r.get(c))) is None else v for c in CSV_COLUMNS])
    _atomic_write(Path(path), buf.getvalue().encode())


def write_plot(rows, front, path, title: str = "") -> None:
    """Projected tokens/s against each cost, the front highlighted (a PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costs = costs_of(rows)
    fig, axes = plt.subplots(1, len(costs), figsize=(5.5 * len(costs), 4.2), squeeze=False)
    for ax, c in zip(axes[0], costs):
        pts = [(r[c], r["tok_s_projected"], on) for r, on in zip(rows, front) if r["valid"]]
        ax.scatter([x for x, _, on in pts if not on], [y for _, y, on in pts if not on],
                   s=18, color="0.6", label="point")
        fr = sorted((x, y) for x, y, on in pts if on)
        ax.plot([x for x, _ in fr], [y for _, y in fr], "o-", color="C3", label="Pareto front")
        ax.set_xlabel({"dsp": "DSP (Yosys estimate)", "lut": "LUT (Yosys estimate)",
                       "peak_macs_per_cycle": "peak MACs per cycle"}[c])
        ax.set_ylabel("decode tokens/s (projected)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic_write(Path(path), buf.getvalue())
