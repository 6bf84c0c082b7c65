"""cocotb testbench: a packed weight stream through the unpacker, every beat checked.

The case comes as JSON in ``$AIRFOIL_CASE`` (see :func:`sim.tb_decode.rtl.run_unpacker_rtl`):
the words (hex), the expected beat payloads (hex), idle and stall probabilities and the
seed. Port names are checked against the metadata JSON in ``$AIRFOIL_META``. The result
(counters, accept cycles, errors) goes to ``$AIRFOIL_RESULT``; any mismatch fails the test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

from sim.tb_decode.engine import StreamEngine

_PORTS = ("words__valid", "words__ready", "words__payload", "beats__valid", "beats__ready",
          "beats__payload", "error")


@cocotb.test()
async def unpack(dut):
    """Drive the words with idle cycles, stall the beats; every beat equals the reference."""
    case = json.loads(Path(os.environ["AIRFOIL_CASE"]).read_text())
    meta = json.loads(Path(os.environ["AIRFOIL_META"]).read_text())
    ports = {p["name"]: p for p in meta["ports"]}
    for name in _PORTS:
        assert name in ports, f"port {name} missing from {os.environ['AIRFOIL_META']}"
    engine = StreamEngine([int(w, 16) for w in case["words"]],
                          [int(b, 16) for b in case["expected"]], seed=case["seed"],
                          idle=case["idle"], stall=case["stall"],
                          max_cycles=case["max_cycles"])
    sig = {name: getattr(dut, name) for name in _PORTS}
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    for name in ("words__valid", "words__payload", "beats__ready"):
        sig[name].value = 0
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    while True:
        await FallingEdge(dut.clk)
        ins = engine.step(int(sig["words__ready"].value), int(sig["beats__valid"].value),
                          int(sig["beats__payload"].value))
        if ins is None:
            break
        sig["words__valid"].value, sig["words__payload"].value, sig["beats__ready"].value = ins
    res = engine.result()
    res["error_flag"] = int(sig["error"].value)
    if res["errors"]:
        res["error"] = res["errors"][0]
    with open(os.environ["AIRFOIL_RESULT"], "w") as fh:
        json.dump(res, fh)
    assert not res["errors"], res["errors"][0]
