"""Quantization recipes (YAML): of whole decoder LLMs and of single linear layers.

The one module that reads recipes. An LLM recipe has three sections
(``compiler/recipes/llm_default.yaml`` is the default)::

    weights:                      # ordered rules, later matches override earlier ones
      - match: "*"                # fnmatch glob over linear layer names
        format: int4              # a weight format (below)
        group: 128                # weights per FP16 scale (k is padded to a multiple)
      - match: "*.mlp.*"
        mixed: [int2, int4, int8] # a format per group: the narrowest within an error bound
        mixed_max_error: 0.02     # that bound (default 0.0125): squared error / squared weights
        sparsity: "2:4"           # dense | 1:4 | 2:4 | 2:8 | 4:16 | 8:16 | block
      - match: lm_head
        format: int8
        sparsity: block
        density: 0.75             # block: the fraction of each record's k-steps kept
        method: gptq              # rtn (default) | gptq | awq | sparsegpt
    budget:                       # optional: per-layer choice under a bits budget
      bits: 3.0                   # average bits per weight of the decoder's linear layers
      candidates:                 # the (format or mixed, sparsity) pairs a layer may take
        - {format: int4}
        - {format: int4, sparsity: "2:4"}
        - {mixed: [int2, int4, int8], mixed_max_error: 0.02}  # bound default: the rules'
    activations: {format: int8, granularity: per_token}
    kv_cache: {format: int8, granularity: per_token_head}
    embedding: {format: int4, group: 32}   # optional: int8 (a scale per row, the default)
                                           # or int4 with a scale per 128 or 32 values

Layer names are HF module names: ``model.layers.N.self_attn.{q,k,v,o}_proj``,
``model.layers.N.mlp.{gate,up,down}_proj`` and ``lm_head``.

Formats are those of :mod:`airfoil.format_registry`: the WGT-tile formats ``int4`` and
``int8`` (dense layers in them run from WGT tiles on the MATRIX unit), and the streamed
ones (``int2``, ``int3``, ``int6``, ``ovp``, the BitMoD FP4/FP3 variants, run through the
decode unit as are sparse layers and every per-group choice). ``format: bitmod4`` /
``bitmod3`` (or ``mixed: bitmod4``) name BitMoD's per-group choice among its four FP4 /
FP3 variants. A rule setting ``format`` replaces an earlier ``mixed`` (and its
``mixed_max_error``) and the other way round; ``density`` applies to ``sparsity: block``
only. ``mixed_max_error`` applies to ``mixed`` layers: a record takes the narrowest width
whose squared error is at most that fraction of its squared weights
(:func:`airfoil.packing.mixed_choice`; 0 to 1, default
:data:`airfoil.packing.MIXED_MAX_REL_ERROR`, 1.25 %). Quote N:M patterns (YAML reads
``2:4`` unquoted as the sexagesimal integer 124).

``method`` names the algorithm of :mod:`compiler.quant_algorithms`; every method but
``rtn`` needs calibration text (:mod:`compiler.calibrate`) and one format (not a per-group
choice) dense or N:M. ``budget`` (or ``airfoil compile --bits-budget B``) lets
:mod:`compiler.bits_budget` choose each decoder layer's format and sparsity among
``candidates``, its group, method and ``mixed_max_error`` from the rules.

One linear layer (``airfoil compile --recipe`` without a model,
:func:`compiler.linear.compile_linear`) reads the same recipes: the one-node graph's
layer is named ``linear``, so ``match: "*"`` rules apply to it
(``compiler/recipes/linear_default.yaml`` is its default), and its own section sets the
result's width::

    output: {format: int8}        # int8 (default) | int16 | int32; one linear layer only

A rule's ``stream: true`` streams a dense WGT-tile format through the decode unit
(``stream: false`` asks for WGT tiles and refuses a layer that needs the decode unit).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from airfoil import format_registry
from airfoil.errors import CompileError
from airfoil.packing import (MIXED_MAX_ERROR_RANGE, MIXED_MAX_REL_ERROR, MIXED_PRESETS,
                             NM_BY_NAME)
from airfoil.resources import package_path
from airfoil.yamlfile import read_yaml

from .quant_algorithms import METHODS

__all__ = ["LLM_DEFAULT_RECIPE", "LayerQuant", "LlmRecipe", "load_llm_recipe",
           "parse_llm_recipe", "LINEAR_DEFAULT_RECIPE", "OUT_FORMATS", "SPARSITY",
           "TILE_FORMATS", "nm_of", "RECIPE_DIR", "check_mixed_max_error", "layer_rule",
           "check_layer_config"]

#: The recipe shipped with the project.
LLM_DEFAULT_RECIPE = package_path("compiler", "recipes", "llm_default.yaml")
#: The shipped recipes.
RECIPE_DIR = package_path("compiler", "recipes")
#: The single-layer recipe shipped with the project.
LINEAR_DEFAULT_RECIPE = package_path("compiler", "recipes", "linear_default.yaml")
#: Result formats of one linear layer (the recipe's ``output`` section), with their width.
OUT_FORMATS = {"int8": 8, "int16": 16, "int32": 32}

#: Weight formats of LLM layers on WGT tiles (a PE kind computes them), with their width.
TILE_FORMATS = {f.name: f.code_bits for f in format_registry.tile_formats()
                if f.tile_pe_kinds}
#: Sparsity patterns a layer may name (N:M magnitude pruning, block skip): the stream
#: records' (:data:`airfoil.packing.NM_BY_NAME`).
SPARSITY = tuple(NM_BY_NAME)
_SECTIONS = ("weights", "activations", "kv_cache", "budget", "embedding", "output")
_RULE_KEYS = ("match", "format", "mixed", "mixed_max_error", "sparsity", "density", "group",
              "method", "stream")
#: Keys of a budget candidate.
_CANDIDATE_KEYS = ("format", "mixed", "mixed_max_error", "sparsity")
_BUDGET_KEYS = ("bits", "candidates")
_ACT = {"format": ("int8",), "granularity": ("per_token",)}
_KV = {"format": ("int8",), "granularity": ("per_token_head",)}


def streamed_formats() -> tuple:
    """Names of the formats the decode unit reads from a weight stream (registered now)."""
    return tuple(f.name for f in format_registry.streamed_formats())


def mixed_presets() -> dict:
    """Named candidate sets of a per-group choice: ``bitmod4`` and ``bitmod3`` (BitMoD's
    FP4 and FP3 variants)."""
    return dict(MIXED_PRESETS)


def _format_names() -> tuple:
    return tuple(dict.fromkeys(tuple(TILE_FORMATS) + streamed_formats()
                               + tuple(mixed_presets())))


@dataclass(frozen=True)
class LayerQuant:
    """The weight quantization of one linear layer.

    ``formats`` is one format name, or the candidates of a per-group choice (each group
    of ``record rows x group`` weights takes the one :func:`airfoil.packing.mixed_choice`
    picks: the narrowest width within ``mixed_max_error``, a fraction of the record's
    squared weights, of one width the least error). ``sparsity``
    is a pattern of :data:`SPARSITY`; ``density`` the fraction of k-steps kept by
    ``block``. The layer runs from WGT tiles when it is one dense tile format, else from
    the weight stream (:attr:`streamed`), or from the stream when ``stream`` is true.
    """

    formats: tuple
    group: int
    sparsity: str = "dense"
    density: float = 1.0
    method: str = "rtn"
    mixed_max_error: float = MIXED_MAX_REL_ERROR
    stream: bool = False

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(n, m)`` of an N:M pattern, None when dense or block."""
        return nm_of(self.sparsity)

    @property
    def format(self) -> str:
        """The format name, ``mixed`` for a per-group choice."""
        return self.formats[0] if len(self.formats) == 1 else "mixed"

    @property
    def streamed(self) -> bool:
        """Whether the layer runs from the decode unit: asked to (:attr:`stream`), or not
        one dense WGT-tile format."""
        return self.stream or self.needs_stream

    @property
    def needs_stream(self) -> bool:
        """Whether only the decode unit runs the layer (not one dense WGT-tile format)."""
        return (len(self.formats) > 1 or self.formats[0] not in TILE_FORMATS
                or self.sparsity != "dense")

    @property
    def bits(self) -> int:
        """Widest weight code in bits."""
        return max(format_registry.by_name(f).code_bits for f in self.formats)

    @property
    def widths(self) -> tuple:
        """The distinct code widths of its formats, narrowest first (several: the choice
        across widths that ``mixed_max_error`` bounds)."""
        return tuple(sorted({format_registry.by_name(f).code_bits for f in self.formats}))

    @property
    def label(self) -> str:
        """A short name: ``int4``, ``mixed(int2,int4)``, with ``/2:4`` when sparse."""
        f = self.format if self.format != "mixed" else f"mixed({','.join(self.formats)})"
        if self.sparsity == "block":
            return f"{f}/block{self.density:g}"
        return f if self.sparsity == "dense" else f"{f}/{self.sparsity}"


