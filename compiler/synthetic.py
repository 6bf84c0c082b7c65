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
  compiler first reads them, and only the last layer read is kept in memory; a streamed
  layer (a recipe's other formats, N:M sparsity) draws its records' formats and values
  of those formats, so its streams' sizes, fixed by the formats, are known without its
  values (``compile --size-only``); a recipe whose record sizes follow the weights
  (block skip, a choice among formats of different widths) is refused;
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
from airfoil import format_registry
from airfoil.formats import qmax
from airfoil.packing import NM_PATTERNS, nm_code
from airfoil.yamlfile import read_yaml

from .llm_recipe import load_llm_recipe
from .reference import LlamaShape

__all__ = ["SHAPES", "SyntheticLinear", "SyntheticEmbedding", "load_shape",
           "synthetic_model", "layer_names", "record_size_fixed", "FIXED_SIZE_RECIPES"]

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
#: Largest normal OVP4 value (larger ones are outliers, which need a pruned partner).
OVP_NORMAL = 7
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

    ``q`` (int8) and ``scales`` (float16) come from generators of their own, so reading
    the scales alone (what planning needs) is cheap; the last layer's tensors are kept
    (one slot per kind), so reading ``q`` tile by tile draws it once.

    A dense INT4/INT8 layer runs from WGT tiles (``q`` uniform in ``-qmax..qmax``). A
    streamed layer (``candidates`` given) holds one record format per record of
    ``record_rows`` rows x ``group`` columns (``formats``: the one candidate, or one drawn
    per record among candidates of one record size) and values of that format (OVP4: its
    normal values; N:M ``sparsity``: N kept weights drawn in each window of M, ``mask``).

    Parameters
    ----------
    name : str
        The layer's name (seeds its generators).
    rows, k, bits, group, seed : int
    candidates : tuple of str, optional
        Record format names of a streamed layer (None: a WGT-tile layer).
    sparsity : str
        ``dense`` or an N:M pattern.
    record_rows : int
        Rows of a stream record (the config's decode-unit slice chains).
    """

    _kept: dict = {}
    #: One copy of its input (QLinear's field).
    input_copies = 1

    def __init__(self, name: str, rows: int, k: int, bits: int, group: int, seed: int, *,
                 candidates: tuple | None = None, sparsity: str = "dense",
                 record_rows: int = 1):
        if k % group:
            raise CompileError(f"synthetic layer {name}: group {group} does not divide k={k}")
        self.name, self.rows, self.k = name, int(rows), int(k)
        self.bits, self.group, self.seed = int(bits), int(group), int(seed)
        self.in_features = self.k
        self.candidates = None if candidates is None else tuple(candidates)
        self.sparsity, self.record_rows = str(sparsity), int(record_rows)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, k)."""
        return self.rows, self.k

    @property
    def streamed(self) -> bool:
        """Whether the layer runs from the weight stream."""
        return self.candidates is not None

    def _draw(self, kind: str):
        key = (self.seed, self.name, self.rows, self.k, self.bits, self.group,
               self.candidates, self.sparsity, self.record_rows)
        slot = SyntheticLinear._kept.get(kind)
        if slot is not None and slot[0] == key:
            return slot[1]
        rng = _rng(self.seed, f"{self.name}.{kind}")
        if kind == "q" and not self.streamed:
            m = qmax(self.bits)
            t = torch.from_numpy(rng.integers(-m, m + 1, size=(self.rows, self.k),
                                              dtype=np.int8))
        elif kind == "q":
            t = self._stream_values(rng)
        elif kind == "formats":
            t = self._record_formats(rng)
        elif kind == "mask":
            n, m = NM_PATTERNS[nm_code(self.sparsity)]
            order = rng.random((self.rows, self.k // m, m)).argsort(axis=-1)
            t = torch.from_numpy((order < n).reshape(self.rows, self.k))
        else:
            amax = np.abs(rng.normal(0.0, 2.5 * WEIGHT_STD,
                                     size=(self.rows, self.k // self.group))) + WEIGHT_STD
            t = torch.from_numpy((amax / qmax(self.bits)).astype(np.float16))
        SyntheticLinear._kept[kind] = (key, t)
        return t

    def _record_formats(self, rng) -> torch.Tensor:
        """(rows, k / group) record tags, the same in each record's rows."""
        tags = np.array([format_registry.by_name(f).tag for f in self.candidates])
        batches = -(-self.rows // self.record_rows)
        pick = rng.integers(0, len(tags), size=(batches, self.k // self.group))
        per_row = np.repeat(tags[pick], self.record_rows, axis=0)[:self.rows]
        return torch.from_numpy(per_row.astype(np.int64))

    def _stream_values(self, rng) -> torch.Tensor:
        """(rows, k) values, each group's of its record's format, 0 where pruned."""
        tags = np.repeat(self.formats.numpy(), self.group, axis=1)
        q = np.zeros((self.rows, self.k), dtype=np.int64)
        for f in self.candidates:
            spec = format_registry.by_name(f)
            vals = np.array([v for v in spec.quant_values()
                             if spec.kind != "ovp" or abs(v) <= OVP_NORMAL])
            drawn = vals[rng.integers(0, len(vals), size=(self.rows, self.k))]
            q = np.where(tags == spec.tag, drawn, q)
        t = torch.from_numpy(q)
        return t if self.mask is None else torch.where(self.mask, t, 0)

    @property
    def q(self) -> torch.Tensor:
        """(rows, k) int8 values (a streamed layer's: int64, as the quantizer's)."""
        return self._draw("q")

    @property
    def scales(self) -> torch.Tensor:
        """(rows, k / group) float16 positive group scales."""
        return self._draw("scales")

    @property
    def formats(self) -> torch.Tensor | None:
        """(rows, k / group) record tags of a streamed layer; None on WGT tiles."""
        return self._draw("formats") if self.streamed else None

    @property
    def mask(self) -> torch.Tensor | None:
        """(rows, k) bool: the weights an N:M pattern keeps (None when dense)."""
        return self._draw("mask") if self.sparsity != "dense" else None


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


def record_size_fixed(lq) -> str | None:
    """Why the records of a layer quantized as ``lq`` change size with its weights, or
    None when they do not (one format, or candidates of one code and zero-point width,
    dense or N:M): only then can a model be compiled from its shape alone."""
    if lq.sparsity == "block":
        return "block skip keeps the k-steps the weights fill"
    widths = {(s.code_bits, s.zero_point_bits)
              for s in map(format_registry.by_name, lq.formats)}
    if len(widths) > 1:
        return (f"a per-group choice among formats of different widths "
                f"({', '.join(lq.formats)}) follows the weights")
    return None


#: What a synthetic model's streamed layers accept (error messages).
FIXED_SIZE_RECIPES = ("one format per layer (int2/3/4/6/8, ovp, uint4z), bitmod3/bitmod4 "
                      "or a choice among formats of one width, dense or N:M sparse")


def synthetic_model(shape: LlamaShape, *, seed: int = 0, recipe=None,
                    record_rows: int | None = None) -> dict:
    """The quantized model (:func:`compiler.passes.quantized_model`'s form) of ``shape``
    with seeded weights in the formats ``recipe`` (default: the default LLM recipe) gives.

    A streamed layer's records hold ``record_rows`` rows (the config's decode-unit slice
    chains, :class:`compiler.passes.StreamShape`; default its default); a recipe whose
    records' sizes depend on the weights (:func:`record_size_fixed`) is refused.
    """
    from dataclasses import asdict

    from .passes import StreamShape
    rr = StreamShape().rows if record_rows is None else int(record_rows)
    plan = load_llm_recipe(recipe).resolve(layer_names(shape))
    s = shape
    d, hd, f = s.hidden_size, s.head_dim, s.intermediate_size
    dims = {"q": (s.num_attention_heads * hd, d), "k": (s.num_key_value_heads * hd, d),
            "v": (s.num_key_value_heads * hd, d), "o": (d, s.num_attention_heads * hd),
            "gate": (f, d), "up": (f, d), "down": (d, f)}

    def lin(name, rows, k):
        lq = plan[name]
        if not lq.streamed:
            return SyntheticLinear(name, rows, k, lq.bits, lq.group, seed)
        why = record_size_fixed(lq)
        if why is not None:
            raise CompileError(f"synthetic layer {name}: {lq.label} cannot be made from "
                               f"the shape alone: {why} (accepted: {FIXED_SIZE_RECIPES})")
        return SyntheticLinear(name, rows, k, lq.bits, lq.group, seed,
                               candidates=lq.formats, sparsity=lq.sparsity, record_rows=rr)

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
