"""Pieces shared by the cocotb testbenches."""

from __future__ import annotations

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

__all__ = ["drive_cycle_engine"]


async def drive_cycle_engine(dut, step, *, observe, drive, reset_cycles: int = 2) -> None:
    """Clock ``dut``, reset it, then let a cycle engine drive its ports until it is done.

    Parameters
    ----------
    dut
        The cocotb handle of the top level (``clk`` and ``rst`` ports, Amaranth style).
    step : callable
        Called at each falling edge with the integer values of the ``observe`` ports;
        returns the values for the ``drive`` ports, or ``None`` to stop.
    observe, drive : sequence of str
        Port names read and written by the engine; ``drive`` ports start at 0.
    """
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    outs = [getattr(dut, name) for name in observe]
    ins = [getattr(dut, name) for name in drive]
    for sig in ins:
        sig.value = 0
    dut.rst.value = 1
    for _ in range(reset_cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    while True:
        await FallingEdge(dut.clk)
        values = step(*(int(sig.value) for sig in outs))
        if values is None:
            return
        for sig, value in zip(ins, values):
            sig.value = value
