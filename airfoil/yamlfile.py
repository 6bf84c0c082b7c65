"""Read a YAML file with one-line errors (configs, recipes)."""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import AirfoilError

__all__ = ["read_yaml"]


def read_yaml(path, what: str, error: type[AirfoilError] = AirfoilError):
    """Parse the YAML file ``path``; raise ``error`` naming ``what`` and the line on failure."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError:
        raise error(f"{what} file {str(p)!r} not found or unreadable") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise error(f"{p.name}: not valid YAML{at}") from None
