"""``airfoil report``: an HTML page of where compiled LLMs' decode cycles and bytes go.

For one or more folders compiled for the same config (one per recipe, say), the page
shows, from the ISA simulator's traced runs (:mod:`sim.profile`):

* a table per folder: decode step cycles and tokens/s at a position, bytes read per token,
  the fraction of the roofline tokens/s those bytes allow, weight bits per weight;
* the config's roofline (compute ceiling ``2 x peak MACs x clock``, bandwidth ceiling all
  channels' bytes per second) with each section's operating point;
* busy cycles per section and per unit;
* the memory channels' utilization across the decode step;
* tokens/s against context length, beside the roofline of the bytes each step reads.

The figures are matplotlib PNGs beside ``index.html`` in the output folder.
"""

from __future__ import annotations

import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from airfoil.config import AccelConfig  # noqa: E402
from airfoil.folder import weight_bits_per_weight  # noqa: E402
from airfoil.isa import Unit  # noqa: E402

from .profile import (StepProfile, bandwidth_timeline, context_sweep,  # noqa: E402
                      peak_bytes_per_cycle, profile_decode)

__all__ = ["FolderReport", "measure_folder", "report_files", "REPORT_MARKER"]

#: The file that marks a report folder (its data as JSON).
REPORT_MARKER = "report.json"


@dataclass
class FolderReport:
    """What the page shows of one folder."""

    name: str
    step: StepProfile
    sweep: list                 # (position, decode step cycles)
    weight_bits_per_weight: float

    def tokens_per_s(self, config: AccelConfig, cycles: int | None = None) -> float:
        return config.clock_mhz * 1e6 / (cycles or self.step.cycles)

    def roofline_tokens_per_s(self, config: AccelConfig) -> float:
        """Tokens/s if every byte the step reads came at the channels' full rate."""
        return config.clock_mhz * 1e6 * peak_bytes_per_cycle(config) / self.step.bytes_read


def measure_folder(folder, config: AccelConfig, position: int | None = None,
                   points: int = 8) -> FolderReport:
    """Profile a decode step at ``position`` (default: the last position the folder
    holds) and sweep the decode step over ``points`` positions."""
    mm = folder.manifest["model"]
    pos = mm["max_positions"] - 1 if position is None else position
    return FolderReport(Path(folder.path).name, profile_decode(folder, config, pos),
                        context_sweep(folder, config, points),
                        weight_bits_per_weight(folder.manifest))


def _roofline(reports, config) -> bytes:
    peak_ops = 2 * config.peak_macs_per_cycle * config.clock_mhz * 1e6
    bw = peak_bytes_per_cycle(config) * config.clock_mhz * 1e6
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    knee = peak_ops / bw
    xs = [knee / 1e3, knee, knee * 1e2]
    ax.plot(xs, [min(peak_ops, x * bw) / 1e9 for x in xs], "k-", lw=1,
            label=f"ceilings: {bw / 1e9:.1f} GB/s, {peak_ops / 1e9:.1f} GOP/s")
    for r in reports:
        pts = [(2 * c.macs / c.bytes_read, 2 * c.macs / c.cycles * config.clock_mhz / 1e3)
               for c in r.step.section_costs() if c.macs and c.bytes_read and c.cycles]
        if pts:
            ax.scatter(*zip(*pts), s=14, label=r.name)
    ax.set(xscale="log", yscale="log", xlabel="operations per byte read",
           ylabel="GOP/s", title=f"roofline of {config.name} (each point a section)")
    ax.legend(fontsize=7)
    return _png(fig)


def _units(report) -> bytes:
    costs = report.step.section_costs()
    fig, ax = plt.subplots(figsize=(max(6.4, 0.35 * len(costs)), 4.2))
    x = range(len(costs))
    width = 0.8 / len(Unit)
    for j, u in enumerate(Unit):
        ax.bar([i + j * width for i in x], [c.busy[u.name] for c in costs], width,
               label=u.name)
    ax.plot([i + 0.4 - width / 2 for i in x], [c.cycles for c in costs], "k_", ms=12,
            label="section span")
    ax.set_xticks([i + 0.4 - width / 2 for i in x], [c.name for c in costs], rotation=60,
                  fontsize=7)
    ax.set(ylabel="cycles", title=f"{report.name}: busy cycles per section and unit "
                                  f"(decode at position {report.step.position})")
    ax.legend(fontsize=7)
    return _png(fig)


