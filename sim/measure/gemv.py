"""Measurements behind the ``gemv`` bench figures (see docs/figures.md)."""

from __future__ import annotations

from pathlib import Path
import torch
from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError
from airfoil.formats import FORMAT_BITS, weight_format

__all__ = ['BENCH_SHAPE', 'bandwidth_ceiling', 'measure_gemv']


#: (N, K, weight format, group) of the bench layer.
BENCH_SHAPE = (1024, 1024, "int4", 128)


_SCALE_BITS = 16


def bandwidth_ceiling(config: AccelConfig, wformat: str, group: int) -> float:
    """MACs per cycle that one AXI port of ``config`` can feed with weights and scales."""
    bits = FORMAT_BITS[weight_format(wformat)] + _SCALE_BITS / group
    return config.memory.word_bits / bits


def measure_gemv(n: int, k: int, wformat: str, group: int, config: AccelConfig, *,
                 build_dir="build", seed: int = 0, log=None) -> dict:
    """Compile an ``n x k`` GEMV, run it on the RTL core, check it against the golden.

    Return ``macs``, ``cycles`` (the core's cycle counter), ``macs_per_cycle`` and the
    run's ``stats``; raise :class:`AirfoilError` if the RTL result differs from the golden.
    """
    from compiler.linear import compile_linear
    from sim.golden import run_golden

    from airfoil.cli.backend_rtl import run_rtl

    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen)
    folder = Path(build_dir) / "bench_gemv" / f"{config.name}_{n}x{k}_{wformat}_g{group}"
    compile_linear(w, b, config, folder, wformat=wformat, group=group, out_format="int8",
                   seed=seed)
    if log:
        log(f"gemv {n}x{k} {wformat} g{group}: running on the RTL core ({config.name})")
    out, stats = run_rtl(folder, config, seed=seed, stalls=False, build_dir=build_dir)
    gold = run_golden(folder)
    if not torch.equal(out, gold):
        bad = int((out != gold).sum())
        raise AirfoilError(f"gemv bench: RTL output differs from the golden in {bad} of "
                           f"{n} values")
    macs = n * k
    return {"macs": macs, "cycles": stats["cycles"],
            "macs_per_cycle": macs / stats["cycles"], "stats": stats}
