"""Small quantized checkpoints in the formats' published layouts, and what importing them
keeps.

Writers: :func:`write_gptq` and :func:`write_awq` build HF folders whose int32 words are
assembled from explicit lists of 4-bit fields in the documented order (GPTQ: along ``k``,
field ``i`` of a word in bits ``4 i ..``; AWQ: along ``n`` in the order
:data:`AWQ_NIBBLE_COLUMNS`); :func:`write_gguf` writes a GGUF file with ``gguf.GGUFWriter``
and ``gguf.quants.quantize`` (K-quant blocks, which the ``gguf`` package cannot quantize,
are random blocks of the published block layout). Each writer returns the file's own
dequantization of every quantized layer (HF layer name -> float64 ``(n, k)``): the GPTQ and
AWQ formulas applied to the fields written, ``gguf.quants.dequantize`` for GGUF.

Measures: :func:`folder_mismatches` compiles an import into an output folder and counts the
weights whose value in the folder (``airfoil.folder.read_llm_model``, what every backend
runs) differs from the file's dequantization; :func:`conversion_error` is the relative RMS
error of the layers requantized from their dequantization.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

__all__ = ["AWQ_NIBBLE_COLUMNS", "TINY", "KQUANT", "tiny_model", "FolderModel", "write_gptq", "write_awq",
           "block_bits_per_weight",
           "write_gguf", "pack_fields", "folder_mismatches", "conversion_error",
           "exact_recipe", "act_order_reference"]

#: The tiny model's shape (``random_llama`` keywords): head_dim 16 makes the attention
#: scale 1/4 (folded into the query scales exactly).
TINY = dict(heads=4, kv=2, hd=16, vocab=53, inter=128, layers=1, max_pos=64)
#: A shape for K-quants (blocks of 256 along every k).
KQUANT = dict(heads=4, kv=2, hd=64, vocab=53, inter=256, layers=1, max_pos=64)
#: AWQ GEMM packing: nibble ``i`` of a word holds column ``8 j + AWQ_NIBBLE_COLUMNS[i]``.
AWQ_NIBBLE_COLUMNS = (0, 2, 4, 6, 1, 3, 5, 7)
_LINEAR = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def tiny_model(seed: int = 0, **shape):
    """A random LLaMA reference of :data:`TINY` (or ``shape``)."""
    from compiler.reference import random_llama
    return random_llama(**{**TINY, **shape}, seed=seed)


class FolderModel:
    """A float HF model folder as the writers take a model: ``shape`` and
    ``hf_state_dict()``."""

    def __init__(self, folder):
        from compiler.importers.hf import load_hf_config, load_hf_tensors
        self.shape = load_hf_config(folder)
        self._tensors = {k: v.to(torch.float32) for k, v in load_hf_tensors(folder).items()}

    def hf_state_dict(self) -> dict:
        return dict(self._tensors)


def exact_recipe():
    """The recipe for the float layers of the tiny checkpoints (lm_head): INT8, group 32."""
    from compiler.llm_recipe import parse_llm_recipe
    return parse_llm_recipe({"weights": [{"match": "*", "format": "int8", "group": 32}]})


def pack_fields(fields: list[int], order=None) -> int:
    """One int32 word (signed) of eight 4-bit ``fields``: ``fields[i]`` in bits ``4 i ..``,
    or ``fields[order[i]]`` there when an order is given."""
    order = list(range(8)) if order is None else order
    w = 0
    for i in range(8):
        w |= (int(fields[order[i]]) & 0xF) << (4 * i)
    return w - (1 << 32) if w >> 31 else w


def _words(fields: np.ndarray, order=None) -> torch.Tensor:
    """Rows of fields (..., 8 m) -> int32 words (..., m), eight consecutive fields a word."""
    lead = fields.shape[:-1]
    flat = fields.reshape(-1, 8)
    return torch.tensor([pack_fields(f.tolist(), order) for f in flat],
                        dtype=torch.int32).reshape(*lead, -1)


def _linears(model) -> dict:
    sd = model.hf_state_dict()
    return {f"model.layers.{i}.{r}": sd[f"model.layers.{i}.{r}.weight"].detach().double()
            for i in range(model.shape.num_hidden_layers) for r in _LINEAR}


def _group_params(w: torch.Tensor, group: int, sym: bool):
    """Per (group, output) 4-bit zero points and FP16 scales of ``w`` (n, k), and its
    codes: the quantizer any GPTQ or AWQ run ends with (min/max over the group)."""
    n, k = w.shape
    wg = w.T.reshape(k // group, group, n)                              # (groups, g, n)
    if sym:
        s = (wg.abs().amax(dim=1) / 7.5).to(torch.float16)
        z = torch.full_like(s, 8, dtype=torch.int64)
    else:
        lo, hi = wg.amin(dim=1), wg.amax(dim=1)
        s = ((hi - lo) / 15).to(torch.float16)
        z = torch.clamp(torch.round(-lo / s.double()), 1, 14).to(torch.int64)
    q = torch.clamp(torch.round(wg / s.double().unsqueeze(1)) + z.unsqueeze(1), 0, 15)
    return q.to(torch.int64).reshape(k, n), z, s                      # q (k, n)


def _save_folder(folder, model, tensors, qc):
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = model.hf_state_dict()
    out = {k: v.detach().clone().contiguous() for k, v in sd.items()
           if not k.endswith("_proj.weight")}
    out.update({k: v.contiguous() for k, v in tensors.items()})
    save_file(out, str(folder / "model.safetensors"))
    cfg = model.shape.to_hf()
    cfg["quantization_config"] = qc
    (folder / "config.json").write_text(json.dumps(cfg))


def write_gptq(folder, model, *, group=32, sym=True, v2=False, act_order=False,
               seed=0) -> dict:
    """An HF folder of ``model`` in GPTQ layout; returns the published dequantization
    ``scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o])`` per layer (``zero`` the stored
    field plus one unless ``v2``). ``group`` -1 is one group per row; ``act_order``
    permutes the inputs' groups (``g_idx`` not sorted)."""
    gen = torch.Generator().manual_seed(seed)
    tensors, ref = {}, {}
    for layer, w in _linears(model).items():
        n, k = w.shape
        g = k if group == -1 else group                  # -1: one scale per output
        perm = torch.randperm(k, generator=gen) if act_order else torch.arange(k)
        g_idx = torch.empty(k, dtype=torch.int64)
        g_idx[perm] = torch.arange(k) // g               # input perm[j] is j-th in order
        q_sorted, z, s = _group_params(w[:, perm], g, sym)
        q = torch.empty_like(q_sorted)
        q[perm] = q_sorted                                                # (k, n)
        stored_z = z if v2 else z - 1
        tensors[layer + ".qweight"] = _words(q.T.numpy()).T.contiguous()   # (k/8, n)
        tensors[layer + ".qzeros"] = _words(stored_z.numpy())               # (groups, n/8)
        tensors[layer + ".scales"] = s
        tensors[layer + ".g_idx"] = g_idx.to(torch.int32)
        ref[layer] = (s.double()[g_idx] * (q - z[g_idx]).double()).T.contiguous()
    qc = {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": act_order,
          "sym": sym, "checkpoint_format": "gptq_v2" if v2 else "gptq"}
    _save_folder(folder, model, tensors, qc)
    return ref