@dataclass(frozen=True)
class LlmRecipe:
    """A parsed recipe. ``rules`` is a tuple of dicts with ``match`` and settings."""

    rules: tuple
    activations: str = "int8_per_token"
    kv_cache: str = "int8_per_token_head"
    source: str = "recipe"
    budget: dict | None = None
    #: Values per scale of the INT4 embedding table; 0: INT8 with a scale per row
    #: (:class:`airfoil.fixedpoint.QEmbedding`).
    embedding_group: int = 0
    #: One linear layer's result format (a key of :data:`OUT_FORMATS`; the ``output``
    #: section), None when the recipe does not set it.
    output: str | None = None

    @property
    def needs_calibration(self) -> bool:
        """Whether a rule names a calibrated method or the recipe has a budget."""
        return self.budget is not None or any(
            r.get("method", "rtn") != "rtn" for r in self.rules)

    def resolve(self, layers) -> dict[str, LayerQuant]:
        """Map every layer name to its :class:`LayerQuant`.

        Raise :class:`CompileError` for a rule that matches no layer or a layer that no
        rule gives a format and group; a rule for ``lm_head`` applies to no layer of a
        model without an LM head (an encoder) and is skipped.
        """
        layers = list(layers)
        got = {name: {} for name in layers}
        for i, rule in enumerate(self.rules):
            hits = [n for n in layers if fnmatch.fnmatchcase(n, rule["match"])]
            if not hits and rule["match"] == "lm_head":
                continue                    # a model without a head (an encoder)
            if not hits:
                ex = ", ".join(layers[:2] + layers[-1:])
                raise CompileError(f"{self.source}: weights[{i}] match {rule['match']!r} "
                                   f"names no layer of the model (layers are like {ex})")
            for n in hits:
                if "format" in rule:
                    got[n].pop("mixed", None)
                    got[n].pop("mixed_max_error", None)
                if "mixed" in rule:
                    got[n].pop("format", None)
                got[n].update({k: v for k, v in rule.items() if k != "match"})
        out = {}
        for n, d in got.items():
            if ("format" not in d and "mixed" not in d) or "group" not in d:
                raise CompileError(f"{self.source}: no rule sets format (or mixed) and group "
                                   f"of layer {n}")
            sparsity = d.get("sparsity", "dense")
            if "density" in d and sparsity != "block":
                raise CompileError(f"{self.source}: layer {n}: density applies to sparsity "
                                   f"block, not {sparsity!r}")
            formats = _candidates(d["mixed"] if "mixed" in d else d["format"])
            if sparsity != "dense" and "ovp" in formats:
                raise CompileError(f"{self.source}: layer {n}: ovp weights are dense, "
                                   f"sparsity {sparsity!r} needs other formats")
            method = d.get("method", "rtn")
            if method != "rtn" and (len(formats) > 1 or sparsity == "block"
                                    or formats[0] == "ovp"):
                raise CompileError(f"{self.source}: layer {n}: method {method} takes one "
                                   f"format (not ovp), dense or N:M")
            lq = LayerQuant(formats, d["group"], sparsity, float(d.get("density", 1.0)),
                            method, float(d.get("mixed_max_error", MIXED_MAX_REL_ERROR)),
                            bool(d.get("stream", False)))
            if "mixed_max_error" in d and len(lq.widths) < 2:
                raise CompileError(f"{self.source}: layer {n}: mixed_max_error applies to "
                                   f"a mixed layer of several widths, not {lq.label}")
            if d.get("stream") is False and lq.needs_stream:
                raise CompileError(f"{self.source}: layer {n}: {lq.label} needs the decode "
                                   f"unit, not WGT tiles (stream: false; WGT tiles take "
                                   f"dense {' or '.join(TILE_FORMATS)})")
            out[n] = lq
        return out


