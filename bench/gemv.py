"""Bench figures of the RTL core: a streamed INT4 GEMV on the ``test`` configuration.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``gemv``.
"""

from __future__ import annotations

from airfoil.config import load_config
from sim.measure.gemv import BENCH_SHAPE, bandwidth_ceiling, measure_gemv

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "gemv_macs_per_cycle": "MACs/cycle",
    "gemv_peak_macs_per_cycle": "MACs/cycle",
    "gemv_bandwidth_ceiling_macs_per_cycle": "MACs/cycle",
}


def figures(args, log) -> dict:
    """The GEMV figures for ``airfoil bench``."""
    config = load_config("test")
    n, k, wf, g = BENCH_SHAPE
    build_dir = getattr(args, "build_dir", "build")
    r = measure_gemv(n, k, wf, g, config, build_dir=build_dir, log=log)
    return {
        "gemv_macs_per_cycle": r["macs_per_cycle"],
        "gemv_macs_per_cycle_cycles": r["cycles"],
        "gemv_macs_per_cycle_shape": [n, k],
        "gemv_macs_per_cycle_config_hash": config.config_hash,
        "gemv_peak_macs_per_cycle": config.peak_macs_per_cycle,
        "gemv_bandwidth_ceiling_macs_per_cycle": bandwidth_ceiling(config, wf, g),
    }
