"""Read a user's text and data files with a bound and a one-line error.

Every file the tools read on a user's word (a board config, a recipe, a manifest, an
image) goes through :func:`read_bounded` or :func:`read_text`, so that a special file
(``/dev/zero``), a file far larger than its kind ever is or bytes that are not UTF-8 end
with one :class:`~airfoil.errors.AirfoilError` naming the file, never a traceback or an
unbounded read.
"""

from __future__ import annotations

from pathlib import Path

from .errors import AirfoilError

__all__ = ["TEXT_LIMIT", "read_bounded", "read_text"]

#: Largest text file read (configs, recipes, manifests): 16 MiB.
TEXT_LIMIT = 16 << 20


def read_bounded(path, what: str, limit: int, error: type[AirfoilError] = AirfoilError
                 ) -> bytes:
    """The bytes of ``path``; ``error`` naming ``what`` when it cannot be read or holds
    more than ``limit`` bytes (at most ``limit + 1`` bytes are read)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(limit + 1)
    except OSError:
        raise error(f"{what} {str(p)!r} is missing or unreadable") from None
    if len(raw) > limit:
        raise error(f"{what} {str(p)!r} is larger than {limit} bytes")
    return raw


def read_text(path, what: str, error: type[AirfoilError] = AirfoilError,
              limit: int = TEXT_LIMIT) -> str:
    """The UTF-8 text of ``path`` (at most ``limit`` bytes); ``error`` naming ``what``
    otherwise."""
    raw = read_bounded(path, what, limit, error)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {str(path)!r} is not UTF-8 text (byte {e.start})") from None
