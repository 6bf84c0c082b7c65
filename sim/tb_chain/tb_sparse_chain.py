"""cocotb testbench of the sparse DSP chain (the stream source, sink and scoreboard of
:mod:`sim.stream_tb`).

The job file named by ``$CHAIN_JOB`` (written by the test or the bench with
:func:`sim.tb_chain.model.build_job`) holds the path of the chain's metadata JSON (port
names and the field table), the probabilities of an idle input cycle and of a stalled
output cycle, and a list of jobs, each with its operand beats and expected psum beats.
The jobs run back to back on one simulation (the chain needs no reset between dot
products). The testbench keeps each beat valid until it is taken, checks every psum beat
in order, and writes to ``$AIRFOIL_RESULT`` per job: psum beats received, mismatches,
the first mismatch, the cycles from the job's first operand handshake to its last
psum handshake (inclusive: ``cycles``, pipeline fill included) and from its first to its
last operand handshake (inclusive: ``in_cycles``, the cycles in which the chain accepted
the job's work, so the rate of back-to-back jobs).
"""

import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from sim.stream_tb import Cycles, Scoreboard, StreamSink, StreamSource, random_pauses
from sim.tb_chain.ports import pack_beat, unpack_psum


def _port(dut, meta, path):
    for p in meta["ports"]:
        if p["path"] == path:
            return getattr(dut, p["name"])
    raise KeyError(f"port {'.'.join(path)} not in the metadata")


@cocotb.test()
async def run_job(dut):
    job = json.loads(Path(os.environ["CHAIN_JOB"]).read_text())
    meta = json.loads(Path(job["meta"]).read_text())
    ofields = meta["params"]["operand_fields"]
    pfields = meta["params"]["psum_fields"]
    rng = random.Random(cocotb.RANDOM_SEED)
    clk, rst = dut.clk, dut.rst
    i_port = [_port(dut, meta, ["i", n]) for n in ("valid", "ready", "payload")]
    o_port = [_port(dut, meta, ["o", n]) for n in ("valid", "ready", "payload")]

    cocotb.start_soon(Clock(clk, 10, unit="ns").start())
    i_port[0].value = 0
    o_port[1].value = 0
    rst.value = 1
    for _ in range(3):
        await RisingEdge(clk)
    rst.value = 0
    cycles = Cycles(clk).start()
    # One draw stream for both patterns, as the chain's regression seeds expect.
    source = StreamSource(cycles, *i_port, pauses=random_pauses(rng, job["p_idle"]))
    sink = StreamSink(cycles, *o_port, backpressure=random_pauses(rng, job["p_stall"]))

    results = []
    for one in job["jobs"]:
        results.append(await _run_one(one, ofields, pfields, source, sink))
    errors = [f"job {r['name']}: {r['error']}" for r in results if r["error"]]
    Path(os.environ["AIRFOIL_RESULT"]).write_text(json.dumps(
        {"jobs": results, "error": errors[0] if errors else None}))
    assert not errors, errors[0]


async def _run_one(one, ofields, pfields, source, sink):
    """Run one job's beats through the chain; check its psum beats in order."""
    beats = [pack_beat(ofields, b) for b in one["beats"]]
    expected = [(list(p), last) for p, last in one["expected"]]
    width = len(expected[0][0]) if expected else 0
    board = Scoreboard(expected)
    out_cycles = []

    def on_psum(value, cycle):
        got = unpack_psum(pfields, value)
        board.receive((got["psum"][:width], got["last"]))
        out_cycles.append(cycle)

    limit = 50 * (len(beats) + len(expected)) + 1000
    source.taken = []
    sending = cocotb.start_soon(source.send(beats, limit=limit))
    received = await sink.take(len(expected), on_psum, limit=limit)
    sent = await sending
    report = board.report()
    first_error = report["errors"][0] if report["errors"] else None
    if first_error is None and sent != len(beats):
        first_error = f"only {sent} of {len(beats)} operand beats taken"
    first_in, last_in = (source.taken[0], source.taken[-1]) if source.taken else (None, None)
    last_out = out_cycles[-1] if out_cycles else None
    return {"name": one.get("name", ""), "received": received,
            "mismatches": report["mismatches"], "lost": report["lost"],
            "sent": sent, "beats": len(beats),
            "cycles": (last_out - first_in + 1) if last_out and first_in else None,
            "in_cycles": (last_in - first_in + 1) if last_in and first_in else None,
            "error": first_error}
