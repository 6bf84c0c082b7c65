"""Quantization recipes for whole decoder LLMs (YAML).

A recipe has three sections (``compiler/recipes/llm_default.yaml`` is the default)::

    weights:                      # ordered rules, later matches override earlier ones
      - match: "*"                # fnmatch glob over linear layer names
        format: int4              # int4 | int8
        group: 128                # weights per FP16 scale; must divide the layer's k
    activations: {format: int8, granularity: per_token}
    kv_cache: {format: int8, granularity: per_token_head}

Layer names are HF module names: ``model.layers.N.self_attn.{q,k,v,o}_proj``,
``model.layers.N.mlp.{gate,up,down}_proj`` and ``lm_head``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path


from airfoil import format_registry
from airfoil.errors import CompileError
from airfoil.resources import package_path
from airfoil.yamlfile import read_yaml

__all__ = ["LLM_DEFAULT_RECIPE", "LayerQuant", "LlmRecipe", "load_llm_recipe",
           "parse_llm_recipe"]

#: The recipe shipped with the project.
LLM_DEFAULT_RECIPE = package_path("compiler", "recipes", "llm_default.yaml")

#: Weight formats of LLM layers (WGT tiles a PE kind computes), with their width in bits.
_WFORMATS = {f.name: f.code_bits for f in format_registry.tile_formats() if f.tile_pe_kinds}
_SECTIONS = ("weights", "activations", "kv_cache")
_RULE_KEYS = ("match", "format", "group")
_ACT = {"format": ("int8",), "granularity": ("per_token",)}
_KV = {"format": ("int8",), "granularity": ("per_token_head",)}


@dataclass(frozen=True)
class LayerQuant:
    """The weight quantization of one linear layer."""

    format: str
    group: int

    @property
    def bits(self) -> int:
        """Weight width in bits."""
        return _WFORMATS[self.format]


@dataclass(frozen=True)
class LlmRecipe:
    """A parsed recipe. ``rules`` is a tuple of dicts with ``match`` and settings."""

    rules: tuple
    activations: str = "int8_per_token"
    kv_cache: str = "int8_per_token_head"
    source: str = "recipe"

    def resolve(self, layers) -> dict[str, LayerQuant]:
        """Map every layer name to its :class:`LayerQuant`.

        Raise :class:`CompileError` for a rule that matches no layer or a layer that no
        rule gives a format and group.
        """
        layers = list(layers)
        got = {name: {} for name in layers}
        for i, rule in enumerate(self.rules):
            hits = [n for n in layers if fnmatch.fnmatchcase(n, rule["match"])]
            if not hits:
                ex = ", ".join(layers[:2] + layers[-1:])
                raise CompileError(f"{self.source}: weights[{i}] match {rule['match']!r} "
                                   f"names no layer of the model (layers are like {ex})")
            for n in hits:
                got[n].update({k: v for k, v in rule.items() if k != "match"})
        out = {}
        for n, d in got.items():
            if "format" not in d or "group" not in d:
                raise CompileError(f"{self.source}: no rule sets format and group of "
                                   f"layer {n}")
            out[n] = LayerQuant(d["format"], d["group"])
        return out


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
        if "format" in r and r["format"] not in _WFORMATS:
            raise CompileError(f"{source}: weights[{i}].format = {r['format']!r} is not "
                               f"supported (accepted: {', '.join(_WFORMATS)})")
        g = r.get("group")
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g <= 0):
            raise CompileError(f"{source}: weights[{i}].group must be a positive integer, "
                               f"not {g!r}")
        out.append(dict(r))
    _check_section(data.get("activations"), "activations", _ACT, source)
    _check_section(data.get("kv_cache"), "kv_cache", _KV, source)
    return LlmRecipe(rules=tuple(out), source=source)


def load_llm_recipe(path=None) -> LlmRecipe:
    """Read a recipe YAML file (default: :data:`LLM_DEFAULT_RECIPE`)."""
    p = Path(path) if path is not None else LLM_DEFAULT_RECIPE
    return parse_llm_recipe(read_yaml(p, "recipe", CompileError), source=p.name)
