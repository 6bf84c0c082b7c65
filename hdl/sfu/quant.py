"""``QUANT_TOKEN``: :func:`airfoil.fixedpoint.quant_per_token` of every row segment.

Per segment two passes over its int32 elements, each a whole read-port word
(``word_bytes / 4`` elements, each lane masked to the segment) per cycle: the first finds
``amax``, then three cycles form the reciprocal (normalise and 256-entry table, then one
Newton step in two) and the scale pair, and the second writes the word's INT8 values into the
output words they fall in (the bytes spilled past one are written with the next, the last
ones by a flush); the scale pair (int32 ``sm``, int32 ``se``) follows in two writes to the
``aux`` buffer.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.utils import exact_log2

from airfoil import fixedpoint as fx
from airfoil.isa import SfuFunc

from .arith import (Divider, bit_length, clamp, divider_latency, normalize, rom, sat,
                    sat_addr, shift_round, span_words, tree, word_lanes)
from .kernel import WordKernel, finish_states, put_int32

__all__ = ["QuantTokenKernel", "cycles", "recip_table", "recip_correction", "recip_newton",
           "mantissa_expr",
           "word_amax", "DIV_LATENCY", "KERNELS"]

#: Cycles of the ``n / heads`` division at the start of an instruction.
DIV_LATENCY = divider_latency(20)


def cycles(args, *, word_bytes: int) -> int:
    """Cycles from ``start`` to ``done`` for resolved arguments ``args`` (a dict) on read
    ports of ``word_bytes``."""
    heads = args["heads"] or 1
    seg, rem = divmod(args["n"], heads)
    if rem or seg == 0 or args["rows"] == 0:
        return DIV_LATENCY + 1
    flush = 1 if word_bytes > 4 else 0         # the output bytes spilled past the last word
    return DIV_LATENCY + args["rows"] * heads * (2 * span_words(seg, word_bytes) + 8 + flush)


def recip_table(m: Module, a, name: str = "recip"):
    """First stage of :func:`airfoil.fixedpoint.recip` of unsigned ``a >= 1``.

    Returns ``(n, sh, y0)``: ``a`` normalised to 16 bits, the signed shift and the table's
    estimate (a combinational ROM read).
    """
    table = rom(m, f"{name}_rom", fx._RECIP_T.tolist())
    sh = Signal(signed(8), name=f"{name}_sh")
    m.d.comb += sh.eq(bit_length(m, a, f"{name}_bl") - 16)
    nrm = Signal(16, name=f"{name}_n")
    m.d.comb += [nrm.eq(normalize(a, sh, width=16, bits=6)), table.addr.eq(nrm[7:15])]
    return nrm, sh, table.data


def recip_correction(nrm, y0):
    """Second stage of :func:`airfoil.fixedpoint.recip`: the Newton step's correction
    ``2**32 - n * y0`` of the table's ``y0`` (a signed 36-bit value)."""
    return Const(1 << 32, signed(36)) - nrm * y0


def recip_newton(y0, corr, sh):
    """Third stage of :func:`airfoil.fixedpoint.recip`: the Newton step on the table's
    ``y0`` with its :func:`recip_correction`; returns ``(mantissa, exponent)`` (16-bit,
    unsigned 7-bit exponent)."""
    y1 = (y0 * corr) >> 31
    return clamp(y1, 1 << 15, (1 << 16) - 1)[:16], (sh + 31)[:7]


def mantissa_expr(m: Module, p, e: int, name: str):
    """Hardware :func:`airfoil.fixedpoint.scale_to_mantissa` of ``p >= 2**15``, ``e``.

    Returns ``(sm, se)``: 16-bit mantissa, signed 32-bit exponent.
    """
    bl = bit_length(m, p, f"{name}_bl")
    sh = Signal(7, name=f"{name}_sh")
    m.d.comb += sh.eq(bl - 16)
    sm0 = Signal(18, name=f"{name}_sm0")
    m.d.comb += sm0.eq(shift_round(p, sh))
    over = sm0[16]
    return (sm0 >> over)[:16], (e - sh - over)


def word_amax(m: Module, lanes, amax):
    """``max(amax, |x|)`` over the live lanes ``[(live, x)]`` of a word (a max tree)."""
    mags = []
    for i, (live, x) in enumerate(lanes):
        mag = Signal(32, name=f"abs{i}")
        m.d.comb += mag.eq(Mux(live, Mux(x < 0, -x, x)[:32], 0))
        mags.append(mag)
    return tree(lambda p, q: Mux(p > q, p, q), mags + [amax])


