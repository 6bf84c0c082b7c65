"""GPTQ checkpoints (AutoGPTQ / GPTQModel / optimum layout) in an HF folder.

``config.json`` carries ``quantization_config`` with ``quant_method: gptq``. Each
quantized linear layer ``P`` (a ``torch.nn.Linear`` of ``k`` inputs, ``n`` outputs) holds

* ``P.qweight`` int32 ``(k * bits / 32, n)``: ``32 / bits`` codes per word packed along
  ``k``, input ``8 j + i`` of word ``j`` in bits ``4 i .. 4 i + 3`` (4-bit);
* ``P.qzeros`` int32 ``(k / group, n * bits / 32)``: zero points packed along ``n`` the
  same way;
* ``P.scales`` FP16 ``(k / group, n)``; ``P.g_idx`` int32 ``(k,)``: the group of each input
  (``i // group`` unless act-order reordered them).

The weight is ``W[out, in] = scales[g_idx[in], out] * (q[in, out] - zero[g_idx[in], out])``
where ``zero`` is the stored field plus one in the original layout
(``checkpoint_format: gptq``: the packer stored ``zero - 1``) and the stored field itself
in ``gptq_v2``. Symmetric 4-bit GPTQ (zero 8) gives codes ``-8..7``: INT4 exactly; a zero
point per group and output (asymmetric) gives codes ``-15..16``: INT8 exactly.
Act-order checkpoints (``desc_act``) have a ``g_idx`` that mixes groups within a run of
``group`` inputs, while the hardware's groups are runs of inputs. The down projection's
inputs can be put in ``g_idx`` order exactly: its input is ``silu(gate) * up``, so the
same permutation of the gate and up projections' rows (outputs) absorbs it
(:func:`~.quantized_hf.import_quantized_hf`). The other projections read the residual
stream or the attention context, whose order no layer controls (q, k and v share their
input, each with its own ``g_idx``): they are regrouped (:func:`regroup`), exact, the
input read once per group that a run of inputs mixes.
"""

from __future__ import annotations

import torch

from airfoil.errors import CompileError

from .packed import fp16_exactly, tensor_of, unpack_words
from .prequant import NotExact, exact_layer, exact_or_why

__all__ = ["GptqLayout", "parse_gptq_config", "regroup"]

#: quantization_config keys read here.
_HONOURED = {"quant_method", "bits", "group_size", "desc_act", "sym", "checkpoint_format",
             "format", "is_marlin_format", "pack_dtype", "lm_head",
             "modules_in_block_to_quantize", "modules_to_not_convert"}
#: Keys of the calibration run and of kernel choices, which do not change what the
#: tensors hold (a layer is quantized when its ``qweight`` is there).
_NO_EFFECT = {"damp_percent", "damp_auto_increment", "true_sequential", "static_groups",
              "model_name_or_path", "model_file_base_name", "use_exllama", "exllama_config",
              "use_cuda_fp16", "cache_block_outputs", "batch_size", "dataset", "tokenizer",
              "pad_token_id", "max_input_length", "model_seqlen",
              "module_name_preceding_first_block", "block_name_to_quantize", "meta", "mse",
              "backend"}
_CHECKPOINT_FORMATS = ("gptq", "gptq_v2")
#: Suffixes of one quantized layer's tensors.
SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx")


#: The most input copies an act-order layer is regrouped into (:func:`regroup`: exact at
#: that many times the bytes and MACs); a layer whose runs mix more groups is requantized
#: from its dequantized weights by the recipe, the error reported. Checkpoints quantized
#: with act-order on real data mix nearly every group in every run (a 4096-wide g128
#: layer would read its input 32 times), so they take the requantization.
MAX_REGROUP_COPIES = 2


