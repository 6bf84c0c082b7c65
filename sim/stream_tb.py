"""Stream testbench parts: a source and a sink for valid/ready streams, their pause and
backpressure patterns, and an in-order scoreboard.

The scoreboard and the patterns are plain Python (the simulator-neutral cycle engines of
:mod:`sim.tb_decode.engine` use them under Verilator and ``amaranth.sim`` alike); the
source and the sink drive cocotb handles.

Timing discipline of :class:`StreamSource` and :class:`StreamSink`: after each rising
edge they set their outputs (valid and payload, or ready), then sample the handshake in
the read-only phase of the same cycle; a transfer happens in a cycle where valid and ready
are both high. Each transfer is stamped with the cycle it happened in, read from one
shared :class:`Cycles` count.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

__all__ = ["Cycles", "Scoreboard", "StreamSink", "StreamSource", "never", "random_pauses"]


def never() -> Iterator[bool]:
    """A pattern that never pauses (a source at full rate, a sink always ready)."""
    return itertools.repeat(False)


def random_pauses(rng: random.Random, probability: float) -> Iterator[bool]:
    """A pattern that pauses a cycle with ``probability`` (0 <= p < 1), drawn from ``rng``.

    At probability 0 it draws nothing from ``rng``, so a run without pauses leaves the
    generator's sequence to the rest of the testbench.
    """
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"pause probability must be in 0..1, not {probability!r}")
    if probability == 0.0:
        return never()
    return (rng.random() < probability for _ in itertools.count())


class Scoreboard:
    """Compare the items a block delivers with the expected ones, in order.

    Each :meth:`receive` is checked against the next expected item. A wrong item is
    classified: a *duplicate* (equal to an item already delivered), *reordered* (equal to a
    later expected item, which is then counted as delivered early) or *corrupt*; items past
    the expected ones are *extra*; expected items never delivered by :meth:`report` are
    *lost*.

    Parameters
    ----------
    expected : sequence
        The items expected, in order.
    same : callable, optional
        ``same(got, want) -> bool``; equality by default.
    show : callable, optional
        Formats an item in error messages (``repr`` by default).
    """

    def __init__(self, expected, *, same=None, show=repr):
        self.expected = list(expected)
        self.same = same or (lambda got, want: got == want)
        self.show = show
        self.received = 0
        self._next = 0
        self._early: set[int] = set()
        self.counts = {"corrupt": 0, "duplicate": 0, "reordered": 0, "extra": 0}
        self.errors: list[str] = []

    def _skip_early(self) -> None:
        while self._next in self._early:
            self._early.discard(self._next)
            self._next += 1

    def receive(self, got) -> bool:
        """Check one delivered item; return whether it was the one expected next."""
        index = self.received
        self.received += 1
        self._skip_early()
        if self._next >= len(self.expected):
            self._fail("extra", f"extra item #{index}: {self.show(got)}")
            return False
        want = self.expected[self._next]
        if self.same(got, want):
            self._next += 1
            return True
        if any(self.same(got, self.expected[j]) for j in range(self._next)):
            self._fail("duplicate", f"item #{index} duplicates an earlier item: "
                                    f"{self.show(got)}")
        elif any(self.same(got, self.expected[j])
                 for j in range(self._next + 1, len(self.expected)) if j not in self._early):
            j = next(j for j in range(self._next + 1, len(self.expected))
                     if j not in self._early and self.same(got, self.expected[j]))
            self._early.add(j)
            self._fail("reordered", f"item #{index} is expected item #{j}, delivered before "
                                    f"#{self._next}: {self.show(got)}")
        else:
            self._fail("corrupt", f"item #{index} differs: got {self.show(got)}, expected "
                                  f"{self.show(want)}")
            self._next += 1
        return False

    def _fail(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        self.errors.append(message)

    @property
    def complete(self) -> bool:
        """Whether every expected item has been delivered (rightly or not)."""
        self._skip_early()
        return self._next >= len(self.expected) or self.received >= len(self.expected)

    def lost(self) -> int:
        """Expected items not delivered yet."""
        self._skip_early()
        return len(self.expected) - self._next - len(self._early)

    def report(self) -> dict:
        """``received``, ``lost``, ``corrupt``, ``duplicate``, ``reordered``, ``extra``,
        ``mismatches`` (their sum but ``lost``) and ``errors`` (the messages)."""
        lost = self.lost()
        errors = list(self.errors)
        if lost:
            errors.append(f"{lost} of {len(self.expected)} expected items not delivered")
        return {"received": self.received, "lost": lost, **self.counts,
                "mismatches": sum(self.counts.values()), "errors": errors}


class Cycles:
    """Rising edges of ``clk`` since :meth:`start`: the time stamp the parts share.

    The count moves at each rising edge; the parts read it in the read-only phase, after
    every coroutine woken by that edge has run, so all of them see the same number.
    """

    def __init__(self, clk):
        self.clk = clk
        self.now = 0

    def start(self) -> "Cycles":
        import cocotb
        cocotb.start_soon(self._count())
        return self

    async def _count(self) -> None:
        from cocotb.triggers import RisingEdge
        while True:
            await RisingEdge(self.clk)
            self.now += 1


class StreamSource:
    """Offer items on a valid/ready stream, each held until it is taken (AXI-style).

    ``pauses`` is consulted whenever no item is held: ``True`` leaves that cycle idle.
    :attr:`first_offered` is the cycle the first item was offered, :attr:`taken` the cycle
    of each transfer.
    """

    def __init__(self, cycles: Cycles, valid, ready, payload, *,
                 pauses: Iterator[bool] | None = None):
        self.cycles, self.valid, self.ready, self.payload = cycles, valid, ready, payload
        self.pauses = pauses if pauses is not None else never()
        self.first_offered: int | None = None
        self.taken: list[int] = []
        valid.value = 0

    async def send(self, items, *, limit: int | None = None) -> int:
        """Offer ``items`` in order; return the number taken (fewer only when ``limit``
        cycles pass first). The stream is left idle one cycle after the last transfer."""
        from cocotb.triggers import ReadOnly, RisingEdge
        items = list(items)
        sent, held, spent = 0, False, 0
        while sent < len(items) and (limit is None or spent < limit):
            await RisingEdge(self.cycles.clk)
            spent += 1
            if not held and not next(self.pauses):
                self.payload.value = items[sent]
                held = True
            self.valid.value = int(held)
            await ReadOnly()
            if held and self.first_offered is None:
                self.first_offered = self.cycles.now
            if held and int(self.ready.value):
                self.taken.append(self.cycles.now)
                sent += 1
                held = False
        await RisingEdge(self.cycles.clk)
        self.valid.value = 0
        return sent


class StreamSink:
    """Take items from a valid/ready stream, ready low in the cycles ``backpressure``
    says; each item goes to ``on_item(value, cycle)``."""

    def __init__(self, cycles: Cycles, valid, ready, payload, *,
                 backpressure: Iterator[bool] | None = None):
        self.cycles, self.valid, self.ready, self.payload = cycles, valid, ready, payload
        self.backpressure = backpressure if backpressure is not None else never()
        ready.value = 0

    async def take(self, count: int, on_item, *, limit: int) -> int:
        """Take up to ``count`` items within ``limit`` cycles; return how many came. The
        stream is left not ready one cycle after the last transfer."""
        from cocotb.triggers import ReadOnly, RisingEdge
        got, spent = 0, 0
        while got < count and spent < limit:
            await RisingEdge(self.cycles.clk)
            spent += 1
            ready = not next(self.backpressure)
            self.ready.value = int(ready)
            await ReadOnly()
            if ready and int(self.valid.value):
                on_item(self.payload.value.to_unsigned(), self.cycles.now)
                got += 1
        await RisingEdge(self.cycles.clk)
        self.ready.value = 0
        return got
