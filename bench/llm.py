"""Bench figures of the decoder-LLM compiler: accuracy of the quantized tiny model.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``llm``.
"""

from __future__ import annotations
from sim.measure.llm_accuracy import tiny_accuracy

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "tiny_w4_next_token_agreement": "fraction",
    "tiny_w4_ppl_ratio": "ratio",
    "tiny_float_ppl_over_unigram": "ratio",
}


def figures(args, log) -> dict:
    """``airfoil bench`` entry: the accuracy figures on :data:`POSITIONS` positions."""
    return tiny_accuracy(log=log)
