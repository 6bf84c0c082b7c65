"""Figures of the streamed MV path: decode unit -> sparse chains (``airfoil bench``).

Measured in RTL (Verilator + cocotb) on the streamed-GEMV harness
(:class:`hdl.core.stream_mv.StreamGemvHarness`) of ``fpga/boards/u280_slice.yaml``: one
HBM pseudo-channel's 512-bit port at the U280's read latency (64 cycles) and outstanding
limit (16 bursts), no injected stalls, feeding one unpacker and 4 chains x 32 lanes. The
shape is one channel's share of a 4096 x 4096 layer (128 rows x 4096, group 128). Every
run's results are checked bit-exactly against the golden before a figure is reported.

* ``decode_weight_port_utilization_<fmt>`` (int2, int3, int4, int8; dense): cycles in
  which the weight port delivered a useful (not all-zero padding) word / all cycles of
  the MV, from the instruction's start to its release (memory latency, pipeline fill and
  the last batch's requantization included).
* ``sparse_2of4_streamed_cycle_ratio``: cycles of the INT4 2:4 GEMV / cycles of the dense
  INT4 GEMV of the same shape; beside it ``sparse_2of4_streamed_bytes_ratio``, the byte
  size of the 2:4 image (values, N:M indices, scales, headers) / that of the dense image.
* ``block_skip_streamed_cycle_ratio``: cycles of an INT4 block-skip GEMV keeping half the
  k-steps of every record (:data:`BLOCK_KEEP`) / cycles of the dense INT4 GEMV of the
  same shape; beside it ``block_skip_streamed_bytes_ratio`` (step masks included).

Each RTL figure has its raw evidence: ``<name>_cycles``, ``<name>_shape``,
``<name>_config_hash``.
"""

from __future__ import annotations


from airfoil.config import load_config
from sim.measure.stream import FORMATS, stream_runs

__all__ = ["FIGURES", "figures", "stream_figures"]


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
