"""Harness of the token FIFOs (:class:`~hdl.core.tokens.TokenCounters`).

Wait and release masks, starts (``take``) and releases (``give``) are free; as in the
engine, a unit starts only when ``ok`` and releases only when ``room``. A shadow count per
FIFO, wide enough not to wrap, follows the tokens put and taken. Asserted: every counter
equals its shadow and stays within ``0..depth`` (no overflow, no underflow, so no token is
lost or invented), and ``ok``/``room`` are exactly "a token is there"/"there is space".
"""

from __future__ import annotations

from amaranth.hdl import Assert, Assume, Cover, Module, ResetSignal, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from airfoil import isa
from hdl.core.tokens import TokenCounters

__all__ = ["TokenHarness", "MUTATIONS"]

#: Deliberate faults that the checks must catch (see ``mutation``).
MUTATIONS = ("give_without_room",)


class TokenHarness(wiring.Component):
    """Check :class:`TokenCounters` of the engine's units and depth (see the module doc).

    Parameters
    ----------
    mutation : str, optional
        ``"give_without_room"``: the environment may release into a full FIFO (the
        checks must fail).
    """

    def __init__(self, *, mutation=None):
        if mutation not in (None, *MUTATIONS):
            raise ValueError(f"mutation must be one of {MUTATIONS}, not {mutation!r}")
        self._n, self._depth = len(isa.Unit), isa.TOKEN_DEPTH
        self._mutation = mutation
        n = self._n
        super().__init__({"wait": In(n).array(n), "release": In(n).array(n),
                          "take": In(n), "give": In(n)})

    def elaborate(self, platform):
        m = Module()
        n, depth = self._n, self._depth
        m.submodules.dut = dut = TokenCounters(units=n, depth=depth)
        m.d.comb += Assume(~ResetSignal())
        for u in range(n):
            m.d.comb += [dut.wait[u].eq(self.wait[u]), dut.release[u].eq(self.release[u])]
        m.d.comb += [dut.take.eq(self.take), dut.give.eq(self.give),
                     Assume((self.take & ~dut.ok) == 0)]
        if self._mutation != "give_without_room":
            m.d.comb += Assume((self.give & ~dut.room) == 0)
        for s in range(n):
            for d in range(n):
                cnt = dut.count[s * n + d]
                shadow = Signal(range(-2, 2 * depth + 2), name=f"shadow_{s}_{d}")
                put = self.give[s] & self.release[s][d]
                got = self.take[d] & self.wait[d][s]
                m.d.sync += shadow.eq(shadow + put - got)
                m.d.comb += [Assert(cnt == shadow), Assert((shadow >= 0) & (shadow <= depth)),
                             Cover(put & ~got & (cnt == depth - 1))]
                # ok/room name exactly the empty/full FIFOs
                with m.If(self.wait[d][s] & (cnt == 0)):
                    m.d.comb += Assert(~dut.ok[d])
                with m.If(self.release[s][d] & (cnt == depth)):
                    m.d.comb += Assert(~dut.room[s])
        m.d.comb += [Assert(dut.ok[u] | self.wait[u].any()) for u in range(n)]
        m.d.comb += [Assert(dut.room[u] | self.release[u].any()) for u in range(n)]
        # a token released to a unit is taken by it later
        m.d.comb += Cover(self.take[1] & self.wait[1][0] & (dut.count[1] == depth))
        return m
