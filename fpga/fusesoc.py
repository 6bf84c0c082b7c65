"""A FuseSoC CAPI2 core file for the emitted core of a config.

:func:`write_core_file` writes ``<build>/<config>/airfoil_core.core`` beside the Verilog of
:func:`airfoil.cli.backend_rtl.emit_core`: one fileset (the core, the buffer RAM, the
Verilator waivers) and a ``lint`` target (Verilator in lint-only mode with ``-Wall``, as
``airfoil lint`` runs it), so ``fusesoc --cores-root build/<config> run --target lint
VLNV`` (:func:`lint_command`) lints the core through FuseSoC and edalize.
``python -m fpga.fusesoc CONFIG [BUILD_DIR]`` runs it (``make fusesoc-lint``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from airfoil.config import AccelConfig

__all__ = ["vlnv", "core_file_text", "write_core_file", "lint_command", "LINT_OPTIONS"]

#: Verilator options of the lint target (those of ``airfoil lint``).
LINT_OPTIONS = ("-Wall",)


def vlnv(config: AccelConfig) -> str:
    """The core's VLNV: ``airfoil:core:<config>:<ISA version>`` (a name FuseSoC accepts)."""
    from airfoil.isa import ISA_VERSION
    name = re.sub(r"[^A-Za-z0-9_]", "_", config.name)
    return f"airfoil:core:{name}:{ISA_VERSION}.0"


def core_file_text(config: AccelConfig, paths: dict) -> str:
    """The CAPI2 text for the emitted files ``paths`` (of ``emit_core``) of ``config``;
    files are named relative to the core file's folder."""
    from airfoil.cli.backend_rtl import TOP
    base = Path(paths["dir"])
    files = [Path(p).resolve().relative_to(base.resolve()) for p in paths["sources"]]
    waivers = Path(paths["waivers"]).resolve().relative_to(base.resolve())
    lines = ["CAPI=2:", f"name: {vlnv(config)}",
             f"description: Airfoil core, config {config.name} (written by fpga/fusesoc.py)",
             "", "filesets:", "  rtl:", "    files:"]
    lines += [f"      - {f}" for f in files]
    lines += [f"      - {waivers}: {{file_type: vlt}}", "    file_type: verilogSource", "",
              "targets:", "  default: &default", "    filesets: [rtl]",
              f"    toplevel: {TOP}", "  lint:", "    <<: *default",
              "    default_tool: verilator", "    tools:", "      verilator:",
              "        mode: lint-only",
              f"        verilator_options: [{', '.join(LINT_OPTIONS)}]", ""]
    return "\n".join(lines)


def write_core_file(config: AccelConfig, paths: dict) -> Path:
    """Write ``airfoil_core.core`` into the emitted core's folder; return its path."""
    from airfoil.cli.backend_rtl import TOP
    path = Path(paths["dir"]) / f"{TOP}.core"
    path.write_text(core_file_text(config, paths))
    return path


def lint_command(config: AccelConfig, cores_root) -> list[str]:
    """The fusesoc command line that runs the ``lint`` target of the core file in
    ``cores_root`` (the fusesoc of this Python's environment)."""
    fusesoc = Path(sys.executable).with_name("fusesoc")
    return [str(fusesoc), "--cores-root", str(cores_root), "run", "--target", "lint",
            vlnv(config)]


def main(argv=None) -> int:
    """Lint the emitted core of config ``argv[0]`` (under build folder ``argv[1]``, default
    ``build``) through fusesoc; return fusesoc's exit status."""
    from airfoil.config import load_config
    args = sys.argv[1:] if argv is None else argv
    config = load_config(args[0])
    root = Path(args[1] if len(args) > 1 else "build") / config.name
    return subprocess.run(lint_command(config, root)).returncode


if __name__ == "__main__":
    sys.exit(main())
