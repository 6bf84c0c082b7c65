"""cocotb testbench of the core in its harness: memory fill, CSR programming, run, read back.

The job file named by ``$AIRFOIL_JOB`` (written by :func:`sim.rtl.run_core`) lists runs;
each run fills a fresh memory (program, data image, extra regions) in bulk, sets the
harness's stall inputs (the run's seed and stall pattern), resets the design, programs the
CSRs over AXI4-Lite (each channel's data base), starts the core, polls ``STATUS`` until
``DONE`` (or a cycle limit) and records the status, the cycle counter, the concurrency
counters (:data:`airfoil.csr.COUNTER_REGISTERS`), the requested memory regions, the
memory's protocol errors and the watched signals. The memory ports run in RTL
(:mod:`sim.core_harness`, ``axi_mem.sv``): no Python runs per clock cycle, only per CSR
access and per change of a watched signal.
The results go to ``$AIRFOIL_RESULT`` as JSON; the caller compares them with the golden.
With ``$AIRFOIL_PROFILE`` set, the run from START to DONE is profiled (cProfile) into
that file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Timer, ValueChange
from cocotb.utils import get_sim_time

from airfoil import csr as csrmap
from sim.axi_mem import AxiLiteMaster, HarnessMemory, load_run

#: Clock period of the simulation (ns).
PERIOD_NS = 10


def _signal(root, name: str):
    """The handle of ``name`` (dot-separated path of instance and signal names) under
    ``root``."""
    h = root
    for part in name.split("."):
        try:
            h = h[part]
        except (AttributeError, KeyError):
            raise AttributeError(f"no signal {name!r} under the core ({part!r} not found)")
    return h


class Watch:
    """Cycles and rising edges of one signal being high (nonzero; with a leading ``!``,
    zero), counted on its changes only."""

    def __init__(self, root, name: str):
        self.name = name
        self.invert = name.startswith("!")
        self.sig = _signal(root, name.lstrip("!"))
        self.high_ns = 0
        self.rises = 0
        self.since = None
        self.task = None

    def _is_high(self) -> bool:
        v = self.sig.value
        on = v.is_resolvable and int(v) != 0
        return on != self.invert

    async def _run(self):
        while True:
            await ValueChange(self.sig)
            self._update()

    def _update(self):
        now = get_sim_time("ns")
        high = self._is_high()
        if high and self.since is None:
            self.since = now
            self.rises += 1
        elif not high and self.since is not None:
            self.high_ns += now - self.since
            self.since = None

    def start(self):
        self.since = get_sim_time("ns") if self._is_high() else None
        self.task = cocotb.start_soon(self._run())

    def stop(self) -> None:
        self.task.cancel()
        if self.since is not None:
            self.high_ns += get_sim_time("ns") - self.since
            self.since = None

    @property
    def cycles(self) -> int:
        return round(self.high_ns / PERIOD_NS)


async def _run_one(dut, job: dict, run: dict, mem: HarnessMemory) -> dict:
    nch = job["channels"]
    load_run(dut, run, mem)
    csr = AxiLiteMaster(dut, "csr", dut.clk)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    names = run.get("watch", [])
    watches = [Watch(getattr(dut, run["core"]), name) for name in names]
    regs = [("PROG_BASE_LO", run["prog_base"] & 0xFFFFFFFF),
            ("PROG_BASE_HI", run["prog_base"] >> 32),
            ("PROG_COUNT", run["prog_count"])]
    bases = run.get("data_bases") or [run["data_base"]] * nch
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
    for w in watches:
        w.start()
    await csr.write(csrmap.offset("CTRL"), csrmap.CTRL_START)
    t0 = time.perf_counter()
    prof = None
    if os.environ.get("AIRFOIL_PROFILE"):
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    status = 0
    waited = 0
    poll = run.get("poll", 64)
    while waited < run["max_cycles"]:
        await Timer(poll * PERIOD_NS, "ns")
        waited += poll
        status = await csr.read(csrmap.offset("STATUS"))
        if status & csrmap.STATUS_DONE:
            break
    seconds = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
        prof.dump_stats(os.environ["AIRFOIL_PROFILE"])
    for w in watches:
        w.stop()
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
    result["sim_seconds"] = seconds
    result["err_pc"] = await csr.read(csrmap.offset("ERR_PC"))
    result["retired"] = await csr.read(csrmap.offset("RETIRED"))
    result["counters"] = {}
    for name, reg in csrmap.COUNTER_REGISTERS.items():
        result["counters"][name] = await csr.read(csrmap.offset(reg))
    result["reads"] = {k: mem.read(r["addr"], r["nbytes"]).hex()
                       for k, r in run.get("read_back", {}).items()}
    beats = [int(getattr(dut, f"data{c}_rd").beats.value) for c in range(nch)]
    result["read_beats_per_channel"] = beats
    result["read_beats"] = sum(beats)
    result["protocol_errors"] = mem.protocol_errors()
    result["watched"] = {w.name: w.cycles for w in watches}
    result["watched_rises"] = {w.name: w.rises for w in watches}
    await ClockCycles(dut.clk, 8)
    return result


@cocotb.test()
async def run_jobs(dut):
    """Run every job of ``$AIRFOIL_JOB`` and write the results."""
    job = json.loads(Path(os.environ["AIRFOIL_JOB"]).read_text())
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns", impl="gpi").start())
    mem = HarnessMemory()
    results = []
    for run in job["runs"]:
        results.append(await _run_one(dut, job, run, mem))
    Path(os.environ["AIRFOIL_RESULT"]).write_text(json.dumps({"runs": results}))
    bad = [{k: v for k, v in r.items() if k != "reads"} for r in results
           if not r["done"] or r["protocol_errors"]]
    assert not bad, f"runs did not finish cleanly: {bad}"
