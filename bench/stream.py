"""Figures of the streamed MV path: decode unit -> sparse chains (``airfoil bench``).

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``stream``.
"""

from __future__ import annotations

from airfoil.config import load_config
from sim.measure.stream import FORMATS, stream_runs

__all__ = ["FIGURES", "figures", "stream_figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "decode_weight_port_utilization_<fmt>": "fraction",
    "sparse_2of4_streamed_cycle_ratio": "ratio",
    "sparse_2of4_streamed_bytes_ratio": "ratio",
    "block_skip_streamed_cycle_ratio": "ratio",
    "block_skip_streamed_bytes_ratio": "ratio",
}


def stream_figures(cfg, runs: dict) -> dict:
    """The figures (module docstring) from :func:`stream_runs` results."""
    h = cfg.config_hash
    out = {}
    for f in FORMATS:
        r = runs.get(f"{f}-dense")
        if r is None:
            continue
        name = f"decode_weight_port_utilization_{f}"
        out[name] = r["useful"] / r["cycles"]
        out.update({f"{name}_cycles": r["cycles"], f"{name}_shape": r["shape"],
                    f"{name}_config_hash": h})
    d, s = runs["int4-dense"], runs["int4-2:4"]
    name = "sparse_2of4_streamed_cycle_ratio"
    out[name] = s["cycles"] / d["cycles"]
    out.update({f"{name}_cycles": s["cycles"], f"{name}_dense_cycles": d["cycles"],
                f"{name}_shape": s["shape"], f"{name}_config_hash": h})
    out["sparse_2of4_streamed_bytes_ratio"] = s["image_bytes"] / d["image_bytes"]
    b = runs["int4-block"]
    name = "block_skip_streamed_cycle_ratio"
    out[name] = b["cycles"] / d["cycles"]
    out.update({f"{name}_cycles": b["cycles"], f"{name}_dense_cycles": d["cycles"],
                f"{name}_shape": b["shape"], f"{name}_config_hash": h})
    out["block_skip_streamed_bytes_ratio"] = b["image_bytes"] / d["image_bytes"]
    return out


def figures(args, log) -> dict:
    """Measure the streamed figures on ``u280_slice`` (see the module docstring)."""
    cfg = load_config("u280_slice")
    runs = stream_runs(cfg, rows=4096 // 32, k=4096,
                       build_dir=getattr(args, "build_dir", "build"))
    out = stream_figures(cfg, runs)
    for name, value in out.items():
        if isinstance(value, float):
            log(f"{name} = {value:.4f}")
    return out
