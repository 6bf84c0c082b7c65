"""cocotb testbench of the core: memory model, CSR programming, run, read back.

The job file named by ``$AIRFOIL_JOB`` (written by :func:`sim.rtl.run_core`) lists runs;
each run resets the design, fills a fresh memory (program, data image, extra regions),
serves the instruction port and one data port per memory channel (``data<c>``, read
latency of its channel, random stalls of its own drawn from the run's seed) from that one
memory, programs the CSRs over AXI4-Lite (each channel's data base), starts the core, polls ``STATUS`` until ``DONE`` (or a
cycle limit), and records the status, the cycle counter, the concurrency counters
(:data:`airfoil.csr.COUNTER_REGISTERS`) and the requested memory regions.
The results go to ``$AIRFOIL_RESULT`` as JSON; the caller compares them with the golden.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles

from airfoil import csr as csrmap
from sim.axi_mem import AxiLiteMaster, AxiMemory, ReadPortModel, WritePortModel, serve


async def _run_one(dut, job: dict, run: dict) -> dict:
    mem_cfg = job["memory"]
    wb = mem_cfg["word_bytes"]
    mem = AxiMemory(run["mem_bytes"])
    for region in run["regions"]:
        mem.write(region["addr"], Path(region["file"]).read_bytes())
    rng = random.Random(run["seed"])
    stall = run["stall"]
    latencies = mem_cfg.get("channel_latency") or [mem_cfg["read_latency"]]
    ports = [ReadPortModel(dut, "instr", mem, word_bytes=mem_cfg["instr_bytes"], latency=mem_cfg["read_latency"],
                           outstanding=mem_cfg["outstanding"], rng=rng, stall=stall)]
    readers, writers = [], []
    for c, lat in enumerate(latencies):
        # Channel 0 shares the instruction port's generator (as before channels), every
        # other channel stalls from a generator of its own.
        crng = rng if c == 0 else random.Random(run["seed"] * 1_000_003 + c)
        readers.append(ReadPortModel(dut, f"data{c}", mem, word_bytes=wb, latency=lat,
                                     outstanding=mem_cfg["channel_outstanding"][c], rng=crng,
                                     stall=stall, rate=mem_cfg["channel_bytes_per_cycle"]))
        writers.append(WritePortModel(dut, f"data{c}", mem, word_bytes=wb,
                                      latency=mem_cfg["write_latency"], rng=crng,
                                      stall=stall))
    for r, w in zip(readers, writers):
        ports += [r, w]
    csr = AxiLiteMaster(dut, "csr", dut.clk)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    server = cocotb.start_soon(serve(dut.clk, ports))
    regs = [("PROG_BASE_LO", run["prog_base"] & 0xFFFFFFFF),
            ("PROG_BASE_HI", run["prog_base"] >> 32),
            ("PROG_COUNT", run["prog_count"])]
    bases = run.get("data_bases") or [run["data_base"]] * len(latencies)
    for c, base in enumerate(bases):
        lo, hi = csrmap.data_base_registers(c)
        regs += [(lo, base & 0xFFFFFFFF), (hi, base >> 32)]
    for name, value in regs:
        await csr.write(csrmap.offset(name), value)
    core_id = await csr.read(csrmap.offset("ID"))
    bases_read = []
    for c in range(len(bases)):
        lo, hi = csrmap.data_base_registers(c)
        bases_read.append(await csr.read(csrmap.offset(lo)) |
                          await csr.read(csrmap.offset(hi)) << 32)
    await csr.write(csrmap.offset("CTRL"), csrmap.CTRL_START)
    status = 0
    waited = 0
    poll = run.get("poll", 64)
    while waited < run["max_cycles"]:
        await ClockCycles(dut.clk, poll)
        waited += poll
        status = await csr.read(csrmap.offset("STATUS"))
        if status & csrmap.STATUS_DONE:
            break
    result = {
        "seed": run["seed"], "status": status, "id": core_id, "data_bases": bases_read,
        "done": bool(status & csrmap.STATUS_DONE),
        "error": bool(status & csrmap.STATUS_ERROR),
        "err_code": (status >> csrmap.STATUS_ERR_CODE_SHIFT) &
        ((1 << csrmap.STATUS_ERR_CODE_BITS) - 1),
    }
    lo = await csr.read(csrmap.offset("CYCLES_LO"))
    hi = await csr.read(csrmap.offset("CYCLES_HI"))
    result["cycles"] = lo | hi << 32
    result["err_pc"] = await csr.read(csrmap.offset("ERR_PC"))
    result["retired"] = await csr.read(csrmap.offset("RETIRED"))
    result["counters"] = {}
    for name, reg in csrmap.COUNTER_REGISTERS.items():
        result["counters"][name] = await csr.read(csrmap.offset(reg))
    result["reads"] = {k: mem.read(r["addr"], r["nbytes"]).hex()
                       for k, r in run.get("read_back", {}).items()}
    result["read_beats_per_channel"] = [r.beats for r in readers]
    result["read_beats"] = sum(r.beats for r in readers)
    result["protocol_errors"] = [e for w in writers for e in w.protocol_errors]
    await ClockCycles(dut.clk, 8)
    server.cancel()
    return result


@cocotb.test()
async def run_jobs(dut):
    """Run every job of ``$AIRFOIL_JOB`` and write the results."""
    job = json.loads(Path(os.environ["AIRFOIL_JOB"]).read_text())
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    results = []
    for run in job["runs"]:
        results.append(await _run_one(dut, job, run))
    Path(os.environ["AIRFOIL_RESULT"]).write_text(json.dumps({"runs": results}))
    bad = [r for r in results if not r["done"] or r["protocol_errors"]]
    assert not bad, f"runs did not finish cleanly: {bad}"
