"""AXI4 helpers for cocotb testbenches: the RTL memory's bytes and an AXI4-Lite master.

The memory ports themselves are RTL (``sim/tb/axi_mem.sv``, whose header documents their
timing: read latency and outstanding bursts per port, read rate pacing, write-response
latency, SLVERR beyond the memory, seeded stall patterns, protocol checks), wired beside
a design by :func:`sim.core_harness.wrap_with_memory`; no Python runs per clock cycle.
:class:`HarnessMemory` fills and reads their bytes in bulk; :class:`AxiLiteMaster`
programs a design's registers.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from cocotb.triggers import FallingEdge, RisingEdge

__all__ = ["HarnessMemory", "AxiLiteMaster", "load_run"]


def _get(sig) -> int:
    return int(sig.value)


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


def load_run(dut, run: dict, mem: HarnessMemory) -> None:
    """Set up one run of a job file (``sim.rtl.write_job``): the memory image's regions,
    the memory model's stall seed and its stall inputs."""
    mem.reset(run["mem_bytes"])
    for region in run["regions"]:
        mem.write(region["addr"], Path(region["file"]).read_bytes())
    dut.tb_seed.value = run["seed"] & ((1 << 64) - 1)
    for name, value in run["stall_inputs"].items():
        getattr(dut, name).value = value
