"""Read a YAML file with one-line errors (configs, recipes).

Anchors and aliases are refused: no config or recipe needs them, and a few lines of
nested aliases (a "billion laughs" document) expand to more than memory holds once
the data is walked.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import AirfoilError
from .textfile import read_text

__all__ = ["read_yaml"]


class _Loader(yaml.SafeLoader):
    """The safe loader without aliases."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted", event.start_mark)
        return super().compose_node(parent, index)


def read_yaml(path, what: str, error: type[AirfoilError] = AirfoilError):
    """Parse the YAML file ``path``; raise ``error`` naming ``what`` and the line on failure."""
    p = Path(path)
    text = read_text(p, f"{what} file", error)
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None)
        why = f": {problem}" if problem else ""
        raise error(f"{p.name}: not valid YAML{at}{why}") from None
