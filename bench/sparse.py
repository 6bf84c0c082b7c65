"""Bench figures of the sparse DSP chain, measured in RTL (cocotb + Verilator) and Yosys.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``sparse``.
"""

from __future__ import annotations
from sim.measure.sparse import BENCH_SHAPE, measure

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "sparse_2of4_cycle_ratio": "ratio",
    "sparse_1of4_cycle_ratio": "ratio",
    "sparse_dense_utilisation": "fraction",
    "dsp_int4_macs_per_dsp_cycle": "MACs/(DSP x cycle)",
    "dsp_int4_macs_per_dsp_cycle_with_fill": "MACs/(DSP x cycle)",
    "dsp_int4_2of4_dense_equiv_macs_per_dsp_cycle": "MACs/(DSP x cycle)",
}


def figures(args, log) -> dict:
    from airfoil.config import load_config

    rows, k, group = BENCH_SHAPE
    return measure(load_config("test"), rows=rows, k=k, group=group,
                   build_dir=getattr(args, "build_dir", "build"), log=log)
