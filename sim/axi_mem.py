"""A cycle-level AXI4 memory model for cocotb testbenches.

The core's harness runs the same timing model in RTL (``sim/tb/axi_mem.sv``, reached
through :class:`HarnessMemory`); the Python ports below serve testbenches of smaller
designs.

One :class:`AxiMemory` (a byte array) serves any number of AXI4 ports of the design (the
core's instruction port and one data port per memory channel, each its own
:class:`ReadPortModel` and :class:`WritePortModel`). Every port honours the
configuration's memory timing: a read burst's first beat comes ``latency`` cycles (the
read latency of the port's channel) after its address handshake, at most
``outstanding`` read bursts are accepted and not yet answered, a data port's read beats
come at most at the channel's rate (``rate`` bytes per cycle on average: a beat of ``w``
bytes is offered when the channel has earned ``w`` bytes; while no beat is offered at most
one beat's worth stays earned, and no rate is earned while an offered beat waits for the
design: bandwidth unused is lost, as a DRAM channel's is), and a
write's response comes ``write_latency`` cycles after its last data beat. With ``stall`` > 0 every
channel's ready/valid that the model drives is withheld at random (seeded, so a run is
reproducible), like cocotbext-axi's pause generators; each port draws them from the
generator it is given (the core's testbench gives every memory channel one of its own).
Responses keep AXI's rules: a valid once raised stays until its handshake.

The model samples at the falling clock edge (all signals settled), decides the
handshakes the design will see at the next rising edge, and drives its outputs after that
edge.
"""

from __future__ import annotations

import ctypes
import random
from collections import deque

from cocotb.triggers import FallingEdge, RisingEdge

__all__ = ["AxiMemory", "ReadPortModel", "WritePortModel", "AxiLiteMaster", "HarnessMemory"]

RESP_OKAY = 0
RESP_SLVERR = 2


def _get(sig) -> int:
    return int(sig.value)


class AxiMemory:
    """Bytes behind AXI4 ports: ``size`` bytes at address 0.

    Parameters
    ----------
    size : int
        Capacity in bytes; accesses beyond it answer SLVERR.
    """

    def __init__(self, size: int):
        self.data = bytearray(size)

    def write(self, addr: int, raw: bytes) -> None:
        if addr < 0 or addr + len(raw) > len(self.data):
            raise ValueError(f"write of {len(raw)} bytes at {addr:#x} outside the memory "
                             f"({len(self.data)} bytes)")
        self.data[addr:addr + len(raw)] = raw

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.data[addr:addr + n])


class HarnessMemory:
    """The memory of the RTL ports (``sim/tb/axi_mem.sv``, bytes in ``axi_mem_dpi.cpp``),
    filled and read in bulk through ctypes from inside the simulator process."""

    def __init__(self):
        lib = ctypes.CDLL(None)
        u64, ptr = ctypes.c_uint64, ctypes.c_char_p
        lib.airfoil_mem_reset.argtypes = [u64]
        lib.airfoil_mem_load.argtypes = [u64, ptr, u64]
        lib.airfoil_mem_dump.argtypes = [u64, ctypes.c_void_p, u64]
        lib.airfoil_mem_error.restype = ctypes.c_char_p
        lib.airfoil_mem_error.argtypes = [ctypes.c_int]
        self.lib = lib

    def reset(self, size: int) -> None:
        self.lib.airfoil_mem_reset(size)

    def write(self, addr: int, raw: bytes) -> None:
        if not self.lib.airfoil_mem_load(addr, raw, len(raw)):
            raise ValueError(f"write of {len(raw)} bytes at {addr:#x} outside the memory")

    def read(self, addr: int, n: int) -> bytes:
        buf = ctypes.create_string_buffer(n)
        if not self.lib.airfoil_mem_dump(addr, buf, n):
            raise ValueError(f"read of {n} bytes at {addr:#x} outside the memory")
        return buf.raw

    def protocol_errors(self) -> list[str]:
        return [self.lib.airfoil_mem_error(i).decode()
                for i in range(self.lib.airfoil_mem_error_count())]


