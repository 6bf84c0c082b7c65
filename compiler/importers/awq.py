"""AWQ checkpoints (AutoAWQ GEMM packing) in an HF folder.

``config.json`` carries ``quantization_config`` with ``quant_method: awq``, ``bits: 4``,
``version: gemm``. Each quantized linear layer ``P`` (``k`` inputs, ``n`` outputs) holds

* ``P.qweight`` int32 ``(k, n / 8)``: eight 4-bit codes per word packed along ``n``, the
  word's nibble ``i`` (bits ``4 i .. 4 i + 3``) holding output ``8 j + ORDER[i]`` with
  :data:`AWQ_ORDER` ``= 0, 2, 4, 6, 1, 3, 5, 7``;
* ``P.qzeros`` int32 ``(k / group, n / 8)``: zero points packed the same way;
* ``P.scales`` FP16 ``(k / group, n)``.

The weight is ``W[out, in] = scales[in // group, out] * (q[in, out] - zero[in // group,
out])``: codes ``q - zero`` lie in ``-15..15``, INT8 exactly (INT4 when every one fits).
"""

from __future__ import annotations

import torch

from airfoil.errors import CompileError

from .packed import fp16_exactly, tensor_of, unpack_words
from .prequant import exact_or_why

__all__ = ["AWQ_ORDER", "AwqLayout", "parse_awq_config"]

#: Output within a word stored in nibble 0, 1, ..., 7 (AutoAWQ's GEMM packing).
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
#: quantization_config keys read here, and kernel choices that do not change the tensors.
_KEYS = {"quant_method", "bits", "w_bit", "group_size", "q_group_size", "zero_point",
         "version", "modules_to_not_convert", "backend", "do_fuse", "fuse_max_seq_len",
         "modules_to_fuse", "exllama_config"}


class AwqLayout:
    """The stored layout an AWQ ``quantization_config`` names (:func:`parse_awq_config`)."""

    method = "awq"
    suffixes = (".qweight", ".qzeros", ".scales")

    def __init__(self, group: int):
        self.group = group

    def layer(self, prefix: str, tensors: dict, n: int, k: int, where):
        """``(float weight, QLinear or None, why converted or None)`` of layer ``prefix``."""
        group = self.group if self.group > 0 else k
        if n % 8 or k % group:
            raise CompileError(f"{where}: layer {prefix} of {n} x {k} does not split into "
                               f"8-code words and groups of {group}")
        groups = k // group
        qw = tensor_of(tensors, prefix + ".qweight", where, torch.int32, (k, n // 8))
        qz = tensor_of(tensors, prefix + ".qzeros", where, torch.int32, (groups, n // 8))
        sc = tensor_of(tensors, prefix + ".scales", where, None, (groups, n))
        q = unpack_words(qw, 4, 1, AWQ_ORDER)                           # (k, n)
        z = unpack_words(qz, 4, 1, AWQ_ORDER)                           # (groups, n)
        gi = torch.arange(k) // group
        codes = (q - z[gi]).T.contiguous()                               # (n, k)
        w = (sc.to(torch.float64)[gi].T * codes).to(torch.float32)
        s16 = fp16_exactly(sc)
        if s16 is None:
            return w, None, f"scales of dtype {sc.dtype} are not FP16 values"
        return (w, *exact_or_why(codes, s16.T.contiguous(), group, prefix))


def parse_awq_config(qc: dict, p) -> AwqLayout:
    """Check an AWQ ``quantization_config``; every key is honoured or refused."""
    extra = sorted(set(qc) - _KEYS)
    if extra:
        raise CompileError(f"{p}: quantization_config key {extra[0]!r} is not understood "
                           f"for quant_method awq")
    bits = qc.get("bits", qc.get("w_bit", 4))
    if bits != 4:
        raise CompileError(f"{p}: quantization_config bits={bits!r} (accepted: 4)")
    version = str(qc.get("version", "gemm")).lower()
    if version != "gemm":
        raise CompileError(f"{p}: quantization_config version={version!r} (accepted: gemm)")
    if qc.get("zero_point", True) is not True:
        raise CompileError(f"{p}: quantization_config zero_point={qc['zero_point']!r} "
                           f"(accepted: true, the GEMM packing's zero points)")
    group = qc.get("group_size", qc.get("q_group_size", 128))
    if not isinstance(group, int) or not (group == -1 or group > 0):
        raise CompileError(f"{p}: quantization_config group_size={group!r} (accepted: a "
                           f"positive integer or -1)")
    return AwqLayout(group)
