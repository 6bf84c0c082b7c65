"""Import a Hugging Face decoder checkpoint (``config.json`` + ``*.safetensors``).

Supported families, all one graph (:func:`compiler.ir.build_llama_graph`); with gated
SiLU MLPs, RMSNorm, RoPE (default or ``llama3`` scaling), grouped-query attention and
tied or untied embeddings:

* ``LlamaForCausalLM`` (``llama``), with ``attention_bias`` / ``mlp_bias``;
* ``MistralForCausalLM`` (``mistral``): a query at position ``p`` sees the keys
  ``p - sliding_window + 1 .. p`` (the SFU's ``SOFTMAX`` window);
* ``Qwen2ForCausalLM`` (``qwen2``): biases on the q, k, v projections; a sliding window
  of every layer as Mistral's, one of only some layers (``max_window_layers``) caps the
  modelled positions at the window (within it the sliding mask is the causal one);
* ``Phi3ForCausalLM`` (``phi3``): the fused ``qkv_proj`` and ``gate_up_proj`` are split
  into q, k, v and gate, up at import; its sliding window as Mistral's; ``longrope``
  scaling and a ``partial_rotary_factor`` other than 1 are refused.

and, with LayerNorm, an ungated MLP (``down(act(up(x)))``), learned positions and biases
on every linear layer, imported into the same tensor names:

* ``GPT2LMHeadModel`` (``gpt2``): GELU in the tanh form (``gelu_new``); the ``Conv1D``
  weights are transposed and ``c_attn`` split into q, k, v at import;
* ``OPTForCausalLM`` (``opt``): ReLU; the position table's two offset rows are dropped.

and the encoder ``BertModel`` (``bert``, sentence-transformers' layout): :mod:`.bert`.

Anything else raises a one-line :class:`CompileError` naming the file and the field or
tensor: a config field that changes the arithmetic and is not implemented is refused,
never ignored.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
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
    Family("GPT2LMHeadModel", "gpt2"),
    Family("OPTForCausalLM", "opt"),
    Family("BertModel", "bert"),
)}
#: Families with LayerNorm, an ungated MLP and learned positions, converted by name.
_LEARNED = ("gpt2", "opt")
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


def _sliding_window(cfg, fam: Family, p) -> tuple[int | None, bool]:
    """``(window, every_layer)``: the attention window the model applies (None: full
    causal attention) and whether all its layers apply it (Qwen2 may window only some)."""
    w = cfg.get("sliding_window")
    if fam.model_type == "llama":
        return None, True                           # LLaMA has no window
    every = True
    if fam.model_type == "qwen2":
        types = cfg.get("layer_types")
        if types is not None:
            kinds = ("full_attention", "sliding_attention")
            if not (isinstance(types, list) and set(types) <= set(kinds)):
                raise CompileError(f"{p}: unsupported layer_types {types!r} (accepted: "
                                   f"{' or '.join(kinds)} per layer)")
            used, every = "sliding_attention" in types, "full_attention" not in types
        else:
            layers = cfg.get("num_hidden_layers", 0)
            first = cfg.get("max_window_layers", 0)
            used = bool(cfg.get("use_sliding_window")) and \
                isinstance(layers, int) and layers > first
            every = first == 0
        if not used:
            return None, True
    if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
        raise CompileError(f"{p}: sliding_window must be null or a positive integer, not {w!r}")
    return w, every


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


def float_weight(t: torch.Tensor, name: str, where) -> torch.Tensor:
    """``t``, a checkpoint's float tensor ``name``; refused (naming it and ``where``) when
    it is not a float type or holds NaN or infinite values."""
    if not t.is_floating_point():
        raise CompileError(f"{where}: tensor {name} has dtype {t.dtype}, expected a float "
                           f"type")
    if not bool(torch.isfinite(t).all()):
        raise CompileError(f"{where}: tensor {name} holds NaN or infinite values (accepted: "
                           f"finite weights)")
    return t


@contextmanager
def _config_fields(p):
    """Turn a missing field, a field of the wrong type or a refused value met while a
    config's fields are read into one CompileError naming the config ``p``."""
    try:
        yield
    except KeyError as e:
        raise CompileError(f"{p}: missing field {e.args[0]}") from None
    except TypeError as e:
        raise CompileError(f"{p}: bad field type ({e})") from None
    except CompileError as e:
        raise CompileError(f"{p}: {e}") from None


