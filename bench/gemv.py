"""Bench figures of the RTL core: a streamed INT4 GEMV on the ``test`` configuration.

``gemv_macs_per_cycle`` is measured in RTL: a ``1024 x 1024`` INT4 g128 layer compiled by
:func:`compiler.linear.compile_linear` runs on the Verilator model with the weights
streamed over AXI from the memory model (config read latency and outstanding reads, no
random stalls), and the figure is ``N * K`` divided by the core's cycle counter. Beside it:
the peak ``chains x lanes`` and the bandwidth ceiling, the MACs per cycle one AXI port can
feed (``word_bits`` over the bits moved per MAC, group scales included).
"""

from __future__ import annotations


from airfoil.config import load_config
from sim.measure.gemv import BENCH_SHAPE, bandwidth_ceiling, measure_gemv

__all__ = ["FIGURES", "figures"]


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
