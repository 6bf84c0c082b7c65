"""Bench figures of the decoder-LLM compiler: accuracy of the quantized tiny model.

On the held-out split of ``pydoc_data.topics`` (see ``scripts/train_tiny.py``), in
windows of :data:`WINDOW` tokens each predicting the next byte at every position:

* ``tiny_w4_next_token_agreement``: fraction of positions where the integer golden with
  the default recipe (W4 g128, INT8 per-token activations, INT8 KV cache) and the float
  model pick the same next token (greedy argmax);
* ``tiny_w4_ppl_ratio``: the golden's held-out perplexity over the float model's;
* ``tiny_float_ppl_over_unigram``: the float model's held-out perplexity over that of a
  unigram (byte frequency, add-one smoothed) model of the training split.
"""

from __future__ import annotations
from sim.measure.llm_accuracy import tiny_accuracy


def figures(args, log) -> dict:
    """``airfoil bench`` entry: the accuracy figures on :data:`POSITIONS` positions."""
    return tiny_accuracy(log=log)
