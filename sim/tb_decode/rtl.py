"""Run the unpacker in RTL (Verilator + cocotb) from emitted Verilog and its metadata JSON."""

from __future__ import annotations

import json
from pathlib import Path

from airfoil.resources import package_path
from sim.cocotb_runner import run_cocotb

__all__ = ["run_unpacker_rtl", "TB_DIR"]

TB_DIR = package_path("sim.tb_decode")


def run_unpacker_rtl(verilog, meta_json, words: list, expected: list, *, seed: int,
                     idle: float = 0.0, stall: float = 0.0, build_root=None,
                     max_cycles: int = 2_000_000) -> dict:
    """Stream ``words`` through the RTL unpacker and check every beat against ``expected``.

    Return the testbench result (see :meth:`sim.tb_decode.engine.StreamEngine.result`,
    plus ``error_flag``); raise :class:`sim.cocotb_runner.RtlFailure` naming the seed and
    the first mismatch when the beats differ.
    """
    meta = json.loads(Path(meta_json).read_text())
    case = {"words": [f"{w:x}" for w in words], "expected": [f"{b:x}" for b in expected],
            "idle": idle, "stall": stall, "seed": seed, "max_cycles": max_cycles}
    return run_cocotb(sources=[verilog], top=meta["top"], test_module="tb_unpacker",
                      test_dir=TB_DIR, seed=seed, build_root=build_root, case=case,
                      env={"AIRFOIL_META": str(Path(meta_json).resolve())})