class QuantTokenKernel(WordKernel):
    """Quantize each of the ``rows x heads`` segments of ``n / heads`` int32 to INT8.

    Values of segment ``s`` go to ``dst_addr + s * imm0`` (``imm0 = 0``: the segment
    length), its scale pair to ``aux_addr + s * imm1`` in ``aux`` (``imm1 = 0``: 8). ``n``
    not a multiple of ``heads`` is MALFORMED. Takes :func:`cycles` cycles.

    Parameters
    ----------
    word_bits : int
        Width of the read ports (a power of two, at least 32): the buffers' word.
    """

    def __init__(self, *, word_bits: int = 32):
        super().__init__(cycles, word_bits=word_bits, word_writes=True)

    def elaborate(self, platform):
        m = Module()
        a = self.args
        wb = self._word_bytes
        lg = exact_log2(wb)
        per_word = wb // 4
        m.submodules.div = div = Divider(width=20, divisor_width=10)
        heads = Mux(a.heads == 0, 1, a.heads)
        m.d.comb += [div.dividend.eq(a.n), div.divisor.eq(heads)]

        seg = Signal(20)
        nseg = Signal(42)
        s = Signal(42)
        j = Signal(20)
        vbase = Signal(48)
        dbase = Signal(48)
        abase = Signal(48)
        dstride = Mux(a.imm0 == 0, seg, a.imm0)
        sstride = Mux(a.imm1 == 0, 8, a.imm1)

        # Pass 1: amax over word k of the segment, whose lane l holds element
        # k * per_word + l - first (first: the segment's lane in its first word).
        amax = Signal(32)
        pend_a = Signal()
        pend_q = Signal()
        m.d.sync += [pend_a.eq(0), pend_q.eq(0)]
        kwords = Signal(20)
        first = Signal(range(per_word))
        if per_word > 1:
            m.d.comb += first.eq(vbase[2:lg])
        wbase = Cat(Const(0, lg), vbase[lg:])
        k1 = Signal(20)
        with m.If(pend_a):
            m.d.sync += amax.eq(word_amax(m, word_lanes(self.src.data, k1, first, seg), amax))

        # Scale: reciprocal (table in SCALE0, Newton step in SCALE1 and SCALE2) and
        # mantissa of amax.
        amx = Signal(32)
        m.d.comb += amx.eq(Mux(amax == 0, 1, amax))
        nrm, sh, y0 = recip_table(m, amx)
        nrm_r, sh_r, y0_r = Signal.like(nrm), Signal.like(sh), Signal.like(y0)
        corr_r = Signal(signed(36))
        rm, re = recip_newton(y0_r, corr_r, sh_r)
        p2 = Signal(48)
        m.d.comb += p2.eq(amx * fx._INV127)
        sm, se = mantissa_expr(m, p2, 22 + fx.ACT_FRAC, "scale")
        k127 = Signal(23)
        re_r = Signal(7)
        sm_r = Signal(16)
        se_r = Signal(signed(32))

        # Pass 2: the words again; each lane's INT8 value (the product is registered
        # before rounding). Lane l of word k is byte v + l, v = dbase - first + k * e, of
        # the output: the bytes of a word land in the output word of v and may spill into
        # the next, which the next word's write (or a final flush) carries.
        prods, live2 = [], []
        for i, (live, x) in enumerate(word_lanes(self.src.data, k1, first, seg)):
            prod = Signal(signed(56), name=f"prod{i}")
            lv = Signal(name=f"live{i}")
            m.d.sync += [prod.eq(x * k127), lv.eq(live)]
            prods.append(prod)
            live2.append(lv)
        pend_q2 = Signal()
        k2 = Signal(20)
        m.d.sync += [pend_q2.eq(pend_q), k2.eq(k1)]
        q8s = Cat(*[sat(shift_round(p, re_r), 8)[:8] for p in prods])
        vpos = Signal(49)                  # v + wb, so never negative
        m.d.comb += vpos.eq(dbase + wb - first + (k2 << (lg - 2)))
        off = vpos[:lg]
        placed = Signal(16 * wb)
        placed_en = Signal(2 * wb)
        m.d.comb += [placed.eq(q8s << Cat(Const(0, 3), off)),
                     placed_en.eq(Cat(*live2) << off)]
        carry = Signal(8 * wb)
        carry_en = Signal(wb)
        carry_addr = Signal(49)
        low = Cat(*[Mux(carry_en[b], carry[8 * b:8 * b + 8], placed[8 * b:8 * b + 8])
                    for b in range(wb)])
        with m.If(pend_q2):
            m.d.comb += [self.dst.addr.eq(sat_addr(Cat(Const(0, lg), vpos[lg:]) - wb)),
                         self.dst.data.eq(low), self.dst.en.eq(placed_en[:wb] | carry_en)]
            m.d.sync += [carry.eq(placed[8 * wb:]), carry_en.eq(placed_en[wb:]),
                         carry_addr.eq(Cat(Const(0, lg), vpos[lg:]))]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.comb += div.start.eq(1)
                    m.next = "DIV"
            with m.State("DIV"):
                m.d.comb += self.busy.eq(1)
                with m.If(div.done):
                    m.d.sync += [seg.eq(div.quotient), nseg.eq(a.rows * heads), s.eq(0),
                                 kwords.eq(span_words(div.quotient, wb)),
                                 j.eq(0), amax.eq(0), vbase.eq(a.src_addr),
                                 dbase.eq(a.dst_addr), abase.eq(a.aux_addr)]
                    with m.If((div.remainder != 0) | (div.quotient == 0)):
                        m.next = "ERR"
                    with m.Elif(a.rows == 0):
                        m.next = "END"
                    with m.Else():
                        m.next = "A"
            with m.State("A"):
                # Words past the segment's last (at some offsets there is none) are not read.
                m.d.comb += [self.busy.eq(1),
                             self.src.addr.eq(sat_addr(wbase + (j << lg))),
                             self.src.en.eq((j << (lg - 2)) < first + seg)]
                m.d.sync += [pend_a.eq(1), k1.eq(j), j.eq(j + 1)]
                with m.If(j == kwords - 1):
                    m.d.sync += j.eq(0)
                    m.next = "A_DRAIN"
            with m.State("A_DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.next = "SCALE0"
            with m.State("SCALE0"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [nrm_r.eq(nrm), sh_r.eq(sh), y0_r.eq(y0), sm_r.eq(sm), se_r.eq(se)]
                m.next = "SCALE1"
            with m.State("SCALE1"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += corr_r.eq(recip_correction(nrm_r, y0_r))
                m.next = "SCALE2"
            with m.State("SCALE2"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [k127.eq(rm * 127), re_r.eq(re)]
                m.next = "Q"
            with m.State("Q"):
                m.d.comb += [self.busy.eq(1),
                             self.src.addr.eq(sat_addr(wbase + (j << lg))),
                             self.src.en.eq((j << (lg - 2)) < first + seg)]
                m.d.sync += [pend_q.eq(1), k1.eq(j), j.eq(j + 1)]
                with m.If(j == kwords - 1):
                    m.d.sync += j.eq(0)
                    m.next = "Q_DRAIN0"
            with m.State("Q_DRAIN0"):
                m.d.comb += self.busy.eq(1)
                m.next = "Q_DRAIN"
            with m.State("Q_DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.next = "FLUSH" if wb > 4 else "SM"
            if wb > 4:
                with m.State("FLUSH"):
                    m.d.comb += [self.busy.eq(1), self.dst.addr.eq(sat_addr(carry_addr)),
                                 self.dst.data.eq(carry), self.dst.en.eq(carry_en)]
                    m.d.sync += carry_en.eq(0)
                    m.next = "SM"
            with m.State("SM"):
                m.d.comb += [self.busy.eq(1), self.dst.aux.eq(1),
                             *put_int32(self.dst, sat_addr(abase), sm_r)]
                m.next = "SE"
            with m.State("SE"):
                m.d.comb += [self.busy.eq(1), self.dst.aux.eq(1),
                             *put_int32(self.dst, sat_addr(abase + 4), se_r)]
                m.d.sync += [s.eq(s + 1), amax.eq(0), vbase.eq(vbase + (seg << 2)),
                             dbase.eq(dbase + dstride), abase.eq(abase + sstride)]
                with m.If(s == nseg - 1):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "A"
            finish_states(m, self)
        return m


#: Kernel factories by function, for :class:`hdl.sfu.unit.SfuUnit`.
KERNELS = {SfuFunc.QUANT_TOKEN: QuantTokenKernel}
