"""The token FIFOs between units: a counter per (producer, consumer) pair of units."""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["TokenCounters"]


class TokenCounters(wiring.Component):
    """Count the tokens each unit has released to each other unit, up to ``depth``.

    Unit ``u``'s queue head may start when ``ok[u]``: every unit ``s`` its wait mask names
    (``wait[u]`` bit ``s``) has a token for it. Starting (``take[u]``) removes one token
    of each. A unit's release may go when ``room[u]``: no unit its release mask names
    (``release[u]`` bit ``d``) already holds ``depth`` tokens from it; ``give[u]`` puts
    one token in each. A token released in a cycle can be taken from the next.

    Parameters
    ----------
    units : int
        Units (``isa.Unit`` values index them).
    depth : int
        Tokens a FIFO holds (:data:`airfoil.isa.TOKEN_DEPTH`).

    Members
    -------
    wait, release : In(units).array(units)
        Each unit's wait mask (over producers) and release mask (over consumers).
    take, give : In(units)
        Unit ``u`` starts its head (``take``, only when ``ok``) or puts its release
        (``give``, only when ``room``).
    ok, room : Out(units)
    count : Out(range(depth + 1)).array(units * units)
        Tokens from ``s`` to ``d`` at ``count[s * units + d]``.
    """

    def __init__(self, *, units: int, depth: int):
        if not isinstance(units, int) or units < 1:
            raise TypeError(f"Unit count must be a positive integer, not {units!r}")
        if not isinstance(depth, int) or depth < 1:
            raise TypeError(f"Token depth must be a positive integer, not {depth!r}")
        self._units, self._depth = units, depth
        super().__init__({
            "wait": In(units).array(units), "release": In(units).array(units),
            "take": In(units), "give": In(units),
            "ok": Out(units), "room": Out(units),
            "count": Out(range(depth + 1)).array(units * units),
        })

    @property
    def depth(self) -> int:
        return self._depth

    def elaborate(self, platform):
        m = Module()
        n = self._units
        for s in range(n):
            # Named for coverage: some FIFO from unit ``s`` holds ``depth`` tokens.
            full = Signal(name=f"full_from_{s}")
            m.d.comb += full.eq(_any(self.count[s * n + d] == self._depth for d in range(n)))
            for d in range(n):
                cnt = self.count[s * n + d]
                inc = self.give[s] & self.release[s][d]
                dec = self.take[d] & self.wait[d][s]
                m.d.sync += cnt.eq(cnt + inc - dec)
        for u in range(n):
            m.d.comb += [
                self.ok[u].eq(~_any(self.wait[u][s] & (self.count[s * n + u] == 0)
                                    for s in range(n))),
                self.room[u].eq(~_any(self.release[u][d] &
                                      (self.count[u * n + d] == self._depth)
                                      for d in range(n))),
            ]
        return m


def _any(bits):
    out = 0
    for b in bits:
        out = out | b
    return out
