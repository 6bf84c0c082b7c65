"""The LOAD unit: ``LD`` instructions, memory -> ACT or WGT buffer over AXI4."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from airfoil import isa

from .axi_read import read_cmd_layout
from .buffers import BufferGeometry
from .fetch import ENTRY_LAYOUT

__all__ = ["LoadUnit", "unit_ports"]


def unit_ports() -> dict:
    """Members every unit shares: its queue head, releases, error report and idle."""
    return {
        "q": In(stream.Signature(ENTRY_LAYOUT)),
        "rel": Out(stream.Signature(4)),
        "err": Out(1), "err_code": Out(isa.ErrorCode), "err_pc": Out(32),
        "idle": Out(1),
    }


class LoadUnit(wiring.Component):
    """Execute ``LD``: ``count`` rows of ``nbytes`` from memory into a buffer.

    The unit is split in two so that the reads of consecutive ``LD`` overlap: the issuer
    checks an instruction and hands one read command to the :class:`AxiReader` and one
    record to the receiver; the receiver writes the returning beats into the buffer and
    releases the instruction's tokens once its last beat is written.

    Errors: a buffer other than ACT or WGT is UNSUPPORTED (an undefined one MALFORMED);
    an address, stride or size that is not a multiple of the memory word, a zero size or
    count, or a channel beyond the config's is MALFORMED; an access past the buffer's end
    is BUFFER_RANGE. Every channel's image is one address space from the data base, so
    this instance serves all channels through its channel-0 port.

    Parameters
    ----------
    geometry : BufferGeometry
    channels : int
        Memory channels of the configuration.
    """

    def __init__(self, *, geometry: BufferGeometry, channels: int):
        self._geo = geo = geometry
        self._channels = channels
        super().__init__({
            **unit_ports(),
            "data_base": In(64),
            "cmd": Out(stream.Signature(read_cmd_layout())),
            "beats": In(stream.Signature(geo.word_bits)),
            "act_wr": In(memory.WritePort.Signature(
                addr_width=ceil_log2(geo.act_depth), shape=geo.word_bits)),
            "wgt_wr": In(memory.WritePort.Signature(
                addr_width=ceil_log2(geo.wgt_depth), shape=geo.wgt_bits,
                granularity=geo.word_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        geo = self._geo
        lgw = geo.lg_word_bytes

        # -- issuer -------------------------------------------------------------------
        instr = Signal(isa.INSTR_LAYOUT)
        index = Signal(32)
        mem = instr.body.mem
        m.submodules.inflight = inflight = _RecordFifo(depth=4)
        checking = Signal()
        failed = Signal()
        m.d.comb += self.q.ready.eq(~checking & ~failed)
        with m.If(self.q.valid & self.q.ready):
            m.d.sync += [instr.eq(self.q.payload.instr), index.eq(self.q.payload.index),
                         checking.eq(1)]

        buf = mem.buf.as_value()
        total = Signal(40)
        m.d.comb += total.eq(mem.count * mem.nbytes)
        size = Mux(buf == isa.Buffer.ACT.value, geo.act_bytes, geo.wgt_bytes)
        misaligned = ((mem.buf_addr[:lgw] != 0) | (mem.dram_addr[:lgw] != 0) |
                      (mem.nbytes[:lgw] != 0) | (mem.dram_stride[:lgw] != 0))
        code = Signal(isa.ErrorCode)
        with m.If(buf > isa.Buffer.AUX.value):
            m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
        with m.Elif((buf != isa.Buffer.ACT.value) & (buf != isa.Buffer.WGT.value)):
            m.d.comb += code.eq(isa.ErrorCode.UNSUPPORTED)
        with m.Elif(mem.channel >= self._channels):
            m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
        with m.Elif(misaligned | (mem.count == 0) | (mem.nbytes == 0)):
            m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
        with m.Elif(mem.buf_addr + total > size):
            m.d.comb += code.eq(isa.ErrorCode.BUFFER_RANGE)

        rec = inflight.w_data
        m.d.comb += [
            self.cmd.payload.addr.eq(self.data_base + mem.dram_addr),
            self.cmd.payload.beats.eq(mem.nbytes >> lgw),
            self.cmd.payload.rows.eq(mem.count),
            self.cmd.payload.stride.eq(mem.dram_stride),
            rec.wgt.eq(buf == isa.Buffer.WGT.value),
            rec.addr.eq(mem.buf_addr),
            rec.beats.eq(total >> lgw),
            rec.release.eq(instr.header.release),
            rec.index.eq(index),
        ]
        with m.If(checking):
            with m.If(code != isa.ErrorCode.NONE):
                m.d.sync += [failed.eq(1), checking.eq(0), self.err_code.eq(code),
                             self.err_pc.eq(index)]
            with m.Elif(self.cmd.ready & inflight.w_rdy):
                m.d.comb += [self.cmd.valid.eq(1), inflight.w_en.eq(1)]
                m.d.sync += checking.eq(0)
        m.d.comb += self.err.eq(failed)

        # -- receiver -----------------------------------------------------------------
        addr = Signal(24)
        left = Signal(32)
        wgt = Signal()
        release = Signal(4)
        busy = Signal()
        releasing = Signal()
        out = inflight.r_data
        m.d.comb += inflight.r_en.eq(~busy & ~releasing)
        with m.If(inflight.r_rdy & ~busy & ~releasing):
            m.d.sync += [busy.eq(1), addr.eq(out.addr), left.eq(out.beats), wgt.eq(out.wgt),
                         release.eq(out.release)]
        m.d.comb += self.beats.ready.eq(busy)
        lgr = geo.lg_wgt_row_bytes
        m.d.comb += [
            self.act_wr.addr.eq(addr >> lgw),
            self.act_wr.data.eq(self.beats.payload),
            self.wgt_wr.addr.eq(addr >> lgr),
            self.wgt_wr.data.eq(self.beats.payload.replicate(geo.wgt_words_per_row)),
        ]
        fire = self.beats.valid & self.beats.ready
        with m.If(fire):
            with m.If(wgt):
                if geo.wgt_words_per_row == 1:
                    m.d.comb += self.wgt_wr.en.eq(1)
                else:
                    m.d.comb += self.wgt_wr.en.eq(1 << addr[lgw:lgr])
            with m.Else():
                m.d.comb += self.act_wr.en.eq(1)
            m.d.sync += [addr.eq(addr + geo.word_bytes), left.eq(left - 1)]
            with m.If(left == 1):
                m.d.sync += [busy.eq(0), releasing.eq(1)]
        m.d.comb += [self.rel.valid.eq(releasing), self.rel.payload.eq(release)]
        with m.If(self.rel.valid & self.rel.ready):
            m.d.sync += releasing.eq(0)

        m.d.comb += self.idle.eq(~checking & ~inflight.r_rdy & ~busy & ~releasing)
        return m


class _RecordFifo(wiring.Component):
    """A small FIFO of issued-but-not-received LD records."""

    LAYOUT = data.StructLayout({"wgt": 1, "addr": 24, "beats": 32, "release": 4,
                                "index": 32})

    def __init__(self, *, depth):
        self._depth = depth
        super().__init__({
            "w_data": In(self.LAYOUT), "w_en": In(1), "w_rdy": Out(1),
            "r_data": Out(self.LAYOUT), "r_en": In(1), "r_rdy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.f = f = fifo.SyncFIFOBuffered(width=self.LAYOUT.size, depth=self._depth)
        m.d.comb += [f.w_data.eq(self.w_data), f.w_en.eq(self.w_en), self.w_rdy.eq(f.w_rdy),
                     self.r_data.eq(f.r_data), f.r_en.eq(self.r_en), self.r_rdy.eq(f.r_rdy)]
        return m