class ReadPortModel:
    """The AR and R channels of one port (signals ``<prefix>__ar*``, ``<prefix>__r*``)."""

    def __init__(self, dut, prefix: str, mem: AxiMemory, *, word_bytes: int,
                 latency: int, outstanding: int, rng: random.Random, stall: float,
                 rate: float | None = None):
        s = lambda n: getattr(dut, f"{prefix}__{n}")
        # Bytes the channel may still deliver (None: one beat every cycle).
        self.rate = rate if rate is not None and rate < word_bytes else None
        self.credit = float(word_bytes)
        self.arvalid, self.arready, self.araddr, self.arlen = (
            s("arvalid"), s("arready"), s("araddr"), s("arlen"))
        self.rvalid, self.rready, self.rdata, self.rlast, self.rresp = (
            s("rvalid"), s("rready"), s("rdata"), s("rlast"), s("rresp"))
        self.mem, self.wb = mem, word_bytes
        self.latency, self.outstanding = latency, outstanding
        self.rng, self.stall = rng, stall
        self.bursts = deque()      # [addr, beats, due_cycle, next_beat]
        self.r_on = False
        self.ar_on = False
        self.ar_fire = None
        self.r_fire = False
        self.beats = 0
        self.arready.value = 0
        self.rvalid.value = 0

    def sample(self, cycle: int) -> None:
        self.ar_fire = None
        if self.ar_on and _get(self.arvalid):
            self.ar_fire = (_get(self.araddr), _get(self.arlen) + 1)
        self.r_fire = self.r_on and bool(_get(self.rready))

    def drive(self, cycle: int) -> None:
        if self.ar_fire is not None:
            addr, n = self.ar_fire
            self.bursts.append([addr, n, cycle + self.latency - 1, 0])
        if self.r_fire:
            self.beats += 1
            b = self.bursts[0]
            b[3] += 1
            if b[3] == b[1]:
                self.bursts.popleft()
            self.r_on = False
        self.ar_on = (len(self.bursts) < self.outstanding and
                      not (self.stall and self.rng.random() < self.stall))
        self.arready.value = int(self.ar_on)
        if self.rate is not None and not self.r_on:
            self.credit += self.rate
        if not self.r_on and self.bursts and self.bursts[0][2] <= cycle and \
                (self.rate is None or self.credit >= self.wb) and \
                not (self.stall and self.rng.random() < self.stall):
            if self.rate is not None:
                self.credit -= self.wb
            addr, n, _, i = self.bursts[0]
            a = addr + i * self.wb
            if a + self.wb <= len(self.mem.data):
                raw, resp = self.mem.read(a, self.wb), RESP_OKAY
            else:
                raw, resp = bytes(self.wb), RESP_SLVERR
            self.rdata.value = int.from_bytes(raw, "little")
            self.rlast.value = int(i == n - 1)
            self.rresp.value = resp
            self.r_on = True
        if self.rate is not None and not self.r_on:
            # Nothing offered this cycle: at most one beat's worth stays earned.
            self.credit = min(self.credit, float(self.wb))
        self.rvalid.value = int(self.r_on)


