"""The partial-sum reduction path: a pipelined adder tree over valid/ready streams."""

from __future__ import annotations

import math
from types import SimpleNamespace

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ReduceTree"]


class ReduceTree(wiring.Component):
    """Add ``inputs`` streams of partial-sum vectors element by element.

    Each stage is a join-add register that takes one beat from both of its two inputs
    (or passes one on, for an odd count) while it is empty or being drained, so the tree
    sustains one beat per cycle and the n-th output beat is the sum of the n-th beats of
    all inputs, :attr:`latency` stages after the last of them arrived. Sums are exact
    (``elem_bits + ceil(log2(inputs))`` bits, two's complement).

    Parameters
    ----------
    inputs : int
        Streams to add (2 or more).
    lanes : int
        Partial sums per beat.
    elem_bits : int
        Width of one signed partial sum on the inputs.

    Members
    -------
    i : In(stream.Signature(ArrayLayout(signed(elem_bits), lanes))).array(inputs)
    o : Out(stream.Signature(ArrayLayout(signed(out_bits), lanes)))
    """

    def __init__(self, *, inputs: int, lanes: int, elem_bits: int):
        for what, v, lo in (("Input count", inputs, 2), ("Lane count", lanes, 1),
                            ("Element width", elem_bits, 2)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise TypeError(f"{what} must be an integer >= {lo}, not {v!r}")
        self._inputs, self._lanes, self._elem_bits = inputs, lanes, elem_bits
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(elem_bits), lanes))).array(inputs),
            "o": Out(stream.Signature(data.ArrayLayout(signed(self.out_bits), lanes))),
        })

    @property
    def latency(self) -> int:
        """Pipeline stages from the input handshake to the output valid."""
        return math.ceil(math.log2(self._inputs))

    @property
    def out_bits(self) -> int:
        return self._elem_bits + self.latency

    def elaborate(self, platform):
        m = Module()
        level = [SimpleNamespace(valid=p.valid, ready=p.ready,
                                 data=[p.payload[j] for j in range(self._lanes)])
                 for p in self.i]
        width = self._elem_bits
        for depth in range(self.latency):
            width += 1
            nxt = []
            for k in range(0, len(level), 2):
                group = level[k:k + 2]
                ov = Signal(name=f"v{depth}_{k // 2}")
                od = [Signal(signed(width), name=f"d{depth}_{k // 2}_{j}")
                      for j in range(self._lanes)]
                node = SimpleNamespace(valid=ov, ready=Signal(name=f"r{depth}_{k // 2}"),
                                       data=od)
                can = ~ov | node.ready
                all_valid = group[0].valid if len(group) == 1 else \
                    group[0].valid & group[1].valid
                fire = can & all_valid
                for g in group:
                    m.d.comb += g.ready.eq(fire)
                with m.If(fire):
                    m.d.sync += ov.eq(1)
                    for j in range(self._lanes):
                        m.d.sync += od[j].eq(sum(g.data[j] for g in group))
                with m.Elif(node.ready):
                    m.d.sync += ov.eq(0)
                nxt.append(node)
            level = nxt
        (root,) = level
        m.d.comb += [self.o.valid.eq(root.valid), root.ready.eq(self.o.ready)]
        for j in range(self._lanes):
            m.d.comb += self.o.payload[j].eq(root.data[j])
        return m
