"""GGUF files (llama.cpp) of the ``llama`` architecture, read with the ``gguf`` package.

The metadata (``llama.block_count``, ``llama.embedding_length``, ...) gives the LLaMA
shape; the tensors map to the HF names (``blk.N.attn_q.weight`` ->
``model.layers.N.self_attn.q_proj.weight``, ...). llama.cpp's converter stores the query
and key projections with the rows of each head interleaved for its RoPE (:func:`rope_rows`);
their rows are put back in HF order (a row permutation: exact for quantized rows too).

Each linear layer's quantization type decides how it is imported (:mod:`.prequant`):

* ``Q8_0`` (blocks of 32: FP16 ``d``, 32 int8 ``q``; ``w = d q``): INT8, group 32, exact;
* ``Q4_0`` (FP16 ``d``, 16 bytes: element ``j`` the low nibble of byte ``j``, element
  ``16 + j`` its high nibble; ``w = d (nibble - 8)``): INT4, exact. Its ``d`` is negative
  whenever a block's largest-magnitude weight is positive; the rescaler multiplies by
  the signed scale, so the codes stay ``nibble - 8`` (on a PE whose rescaler takes
  magnitudes such a block is negated, codes ``8 - nibble``, and the layer is INT8:
  :func:`~.prequant.positive_scales`);
* ``Q5_0`` (FP16 ``d``, a fifth bit per weight; ``w = d (q - 16)``, codes ``-16..15``):
  INT8, exact, any sign of ``d``;
* ``Q4_1`` (FP16 ``d`` and ``m``, 16 bytes of nibbles as in Q4_0; ``w = d q + m``, codes
  ``0..15``): exact, the input read twice (:func:`~.prequant.offset_layer`: codes ``[q |
  1]``, scales ``[d | m]``), twice the columns;
* every other type (K-quants, ``Q5_1``, ...) is dequantized with
  ``gguf.quants.dequantize`` and requantized by the recipe, the error reported
  (:func:`~.prequant.conversion_errors`);
* ``F32``, ``F16``, ``BF16`` weights are float weights.

The tokenizer in the GGUF metadata is not read: a ``tokenizer.json`` beside the file is
used when there is one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from airfoil.errors import CompileError

from ..ir import Graph, llama_param_shapes
from ..reference import LlamaShape
from .prequant import ImportReport, exact_or_why, finish_import

__all__ = ["import_gguf", "gguf_shape", "rope_rows", "HF_NAMES", "EXACT_TYPES"]

#: GGUF tensor name (``{i}`` the block) -> HF name.
HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
#: Quantization types imported exactly.
EXACT_TYPES = ("Q8_0", "Q4_0", "Q5_0", "Q4_1")
_FLOAT_TYPES = ("F32", "F16", "BF16")
_QK = 32                                  # elements per Q8_0 / Q4_0 block


def _reader(path):
    import gguf
    try:
        return gguf.GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CompileError(f"{path}: corrupted or unreadable GGUF ({msg})") from None


def _meta(reader, path):
    """Key -> value of the GGUF metadata."""
    out = {}
    for key, f in reader.fields.items():
        try:
            out[key] = f.contents()
        except (ValueError, IndexError, UnicodeDecodeError):
            out[key] = None
    return out


def gguf_shape(meta: dict, vocab: int, path) -> LlamaShape:
    """The LLaMA shape of GGUF metadata (``vocab`` from the embedding table)."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CompileError(f"{path}: general.architecture {arch!r} is not imported "
                           f"(accepted: 'llama')")

    def need(key):
        v = meta.get(f"llama.{key}")
        if v is None:
            raise CompileError(f"{path}: missing metadata llama.{key}")
        return v

    if meta.get("llama.expert_count"):
        raise CompileError(f"{path}: llama.expert_count={meta['llama.expert_count']} "
                           f"(mixture of experts is not imported)")
    scaling = meta.get("llama.rope.scaling.type")
    if scaling not in (None, "none"):
        raise CompileError(f"{path}: llama.rope.scaling.type {scaling!r} is not imported "
                           f"(accepted: none)")
    heads, d = int(need("attention.head_count")), int(need("embedding_length"))
    hd = int(meta.get("llama.attention.key_length") or d // heads)
    rope_dim = meta.get("llama.rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != hd:
        raise CompileError(f"{path}: llama.rope.dimension_count={rope_dim} is not the head "
                           f"size {hd} (partial RoPE is not imported)")
    return LlamaShape(
        vocab_size=int(meta.get("llama.vocab_size") or vocab), hidden_size=d,
        intermediate_size=int(need("feed_forward_length")),
        num_hidden_layers=int(need("block_count")), num_attention_heads=heads,
        num_key_value_heads=int(meta.get("llama.attention.head_count_kv") or heads),
        head_dim=hd, rms_norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon",
                                                 1e-5)),
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        max_position_embeddings=int(meta.get("llama.context_length", 2048)),
        tie_word_embeddings=False)


def rope_rows(rows: int, heads: int) -> np.ndarray:
    """Index of each HF row in llama.cpp's row order: llama.cpp's converter stores row
    ``r`` of a query or key projection as HF row ``rope_rows(...)[r]`` (per head, the two
    halves of the rotary pairs interleaved)."""
    return (np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2)
            .reshape(rows))