def write_awq(folder, model, *, group=32) -> dict:
    """An HF folder of ``model`` in AWQ GEMM layout; returns the published dequantization
    ``scales[i // group, o] * (q[i, o] - zero[i // group, o])`` per layer."""
    tensors, ref = {}, {}
    for layer, w in _linears(model).items():
        q, z, s = _group_params(w, group, sym=False)                     # q (k, n)
        tensors[layer + ".qweight"] = _words(q.numpy(), AWQ_NIBBLE_COLUMNS)
        tensors[layer + ".qzeros"] = _words(z.numpy(), AWQ_NIBBLE_COLUMNS)
        tensors[layer + ".scales"] = s
        gi = torch.arange(w.shape[1]) // group
        ref[layer] = (s.double()[gi] * (q - z[gi]).double()).T.contiguous()
    qc = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True,
          "version": "gemm"}
    _save_folder(folder, model, tensors, qc)
    return ref


_GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}
#: K-quant block layouts (256 weights): byte offset and count of each FP16 super-scale.
_KQUANT_FP16 = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208, 1)}


def _kquant_blocks(qtype, n: int, k: int, gen: np.random.Generator) -> np.ndarray:
    """Random ``qtype`` rows (n, bytes): every byte random but the FP16 super-scales
    (``d``, ``dmin``), set to small positive values so weights are well scaled."""
    from gguf.constants import GGML_QUANT_SIZES
    block, nbytes = GGML_QUANT_SIZES[qtype]
    raw = gen.integers(0, 256, size=(n, k // block, nbytes), dtype=np.uint8)
    off, count = _KQUANT_FP16[qtype.name]
    d = gen.uniform(0.5e-3, 2e-3, size=(n, k // block, count)).astype(np.float16)
    raw[..., off:off + 2 * count] = d.view(np.uint8)
    return raw.reshape(n, -1)


def write_gguf(path, model, qtype: str, seed=0) -> dict:
    """A GGUF file of ``model`` with linear layers of type ``qtype`` (norms and the
    embedding F32, no output tensor: tied); returns ``gguf.quants.dequantize`` of each
    linear layer in HF row order. Q and K rows are stored in llama.cpp's order."""
    import gguf
    from gguf.quants import dequantize, quantize

    from compiler.importers.gguf import rope_rows
    qt = gguf.GGMLQuantizationType[qtype]
    s = model.shape
    gen = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(s.num_hidden_layers)
    w.add_context_length(s.max_position_embeddings)
    w.add_embedding_length(s.hidden_size)
    w.add_feed_forward_length(s.intermediate_size)
    w.add_head_count(s.num_attention_heads)
    w.add_head_count_kv(s.num_key_value_heads)
    w.add_layer_norm_rms_eps(s.rms_norm_eps)
    w.add_rope_freq_base(s.rope_theta)
    sd = {k: v.detach().float().numpy() for k, v in model.hf_state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    ref = {}
    for i in range(s.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        for hf, name in _GGUF_NAMES.items():
            a = sd[p + hf + ".weight"]
            order = None
            if name in ("attn_q", "attn_k"):
                heads = s.num_attention_heads if name == "attn_q" else s.num_key_value_heads
                order = rope_rows(a.shape[0], heads)
                a = a[order]
            if qt.name in _KQUANT_FP16:
                data = _kquant_blocks(qt, *a.shape, gen)
            else:
                data = quantize(np.ascontiguousarray(a), qt)
            w.add_tensor(f"blk.{i}.{name}.weight", data, raw_dtype=qt)
            deq = dequantize(data, qt).astype(np.float64)
            if order is not None:
                deq = deq[np.argsort(order)]
            ref[p + hf] = torch.from_numpy(deq.reshape(a.shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ref


def act_order_reference(ref: dict, folder) -> dict:
    """The act-order GPTQ file's dequantization (``ref`` of :func:`write_gptq`) in the order
    the importer gives each layer: the down projection's inputs in its ``g_idx`` order
    (stable sort), the gate and up projections' rows alike; the others as they are."""
    from safetensors.torch import load_file
    tensors = load_file(str(Path(folder) / "model.safetensors"))
    out = dict(ref)
    for layer in ref:
        if layer.endswith("mlp.down_proj"):
            order = torch.sort(tensors[layer + ".g_idx"].to(torch.int64), stable=True).indices
            p = layer.removesuffix("down_proj")
            out[layer] = ref[layer][:, order]
            out[p + "gate_proj"], out[p + "up_proj"] = (ref[p + "gate_proj"][order],
                                                        ref[p + "up_proj"][order])
    return out


def _format_name(ql) -> str:
    """A layer's format: ``int4``/``int8`` on WGT tiles, its record format(s) streamed."""
    if not ql.streamed:
        return f"int{ql.bits}"
    from airfoil.packing import format_spec
    return "+".join(sorted({format_spec(int(t)).name for t in ql.formats.unique()}))


def folder_mismatches(graph, ref: dict, out_dir, config, recipe=None) -> dict:
    """Compile an imported ``graph`` into ``out_dir`` and compare: ``mismatches`` (weights
    of the layers in ``ref`` whose folder value differs from ``ref``'s), ``weights``
    (compared), ``formats`` (layer -> its format in the folder: the WGT-tile format, or
    the record format of a streamed layer) and the folder."""
    from airfoil.folder import load_folder, read_llm_model
    from compiler.lower_llm import compile_llm
    from compiler.passes import llm_pipeline, quantized_model
    q = llm_pipeline(recipe or exact_recipe(), config).run(graph)
    compile_llm(quantized_model(q), config, out_dir, max_prompt=8)
    folder = load_folder(out_dir, config)
    back = read_llm_model(folder.manifest, folder.image, config)
    att = graph.shape.head_dim ** -0.5
    bad = total = 0
    formats = {}
    for layer, want in ref.items():
        i, role = int(layer.split(".")[2]), layer.split(".")[-1].removesuffix("_proj")
        ql = back["layers"][i][role]
        got = ql.dequantize(torch.float64)
        if role == "q":
            want = want * att
        bad += int((got != want).sum())
        total += want.numel()
        formats[layer] = _format_name(ql)
    return {"mismatches": bad, "weights": total, "formats": formats, "folder": folder,
            "bits_per_weight": block_bits_per_weight(folder.manifest)}


def block_bits_per_weight(manifest: dict) -> float:
    """Bits per weight of a compiled LLM folder's decoder-block linear layers (the
    ``lm_head``, a float layer of the checkpoints quantized by the recipe, left out): the
    bytes of their tiles or streams in the image (scales and zero points included) x 8
    over their weights."""
    nbytes = weights = 0
    for name, lin in manifest["model"]["linears"].items():
        if name == "lm_head":
            continue
        for t in lin["tiles"]:                  # a WGT tile, or a row block's streams
            nbytes += t["nbytes"] if "nbytes" in t else sum(st["nbytes"]
                                                            for st in t["streams"])
        weights += lin["n"] * lin["k_in"]
    return 8 * nbytes / weights if weights else 0.0


def conversion_error(graph, recipe=None) -> float:
    """The largest relative RMS error over the layers requantized from their
    dequantization (:func:`compiler.importers.prequant.conversion_errors`)."""
    from compiler.importers.prequant import conversion_errors
    from compiler.passes import llm_pipeline
    errs = conversion_errors(llm_pipeline(recipe or exact_recipe()).run(graph))
    return max(errs.values()) if errs else 0.0
