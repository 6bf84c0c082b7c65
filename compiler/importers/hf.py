"""Import a Hugging Face LLaMA-family checkpoint (``config.json`` + ``*.safetensors``).

Supported: ``LlamaForCausalLM`` (``model_type: llama``) with SiLU MLPs, no attention or
MLP biases, default or ``llama3`` RoPE scaling, grouped-query attention and tied or
untied embeddings. Anything else raises a one-line :class:`CompileError` naming the
file and the field or tensor.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from airfoil.errors import CompileError
from airfoil.textfile import read_text

from ..ir import Graph, build_llama_graph, llama_param_shapes
from ..reference import LlamaShape

__all__ = ["load_hf_config", "read_hf_config", "parse_hf_config", "load_hf_tensors",
           "import_hf"]

_ARCHS = ("LlamaForCausalLM",)
#: Tensors some checkpoints carry that the model does not need.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def load_hf_config(path) -> LlamaShape:
    """Read and check ``config.json`` of a LLaMA-family model folder."""
    return parse_hf_config(read_hf_config(path), Path(path) / "config.json")


def read_hf_config(path):
    """The JSON value of ``config.json`` of a model folder (not yet checked)."""
    p = Path(path) / "config.json"
    if not p.exists():
        raise CompileError(f"{p}: not found (a model folder needs config.json)")
    text = read_text(p, "model config", CompileError)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise CompileError(f"{p}: not valid JSON ({e})") from None


def parse_hf_config(cfg, p="config.json") -> LlamaShape:
    """Check an HF config dict of the LLaMA family; ``p`` names it in errors."""
    if not isinstance(cfg, dict):
        raise CompileError(f"{p}: must hold a JSON object")
    archs = cfg.get("architectures") or []
    if not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise CompileError(f"{p}: architectures must be a list of names, not {archs!r}")
    if not archs and cfg.get("model_type") == "llama":
        archs = list(_ARCHS)
    if not archs or archs[0] not in _ARCHS:
        raise CompileError(f"{p}: unsupported architecture {archs[0] if archs else None!r} "
                           f"(accepted: {', '.join(_ARCHS)})")
    if cfg.get("model_type", "llama") != "llama":
        raise CompileError(f"{p}: unsupported model_type {cfg.get('model_type')!r} "
                           f"(accepted: 'llama')")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise CompileError(f"{p}: unsupported hidden_act {act!r} (accepted: 'silu')")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise CompileError(f"{p}: unsupported {key}=true (accepted: false)")
    theta = cfg.get("rope_theta")
    scaling = None
    for key in ("rope_scaling", "rope_parameters"):     # older and newer HF spellings
        rs = cfg.get(key)
        if rs in (None, {}):
            continue
        if not isinstance(rs, dict):
            raise CompileError(f"{p}: {key} must be an object, not {rs!r}")
        rs = dict(rs)
        kind = rs.pop("rope_type", rs.pop("type", "default"))
        theta = rs.pop("rope_theta", theta)
        if kind == "llama3":
            scaling = {"rope_type": "llama3", **rs}
        elif kind != "default" or rs:
            raise CompileError(f"{p}: unsupported {key} {cfg[key]!r} (accepted: rope_type "
                               f"default or llama3)")
    try:
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        head_dim = cfg.get("head_dim")
        if head_dim is None:
            if not (isinstance(heads, int) and isinstance(hidden, int) and heads > 0):
                raise CompileError(f"num_attention_heads must be a positive integer, not "
                                   f"{heads!r}")
            head_dim = hidden // heads
        shape = LlamaShape(
            vocab_size=cfg["vocab_size"], hidden_size=hidden,
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads, head_dim=head_dim,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=theta if theta is not None else 10000.0,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rope_scaling=scaling,
            tie_word_embeddings=cfg.get("tie_word_embeddings", False))
    except KeyError as e:
        raise CompileError(f"{p}: missing field {e.args[0]}") from None
    except TypeError as e:
        raise CompileError(f"{p}: bad field type ({e})") from None
    except CompileError as e:
        raise CompileError(f"{p}: {e}") from None
    return shape


def load_hf_tensors(path) -> dict[str, torch.Tensor]:
    """Read every tensor of the ``*.safetensors`` files in a model folder."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise CompileError(f"{path}: no *.safetensors file")
    out = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as h:
                for name in h.keys():
                    if name in out:
                        raise CompileError(f"{f}: tensor {name} appears in two files")
                    out[name] = h.get_tensor(name)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CompileError(f"{f}: corrupted or unreadable safetensors ({msg})") from None
    return out


_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.")


def import_hf(path) -> Graph:
    """Import a model folder in HF layout into a :class:`~compiler.ir.Graph`.

    A ``quantization_config`` in ``config.json`` is honoured (GPTQ, AWQ:
    :mod:`.quantized_hf`) or refused, never ignored."""
    cfg = read_hf_config(path)
    shape = parse_hf_config(cfg, Path(path) / "config.json")
    tensors = load_hf_tensors(path)
    # The layer count is checked against the checkpoint before anything is sized by it.
    held = {int(m.group(1)) for m in map(_LAYER_NAME.match, tensors) if m}
    if shape.num_hidden_layers > len(held):
        raise CompileError(f"{path}: config.json says num_hidden_layers="
                           f"{shape.num_hidden_layers}, the checkpoint holds {len(held)} "
                           f"layers")
    if isinstance(cfg, dict) and "quantization_config" in cfg:
        from .quantized_hf import import_quantized_hf
        return import_quantized_hf(path, shape, cfg["quantization_config"], tensors)
    want = llama_param_shapes(shape)
    for name, t in tensors.items():
        if name not in want and not name.endswith(_IGNORED_SUFFIXES):
            if name == "lm_head.weight" and shape.tie_word_embeddings:
                continue
            raise CompileError(f"{path}: unexpected tensor {name} (shape {list(t.shape)}) "
                               f"for {shape.num_hidden_layers}-layer LlamaForCausalLM")
        if name in want and not t.is_floating_point():
            raise CompileError(f"{path}: tensor {name} has dtype {t.dtype}, expected a "
                               f"float type")
        if name in want and not bool(torch.isfinite(t).all()):
            raise CompileError(f"{path}: tensor {name} holds NaN or infinite values "
                               f"(accepted: finite weights)")
    try:
        return build_llama_graph(shape, tensors)
    except CompileError as e:
        raise CompileError(f"{path}: {e}") from None