def _candidates(value) -> tuple:
    """The format names of a rule's ``format`` or ``mixed`` value (a preset expanded)."""
    presets = mixed_presets()
    if isinstance(value, str):
        return tuple(presets.get(value, (value,)))
    return tuple(dict.fromkeys(f for v in value for f in presets.get(v, (v,))))


def _check_section(data, name, allowed, source):
    if data is None:
        return
    if not isinstance(data, dict):
        raise CompileError(f"{source}: {name} must be a mapping, not {type(data).__name__}")
    for k, v in data.items():
        if k not in allowed:
            raise CompileError(f"{source}: {name}.{k} is not a known key (accepted: "
                               f"{', '.join(allowed)})")
        if v not in allowed[k]:
            raise CompileError(f"{source}: {name}.{k} = {v!r} is not supported (accepted: "
                               f"{', '.join(allowed[k])})")


def _check_rule(r: dict, where: str) -> None:
    """Check a rule's format, mixed, sparsity and density values (one-line errors)."""
    names = _format_names()
    if "format" in r and "mixed" in r:
        raise CompileError(f"{where} sets both format and mixed (accepted: one of them)")
    if "format" in r and "mixed_max_error" in r:
        raise CompileError(f"{where} sets mixed_max_error with format (accepted: with mixed)")
    if "format" in r and r["format"] not in names:
        raise CompileError(f"{where}.format = {r['format']!r} is not supported (accepted: "
                           f"{', '.join(names)})")
    if "mixed" in r:
        m = r["mixed"]
        cands = [m] if isinstance(m, str) else m
        ok = streamed_formats() + tuple(mixed_presets())
        if not isinstance(cands, list) or not cands or \
                any(not isinstance(c, str) or c not in ok for c in cands):
            raise CompileError(f"{where}.mixed = {m!r} is not supported (accepted: a list "
                               f"of {', '.join(streamed_formats())}, or "
                               f"{' or '.join(mixed_presets())})")
    if "sparsity" in r and r["sparsity"] not in SPARSITY:
        hint = " (quote N:M patterns: YAML reads 2:4 as 124)" if \
            isinstance(r["sparsity"], int) else ""
        raise CompileError(f"{where}.sparsity = {r['sparsity']!r} is not supported "
                           f"(accepted: {', '.join(SPARSITY)}){hint}")
    if "method" in r and r["method"] not in METHODS:
        raise CompileError(f"{where}.method = {r['method']!r} is not supported (accepted: "
                           f"{', '.join(METHODS)})")
    if "density" in r:
        d = r["density"]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d <= 1:
            raise CompileError(f"{where}.density = {d!r} is not supported (accepted: a "
                               f"number in (0, 1], with sparsity block)")
    if "mixed_max_error" in r:
        check_mixed_max_error(r["mixed_max_error"], f"{where}.mixed_max_error")
    if "stream" in r and not isinstance(r["stream"], bool):
        raise CompileError(f"{where}.stream = {r['stream']!r} is not supported (accepted: "
                           f"true or false)")


