"""Import a BERT-family encoder as sentence-transformers ship it.

A folder with ``config.json`` of a ``BertModel`` (``model_type`` ``bert``), its
``*.safetensors`` (tensor names with or without the ``bert.`` prefix) and, optionally,
sentence-transformers' ``modules.json`` with its ``Pooling`` module (``1_Pooling/
config.json``: mean or ``[CLS]`` pooling) and a ``Normalize`` module.

The encoder becomes the graph of :func:`compiler.ir.build_llama_graph` with
``shape.encoder`` (post-norm LayerNorm layers, bidirectional attention, no LM head), its
tensors under the LLaMA names:

* ``embeddings.word_embeddings`` -> ``model.embed_tokens``; ``position_embeddings`` plus
  the row of token type 0 of ``token_type_embeddings`` (a single sentence is all type 0)
  -> ``model.embed_positions``; ``embeddings.LayerNorm`` -> ``model.norm``;
* per layer ``attention.self.{query,key,value}``, ``attention.output.dense``,
  ``intermediate.dense``, ``output.dense`` -> the q, k, v, o, up and down projections;
  ``attention.output.LayerNorm`` -> ``input_layernorm`` (after the attention's residual
  add) and ``output.LayerNorm`` -> ``post_attention_layernorm`` (after the MLP's).

The int64 ``embeddings.position_ids`` buffer is accepted and ignored (positions count
from 0), and so is the ``pooler`` (the sentence embedding is the Pooling module's, not
the pooler's). The pooling and normalisation (:mod:`airfoil.embedding`) are recorded in
``graph.meta["sentence_embedding"]``; without ``modules.json``, mean pooling without
normalisation (sentence-transformers' default for a plain encoder). Anything else is a
one-line :class:`CompileError` naming the file and the field or tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from airfoil.embedding import DEFAULT_SENTENCE, POOLINGS
from airfoil.errors import CompileError
from airfoil.textfile import read_text

from ..ir import Graph, build_llama_graph
from ..reference import LINEAR_ROLES, LlamaShape
from .hf import _config_fields, float_weight

__all__ = ["bert_shape", "import_bert", "read_sentence_modules"]

#: ``hidden_act`` -> the shape's ``mlp``.
_ACTS = {"gelu": "gelu_erf", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}
#: Per layer: BERT module -> LLaMA module.
_LAYER_MODULES = {
    "attention.self.query": "self_attn.q_proj", "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj", "attention.output.dense": "self_attn.o_proj",
    "intermediate.dense": "mlp.up_proj", "output.dense": "mlp.down_proj",
    "attention.output.LayerNorm": "input_layernorm",
    "output.LayerNorm": "post_attention_layernorm",
}
_IGNORED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def bert_shape(cfg: dict, p) -> LlamaShape:
    """The :class:`LlamaShape` (``encoder``) of a BERT ``config.json`` dict."""
    act = cfg.get("hidden_act", "gelu")
    if act not in _ACTS:
        raise CompileError(f"{p}: unsupported hidden_act {act!r} (accepted: "
                           f"{', '.join(map(repr, _ACTS))})")
    kind = cfg.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise CompileError(f"{p}: unsupported position_embedding_type {kind!r} (accepted: "
                           f"'absolute')")
    for key in ("is_decoder", "add_cross_attention"):
        if cfg.get(key, False) is not False:
            raise CompileError(f"{p}: unsupported {key}={json.dumps(cfg[key])} (accepted: "
                               f"false)")
    with _config_fields(p):
        hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        if not (isinstance(heads, int) and isinstance(hidden, int) and heads > 0
                and hidden % heads == 0):
            raise CompileError(f"num_attention_heads={heads!r} must be a positive integer "
                               f"that divides hidden_size={hidden!r}")
        return LlamaShape(
            vocab_size=cfg["vocab_size"], hidden_size=hidden,
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=heads,
            num_key_value_heads=heads, head_dim=hidden // heads,
            rms_norm_eps=cfg.get("layer_norm_eps", 1e-12),
            max_position_embeddings=cfg.get("max_position_embeddings", 512),
            linear_biases=tuple(r for r in LINEAR_ROLES if r != "gate"), norm="layer",
            mlp=_ACTS[act], positions="learned", encoder=True)


def _plan(shape: LlamaShape, types: int) -> dict:
    """BERT tensor name -> (its shape, LLaMA name or None for the token-type table)."""
    d, f = shape.hidden_size, shape.intermediate_size
    P = shape.max_position_embeddings
    out = {"embeddings.word_embeddings.weight": ((shape.vocab_size, d),
                                                 "model.embed_tokens.weight"),
           "embeddings.position_embeddings.weight": ((P, d), "model.embed_positions.weight"),
           "embeddings.token_type_embeddings.weight": ((types, d), None),
           "embeddings.LayerNorm.weight": ((d,), "model.norm.weight"),
           "embeddings.LayerNorm.bias": ((d,), "model.norm.bias")}
    dims = {"attention.self.query": (d, d), "attention.self.key": (d, d),
            "attention.self.value": (d, d), "attention.output.dense": (d, d),
            "intermediate.dense": (f, d), "output.dense": (d, f)}
    for i in range(shape.num_hidden_layers):
        for src, dst in _LAYER_MODULES.items():
            b, L = f"encoder.layer.{i}.{src}", f"model.layers.{i}.{dst}"
            rows = dims[src][0] if src in dims else d
            out[b + ".weight"] = (dims.get(src, (d,)), L + ".weight")
            out[b + ".bias"] = ((rows,), L + ".bias")
    return out


def _strip_prefix(tensors: dict) -> dict:
    """The tensors without the ``bert.`` prefix a task model's checkpoint carries."""
    if any(k.startswith("bert.") for k in tensors):
        return {k.removeprefix("bert."): v for k, v in tensors.items()}
    return tensors