def regroup(codes: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor, group: int
            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """An act-order layer's codes ``(n, k)`` (inputs in their own order, input ``i`` of
    group ``g_idx[i]`` with scales ``scales[:, g_idx[i]]``) as ``copies`` blocks of ``k``
    columns whose every run of ``group`` inputs has one scale: block ``c`` of run ``r``
    holds the codes of the ``c``-th group present in run ``r`` (zeros elsewhere) and that
    group's scale. The layer reads ``copies`` copies of its input
    (:attr:`~airfoil.fixedpoint.QLinear.input_copies`), ``copies`` the most groups a run
    mixes: exact, at ``copies`` times the bytes and MACs. Returns ``(codes (n, copies *
    k), scales (n, copies * k / group), copies)``; scale 0 where a block holds no group."""
    n, k = codes.shape
    runs = g_idx.reshape(k // group, group)
    present = [torch.unique(r) for r in runs]
    copies = max(len(p) for p in present)
    q = torch.zeros((n, copies, k), dtype=codes.dtype)
    s = torch.zeros((n, copies, k // group), dtype=scales.dtype)
    for r, groups in enumerate(present):
        cols = torch.arange(r * group, (r + 1) * group)
        for c, g in enumerate(groups.tolist()):
            mine = cols[runs[r] == g]
            q[:, c, mine] = codes[:, mine]
            s[:, c, r] = scales[:, g]
    return q.reshape(n, copies * k), s.reshape(n, copies * (k // group)), copies


class GptqLayout:
    """The stored layout a GPTQ ``quantization_config`` names (:func:`parse_gptq_config`)."""

    method = "gptq"
    suffixes = SUFFIXES

    def __init__(self, bits: int, group: int, v2: bool):
        self.bits, self.group, self.v2 = bits, group, v2

    def _group_of_inputs(self, prefix, tensors, k, where) -> torch.Tensor:
        """``g_idx`` of a layer (each input's group), checked; ``i // group`` without it."""
        group = self.group if self.group > 0 else k
        if prefix + ".g_idx" not in tensors:
            return torch.arange(k) // group
        gi = tensor_of(tensors, prefix + ".g_idx", where, None, (k,)).to(torch.int64)
        if int(gi.min()) < 0 or int(gi.max()) >= k // group:
            raise CompileError(f"{where}: tensor {prefix}.g_idx names groups outside "
                               f"0..{k // group - 1}")
        return gi

    def grouping_order(self, prefix, tensors, k, where) -> torch.Tensor | None:
        """The input order that makes every group a run of inputs (``g_idx`` sorted,
        stably), or None when the layer is not stored quantized or already is grouped."""
        if prefix + ".qweight" not in tensors:
            return None
        gi = self._group_of_inputs(prefix, tensors, k, where)
        if bool((gi[1:] >= gi[:-1]).all()):
            return None
        return torch.sort(gi, stable=True).indices

    def layer(self, prefix: str, tensors: dict, n: int, k: int, where, inputs=None):
        """``(float weight, QLinear or None, why converted or None)`` of layer ``prefix``;
        ``inputs`` reorders its inputs (column ``j`` is the file's ``inputs[j]``)."""
        b, per = self.bits, 32 // self.bits
        group = self.group if self.group > 0 else k
        if k % per or n % per or k % group:
            raise CompileError(f"{where}: layer {prefix} of {n} x {k} does not split into "
                               f"{per}-code words and groups of {group}")
        groups = k // group
        qw = tensor_of(tensors, prefix + ".qweight", where, torch.int32, (k // per, n))
        qz = tensor_of(tensors, prefix + ".qzeros", where, torch.int32, (groups, n // per))
        sc = tensor_of(tensors, prefix + ".scales", where, None, (groups, n))
        gi = self._group_of_inputs(prefix, tensors, k, where)
        q = unpack_words(qw, b, 0)                                     # (k, n)
        z = unpack_words(qz, b, 1)                                     # (groups, n)
        if not self.v2:
            if bool((z == (1 << b) - 1).any()):
                raise CompileError(f"{where}: tensor {prefix}.qzeros stores {(1 << b) - 1} "
                                   f"(zero point {1 << b} or 0 in the 'zero - 1' layout of "
                                   f"checkpoint_format gptq: ambiguous)")
            z = z + 1
        if inputs is not None:
            q, gi = q[inputs], gi[inputs]
        codes = (q - z[gi]).T.contiguous()                               # (n, k)
        w = (sc.to(torch.float64)[gi].T * codes).to(torch.float32)
        runs = gi.reshape(groups, group)
        s16 = fp16_exactly(sc)
        if s16 is None:
            return w, None, f"scales of dtype {sc.dtype} are not FP16 values"
        if not bool((runs == runs[:, :1]).all()):          # act-order: groups mixed
            mixed = max(len(torch.unique(r)) for r in runs)
            if mixed > MAX_REGROUP_COPIES:
                return w, None, (f"act-order: a run of {group} inputs mixes {mixed} groups "
                                 f"(exact, it would read its input {mixed} times; at most "
                                 f"{MAX_REGROUP_COPIES} are imported exactly)")
            q2, s2, copies = regroup(codes, s16.T.contiguous(), gi, group)
            try:
                return w, exact_layer(q2, s2, group, prefix, input_copies=copies), None
            except NotExact as e:
                return w, None, f"act-order: {str(e).removeprefix(f'layer {prefix}: ')}"
        return (w, *exact_or_why(codes, s16[runs[:, 0]].T.contiguous(), group, prefix))


def parse_gptq_config(qc: dict, p) -> GptqLayout:
    """Check a GPTQ ``quantization_config``; every key is honoured or refused."""
    extra = sorted(set(qc) - _HONOURED - _NO_EFFECT)
    if extra:
        raise CompileError(f"{p}: quantization_config key {extra[0]!r} is not understood "
                           f"for quant_method gptq")
    bits = qc.get("bits", 4)
    if bits not in (2, 4, 8):
        raise CompileError(f"{p}: quantization_config bits={bits!r} (accepted: 2, 4, 8)")
    group = qc.get("group_size", 128)
    if not isinstance(group, int) or not (group == -1 or group > 0):
        raise CompileError(f"{p}: quantization_config group_size={group!r} (accepted: a "
                           f"positive integer or -1)")
    fmt = qc.get("checkpoint_format", qc.get("format", "gptq"))
    if fmt not in _CHECKPOINT_FORMATS:
        raise CompileError(f"{p}: quantization_config checkpoint_format={fmt!r} (accepted: "
                           f"{', '.join(_CHECKPOINT_FORMATS)})")
    if str(qc.get("pack_dtype", "int32")).removeprefix("torch.") != "int32":
        raise CompileError(f"{p}: quantization_config pack_dtype={qc['pack_dtype']!r} "
                           f"(accepted: int32)")
    if qc.get("is_marlin_format"):
        raise CompileError(f"{p}: quantization_config is_marlin_format=true (accepted: "
                           f"the GPTQ packing)")
    return GptqLayout(bits, group, fmt == "gptq_v2")
