"""Import a Hugging Face decoder checkpoint (``config.json`` + ``*.safetensors``).

Supported families, all one graph (:func:`compiler.ir.build_llama_graph`) with SiLU MLPs,
RMSNorm, RoPE (default or ``llama3`` scaling), grouped-query attention and tied or untied
embeddings:

* ``LlamaForCausalLM`` (``llama``), with ``attention_bias`` / ``mlp_bias``;
* ``MistralForCausalLM`` (``mistral``): a ``sliding_window`` shorter than
  ``max_position_embeddings`` caps the modelled positions at the window (within it the
  sliding mask is the causal mask);
* ``Qwen2ForCausalLM`` (``qwen2``): biases on the q, k, v projections; its sliding window
  (``use_sliding_window``) is handled as Mistral's;
* ``Phi3ForCausalLM`` (``phi3``): the fused ``qkv_proj`` and ``gate_up_proj`` are split
  into q, k, v and gate, up at import; ``longrope`` scaling and a
  ``partial_rotary_factor`` other than 1 are refused.

Anything else raises a one-line :class:`CompileError` naming the file and the field or
tensor: a config field that changes the arithmetic and is not implemented is refused,
never ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from airfoil.errors import CompileError
from airfoil.textfile import read_text

from ..ir import Graph, build_llama_graph, linear_dims, linear_name, llama_param_shapes
from ..reference import LINEAR_ROLES, LlamaShape

__all__ = ["load_hf_config", "read_hf_config", "parse_hf_config", "hf_family",
           "load_hf_tensors", "import_hf", "Family", "FAMILIES"]


@dataclass(frozen=True)
class Family:
    """What sets one HF architecture apart from ``LlamaForCausalLM``.

    Members
    -------
    arch, model_type : str
        The ``architectures[0]`` and ``model_type`` of its ``config.json``.
    biases : tuple of str
        Roles whose linear layers always carry a bias.
    flag_biases : bool
        Whether ``attention_bias`` / ``mlp_bias`` select biases (else they must be false).
    fused : tuple of (str, tuple of str)
        Fused tensors of a layer: the module suffix and the roles it holds, stacked along
        the rows in that order.
    """

    arch: str
    model_type: str
    biases: tuple = ()
    flag_biases: bool = False
    fused: tuple = ()


FAMILIES = {f.arch: f for f in (
    Family("LlamaForCausalLM", "llama", flag_biases=True),
    Family("MistralForCausalLM", "mistral"),
    Family("Qwen2ForCausalLM", "qwen2", biases=("q", "k", "v")),
    Family("Phi3ForCausalLM", "phi3", fused=(("self_attn.qkv_proj", ("q", "k", "v")),
                                             ("mlp.gate_up_proj", ("gate", "up")))),
)}
_ARCHS = tuple(FAMILIES)
#: Tensors some checkpoints carry that the model does not need.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def load_hf_config(path) -> LlamaShape:
    """Read and check ``config.json`` of a model folder of a supported family."""
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


def hf_family(cfg, p="config.json") -> Family:
    """The :class:`Family` of an HF config dict (``architectures[0]``, else ``model_type``)."""
    if not isinstance(cfg, dict):
        raise CompileError(f"{p}: must hold a JSON object")
    archs = cfg.get("architectures") or []
    if not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise CompileError(f"{p}: architectures must be a list of names, not {archs!r}")
    if not archs:
        archs = [f.arch for f in FAMILIES.values() if f.model_type == cfg.get("model_type")]
    if not archs or archs[0] not in FAMILIES:
        raise CompileError(f"{p}: unsupported architecture {archs[0] if archs else None!r} "
                           f"(accepted: {', '.join(_ARCHS)})")
    fam = FAMILIES[archs[0]]
    if cfg.get("model_type", fam.model_type) != fam.model_type:
        raise CompileError(f"{p}: unsupported model_type {cfg.get('model_type')!r} for "
                           f"{fam.arch} (accepted: {fam.model_type!r})")
    return fam


def _biases(cfg, fam: Family, p) -> tuple[str, ...]:
    """The roles with a bias: the family's, and those ``attention_bias``/``mlp_bias`` add."""
    roles = set(fam.biases)
    for key, group in (("attention_bias", LINEAR_ROLES[:4]), ("mlp_bias", LINEAR_ROLES[4:])):
        v = cfg.get(key, False)
        if not isinstance(v, bool):
            raise CompileError(f"{p}: {key} must be true or false, not {v!r}")
        if v and not fam.flag_biases:
            raise CompileError(f"{p}: unsupported {key}=true for {fam.arch} (accepted: false)")
        if v:
            roles |= set(group)
    return tuple(r for r in LINEAR_ROLES if r in roles)


def _sliding_window(cfg, fam: Family, p) -> int | None:
    """The attention window the model applies, or None (full causal attention)."""
    w = cfg.get("sliding_window")
    if fam.model_type == "llama":
        return None                                 # LLaMA has no window
    if fam.model_type == "qwen2":
        types = cfg.get("layer_types")
        if types is not None:
            kinds = ("full_attention", "sliding_attention")
            if not (isinstance(types, list) and set(types) <= set(kinds)):
                raise CompileError(f"{p}: unsupported layer_types {types!r} (accepted: "
                                   f"{' or '.join(kinds)} per layer)")
            used = "sliding_attention" in types
        else:
            layers = cfg.get("num_hidden_layers", 0)
            used = bool(cfg.get("use_sliding_window")) and \
                isinstance(layers, int) and layers > cfg.get("max_window_layers", 0)
        if not used:
            return None
    if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
        raise CompileError(f"{p}: sliding_window must be null or a positive integer, not {w!r}")
    return w


