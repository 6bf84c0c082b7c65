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
:mod:`bench.llm_rtl`'s.

Beside the figure: ``_isa_cycles``, ``_rtl_cycles``, ``_shape`` and ``_config_hash``.
"""

from __future__ import annotations


from pathlib import Path


from airfoil.config import load_config
from sim.measure.model_error import compile_demo_linear, measure_model_error

__all__ = ["FIGURES", "figures"]

#: Name of the figure (and prefix of its evidence).
FIGURE = "isa_cycle_model_error_linear"


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
