"""cocotb testbench for a PE with one input and one output stream (the stream source, sink
and scoreboard of :mod:`sim.stream_tb`).

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
from cocotb.triggers import RisingEdge

from sim.stream_tb import Cycles, Scoreboard, StreamSink, StreamSource, random_pauses


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
    sig = {k: getattr(dut, v) for k, v in _ports(meta).items()}
    clk, rst = getattr(dut, meta["clock"]), getattr(dut, meta["reset"])
    rng = random.Random(case["seed"])
    words, expected = [int(w) for w in case["words"]], [int(e) for e in case["expected"]]
    width = int(case["out_width"])
    Clock(clk, 10, unit="ns").start()
    sig["i__valid"].value = 0
    sig["o__ready"].value = 0
    rst.value = 1
    for _ in range(3):
        await RisingEdge(clk)
    rst.value = 0
    await RisingEdge(clk)

    cycles = Cycles(clk).start()
    source = StreamSource(cycles, sig["i__valid"], sig["i__ready"], sig["i__payload"],
                          pauses=random_pauses(rng, float(case["idle"])))
    sink = StreamSink(cycles, sig["o__valid"], sig["o__ready"], sig["o__payload"],
                      backpressure=random_pauses(rng, float(case["stall"])))
    board = Scoreboard(expected)
    outputs: list[int] = []
    last = []

    def on_result(value, cycle):
        v = value & ((1 << width) - 1)
        outputs.append(v - (1 << width) if v >> (width - 1) else v)
        board.receive(outputs[-1])
        last.append(cycle)

    limit = 50 * len(words) + 64 * len(expected) + 1000
    cocotb.start_soon(source.send(words, limit=limit))
    await sink.take(len(expected), on_result, limit=limit)
    report = board.report()
    result = {"outputs": outputs, "error": report["errors"][0] if report["errors"] else None,
              # first beat offered to last result taken, both cycles counted
              "cycles": last[-1] - source.first_offered + 1 if last else None}
    Path(os.environ["AIRFOIL_RESULT"]).write_text(json.dumps(result))
    assert result["error"] is None, result["error"]
