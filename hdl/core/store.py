"""The STORE unit: ``ST`` instructions, OUT buffer -> memory over AXI4 writes."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from airfoil import isa

from .axi import BOUNDARY_BYTES, BURST_INCR
from .buffers import BufferGeometry
from .load import unit_ports

__all__ = ["StoreUnit"]


class StoreUnit(wiring.Component):
    """Execute ``ST``: ``count`` rows of ``nbytes`` from the OUT buffer to memory.

    One burst at a time (address, data beats, response); stores move results, which are
    small next to the weight stream. ``abort`` is honoured between bursts, so a burst that
    started always completes and the port is left idle.

    Errors: a buffer other than OUT is UNSUPPORTED (an undefined one MALFORMED); sizes,
    addresses and counts as for ``LD``; an error response is AXI_ERROR.

    Parameters
    ----------
    geometry : BufferGeometry
    channels : int
    max_burst : int
    """

    def __init__(self, *, geometry: BufferGeometry, channels: int, max_burst: int):
        self._geo = geo = geometry
        self._channels = channels
        self._max_burst = max_burst
        wbits = geo.word_bits
        super().__init__({
            **unit_ports(),
            "data_base": In(64), "abort": In(1),
            "awaddr": Out(64), "awlen": Out(8), "awsize": Out(3), "awburst": Out(2),
            "awvalid": Out(1), "awready": In(1),
            "wdata": Out(wbits), "wstrb": Out(wbits // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "out_rd": In(memory.ReadPort.Signature(addr_width=ceil_log2(geo.out_depth),
                                                   shape=wbits)),
        })

    def elaborate(self, platform):
        m = Module()
        geo = self._geo
        wb = geo.word_bytes
        lgw = geo.lg_word_bytes

        instr = Signal(isa.INSTR_LAYOUT)
        index = Signal(32)
        mem = instr.body.mem
        buf = mem.buf.as_value()
        total = Signal(40)
        m.d.comb += total.eq(mem.count * mem.nbytes)
        misaligned = ((mem.buf_addr[:lgw] != 0) | (mem.dram_addr[:lgw] != 0) |
                      (mem.nbytes[:lgw] != 0) | (mem.dram_stride[:lgw] != 0))
        code = Signal(isa.ErrorCode)
        with m.If(buf > isa.Buffer.AUX.value):
            m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
        with m.Elif(buf != isa.Buffer.OUT.value):
            m.d.comb += code.eq(isa.ErrorCode.UNSUPPORTED)
        with m.Elif(mem.channel >= self._channels):
            m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
        with m.Elif(misaligned | (mem.count == 0) | (mem.nbytes == 0)):
            m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
        with m.Elif(mem.buf_addr + total > geo.out_bytes):
            m.d.comb += code.eq(isa.ErrorCode.BUFFER_RANGE)

        addr = Signal(64)
        row_addr = Signal(64)
        row_left = Signal(32)
        rows_left = Signal(16)
        bptr = Signal(24)
        blen = Signal(range(self._max_burst + 1))
        left = Signal(range(self._max_burst + 1))
        have = Signal()
        failed = Signal()

        to_boundary = Signal(range(BOUNDARY_BYTES // wb + 1))
        m.d.comb += to_boundary.eq((BOUNDARY_BYTES - addr[:exact_log2(BOUNDARY_BYTES)])
                                   >> lgw)
        lim = Mux(row_left < self._max_burst, row_left, self._max_burst)
        m.d.comb += [
            blen.eq(Mux(to_boundary < lim, to_boundary, lim)),
            self.awsize.eq(lgw), self.awburst.eq(BURST_INCR),
            self.wstrb.eq((1 << wb) - 1),
            self.out_rd.addr.eq(bptr >> lgw),
            self.out_rd.en.eq(~have),
            self.wdata.eq(self.out_rd.data),
            self.err.eq(failed),
        ]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.q.ready.eq(~failed), self.idle.eq(1)]
                with m.If(self.q.valid & ~failed):
                    m.d.sync += [instr.eq(self.q.payload.instr),
                                 index.eq(self.q.payload.index)]
                    m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(code != isa.ErrorCode.NONE):
                    m.d.sync += [failed.eq(1), self.err_code.eq(code), self.err_pc.eq(index)]
                    m.next = "IDLE"
                with m.Else():
                    a = self.data_base + mem.dram_addr
                    m.d.sync += [addr.eq(a), row_addr.eq(a), row_left.eq(mem.nbytes >> lgw),
                                 rows_left.eq(mem.count), bptr.eq(mem.buf_addr)]
                    m.next = "AW"
            with m.State("AW"):
                with m.If(self.abort):
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += [self.awvalid.eq(1), self.awaddr.eq(addr),
                                 self.awlen.eq(blen - 1)]
                    with m.If(self.awready):
                        m.d.sync += [left.eq(blen), have.eq(0)]
                        m.next = "W"
            with m.State("W"):
                m.d.sync += have.eq(1)
                m.d.comb += [self.wvalid.eq(have), self.wlast.eq(left == 1)]
                with m.If(have & self.wready):
                    m.d.sync += [have.eq(0), bptr.eq(bptr + wb), left.eq(left - 1)]
                    with m.If(left == 1):
                        m.next = "B"
            with m.State("B"):
                m.d.comb += self.bready.eq(1)
                with m.If(self.bvalid):
                    with m.If(self.bresp != 0):
                        m.d.sync += [failed.eq(1), self.err_code.eq(isa.ErrorCode.AXI_ERROR),
                                     self.err_pc.eq(index)]
                        m.next = "IDLE"
                    with m.Elif(blen == row_left):
                        m.d.sync += [row_addr.eq(row_addr + mem.dram_stride),
                                     addr.eq(row_addr + mem.dram_stride),
                                     row_left.eq(mem.nbytes >> lgw),
                                     rows_left.eq(rows_left - 1)]
                        with m.If(rows_left == 1):
                            m.next = "REL"
                        with m.Else():
                            m.next = "AW"
                    with m.Else():
                        m.d.sync += [addr.eq(addr + (blen << lgw)),
                                     row_left.eq(row_left - blen)]
                        m.next = "AW"
            with m.State("REL"):
                m.d.comb += [self.rel.valid.eq(1), self.rel.payload.eq(instr.header.release)]
                with m.If(self.rel.ready):
                    m.next = "IDLE"
        return m
