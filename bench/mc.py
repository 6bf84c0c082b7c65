"""Figures of the memory-parallel core: one streamed GEMV over 1, 2, 4 and 8 channels.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``mc``.
"""

from __future__ import annotations
from sim.measure.mc import CHANNELS, SHAPE, mc_config, measure_mc


__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "mc_weight_bandwidth_utilization_<c>ch": "fraction",
    "mc_gemv_speedup_<c>ch": "ratio",
    "mc_isa_cycle_model_error": "relative error",
}


def figures(args, log) -> dict:
    """The memory-parallel figures for ``airfoil bench``."""
    build_dir = getattr(args, "build_dir", "build")
    n, k, wf, group = SHAPE
    shape = f"{n}x{k} {wf} g{group}"
    out: dict = {}
    runs = {}
    for c in CHANNELS:
        cfg = mc_config(c)
        runs[c] = r = measure_mc(cfg, build_dir=build_dir, log=log)
        log(f"mc {c} channel(s): {r['cycles']} cycles (ISA {r['isa_cycles']}), MATRIX busy "
            f"{r['busy_matrix']}, utilization {r['utilization']:.4f}, speedup "
            f"{runs[1]['cycles'] / r['cycles']:.3f}")
        name = f"mc_weight_bandwidth_utilization_{c}ch"
        out.update({name: r["utilization"], f"{name}_cycles": r["busy_matrix"],
                    f"{name}_shape": shape, f"{name}_config_hash": cfg.config_hash,
                    f"{name}_record_bytes": r["record_bytes"]})
        name = f"mc_gemv_speedup_{c}ch"
        out.update({name: runs[1]["cycles"] / r["cycles"], f"{name}_cycles": r["cycles"],
                    f"{name}_shape": shape, f"{name}_config_hash": cfg.config_hash})
    err = {c: abs(r["isa_cycles"] - r["cycles"]) / r["cycles"] for c, r in runs.items()}
    out.update({"mc_isa_cycle_model_error": max(err.values()),
                "mc_isa_cycle_model_error_cycles": {f"{c}ch": [r["isa_cycles"], r["cycles"]]
                                                    for c, r in runs.items()},
                "mc_isa_cycle_model_error_shape": shape,
                "mc_isa_cycle_model_error_config_hash": mc_config(1).config_hash})
    return out