def _bandwidth(report, config) -> bytes:
    t, u = bandwidth_timeline(report.step, config)
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.step(t, u, where="post")
    ax.set(xlabel="cycle of the decode step", ylabel="share of peak bandwidth",
           ylim=(0, 1.05), title=f"{report.name}: memory bandwidth used")
    return _png(fig)


def _context(reports, config) -> bytes:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in reports:
        pos, cyc = zip(*r.sweep)
        ax.plot([p + 1 for p in pos], [r.tokens_per_s(config, c) for c in cyc], "o-",
                ms=3, label=r.name)
    ax.set(xscale="log", xlabel="context (tokens)", ylabel="decode tokens/s",
           title=f"decode speed on {config.name} at {config.clock_mhz:g} MHz")
    ax.legend(fontsize=7)
    return _png(fig)


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _row(cells, tag="td"):
    return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"


def report_files(reports: list[FolderReport], config: AccelConfig) -> dict[str, bytes]:
    """The report folder's files: ``index.html``, its PNGs and :data:`REPORT_MARKER`."""
    files = {"roofline.png": _roofline(reports, config),
             "context.png": _context(reports, config)}
    rows, data = [], []
    for i, r in enumerate(reports):
        files[f"units_{i}.png"] = _units(r)
        files[f"bandwidth_{i}.png"] = _bandwidth(r, config)
        tok, roof = r.tokens_per_s(config), r.roofline_tokens_per_s(config)
        item = {"folder": r.name, "position": r.step.position, "cycles": r.step.cycles,
                "tokens_per_s": tok, "bytes_read": r.step.bytes_read,
                "roofline_tokens_per_s": roof, "roofline_fraction": tok / roof,
                "weight_bits_per_weight": r.weight_bits_per_weight,
                "sections": [{"name": c.name, "cycles": c.cycles, "macs": c.macs,
                              "bytes_read": c.bytes_read, "busy": c.busy}
                             for c in r.step.section_costs()],
                "context_sweep": [list(p) for p in r.sweep]}
        data.append(item)
        rows.append(_row([r.name, r.step.position, f"{r.step.cycles:,}", f"{tok:,.1f}",
                          f"{r.step.bytes_read:,}", f"{roof:,.1f}", f"{tok / roof:.3f}",
                          f"{r.weight_bits_per_weight:.2f}"]))
    head = _row(["folder", "position", "decode cycles", "tokens/s", "bytes read",
                 "roofline tokens/s", "roofline fraction", "weight bits/weight"], "th")
    per = "".join(f"<h2>{html.escape(r.name)}</h2><img src='units_{i}.png'>"
                  f"<img src='bandwidth_{i}.png'>" for i, r in enumerate(reports))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>airfoil report: "
            f"{html.escape(config.name)}</title><style>body{{font-family:sans-serif}}"
            f"td,th{{padding:2px 8px;text-align:right}}</style></head><body>"
            f"<h1>Decode on {html.escape(config.name)} ({config.config_hash}), "
            f"{config.clock_mhz:g} MHz</h1>"
            f"<p>Cycles are the ISA simulator's cycle model, the count the RTL tests check "
            f"the core against. Peak: {config.peak_macs_per_cycle} MACs and "
            f"{peak_bytes_per_cycle(config):.1f} bytes per cycle.</p>"
            f"<table>{head}{''.join(rows)}</table>"
            f"<img src='roofline.png'><img src='context.png'>{per}</body></html>")
    files["index.html"] = page.encode()
    files[REPORT_MARKER] = (json.dumps({"config": config.name, "config_hash": config.config_hash,
                                        "folders": data}, indent=1) + "\n").encode()
    return files
