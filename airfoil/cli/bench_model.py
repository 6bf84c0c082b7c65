"""Bench figure of the cycle model on a linear layer: how well the ISA simulator predicts
the RTL core.

``isa_cycle_model_error_linear`` = ``|ISA cycles - RTL cycles| / RTL cycles`` of one program,
run once on the ISA simulator (its cycle model, :mod:`sim.cycle_model`) and once on the
RTL core in Verilator without random memory stalls (the memory model's nominal latency,
so the core's cycle counter is exact). The two outputs must be equal bit for bit (a
cycle count of a wrong computation is no figure). The program is the demo linear layer
(``airfoil demo``: the built-in ``N x K`` layer with the default linear recipe on the
``test`` config); :func:`measure_model_error` takes any compiled folder. The issue's
``isa_cycle_model_error`` itself, over an LLM decode step, is
:mod:`airfoil.cli.bench_llm_rtl`'s.

Beside the figure: ``_isa_cycles``, ``_rtl_cycles``, ``_shape`` and ``_config_hash``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import AccelConfig, load_config
from ..errors import AirfoilError

__all__ = ["figures", "measure_model_error", "compile_demo_linear", "FIGURE"]

#: Name of the figure (and prefix of its evidence).
FIGURE = "isa_cycle_model_error_linear"


def compile_demo_linear(config: AccelConfig, out_dir, *, seed: int = 0) -> str:
    """Compile the demo's built-in linear layer into ``out_dir``; return its shape text."""
    from compiler.layers import BUILTIN_K, BUILTIN_N, builtin_linear
    from compiler.linear import compile_linear
    from compiler.recipe import load_recipe

    kw = load_recipe(None)
    weight, bias = builtin_linear(BUILTIN_N, BUILTIN_K, seed)
    compile_linear(weight, bias, config, out_dir, seed=seed, **kw)
    return f"linear {BUILTIN_N}x{BUILTIN_K} {kw['wformat']} g{kw['group']}"


def measure_model_error(folder_path, config: AccelConfig, *, build_dir="build",
                        log=None) -> dict:
    """Run a compiled linear folder on the ISA simulator and on the RTL core.

    Return ``isa_cycles``, ``rtl_cycles`` and ``error`` (``|isa - rtl| / rtl``); raise
    :class:`AirfoilError` if the two outputs differ.
    """
    from sim.isa_sim import run_isa

    from .backend_rtl import run_rtl

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


def figures(args, log) -> dict:
    """The cycle-model figure for ``airfoil bench`` (the demo linear layer)."""
    config = load_config("test")
    build_dir = getattr(args, "build_dir", "build")
    folder = Path(build_dir) / "bench_model" / f"demo_linear_{config.name}"
    shape = compile_demo_linear(config, folder)
    r = measure_model_error(folder, config, build_dir=build_dir, log=log)
    return {
        FIGURE: r["error"],
        f"{FIGURE}_isa_cycles": r["isa_cycles"],
        f"{FIGURE}_rtl_cycles": r["rtl_cycles"],
        f"{FIGURE}_shape": shape,
        f"{FIGURE}_config_hash": config.config_hash,
    }
