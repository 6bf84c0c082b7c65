"""Sentence embeddings from an encoder's hidden states, on the host in float.

An encoder folder's device program writes the last layer's hidden states (ACT, Q16) of
every token of the sentence; the host turns them into one vector as sentence-transformers'
``Pooling`` and ``Normalize`` modules do: the mean over the tokens (``mean``) or the first
token's row (``cls``, the ``[CLS]`` token), then, when the model has a ``Normalize``
module, division by the Euclidean norm. One sentence, no padding: every token counts.
"""

from __future__ import annotations

import torch

from .errors import AirfoilError

__all__ = ["POOLINGS", "DEFAULT_SENTENCE", "check_sentence_spec", "sentence_embedding",
           "folder_embedding"]

#: Pooling modes: the mean over the tokens, or the first token's hidden state.
POOLINGS = ("mean", "cls")
#: What sentence-transformers does with a plain encoder (no ``modules.json``).
DEFAULT_SENTENCE = {"pooling": "mean", "normalize": False}


def check_sentence_spec(spec, where="sentence embedding") -> dict:
    """Check ``{"pooling": one of POOLINGS, "normalize": bool}``; return it."""
    if not (isinstance(spec, dict) and set(spec) == {"pooling", "normalize"}
            and spec["pooling"] in POOLINGS and isinstance(spec["normalize"], bool)):
        raise AirfoilError(f"{where}: must be {{pooling: {' or '.join(POOLINGS)}, "
                           f"normalize: true or false}}, not {spec!r}")
    return spec


def sentence_embedding(hidden: torch.Tensor, spec: dict) -> torch.Tensor:
    """The float32 embedding (hidden,) of a sentence's float hidden states (T, hidden)."""
    h = hidden.to(torch.float64)
    v = h.mean(dim=0) if spec["pooling"] == "mean" else h[0]
    if spec["normalize"]:
        v = v / v.norm().clamp(min=1e-12)
    return v.to(torch.float32)


def folder_embedding(hidden: torch.Tensor, folder_model: dict) -> torch.Tensor:
    """The embedding of the ACT (Q16) hidden states (T, hidden) an encoder folder's
    program wrote, pooled as its manifest's ``model.sentence_embedding`` says."""
    from .fixedpoint import from_fixed
    spec = check_sentence_spec(folder_model.get("sentence_embedding"),
                               "manifest model.sentence_embedding")
    return sentence_embedding(from_fixed(hidden), spec)
