"""Measurements behind the ``mc`` bench figures (see docs/figures.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
import torch
from airfoil.config import AccelConfig, load_config
from airfoil.errors import AirfoilError

__all__ = ['CHANNELS', 'SHAPE', 'bench_slice', 'mc_config', 'measure_mc']


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

    from airfoil.folder import load_folder
    from airfoil.cli.backend_rtl import run_rtl

    n, k, wf, group = shape
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    folder = Path(build_dir) / "bench_mc" / f"{config.name}_{n}x{k}_{wf}_g{group}"
    m = compile_linear(w, None, config, folder, wformat=wf, group=group, stream=True,
                       seed=seed, out_format="int8")
    layer = m["model"]["linears"]["linear"]
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
