"""Run a :class:`~sim.tb_decode.engine.StreamEngine` on a component in ``amaranth.sim``.

The component is passed in (``sim`` never imports ``hdl``); it must have a stream input
``words`` and a stream output ``beats`` (``valid``/``ready``/``payload``), and may have a
1-bit ``error`` output, which is read at the end.
"""

from __future__ import annotations

from amaranth.hdl import Value
from amaranth.sim import Simulator

__all__ = ["run_amaranth"]


def run_amaranth(top, engine) -> dict:
    """Simulate ``top`` under ``engine`` until it finishes; return its result dict."""
    sim = Simulator(top)
    sim.add_clock(1e-8)
    out = {}
    payload = Value.cast(top.beats.payload)

    async def testbench(ctx):
        while True:
            ins = engine.step(ctx.get(top.words.ready), ctx.get(top.beats.valid),
                              ctx.get(payload))
            if ins is None:
                break
            ctx.set(top.words.valid, ins[0])
            ctx.set(top.words.payload, ins[1])
            ctx.set(top.beats.ready, ins[2])
            await ctx.tick()
        if hasattr(top, "error"):
            out["error_flag"] = ctx.get(top.error)

    sim.add_testbench(testbench)
    sim.run()
    return {**engine.result(), **out}
