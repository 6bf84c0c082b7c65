"""``DEQUANT_ROW``: :func:`airfoil.fixedpoint.dequant_groups` of records into ACT rows.

A record holds INT8 values and one scale pair (``imm1 = 0``), or INT4 values two a byte
and a scale pair per ``imm1`` values (:func:`airfoil.fixedpoint.dequant_record_layout`).
Per scale pair two reads fetch it (``sm``, then ``se``, whose shift is clamped to the
range where it changes the result), then one element per cycle: the read of element
``k`` (the 32-bit word holding its byte) is issued in one cycle, its product by ``sm``
registered in the next and its ACT value (the rounding shift and the saturation) written
in the one after, so the last two cycles of a group overlap the scale reads of the next
and a last cycle ends the instruction.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring

from airfoil import fixedpoint as fx
from airfoil.isa import SfuFunc

from .arith import align4, clamp, sat, sat_addr, shift_round
from .kernel import kernel_signature

__all__ = ["DequantRowKernel", "cycles", "KERNELS"]

#: Bits of a record element times its scale mantissa (``|q * sm| <= 2**23``).
_PROD_BITS = 25
#: Shifts beyond these change nothing: a right shift of 24 already rounds every product to
#: 0, a left shift of 31 already saturates every nonzero one.
_SHIFT_MIN, _SHIFT_MAX = -31, 24


def cycles(args) -> int:
    """Cycles from ``start`` to ``done`` for resolved arguments ``args`` (a dict): per
    row, two a scale pair and one a value; one more for the last value's write."""
    rows, n = args["rows"], args["n"]
    if rows == 0 or n == 0:
        return 1
    _, pairs = fx.dequant_record_layout(n, args.get("imm1", 0))
    return rows * (n + 2 * pairs) + 2


def record_stride(n, group=0):
    """Bytes from one record of ``n`` values to the next when ``imm0`` is 0."""
    return fx.dequant_record_bytes(n, group)


class DequantRowKernel(wiring.Component):
    """Compute ``DEQUANT_ROW`` over ``rows`` records of ``n`` values (row ``r`` at
    ``src_addr + r * imm0``; INT8 with its scale pair at byte ``ceil(n / 8) * 8``, or with
    ``imm1 = g`` INT4 with the pair of group ``j`` at byte ``ceil(n / 16) * 8 + 8 j``) into
    ACT rows at ``dst_addr``. Takes :func:`cycles` cycles."""

    def __init__(self):
        super().__init__(kernel_signature())

    def elaborate(self, platform):
        m = Module()
        a = self.args
        int4 = Signal()
        m.d.comb += int4.eq(a.imm1 != 0)
        scale_off = Signal(24)
        m.d.comb += scale_off.eq(Mux(int4, ((a.n + 15) >> 4) << 3, (a.n + 7) & ~7))

        rec = Signal(64)             # byte address of the record being read
        pair = Signal(64)            # byte address of the next scale pair read
        r = Signal(32)               # its row index
        k = Signal(20)               # element whose read is issued
        gk = Signal(20)              # its index within its group
        sm = Signal(16)
        shift = Signal(signed(6))
        # The element read in the previous cycle: its byte lane, nibble and whether it is one.
        lane = Signal(2)
        nibble = Signal()
        pend = Signal()
        oa = Signal(64)              # byte address of the next ACT value written
        issue = Signal()
        byte_of_k = Mux(int4, k >> 1, k)
        m.d.sync += [lane.eq(byte_of_k[:2]), nibble.eq(int4 & k[0]), pend.eq(issue)]

        byte = self.src.data.word_select(lane, 8)
        half = Mux(nibble, byte[4:], byte[:4])
        q = Mux(int4, half.as_signed(), byte.as_signed())
        # The product of the value read in the previous cycle, written in the next.
        prod = Signal(signed(_PROD_BITS))
        wpend = Signal()
        m.d.sync += [prod.eq(q * sm), wpend.eq(pend)]
        wide = Mux(shift < 0, prod << (-shift)[:5], shift_round(prod, shift[:5]))
        m.d.comb += [self.dst.addr.eq(sat_addr(oa)), self.dst.data.eq(sat(wide, 32))]
        with m.If(wpend):
            m.d.comb += self.dst.en.eq(0b1111)
            m.d.sync += oa.eq(oa + 4)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [rec.eq(a.src_addr), pair.eq(a.src_addr + scale_off),
                                 r.eq(0), k.eq(0), oa.eq(a.dst_addr)]
                    with m.If((a.rows == 0) | (a.n == 0)):
                        m.next = "END"
                    with m.Else():
                        m.next = "SM"
            with m.State("SM"):
                m.d.comb += [self.busy.eq(1), self.src.en.eq(1),
                             self.src.addr.eq(sat_addr(pair))]
                m.next = "SE"
            with m.State("SE"):
                m.d.comb += [self.busy.eq(1), self.src.en.eq(1),
                             self.src.addr.eq(sat_addr(pair + 4))]
                m.d.sync += [sm.eq(self.src.data[:16]), gk.eq(0), pair.eq(pair + 8)]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), self.src.en.eq(1), issue.eq(1),
                             self.src.addr.eq(sat_addr(align4(rec + byte_of_k)))]
                with m.If(gk == 0):          # the exponent arrives with the group's first read
                    se = self.src.data.as_signed()
                    m.d.sync += shift.eq(clamp(se - fx.ACT_FRAC, _SHIFT_MIN, _SHIFT_MAX))
                m.d.sync += [k.eq(k + 1), gk.eq(gk + 1)]
                with m.If(k == a.n - 1):
                    # Records back to back (imm0 = 0): the next starts after the last pair.
                    nxt = Mux(a.imm0 != 0, rec + a.imm0, pair)
                    m.d.sync += [rec.eq(nxt), pair.eq(nxt + scale_off), r.eq(r + 1), k.eq(0)]
                    with m.If(r == a.rows - 1):
                        m.next = "LAST"
                    with m.Else():
                        m.next = "SM"
                with m.Elif(int4 & (gk == a.imm1[:20] - 1)):
                    m.next = "SM"
            with m.State("LAST"):            # the last value's product; its write in END
                m.d.comb += self.busy.eq(1)
                m.next = "END"
            with m.State("END"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1)]
                m.next = "IDLE"
        return m


#: Kernel factories by function, for :class:`hdl.sfu.unit.SfuUnit`.
KERNELS = {SfuFunc.DEQUANT_ROW: DequantRowKernel}
