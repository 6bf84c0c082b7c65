"""Tiny random checkpoints of the Hugging Face families the importer accepts, and the float
import's error against ``transformers`` on them.

Each family's model is built by the pinned ``transformers`` itself (random weights from a
fixed seed, ``save_pretrained`` into a folder), so the importer is checked against the
library's own layout and arithmetic, not against a copy of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["FAMILY_CLASSES", "TINY_CONFIG", "FAMILY_CONFIG", "tiny_hf_model",
           "write_word_tokenizer", "import_max_logit_error"]

#: Family -> (config class, model class) of ``transformers``.
FAMILY_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "opt": ("OPTConfig", "OPTForCausalLM"),
}

#: The shape every tiny model shares: GQA (4 query heads on 2 KV heads of 16), two layers.
TINY_CONFIG = dict(vocab_size=37, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                   rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=None,
                   pad_token_id=None, tie_word_embeddings=False)

#: What each family's tiny model sets beyond :data:`TINY_CONFIG`: Mistral's window of 3
#: positions masks keys in every test sequence; Qwen2 ties its head; GPT-2 and
#: OPT (LayerNorm, learned positions, tied heads) have no grouped-query attention and
#: name their MLP width otherwise.
FAMILY_CONFIG = {
    "llama": {},
    "mistral": {"sliding_window": 3},
    "qwen2": {"tie_word_embeddings": True},
    "phi3": {},
    "gpt2": {"num_key_value_heads": None, "intermediate_size": None, "rms_norm_eps": None,
             "n_inner": 96, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True},
    "opt": {"num_key_value_heads": None, "intermediate_size": None, "rms_norm_eps": None,
            "ffn_dim": 96, "tie_word_embeddings": True},
}


def tiny_hf_model(family: str, path, *, seed: int = 0, **overrides):
    """Build a random ``transformers`` model of ``family``, save it to ``path``; return it.

    Matrices are N(0, 0.15^2), norm gains 1 + N(0, 0.1^2) and biases N(0, 0.1^2) (the
    library's own initialisation gives near-zero logits, which would hide errors). A key
    of :data:`FAMILY_CONFIG` set to None drops that field of :data:`TINY_CONFIG`.
    """
    import transformers
    cfg_cls, model_cls = (getattr(transformers, n) for n in FAMILY_CLASSES[family])
    fields = {**TINY_CONFIG, **FAMILY_CONFIG[family], **overrides}
    cfg = cfg_cls(**{k: v for k, v in fields.items()
                     if v is not None or k not in FAMILY_CONFIG[family]})
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = p.dim() == 1 and not name.endswith(".bias")
            p.copy_(torch.randn_like(p) * (0.15 if p.dim() == 2 else 0.1) + gain)
    model.save_pretrained(str(path))
    return model


def write_word_tokenizer(path, vocab_size: int) -> Path:
    """Write ``tokenizer.json``: a whitespace word-level tokenizer of ``vocab_size`` words
    (``w0`` .. ``w{n-2}`` and ``[UNK]``), enough to run text through a tiny model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = {f"w{i}": i for i in range(vocab_size - 1)}
    words["[UNK]"] = vocab_size - 1
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    out = Path(path) / "tokenizer.json"
    tok.save(str(out))
    json.loads(out.read_text())         # a readable file, as the compiler will read it
    return out


def import_max_logit_error(family: str, folder, *, seed: int = 0, tokens: int = 12) -> dict:
    """Save the tiny ``family`` model into ``folder``, import it; return the largest
    absolute difference between the float import's logits and ``transformers``' on
    ``tokens`` random tokens, and its evidence."""
    from compiler.backends import execute
    from compiler.importers.hf import import_hf
    model = tiny_hf_model(family, folder, seed=seed)
    graph = import_hf(folder)
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, graph.shape.vocab_size, (tokens,), generator=g)
    with torch.no_grad():
        want = model(tok[None]).logits[0].to(torch.float64)
        got = execute(graph, tok).to(torch.float64)
    return {"error": float((got - want).abs().max()),
            "logit_range": float(want.abs().max()),
            "shape": {"layers": graph.shape.num_hidden_layers,
                      "hidden": graph.shape.hidden_size, "tokens": tokens}}
