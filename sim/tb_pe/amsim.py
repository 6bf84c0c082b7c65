"""Drive a one-input, one-output stream component in ``amaranth.sim``.

Shared by the PE unit tests: a driver puts packed beats on ``dut.i`` with random idle
cycles, a monitor takes results from ``dut.o`` under random backpressure, and the run
returns the results and the cycle count.
"""

from __future__ import annotations

import random

from amaranth.sim import Simulator

from .stimulus import pack, unpack_signed

__all__ = ["run_stream"]


def run_stream(dut, fields: dict, beats: list, n_out: int, *, seed: int = 0,
               idle: float = 0.0, stall: float = 0.0, out_field: str = "acc",
               max_cycles: int = 200_000) -> tuple[list[int], int]:
    """Feed ``beats`` (``{path: int}``) to ``dut.i``; collect ``n_out`` results of ``dut.o``.

    ``idle``: probability of an idle cycle before each beat; ``stall``: probability that
    ``o.ready`` is low in a cycle. Return ``(results, cycles)``; ``cycles`` counts from the
    first beat offered to the last result taken.
    """
    rng = random.Random(seed)
    words = [pack(fields, b) for b in beats]
    width = len(dut.o.payload.as_value())
    results: list[int] = []
    state = {"cycles": 0}

    async def driver(ctx):
        for w in words:
            while rng.random() < idle:
                await ctx.tick()
            ctx.set(dut.i.payload.as_value(), w)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def monitor(ctx):
        n = 0
        while len(results) < n_out:
            ready = rng.random() >= stall
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid,
                                                           dut.o.payload.as_value())
            n += 1
            if valid and ready:
                results.append(unpack_signed(payload, width))
            if n > max_cycles:
                raise TimeoutError(f"{len(results)} of {n_out} results after {n} cycles")
        state["cycles"] = n

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver, background=True)
    sim.add_testbench(monitor)
    sim.run()
    return results, state["cycles"]
