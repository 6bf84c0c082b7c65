"""The buffer fabric of the core: the buffer RAMs, their read ports and their write ports.

Read ports: every reader has a read port of its own (copies of a RAM, see
:class:`~hdl.core.buffers.BufferRam`). A *direct* reader always reads one buffer; a
*routed* one (a buffer read port that names any of several buffers: STORE, the SFU) has a
RAM read port in each buffer it may name and a router that returns the data of the one it
named (:func:`route_read`).

Write ports: each buffer has one, the WGT buffer one per bank (``buffers.wgt_banks``,
:func:`connect_wgt_writes`: an LD's words land in the bank its address names), and so
has a banked KV buffer (``buffers.kv_banks``, :func:`connect_kv_writes`). The SFU's
writes take it first, then a MATRIX result held back by an SFU write, then the MATRIX
unit's OUT writes, then the LOAD unit's (a stream per channel, so it waits; the channels
that write the same port take turns, round robin: :func:`round_robin`, :func:`grant`). While a result is held the MATRIX unit
stands still (the core gates it with the ``stall`` of :func:`connect_writes`).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Signal
from amaranth.lib import wiring

from airfoil import isa

from .buffers import BufferGeometry, BufferRam
from .plan import BUFFERS, BYTE_BUFFERS

__all__ = ["build_rams", "banked_maps", "connect_writes", "connect_kv_writes", "route_read",
           "round_robin", "load_turns", "grant", "connect_read_port"]


def build_rams(m, geo: BufferGeometry, *, direct: dict, routed: list, gated: list, stall):
    """Build one :class:`BufferRam` per buffer (submodules ``act``, ``wgt``, ...) with a
    read port for each of its readers, and return them (buffer -> RAM).

    ``direct`` maps a buffer to the read ports that read it alone; ``routed`` lists
    ``(name, port, buffers)`` of the ports that may name any of ``buffers``. The ports in
    ``gated`` (the MATRIX unit's) read nothing while ``stall`` is high: a stalled unit must
    find the data it asked for before the stall still on the port.
    """
    wbits = geo.word_bits
    rams = {}
    for b in BUFFERS:
        nread = len(direct[b]) + sum(b in bufs for _, _, bufs in routed)
        if b == isa.Buffer.WGT:
            ram = BufferRam(width=geo.wgt_bits, depth=geo.wgt_depth,
                            granularity=wbits, read_ports=nread, banks=geo.wgt_banks)
        elif b == isa.Buffer.KV and geo.kv_banks > 1:
            ram = BufferRam(width=geo.kv_banks * wbits, depth=geo.kv_map.bank_depth,
                            granularity=8, read_ports=nread, banks=geo.kv_banks)
        else:
            ram = BufferRam(width=wbits, depth=geo.nbytes(b) // geo.word_bytes,
                            granularity=8, read_ports=nread)
        m.submodules[b.name.lower()] = rams[b] = ram
        for i, port in enumerate(direct[b]):
            rp = getattr(ram, f"rd{i}")
            if port in gated:
                m.d.comb += [rp.addr.eq(port.addr), rp.en.eq(port.en & ~stall),
                             port.data.eq(rp.data)]
            else:
                wiring.connect(m, port, rp)
    maps = banked_maps(geo)
    used = {b: len(direct[b]) for b in BUFFERS}
    for name, port, bufs in routed:
        targets = {}
        for b in bufs:
            targets[b] = getattr(rams[b], f"rd{used[b]}")
            used[b] += 1
        route_read(m, name, port, targets, wbits, maps)
    return rams


def banked_maps(geo: BufferGeometry) -> dict:
    """The buffers whose RAM rows hold several words: WGT (its rows), and KV when banked
    (a word a bank), each with the map of its LD/ST word indices
    (:class:`~airfoil.wgt_banks.WgtBanks`)."""
    maps = {isa.Buffer.WGT: geo.wgt_map}
    if geo.kv_banks > 1:
        maps[isa.Buffer.KV] = geo.kv_map.word_map
    return maps


def connect_writes(m, geo: BufferGeometry, rams: dict, *, load_writes: list, matrix_write,
                   sfu_write=None):
    """Drive the write port of each buffer from its writers, in priority order: the SFU's
    ``sfu_write`` (when built), a held MATRIX result, the MATRIX unit's ``matrix_write``
    (OUT), the LOAD unit's ``load_writes`` (one stream per channel, round robin per buffer).

    A MATRIX result that meets an SFU write to OUT is held in a register and written when
    OUT is free. Return the held flag: the MATRIX unit must stand still while it is set.
    """
    nch = len(load_writes)
    sfu_hit = {b: Const(0) for b in BUFFERS}
    if sfu_write is not None:
        dw = sfu_write
        for b in BYTE_BUFFERS:
            sfu_hit[b] = Signal(name=f"sfu_wr_{b.name.lower()}")
            m.d.comb += sfu_hit[b].eq(dw.en.any() & (dw.buf == b))
    # A MATRIX result that met an SFU write to OUT waits in ``held``.
    mw = matrix_write
    m_we = Signal()
    m.d.comb += m_we.eq(mw.en.any())
    held_v = Signal()
    held_addr = Signal.like(mw.addr, name="held_addr")
    held_data = Signal.like(mw.data, name="held_data")
    held_en = Signal.like(mw.en, name="held_en")
    # The LOAD unit's writes: per buffer, the channels that write it take turns.
    lws = load_writes
    taken = [Signal(name=f"load_wr_taken{c}") for c in range(nch)]
    for b in BUFFERS:
        bname = b.name.lower()
        if b == isa.Buffer.WGT:
            connect_wgt_writes(m, geo, rams[b], lws, taken)
            continue
        if b == isa.Buffer.KV and geo.kv_banks > 1:
            connect_kv_writes(m, geo, rams[b], lws, taken, sfu_write, sfu_hit[b])
            continue
        wr = rams[b].wr
        load_hit, l_addr, l_data, load_won = load_turns(
            m, lws, lambda p, b=b: p.buf == b, f"load_wr_{bname}", taken)
        # Writers in priority order: (condition, addr, data, en, taken by LOAD).
        writers = []
        if sfu_write is not None:
            dw = sfu_write
            writers.append((sfu_hit[b], dw.addr, dw.data, dw.en, False))
        if b == isa.Buffer.OUT:
            writers += [(held_v, held_addr, held_data, held_en, False),
                        (m_we, mw.addr, mw.data, mw.en, False)]
        writers.append((load_hit, l_addr, l_data, Const(-1, len(wr.en)), True))
        for i, (cond, addr, wdata, en, is_load) in enumerate(writers):
            with (m.If if i == 0 else m.Elif)(cond):
                m.d.comb += [wr.addr.eq(addr), wr.data.eq(wdata), wr.en.eq(en)]
                if is_load:
                    m.d.comb += load_won.eq(1)
        if b == isa.Buffer.OUT:
            with m.If(held_v & ~sfu_hit[b]):
                m.d.sync += held_v.eq(0)
            with m.If(sfu_hit[b] & m_we & ~held_v):
                m.d.sync += [held_v.eq(1), held_addr.eq(mw.addr), held_data.eq(mw.data),
                             held_en.eq(mw.en)]
    for c in range(nch):
        m.d.comb += lws[c].ready.eq(taken[c])
    return held_v


def connect_wgt_writes(m, geo: BufferGeometry, ram, lws, taken):
    """Drive the WGT buffer's write ports from the LOAD unit's streams ``lws``: the word
    of an LD lands in the bank its address names (:class:`~airfoil.wgt_banks.WgtBanks`),
    and per bank the channels that write it take turns (round robin); the banks take
    their writes in the same cycle. Set ``taken[c]`` for each channel served."""
    banks = geo.wgt_map
    for k in range(banks.banks):
        wr = ram.write_port(k)
        hit, addr, data, won = load_turns(
            m, lws, lambda p, k=k: (p.buf == isa.Buffer.WGT) &
            (banks.bank(p.addr) == k if banks.banks > 1 else 1),
            "load_wr_wgt" if banks.banks == 1 else f"load_wr_wgt{k}", taken)
        m.d.comb += [wr.addr.eq(banks.bank_row(addr)),
                     wr.data.eq(data.replicate(banks.bank_words))]
        with m.If(hit):
            m.d.comb += [won.eq(1),
                         wr.en.eq(1 << banks.bank_lane(addr) if banks.bank_words > 1 else 1)]


def connect_kv_writes(m, geo: BufferGeometry, ram, lws, taken, sfu_write, sfu_hit):
    """Drive the write ports of a banked KV buffer: per bank, the SFU's write when its
    word lies in the bank, else the LOAD unit's streams whose words do (round robin), the
    banks taking their writes in the same cycle (:class:`~airfoil.kv_banks.KvBanks`).
    Set ``taken[c]`` for each channel served."""
    words = geo.kv_map.word_map
    for k in range(words.banks):
        wr = ram.write_port(k)
        hit, addr, data, won = load_turns(
            m, lws, lambda p, k=k: (p.buf == isa.Buffer.KV) & (words.bank(p.addr) == k),
            f"load_wr_kv{k}", taken)
        sfu_here = Const(0)
        if sfu_write is not None:
            sfu_here = sfu_hit & (words.bank(sfu_write.addr) == k)
        with m.If(sfu_here):
            m.d.comb += [wr.addr.eq(words.bank_row(sfu_write.addr)),
                         wr.data.eq(sfu_write.data), wr.en.eq(sfu_write.en)]
        with m.Elif(hit):
            m.d.comb += [won.eq(1), wr.addr.eq(words.bank_row(addr)), wr.data.eq(data),
                         wr.en.eq(Const(-1, len(wr.en)))]


def route_read(m, name, port, targets, word_bits, maps=None):
    """Serve a buffer read port (``buf``, word ``addr``, ``en`` -> ``data``) from one RAM
    read port per buffer; ``targets`` maps a buffer to its read port. A buffer in ``maps``
    has rows of several words, in the order its map gives them (:func:`banked_maps`,
    :mod:`airfoil.wgt_banks`). A buffer not in ``targets`` reads as 0 (its user checks
    ranges and refuses it)."""
    maps = {} if maps is None else maps
    sel = Signal(isa.Buffer, name=f"{name}_rd_buf")
    row_addr, lanes = {}, {}
    for b in targets:
        if b in maps and maps[b].row_words > 1:
            lg = (maps[b].row_words - 1).bit_length()
            addr = Signal.like(port.addr, name=f"{name}_rd_{b.name.lower()}_addr")
            m.d.comb += addr.eq(maps[b].row_major(port.addr))
            lanes[b] = Signal(lg, name=f"{name}_rd_{b.name.lower()}_lane")
            with m.If(port.en):
                m.d.sync += lanes[b].eq(addr[:lg])
            row_addr[b] = addr >> lg
        else:
            row_addr[b] = port.addr
    with m.If(port.en):
        m.d.sync += sel.eq(port.buf)
    for b, rp in targets.items():
        m.d.comb += [rp.addr.eq(row_addr[b]), rp.en.eq(port.en & (port.buf == b))]
    with m.Switch(sel):
        for b, rp in targets.items():
            with m.Case(b):
                if b in lanes:
                    m.d.comb += port.data.eq(rp.data.word_select(lanes[b], word_bits))
                else:
                    m.d.comb += port.data.eq(rp.data)


def round_robin(m, reqs, name):
    """Pick one of the requests ``reqs`` (1-bit values): the first after the last one
    granted (see :func:`grant`), wrapping around. Return ``(any, index, last)``."""
    n = len(reqs)
    sel = Signal(range(max(n, 2)), name=f"{name}_sel")
    if n == 1:
        return reqs[0], sel, None
    last = Signal(range(n), name=f"{name}_last")
    req = Signal(n, name=f"{name}_req")
    m.d.comb += req.eq(Cat(*reqs))
    # Later assignments win: the lowest request, then the lowest one above ``last``.
    for c in reversed(range(n)):
        with m.If(req[c]):
            m.d.comb += sel.eq(c)
    for c in reversed(range(1, n)):
        with m.If(req[c] & (last < c)):
            m.d.comb += sel.eq(c)
    return req.any(), sel, last


def load_turns(m, lws, match, name: str, taken):
    """The LOAD unit's streams ``lws`` whose word ``match`` (a payload -> condition) names
    one write port, taking turns (:func:`round_robin`): ``(hit, addr, data, won)``, the
    chosen stream's word and ``won``, 0 unless the caller sets it in the cycle the port
    takes that word, which then sets the stream's ``taken`` flag (:func:`grant`)."""
    hit, sel, last = round_robin(m, [lw.valid & match(lw.payload) for lw in lws], name)
    won = Signal(name=f"{name}_won")
    m.d.comb += won.eq(0)
    grant(m, won, sel, last, taken)
    return (hit, Array(lw.payload.addr for lw in lws)[sel],
            Array(lw.payload.data for lw in lws)[sel], won)


def grant(m, won, sel, last, taken):
    """The request ``sel`` of :func:`round_robin` is served when ``won``: set its
    ``taken`` flag and make it the last one granted."""
    for c, t in enumerate(taken):
        with m.If(won & (sel == c)):
            m.d.comb += t.eq(1)
    if last is not None:
        with m.If(won):
            m.d.sync += last.eq(sel)


def connect_read_port(m, reader, port):
    """Connect the read channels of an AXI4 port to an :class:`~hdl.core.axi_read.AxiReader`."""
    for name in ("araddr", "arlen", "arsize", "arburst", "arvalid", "rready"):
        m.d.comb += getattr(port, name).eq(getattr(reader, name))
    for name in ("arready", "rdata", "rresp", "rlast", "rvalid"):
        m.d.comb += getattr(reader, name).eq(getattr(port, name))
