"""Bench figures of the Hugging Face importer: the float import of each family against
``transformers``, and the sentence embeddings of a compiled BERT encoder against the float
model's.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``importers``.
"""

from __future__ import annotations

import tempfile

from sim.measure.encoder import embedding_cosine, import_max_hidden_error
from sim.measure.hf_families import FAMILY_CLASSES, import_max_logit_error

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "import_<family>_max_logit_error": "logit units",
    "encoder_<recipe>_embedding_cosine": "cosine",
}
#: Recipes of the encoder figures: name in the figure -> recipe of compiler/recipes (None:
#: the default recipe).
ENCODER_RECIPES = {"w8": "w8", "default": None}


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
    with tempfile.TemporaryDirectory() as folder:
        r = import_max_hidden_error(folder)
    name = "import_bert_max_logit_error"
    log(f"{name} = {r['error']:.3g} (hidden states up to {r['hidden_range']:.3g})")
    out[name], out[f"{name}_logit_range"] = r["error"], r["hidden_range"]
    out[f"{name}_shape"] = r["shape"]
    for label, recipe in ENCODER_RECIPES.items():
        with tempfile.TemporaryDirectory() as folder:
            r = embedding_cosine(folder, recipe)
        name = f"encoder_{label}_embedding_cosine"
        log(f"{name} = {r['mean']:.4f} (least {r['least']:.4f} of {r['sentences']})")
        out[name], out[f"{name}_least"] = r["mean"], r["least"]
        out[f"{name}_shape"] = {"sentences": r["sentences"], "tokens": r["tokens"],
                                "config": "sim_llm"}
    return out