def check_mixed_max_error(value, where: str) -> None:
    """Refuse a ``mixed_max_error`` (``where`` names it) outside
    :data:`airfoil.packing.MIXED_MAX_ERROR_RANGE` in one line naming the range."""
    lo, hi = MIXED_MAX_ERROR_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise CompileError(f"{where} = {value!r} is not supported (accepted: a number in "
                           f"[{lo:g}, {hi:g}], the largest squared error of a record over "
                           f"its squared weights)")


def parse_llm_recipe(data, source: str = "recipe") -> LlmRecipe:
    """Validate recipe data (a mapping as loaded from YAML) into an :class:`LlmRecipe`."""
    if not isinstance(data, dict):
        raise CompileError(f"{source}: a recipe must be a mapping with keys "
                           f"{', '.join(_SECTIONS)}, not {type(data).__name__}")
    for k in data:
        if k not in _SECTIONS:
            raise CompileError(f"{source}: unknown section {k!r} (accepted: "
                               f"{', '.join(_SECTIONS)})")
    rules = data.get("weights")
    if not isinstance(rules, list) or not rules:
        raise CompileError(f"{source}: weights must be a non-empty list of rules")
    out = []
    for i, r in enumerate(rules):
        if not isinstance(r, dict) or not isinstance(r.get("match"), str):
            raise CompileError(f"{source}: weights[{i}] must be a mapping with a string "
                               f"'match'")
        for k, v in r.items():
            if k not in _RULE_KEYS:
                raise CompileError(f"{source}: weights[{i}].{k} is not a known key "
                                   f"(accepted: {', '.join(_RULE_KEYS)})")
        _check_rule(r, f"{source}: weights[{i}]")
        g = r.get("group")
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g <= 0):
            raise CompileError(f"{source}: weights[{i}].group must be a positive integer, "
                               f"not {g!r}")
        out.append(dict(r))
    _check_section(data.get("activations"), "activations", _ACT, source)
    _check_section(data.get("kv_cache"), "kv_cache", _KV, source)
    budget = _parse_budget(data.get("budget"), source) if "budget" in data else None
    return LlmRecipe(rules=tuple(out), source=source, budget=budget,
                     embedding_group=_parse_embedding(data.get("embedding"), source),
                     output=_parse_output(data.get("output"), source))


