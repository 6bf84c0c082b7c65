"""A cycle-level driver, monitor and scoreboard for one stream-in / stream-out block.

Pure Python and simulator-neutral, like :mod:`sim.tb_noc.traffic`: once per cycle the
simulator hands :meth:`StreamEngine.step` the outputs that depend only on the block's
state (``in_ready``, ``out_valid``, ``out_data``, ints) and applies the inputs it returns
(``in_valid``, ``in_data``, ``out_ready``) before the clock edge; a transfer happens where
valid and ready are both high, so the engine sees every transfer without reading back.

The driver offers the input items in order, holding an offered item until it is taken
(AXI-style), and leaves a cycle idle with probability ``idle`` when nothing is pending.
The monitor stalls the output with probability ``stall`` and checks every output item,
bit for bit, against the expected list (a :class:`sim.stream_tb.Scoreboard`): nothing
lost, duplicated, reordered or changed. The idle and stall draws are the pause patterns
of :mod:`sim.stream_tb`.
"""

from __future__ import annotations

import random

from sim.stream_tb import Scoreboard, random_pauses

__all__ = ["StreamEngine"]


class StreamEngine:
    """Drive ``items`` into a block and check that exactly ``expected`` comes out.

    Parameters
    ----------
    items : list of int
        Input payloads in order.
    expected : list of int
        Output payloads expected, in order (bit-exact).
    seed : int
        Seed of the idle and stall choices.
    idle, stall : float
        Probability of an idle input cycle and of an output stall cycle (0..1).
    max_cycles : int
        The run fails if it has not finished by then.
    out_mask : int or None
        Bits of the output payload compared (all when ``None``).
    drain : int
        Cycles the output is watched for extra items after the last expected one.
    """

    def __init__(self, items, expected, *, seed: int = 0, idle: float = 0.0,
                 stall: float = 0.0, max_cycles: int = 1_000_000, out_mask=None,
                 drain: int = 8):
        self.items = [int(x) for x in items]
        self.expected = [int(x) for x in expected]
        rng = random.Random(seed)
        # One draw stream: the idle draws and the stall draws interleave as the cycles go.
        self.pauses, self.stalls = random_pauses(rng, idle), random_pauses(rng, stall)
        self.max_cycles = max_cycles
        same = None if out_mask is None else (lambda g, w: (g ^ w) & out_mask == 0)
        self.board = Scoreboard(self.expected, same=same, show=hex)
        self.cycle = 0
        self.sent = 0
        self.offer = False
        self.drain, self.drained = drain, 0
        self.accept_cycles: list[int] = []
        self.out_cycles: list[int] = []
        self.errors: list[str] = []

    @property
    def received(self) -> int:
        """Output items taken so far."""
        return self.board.received

    def _done(self) -> bool:
        return (self.sent == len(self.items) and self.received >= len(self.expected)) or \
            bool(self.errors or self.board.errors) or self.cycle >= self.max_cycles

    def step(self, in_ready: int, out_valid: int, out_data: int):
        """Run one cycle; return ``(in_valid, in_data, out_ready)`` or ``None`` at the end.

        ``in_ready``, ``out_valid`` and ``out_data`` are the block's outputs in this cycle
        (they depend only on its state); the returned inputs are applied in this cycle,
        before its clock edge. After the last expected output the engine keeps the output
        ready for ``drain`` more cycles and fails on any further output.
        """
        if self._done():
            if self.cycle >= self.max_cycles and not (self.errors or self.board.errors):
                self.errors.append(f"timeout after {self.cycle} cycles: {self.sent}/"
                                   f"{len(self.items)} items in, {self.received}/"
                                   f"{len(self.expected)} out")
            if self.errors or self.board.errors or self.drained >= self.drain:
                return None
            self.drained += 1
            if out_valid:
                self._check(int(out_data))
            self.cycle += 1
            return 0, 0, 1
        if not self.offer and self.sent < len(self.items):
            self.offer = not next(self.pauses)
        out_ready = 0 if next(self.stalls) else 1
        valid = int(self.offer)
        data = self.items[self.sent] if self.offer else 0
        if self.offer and in_ready:
            self.accept_cycles.append(self.cycle)
            self.sent += 1
            self.offer = False
        if out_valid and out_ready:
            self._check(int(out_data))
        self.cycle += 1
        return valid, data, out_ready

    def _check(self, data: int) -> None:
        self.out_cycles.append(self.cycle)
        self.board.receive(data)

    def result(self) -> dict:
        """Counters of the run: transfers, the cycles they happened in, errors."""
        acc = self.accept_cycles
        span = acc[-1] - acc[0] + 1 if acc else 0
        return {
            "cycles": self.cycle,
            "items_in": self.sent,
            "items_out": self.received,
            "first_accept": acc[0] if acc else None,
            "last_accept": acc[-1] if acc else None,
            "accept_span": span,
            "first_out": self.out_cycles[0] if self.out_cycles else None,
            "in_per_cycle": self.sent / span if span else 0.0,
            "errors": self.board.errors + self.errors,
            **{k: v for k, v in self.board.report().items()
               if k in ("lost", "corrupt", "duplicate", "reordered", "extra")},
        }
