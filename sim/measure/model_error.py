"""Measurements behind the ``model`` bench figures (see docs/figures.md)."""

from __future__ import annotations

import torch
from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError

__all__ = ['compile_demo_linear', 'measure_model_error']


def compile_demo_linear(config: AccelConfig, out_dir, *, seed: int = 0) -> str:
    """Compile the demo's built-in linear layer into ``out_dir``; return its shape text."""
    from compiler.layers import BUILTIN_K, BUILTIN_N, builtin_linear
    from compiler.linear import compile_linear

    weight, bias = builtin_linear(BUILTIN_N, BUILTIN_K, seed)
    layer = compile_linear(weight, bias, config, out_dir, seed=seed)["model"]["linears"]
    (lin,) = layer.values()
    return f"linear {BUILTIN_N}x{BUILTIN_K} {lin['wformat']} g{lin['group']}"


def measure_model_error(folder_path, config: AccelConfig, *, build_dir="build",
                        log=None) -> dict:
    """Run a compiled linear folder on the ISA simulator and on the RTL core.

    Return ``isa_cycles``, ``rtl_cycles`` and ``error`` (``|isa - rtl| / rtl``); raise
    :class:`AirfoilError` if the two outputs differ.
    """
    from sim.isa_sim import run_isa

    from airfoil.cli.backend_rtl import run_rtl

    out_i, st_i = run_isa(folder_path, config)
    if log:
        log(f"cycle model: running {folder_path} on the RTL core ({config.name})")
    out_r, st_r = run_rtl(folder_path, config, stalls=False, build_dir=build_dir)
    if not torch.equal(out_i, out_r):
        bad = int((out_i != out_r).sum())
        raise AirfoilError(f"cycle-model bench: RTL output differs from the ISA simulator's "
                           f"in {bad} of {out_r.numel()} values")
    isa, rtl = int(st_i["cycles"]), int(st_r["cycles"])
    return {"isa_cycles": isa, "rtl_cycles": rtl, "error": abs(isa - rtl) / rtl}
