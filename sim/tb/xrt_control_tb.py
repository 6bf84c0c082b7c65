"""cocotb testbench of the Vitis kernel adapter (:mod:`hdl.core.xrt_control`) in the core's
memory harness, driven as XRT drives a kernel.

For each run of ``$AIRFOIL_JOB`` (written by :func:`sim.rtl.write_job`): fill the memory,
reset, enable the done interrupt (``GIE``, ``IER`` bit 0), write the arguments of
:func:`airfoil.kernel.kernel_args` (program address, instruction count, each channel's
data base), set ``ap_start``, poll ``AP_CTRL`` until ``ap_done``, read the result
registers, clear the interrupt through ``ISR`` and read back the asked-for regions. The
results go to ``$AIRFOIL_RESULT`` as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Timer

from airfoil import csr as csrmap
from airfoil import kernel as kmap
from sim.axi_mem import AxiLiteMaster, HarnessMemory, load_run

PERIOD_NS = 10


async def _write_arg(ctl, arg, value: int) -> None:
    for i in range(arg.size // 4):
        await ctl.write(arg.offset + 4 * i, (value >> (32 * i)) & 0xFFFFFFFF)


async def _read_reg(ctl, reg) -> int:
    value = 0
    for i in range(reg.size // 4):
        value |= await ctl.read(reg.offset + 4 * i) << (32 * i)
    return value


async def _run_one(dut, job: dict, run: dict, mem: HarnessMemory) -> dict:
    nch = job["channels"]
    load_run(dut, run, mem)
    ctl = AxiLiteMaster(dut, "s_axi_control", dut.clk)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ctl.write(kmap.GIE, 1)
    await ctl.write(kmap.IER, 1)
    bases = run.get("data_bases") or [run["data_base"]] * nch
    values = {"program": run["prog_base"], "prog_count": run["prog_count"],
              **{f"data{c}": base for c, base in enumerate(bases)}}
    for arg in kmap.kernel_args(nch):
        await _write_arg(ctl, arg, values[arg.name])
    idle = await ctl.read(kmap.AP_CTRL)
    await ctl.write(kmap.AP_CTRL, kmap.AP_START)
    busy = await ctl.read(kmap.AP_CTRL)
    ap_ctrl, waited = 0, 0
    while waited < run["max_cycles"]:
        await Timer(run.get("poll", 64) * PERIOD_NS, "ns")
        waited += run.get("poll", 64)
        ap_ctrl = await ctl.read(kmap.AP_CTRL)
        if ap_ctrl & kmap.AP_DONE:
            break
    interrupt = int(dut.interrupt.value)
    isr = await ctl.read(kmap.ISR)
    regs = {r.name: await _read_reg(ctl, r) for r in kmap.status_registers(nch)}
    after = await ctl.read(kmap.AP_CTRL)
    await ctl.write(kmap.ISR, isr)
    await ClockCycles(dut.clk, 2)
    status = regs["status"]
    result = {
        "seed": run["seed"], "idle_ap_ctrl": idle, "busy_ap_ctrl": busy,
        "ap_ctrl": ap_ctrl, "ap_ctrl_after": after, "interrupt": interrupt, "isr": isr,
        "interrupt_cleared": int(dut.interrupt.value) == 0,
        "status": status, "done": bool(status & csrmap.STATUS_DONE),
        "error": bool(status & csrmap.STATUS_ERROR),
        "err_code": (status >> csrmap.STATUS_ERR_CODE_SHIFT) &
        ((1 << csrmap.STATUS_ERR_CODE_BITS) - 1),
        "err_pc": regs["err_pc"], "cycles": regs["cycles"],
        "reads": {k: mem.read(r["addr"], r["nbytes"]).hex()
                  for k, r in run.get("read_back", {}).items()},
        "protocol_errors": mem.protocol_errors(),
    }
    await ClockCycles(dut.clk, 8)
    return result


@cocotb.test()
async def run_jobs(dut):
    """Run every job of ``$AIRFOIL_JOB`` through the kernel's control port."""
    job = json.loads(Path(os.environ["AIRFOIL_JOB"]).read_text())
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns", impl="gpi").start())
    mem = HarnessMemory()
    results = [await _run_one(dut, job, run, mem) for run in job["runs"]]
    Path(os.environ["AIRFOIL_RESULT"]).write_text(json.dumps({"runs": results}))
