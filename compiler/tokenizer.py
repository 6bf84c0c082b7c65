"""The byte-level tokenizer of the tiny model and the ``pydoc_data.topics`` corpus.

Token ``i`` is the byte of value ``i``; text is UTF-8. A checkpoint names it in its
``tokenizer.json`` as ``{"airfoil_tokenizer": "bytes", "vocab_size": 256}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from airfoil.errors import CompileError

__all__ = ["ByteTokenizer", "load_tokenizer", "corpus_text", "corpus_split"]


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256)."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        """Return the token ids of ``text``."""
        return list(text.encode("utf-8"))

    def decode(self, tokens) -> str:
        """Return the text of ``tokens`` (invalid UTF-8 becomes U+FFFD)."""
        return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


def load_tokenizer(model_dir) -> ByteTokenizer:
    """Load the tokenizer named by ``model_dir/tokenizer.json``."""
    path = Path(model_dir) / "tokenizer.json"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise CompileError(f"{path}: no tokenizer file") from None
    except (OSError, ValueError) as e:
        raise CompileError(f"{path}: unreadable tokenizer ({e})") from None
    kind = d.get("airfoil_tokenizer") if isinstance(d, dict) else None
    if kind != "bytes":
        raise CompileError(f"{path}: unsupported tokenizer {kind!r} (accepted: 'bytes')")
    return ByteTokenizer()


def corpus_text() -> str:
    """All topics of ``pydoc_data.topics``, joined by newlines in sorted key order."""
    from pydoc_data.topics import topics
    return "\n".join(topics[k] for k in sorted(topics))


def corpus_split(heldout: float = 0.1) -> tuple[bytes, bytes]:
    """Return ``(train, held_out)`` UTF-8 bytes: the held-out part is the last fraction."""
    b = corpus_text().encode("utf-8")
    cut = int(len(b) * (1.0 - heldout))
    return b[:cut], b[cut:]
