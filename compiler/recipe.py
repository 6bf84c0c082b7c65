"""Quantization recipes: a small YAML file mapped onto the compiler's keyword arguments.

Keys: ``wformat`` (a format of :mod:`airfoil.format_registry`: int2, int3, int4, int8;
streamed also ovp, int6, the BitMoD FP formats; or mixed, bitmod4 and bitmod3), ``group``,
``out_format``, and for streamed weights (ISA version 3) ``stream`` (true: LD WSTREAM +
MV STREAM instead of WGT tiles), ``sparsity`` (dense, 1:4, 2:4, 2:8, 4:16, 8:16, block),
``block_density`` (with ``sparsity: block``, the fraction of each record's k-steps kept)
and ``mixed_formats`` (the candidates of ``wformat: mixed``, e.g. ``"int4,ovp"``).
"""

from __future__ import annotations

from pathlib import Path


from airfoil.errors import CompileError
from airfoil.resources import package_path
from airfoil.yamlfile import read_yaml

__all__ = ["RECIPE_KEYS", "DEFAULT_RECIPE", "OUT_FORMATS", "load_recipe", "check_recipe"]

_DIR = package_path("compiler", "recipes")
#: The recipe shipped with the project (``compiler/recipes/linear_default.yaml``).
DEFAULT_RECIPE = _DIR / "linear_default.yaml"
#: Output formats a recipe may name, with their width in bits.
OUT_FORMATS = {"int8": 8, "int16": 16, "int32": 32}
#: Keys a linear-layer recipe may set, with their Python type.
RECIPE_KEYS = {"wformat": str, "group": int, "out_format": str, "stream": bool,
               "sparsity": str, "mixed_formats": str, "block_density": float}


def check_recipe(data, source: str = "recipe") -> dict:
    """Validate recipe data; return it as keyword arguments for ``compile_linear``."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CompileError(f"{source}: a recipe must be a mapping of "
                           f"{', '.join(RECIPE_KEYS)}, not {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if key not in RECIPE_KEYS:
            raise CompileError(f"{source}: unknown key {key!r} (accepted: "
                               f"{', '.join(RECIPE_KEYS)})")
        tp = RECIPE_KEYS[key]
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)                     # YAML's 1 for 1.0
        if (isinstance(value, bool) and tp is not bool) or not isinstance(value, tp):
            raise CompileError(f"{source}: key {key!r} must be {tp.__name__}, not "
                               f"{type(value).__name__} {value!r}")
        out[key] = value
    if "out_format" in out and out["out_format"] not in OUT_FORMATS:
        raise CompileError(f"{source}: out_format {out['out_format']!r} is not accepted "
                           f"(accepted: {', '.join(OUT_FORMATS)})")
    return out


def load_recipe(path=None) -> dict:
    """Read a recipe YAML (default: :data:`DEFAULT_RECIPE`) into keyword arguments."""
    p = Path(path) if path is not None else DEFAULT_RECIPE
    return check_recipe(read_yaml(p, "recipe", CompileError), source=p.name)
