"""cocotb testbench: streamed GEMVs through the harness, weights read over AXI4.

The run comes as JSON in ``$AIRFOIL_CASE`` (see :func:`sim.tb_stream.rtl.run_stream_rtl`):
memory timing (one latency per slice, outstanding, stall probability), idle probability,
seed, and a list of cases, each with one read per slice (an image in hex at a byte
address), the ACT words, the ``q`` entry of the ``MV`` and the OUT words to read back.
Slice ``c``'s port ``axi__<c>`` is served by its own RTL memory port (``sim/tb/axi_mem.sv``
in the harness :data:`sim.tb_stream.rtl.TOP`: its own latency and random stalls) over one
shared memory, filled in bulk before the run. For each case the bench writes ACT, pulses
``start`` with each slice's address and word count, offers the entry (after random idle
cycles), waits for ``busy`` to fall, and reads the counters and OUT. The results go to
``$AIRFOIL_RESULT``; the caller compares them with the golden.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, First, RisingEdge, Timer
from cocotb.utils import get_sim_time

from sim.axi_mem import HarnessMemory

#: Clock period of the simulation (ns).
PERIOD_NS = 10

_PORTS = ("start", "q__valid", "q__ready", "q__payload", "act_w__addr",
          "act_w__data", "act_w__en", "out_r__addr", "out_r__en", "out_r__data", "busy",
          "err", "err_code", "cycles", "beats", "useful")
#: Ports of each slice ``c``.
_SLICE_PORTS = ("addr__{c}", "nwords__{c}", "axi__{c}__arvalid", "axi__{c}__rdata")


async def _idle(dut, rng, p):
    while p and rng.random() < p:
        await RisingEdge(dut.clk)


async def _run_case(dut, case, rng, idle, max_cycles):
    wbytes = case["word_bytes"]
    for i, w in enumerate(case["act_words"]):
        await RisingEdge(dut.clk)
        dut.act_w__addr.value = case["act_base"] + i
        dut.act_w__data.value = int(w, 16)
        dut.act_w__en.value = (1 << len(dut.act_w__en)) - 1
    await RisingEdge(dut.clk)
    dut.act_w__en.value = 0
    await _idle(dut, rng, idle)
    for c, rd in enumerate(case["reads"]):
        getattr(dut, f"addr__{c}").value = rd["addr"]
        getattr(dut, f"nwords__{c}").value = rd["nwords"]   # 0: the stream read goes on
    dut.start.value = 1
    await RisingEdge(dut.clk)
    dut.start.value = 0
    await _idle(dut, rng, idle)
    dut.q__payload.value = int(case["entry"], 16)
    dut.q__valid.value = 1
    while True:
        await FallingEdge(dut.clk)
        if int(dut.q__ready.value):
            break
    await RisingEdge(dut.clk)
    dut.q__valid.value = 0
    # Wait for BUSY to fall (an edge trigger, not a poll every cycle), then sample at the
    # falling clock edge after it.
    t0 = get_sim_time("ns")
    await FallingEdge(dut.clk)
    if int(dut.busy.value):
        await First(FallingEdge(dut.busy), Timer(max_cycles * PERIOD_NS, "ns"))
        await FallingEdge(dut.clk)
    waited = round((get_sim_time("ns") - t0) / PERIOD_NS)
    if int(dut.busy.value):
        waited = max_cycles + 1
    res = {"name": case["name"], "cycles": int(dut.cycles.value),
           "beats": int(dut.beats.value), "useful": int(dut.useful.value),
           "err": int(dut.err.value), "err_code": int(dut.err_code.value),
           "timeout": waited > max_cycles}
    out = []
    for a in range(case["out_first"], case["out_first"] + case["out_count"]):
        await RisingEdge(dut.clk)
        dut.out_r__addr.value = a
        dut.out_r__en.value = 1
        await RisingEdge(dut.clk)
        dut.out_r__en.value = 0
        await FallingEdge(dut.clk)
        out.append(f"{int(dut.out_r__data.value):0{2 * wbytes}x}")
    res["out_words"] = out
    return res


@cocotb.test()
async def stream_gemv(dut):
    """Run every case of the run in order on one simulation."""
    run = json.loads(Path(os.environ["AIRFOIL_CASE"]).read_text())
    meta = json.loads(Path(os.environ["AIRFOIL_META"]).read_text())
    names = {p["name"] for p in meta["ports"]}
    slices = run["slices"]
    wanted = list(_PORTS) + [p.format(c=c) for c in range(slices) for p in _SLICE_PORTS]
    for name in wanted:
        assert name in names, f"port {name} missing from {os.environ['AIRFOIL_META']}"
    rng = random.Random(run["seed"])
    mem = HarnessMemory()
    mem.reset(run["mem_bytes"])
    for case in run["cases"]:
        for rd in case["reads"]:
            if rd["image"]:
                mem.write(rd["addr"], bytes.fromhex(rd["image"]))
    dut.tb_seed.value = run["seed"] + 1
    for name, value in run["stall_inputs"].items():
        getattr(dut, name).value = value
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns", impl="gpi").start())
    for sig in (dut.start, dut.q__valid, dut.act_w__en, dut.out_r__en):
        sig.value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    results = []
    for case in run["cases"]:
        case["word_bytes"] = run["word_bytes"]
        results.append(await _run_case(dut, case, rng, run["idle"], run["max_cycles"]))
        if results[-1]["timeout"] or results[-1]["err"]:
            break
    with open(os.environ["AIRFOIL_RESULT"], "w") as fh:
        json.dump({"results": results}, fh)
    errors = mem.protocol_errors()
    assert not errors, f"AXI protocol errors: {errors}"
    bad = [r for r in results if r["timeout"] or r["err"]]
    assert not bad, f"case {bad[0]['name']}: timeout={bad[0]['timeout']} " \
                    f"err_code={bad[0]['err_code']}"
