"""Bench figure of the SFU: its share of the tiny model's decode step (cycle model).

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``sfu``.
"""

from __future__ import annotations

from pathlib import Path

from airfoil.config import load_config
from sim.measure.sfu_busy import tiny_decode_sfu_busy

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "tiny_decode_sfu_busy_fraction": "fraction",
}

#: Context of the decode step and the config it is measured on.
CONTEXT = 64
CONFIG = "sim_llm"


def figures(args, log) -> dict:
    """``airfoil bench`` entry (area ``sfu``)."""
    config = load_config(CONFIG)
    out = Path(getattr(args, "build_dir", "build")) / "bench_sfu" / f"tiny_{config.name}"
    log(f"sfu: tiny model decode step at context {CONTEXT} on the cycle model")
    r = tiny_decode_sfu_busy(config, out, context=CONTEXT)
    name = "tiny_decode_sfu_busy_fraction"
    log(f"{name} = {r['fraction']:.4f} ({r['busy_sfu']} / {r['cycles']} cycles)")
    return {
        name: r["fraction"],
        f"{name}_busy_sfu_cycles": r["busy_sfu"],
        f"{name}_cycles": r["cycles"],
        f"{name}_shape": f"tiny-llama decode step at context {CONTEXT}, {config.name}",
        f"{name}_config_hash": config.config_hash,
    }
