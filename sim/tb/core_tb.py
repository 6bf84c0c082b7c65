"""cocotb testbench of the core: memory model, CSR programming, run, read back.

The job file named by ``$AIRFOIL_JOB`` (written by :func:`sim.rtl.run_core`) lists runs;
each run resets the design, fills a fresh memory (program, data image, extra regions),
programs the CSRs over AXI4-Lite, starts the core, polls ``STATUS`` until ``DONE`` (or a
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
    ports = [
        ReadPortModel(dut, "instr", mem, word_bytes=wb, latency=mem_cfg["read_latency"],
                      outstanding=mem_cfg["outstanding"], rng=rng, stall=stall),
        ReadPortModel(dut, "data0", mem, word_bytes=wb, latency=mem_cfg["read_latency"],
                      outstanding=mem_cfg["outstanding"], rng=rng, stall=stall),
    ]
    writer = WritePortModel(dut, "data0", mem, word_bytes=wb,
                            latency=mem_cfg["write_latency"], rng=rng, stall=stall)
    ports.append(writer)
    csr = AxiLiteMaster(dut, "csr", dut.clk)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    server = cocotb.start_soon(serve(dut.clk, ports))
    for name, value in (("PROG_BASE_LO", run["prog_base"] & 0xFFFFFFFF),
                        ("PROG_BASE_HI", run["prog_base"] >> 32),
                        ("PROG_COUNT", run["prog_count"]),
                        ("DATA_BASE_LO", run["data_base"] & 0xFFFFFFFF),
                        ("DATA_BASE_HI", run["data_base"] >> 32)):
        await csr.write(csrmap.offset(name), value)
    core_id = await csr.read(csrmap.offset("ID"))
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
        "seed": run["seed"], "status": status, "id": core_id,
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
    result["read_beats"] = ports[1].beats
    result["protocol_errors"] = writer.protocol_errors
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