def _rope(cfg, p) -> tuple[float | None, dict | None]:
    """``(rope_theta, scaling)`` from ``rope_scaling`` / ``rope_parameters``."""
    theta = cfg.get("rope_theta")
    scaling = None
    partial = cfg.get("partial_rotary_factor", 1.0)
    for key in ("rope_scaling", "rope_parameters"):     # older and newer HF spellings
        rs = cfg.get(key)
        if rs in (None, {}):
            continue
        if not isinstance(rs, dict):
            raise CompileError(f"{p}: {key} must be an object, not {rs!r}")
        rs = dict(rs)
        kind = rs.pop("rope_type", rs.pop("type", "default"))
        theta = rs.pop("rope_theta", theta)
        partial = rs.pop("partial_rotary_factor", partial)
        if kind == "llama3":
            scaling = {"rope_type": "llama3", **rs}
        elif kind != "default" or rs:
            raise CompileError(f"{p}: unsupported {key} {cfg[key]!r} (accepted: rope_type "
                               f"default or llama3)")
    if partial != 1.0:
        raise CompileError(f"{p}: unsupported partial_rotary_factor {partial!r} (accepted: "
                           f"1.0, RoPE on the whole head)")
    return theta, scaling


def parse_hf_config(cfg, p="config.json") -> LlamaShape:
    """Check an HF config dict of a supported family; ``p`` names it in errors.

    A sliding window shorter than ``max_position_embeddings`` becomes the modelled
    positions (:attr:`LlamaShape.sliding_window`).
    """
    fam = hf_family(cfg, p)
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise CompileError(f"{p}: unsupported hidden_act {act!r} (accepted: 'silu')")
    biases = _biases(cfg, fam, p)
    window = _sliding_window(cfg, fam, p)
    theta, scaling = _rope(cfg, p)
    try:
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        head_dim = cfg.get("head_dim")
        if head_dim is None:
            if not (isinstance(heads, int) and isinstance(hidden, int) and heads > 0):
                raise CompileError(f"num_attention_heads must be a positive integer, not "
                                   f"{heads!r}")
            head_dim = hidden // heads
        max_pos = cfg.get("max_position_embeddings", 2048)
        if window is not None and isinstance(max_pos, int) and window < max_pos:
            max_pos = window
        shape = LlamaShape(
            vocab_size=cfg["vocab_size"], hidden_size=hidden,
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads, head_dim=head_dim,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=theta if theta is not None else 10000.0,
            max_position_embeddings=max_pos,
            rope_scaling=scaling,
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            linear_biases=biases, sliding_window=window)
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


def _split_fused(tensors: dict, shape: LlamaShape, fam: Family) -> dict:
    """Split the family's fused tensors (Phi-3's ``qkv_proj``, ``gate_up_proj``) into the
    per-role LLaMA names; a fused tensor missing or of another shape is refused by name."""
    if not fam.fused:
        return tensors
    out = dict(tensors)
    dims = linear_dims(shape)
    for i in range(shape.num_hidden_layers):
        p = f"model.layers.{i}."
        for suffix, roles in fam.fused:
            name = p + suffix + ".weight"
            rows = [dims[r][0] for r in roles]
            want = [sum(rows), dims[roles[0]][1]]
            if name not in out:
                raise CompileError(f"missing tensor {name} (expected shape {want})")
            t = out.pop(name)
            if list(t.shape) != want:
                raise CompileError(f"tensor {name} has shape {list(t.shape)}, expected {want} "
                                   f"({' + '.join(map(str, rows))} rows of "
                                   f"{', '.join(roles)})")
            for role, part in zip(roles, t.split(rows)):
                out[p + linear_name(role) + ".weight"] = part
    return out


def import_hf(path) -> Graph:
    """Import a model folder in HF layout into a :class:`~compiler.ir.Graph`.

    A ``quantization_config`` in ``config.json`` is honoured (GPTQ, AWQ:
    :mod:`.quantized_hf`, for the families in the LLaMA tensor layout) or refused, never
    ignored."""
    cfg = read_hf_config(path)
    p = Path(path) / "config.json"
    shape = parse_hf_config(cfg, p)
    fam = hf_family(cfg, p)
    tensors = load_hf_tensors(path)
    # The layer count is checked against the checkpoint before anything is sized by it.
    held = {int(m.group(1)) for m in map(_LAYER_NAME.match, tensors) if m}
    if shape.num_hidden_layers > len(held):
        raise CompileError(f"{path}: config.json says num_hidden_layers="
                           f"{shape.num_hidden_layers}, the checkpoint holds {len(held)} "
                           f"layers")
    if isinstance(cfg, dict) and "quantization_config" in cfg:
        if fam.fused:
            raise CompileError(f"{p}: a quantized {fam.arch} checkpoint is not supported "
                               f"(accepted: the families without fused tensors)")
        from .quantized_hf import import_quantized_hf
        return import_quantized_hf(path, shape, cfg["quantization_config"], tensors)
    try:
        tensors = _split_fused(tensors, shape, fam)
    except CompileError as e:
        raise CompileError(f"{path}: {e}") from None
    want = llama_param_shapes(shape)
    for name, t in tensors.items():
        if name not in want and not name.endswith(_IGNORED_SUFFIXES):
            if name == "lm_head.weight" and shape.tie_word_embeddings:
                continue
            raise CompileError(f"{path}: unexpected tensor {name} (shape {list(t.shape)}) "
                               f"for {shape.num_hidden_layers}-layer {fam.arch}")
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
