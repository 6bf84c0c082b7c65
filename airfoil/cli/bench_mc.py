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

import dataclasses
from pathlib import Path

import torch

from ..config import AccelConfig, load_config
from ..errors import AirfoilError

__all__ = ["CHANNELS", "SHAPE", "bench_slice", "figures", "mc_config", "measure_mc"]

#: Channel counts measured.
CHANNELS = (1, 2, 4, 8)
#: (rows, k, weight format, group) of the layer.
SHAPE = (4096, 4096, "int4", 128)


def bench_slice(shape=SHAPE) -> AccelConfig:
    """``u280_slice`` with the decode unit's base formats only, dense, ``shape``'s group."""
    base = load_config("u280_slice")
    group = shape[3]
    return dataclasses.replace(base, name=f"{base.name}_base_g{group}",
                               weight_formats=("int2", "int3", "int4", "int8"),
                               group_sizes=(group,), sparsity=("dense",))


def mc_config(channels: int, base: AccelConfig | None = None, *, out_rows: int = SHAPE[0]
              ) -> AccelConfig:
    """``channels`` copies of ``base``'s slice (default ``u280_slice``), with an OUT buffer
    that holds ``out_rows`` INT8 results in each half."""
    base = base or bench_slice()
    out = 1 << (2 * out_rows - 1).bit_length()
    return dataclasses.replace(
        base, name=f"{base.name}_x{channels}", chains=base.chains * channels,
        buffers=dataclasses.replace(base.buffers, out_bytes=max(base.buffers.out_bytes, out)),
        memory=base.memory.uniform(channels))


def measure_mc(config: AccelConfig, *, shape=SHAPE, build_dir="build", seed: int = 0,
               log=None) -> dict:
    """Compile the layer for ``config``, run it on the RTL core and the ISA simulator,
    check both against the golden; return ``cycles``, ``busy_matrix``, ``isa_cycles``,
    ``record_bytes`` and ``utilization``."""
    from compiler.linear import compile_linear
    from sim.golden import run_golden
    from sim.isa_sim import run_isa

    from ..folder import load_folder
    from .backend_rtl import run_rtl

    n, k, wf, group = shape
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    folder = Path(build_dir) / "bench_mc" / f"{config.name}_{n}x{k}_{wf}_g{group}"
    m = compile_linear(w, None, config, folder, wformat=wf, group=group, stream=True,
                       seed=seed, out_format="int8")
    layer = m["layers"][0]
    loaded = load_folder(folder, config)
    gold = run_golden(loaded)
    isa_out, isa_stats = run_isa(loaded, config)
    if log:
        log(f"mc {config.memory.channels} channel(s): {n}x{k} {wf} g{group} on the RTL core")
    out, stats = run_rtl(folder, config, seed=seed, stalls=False, build_dir=build_dir)
    for name, res in (("ISA", isa_out), ("RTL", out)):
        if not torch.equal(res, gold):
            raise AirfoilError(f"mc bench: {name} output differs from the golden in "
                               f"{int((res != gold).sum())} of {n} values on {config.name}")
    bits = layer["stream_bits"]
    record_bytes = (bits["values"] + bits["indices"] + bits["headers"]) / 8
    busy = stats["busy_matrix"]
    c = config.memory.channels
    return {"cycles": stats["cycles"], "busy_matrix": busy, "isa_cycles": isa_stats["cycles"],
            "record_bytes": record_bytes,
            "utilization": record_bytes / (busy * config.channel_bytes_per_cycle * c)}


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
