"""Model importers: Hugging Face layout (:mod:`.hf`, with GPTQ and AWQ checkpoints through
:mod:`.quantized_hf`), GGUF files (:mod:`.gguf`) and torch modules (:mod:`.torch_module`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["import_model", "model_folder"]


def import_model(path):
    """The :class:`~compiler.ir.Graph` of a model path: a ``.gguf`` file or an HF folder."""
    if Path(path).suffix.lower() == ".gguf":
        from .gguf import import_gguf
        return import_gguf(path)
    from .hf import import_hf
    return import_hf(path)


def model_folder(path) -> Path:
    """The folder of a model path, where its ``tokenizer.json`` is looked for."""
    p = Path(path)
    return p.parent if p.suffix.lower() == ".gguf" else p
