"""Run a PE case in RTL (Verilator + cocotb) from emitted Verilog and its metadata JSON.

The metadata's ``params["in_fields"]`` is the input payload's field map (see
:func:`sim.tb_pe.stimulus.layout_fields`); the result payload is read as one signed
integer of the ``o__payload`` port's width.
"""

from __future__ import annotations

import json
from pathlib import Path

from airfoil.resources import package_path
from sim.cocotb_runner import run_cocotb

from .stimulus import pack

__all__ = ["run_stream_case"]

TB_DIR = package_path("sim.tb_pe")


def run_stream_case(verilog, meta_json, beats: list, expected: list, *, seed: int,
                    idle: float = 0.0, stall: float = 0.0, build_root=None) -> dict:
    """Run ``beats`` through the RTL; return the testbench result (outputs, cycles).

    Raise :class:`sim.cocotb_runner.RtlFailure` when the results differ from
    ``expected`` (the message names the seed and the first mismatch).
    """
    meta = json.loads(Path(meta_json).read_text())
    fields = meta["params"]["in_fields"]
    width = next(p["width"] for p in meta["ports"] if p["name"] == "o__payload")
    case = {"words": [pack(fields, b) for b in beats], "expected": list(expected),
            "out_width": width, "idle": idle, "stall": stall, "seed": seed}
    return run_cocotb(sources=[verilog], top=meta["top"], test_module="tb_stream",
                      test_dir=TB_DIR, seed=seed, build_root=build_root, case=case,
                      env={"AIRFOIL_META": str(Path(meta_json).resolve())})
