"""Bench figures of the sparse DSP chain, measured in RTL (cocotb + Verilator) and Yosys.

Compute-bound GEMVs (operands fed at full rate, the psum stream always ready) of one
shape run on one chain build in dense, 2:4 and 1:4 mode:

* ``sparse_2of4_cycle_ratio``, ``sparse_1of4_cycle_ratio``: cycles of the sparse GEMV /
  cycles of the dense GEMV of the same shape (targets <= 0.52 and <= 0.27);
* ``sparse_dense_utilisation``: dense MACs / (cycles x lanes) (target >= 0.9);
* ``dsp_int4_macs_per_dsp_cycle``: dense MACs per cycle / DSP48E2 count of the same chain
  from Yosys ``synth_xilinx -family xcup`` (target >= 2.0). The cycles are those in which
  the chain accepts the GEMV's operands (first to last operand handshake): the rate the
  chain sustains on back-to-back work, 2.0 at full rate since a DSP48E2 computes two INT4
  products. ``dsp_int4_macs_per_dsp_cycle_with_fill`` counts the single GEMV's cycles up
  to its last result instead (the pipeline fill of :attr:`SparseChain.delay` cycles
  included), as the cycle ratios do.

Cycle ratios run from the first operand handshake to the last psum handshake, inclusive, so
they include the pipeline fill. The memory-bound
``sparse_2of4_streamed_cycle_ratio`` is measured by :mod:`bench.stream`.
"""

from __future__ import annotations
from sim.measure.sparse import BENCH_SHAPE, measure


def figures(args, log) -> dict:
    from airfoil.config import load_config

    rows, k, group = BENCH_SHAPE
    return measure(load_config("test"), rows=rows, k=k, group=group,
                   build_dir=getattr(args, "build_dir", "build"), log=log)