def parse_hf_config(cfg, p="config.json") -> LlamaShape:
    """Check an HF config dict of a supported family; ``p`` names it in errors.

    A sliding window of every layer is :attr:`LlamaShape.sliding_window`; one of only some
    layers (Qwen2's ``max_window_layers``) caps the modelled positions at the window,
    within which the sliding mask is the causal one.
    """
    fam = hf_family(cfg, p)
    if fam.model_type in _LEARNED:
        return _learned_shape(cfg, fam, p)
    if fam.model_type == "bert":
        from .bert import bert_shape
        return bert_shape(cfg, p)
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise CompileError(f"{p}: unsupported hidden_act {act!r} (accepted: 'silu')")
    biases = _biases(cfg, fam, p)
    window, every_layer = _sliding_window(cfg, fam, p)
    theta, scaling = _rope(cfg, p)
    with _config_fields(p):
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        head_dim = cfg.get("head_dim")
        if head_dim is None:
            if not (isinstance(heads, int) and isinstance(hidden, int) and heads > 0):
                raise CompileError(f"num_attention_heads must be a positive integer, not "
                                   f"{heads!r}")
            head_dim = hidden // heads
        max_pos = cfg.get("max_position_embeddings", 2048)
        if window is not None and not every_layer:
            if isinstance(max_pos, int) and window < max_pos:
                max_pos = window
            window = None
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


_LAYER_NAME = re.compile(r"(model\.layers|model\.decoder\.layers|transformer\.h|h)\.(\d+)\.")


def _flag(cfg, key, want, p):
    """Refuse a boolean config field that is present and differs from ``want``."""
    v = cfg.get(key, want)
    if v is not want:
        raise CompileError(f"{p}: unsupported {key}={json.dumps(v)} (accepted: "
                           f"{json.dumps(want)})")


