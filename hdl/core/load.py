"""The LOAD unit: ``LD`` instructions, memory -> on-chip buffer (or weight stream) over AXI4."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from airfoil import isa

from .axi_read import read_cmd_layout
from .buffers import BufferGeometry, buffer_write_layout
from .fetch import ENTRY_LAYOUT

__all__ = ["LoadUnit", "unit_ports", "mem_checks"]


def unit_ports() -> dict:
    """Members every unit shares: its queue head, releases, error report and idle."""
    return {
        "q": In(stream.Signature(ENTRY_LAYOUT)),
        "rel": Out(stream.Signature(4)),
        "err": Out(1), "err_code": Out(isa.ErrorCode), "err_pc": Out(32),
        "idle": Out(1),
    }


def mem_checks(m, *, geo: BufferGeometry, channels: int, mem, count, total, load: bool,
               stream_ok: bool = False):
    """Return the :class:`~airfoil.isa.ErrorCode` of an LD/ST (``NONE`` if it may run).

    The checks and their order are those of the ISA simulator's ``_mem_op``: a channel
    beyond the config's, a zero count or size, a gathering ``ST``, an address, stride or
    size that is not a multiple of the memory word are MALFORMED; an access past the
    buffer's end is BUFFER_RANGE. For ``LD`` into WSTREAM (``load``) ``buf_addr`` must be 0
    and ``gather`` 0 (MALFORMED) and the stream must be built (``stream_ok``, else
    UNSUPPORTED); ``ST`` of WSTREAM is MALFORMED. A gather's index array beyond AUX is
    BUFFER_RANGE, and one not at a multiple of 4 bytes is UNSUPPORTED (the index words are
    read as aligned int32).

    ``mem`` is the instruction's ``MEM_LAYOUT`` view, ``count`` the resolved row count and
    ``total`` ``count * nbytes``.
    """
    lgw = geo.lg_word_bytes
    buf = mem.buf.as_value()
    size = Signal(25)
    for b in isa.Buffer:
        with m.If(buf == b.value):
            m.d.comb += size.eq(geo.nbytes(b))
    ws = buf == isa.Buffer.WSTREAM.value
    misaligned = ((mem.buf_addr[:lgw] != 0) | (mem.dram_addr[:lgw] != 0) |
                  (mem.nbytes[:lgw] != 0) | (mem.dram_stride[:lgw] != 0))
    code = Signal(isa.ErrorCode)
    with m.If(buf > isa.Buffer.WSTREAM.value):
        m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
    with m.Elif(mem.channel >= channels):
        m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
    with m.Elif((count == 0) | (mem.nbytes == 0)):
        m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
    with m.Elif(mem.gather & (not load)):
        m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
    with m.Elif(misaligned):
        m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
    with m.Elif(ws & ((not load) | mem.gather | (mem.buf_addr != 0))):
        m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
    with m.Elif(ws & (not stream_ok)):
        m.d.comb += code.eq(isa.ErrorCode.UNSUPPORTED)
    with m.Elif(~ws & (mem.buf_addr + total > size)):
        m.d.comb += code.eq(isa.ErrorCode.BUFFER_RANGE)
    with m.Elif(mem.gather & (mem.idx_addr + (count << 2) > geo.aux_bytes)):
        m.d.comb += code.eq(isa.ErrorCode.BUFFER_RANGE)
    with m.Elif(mem.gather & (mem.idx_addr[:2] != 0)):
        m.d.comb += code.eq(isa.ErrorCode.UNSUPPORTED)
    return code


class LoadUnit(wiring.Component):
    """Execute ``LD``: ``count`` rows of ``nbytes`` from memory into a buffer or the stream.

    The unit is split in two so that the reads of consecutive ``LD`` overlap: the issuer
    checks an instruction and hands read commands to the :class:`AxiReader` and one
    record to the receiver; the receiver writes the returning beats into the buffer (or
    sends them on ``wstream``) and releases the instruction's tokens once its last beat
    is written.

    Run-time registers come resolved in the queue entry (``rv``, see
    :data:`~hdl.core.fetch.ENTRY_LAYOUT`): ``count = rv[0]`` when ``count_reg`` is set and
    the rows start at ``dram_addr + rv[1] * dram_stride`` when ``row_reg`` is set. A
    gather (``gather = 1``) waits until every earlier transfer of the unit is written,
    then reads row ``r``'s int32 index from AUX at ``idx_addr + 4 r`` and issues that row
    alone from ``dram_addr + idx[r] * dram_stride``.

    Buffer writes leave on ``wr`` (a stream, so the buffers may hold a write back while a
    unit with priority writes); beats of an ``LD`` into WSTREAM leave in order on
    ``wstream``. Errors: see :func:`mem_checks`. Every channel's image is one address
    space from the data base, so this instance serves all channels through its channel-0
    port.

    Parameters
    ----------
    geometry : BufferGeometry
    channels : int
        Memory channels of the configuration.
    wstream : bool
        Whether ``wstream`` has a consumer; without one an ``LD`` into WSTREAM is
        UNSUPPORTED.

    Members
    -------
    cmd : Out(stream.Signature(read_cmd_layout()))
        Read commands to the data port's reader.
    beats : In(stream.Signature(word_bits))
        Their data, in order.
    wr : Out(stream.Signature(buffer_write_layout(word_bits)))
        Whole-word buffer writes (word index ``addr`` of ``buf``).
    wstream : Out(stream.Signature(word_bits))
        The weight stream (one memory word per transfer).
    aux_rd : In(memory.ReadPort.Signature(...))
        AUX read port for gather indices.
    """

    def __init__(self, *, geometry: BufferGeometry, channels: int, wstream: bool = False):
        if not isinstance(geometry, BufferGeometry):
            raise TypeError(f"geometry must be a BufferGeometry, not {geometry!r}")
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"Channel count must be a positive integer, not {channels!r}")
        self._geo = geo = geometry
        self._channels = channels
        self._stream = bool(wstream)
        super().__init__({
            **unit_ports(),
            "data_base": In(64),
            "cmd": Out(stream.Signature(read_cmd_layout())),
            "beats": In(stream.Signature(geo.word_bits)),
            "wr": Out(stream.Signature(buffer_write_layout(geo.word_bits))),
            "wstream": Out(stream.Signature(geo.word_bits)),
            "aux_rd": In(memory.ReadPort.Signature(
                addr_width=ceil_log2(geo.aux_depth), shape=geo.word_bits)),
        })

    @property
    def has_wstream(self) -> bool:
        """Whether LD into WSTREAM is built."""
        return self._stream

    def elaborate(self, platform):
        m = Module()
        geo = self._geo
        lgw = geo.lg_word_bytes

        # -- issuer -------------------------------------------------------------------
        instr = Signal(isa.INSTR_LAYOUT)
        index = Signal(32)
        rv = Signal(data.ArrayLayout(32, 3))
        mem = instr.body.mem
        m.submodules.inflight = inflight = _RecordFifo(depth=4)
        failed = Signal()
        m.d.comb += self.err.eq(failed)

        count = Signal(32)
        total = Signal(56)
        m.d.comb += [count.eq(Mux(mem.count_reg != 0, rv[0], mem.count)),
                     total.eq(count * mem.nbytes)]
        base = Signal(64)                   # dram_addr with the row register's offset
        code = mem_checks(m, geo=geo, channels=self._channels, mem=mem, count=count,
                          total=total, load=True, stream_ok=self._stream)

        rec = inflight.w_data
        m.d.comb += [
            rec.buf.eq(mem.buf),
            rec.addr.eq(mem.buf_addr),
            rec.beats.eq(total >> lgw),
            rec.release.eq(instr.header.release),
            rec.index.eq(index),
        ]
        # Gather state: the row, its index word address and its memory address.
        g_row = Signal(32)
        g_ia = Signal(24)
        g_addr = Signal(64)
        idx = Signal(32)
        lg_words = max(lgw - 2, 0)
        m.d.comb += self.aux_rd.addr.eq(g_ia >> lgw)
        if lg_words:
            m.d.comb += idx.eq(self.aux_rd.data.word_select(g_ia[2:lgw], 32))
        else:
            m.d.comb += idx.eq(self.aux_rd.data[:32])
        recv_idle = Signal()

        with m.FSM(name="issuer") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.q.ready.eq(~failed)
                with m.If(self.q.valid & ~failed):
                    m.d.sync += [instr.eq(self.q.payload.instr),
                                 index.eq(self.q.payload.index), rv.eq(self.q.payload.rv)]
                    m.next = "PREP"
            with m.State("PREP"):
                row_off = Mux(mem.row_reg != 0, rv[1] * mem.dram_stride, 0)
                m.d.sync += base.eq(mem.dram_addr + row_off)
                m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(code != isa.ErrorCode.NONE):
                    m.d.sync += [failed.eq(1), self.err_code.eq(code),
                                 self.err_pc.eq(index)]
                    m.next = "IDLE"
                with m.Elif(mem.gather):
                    m.next = "G_WAIT"
                with m.Elif(self.cmd.ready & inflight.w_rdy):
                    m.d.comb += [
                        self.cmd.valid.eq(1), inflight.w_en.eq(1),
                        self.cmd.payload.addr.eq(self.data_base + base),
                        self.cmd.payload.beats.eq(mem.nbytes >> lgw),
                        self.cmd.payload.rows.eq(count),
                        self.cmd.payload.stride.eq(mem.dram_stride),
                    ]
                    m.next = "IDLE"
            with m.State("G_WAIT"):
                # Earlier transfers complete, so the indices they loaded are in AUX.
                with m.If(recv_idle & (inflight.level == 0)):
                    m.d.comb += inflight.w_en.eq(1)
                    m.d.sync += [g_row.eq(0), g_ia.eq(mem.idx_addr)]
                    m.next = "G_IDX"
            with m.State("G_IDX"):
                m.d.comb += self.aux_rd.en.eq(1)
                m.next = "G_CALC"
            with m.State("G_CALC"):
                m.d.sync += g_addr.eq(self.data_base + base +
                                      idx.as_signed() * mem.dram_stride.as_signed())
                m.next = "G_CMD"
            with m.State("G_CMD"):
                m.d.comb += [
                    self.cmd.valid.eq(1),
                    self.cmd.payload.addr.eq(g_addr),
                    self.cmd.payload.beats.eq(mem.nbytes >> lgw),
                    self.cmd.payload.rows.eq(1),
                    self.cmd.payload.stride.eq(0),
                ]
                with m.If(self.cmd.ready):
                    m.d.sync += [g_row.eq(g_row + 1), g_ia.eq(g_ia + 4)]
                    with m.If(g_row == count - 1):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "G_IDX"

        # -- receiver -----------------------------------------------------------------
        addr = Signal(24)
        left = Signal(56)
        buf = Signal(isa.Buffer)
        release = Signal(4)
        busy = Signal()
        releasing = Signal()
        out = inflight.r_data
        m.d.comb += [inflight.r_en.eq(~busy & ~releasing),
                     recv_idle.eq(~busy & ~releasing)]
        with m.If(inflight.r_rdy & ~busy & ~releasing):
            m.d.sync += [busy.eq(1), addr.eq(out.addr), left.eq(out.beats), buf.eq(out.buf),
                         release.eq(out.release)]
        to_stream = buf == isa.Buffer.WSTREAM
        m.d.comb += [
            self.wr.payload.buf.eq(buf),
            self.wr.payload.addr.eq(addr >> lgw),
            self.wr.payload.data.eq(self.beats.payload),
            self.wr.valid.eq(busy & ~to_stream & self.beats.valid),
            self.wstream.payload.eq(self.beats.payload),
            self.wstream.valid.eq(busy & to_stream & self.beats.valid),
            self.beats.ready.eq(busy & Mux(to_stream, self.wstream.ready, self.wr.ready)),
        ]
        with m.If(self.beats.valid & self.beats.ready):
            m.d.sync += [addr.eq(addr + geo.word_bytes), left.eq(left - 1)]
            with m.If(left == 1):
                m.d.sync += [busy.eq(0), releasing.eq(1)]
        m.d.comb += [self.rel.valid.eq(releasing), self.rel.payload.eq(release)]
        with m.If(self.rel.valid & self.rel.ready):
            m.d.sync += releasing.eq(0)

        m.d.comb += self.idle.eq(fsm.ongoing("IDLE") & (inflight.level == 0) & ~busy &
                                 ~releasing)
        return m


class _RecordFifo(wiring.Component):
    """A small FIFO of issued-but-not-received LD records.

    ``level`` counts a record from the cycle after its write, before ``r_rdy`` shows it.
    """

    LAYOUT = data.StructLayout({"buf": isa.Buffer, "addr": 24, "beats": 56, "release": 4,
                                "index": 32})

    def __init__(self, *, depth):
        self._depth = depth
        super().__init__({
            "w_data": In(self.LAYOUT), "w_en": In(1), "w_rdy": Out(1),
            "r_data": Out(self.LAYOUT), "r_en": In(1), "r_rdy": Out(1),
            "level": Out(range(depth + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.f = f = fifo.SyncFIFOBuffered(width=self.LAYOUT.size, depth=self._depth)
        m.d.comb += [f.w_data.eq(self.w_data), f.w_en.eq(self.w_en), self.w_rdy.eq(f.w_rdy),
                     self.r_data.eq(f.r_data), f.r_en.eq(self.r_en), self.r_rdy.eq(f.r_rdy),
                     self.level.eq(f.level)]
        return m
