"""cocotb testbench for tests/test_cocotb_runner.py: a counter that counts when enabled."""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge


@cocotb.test()
async def counts(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.en.value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    dut.en.value = 1
    await ClockCycles(dut.clk, 5)
    await RisingEdge(dut.clk)
    value = int(dut.count.value)
    with open(os.environ["AIRFOIL_RESULT"], "w") as fh:
        json.dump({"count": value}, fh)
    assert value == int(os.environ["EXPECT"]), f"count {value}"
