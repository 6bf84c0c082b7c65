"""How much of the tiny model's decode step the SFU is busy, by the cycle model.

The tiny model (:data:`sim.measure.llm_accuracy.TINY_MODEL`) is compiled for a config
with a prompt of ``context`` tokens; one decode step at position ``context`` runs on the
ISA simulator (:func:`sim.isa_sim.decode_step_cycles`), whose per-unit busy cycles are the
cycle model's (the SFU's: :func:`hdl.sfu.unit.unit_cycles` per instruction).
"""

from __future__ import annotations

from pathlib import Path

from airfoil.config import AccelConfig
from airfoil.folder import load_folder

__all__ = ["compile_tiny", "tiny_decode_sfu_busy"]


def compile_tiny(config: AccelConfig, out_dir, *, context: int) -> Path:
    """Compile the tiny model for ``config`` (prefill program of ``context`` tokens) into
    ``out_dir``; return the folder."""
    from rich.console import Console

    from airfoil.cli import build_parser
    from airfoil.cli.cmd_compile import compile_llm_from_args
    from sim.measure.llm_accuracy import TINY_MODEL

    out_dir = Path(out_dir)
    # The compile command's own parser: every other option at its default.
    cargs = build_parser().parse_args(["compile", str(TINY_MODEL), "--config", config.name,
                                       "-o", str(out_dir), "--max-prompt", str(context)])
    compile_llm_from_args(cargs, Console(quiet=True))
    return out_dir


def tiny_decode_sfu_busy(config: AccelConfig, out_dir, *, context: int = 64) -> dict:
    """The tiny model's decode step at ``context`` on the cycle model:
    ``{"cycles", "busy_sfu", "fraction", "position"}`` (``fraction = busy_sfu / cycles``)."""
    from sim.isa_sim import decode_step_cycles

    folder = load_folder(compile_tiny(config, out_dir, context=context), config)
    step = decode_step_cycles(folder, config, context)
    return {"cycles": step["cycles"], "busy_sfu": step["busy_sfu"],
            "fraction": step["busy_sfu"] / step["cycles"], "position": step["position"]}
