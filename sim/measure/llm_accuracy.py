"""Measurements behind the ``llm`` bench figures (see docs/figures.md)."""

from __future__ import annotations

import math
import torch
from compiler.backends import execute, logits_float
from compiler.importers.hf import import_hf
from compiler.passes import llm_pipeline, quantized_model
from compiler.tokenizer import corpus_split
from sim.golden_llm import GoldenLLM
from airfoil.models import BUILTIN_MODELS

__all__ = ['TINY_MODEL', 'WINDOW', 'POSITIONS', 'tiny_accuracy']


#: The shipped tiny checkpoint.
TINY_MODEL = BUILTIN_MODELS["tiny-llama"]


#: Tokens per evaluation window (each window starts a fresh KV cache).
WINDOW = 128


#: Held-out positions the bench evaluates.
POSITIONS = 2048


def tiny_accuracy(model_dir=TINY_MODEL, positions: int = POSITIONS, window: int = WINDOW,
                  recipe=None, log=None) -> dict:
    """Measure the three accuracy figures (and their evidence) on ``positions`` tokens."""
    graph = import_hf(model_dir)
    quant = llm_pipeline(recipe).run(graph)
    golden = GoldenLLM(quantized_model(quant))
    train, held = corpus_split()
    data = torch.tensor(list(held), dtype=torch.int64)
    counts = torch.bincount(torch.tensor(list(train), dtype=torch.int64), minlength=256)
    uni_logp = torch.log((counts.double() + 1) / (counts.sum() + 256))
    nll_f = nll_g = nll_u = 0.0
    agree = n = 0
    start = 0
    while n < positions:
        if start + window + 1 > len(data):
            raise ValueError(f"held-out split too short for {positions} positions")
        take = min(window, positions - n)
        x = data[start:start + take]
        y = data[start + 1:start + take + 1]
        with torch.no_grad():
            lf = execute(graph, x).to(torch.float64)
        lg = logits_float(golden.prefill(x))
        nll_f -= float(torch.log_softmax(lf, -1).gather(1, y[:, None]).sum())
        nll_g -= float(torch.log_softmax(lg, -1).gather(1, y[:, None]).sum())
        nll_u -= float(uni_logp[y].sum())
        agree += int((lf.argmax(-1) == lg.argmax(-1)).sum())
        n += take
        start += window
        if log is not None and (n // window) % 4 == 0:
            log(f"llm accuracy: {n}/{positions} positions")
    ppl_f, ppl_g, ppl_u = (math.exp(v / n) for v in (nll_f, nll_g, nll_u))
    return {"tiny_w4_next_token_agreement": agree / n,
            "tiny_w4_ppl_ratio": ppl_g / ppl_f,
            "tiny_float_ppl_over_unigram": ppl_f / ppl_u,
            "tiny_positions": n, "tiny_float_ppl": ppl_f, "tiny_w4_ppl": ppl_g,
            "tiny_unigram_ppl": ppl_u}
