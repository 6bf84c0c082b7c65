"""``ROPE``: :func:`airfoil.fixedpoint.rope` of every head segment of every row.

Two cycles per chunk of pairs ``(i, i + hd/2)``: the ``x1`` with their cosines, then the
``x2`` with their sines; the rotated values are written in the two cycles that follow,
overlapped with the next chunk's reads. A chunk is ``lanes`` pairs where the rows and the
table lie on words (:func:`on_words`, as the compiler places them), else one pair in any
lane.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.utils import exact_log2

from airfoil import fixedpoint as fx
from airfoil.isa import SfuFunc

from .arith import Divider, divider_latency, sat, sat_addr, shift_round
from .kernel import ADDR_BITS, finish_states, kernel_signature, lane_count

__all__ = ["RopeKernel", "cycles", "on_words", "DIV_LATENCY", "KERNELS"]

#: Cycles of the ``n / heads`` division at the start of an instruction.
DIV_LATENCY = divider_latency(20)


def on_words(src_addr, dst_addr, aux_addr, imm1, hd, *, word_bytes: int, lanes: int):
    """Whether ``ROPE`` goes ``lanes`` pairs per two cycles: the rows (``src_addr``,
    ``dst_addr``) on buffer words of ``word_bytes``, the table rows (``aux_addr``, stride
    ``imm1``) on chunks of ``lanes`` int16, and a half head ``hd / 2`` of whole chunks.

    Ints give a bool, hardware values an expression: one rule for the kernel and
    :func:`cycles`.
    """
    tmask = 2 * lanes - 1
    return ((((src_addr | dst_addr) & (word_bytes - 1)) == 0)
            & (((aux_addr | imm1 | hd) & tmask) == 0))


def cycles(args, *, word_bytes: int = 4, lanes: int | None = None) -> int:
    """Cycles from ``start`` to ``done`` for resolved arguments ``args`` (a dict), on
    buffer words of ``word_bytes`` with chunks of ``lanes`` pairs (default: a word's
    int32)."""
    heads = args["heads"] or 1
    hd, rem = divmod(args["n"], heads)
    if rem or hd == 0 or hd % 2 or args["rows"] == 0:
        return DIV_LATENCY + 1
    lanes = word_bytes // 4 if lanes is None else lanes
    per = lanes if on_words(args["src_addr"], args["dst_addr"], args["aux_addr"],
                            args["imm1"], hd, word_bytes=word_bytes, lanes=lanes) else 1
    return DIV_LATENCY + args["rows"] * args["n"] // per + 2


class RopeKernel(wiring.Component):
    """Rotate the ``rows x heads`` segments of ``hd = n / heads`` int32, a chunk of pairs
    per two cycles.

    Row ``r`` uses the int16 table row at ``aux_addr + r * imm1`` (``imm1 = 0``:
    ``2 * hd`` bytes): ``hd / 2`` cosines then ``hd / 2`` sines (Q14). An ``n`` that is
    not a multiple of ``heads``, or an odd ``hd``, is MALFORMED. Takes :func:`cycles`
    cycles.

    Parameters
    ----------
    word_bits : int
        Width of the buffer word its ports read and write (a power of two, at least 32).
    lanes : int or None
        Pairs of a chunk, each lane with its own four products (a power of two dividing
        ``word_bits / 32``); default: a word's int32.
    """

    def __init__(self, *, word_bits: int = 32, lanes: int | None = None):
        lanes = lane_count(lanes, word_bits, "RoPE")
        self._word_bits = word_bits
        self._lanes = lanes
        super().__init__(kernel_signature(word_bits, word_bits))

    @property
    def lanes(self) -> int:
        """Pairs of a chunk."""
        return self._lanes

    def cycles(self, args) -> int:
        """See :func:`cycles`."""
        return cycles(args, word_bytes=self._word_bits // 8, lanes=self._lanes)

    def elaborate(self, platform):
        m = Module()
        a = self.args
        wb = self._word_bits // 8
        lg = exact_log2(wb)
        P = self._lanes
        chunk_lg = exact_log2(4 * P)      # bytes of a chunk of x
        m.submodules.div = div = Divider(width=20, divisor_width=10)
        heads = Mux(a.heads == 0, 1, a.heads)
        m.d.comb += [div.dividend.eq(a.n), div.divisor.eq(heads)]

        hd = Signal(20)
        half = hd >> 1
        wide = Signal()           # this instruction goes a chunk of P pairs per two cycles
        step = Mux(wide, P, 1)
        tstride = Mux(a.imm1 == 0, hd << 1, a.imm1)
        sb = Signal(48)           # element index of the segment's first element
        j = Signal(20)
        h = Signal(10)
        r = Signal(32)
        tbase = Signal(48)
        widx = Signal(48)         # element index of the chunk's first x1 (written next)
        o2 = Signal(48)
        pend1 = Signal()
        pend2 = Signal()
        m.d.sync += [pend1.eq(0), pend2.eq(0)]

        def word_of(addr):
            return Cat(Const(0, lg), addr[lg:ADDR_BITS])

        saddr = Signal(ADDR_BITS)  # byte address of the x read this cycle
        taddr = Signal(48)         # byte address of the table entry read this cycle
        s_off, t_off = Signal(lg), Signal(lg)
        m.d.sync += [s_off.eq(saddr[:lg]), t_off.eq(taddr[:lg])]
        m.d.comb += [self.src.addr.eq(word_of(saddr)),
                     self.aux.addr.eq(word_of(sat_addr(taddr)))]

        def chunk(data, off, bits):     # the chunk of ``bits`` at byte offset ``off``
            off_lg = exact_log2(bits // 8)
            return data.word_select(off[off_lg:lg], bits) if off_lg < lg else data

        x_wide = chunk(self.src.data, s_off, 32 * P)
        t_wide = chunk(self.aux.data, t_off, 16 * P)
        x_elem = chunk(self.src.data, s_off, 32)
        t_elem = chunk(self.aux.data, t_off, 16)
        y1s, y2_rs, latch = [], [], []
        for i in range(P):
            x = x_wide[32 * i:32 * i + 32]
            tv = t_wide[16 * i:16 * i + 16]
            if i == 0:
                x, tv = Mux(wide, x, x_elem), Mux(wide, tv, t_elem)
            x, tv = x.as_signed(), tv.as_signed()
            x1 = Signal.like(x, name=f"x1_{i}")
            c = Signal.like(tv, name=f"c_{i}")
            y2_r = Signal(32, name=f"y2_r{i}")
            y1 = Signal(32, name=f"y1_{i}")
            m.d.comb += y1.eq(sat(shift_round(x1 * c - x * tv, fx.ROPE_FRAC), 32))
            y2 = sat(shift_round(x * c + x1 * tv, fx.ROPE_FRAC), 32)
            with m.If(pend1):
                m.d.sync += y2_r.eq(y2)
            latch += [x1.eq(x), c.eq(tv)]     # in P1: the x1 and cosines of P0
            y1s.append(y1)
            y2_rs.append(y2_r)

        def write(index, ys):
            daddr = sat_addr(a.dst_addr + (index << 2))
            d_off = daddr[:lg]
            wide_en = (Const((1 << 4 * P) - 1, wb) << (d_off[chunk_lg:lg] * 4 * P)
                       if chunk_lg < lg else Const((1 << wb) - 1, wb))
            narrow_en = Const(0xF, wb) << (d_off[2:lg] * 4) if lg > 2 else Const(0xF, 4)
            m.d.comb += [self.dst.addr.eq(word_of(daddr)),
                         self.dst.data.eq(Mux(wide, Cat(*ys * (wb // (4 * P))),
                                              Cat(*[ys[0]] * (wb // 4)))),
                         self.dst.en.eq(Mux(wide, wide_en, narrow_en))]

        with m.If(pend1):
            write(widx, y1s)
            m.d.sync += [o2.eq(widx + half), pend2.eq(1)]
        with m.If(pend2):
            write(o2, y2_rs)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.comb += div.start.eq(1)
                    m.next = "DIV"
            with m.State("DIV"):
                m.d.comb += self.busy.eq(1)
                with m.If(div.done):
                    m.d.sync += [hd.eq(div.quotient), sb.eq(0), j.eq(0), h.eq(0), r.eq(0),
                                 tbase.eq(a.aux_addr),
                                 wide.eq(on_words(a.src_addr, a.dst_addr, a.aux_addr,
                                                  a.imm1, div.quotient, word_bytes=wb,
                                                  lanes=P))]
                    with m.If((div.remainder != 0) | (div.quotient == 0) | div.quotient[0]):
                        m.next = "ERR"
                    with m.Elif(a.rows == 0):
                        m.next = "END"
                    with m.Else():
                        m.next = "P0"
            with m.State("P0"):
                m.d.comb += [self.busy.eq(1), self.src.en.eq(1), self.aux.en.eq(1),
                             saddr.eq(sat_addr(a.src_addr + ((sb + j) << 2))),
                             taddr.eq(tbase + (j << 1))]
                m.next = "P1"
            with m.State("P1"):
                m.d.comb += [self.busy.eq(1), self.src.en.eq(1), self.aux.en.eq(1),
                             saddr.eq(sat_addr(a.src_addr + ((sb + half + j) << 2))),
                             taddr.eq(tbase + hd + (j << 1))]
                m.d.sync += latch
                m.d.sync += [widx.eq(sb + j), pend1.eq(1), j.eq(j + step)]
                m.next = "P0"
                with m.If(j == half - step):
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
