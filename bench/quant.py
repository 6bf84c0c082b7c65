"""Bench figures of calibrated quantization: the shipped recipes on the tiny model.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``quant``; the
measurement is :mod:`sim.measure.quant_accuracy`. Also writes the plot
``<build-dir>/quant_ppl_vs_bits.png`` (perplexity ratio against bits per weight, one
point per recipe).
"""

from __future__ import annotations

from pathlib import Path

from sim.measure.quant_accuracy import RECIPES, TinyEval, plot_ppl_vs_bits

__all__ = ["FIGURES", "figures", "PLOT"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "tiny_<recipe>_ppl_ratio": "ratio",
    "tiny_<recipe>_next_token_agreement": "fraction",
    "tiny_<recipe>_bits_per_weight": "bits/weight",
    "tiny_<recipe>_fakequant_ppl_ratio": "ratio",
    "tiny_<recipe>_fakequant_next_token_agreement": "fraction",
    "tiny_<recipe>_fakequant_bits_per_weight": "bits/weight",
}

#: The plot's file name under the build folder.
PLOT = "quant_ppl_vs_bits.png"


def figures(args, log) -> dict:
    """``airfoil bench`` entry: every recipe of :data:`RECIPES`, and the plot."""
    build_dir = getattr(args, "build_dir", "build")
    ev = TinyEval()
    out = {"tiny_quant_positions": ev.positions, "tiny_quant_float_ppl": ev.float_ppl,
           "tiny_quant_calibration_tokens": sum(int(w.numel()) for w in ev.windows)}
    points = {}
    for name in RECIPES:
        r = ev.measure(name, build_dir=build_dir, log=log)
        key = f"tiny_{name}" if r["compiled"] else f"tiny_{name}_fakequant"
        for f in ("ppl_ratio", "next_token_agreement", "bits_per_weight"):
            out[f"{key}_{f}"] = r[f]
        for f in ("ppl", "embed_bytes", "head_bytes", "formats", "config_hash"):
            out[f"{key}_{f}"] = r[f]
        if "budget_reached" in r:
            out[f"{key}_budget_reached"] = r["budget_reached"]
        points[name] = r
        log(f"quant {name}: {'compiled' if r['compiled'] else 'fake-quantized'}, "
            f"ppl ratio {r['ppl_ratio']:.4f}, agreement {r['next_token_agreement']:.3f}, "
            f"{r['bits_per_weight']:.3f} bits/weight")
    out["tiny_quant_plot"] = str(plot_ppl_vs_bits(points, Path(build_dir) / PLOT))
    return out