def import_bert(path, cfg: dict, tensors: dict) -> Graph:
    """The encoder graph of a BERT folder (``cfg`` its ``config.json`` dict, ``tensors``
    its safetensors), ``graph.meta["sentence_embedding"]`` from :func:`
    read_sentence_modules`."""
    p = Path(path) / "config.json"
    shape = bert_shape(cfg, p)
    types = cfg.get("type_vocab_size", 2)
    if not isinstance(types, int) or isinstance(types, bool) or types < 1:
        raise CompileError(f"{p}: type_vocab_size must be a positive integer, not {types!r}")
    plan = _plan(shape, types)
    params: dict[str, torch.Tensor] = {}
    for name, t in _strip_prefix(tensors).items():
        if name == "embeddings.position_ids":
            if t.is_floating_point():
                raise CompileError(f"{path}: tensor {name} has dtype {t.dtype}, expected an "
                                   f"integer type")
            continue
        if name in _IGNORED:
            continue
        if name not in plan:
            raise CompileError(f"{path}: unexpected tensor {name} (shape {list(t.shape)}) "
                               f"for {shape.num_hidden_layers}-layer BertModel")
        want, new = plan[name]
        if tuple(t.shape) != want:
            raise CompileError(f"{path}: tensor {name} has shape {list(t.shape)}, expected "
                               f"{list(want)}")
        params[new or "token_types"] = float_weight(t, name, path).to(torch.float32)
    missing = [n for n, (_, new) in plan.items() if (new or "token_types") not in params]
    if missing:
        raise CompileError(f"{path}: missing tensor {missing[0]} (expected shape "
                           f"{list(plan[missing[0]][0])})")
    # A single sentence is all token type 0: its row joins every position's.
    pos = "model.embed_positions.weight"
    params[pos] = params[pos] + params.pop("token_types")[0]
    try:
        g = build_llama_graph(shape, params)
    except CompileError as e:
        raise CompileError(f"{path}: {e}") from None
    g.meta["sentence_embedding"] = read_sentence_modules(path)
    return g


def _read_json(p: Path, what: str):
    try:
        return json.loads(read_text(p, what, CompileError))
    except (ValueError, RecursionError) as e:
        raise CompileError(f"{p}: not valid JSON ({e})") from None


def read_sentence_modules(path) -> dict:
    """``{"pooling", "normalize"}`` of a sentence-transformers folder's ``modules.json``
    (a Transformer, then Pooling, then optionally Normalize); mean pooling without
    normalisation when the folder has no ``modules.json``."""
    p = Path(path) / "modules.json"
    if not p.exists():
        return dict(DEFAULT_SENTENCE)
    mods = _read_json(p, "sentence-transformers modules")
    if not (isinstance(mods, list) and all(isinstance(m, dict) and isinstance(
            m.get("type"), str) for m in mods)):
        raise CompileError(f"{p}: must be a list of modules with a type each")
    kinds = [m["type"].rsplit(".", 1)[-1] for m in mods]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise CompileError(f"{p}: unsupported modules {kinds} (accepted: Transformer, "
                           f"Pooling and optionally Normalize)")
    pool = Path(path) / str(mods[1].get("path", "")) / "config.json"
    if not pool.exists():
        raise CompileError(f"{pool}: not found (the Pooling module's config)")
    pc = _read_json(pool, "Pooling config")
    if not isinstance(pc, dict):
        raise CompileError(f"{pool}: must hold a JSON object")
    modes = {"mean": pc.get("pooling_mode_mean_tokens", False),
             "cls": pc.get("pooling_mode_cls_token", False)}
    others = sorted(k for k, v in pc.items() if k.startswith("pooling_mode_") and v is True
                    and k not in ("pooling_mode_mean_tokens", "pooling_mode_cls_token"))
    chosen = [m for m in POOLINGS if modes[m] is True]
    if others or len(chosen) != 1:
        raise CompileError(f"{pool}: unsupported pooling {others + chosen or 'none'} "
                           f"(accepted: exactly one of pooling_mode_mean_tokens, "
                           f"pooling_mode_cls_token)")
    return {"pooling": chosen[0], "normalize": len(kinds) == 3}

