"""The STORE unit: ``ST`` instructions, on-chip buffer -> memory over AXI4 writes."""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from airfoil import isa

from .axi import BOUNDARY_BYTES, BURST_INCR
from .buffers import BufferGeometry, buffer_read_signature
from .load import buffer_range_bits, capped_product, mem_checks, unit_ports
from .unit_shell import UnitShell

__all__ = ["StoreUnit"]


class StoreUnit(wiring.Component):
    """Execute ``ST``: ``count`` rows of ``nbytes`` from an on-chip buffer to memory.

    One burst at a time (address, data beats, response); stores move results, which are
    small next to the weight stream. ``abort`` is honoured between bursts, so a burst whose
    address was shown always completes and the port is left idle.

    Any of ACT, WGT, OUT, KV and AUX is read through ``rd`` (a buffer read port, see
    :func:`~hdl.core.buffers.buffer_read_signature`). ``count = rv[0]`` when ``count_reg``
    is set, and the rows start at ``dram_addr + rv[1] * dram_stride`` when ``row_reg`` is
    set (``rv`` of the queue entry). Errors: see :func:`~hdl.core.load.mem_checks` (a
    gathering ``ST`` or one of WSTREAM is MALFORMED); an error response is AXI_ERROR.

    An ``ST`` on channel ``c`` writes bytes from ``data_base[c]`` through the write
    channels of that channel's port: the unit drives one set of AW/W/B signals and names
    the port in ``port`` (held from the instruction's first address to its last response;
    the core routes the handshakes of that port only).

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
            "data_base": In(64).array(channels), "abort": In(1),
            "port": Out(range(max(channels, 2))),
            "awaddr": Out(64), "awlen": Out(8), "awsize": Out(3), "awburst": Out(2),
            "awvalid": Out(1), "awready": In(1),
            "wdata": Out(wbits), "wstrb": Out(wbits // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "rd": Out(buffer_read_signature(wbits)),
        })

    def elaborate(self, platform):
        m = Module()
        geo = self._geo
        wb = geo.word_bytes
        lgw = geo.lg_word_bytes

        # Idle, check, run, release and the error latch.
        m.submodules.shell = shell = UnitShell(idle_after_error=True,
                                               leave_run_on_fault=False)
        shell.serve(m, self)
        instr = shell.entry.instr
        rv = shell.entry.rv
        mem = instr.body.mem
        count = Signal(32)
        # count * nbytes as the range check sees it, registered in the first CHECK cycle.
        total = Signal(56)
        m.d.comb += count.eq(Mux(mem.count_reg != 0, rv[0], mem.count))
        code = mem_checks(m, geo=geo, channels=self._channels, mem=mem, count=count,
                          total=total, load=False)
        base = Signal(64)

        addr = Signal(64)
        row_addr = Signal(64)
        row_left = Signal(32)
        rows_left = Signal(32)
        bptr = Signal(24)
        blen = Signal(range(self._max_burst + 1))
        left = Signal(range(self._max_burst + 1))
        have = Signal()
        aw_shown = Signal()         # AWVALID is up, waiting for AWREADY

        to_boundary = Signal(range(BOUNDARY_BYTES // wb + 1))
        m.d.comb += to_boundary.eq((BOUNDARY_BYTES - addr[:exact_log2(BOUNDARY_BYTES)])
                                   >> lgw)
        lim = Mux(row_left < self._max_burst, row_left, self._max_burst)
        m.d.comb += [
            blen.eq(Mux(to_boundary < lim, to_boundary, lim)),
            self.awsize.eq(lgw), self.awburst.eq(BURST_INCR),
            self.wstrb.eq((1 << wb) - 1),
            self.rd.buf.eq(mem.buf),
            self.rd.addr.eq(bptr >> lgw),
            self.rd.en.eq(~have),
            self.wdata.eq(self.rd.data),
        ]

        with m.If(shell.take):
            m.d.sync += self.port.eq(self.q.payload.instr.body.mem.channel)
        # The first cycle of CHECK adds the row register's offset to the address and
        # registers the size, so that no product is on the check's path.
        prep = Signal()
        m.d.sync += prep.eq(shell.take)
        with m.If(prep):
            row_off = Mux(mem.row_reg != 0, rv[1] * mem.dram_stride, 0)
            m.d.sync += [base.eq(mem.dram_addr + row_off),
                         total.eq(capped_product(count, mem.nbytes, buffer_range_bits(geo)))]
        m.d.comb += [shell.code.eq(Mux(prep, isa.ErrorCode.NONE, code)), shell.go.eq(~prep)]
        with m.If(shell.start):
            a = Array(self.data_base)[self.port] + base
            m.d.sync += [addr.eq(a), row_addr.eq(a), row_left.eq(mem.nbytes >> lgw),
                         rows_left.eq(count), bptr.eq(mem.buf_addr)]

        # The run: bursts of address, data beats and response, from AW (also where it
        # waits for the next run).
        with m.FSM():
            with m.State("AW"):
                # Once raised, AWVALID stays until AWREADY (AXI), so abort is honoured
                # only before the address is shown.
                with m.If(shell.running):
                    with m.If(self.abort & ~aw_shown):
                        m.d.comb += shell.cancel.eq(1)
                    with m.Else():
                        m.d.comb += [self.awvalid.eq(1), self.awaddr.eq(addr),
                                     self.awlen.eq(blen - 1)]
                        m.d.sync += aw_shown.eq(~self.awready)
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
                        m.d.comb += [shell.fault.eq(1),
                                     shell.fault_code.eq(isa.ErrorCode.AXI_ERROR),
                                     shell.cancel.eq(1)]
                        m.next = "AW"
                    with m.Elif(blen == row_left):
                        m.d.sync += [row_addr.eq(row_addr + mem.dram_stride),
                                     addr.eq(row_addr + mem.dram_stride),
                                     row_left.eq(mem.nbytes >> lgw),
                                     rows_left.eq(rows_left - 1)]
                        with m.If(rows_left == 1):
                            m.d.comb += shell.done.eq(1)
                        m.next = "AW"
                    with m.Else():
                        m.d.sync += [addr.eq(addr + (blen << lgw)),
                                     row_left.eq(row_left - blen)]
                        m.next = "AW"
        return m
