"""Figures of the memory-parallel core: one streamed GEMV over 1, 2, 4 and 8 channels.

Measured in RTL (Verilator + cocotb) on the whole core (:class:`hdl.core.top.Core`), not a
harness. Each configuration is ``c`` copies of the U280's slice (``u280_slice``: one HBM
pseudo-channel's 512-bit port at the U280's latency and outstanding limit, its decode unit
and 4 chains x 32 lanes): ``chains = 4 c``, ``memory.channels = c``, the OUT buffer large
enough for the whole layer. The slice's decode unit is built with its base formats only
(INT2/3/4/8 and OVP4: no BitMoD FP formats, dense only, the layer's group): the formats a
slice decodes change its size, not its timing (the unpacker's latency is the same for every
format set), and the full 13-format slice at 8 channels takes Verilator longer to build
than the bench's budget. The program is the compiler's: ``LD ACT``, then for each row
tile (the planner makes at least :data:`compiler.linear.MIN_TILES`) one ``LD WSTREAM``
per channel and one ``MV``, and the ``ST`` of the results. The layer is ``4096 x 4096``
INT4 with group 128 and no bias, compiled by :func:`compiler.linear.compile_linear` (row
batch ``b`` of 4 rows on channel ``b % c``); each run's result is checked bit-exactly
against the golden and the ISA simulator before a figure is reported; the memory model
adds no random stalls.

* ``mc_weight_bandwidth_utilization_<c>ch``: bytes of weight records (headers, FP16
  scales, values; the manifest's ``stream_bits``, no word padding) / (the cycles from each
  ``MV``'s start to its release, summed by the core's ``BUSY_MATRIX`` counter, x the
  config's bytes per cycle per channel,
  :attr:`airfoil.config.AccelConfig.channel_bytes_per_cycle`, x ``c``). Goal >= 0.95.
* ``mc_gemv_speedup_<c>ch``: the core's cycle counter for the whole program on 1 channel /
  on ``c`` channels. Goal >= 0.95 ``c``.
* ``mc_isa_cycle_model_error``: the largest relative error, over those runs, of the ISA
  simulator's cycle count against the core's. Goal <= 0.05.

Beside each figure: ``<name>_cycles``, ``<name>_shape`` and ``<name>_config_hash``.
"""

from __future__ import annotations
from sim.measure.mc import CHANNELS, SHAPE, mc_config, measure_mc


__all__ = ["FIGURES", "figures"]


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
