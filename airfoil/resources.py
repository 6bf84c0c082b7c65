"""Files shipped inside the project's packages: board configs, recipes, models, design
spaces, testbench sources.

They are found through :func:`importlib.resources.files`, so a checkout, an editable
install and a wheel installed into any environment (run from any directory) find the same
files; pyproject.toml's ``package-data`` lists them for the wheel.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["package_path"]


def package_path(package: str, *parts: str) -> Path:
    """The file-system path of ``parts`` inside the importable ``package``.

    A real path, not a :class:`~importlib.abc.Traversable`: Verilator, cocotb and Yosys
    open these files by name, so a package must be installed as files (not zipped).
    """
    res = files(package).joinpath(*parts)
    if not isinstance(res, Path):
        raise RuntimeError(f"package {package!r} is not installed as files ({res!r})")
    return res
