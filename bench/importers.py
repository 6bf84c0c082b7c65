"""Bench figures of the Hugging Face importer: the float import of each family against
``transformers``.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``importers``.
"""

from __future__ import annotations

import tempfile

from sim.measure.hf_families import FAMILY_CLASSES, import_max_logit_error

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "import_<family>_max_logit_error": "logit units",
}


def figures(args, log) -> dict:
    """``airfoil bench`` entry: one tiny model per family, saved and imported."""
    out = {}
    for family in FAMILY_CLASSES:
        with tempfile.TemporaryDirectory() as folder:
            r = import_max_logit_error(family, folder)
        name = f"import_{family}_max_logit_error"
        log(f"{name} = {r['error']:.3g} (logits up to {r['logit_range']:.3g})")
        out[name] = r["error"]
        out[f"{name}_logit_range"] = r["logit_range"]
        out[f"{name}_shape"] = r["shape"]
    return out