def _learned_shape(cfg, fam: Family, p) -> LlamaShape:
    """The shape of a GPT-2 or OPT config: LayerNorm, an ungated MLP, learned positions."""
    if fam.model_type == "gpt2":
        for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx",
                                                         False),
                          ("add_cross_attention", False)):
            _flag(cfg, key, want, p)
        act, acts = cfg.get("activation_function", "gelu_new"), {
            "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}
        names = dict(hidden="n_embd", layers="n_layer", heads="n_head", positions="n_positions")
        eps = cfg.get("layer_norm_epsilon", 1e-5)
        biases = LINEAR_ROLES[:4] + ("up", "down")
    else:
        for key, want in (("do_layer_norm_before", True), ("_remove_final_layer_norm", False),
                          ("layer_norm_elementwise_affine", True)):
            _flag(cfg, key, want, p)
        if cfg.get("word_embed_proj_dim") not in (None, cfg.get("hidden_size")):
            raise CompileError(f"{p}: unsupported word_embed_proj_dim="
                               f"{cfg['word_embed_proj_dim']} (accepted: hidden_size, no "
                               f"embedding projection)")
        act, acts = cfg.get("activation_function", "relu"), {"relu": "relu"}
        names = dict(hidden="hidden_size", layers="num_hidden_layers",
                     heads="num_attention_heads", positions="max_position_embeddings")
        eps = 1e-5                                   # nn.LayerNorm's default, fixed in OPT
        biases = (LINEAR_ROLES[:4] + ("up", "down")) if cfg.get("enable_bias", True) else ()
    if act not in acts:
        raise CompileError(f"{p}: unsupported activation_function {act!r} (accepted: "
                           f"{', '.join(map(repr, acts))})")
    with _config_fields(p):
        hidden, heads = cfg[names["hidden"]], cfg[names["heads"]]
        if not (isinstance(heads, int) and isinstance(hidden, int) and heads > 0
                and hidden % heads == 0):
            raise CompileError(f"{names['heads']}={heads!r} must be a positive integer that "
                               f"divides {names['hidden']}={hidden!r}")
        inter = cfg.get("n_inner") if fam.model_type == "gpt2" else cfg["ffn_dim"]
        shape = LlamaShape(
            vocab_size=cfg["vocab_size"], hidden_size=hidden,
            intermediate_size=inter if inter is not None else 4 * hidden,
            num_hidden_layers=cfg[names["layers"]], num_attention_heads=heads,
            num_key_value_heads=heads, head_dim=hidden // heads, rms_norm_eps=eps,
            max_position_embeddings=cfg.get(names["positions"], 1024),
            tie_word_embeddings=cfg.get("tie_word_embeddings", True),
            linear_biases=biases, norm="layer", mlp=acts[act], positions="learned")
    return shape


def _renames(shape: LlamaShape, fam: Family) -> dict:
    """Checkpoint name -> (its shape, ``[(new name, convert)]``) of a GPT-2 or OPT layout;
    ``convert(t)`` gives the tensor under the LLaMA name (GPT-2's ``Conv1D`` weights are
    stored transposed, its ``c_attn`` holds q, k, v; OPT's position table starts at row 2).
    """
    d, f, P = shape.hidden_size, shape.intermediate_size, shape.max_position_embeddings
    T = lambda t: t.t()                                     # noqa: E731
    same = lambda t: t                                      # noqa: E731
    out = {}

    def norm(src, dst):
        for part in ("weight", "bias"):
            out[f"{src}.{part}"] = ((d,), [(f"{dst}.{part}", same)])

    if fam.model_type == "gpt2":
        out["wte.weight"] = ((shape.vocab_size, d), [("model.embed_tokens.weight", same)])
        out["wpe.weight"] = ((P, d), [("model.embed_positions.weight", same)])
        norm("ln_f", "model.norm")
        for i in range(shape.num_hidden_layers):
            h, L = f"h.{i}.", f"model.layers.{i}."
            norm(h + "ln_1", L + "input_layernorm")
            norm(h + "ln_2", L + "post_attention_layernorm")
            qkv = [(L + f"self_attn.{r}_proj", j) for j, r in enumerate("qkv")]
            out[h + "attn.c_attn.weight"] = ((d, 3 * d), [
                (n + ".weight", lambda t, j=j: t[:, j * d:(j + 1) * d].t()) for n, j in qkv])
            out[h + "attn.c_attn.bias"] = ((3 * d,), [
                (n + ".bias", lambda t, j=j: t[j * d:(j + 1) * d]) for n, j in qkv])
            for src, dst, shp in (("attn.c_proj", "self_attn.o_proj", (d, d)),
                                  ("mlp.c_fc", "mlp.up_proj", (d, f)),
                                  ("mlp.c_proj", "mlp.down_proj", (f, d))):
                out[h + src + ".weight"] = (shp, [(L + dst + ".weight", T)])
                out[h + src + ".bias"] = ((shp[1],), [(L + dst + ".bias", same)])
        return {**out, **{"transformer." + k: v for k, v in out.items()}}
    out["model.decoder.embed_tokens.weight"] = ((shape.vocab_size, d),
                                                [("model.embed_tokens.weight", same)])
    out["model.decoder.embed_positions.weight"] = ((P + 2, d), [
        ("model.embed_positions.weight", lambda t: t[2:])])
    norm("model.decoder.final_layer_norm", "model.norm")
    for i in range(shape.num_hidden_layers):
        h, L = f"model.decoder.layers.{i}.", f"model.layers.{i}."
        norm(h + "self_attn_layer_norm", L + "input_layernorm")
        norm(h + "final_layer_norm", L + "post_attention_layernorm")
        for src, dst, shp in (("self_attn.q_proj", "self_attn.q_proj", (d, d)),
                              ("self_attn.k_proj", "self_attn.k_proj", (d, d)),
                              ("self_attn.v_proj", "self_attn.v_proj", (d, d)),
                              ("self_attn.out_proj", "self_attn.o_proj", (d, d)),
                              ("fc1", "mlp.up_proj", (f, d)), ("fc2", "mlp.down_proj", (d, f))):
            out[h + src + ".weight"] = (shp, [(L + dst + ".weight", same)])
            if shape.linear_biases:
                out[h + src + ".bias"] = ((shp[0],), [(L + dst + ".bias", same)])
    return out


#: GPT-2's causal-mask buffers, which older checkpoints carry.
_GPT2_BUFFERS = re.compile(r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias$")


def _rename(tensors: dict, shape: LlamaShape, fam: Family) -> dict:
    """A GPT-2 or OPT checkpoint under the LLaMA names (:func:`_renames`); a tensor of
    another shape is refused by its own name; names not in the layout are kept (so the
    import names them as unexpected)."""
    plan = _renames(shape, fam)
    out, seen = {}, set()
    for name, t in tensors.items():
        if fam.model_type == "gpt2" and _GPT2_BUFFERS.match(name):
            continue
        if name not in plan:
            out[name] = t
            continue
        want, targets = plan[name]
        if tuple(t.shape) != want:
            raise CompileError(f"tensor {name} has shape {list(t.shape)}, expected "
                               f"{list(want)}")
        for new, convert in targets:
            out[new] = convert(t).contiguous()
        seen.add(name.removeprefix("transformer."))
    for name, (want, _) in plan.items():
        if not name.startswith("transformer.") and name not in seen:
            raise CompileError(f"missing tensor {name} (expected shape {list(want)})")
    return out


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
    if fam.model_type == "bert":
        if "quantization_config" in cfg:
            raise CompileError(f"{p}: a quantized BertModel checkpoint is not supported "
                               f"(accepted: float weights)")
        from .bert import import_bert
        return import_bert(path, cfg, tensors)
    # The layer count is checked against the checkpoint before anything is sized by it.
    held = {int(m.group(2)) for m in map(_LAYER_NAME.match, tensors) if m}
    if shape.num_hidden_layers > len(held):
        raise CompileError(f"{path}: config.json says num_hidden_layers="
                           f"{shape.num_hidden_layers}, the checkpoint holds {len(held)} "
                           f"layers")
    if isinstance(cfg, dict) and "quantization_config" in cfg:
        if fam.fused or fam.model_type in _LEARNED:
            raise CompileError(f"{p}: a quantized {fam.arch} checkpoint is not supported "
                               f"(accepted: the families in LLaMA's tensor layout: "
                               f"LLaMA, Mistral, Qwen2)")
        from .quantized_hf import import_quantized_hf
        return import_quantized_hf(path, shape, cfg["quantization_config"], tensors)
    try:
        if fam.model_type in _LEARNED:
            tensors = _rename(tensors, shape, fam)
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
        if name in want:
            float_weight(t, name, path)
    try:
        return build_llama_graph(shape, tensors)
    except CompileError as e:
        raise CompileError(f"{path}: {e}") from None
