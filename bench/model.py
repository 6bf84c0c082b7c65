"""Bench figure of the cycle model on a linear layer: how well the ISA simulator predicts
the RTL core.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``model``.
"""

from __future__ import annotations

from pathlib import Path


from airfoil.config import load_config
from sim.measure.model_error import compile_demo_linear, measure_model_error

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "isa_cycle_model_error_linear": "relative error",
}

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
