"""cocotb testbench of the RTL memory ports (``axi_mem_ports_tb.sv``), Python as the design.

Drives the ports as a design would (changes after a rising edge, samples at the falling
edge, a handshake completes at the next rising edge) and records what the timing model
promises: the first read beat ``LATENCY`` cycles after the address handshake, at most
``OUTSTANDING`` bursts accepted, paced beats of the rate-limited reader, the write
response ``WRITE_LATENCY`` cycles after the last data beat, strobes, SLVERR beyond the
memory, the WLAST and ARVALID checks, and each stall pattern's withheld cycles. The test
(tests/test_axi_mem_rtl.py) checks the record in ``$AIRFOIL_RESULT``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge

from sim.axi_mem import HarnessMemory
from sim.core_harness import stall_settings

MEM_BYTES = 4096


async def _reset(dut, seed=1, pattern="none", stall=0.0):
    for name, value in stall_settings(pattern, stall).items():
        getattr(dut, name).value = value
    dut.tb_seed.value = seed
    for s in ("a__arvalid", "a__rready", "p__arvalid", "p__rready", "w__awvalid",
              "w__wvalid", "w__bready"):
        getattr(dut, s).value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await FallingEdge(dut.clk)


def _s(dut, port, name):
    return getattr(dut, f"{port}__{name}")


async def _read(dut, port, addr, beats, limit=200):
    """One burst; return (cycle of the AR handshake, [(cycle, data, resp, last)])."""
    _s(dut, port, "araddr").value = addr
    _s(dut, port, "arlen").value = beats - 1
    _s(dut, port, "arvalid").value = 1
    _s(dut, port, "rready").value = 1
    t, ar_at, got = 0, None, []
    while len(got) < beats and t < limit:
        ar = ar_at is None and int(_s(dut, port, "arready").value)
        if int(_s(dut, port, "rvalid").value):
            got.append((t, int(_s(dut, port, "rdata").value), int(_s(dut, port, "rresp").value),
                        int(_s(dut, port, "rlast").value)))
        if ar:
            ar_at = t
        await RisingEdge(dut.clk)
        if ar:
            _s(dut, port, "arvalid").value = 0
        await FallingEdge(dut.clk)
        t += 1
    _s(dut, port, "rready").value = 0
    return ar_at, got


async def _write(dut, addr, words, strb=0xFFFF, lasts=None, limit=200):
    """One burst; return (cycle of the last W handshake, cycle B was first seen, BRESP)."""
    lasts = lasts or [i == len(words) - 1 for i in range(len(words))]
    dut.w__awaddr.value = addr
    dut.w__awlen.value = len(words) - 1
    dut.w__awvalid.value = 1
    dut.w__wdata.value = words[0]
    dut.w__wstrb.value = strb
    dut.w__wlast.value = int(lasts[0])
    dut.w__wvalid.value = 1
    dut.w__bready.value = 1
    t, i, aw, w_at = 0, 0, False, None
    while t < limit:
        if int(dut.w__bvalid.value):
            resp = int(dut.w__bresp.value)
            await RisingEdge(dut.clk)
            dut.w__bready.value = 0
            await FallingEdge(dut.clk)
            return w_at, t, resp
        aw_fire = not aw and int(dut.w__awready.value)
        w_fire = i < len(words) and int(dut.w__wready.value)
        await RisingEdge(dut.clk)
        if aw_fire:
            aw = True
            dut.w__awvalid.value = 0
        if w_fire:
            w_at = t
            i += 1
            if i < len(words):
                dut.w__wdata.value = words[i]
                dut.w__wlast.value = int(lasts[i])
            else:
                dut.w__wvalid.value = 0
        await FallingEdge(dut.clk)
        t += 1
    return w_at, None, None


async def _outstanding(dut, limit=30):
    """Offer three bursts with RREADY low; return how many were accepted."""
    dut.a__arlen.value = 0
    dut.a__araddr.value = 0
    dut.a__arvalid.value = 1
    taken = 0
    for _ in range(limit):
        fire = int(dut.a__arready.value)
        await RisingEdge(dut.clk)
        if fire:
            taken += 1
            dut.a__araddr.value = 16 * taken
            if taken == 3:
                dut.a__arvalid.value = 0
        await FallingEdge(dut.clk)
    dut.a__arvalid.value = 0
    return taken


async def _arready_trace(dut, seed, pattern, stall, cycles):
    await _reset(dut, seed, pattern, stall)
    trace = []
    for _ in range(cycles):
        trace.append(int(dut.a__arready.value))
        await FallingEdge(dut.clk)
    return "".join(map(str, trace))


@cocotb.test()
async def ports(dut):
    """Record the ports' timing and checks."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns", impl="gpi").start())
    mem = HarnessMemory()
    mem.reset(MEM_BYTES)
    mem.write(0, bytes(range(256)) * 16)
    await _reset(dut)
    out = {}
    words = [(0x1111 * (i + 1)) << 64 | 0xABCD0000 + i for i in range(4)]
    out["write"] = await _write(dut, 0x100, words)
    out["read_ar"], out["read"] = await _read(dut, "a", 0x100, 4)
    out["strobe_write"] = await _write(dut, 0x100, [(1 << 128) - 1], strb=0x00FF)
    out["after_strobe"] = mem.read(0x100, 16).hex()
    out["outstanding"] = await _outstanding(dut)
    await _reset(dut)
    out["edge_ar"], out["edge"] = await _read(dut, "a", MEM_BYTES - 16, 2)
    out["edge_write"] = await _write(dut, MEM_BYTES, [1])
    out["paced_ar"], out["paced"] = await _read(dut, "p", 0, 8)
    out["errors_before"] = mem.protocol_errors()
    out["bad_wlast"] = await _write(dut, 0x200, [1, 2], lasts=[True, False])
    out["errors"] = mem.protocol_errors()
    # ARVALID dropped while ARREADY is low (two bursts outstanding, RREADY low).
    await _outstanding(dut)
    await ClockCycles(dut.clk, 2)
    out["dropped"] = mem.protocol_errors()[len(out["errors"]):]
    out["traces"] = {}
    for pattern in ("none", "random", "bursts"):
        for seed in (5, 5, 6):
            out["traces"].setdefault(pattern, []).append(
                await _arready_trace(dut, seed, pattern, 0.25, 6000))
    out["read"] = [[t, hex(d), r, last] for t, d, r, last in out["read"]]
    out["edge"] = [[t, hex(d), r, last] for t, d, r, last in out["edge"]]
    out["paced"] = [[t, hex(d), r, last] for t, d, r, last in out["paced"]]
    out["words"] = [hex(w) for w in words]
    Path(os.environ["AIRFOIL_RESULT"]).write_text(json.dumps(out))
