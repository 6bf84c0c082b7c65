"""``DEQUANT_ROW``: :func:`airfoil.fixedpoint.dequant_row` of INT8 records into ACT rows.

Per record two reads fetch its scale pair (``sm``, then ``se``, whose shift is clamped to
the range where it changes the result), then one element per cycle: the read of element
``k`` (the 32-bit word holding its byte) is issued in one cycle and its ACT value written
in the next, so the last write of a record overlaps the first scale read of the next.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
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
    """Cycles from ``start`` to ``done`` for resolved arguments ``args`` (a dict)."""
    rows, n = args["rows"], args["n"]
    if rows == 0 or n == 0:
        return 1
    return rows * (n + 2) + 1


def record_stride(n):
    """Bytes from one record of ``n`` values to the next when ``imm0`` is 0: the values
    padded to 8 bytes, then the scale pair."""
    return ((n + 7) & ~7) + 8


class DequantRowKernel(wiring.Component):
    """Compute ``DEQUANT_ROW`` over ``rows`` records of ``n`` INT8 values (row ``r`` at
    ``src_addr + r * imm0``, its scale pair at byte ``ceil(n / 8) * 8`` of it) into ACT
    rows at ``dst_addr``. Takes :func:`cycles` cycles."""

    def __init__(self):
        super().__init__(kernel_signature())

    def elaborate(self, platform):
        m = Module()
        a = self.args
        stride = Signal(32)
        m.d.comb += stride.eq(Mux(a.imm0 != 0, a.imm0, record_stride(a.n)))
        scale_off = Signal(24)
        m.d.comb += scale_off.eq((a.n + 7) & ~7)

        rec = Signal(64)             # byte address of the record being read
        r = Signal(32)               # its row index
        k = Signal(20)               # element whose read is issued
        sm = Signal(16)
        shift = Signal(signed(6))
        # The element read in the previous cycle: its byte lane and whether it is one.
        lane = Signal(2)
        pend = Signal()
        oa = Signal(64)              # byte address of the next ACT value written
        issue = Signal()
        m.d.sync += [lane.eq(k[:2]), pend.eq(issue)]

        q = self.src.data.word_select(lane, 8).as_signed()
        prod = Signal(signed(_PROD_BITS))
        m.d.comb += prod.eq(q * sm)
        wide = Mux(shift < 0, prod << (-shift)[:5], shift_round(prod, shift[:5]))
        m.d.comb += [self.dst.addr.eq(sat_addr(oa)), self.dst.data.eq(sat(wide, 32))]
        with m.If(pend):
            m.d.comb += self.dst.en.eq(0b1111)
            m.d.sync += oa.eq(oa + 4)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [rec.eq(a.src_addr), r.eq(0), oa.eq(a.dst_addr)]
                    with m.If((a.rows == 0) | (a.n == 0)):
                        m.next = "END"
                    with m.Else():
                        m.next = "SM"
            with m.State("SM"):
                m.d.comb += [self.busy.eq(1), self.src.en.eq(1),
                             self.src.addr.eq(sat_addr(rec + scale_off))]
                m.next = "SE"
            with m.State("SE"):
                m.d.comb += [self.busy.eq(1), self.src.en.eq(1),
                             self.src.addr.eq(sat_addr(rec + scale_off + 4))]
                m.d.sync += [sm.eq(self.src.data[:16]), k.eq(0)]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), self.src.en.eq(1), issue.eq(1),
                             self.src.addr.eq(sat_addr(align4(rec + k)))]
                with m.If(k == 0):           # the exponent arrives with the first read
                    se = self.src.data.as_signed()
                    m.d.sync += shift.eq(clamp(se - fx.ACT_FRAC, _SHIFT_MIN, _SHIFT_MAX))
                m.d.sync += k.eq(k + 1)
                with m.If(k == a.n - 1):
                    m.d.sync += [rec.eq(rec + stride), r.eq(r + 1)]
                    with m.If(r == a.rows - 1):
                        m.next = "END"
                    with m.Else():
                        m.next = "SM"
            with m.State("END"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1)]
                m.next = "IDLE"
        return m


#: Kernel factories by function, for :class:`hdl.sfu.unit.SfuUnit`.
KERNELS = {SfuFunc.DEQUANT_ROW: DequantRowKernel}
