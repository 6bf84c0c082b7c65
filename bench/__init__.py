"""The project's figures: one producer module per area, and the driver that runs them.

A producer is a module ``bench/<area>.py`` (any module here whose name does not start
with ``_``) defining ``FIGURES``, the figure names it writes (``<fmt>``-style placeholders
for families) mapped to their units, and ``figures(args, log) -> dict``, a flat mapping of
those figures and their raw evidence (``<name>_cycles``, ``<name>_shape``,
``<name>_config_hash``, ...). Every figure is defined in docs/figures.md. ``airfoil
bench`` calls :func:`run`; a new area is one new module.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import time
from pathlib import Path
from types import ModuleType

__all__ = ["UnknownArea", "areas", "run"]


class UnknownArea(ValueError):
    """An area asked for that no producer module provides."""


def areas() -> dict[str, ModuleType]:
    """The producer modules by area name, in name order."""
    names = sorted(i.name for i in pkgutil.iter_modules(__path__) if not i.name.startswith("_"))
    return {name: importlib.import_module(f"{__name__}.{name}") for name in names}


def run(args, log) -> dict:
    """Run the areas ``args.only`` (all when empty) and merge their figures into
    ``args.output`` (kept figures of the other areas when only some run); return them.

    Raise :class:`UnknownArea` naming an unknown area before anything runs.
    """
    producers = areas()
    unknown = [a for a in args.only if a not in producers]
    if unknown:
        raise UnknownArea(f"unknown bench area {unknown[0]!r} (accepted: "
                         f"{', '.join(producers)})")
    out = Path(args.output)
    results: dict = {}
    if out.is_file() and args.only:
        results = json.loads(out.read_text())
    for name, mod in producers.items():
        if args.only and name not in args.only:
            continue
        t0 = time.monotonic()
        log(f"bench {name} ...")
        results.update(mod.figures(args, log))
        log(f"bench {name} done in {time.monotonic() - t0:.0f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    tmp.replace(out)
    return results
