"""cocotb testbench of the sparse DSP chain (driver, monitor, scoreboard in one cycle loop).

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
from cocotb.triggers import ReadOnly, RisingEdge

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
    p_idle, p_stall = job["p_idle"], job["p_stall"]
    clk, rst = dut.clk, dut.rst
    i_valid, i_ready, i_payload = (_port(dut, meta, ["i", n]) for n in
                                   ("valid", "ready", "payload"))
    o_valid, o_ready, o_payload = (_port(dut, meta, ["o", n]) for n in
                                   ("valid", "ready", "payload"))

    cocotb.start_soon(Clock(clk, 10, unit="ns").start())
    i_valid.value = 0
    o_ready.value = 0
    rst.value = 1
    for _ in range(3):
        await RisingEdge(clk)
    rst.value = 0

    results = []
    for one in job["jobs"]:
        results.append(await _run_one(one, ofields, pfields, rng, p_idle, p_stall, clk,
                                      (i_valid, i_ready, i_payload),
                                      (o_valid, o_ready, o_payload)))
    errors = [f"job {r['name']}: {r['error']}" for r in results if r["error"]]
    Path(os.environ["AIRFOIL_RESULT"]).write_text(json.dumps(
        {"jobs": results, "error": errors[0] if errors else None}))
    assert not errors, errors[0]


async def _run_one(one, ofields, pfields, rng, p_idle, p_stall, clk, i_port, o_port):
    i_valid, i_ready, i_payload = i_port
    o_valid, o_ready, o_payload = o_port
    beats = [pack_beat(ofields, b) for b in one["beats"]]
    expected = [(list(p), last) for p, last in one["expected"]]
    sent, received, mismatches, first_error = 0, 0, 0, None
    pending = False
    cycle, first_in, last_in, last_out = 0, None, None, None
    limit = 50 * (len(beats) + len(expected)) + 1000
    while received < len(expected) and cycle < limit:
        await RisingEdge(clk)
        cycle += 1
        if not pending and sent < len(beats) and rng.random() >= p_idle:
            i_payload.value = beats[sent]
            pending = True
        i_valid.value = int(pending)
        ready = rng.random() >= p_stall
        o_ready.value = int(ready)
        await ReadOnly()
        if pending and int(i_ready.value):
            if first_in is None:
                first_in = cycle
            last_in = cycle
            sent += 1
            pending = False
        if ready and int(o_valid.value):
            got = unpack_psum(pfields, o_payload.value.to_unsigned())
            exp_p, exp_last = expected[received] if received < len(expected) else ([], -1)
            g = (got["psum"][:len(exp_p)], got["last"])
            if g != (exp_p, exp_last):
                mismatches += 1
                if first_error is None:
                    first_error = f"psum beat {received}: got {g}, expected {(exp_p, exp_last)}"
            received += 1
            last_out = cycle
    await RisingEdge(clk)
    i_valid.value = 0
    o_ready.value = 0
    if first_error is None and received != len(expected):
        first_error = f"timeout after {cycle} cycles: {received} of {len(expected)} psum beats"
    if first_error is None and sent != len(beats):
        first_error = f"only {sent} of {len(beats)} operand beats taken"
    return {"name": one.get("name", ""), "received": received, "mismatches": mismatches,
            "sent": sent, "beats": len(beats),
            "cycles": (last_out - first_in + 1) if last_out and first_in else None,
            "in_cycles": (last_in - first_in + 1) if last_in and first_in else None,
            "error": first_error}
