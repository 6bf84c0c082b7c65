"""``ROPE``: :func:`airfoil.fixedpoint.rope` of every head segment of every row.

Two cycles per element pair ``(i, i + hd/2)``: ``x1`` with its cosine, then ``x2`` with
its sine; the two rotated values are written in the two cycles that follow, overlapped
with the next pair's reads.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring

from airfoil import fixedpoint as fx
from airfoil.isa import SfuFunc

from .arith import Divider, align4, divider_latency, sat, sat_addr, shift_round
from .kernel import finish_states, kernel_signature

__all__ = ["RopeKernel", "cycles", "DIV_LATENCY", "KERNELS"]

#: Cycles of the ``n / heads`` division at the start of an instruction.
DIV_LATENCY = divider_latency(20)


def cycles(args) -> int:
    """Cycles from ``start`` to ``done`` for resolved arguments ``args`` (a dict)."""
    heads = args["heads"] or 1
    hd, rem = divmod(args["n"], heads)
    if rem or hd == 0 or hd % 2 or args["rows"] == 0:
        return DIV_LATENCY + 1
    return DIV_LATENCY + args["rows"] * args["n"] + 2


class RopeKernel(wiring.Component):
    """Rotate the ``rows x heads`` segments of ``hd = n / heads`` int32, pair by pair.

    Row ``r`` uses the int16 table row at ``aux_addr + r * imm1`` (``imm1 = 0``:
    ``2 * hd`` bytes): ``hd / 2`` cosines then ``hd / 2`` sines (Q14). An ``n`` that is
    not a multiple of ``heads``, or an odd ``hd``, is MALFORMED. Takes :func:`cycles`
    cycles.
    """

    def __init__(self):
        super().__init__(kernel_signature())

    def elaborate(self, platform):
        m = Module()
        a = self.args
        m.submodules.div = div = Divider(width=20, divisor_width=10)
        heads = Mux(a.heads == 0, 1, a.heads)
        m.d.comb += [div.dividend.eq(a.n), div.divisor.eq(heads)]

        hd = Signal(20)
        half = hd >> 1
        tstride = Mux(a.imm1 == 0, hd << 1, a.imm1)
        sb = Signal(48)           # element index of the segment's first element
        j = Signal(20)
        h = Signal(10)
        r = Signal(32)
        tbase = Signal(48)
        widx = Signal(48)         # element index of the pair's x1 (written next)
        o2 = Signal(48)
        pend1 = Signal()
        pend2 = Signal()
        m.d.sync += [pend1.eq(0), pend2.eq(0)]

        taddr = Signal(48)        # byte address of the table entry read this cycle
        alane = Signal()
        m.d.sync += alane.eq(taddr[1])
        m.d.comb += self.aux.addr.eq(align4(sat_addr(taddr)))
        tv = self.aux.data.word_select(alane, 16).as_signed()
        x = self.src.data.as_signed()
        x1 = Signal.like(x)
        c = Signal.like(tv)
        y2_r = Signal(32)

        y1 = sat(shift_round(x1 * c - x * tv, fx.ROPE_FRAC), 32)
        y2 = sat(shift_round(x * c + x1 * tv, fx.ROPE_FRAC), 32)
        with m.If(pend1):
            m.d.comb += [self.dst.addr.eq(sat_addr(a.dst_addr + (widx << 2))),
                         self.dst.data.eq(y1), self.dst.en.eq(0xF)]
            m.d.sync += [y2_r.eq(y2), o2.eq(widx + half), pend2.eq(1)]
        with m.If(pend2):
            m.d.comb += [self.dst.addr.eq(sat_addr(a.dst_addr + (o2 << 2))),
                         self.dst.data.eq(y2_r), self.dst.en.eq(0xF)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.comb += div.start.eq(1)
                    m.next = "DIV"
            with m.State("DIV"):
                m.d.comb += self.busy.eq(1)
                with m.If(div.done):
                    m.d.sync += [hd.eq(div.quotient), sb.eq(0), j.eq(0), h.eq(0), r.eq(0),
                                 tbase.eq(a.aux_addr)]
                    with m.If((div.remainder != 0) | (div.quotient == 0) | div.quotient[0]):
                        m.next = "ERR"
                    with m.Elif(a.rows == 0):
                        m.next = "END"
                    with m.Else():
                        m.next = "P0"
            with m.State("P0"):
                m.d.comb += [self.busy.eq(1), self.src.en.eq(1), self.aux.en.eq(1),
                             self.src.addr.eq(sat_addr(a.src_addr + ((sb + j) << 2))),
                             taddr.eq(tbase + (j << 1))]
                m.next = "P1"
            with m.State("P1"):
                m.d.comb += [self.busy.eq(1), self.src.en.eq(1), self.aux.en.eq(1),
                             self.src.addr.eq(sat_addr(a.src_addr + ((sb + half + j) << 2))),
                             taddr.eq(tbase + hd + (j << 1))]
                m.d.sync += [x1.eq(x), c.eq(tv), widx.eq(sb + j), pend1.eq(1), j.eq(j + 1)]
                m.next = "P0"
                with m.If(j == half - 1):
                    m.d.sync += [j.eq(0), sb.eq(sb + hd), h.eq(h + 1)]
                    with m.If(h == heads - 1):
                        m.d.sync += [h.eq(0), r.eq(r + 1), tbase.eq(tbase + tstride)]
                        with m.If(r == a.rows - 1):
                            m.next = "D0"
            with m.State("D0"):
                m.d.comb += self.busy.eq(1)
                m.next = "D1"
            with m.State("D1"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1)]
                m.next = "IDLE"
            finish_states(m, self)
        return m


#: Kernel factories by function, for :class:`hdl.sfu.unit.SfuUnit`.
KERNELS = {SfuFunc.ROPE: RopeKernel}