class WritePortModel:
    """The AW, W and B channels of one port."""

    def __init__(self, dut, prefix: str, mem: AxiMemory, *, word_bytes: int,
                 latency: int, rng: random.Random, stall: float):
        s = lambda n: getattr(dut, f"{prefix}__{n}")
        self.awvalid, self.awready, self.awaddr, self.awlen = (
            s("awvalid"), s("awready"), s("awaddr"), s("awlen"))
        self.wvalid, self.wready, self.wdata, self.wstrb, self.wlast = (
            s("wvalid"), s("wready"), s("wdata"), s("wstrb"), s("wlast"))
        self.bvalid, self.bready, self.bresp = s("bvalid"), s("bready"), s("bresp")
        self.mem, self.wb = mem, word_bytes
        self.latency = latency
        self.rng, self.stall = rng, stall
        self.bursts = deque()      # [addr, beats, next_beat, error]
        self.responses = deque()   # [due_cycle, resp]
        self.aw_on = self.w_on = self.b_on = False
        self.aw_fire = self.w_fire = None
        self.b_fire = False
        self.protocol_errors = []
        for sig in (self.awready, self.wready, self.bvalid):
            sig.value = 0

    def _stalled(self) -> bool:
        return bool(self.stall) and self.rng.random() < self.stall

    def sample(self, cycle: int) -> None:
        self.aw_fire = self.w_fire = None
        if self.aw_on and _get(self.awvalid):
            self.aw_fire = (_get(self.awaddr), _get(self.awlen) + 1)
        if self.w_on and _get(self.wvalid):
            self.w_fire = (_get(self.wdata), _get(self.wstrb), _get(self.wlast))
        self.b_fire = self.b_on and bool(_get(self.bready))

    def drive(self, cycle: int) -> None:
        if self.aw_fire is not None:
            self.bursts.append([self.aw_fire[0], self.aw_fire[1], 0, False])
        if self.w_fire is not None:
            data, strb, last = self.w_fire
            b = self.bursts[0]
            a = b[0] + b[2] * self.wb
            raw = data.to_bytes(self.wb, "little")
            if a + self.wb <= len(self.mem.data):
                for j in range(self.wb):
                    if strb >> j & 1:
                        self.mem.data[a + j] = raw[j]
            else:
                b[3] = True
            b[2] += 1
            if bool(last) != (b[2] == b[1]):
                self.protocol_errors.append(f"cycle {cycle}: WLAST={last} on beat {b[2]} "
                                            f"of a {b[1]}-beat burst")
            if b[2] == b[1]:
                self.bursts.popleft()
                self.responses.append([cycle + self.latency,
                                       RESP_SLVERR if b[3] else RESP_OKAY])
        if self.b_fire:
            self.responses.popleft()
            self.b_on = False
        self.aw_on = not self._stalled()
        self.w_on = bool(self.bursts) and not self._stalled()
        if not self.b_on and self.responses and self.responses[0][0] <= cycle and \
                not self._stalled():
            self.bresp.value = self.responses[0][1]
            self.b_on = True
        self.awready.value = int(self.aw_on)
        self.wready.value = int(self.w_on and bool(self.bursts))
        self.w_on = self.w_on and bool(self.bursts)
        self.bvalid.value = int(self.b_on)


class AxiLiteMaster:
    """Blocking AXI4-Lite register accesses (signals ``<prefix>__*``)."""

    def __init__(self, dut, prefix: str, clk):
        s = lambda n: getattr(dut, f"{prefix}__{n}")
        self.s = s
        self.clk = clk
        for n in ("awvalid", "wvalid", "bready", "arvalid", "rready"):
            s(n).value = 0
        s("wstrb").value = 0xF

    async def write(self, addr: int, value: int) -> None:
        s = self.s
        await RisingEdge(self.clk)
        s("awaddr").value = addr
        s("wdata").value = value
        s("awvalid").value = 1
        s("wvalid").value = 1
        while True:
            await FallingEdge(self.clk)
            if _get(s("awready")):
                break
        await RisingEdge(self.clk)
        s("awvalid").value = 0
        s("wvalid").value = 0
        s("bready").value = 1
        while True:
            await FallingEdge(self.clk)
            if _get(s("bvalid")):
                break
        await RisingEdge(self.clk)
        s("bready").value = 0

    async def read(self, addr: int) -> int:
        s = self.s
        await RisingEdge(self.clk)
        s("araddr").value = addr
        s("arvalid").value = 1
        while True:
            await FallingEdge(self.clk)
            if _get(s("arready")):
                break
        await RisingEdge(self.clk)
        s("arvalid").value = 0
        s("rready").value = 1
        while True:
            await FallingEdge(self.clk)
            if _get(s("rvalid")):
                value = _get(s("rdata"))
                break
        await RisingEdge(self.clk)
        s("rready").value = 0
        return value


async def serve(clk, ports) -> None:
    """Run port models forever: sample at the falling edge, drive after the rising one."""
    cycle = 0
    while True:
        await FallingEdge(clk)
        for p in ports:
            p.sample(cycle)
        await RisingEdge(clk)
        cycle += 1
        for p in ports:
            p.drive(cycle)
