"""Figures of the decode unit's unpacker (``airfoil bench --only decode``).

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``decode``.
"""

from __future__ import annotations

from airfoil.config import load_config
from sim.measure.decode import FORMATS, image_bits_per_weight, unpacker_words_per_cycle

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "bits_per_weight_<fmt>": "bits/weight",
    "decode_unpacker_words_per_cycle_<fmt>": "words/cycle",
}


def figures(args, log) -> dict:
    """The decode figures (see the module docstring)."""
    build_dir = getattr(args, "build_dir", "build")
    cfg = load_config("u280")
    out = {}
    for fmt in FORMATS:
        bpw = image_bits_per_weight(cfg, fmt)
        out[f"bits_per_weight_{fmt}"] = bpw
        out[f"bits_per_weight_{fmt}_shape"] = "4096x4096 g128, u280 (32 channels x 2 rows)"
        log(f"bits_per_weight_{fmt} = {bpw:.4f}")
    for fmt in list(FORMATS) + ["mixed"]:
        r = unpacker_words_per_cycle(cfg, fmt, rows=2 * 32, k=4096, build_dir=build_dir)
        name = f"decode_unpacker_words_per_cycle_{fmt}"
        out[name] = r["words_per_cycle"]
        out[f"{name}_cycles"] = r["cycles"]
        out[f"{name}_shape"] = r["shape"]
        out[f"{name}_config_hash"] = cfg.config_hash
        log(f"{name} = {r['words_per_cycle']:.4f} ({r['words']} words / {r['cycles']} cycles)")
    return out
