"""cocotb testbench for a PE with one input and one output stream (driver, monitor, scoreboard).

The case comes from the JSON file named by ``$AIRFOIL_CASE``: ``words`` (packed input
beats), ``expected`` (row results), ``out_width`` (bits of the result payload), ``idle``
and ``stall`` (probabilities of an idle input cycle and of ``o.ready`` low), ``seed``.
Port names come from the metadata JSON named by ``$AIRFOIL_META`` (written by
``hdl.build.write_verilog``). The testbench writes ``outputs``, ``cycles`` (first beat
offered to last result taken) and ``error`` to ``$AIRFOIL_RESULT``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge


def _ports(meta: dict) -> dict:
    names = {p["name"] for p in meta["ports"]}
    want = {k: k for k in ("i__valid", "i__ready", "i__payload", "o__valid", "o__ready",
                           "o__payload")}
    missing = [n for n in want if n not in names]
    if missing:
        raise AssertionError(f"component has no port(s) {missing}; has {sorted(names)}")
    return want


@cocotb.test()
async def stream_case(dut):
    """Drive the case's beats with idle cycles, take results under backpressure, compare."""
    case = json.loads(Path(os.environ["AIRFOIL_CASE"]).read_text())
    meta = json.loads(Path(os.environ["AIRFOIL_META"]).read_text())
    p = _ports(meta)
    sig = {k: getattr(dut, v) for k, v in p.items()}
    clk, rst = getattr(dut, meta["clock"]), getattr(dut, meta["reset"])
    rng = random.Random(case["seed"])
    words, expected = [int(w) for w in case["words"]], [int(e) for e in case["expected"]]
    width = int(case["out_width"])
    idle, stall = float(case["idle"]), float(case["stall"])
    Clock(clk, 10, unit="ns").start()
    sig["i__valid"].value = 0
    sig["o__ready"].value = 0
    rst.value = 1
    for _ in range(3):
        await RisingEdge(clk)
    rst.value = 0
    await RisingEdge(clk)

    outputs: list[int] = []
    cycle = {"n": 0, "start": None}
    limit = 50 * len(words) + 64 * len(expected) + 1000

    async def driver():
        for w in words:
            while rng.random() < idle:
                await RisingEdge(clk)
            sig["i__payload"].value = w
            sig["i__valid"].value = 1
            if cycle["start"] is None:
                cycle["start"] = cycle["n"]
            while True:
                await ReadOnly()
                taken = bool(sig["i__ready"].value)
                await RisingEdge(clk)
                if taken:
                    break
            sig["i__valid"].value = 0

    cocotb.start_soon(driver())
    result = {"outputs": outputs, "cycles": None, "error": None}
    while len(outputs) < len(expected) and cycle["n"] < limit:
        ready = rng.random() >= stall
        sig["o__ready"].value = int(ready)
        await ReadOnly()
        if ready and bool(sig["o__valid"].value):
            v = int(sig["o__payload"].value) & ((1 << width) - 1)
            outputs.append(v - (1 << width) if v >> (width - 1) else v)
        await RisingEdge(clk)
        cycle["n"] += 1
    result["cycles"] = cycle["n"] - (cycle["start"] or 0)
    if outputs != expected:
        bad = next((i for i, (a, b) in enumerate(zip(outputs, expected)) if a != b),
                   len(outputs))
        result["error"] = (f"result {bad}: got {outputs[bad] if bad < len(outputs) else None}"
                           f", expected {expected[bad]} ({len(outputs)} of "
                           f"{len(expected)} results)")
    Path(os.environ["AIRFOIL_RESULT"]).write_text(json.dumps(result))
    assert result["error"] is None, result["error"]
