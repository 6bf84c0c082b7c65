"""Synthetic full-size decoder models: seeded weights made one layer at a time.

A LLaMA-2-7B-class model holds 6.7 billion weights: its float parameters (27 GB) do not fit
this machine's memory, and no checkpoint can be downloaded. What sizes a compile (the
programs, the memory map, the image, the cycle model) is the model's shape and its
quantized form, not its values, so :func:`synthetic_model` builds the plain quantized model
of :func:`compiler.passes.quantized_model` from a :class:`~compiler.reference.LlamaShape`
with every tensor made on demand from a seed:

- each linear layer is a :class:`SyntheticLinear`: its values and FP16 group scales are
  drawn directly in the form the recipe's round-to-nearest quantizer gives (signed
  ``bits``-bit integers in ``-qmax..qmax``, positive scales, group ``group``), when the
  compiler first reads them, and only the last layer read is kept in memory;
- the embedding table is a :class:`SyntheticEmbedding` whose row blocks are drawn when
  sliced;
- the RMSNorm gains (a few vectors per layer) are drawn at once.

The same seed gives the same model, tensor by tensor, whatever order they are read in
(each tensor's generator is seeded from the seed and the tensor's name).

:data:`SHAPES` names the shapes of the published models the compiler is sized for; a
YAML file of :class:`~compiler.reference.LlamaShape` fields (HF ``config.json`` names)
gives any other (:func:`load_shape`).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from airfoil.errors import CompileError
from airfoil.fixedpoint import embedding_table, quant_per_token, rmsnorm_weight
from airfoil.formats import qmax
from airfoil.yamlfile import read_yaml

from .llm_recipe import load_llm_recipe
from .reference import LlamaShape

__all__ = ["SHAPES", "SyntheticLinear", "SyntheticEmbedding", "load_shape",
           "synthetic_model", "layer_names"]

#: Shapes of published models (their HF ``config.json``), by the name ``--synthetic`` takes.
SHAPES = {
    "llama2-7b": LlamaShape(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                            num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=32, head_dim=128, rms_norm_eps=1e-5,
                            rope_theta=10000.0, max_position_embeddings=4096),
    "llama3-8b": LlamaShape(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                            num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
                            rope_theta=500000.0, max_position_embeddings=8192),
    "llama2-13b": LlamaShape(vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                             num_hidden_layers=40, num_attention_heads=40,
                             num_key_value_heads=40, head_dim=128, rms_norm_eps=1e-5,
                             rope_theta=10000.0, max_position_embeddings=4096),
}

#: Standard deviation of the float weights the scales stand for (a trained LLaMA's
#: projections are of this order): a group's scale is about ``2.5 * WEIGHT_STD / qmax``.
WEIGHT_STD = 0.02
#: Embedding rows drawn per generator (a slice draws the blocks it touches).
EMBED_BLOCK = 1024


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def load_shape(name_or_path) -> LlamaShape:
    """The shape :data:`SHAPES` names, or the one a YAML file of LlamaShape fields gives."""
    key = str(name_or_path)
    if key in SHAPES:
        return SHAPES[key]
    p = Path(key)
    if not p.is_file():
        raise CompileError(f"synthetic model {key!r} is neither a known shape "
                           f"({', '.join(SHAPES)}) nor a YAML file of LlamaShape fields")
    data = read_yaml(p, "synthetic model shape", CompileError)
    if not isinstance(data, dict):
        raise CompileError(f"{p.name}: expected a mapping of LlamaShape fields, not "
                           f"{type(data).__name__}")
    known = set(LlamaShape.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise CompileError(f"{p.name}: unknown field {unknown[0]!r} (accepted: "
                           f"{', '.join(sorted(known))})")
    try:
        return LlamaShape(**data)
    except TypeError as e:
        raise CompileError(f"{p.name}: {e}") from None


class SyntheticLinear:
    """A quantized linear layer (:class:`airfoil.fixedpoint.QLinear`'s interface) whose
    values and scales are drawn when read.

    ``q`` (int8, ``-qmax..qmax`` uniform) and ``scales`` (float16) come from two generators
    of their own, so reading the scales alone (what planning needs) is cheap; the last
    layer's tensors are kept (one slot per kind), so reading ``q`` tile by tile draws it
    once.

    Parameters
    ----------
    name : str
        The layer's name (seeds its generators).
    rows, k, bits, group, seed : int
    """

    _kept: dict = {}
    #: A dense WGT-tile layer: no format per group, no sparsity, one copy of its input
    #: (QLinear's fields).
    formats, mask, sparsity, streamed, input_copies = None, None, "dense", False, 1

    def __init__(self, name: str, rows: int, k: int, bits: int, group: int, seed: int):
        if k % group:
            raise CompileError(f"synthetic layer {name}: group {group} does not divide k={k}")
        self.name, self.rows, self.k = name, int(rows), int(k)
        self.bits, self.group, self.seed = int(bits), int(group), int(seed)
        self.in_features = self.k

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, k)."""
        return self.rows, self.k

    def _draw(self, kind: str):
        key = (self.seed, self.name, self.rows, self.k, self.bits, self.group)
        slot = SyntheticLinear._kept.get(kind)
        if slot is not None and slot[0] == key:
            return slot[1]
        rng = _rng(self.seed, f"{self.name}.{kind}")
        if kind == "q":
            m = qmax(self.bits)
            t = torch.from_numpy(rng.integers(-m, m + 1, size=(self.rows, self.k),
                                              dtype=np.int8))
        else:
            amax = np.abs(rng.normal(0.0, 2.5 * WEIGHT_STD,
                                     size=(self.rows, self.k // self.group))) + WEIGHT_STD
            t = torch.from_numpy((amax / qmax(self.bits)).astype(np.float16))
        SyntheticLinear._kept[kind] = (key, t)
        return t

    @property
    def q(self) -> torch.Tensor:
        """(rows, k) int8 values."""
        return self._draw("q")

    @property
    def scales(self) -> torch.Tensor:
        """(rows, k / group) float16 positive group scales."""
        return self._draw("scales")


class SyntheticEmbedding:
    """The embedding table as ACT (Q16) rows, drawn block by block when sliced; its INT8
    records (:meth:`records`) are the rows the memory image stores.

    Parameters
    ----------
    vocab, d, seed : int
    """

    def __init__(self, vocab: int, d: int, seed: int):
        self.vocab, self.d, self.seed = int(vocab), int(d), int(seed)

    @property
    def shape(self) -> tuple[int, int]:
        return self.vocab, self.d

    def _block(self, b: int) -> torch.Tensor:
        n = min(EMBED_BLOCK, self.vocab - b * EMBED_BLOCK)
        w = _rng(self.seed, f"embed.{b}").normal(0.0, 1.0, size=(n, self.d))
        return embedding_table(torch.from_numpy(w.astype(np.float32)))

    def __getitem__(self, rows) -> torch.Tensor:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("a synthetic embedding is read by row slices")
        a, b, _ = rows.indices(self.vocab)
        if b <= a:
            return torch.zeros((0, self.d), dtype=torch.int64)
        blocks = range(a // EMBED_BLOCK, (b - 1) // EMBED_BLOCK + 1)
        t = torch.cat([self._block(i) for i in blocks])
        off = blocks[0] * EMBED_BLOCK
        return t[a - off:b - off]

    def records(self, start: int, stop: int):
        """The INT8 records ``(q, sm, se)`` of rows ``start .. stop - 1``, as
        :meth:`airfoil.fixedpoint.QEmbedding.records` gives them for a table in memory."""
        return quant_per_token(self[start:stop])


def layer_names(shape: LlamaShape) -> list[str]:
    """The recipe names of the linear layers (``model.layers.N.self_attn.q_proj``, ...,
    ``lm_head``), as :meth:`compiler.ir.Graph.linear_layers` gives them."""
    out = []
    for i in range(shape.num_hidden_layers):
        p = f"model.layers.{i}."
        out += [p + f"self_attn.{r}_proj" for r in ("q", "k", "v", "o")]
        out += [p + f"mlp.{r}_proj" for r in ("gate", "up", "down")]
    return out + ["lm_head"]


def synthetic_model(shape: LlamaShape, *, seed: int = 0, recipe=None) -> dict:
    """The quantized model (:func:`compiler.passes.quantized_model`'s form) of ``shape``
    with seeded weights in the formats ``recipe`` (default: the default LLM recipe) gives.
    """
    from dataclasses import asdict
    plan = load_llm_recipe(recipe).resolve(layer_names(shape))
    s = shape
    d, hd, f = s.hidden_size, s.head_dim, s.intermediate_size
    dims = {"q": (s.num_attention_heads * hd, d), "k": (s.num_key_value_heads * hd, d),
            "v": (s.num_key_value_heads * hd, d), "o": (d, s.num_attention_heads * hd),
            "gate": (f, d), "up": (f, d), "down": (d, f)}

    def lin(name, rows, k):
        lq = plan[name]
        if getattr(lq, "streamed", False):
            raise CompileError(f"synthetic layer {name}: format {lq.format} "
                               f"({lq.sparsity}) is streamed; a synthetic model takes dense "
                               f"WGT-tile formats (int4, int8)")
        return SyntheticLinear(name, rows, k, lq.bits, lq.group, seed)

    def gain(name):
        return rmsnorm_weight(torch.from_numpy(
            (1.0 + 0.1 * _rng(seed, name).standard_normal(d)).astype(np.float32)))

    layers = []
    for i in range(s.num_hidden_layers):
        p = f"model.layers.{i}."
        L = {"attn_norm": gain(p + "input_layernorm"), "mlp_norm": gain(p + "post_attn_norm"),
             "eps": s.rms_norm_eps}
        for r in ("q", "k", "v", "o"):
            L[r] = lin(p + f"self_attn.{r}_proj", *dims[r])
        for r in ("gate", "up", "down"):
            L[r] = lin(p + f"mlp.{r}_proj", *dims[r])
        layers.append(L)
    return {"shape": asdict(s), "embed": SyntheticEmbedding(s.vocab_size, d, seed),
            "norm": gain("model.norm"), "lm_head": lin("lm_head", s.vocab_size, d),
            "layers": layers,
            "recipe": {n: (lq.format, lq.group) for n, lq in plan.items()}}
