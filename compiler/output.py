"""Write the compiler's output folder atomically."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from airfoil.errors import CompileError
from airfoil.folder import MANIFEST

__all__ = ["write_folder"]


def write_folder(out_dir, files: dict, marker: str = MANIFEST) -> Path:
    """Write ``files`` (name -> bytes, or a callable that writes the file at the path it
    is given: a multi-GB image written piece by piece) as the folder ``out_dir``, all or
    nothing.

    The files go into a temporary sibling folder which is then renamed into place, so a
    failure leaves either the previous folder or none, never a half-written one. An
    existing ``out_dir`` is replaced only if it is empty or a folder of the same kind:
    one that holds ``marker`` (an output folder's manifest by default).
    """
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise CompileError(f"output path {str(out)!r} exists and is not a folder")
        if any(out.iterdir()) and not (out / marker).is_file():
            raise CompileError(f"refusing to replace {str(out)!r}: it is not empty and has "
                               f"no {marker} (not an Airfoil output folder)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name, data in files.items():
            if callable(data):
                data(tmp / name)
            else:
                (tmp / name).write_bytes(data)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            old.rmdir()
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
