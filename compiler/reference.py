"""Float reference of the LLaMA family in plain torch.

This module is the meaning of a decoder model: the graph IR's ``float`` backend is
checked against it, and the tests check it against the pinned ``transformers``
``LlamaForCausalLM`` on random models, so a wrong RoPE convention or grouped-query head
mapping cannot hide behind a golden built from the same code.

Parameters carry the Hugging Face names (``model.layers.0.self_attn.q_proj.weight`` ...),
so :meth:`LlamaReference.state_dict` is a checkpoint in HF layout and
``scripts/train_tiny.py`` trains this very module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from airfoil import fixedpoint as fx
from airfoil.errors import CompileError
from airfoil.folder import LINEAR_ROLES, linear_roles

__all__ = ["LlamaShape", "LlamaReference", "rope_tables", "KVCache", "random_llama",
           "LINEAR_ROLES", "NORMS", "MLPS", "POSITIONS"]

#: Normalisations: RMSNorm (a gain) or LayerNorm (a gain and a bias).
NORMS = ("rms", "layer")
#: MLPs: LLaMA's ``down(silu(gate(x)) * up(x))``, or ``down(act(up(x)))`` (GPT-2, OPT);
#: ``gelu`` is GPT-2's tanh form, ``gelu_erf`` BERT's exact one (which the device runs in
#: the tanh form: the difference counts as quantization error).
MLPS = ("silu_gated", "gelu", "relu", "gelu_erf")
#: Positions: rotary (applied to q and k) or a learned table added to the embeddings.
POSITIONS = ("rope", "learned")


def _finite(v) -> bool:
    """A real number (int or float, not bool) that is neither NaN nor infinite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _rope_scaling(rs) -> dict | None:
    """A checked ``rope_scaling``: None (default RoPE) or a ``llama3`` one, numbers as float
    (the original length as int)."""
    if rs is None:
        return None
    keys = ("rope_type",) + fx.LLAMA3_ROPE_KEYS
    if not isinstance(rs, dict) or rs.get("rope_type") != "llama3" or set(rs) != set(keys):
        raise CompileError(f"rope_scaling must be null or {{rope_type: llama3, "
                           f"{', '.join(fx.LLAMA3_ROPE_KEYS)}}}, not {rs!r}")
    out = {"rope_type": "llama3"}
    for k in fx.LLAMA3_ROPE_KEYS:
        if not (_finite(rs[k]) and rs[k] > 0):
            raise CompileError(f"rope_scaling.{k} must be a positive number, not {rs[k]!r}")
        out[k] = float(rs[k])
    if out["high_freq_factor"] <= out["low_freq_factor"] or out["factor"] < 1:
        raise CompileError(f"rope_scaling needs high_freq_factor > low_freq_factor and "
                           f"factor >= 1, not {rs!r}")
    out["original_max_position_embeddings"] = int(out["original_max_position_embeddings"])
    return out


