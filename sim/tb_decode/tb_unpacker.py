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

from sim.tb_common import drive_cycle_engine
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
    await drive_cycle_engine(
        dut, engine.step, observe=("words__ready", "beats__valid", "beats__payload"),
        drive=("words__valid", "words__payload", "beats__ready"))
    res = engine.result()
    res["error_flag"] = int(dut.error.value)
    if res["errors"]:
        res["error"] = res["errors"][0]
    with open(os.environ["AIRFOIL_RESULT"], "w") as fh:
        json.dump(res, fh)
    assert not res["errors"], res["errors"][0]