def _parse_output(o, source) -> str | None:
    """The ``output`` section's format (None without the section)."""
    if o is None:
        return None
    if not isinstance(o, dict) or set(o) != {"format"} or o["format"] not in OUT_FORMATS:
        raise CompileError(f"{source}: output = {o!r} is not supported (accepted: "
                           f"{{format: {' | '.join(OUT_FORMATS)}}})")
    return o["format"]


def _parse_embedding(e, source) -> int:
    """The embedding section's group: 0 for ``{format: int8}`` (or no section), ``g`` for
    ``{format: int4, group: g}`` with ``g`` a group of :data:`airfoil.fixedpoint.
    EMBED_GROUPS`."""
    from airfoil.fixedpoint import EMBED_GROUPS
    groups = [g for g in EMBED_GROUPS if g]
    accepted = (f"{{format: int8}} or {{format: int4, group: "
                f"{' or '.join(map(str, groups))}}}")
    if e is None or e == {"format": "int8"}:
        return 0
    if (isinstance(e, dict) and set(e) == {"format", "group"} and e["format"] == "int4"
            and not isinstance(e["group"], bool) and e["group"] in groups):
        return e["group"]
    raise CompileError(f"{source}: embedding = {e!r} is not supported (accepted: "
                       f"{accepted})")


def nm_of(sparsity: str) -> tuple[int, int] | None:
    """``(n, m)`` of an N:M sparsity name (``"2:4"``), None for ``dense`` and ``block``."""
    from airfoil.packing import NM_PATTERNS
    code = NM_BY_NAME.get(sparsity)
    return NM_PATTERNS.get(code) if code else None


def _parse_budget(b, source) -> dict:
    """``{"bits": float or None, "candidates": ((format, sparsity, mixed_max_error),
    ...)}``: ``format`` a format name (or preset), or for a ``mixed`` candidate the tuple of
    its formats; ``mixed_max_error`` None when the candidate leaves it to the rules."""
    if not isinstance(b, dict):
        raise CompileError(f"{source}: budget must be a mapping with keys "
                           f"{', '.join(_BUDGET_KEYS)}")
    for k in b:
        if k not in _BUDGET_KEYS:
            raise CompileError(f"{source}: budget.{k} is not a known key (accepted: "
                               f"{', '.join(_BUDGET_KEYS)})")
    bits = b.get("bits")
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, (int, float))
                             or not 0 < bits <= 16):
        raise CompileError(f"{source}: budget.bits must be a number in (0, 16], not {bits!r}")
    cands = b.get("candidates")
    if not isinstance(cands, list) or not cands:
        raise CompileError(f"{source}: budget.candidates must be a non-empty list of "
                           f"{{format, sparsity}} mappings")
    out = []
    for i, c in enumerate(cands):
        where = f"{source}: budget.candidates[{i}]"
        if not isinstance(c, dict) or set(c) - set(_CANDIDATE_KEYS) or not (
                "format" in c or "mixed" in c):
            raise CompileError(f"{where} must be a mapping with a format (or mixed) and an "
                               f"optional sparsity and mixed_max_error (keys: "
                               f"{', '.join(_CANDIDATE_KEYS)})")
        _check_rule(c, where)
        if c.get("sparsity") == "block":
            raise CompileError(f"{where}.sparsity = 'block' is not a budget candidate "
                               f"(accepted: dense or N:M)")
        fmt = _candidates(c["mixed"]) if "mixed" in c else c["format"]
        bound = c.get("mixed_max_error")
        if bound is not None and len(LayerQuant(fmt, 32).widths) < 2:
            raise CompileError(f"{where}.mixed_max_error applies to a mixed candidate of "
                               f"several widths, not {c['mixed']!r}")
        out.append((fmt, c.get("sparsity", "dense"), None if bound is None else float(bound)))
    return {"bits": None if bits is None else float(bits), "candidates": tuple(out)}