def _blocks(data: np.ndarray, n: int, k: int, nbytes: int) -> np.ndarray:
    return np.ascontiguousarray(data).reshape(n, k // _QK, nbytes)


def _q8_0(data, n, k):
    """Codes (n, k) and FP16 scales (n, k / 32) of Q8_0 rows."""
    b = _blocks(data, n, k, 2 + _QK)
    d = b[..., :2].copy().view(np.float16)[..., 0]
    q = b[..., 2:].copy().view(np.int8).astype(np.int64)
    return q.reshape(n, k), d


def _q4_0(data, n, k):
    """Codes (n, k) (nibble - 8) and FP16 scales (n, k / 32) of Q4_0 rows."""
    b = _blocks(data, n, k, 2 + _QK // 2)
    d = b[..., :2].copy().view(np.float16)[..., 0]
    qs = b[..., 2:].astype(np.int64)
    q = np.concatenate([qs & 0xF, qs >> 4], axis=-1) - 8
    return q.reshape(n, k), d


def _q5_0(data, n, k):
    """Codes (n, k) and FP16 scales (n, k / 32) of Q5_0 rows: ``d``, 4 bytes ``qh`` (a
    little-endian word whose bit ``j`` is element ``j``'s fifth bit), 16 bytes of nibbles
    as in Q4_0; ``w = d (q - 16)``."""
    b = _blocks(data, n, k, 2 + 4 + _QK // 2)
    d = b[..., :2].copy().view(np.float16)[..., 0]
    qh = b[..., 2:6].astype(np.int64)
    high = (qh[..., np.arange(_QK) // 8] >> (np.arange(_QK) % 8)) & 1
    qs = b[..., 6:].astype(np.int64)
    q = np.concatenate([qs & 0xF, qs >> 4], axis=-1) | (high << 4)
    return (q - 16).reshape(n, k), d


def _q4_1(data, n, k):
    """Codes (n, k) (the nibbles, ``0..15``), FP16 scales and FP16 offsets (n, k / 32)
    of Q4_1 rows: ``d``, ``m``, 16 bytes of nibbles as in Q4_0; ``w = d q + m``."""
    b = _blocks(data, n, k, 4 + _QK // 2)
    d = b[..., :2].copy().view(np.float16)[..., 0]
    m = b[..., 2:4].copy().view(np.float16)[..., 0]
    qs = b[..., 4:].astype(np.int64)
    q = np.concatenate([qs & 0xF, qs >> 4], axis=-1)
    return q.reshape(n, k), d, m


#: Quantization type -> reader of (codes, scales) or (codes, scales, offsets).
_EXACT_READERS = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q5_0": _q5_0, "Q4_1": _q4_1}


def import_gguf(path) -> Graph:
    """Import a ``.gguf`` file of a LLaMA model into a :class:`~compiler.ir.Graph`."""
    from gguf.quants import dequantize
    path = Path(path)
    if not path.is_file():
        raise CompileError(f"{path}: not found")
    reader = _reader(path)
    meta = _meta(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    if "rope_freqs.weight" in tensors:
        raise CompileError(f"{path}: tensor rope_freqs.weight (LLaMA 3.1 RoPE frequency "
                           f"factors) is not imported")
    if "token_embd.weight" not in tensors:
        raise CompileError(f"{path}: missing tensor token_embd.weight")
    shape = gguf_shape(meta, int(tensors["token_embd.weight"].shape[-1]), path)
    if "output.weight" not in tensors:
        shape = replace(shape, tie_word_embeddings=True)
    want = llama_param_shapes(shape)
    hf_of = {g.format(i=i): h.format(i=i) for g, h in HF_NAMES.items()
             for i in range(shape.num_hidden_layers)}
    report = ImportReport("gguf")
    params, exact = {}, {}
    for name, t in tensors.items():
        hf = hf_of.get(name)
        if hf is None or hf not in want:
            raise CompileError(f"{path}: unexpected tensor {name} (shape "
                               f"{list(map(int, t.shape))}) for "
                               f"{shape.num_hidden_layers}-layer llama")
        qtype = t.tensor_type.name
        shp = want[hf]
        try:
            w = dequantize(t.data, t.tensor_type).reshape(shp)
        except (NotImplementedError, ValueError) as e:
            raise CompileError(f"{path}: tensor {name} of type {qtype} cannot be read "
                               f"({str(e).splitlines()[0]})") from None
        if not np.isfinite(w).all():
            raise CompileError(f"{path}: tensor {name} holds NaN or infinite values "
                               f"(accepted: finite weights)")
        order = None
        if hf.endswith(("q_proj.weight", "k_proj.weight")):
            heads = (shape.num_attention_heads if hf.endswith("q_proj.weight")
                     else shape.num_key_value_heads)
            order = np.argsort(rope_rows(shp[0], heads))
            w = w[order]
        params[hf] = torch.from_numpy(np.array(w, dtype=np.float32))
        layer = hf.removesuffix(".weight")
        if len(shp) != 2 or hf == "model.embed_tokens.weight" or qtype in _FLOAT_TYPES:
            continue
        if qtype in _EXACT_READERS:
            fields = _EXACT_READERS[qtype](t.data, *shp)
            if order is not None:
                fields = tuple(f[order] for f in fields)
            q, d, *m = (torch.from_numpy(np.ascontiguousarray(f)) for f in fields)
            ql, why = exact_or_why(q, d, _QK, layer, offsets=m[0] if m else None)
            if ql is not None:
                exact[layer] = ql
                report.exact[layer] = f"int{ql.bits}"
            else:
                report.converted[layer] = f"{qtype}: {why}"
        else:
            report.converted[layer] = f"{qtype}: requantized from its dequantization"
    return finish_import(shape, params, exact, report, path)
