"""The ``airfoil`` command line: one command, subcommands in modules of this package.

Each module ``airfoil/cli/cmd_<name>.py`` defines ``register(subparsers)`` which adds
its subcommand and sets ``func`` on the parser's defaults; ``func(args)`` returns the
exit status. This package is the only place that imports ``hdl``, ``compiler`` and
``sim`` together.

Any :class:`airfoil.AirfoilError` (and an OS error about a path the user gave) is printed
as one line ``airfoil: error: ...`` with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..errors import AirfoilError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line ``airfoil: error: COMMAND: ...`` with status 2 (the
    usage stays in ``--help``). Subcommand parsers are of this class too."""

    def error(self, message):
        where = self.prog.removeprefix("airfoil").strip()
        print(f"airfoil: error: {where + ': ' if where else ''}{message} (see "
              f"{self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="airfoil",
        description="Generate, program and verify FPGA accelerators for quantized and "
                    "sparse LLM inference.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    pkg = sys.modules[__name__]
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("cmd_"):
            mod = importlib.import_module(f"{__name__}.{info.name}")
            mod.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:         # --help (0) or an argument error, already printed
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except AirfoilError as e:
        print(f"airfoil: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:      # not about a path the user gave: a defect, shown whole
            raise
        print(f"airfoil: error: {e.strerror}: {e.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("airfoil: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