def load_llm_recipe(path=None) -> LlmRecipe:
    """Read a recipe YAML file (default: :data:`LLM_DEFAULT_RECIPE`)."""
    p = Path(path) if path is not None else LLM_DEFAULT_RECIPE
    return parse_llm_recipe(read_yaml(p, "recipe", CompileError), source=p.name)


# -- one linear layer ----------------------------------------------------------------------

def layer_rule(*, wformat=None, group=None, sparsity=None, mixed_formats=None,
               block_density=None, mixed_max_error=None, stream=None, method=None,
               default_mixed=None, source: str = "options") -> dict:
    """:func:`compiler.linear.compile_linear`'s (and ``airfoil compile``'s) layer options as
    one recipe rule (``match: "*"``, only the keys given), checked as a recipe's rules are:
    ``wformat`` a format, a preset or ``mixed`` (its candidates ``mixed_formats``, a list or
    a comma-separated string, else ``default_mixed``), each format by its name for an
    alias, ``block_density`` the rule's ``density``."""
    rule = {"match": "*"}
    if mixed_formats is not None and str(wformat).lower() != "mixed":
        raise CompileError(f"{source}: mixed formats apply to wformat 'mixed', not "
                           f"{wformat!r}")
    if wformat is not None:
        name = str(wformat).lower()
        if name == "mixed":
            cands = default_mixed if mixed_formats is None else mixed_formats
            if isinstance(cands, str):
                cands = [c.strip() for c in cands.split(",") if c.strip()]
            rule["mixed"] = [_canonical(str(c).lower()) for c in cands or ()]
        else:
            rule["format"] = _canonical(name)
    for key, value in (("group", group), ("sparsity", sparsity), ("density", block_density),
                       ("mixed_max_error", mixed_max_error), ("stream", stream),
                       ("method", method)):
        if value is not None:
            rule[key] = value
    _check_rule(rule, source)
    return rule


def _canonical(name: str) -> str:
    """A format's name for one of its aliases (``ovp4``: ``ovp``); other names as given."""
    spec = format_registry.find_by_name(name)
    return spec.name if spec is not None else name


def check_layer_config(where: str, config, *, formats, group: int, sparsity: str = "dense",
                       streamed: bool) -> None:
    """A layer's formats (names), group and sparsity against the config: what its WGT tiles
    or its decode unit are built for (one-line :class:`CompileError` naming what is
    accepted). The one check of a layer's quantization against a config, for one linear
    layer (before quantizing) and an LLM's layers (after, on the formats they got)."""
    from airfoil.packing import core_stream_geometry, nm_code
    if group not in config.group_sizes:
        raise CompileError(f"{where}group size {group!r} is not built into config "
                           f"{config.name!r} (accepted: "
                           f"{', '.join(map(str, config.group_sizes))})")
    if not streamed:
        fmt = formats[0]
        if fmt not in config.tile_formats:
            raise CompileError(f"{where}weight format {fmt} is not a WGT-tile format of "
                               f"config {config.name!r} (accepted: "
                               f"{', '.join(config.tile_formats)}; other formats are "
                               f"streamed)")
        return
    if not config.decode_unit:
        label = ", ".join(formats) + ("" if sparsity == "dense" else f"/{sparsity}")
        raise CompileError(f"{where}streamed weights ({label}) need the decode "
                           f"unit, which config {config.name!r} lacks (it is built when "
                           f"weight_formats lists int2, int3, int6 or a BitMoD FP format or "
                           f"sparsity an N:M pattern or block; e.g. config test_decode)")
    for f in formats:
        if f not in config.stream_formats:
            raise CompileError(f"{where}streamed weight format {f!r} is not built in config "
                               f"{config.name!r} (accepted: "
                               f"{', '.join(config.stream_formats)})")
    if sparsity != "dense" and sparsity not in config.sparsity:
        raise CompileError(f"{where}sparsity {sparsity!r} is not built in config "
                           f"{config.name!r} (accepted: {', '.join(config.sparsity)})")
    core_stream_geometry(config).check_group(group, nm_code(sparsity))
