"""Models shipped with Airfoil (package data): ``tiny-llama``, the project's own small
LLaMA-style model (its README says how it was trained).

:func:`model_path` takes what a user typed as MODEL: an HF-layout folder, or the name of
a shipped model.
"""

from __future__ import annotations

from pathlib import Path

from airfoil.resources import package_path

__all__ = ["BUILTIN_MODELS", "model_path"]

_DIR = package_path("airfoil.models")
#: Shipped models by name (folders with a ``config.json``).
BUILTIN_MODELS = {p.name: p for p in sorted(_DIR.iterdir()) if (p / "config.json").is_file()}


def model_path(arg) -> Path:
    """``arg`` as a folder when it is one, else the shipped model of that name (``arg``
    unchanged when it is neither: the caller reports it)."""
    path = Path(arg)
    if not path.is_dir() and str(arg) in BUILTIN_MODELS:
        return BUILTIN_MODELS[str(arg)]
    return path
