"""Tokenizers of model folders, and the ``pydoc_data.topics`` corpus of the tiny model.

A folder's ``tokenizer.json`` is either a Hugging Face tokenizer (the file the
``tokenizers`` package writes and every hub checkpoint ships: BPE, WordPiece, Unigram,
with its normalizer, pre-tokenizer and decoder), read by that package, or the tiny
model's byte-level tokenizer: token ``i`` is the byte of value ``i``, text is UTF-8,
named as ``{"airfoil_tokenizer": "bytes", "vocab_size": 256}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from airfoil.errors import CompileError

__all__ = ["ByteTokenizer", "HfTokenizer", "load_tokenizer", "corpus_text", "corpus_split"]


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256)."""

    vocab_size = 256

    def encode(self, text: str, special: bool = False) -> list[int]:
        """Return the token ids of ``text`` (there are no special tokens)."""
        return list(text.encode("utf-8"))

    def decode(self, tokens) -> str:
        """Return the text of ``tokens`` (invalid UTF-8 becomes U+FFFD)."""
        return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


class HfTokenizer:
    """A Hugging Face ``tokenizer.json``, through the ``tokenizers`` package. Encoding adds
    no special tokens unless asked (a prompt is the text as given; an encoder's sentence
    gets its ``[CLS]`` .. ``[SEP]``); decoding skips them."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, special: bool = False) -> list[int]:
        """Return the token ids of ``text``, with the tokenizer's special tokens (its
        post-processor's template) when ``special``."""
        return self._tok.encode(text, add_special_tokens=special).ids

    def decode(self, tokens) -> str:
        """Return the text of ``tokens``."""
        return self._tok.decode([int(t) for t in tokens], skip_special_tokens=True)


def load_tokenizer(model_dir) -> ByteTokenizer | HfTokenizer:
    """Load the tokenizer of ``model_dir/tokenizer.json`` (see the module docstring)."""
    path = Path(model_dir) / "tokenizer.json"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise CompileError(f"{path}: no tokenizer file") from None
    except (OSError, ValueError) as e:
        raise CompileError(f"{path}: unreadable tokenizer ({e})") from None
    if not isinstance(d, dict):
        raise CompileError(f"{path}: not a tokenizer (a JSON object is expected)")
    if "airfoil_tokenizer" in d:
        if d["airfoil_tokenizer"] != "bytes":
            raise CompileError(f"{path}: unsupported tokenizer {d['airfoil_tokenizer']!r} "
                               f"(accepted: 'bytes', or a Hugging Face tokenizer.json)")
        return ByteTokenizer()
    if "model" not in d:
        raise CompileError(f"{path}: neither a Hugging Face tokenizer.json (no 'model' "
                           f"section) nor the byte tokenizer ('airfoil_tokenizer': 'bytes')")
    from tokenizers import Tokenizer
    try:
        return HfTokenizer(Tokenizer.from_file(str(path)))
    except Exception as e:          # the package raises a bare Exception on bad files
        raise CompileError(f"{path}: the tokenizers package cannot read it "
                           f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                           ) from None


def corpus_text() -> str:
    """All topics of ``pydoc_data.topics``, joined by newlines in sorted key order."""
    from pydoc_data.topics import topics
    return "\n".join(topics[k] for k in sorted(topics))


def corpus_split(heldout: float = 0.1) -> tuple[bytes, bytes]:
    """Return ``(train, held_out)`` UTF-8 bytes: the held-out part is the last fraction."""
    b = corpus_text().encode("utf-8")
    cut = int(len(b) * (1.0 - heldout))
    return b[:cut], b[cut:]
