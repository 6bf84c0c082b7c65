"""Helpers for the LLM tests: small random LLaMA-family models."""

import torch

from compiler.reference import LlamaReference, LlamaShape


def random_llama(*, heads, kv, hd, vocab, inter, layers, max_pos, tie=False, seed=0):
    """A random :class:`LlamaReference` whose weights give well-scaled activations.

    Matrices are N(0, 0.15^2), vectors (norm gains) 1 + N(0, 0.1^2).
    """
    shape = LlamaShape(vocab_size=vocab, hidden_size=heads * hd, intermediate_size=inter,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, head_dim=hd, rms_norm_eps=1e-5,
                       max_position_embeddings=max_pos, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    m = LlamaReference(shape).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * (0.15 if p.dim() == 2 else 0.1) + (p.dim() == 1))
    return m
