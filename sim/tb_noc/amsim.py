"""Run a :class:`~sim.tb_noc.traffic.Schedule` on a flat-port network in ``amaranth.sim``.

The component is passed in (``sim`` never imports ``hdl``); it must have the flat ports
``inj_valid``, ``inj_data``, ``inj_ready``, ``ej_valid``, ``ej_data`` and ``ej_ready``.
"""

from __future__ import annotations

from amaranth.sim import Simulator

__all__ = ["run_amaranth"]


def run_amaranth(top, schedule) -> dict:
    """Simulate ``top`` under ``schedule`` until it finishes; return its result dict."""
    sim = Simulator(top)
    sim.add_clock(1e-8)

    async def testbench(ctx):
        while True:
            ins = schedule.step(ctx.get(top.inj_ready), ctx.get(top.ej_valid),
                                ctx.get(top.ej_data))
            if ins is None:
                break
            ctx.set(top.inj_valid, ins[0])
            ctx.set(top.inj_data, ins[1])
            ctx.set(top.ej_ready, ins[2])
            await ctx.tick()

    sim.add_testbench(testbench)
    sim.run()
    return schedule.result()
