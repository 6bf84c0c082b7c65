"""Packed integer words of GPTQ and AWQ checkpoints, and their FP16 scales."""

from __future__ import annotations

import torch

from airfoil.errors import CompileError

__all__ = ["unpack_words", "fp16_exactly", "tensor_of"]


def unpack_words(words: torch.Tensor, bits: int, dim: int, order=None) -> torch.Tensor:
    """Unsigned ``bits``-bit fields of 32-bit words, unpacked along ``dim``.

    Word ``j`` of ``dim`` holds ``32 // bits`` fields, field ``i`` in bits ``bits * i ..``
    (least significant first); field ``i`` becomes element ``j * (32 // bits) + order[i]``
    (``order`` defaults to ``0, 1, 2, ...``; AWQ's GEMM packing stores ``0, 2, 4, 6, 1, 3,
    5, 7``). Returns int64.
    """
    per = 32 // bits
    order = list(range(per)) if order is None else list(order)
    w = (words.to(torch.int64) & 0xFFFFFFFF).movedim(dim, -1)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    fields = (w.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)       # (..., words, per)
    out = torch.empty_like(fields)
    out[..., order] = fields
    return out.flatten(-2).movedim(-1, dim)


def fp16_exactly(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as FP16 when every value is one (the scales the rescaler takes), else None."""
    h = t.to(torch.float16)
    return h if bool((h.to(torch.float64) == t.to(torch.float64)).all()) else None


def tensor_of(tensors: dict, name: str, where, dtype=None, shape=None) -> torch.Tensor:
    """Tensor ``name`` of a checkpoint, checked for presence, dtype and shape."""
    if name not in tensors:
        raise CompileError(f"{where}: missing tensor {name}")
    t = tensors[name]
    if dtype is not None and t.dtype != dtype:
        raise CompileError(f"{where}: tensor {name} has dtype {t.dtype}, expected {dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise CompileError(f"{where}: tensor {name} has shape {list(t.shape)}, expected "
                           f"{list(shape)}")
    return t