@dataclass(frozen=True)
class LlamaShape:
    """The hyper-parameters of a LLaMA-family decoder (names as in HF ``config.json``).

    Members
    -------
    vocab_size, hidden_size, intermediate_size, num_hidden_layers : int
    num_attention_heads, num_key_value_heads, head_dim : int
        ``num_attention_heads`` must be a multiple of ``num_key_value_heads``.
    rms_norm_eps, rope_theta : float
    rope_scaling : dict or None
        ``{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
        "original_max_position_embeddings"}`` (:func:`airfoil.fixedpoint.rope_inv_freq`),
        or None for the default RoPE.
    max_position_embeddings : int
    tie_word_embeddings : bool
    linear_biases : tuple of str
        The roles (:data:`LINEAR_ROLES`) whose linear layers carry a bias: Qwen2's
        ``q, k, v``, LLaMA's ``attention_bias`` (``q, k, v, o``) and ``mlp_bias``.
    sliding_window : int or None
        The attention window of every layer (Mistral, Phi-3): a query at position ``p``
        sees the keys ``p - sliding_window + 1 .. p``
        (:func:`airfoil.fixedpoint.attention_mask`); None: all earlier keys.
    norm, mlp, positions : str
        One of :data:`NORMS`, :data:`MLPS`, :data:`POSITIONS` (LLaMA: ``rms``,
        ``silu_gated``, ``rope``; GPT-2: ``layer``, ``gelu``, ``learned``). The norms' eps
        is ``rms_norm_eps`` whichever the norm.
    encoder : bool
        A BERT-style encoder (:func:`compiler.ir.build_llama_graph`): bidirectional
        attention, a LayerNorm after the embeddings (``model.norm``) and after each
        residual add (post-norm: ``input_layernorm`` after the attention's,
        ``post_attention_layernorm`` after the MLP's), no LM head: its output is the last
        layer's hidden states. Needs LayerNorm and learned positions.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    rope_scaling: dict | None = None
    linear_biases: tuple = ()
    sliding_window: int | None = None
    norm: str = "rms"
    mlp: str = "silu_gated"
    positions: str = "rope"
    encoder: bool = False

    def __post_init__(self):
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "head_dim",
                  "max_position_embeddings"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise CompileError(f"config field {f} must be a positive integer, not {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise CompileError(f"num_attention_heads={self.num_attention_heads} is not a "
                               f"multiple of num_key_value_heads="
                               f"{self.num_key_value_heads}")
        if self.head_dim % 2:
            raise CompileError(f"head_dim must be even for RoPE, not {self.head_dim}")
        eps, theta = self.rms_norm_eps, self.rope_theta
        if not (_finite(eps) and 0 <= eps <= 1):
            raise CompileError(f"config field rms_norm_eps must be 0 .. 1, not {eps!r}")
        if not (_finite(theta) and 0 < theta <= 1e12):
            raise CompileError(f"config field rope_theta must be a positive finite number, "
                               f"not {theta!r}")
        object.__setattr__(self, "rms_norm_eps", float(eps))
        object.__setattr__(self, "rope_theta", float(theta))
        object.__setattr__(self, "rope_scaling", _rope_scaling(self.rope_scaling))
        if not isinstance(self.tie_word_embeddings, bool):
            raise CompileError(f"config field tie_word_embeddings must be true or false, not "
                               f"{self.tie_word_embeddings!r}")
        biases = self.linear_biases
        if not (isinstance(biases, (tuple, list)) and set(biases) <= set(LINEAR_ROLES)):
            raise CompileError(f"linear_biases must be a list of {', '.join(LINEAR_ROLES)}, "
                               f"not {biases!r}")
        object.__setattr__(self, "linear_biases",
                           tuple(r for r in LINEAR_ROLES if r in biases))
        for name, accepted in (("norm", NORMS), ("mlp", MLPS), ("positions", POSITIONS)):
            if getattr(self, name) not in accepted:
                raise CompileError(f"{name} must be one of {', '.join(accepted)}, not "
                                   f"{getattr(self, name)!r}")
        w = self.sliding_window
        if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
            raise CompileError(f"sliding_window must be null or a positive integer, not "
                               f"{w!r}")
        if not isinstance(self.encoder, bool):
            raise CompileError(f"encoder must be true or false, not {self.encoder!r}")
        if self.encoder and (self.norm, self.positions, w) != ("layer", "learned", None):
            raise CompileError("an encoder has LayerNorm, learned positions and no "
                               "sliding window")

    @property
    def roles(self) -> tuple[str, ...]:
        """The linear roles a layer holds (no ``gate`` in an ungated MLP)."""
        return linear_roles({"mlp": self.mlp})

    @property
    def groups(self) -> int:
        """Query heads per key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    def to_hf(self) -> dict:
        """Return the fields as an HF ``config.json`` dict for ``LlamaForCausalLM``."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        biases = set(d.pop("linear_biases"))
        attn, mlp = set(LINEAR_ROLES[:4]), set(LINEAR_ROLES[4:])
        if biases not in (set(), attn, mlp, attn | mlp):
            raise CompileError(f"LlamaForCausalLM has no config for biases on "
                               f"{sorted(biases)} alone")
        if d.pop("sliding_window") is not None:
            raise CompileError("LlamaForCausalLM has no sliding_window")
        if (d.pop("norm"), d.pop("mlp"), d.pop("positions")) != ("rms", "silu_gated", "rope"):
            raise CompileError("LlamaForCausalLM has RMSNorm, a gated SiLU MLP and RoPE")
        d.update(architectures=["LlamaForCausalLM"], model_type="llama",
                 hidden_act="silu", attention_bias=attn <= biases, mlp_bias=mlp <= biases,
                 bos_token_id=None, eos_token_id=None)
        return d


def rope_tables(head_dim: int, theta: float, positions: torch.Tensor,
                scaling: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return float64 ``(cos, sin)`` of shape (len(positions), head_dim // 2).

    HF convention: frequency ``i`` is :func:`airfoil.fixedpoint.rope_inv_freq` (``theta **
    (-2 i / head_dim)``, or as ``scaling`` of type ``llama3`` says) and pairs element ``i``
    with ``i + head_dim / 2`` (``rotate_half``).
    """
    inv = fx.rope_inv_freq(head_dim, theta, scaling)
    ang = positions.to(torch.float64).unsqueeze(1) * inv.unsqueeze(0)
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., T, head_dim) with tables (T, head_dim // 2), HF ``rotate_half``."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


class KVCache:
    """Per-layer float key/value cache: lists of (kv_heads, T, head_dim) tensors."""

    def __init__(self, layers: int):
        self.k: list[torch.Tensor | None] = [None] * layers
        self.v: list[torch.Tensor | None] = [None] * layers

    @property
    def length(self) -> int:
        """Number of positions held."""
        return 0 if self.k[0] is None else self.k[0].shape[-2]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Append (kv_heads, T, head_dim) keys and values; return the whole cache."""
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k, v
        else:
            self.k[layer] = torch.cat([self.k[layer], k], dim=-2)
            self.v[layer] = torch.cat([self.v[layer], v], dim=-2)
        return self.k[layer], self.v[layer]


class _Attention(nn.Module):
    def __init__(self, s: LlamaShape):
        super().__init__()
        d, hd = s.hidden_size, s.head_dim
        b = s.linear_biases
        self.q_proj = nn.Linear(d, s.num_attention_heads * hd, bias="q" in b)
        self.k_proj = nn.Linear(d, s.num_key_value_heads * hd, bias="k" in b)
        self.v_proj = nn.Linear(d, s.num_key_value_heads * hd, bias="v" in b)
        self.o_proj = nn.Linear(s.num_attention_heads * hd, d, bias="o" in b)


class _MLP(nn.Module):
    def __init__(self, s: LlamaShape):
        super().__init__()
        b = s.linear_biases
        self.gate_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias="gate" in b)
        self.up_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias="up" in b)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias="down" in b)


class _RMSNorm(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))


class _Layer(nn.Module):
    def __init__(self, s: LlamaShape):
        super().__init__()
        self.self_attn = _Attention(s)
        self.mlp = _MLP(s)
        self.input_layernorm = _RMSNorm(s.hidden_size)
        self.post_attention_layernorm = _RMSNorm(s.hidden_size)


class _Model(nn.Module):
    def __init__(self, s: LlamaShape):
        super().__init__()
        self.embed_tokens = nn.Embedding(s.vocab_size, s.hidden_size)
        self.layers = nn.ModuleList(_Layer(s) for _ in range(s.num_hidden_layers))
        self.norm = _RMSNorm(s.hidden_size)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """HF ``LlamaRMSNorm``: normalise in float32, then scale by ``w``."""
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


class LlamaReference(nn.Module):
    """A LLaMA-family causal LM in plain torch with HF parameter names.

    Parameters
    ----------
    shape : LlamaShape
    """

    def __init__(self, shape: LlamaShape):
        super().__init__()
        if (shape.norm, shape.mlp, shape.positions) != ("rms", "silu_gated", "rope"):
            raise CompileError("LlamaReference models RMSNorm, gated SiLU MLPs and RoPE (the "
                               "graph's float backend runs the other forms)")
        self.shape = shape
        self.model = _Model(shape)
        if not shape.tie_word_embeddings:
            self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)

    def head_weight(self) -> torch.Tensor:
        """The LM head matrix (the embedding table when tied)."""
        if self.shape.tie_word_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Return logits (B, T, vocab) for ``tokens`` (B, T) after the cached positions.

        With ``cache`` the keys and values are appended to it (prefill, then decode one
        token at a time); without it the tokens start at position 0.
        """
        s = self.shape
        B, T = tokens.shape
        start = cache.length if cache is not None else 0
        if start + T > s.max_position_embeddings:
            raise CompileError(f"sequence of {start + T} positions exceeds "
                               f"max_position_embeddings={s.max_position_embeddings}")
        cos, sin = rope_tables(s.head_dim, s.rope_theta, torch.arange(start, start + T),
                               s.rope_scaling)
        h = self.model.embed_tokens(tokens)
        H, KV, hd = s.num_attention_heads, s.num_key_value_heads, s.head_dim
        for li, layer in enumerate(self.model.layers):
            a = layer.self_attn
            x = rms_norm(h, layer.input_layernorm.weight, s.rms_norm_eps)
            q = a.q_proj(x).view(B, T, H, hd).transpose(1, 2)
            k = a.k_proj(x).view(B, T, KV, hd).transpose(1, 2)
            v = a.v_proj(x).view(B, T, KV, hd).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if cache is not None:
                k, v = cache.append(li, k, v)
            S = k.shape[-2]
            k = k.repeat_interleave(s.groups, dim=1)
            v = v.repeat_interleave(s.groups, dim=1)
            att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
            mask = fx.attention_mask(S - T, T, S, s.sliding_window or 0)
            att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
            o = (att @ v).transpose(1, 2).reshape(B, T, H * hd)
            h = h + a.o_proj(o)
            x = rms_norm(h, layer.post_attention_layernorm.weight, s.rms_norm_eps)
            m = layer.mlp
            h = h + m.down_proj(nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))
        h = rms_norm(h, self.model.norm.weight, s.rms_norm_eps)
        return h @ self.head_weight().t()

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters under their HF names (``lm_head.weight`` omitted when tied)."""
        return {k: v.detach() for k, v in self.state_dict().items()}


def random_llama(*, heads, kv, hd, vocab, inter, layers, max_pos, tie=False, seed=0,
                 biases=()):
    """A random :class:`LlamaReference` whose weights give well-scaled activations.

    Matrices are N(0, 0.15^2), norm gains 1 + N(0, 0.1^2), the biases of the roles in
    ``biases`` N(0, 0.1^2).
    """
    shape = LlamaShape(vocab_size=vocab, hidden_size=heads * hd, intermediate_size=inter,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, head_dim=hd, rms_norm_eps=1e-5,
                       max_position_embeddings=max_pos, tie_word_embeddings=tie,
                       linear_biases=tuple(biases))
    torch.manual_seed(seed)
    m = LlamaReference(shape).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            gain = p.dim() == 1 and not name.endswith(".bias")
            p.copy_(torch.randn_like(p) * (0.15 if p.dim() == 2 else 0.1) + gain)
    return m
