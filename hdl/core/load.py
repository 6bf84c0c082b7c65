"""The LOAD unit: ``LD`` instructions, memory -> on-chip buffer (or weight stream) over AXI4."""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed
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


def buffer_range_bits(geo: BufferGeometry) -> int:
    """Bits of a byte count past the end of every buffer (``2**bits`` is beyond each)."""
    return max(geo.nbytes(b) for b in isa.Buffer).bit_length()


def capped_product(a, b, bits: int):
    """``a * b`` as a comparison with a bound under ``2**bits`` sees it, on a ``bits`` by
    ``bits`` multiplier (one MULT18X18D up to 17 bits) instead of one as wide as ``a`` and
    ``b``: their product when both are under ``2**bits``; else ``2**bits`` if neither is
    zero (the product is at least that), else 0. So ``x + capped_product(a, b, bits) >
    bound`` is ``x + a * b > bound`` for every ``x >= 0`` and ``bound < 2**bits`` (the
    range checks of a buffer, or of a memory's depth).
    """
    over = ((a >> bits) != 0) & (b != 0) | ((b >> bits) != 0) & (a != 0)
    return Mux(over, 1 << bits, a[:bits] * b[:bits])


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
    ``total`` ``count * nbytes``, or that product capped (:func:`capped_product`) at
    :func:`buffer_range_bits` bits.
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

    The unit is split so that the reads of consecutive ``LD`` overlap, on one memory
    channel and across channels: the issuer checks an instruction and hands its read
    commands to the :class:`~hdl.core.axi_read.AxiReader` of its channel (``cmd[c]``,
    addresses from ``data_base[c]``), one record to that channel's receiver and one entry
    to the release order; each channel's receiver writes the beats returning on
    ``beats[c]`` into the buffer (``wr[c]``) or sends them on ``wstream[c]``, so loads on
    different channels stream at the same time; the releaser puts the instructions' tokens
    in program order once each one's last beat is written (a later ``LD`` on a fast
    channel waits for an earlier one on a slow channel). ``LD`` on different channels may
    write their buffers in either order.

    Run-time registers come resolved in the queue entry (``rv``, see
    :data:`~hdl.core.fetch.ENTRY_LAYOUT`): ``count = rv[0]`` when ``count_reg`` is set and
    the rows start at ``dram_addr + rv[1] * dram_stride`` when ``row_reg`` is set. A
    gather (``gather = 1``) waits until every earlier transfer of the unit is written and
    released, then reads row ``r``'s int32 index from AUX at ``idx_addr + 4 r`` and issues
    that row alone from ``dram_addr + idx[r] * dram_stride``.

    The row register's offset and a gather row's offset are products by ``dram_stride``
    made on one multiplier, each from registered operands into a register: the row's
    (``rv[1]``, unsigned) in PREP, a gathered row's (its index, signed like the stride)
    once the index is read from AUX and registered, so no block-RAM read and no product
    share a cycle (a gathered row takes four cycles until its command).

    Buffer writes leave on ``wr[c]`` (streams, so the buffers may hold a write back while
    a unit with priority or another channel writes); beats of an ``LD`` into WSTREAM on
    channel ``c`` leave in order on ``wstream[c]``. Errors: see :func:`mem_checks`.

    Parameters
    ----------
    geometry : BufferGeometry
    channels : int
        Memory channels of the configuration (``C``): one command, beat, write and stream
        port each.
    wstream : bool
        Whether ``wstream`` has a consumer; without one an ``LD`` into WSTREAM is
        UNSUPPORTED.
    records : int
        Issued ``LD`` a channel's receiver may hold (its record FIFO's depth); the release
        order holds ``records * channels``.

    Members
    -------
    data_base : In(64).array(C)
        Byte address of each channel's memory.
    cmd : Out(stream.Signature(read_cmd_layout())).array(C)
        Read commands to each channel's reader.
    beats : In(stream.Signature(word_bits)).array(C)
        Their data, in order per channel.
    wr : Out(stream.Signature(buffer_write_layout(word_bits))).array(C)
        Whole-word buffer writes (word index ``addr`` of ``buf``) of each channel.
    wstream : Out(stream.Signature(word_bits)).array(C)
        The weight stream of each channel (one memory word per transfer).
    aux_rd : In(memory.ReadPort.Signature(...))
        AUX read port for gather indices.
    rx_index : Out(32).array(C)
        Index of the ``LD`` whose beats channel ``c`` is receiving (the reader passes a
        beat and its response through in the same cycle, so an error response belongs
        to this ``LD``).
    """

    def __init__(self, *, geometry: BufferGeometry, channels: int, wstream: bool = False,
                 records: int = 4):
        if not isinstance(geometry, BufferGeometry):
            raise TypeError(f"geometry must be a BufferGeometry, not {geometry!r}")
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"Channel count must be a positive integer, not {channels!r}")
        if not isinstance(records, int) or records < 1:
            raise ValueError(f"Record depth must be a positive integer, not {records!r}")
        self._geo = geo = geometry
        self._channels = channels
        self._stream = bool(wstream)
        self._records = records
        wbits = geo.word_bits
        super().__init__({
            **unit_ports(),
            "data_base": In(64).array(channels),
            "cmd": Out(stream.Signature(read_cmd_layout())).array(channels),
            "beats": In(stream.Signature(wbits)).array(channels),
            "wr": Out(stream.Signature(buffer_write_layout(wbits))).array(channels),
            "wstream": Out(stream.Signature(wbits)).array(channels),
            "aux_rd": In(memory.ReadPort.Signature(
                addr_width=ceil_log2(geo.aux_depth), shape=geo.word_bits)),
            "rx_index": Out(32).array(channels),
        })

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def has_wstream(self) -> bool:
        """Whether LD into WSTREAM is built."""
        return self._stream

    def elaborate(self, platform):
        m = Module()
        geo = self._geo
        lgw = geo.lg_word_bytes
        C = self._channels

        # -- issuer -------------------------------------------------------------------
        instr = Signal(isa.INSTR_LAYOUT)
        index = Signal(32)
        rv = Signal(data.ArrayLayout(32, 3))
        mem = instr.body.mem
        records = []
        for c in range(C):
            f = _LayoutFifo(layout=_RECORD_LAYOUT, depth=self._records)
            m.submodules[f"records{c}"] = f
            records.append(f)
        order_depth = self._records * C
        m.submodules.order = order = _LayoutFifo(layout=_order_layout(C), depth=order_depth)
        failed = Signal()
        m.d.comb += self.err.eq(failed)

        count = Signal(32)
        total = Signal(56)                  # count * nbytes, registered in PREP
        m.d.comb += count.eq(Mux(mem.count_reg != 0, rv[0], mem.count))
        base = Signal(64)                   # dram_addr with the row register's offset
        code = mem_checks(m, geo=geo, channels=C, mem=mem, count=count,
                          total=total, load=True, stream_ok=self._stream)

        # The instruction's channel (checked in range before it is used).
        chan = Signal(range(max(C, 2)))
        m.d.comb += chan.eq(mem.channel)
        chan_base = Array(self.data_base)[chan]
        cmd_ready = Array(self.cmd[c].ready for c in range(C))[chan]
        rec_rdy = Array(records[c].w_rdy for c in range(C))[chan]
        cmd_valid = Signal()
        rec_push = Signal()
        cmd_payload = Signal(read_cmd_layout())
        for c in range(C):
            m.d.comb += [self.cmd[c].valid.eq(cmd_valid & (chan == c)),
                         self.cmd[c].payload.eq(cmd_payload),
                         records[c].w_en.eq(rec_push & (chan == c)),
                         records[c].w_data.buf.eq(mem.buf),
                         records[c].w_data.addr.eq(mem.buf_addr),
                         records[c].w_data.beats.eq(total >> lgw),
                         records[c].w_data.index.eq(index)]
        m.d.comb += [order.w_en.eq(rec_push), order.w_data.chan.eq(chan),
                     order.w_data.release.eq(instr.header.release)]
        # The one product by the stride: ``factor`` is the row register's value (unsigned)
        # for the instruction's base, a gathered row's index for its row; the stride is
        # signed for the latter, as the index is.
        factor = Signal(signed(33))
        stride_signed = Signal()
        stride_product = Signal(64)
        m.d.comb += stride_product.eq(
            factor * Cat(mem.dram_stride, mem.dram_stride[-1] & stride_signed).as_signed())
        # Gather state: the row, its index word address, the instruction's first byte in
        # the channel's memory and the row's address.
        g_row = Signal(32)
        g_ia = Signal(24)
        g_base = Signal(64)
        g_addr = Signal(64)
        idx = Signal(32)
        lg_words = max(lgw - 2, 0)
        m.d.comb += self.aux_rd.addr.eq(g_ia >> lgw)
        if lg_words:
            m.d.comb += idx.eq(self.aux_rd.data.word_select(g_ia[2:lgw], 32))
        else:
            m.d.comb += idx.eq(self.aux_rd.data[:32])

        with m.FSM(name="issuer") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.q.ready.eq(~failed)
                with m.If(self.q.valid & ~failed):
                    entry = self.q.payload
                    m.d.sync += [instr.eq(entry.instr), index.eq(entry.index), rv.eq(entry.rv),
                                 factor.eq(Mux(entry.instr.body.mem.row_reg != 0,
                                               entry.rv[1], 0))]
                    m.next = "PREP"
            with m.State("PREP"):
                m.d.sync += [base.eq(mem.dram_addr + stride_product),
                             total.eq(count * mem.nbytes)]
                m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(code != isa.ErrorCode.NONE):
                    m.d.sync += [failed.eq(1), self.err_code.eq(code),
                                 self.err_pc.eq(index)]
                    m.next = "IDLE"
                with m.Elif(mem.gather):
                    m.next = "G_WAIT"
                with m.Elif(cmd_ready & rec_rdy & order.w_rdy):
                    m.d.comb += [
                        cmd_valid.eq(1), rec_push.eq(1),
                        cmd_payload.addr.eq(chan_base + base),
                        cmd_payload.beats.eq(mem.nbytes >> lgw),
                        cmd_payload.rows.eq(count),
                        cmd_payload.stride.eq(mem.dram_stride),
                    ]
                    m.next = "IDLE"
            with m.State("G_WAIT"):
                # Earlier transfers written and released, so the indices they loaded are
                # in AUX (the queues are empty, so there is room for the record).
                with m.If(order.level == 0):
                    m.d.comb += rec_push.eq(1)
                    m.d.sync += [g_row.eq(0), g_ia.eq(mem.idx_addr),
                                 g_base.eq(chan_base + base)]
                    m.next = "G_IDX"
            with m.State("G_IDX"):
                m.d.comb += self.aux_rd.en.eq(1)
                m.next = "G_INDEX"
            with m.State("G_INDEX"):
                m.d.sync += factor.eq(idx.as_signed())
                m.next = "G_ADDR"
            with m.State("G_ADDR"):
                m.d.comb += stride_signed.eq(1)
                m.d.sync += g_addr.eq(g_base + stride_product)
                m.next = "G_CMD"
            with m.State("G_CMD"):
                m.d.comb += [
                    cmd_valid.eq(1),
                    cmd_payload.addr.eq(g_addr),
                    cmd_payload.beats.eq(mem.nbytes >> lgw),
                    cmd_payload.rows.eq(1),
                    cmd_payload.stride.eq(0),
                ]
                with m.If(cmd_ready):
                    m.d.sync += [g_row.eq(g_row + 1), g_ia.eq(g_ia + 4)]
                    with m.If(g_row == count - 1):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "G_IDX"

        # -- receivers, one per channel -------------------------------------------------
        done = [Signal(range(order_depth + 1), name=f"done{c}") for c in range(C)]
        done_inc = [Signal(name=f"done_inc{c}") for c in range(C)]
        done_dec = [Signal(name=f"done_dec{c}") for c in range(C)]
        busy_any = []
        for c in range(C):
            rec, beats = records[c], self.beats[c]
            wr, ws = self.wr[c], self.wstream[c]
            addr = Signal(24, name=f"rx{c}_addr")
            left = Signal(56, name=f"rx{c}_left")
            buf = Signal(isa.Buffer, name=f"rx{c}_buf")
            busy = Signal(name=f"rx{c}_busy")
            busy_any.append(busy)
            to_stream = buf == isa.Buffer.WSTREAM
            fire = beats.valid & beats.ready
            last = fire & (left == 1)
            m.d.comb += [
                wr.payload.buf.eq(buf),
                wr.payload.addr.eq(addr >> lgw),
                wr.payload.data.eq(beats.payload),
                wr.valid.eq(busy & ~to_stream & beats.valid),
                ws.payload.eq(beats.payload),
                ws.valid.eq(busy & to_stream & beats.valid),
                beats.ready.eq(busy & Mux(to_stream, ws.ready, wr.ready)),
                done_inc[c].eq(last),
                # The next record is taken with the last beat of the current one.
                rec.r_en.eq(~busy | last),
            ]
            with m.If(fire):
                m.d.sync += [addr.eq(addr + geo.word_bytes), left.eq(left - 1)]
                with m.If(left == 1):
                    m.d.sync += busy.eq(0)
            with m.If(rec.r_rdy & (~busy | last)):
                m.d.sync += [busy.eq(1), addr.eq(rec.r_data.addr),
                             left.eq(rec.r_data.beats), buf.eq(rec.r_data.buf),
                             self.rx_index[c].eq(rec.r_data.index)]
            m.d.sync += done[c].eq(done[c] + done_inc[c] - done_dec[c])

        # -- releaser: tokens in program order ---------------------------------------------
        head = order.r_data
        head_done = Array(d != 0 for d in done)[head.chan]
        m.d.comb += [self.rel.valid.eq(order.r_rdy & head_done),
                     self.rel.payload.eq(head.release),
                     order.r_en.eq(self.rel.valid & self.rel.ready)]
        for c in range(C):
            m.d.comb += done_dec[c].eq(order.r_en & (head.chan == c))

        idle = fsm.ongoing("IDLE") & (order.level == 0)
        for busy in busy_any:
            idle = idle & ~busy
        m.d.comb += self.idle.eq(idle)
        return m


#: One channel's issued-but-not-received LD record.
_RECORD_LAYOUT = data.StructLayout({"buf": isa.Buffer, "addr": 24, "beats": 56,
                                    "index": 32})


def _order_layout(channels: int) -> data.StructLayout:
    """An issued LD not yet released, in program order: its channel and release mask."""
    return data.StructLayout({"chan": range(max(channels, 2)), "release": 4})


class _LayoutFifo(wiring.Component):
    """A small FIFO of ``layout`` entries (LD records of a channel, or the program order).

    ``level`` counts an entry from the cycle after its write, before ``r_rdy`` shows it.
    """

    def __init__(self, *, layout, depth):
        self._depth = depth
        self.layout = layout
        super().__init__({
            "w_data": In(layout), "w_en": In(1), "w_rdy": Out(1),
            "r_data": Out(layout), "r_en": In(1), "r_rdy": Out(1),
            "level": Out(range(depth + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.f = f = fifo.SyncFIFOBuffered(width=self.layout.size, depth=self._depth)
        m.d.comb += [f.w_data.eq(self.w_data), f.w_en.eq(self.w_en), self.w_rdy.eq(f.w_rdy),
                     self.r_data.eq(f.r_data), f.r_en.eq(self.r_en), self.r_rdy.eq(f.r_rdy),
                     self.level.eq(f.level)]
        return m
