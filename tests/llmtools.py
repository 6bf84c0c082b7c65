"""Helpers for the LLM tests: small random LLaMA-family models."""

import json

from safetensors.torch import save_file

from compiler.reference import random_llama

__all__ = ["random_llama", "write_hf_folder"]


def write_hf_folder(path, model):
    """Write ``model`` (a :class:`~compiler.reference.LlamaReference`) into the folder
    ``path`` in the Hugging Face layout with the byte tokenizer; return ``path``."""
    save_file({k: v.clone().contiguous() for k, v in model.hf_state_dict().items()},
              str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(model.shape.to_hf()))
    (path / "tokenizer.json").write_text(json.dumps({"airfoil_tokenizer": "bytes",
                                                     "vocab_size": 256}))
    return path
