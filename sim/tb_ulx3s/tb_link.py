"""cocotb testbench of the ULX3S design: the host at the far end of its UART, bit by bit.

The driver sends each request byte as the FT231X would (start bit, 8 data bits LSB
first, stop bit, ``divisor`` cycles a bit) and a receiver samples the design's ``tx``
line in the middle of each bit. First the link's own checks (the core's ``ID`` register,
an unknown op, a read past the memory's end, a write and read back at an unaligned
address), then the run of ``$AIRFOIL_CASE``'s program through
:func:`fpga.ulx3s.host.run_sequence`. The record goes to ``$AIRFOIL_RESULT``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.queue import Queue
from cocotb.triggers import ClockCycles, FallingEdge, Timer

from airfoil import csr as csrmap
from fpga.ulx3s import host, link

PERIOD_NS = 10


class UartHost:
    """Both directions of the serial line, at the bit level."""

    def __init__(self, dut, divisor: int):
        self.dut, self.bit_ns = dut, divisor * PERIOD_NS
        self.received = Queue()
        dut.uart_rx.value = 1
        cocotb.start_soon(self._receive())

    async def send(self, data: bytes) -> None:
        for byte in data:
            for bit in [0, *((byte >> i) & 1 for i in range(8)), 1]:
                self.dut.uart_rx.value = bit
                await Timer(self.bit_ns, unit="ns")

    async def _receive(self) -> None:
        while True:
            await FallingEdge(self.dut.uart_tx)
            await Timer(self.bit_ns // 2, unit="ns")
            assert int(self.dut.uart_tx.value) == 0, "start bit too short"
            byte = 0
            for i in range(8):
                await Timer(self.bit_ns, unit="ns")
                byte |= int(self.dut.uart_tx.value) << i
            await Timer(self.bit_ns, unit="ns")
            assert int(self.dut.uart_tx.value) == 1, "no stop bit"
            await self.received.put(byte)

    async def transact(self, request: bytes, nreply: int) -> bytes:
        await self.send(request)
        return bytes([await self.received.get() for _ in range(nreply)])

    async def drive(self, sequence):
        """Run a request generator (see :mod:`fpga.ulx3s.host`) to its result."""
        try:
            request, nreply = next(sequence)
            while True:
                reply = await self.transact(request, nreply)
                request, nreply = sequence.send(reply)
        except StopIteration as stop:
            return stop.value


@cocotb.test()
async def link_runs_a_program(dut):
    case = json.loads(Path(os.environ["AIRFOIL_CASE"]).read_text())
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    dut.rst.value = 1
    uart = UartHost(dut, case["divisor"])
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 4)
    record = {}

    reply = await uart.transact(link.request(link.READ_CSR, csrmap.offset("ID")), 5)
    record["core_id"] = int.from_bytes(reply[:4], "little")
    record["core_id_status"] = reply[4]
    reply = await uart.transact(bytes([0x00]) + bytes(8), 1)
    record["bad_op_status"] = reply[0]
    mem = case["memory_bytes"]
    reply = await uart.transact(link.request(link.READ_MEM, mem - 2, 4), 5)
    record["past_end_status"] = reply[-1]
    record["past_end_bytes"] = reply[:-1].hex()
    rng = random.Random(cocotb.RANDOM_SEED)
    data = bytes(rng.randrange(256) for _ in range(37))
    addr = mem // 2 + 13
    w = await uart.transact(link.request(link.WRITE_MEM, addr, len(data), data), 1)
    r = await uart.transact(link.request(link.READ_MEM, addr, len(data)), len(data) + 1)
    record["roundtrip_ok"] = w[0] == link.STATUS_OK and r == data + bytes([link.STATUS_OK])

    seq = host.run_sequence(bytes.fromhex(case["program"]), bytes.fromhex(case["image"]),
                            {k: tuple(v) for k, v in case["read_back"].items()},
                            memory_bytes=mem)
    run = await uart.drive(seq)
    run["reads"] = {k: v.hex() for k, v in run["reads"].items()}
    record["run"] = run
    Path(os.environ["AIRFOIL_RESULT"]).write_text(json.dumps(record))
