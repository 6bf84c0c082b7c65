"""The accelerator core: CSR block, instruction fetch, dispatcher, units and buffers.

::

    csr (AXI4-Lite) --> control/status --start--> Engine (reset at every start)
    instr (AXI4 read) --> AxiReader --> Fetch --> dispatcher --> LOAD / MATRIX / SFU / STORE
                                                    (registers)      queues
    data<c> (AXI4) <-- AxiReader <-- LOAD unit --> ACT, WGT, OUT, KV, AUX --> MATRIX --> OUT
    (one per       <-- STORE unit <-- any buffer         ^---- SFU (when built) ----^
    memory channel)                  LOAD unit --> wstream[c] --> MATRIX (streamed engine)

Memory channels: the core has one AXI4 data port ``data<c>`` per channel of its config
(``data0`` .. ``data{C-1}``), each with a reader of its own, and a data base per channel
(``data_base[c]``, the ``DATA_BASE`` registers of :mod:`airfoil.csr`). An ``LD``/``ST`` on
channel ``c`` reaches byte ``data_base[c] + dram_addr`` through ``data<c>``; the loads of
different channels stream at the same time (see :class:`~hdl.core.load.LoadUnit`), the
STORE unit runs one ``ST`` at a time on the port of its channel.

The dispatcher runs ``SYS`` itself and sends every other instruction to its unit's queue,
with the values of the run-time registers the instruction names (``rv`` of
:data:`~hdl.core.fetch.ENTRY_LAYOUT`), so no unit reads a register. ``SYS SETREG`` writes
a register; ``SYS LDREG`` waits until every queue is empty and every unit idle, then
reads the 32-bit little-endian word at ``data_base[0] + value`` through ``data0``'s
reader (one or two memory words) and writes it to the register; writes to register 0
are dropped, so it reads 0. An instruction takes its register values when it is queued
(the ISA simulator reads them when the instruction runs): a program that rewrites a
register must not do so while a queued instruction that names it has yet to start (a
``BARRIER`` in between makes both agree).

A queue's head starts once the tokens its ``wait`` mask names are in the token FIFOs
(counters of at most :data:`airfoil.isa.TOKEN_DEPTH`); a finished instruction puts its
``release`` tokens, waiting while a FIFO is full. When the dispatcher cannot go on and
for :data:`DEADLOCK_CYCLES` cycles no unit works while one waits for a token that cannot
come (or the streamed MATRIX engine waits for stream words that no queued ``LD WSTREAM``
brings), the core stops with DEADLOCK (MALFORMED at that ``MV`` for the starved stream).
On an error (or after ``HALT``) the engine stops issuing, lets the AXI ports drain and
reports ``finished``. The dispatcher refuses a word with a reserved bit set
(:func:`airfoil.isa.reserved_bits`) as MALFORMED. ``err_pc`` names the faulting
instruction: a unit's, the dispatcher's, the ``LD`` (or ``LDREG``) that received an error
response, the oldest queue head for DEADLOCK, ``prog_count`` for PROGRAM_END.

Buffer ports: every reader has a read port of its own (copies of a RAM, see
:class:`~hdl.core.buffers.BufferRam`); units that may name any buffer (STORE, the SFU)
reach it through a router. Each buffer has one write port; the SFU's writes take it
first, then a MATRIX result held back by an SFU write, then the MATRIX unit's OUT writes,
then the LOAD unit's (a stream per channel, so it waits; the channels that write the same
buffer take turns, round robin). While a result is held the MATRIX unit
stands still: a clock enable over all its state (its accumulator memory is then an
Amaranth memory, which the enable reaches), its handshakes and its buffer reads gated.

The SFU reaches ACT, OUT, KV and AUX (byte-granular writes, :data:`airfoil.isa.SFU_BUFFERS`);
its accesses to WGT are refused by the unit as BUFFER_RANGE, as by the ISA simulator.

Counters: per unit the cycles it is busy (not idle), and the cycles in which two or more
units are busy, from start to finish.
"""

from __future__ import annotations


from amaranth.hdl import (Array, Cat, ClockDomain, ClockSignal, Const, DomainRenamer,
                          EnableInserter, Module, Mux, ResetSignal, Signal)
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from airfoil import csr as csrmap
from airfoil import isa
from airfoil.config import AccelConfig

from ..sfu.unit import SfuUnit
from .axi import axi4_signature, axi4lite_signature
from .axi_read import AxiReader
from .fabric import build_rams, connect_read_port, connect_writes
from .fetch import ENTRY_LAYOUT, Fetch
from .load import LoadUnit
from .matrix import MatrixUnit
from .matrix_front import MatrixFront
from .plan import BUFFERS, BYTE_BUFFERS, CorePlan
from .stream_mv import StreamMatrix
from .store import StoreUnit
from .tokens import TokenCounters

__all__ = ["Engine", "Core", "DEADLOCK_CYCLES", "COUNTERS"]

#: Cycles the deadlock condition must hold before the engine reports it.
DEADLOCK_CYCLES = 16

#: Engine counter outputs, in CSR order (see :data:`airfoil.csr.REGISTERS`).
COUNTERS = ("busy_load", "busy_matrix", "busy_sfu", "busy_store", "overlap")

class Engine(wiring.Component):
    """Everything of the core but the CSR block; reset by the CSR block at each start.

    Parameters
    ----------
    config : AccelConfig
    sfu : bool
        Build the SFU queue and unit (default); without it an ``SFU`` instruction is
        UNSUPPORTED.

    Members
    -------
    instr : Out(axi4_signature(read_only=True))
    data0, data1, ... : Out(axi4_signature())
        One data port per memory channel.
    data_base : In(64).array(channels)
        Each channel's data base.
    busy_load, busy_matrix, busy_sfu, busy_store, overlap : Out(32)
        The counters (cycles).
    """

    def __init__(self, config: AccelConfig, *, sfu: bool = True):
        self._plan = plan = CorePlan.of(config, sfu=sfu)
        wbits = plan.word_bits
        nch = plan.channels
        super().__init__({
            "start": In(1), "prog_base": In(64), "prog_count": In(32),
            "data_base": In(64).array(nch),
            "finished": Out(1), "error": Out(1), "err_code": Out(isa.ErrorCode),
            "err_pc": Out(32), "retired": Out(32),
            "instr": Out(axi4_signature(data_width=config.memory.instr_bits, read_only=True)),
            **{f"data{c}": Out(axi4_signature(data_width=wbits)) for c in range(nch)},
            **{name: Out(32) for name in COUNTERS},
        })

    @property
    def plan(self) -> CorePlan:
        """What this engine builds (:class:`~hdl.core.plan.CorePlan`)."""
        return self._plan

    @property
    def has_sfu(self) -> bool:
        return self._plan.has_sfu

    def elaborate(self, platform):
        m = Module()
        plan = self._plan
        cfg, geo = plan.config, plan.geometry
        mc = cfg.memory
        wbits = geo.word_bits

        # -- fetch ----------------------------------------------------------------------
        m.submodules.ireader = ird = AxiReader(data_width=mc.instr_bits, max_burst=mc.max_burst,
                                               outstanding=mc.outstanding)
        m.submodules.fetch = fetch = Fetch(word_bits=mc.instr_bits)
        m.d.comb += [fetch.start.eq(self.start), fetch.prog_base.eq(self.prog_base),
                     fetch.count.eq(self.prog_count)]
        wiring.connect(m, producer=fetch.cmd, consumer=ird.cmd)
        wiring.connect(m, producer=ird.data, consumer=fetch.beats)
        connect_read_port(m, ird, self.instr)

        # -- units ----------------------------------------------------------------------
        # With the SFU its accumulator memory must stand still with it (see the stall below).
        matrix = MatrixUnit(geometry=geo, chains=cfg.chains, lanes=cfg.lanes,
                            weight_formats=cfg.weight_formats, group_sizes=cfg.group_sizes,
                            pe=plan.pe, lut_group=cfg.lut_group, acc_memory=plan.acc_memory)
        if plan.streamed:
            # Streamed weights (LD WSTREAM, MV STREAM) through the unpacker and the sparse
            # chains, beside the WGT-tile engine.
            matrix = MatrixFront(tiles=matrix, streamed=StreamMatrix.from_config(
                cfg, aux_bytes=geo.aux_bytes, acc_depth=plan.acc_depth))
        nch = plan.channels
        ports = [getattr(self, f"data{c}") for c in range(nch)]
        readers = []
        for c in range(nch):
            rd = AxiReader(data_width=mc.word_bits, max_burst=mc.max_burst,
                           outstanding=mc.outstanding_of(c))
            m.submodules[f"dreader{c}"] = rd
            readers.append(rd)
        drd = readers[0]            # channel 0's reader also serves LDREG
        m.submodules.load = load = LoadUnit(geometry=geo, channels=nch,
                                            wstream=plan.streamed)
        m.submodules.store = store = StoreUnit(geometry=geo, channels=mc.channels,
                                               max_burst=mc.max_burst)
        sfu = None
        if plan.has_sfu:
            m.submodules.sfu = sfu = SfuUnit.of(cfg, geo)
        stall_matrix = Signal()     # a MATRIX result is held back (see the write ports)
        for c in range(nch):
            m.d.comb += [load.data_base[c].eq(self.data_base[c]),
                         store.data_base[c].eq(self.data_base[c])]
            connect_read_port(m, readers[c], ports[c])
            # The STORE unit's write channels reach the port of its ST's channel only.
            on = store.port == c
            for name in ("awaddr", "awlen", "awsize", "awburst", "wdata", "wstrb", "wlast"):
                m.d.comb += getattr(ports[c], name).eq(getattr(store, name))
            for name in ("awvalid", "wvalid", "bready"):
                m.d.comb += getattr(ports[c], name).eq(getattr(store, name) & on)
            with m.If(on):
                for name in ("awready", "wready", "bresp", "bvalid"):
                    m.d.comb += getattr(store, name).eq(getattr(ports[c], name))
        if plan.streamed:
            # One stream per channel (slice) of the streamed engine, gated by the MATRIX
            # unit's stall like its other handshakes (below).
            mws = matrix.wstream
            for c in range(plan.weight_streams):
                lws = load.wstream[c]
                m.d.comb += [mws[c].payload.eq(lws.payload),
                             mws[c].valid.eq(lws.valid & ~stall_matrix),
                             lws.ready.eq(mws[c].ready & ~stall_matrix)]

        # -- buffers: read ports ----------------------------------------------------------
        # Readers of each buffer: "direct" ports connect to a RAM read port of their own;
        # "routed" ones (a buffer read port naming any of ``buffers``) go through
        # the router of :func:`~hdl.core.fabric.route_read`, with a RAM read port of their
        # own in each buffer they may name.
        routed = [("store", store.rd, BUFFERS)]
        if sfu is not None:
            routed += [("sfu_src", sfu.src_rd, BYTE_BUFFERS),
                       ("sfu_aux", sfu.aux_rd, BYTE_BUFFERS)]
        direct = {b: [] for b in BUFFERS}
        direct[isa.Buffer.ACT].append(matrix.act_rd)
        direct[isa.Buffer.WGT] += [matrix.wgt_rd, matrix.sb_rd]
        direct[isa.Buffer.AUX] += [load.aux_rd, matrix.aux_rd]
        if sfu is not None and geo.kv_banks > 1:
            direct[isa.Buffer.KV].append(sfu.kv_rd)      # bank rows of ATT_QK and ATT_PV
        matrix_ports = [matrix.act_rd, matrix.wgt_rd, matrix.sb_rd, matrix.aux_rd]
        rams = build_rams(m, geo, direct=direct, routed=routed, gated=matrix_ports,
                          stall=stall_matrix)

        # -- buffers: write ports ---------------------------------------------------------
        # While a MATRIX result is held back by an SFU write to OUT, the unit stands still.
        m.d.comb += stall_matrix.eq(connect_writes(
            m, geo, rams, load_writes=[load.wr[c] for c in range(nch)],
            matrix_write=matrix.out_wr, sfu_write=None if sfu is None else sfu.dst_wr))
        if sfu is not None:
            # While a result is held, the MATRIX unit stands still (its handshakes are
            # gated below), so the result it presents is taken when it moves again.
            m.submodules.matrix = EnableInserter(~stall_matrix)(matrix)
        else:
            m.submodules.matrix = matrix

        units = {isa.Unit.LOAD: load, isa.Unit.MATRIX: matrix, isa.Unit.STORE: store}
        if sfu is not None:
            units[isa.Unit.SFU] = sfu
        unit_list = plan.units
        stall = {u: Const(0) for u in unit_list}
        stall[isa.Unit.MATRIX] = stall_matrix

        # -- queues and token FIFOs ------------------------------------------------------
        m.submodules.tokens = tokens = TokenCounters(units=len(isa.Unit),
                                                      depth=isa.TOKEN_DEPTH)
        queues = {}
        heads = []                  # (queue not empty, index of its head)
        push = {}
        full = {}
        blocked = []
        working = []
        # The streamed MATRIX engine (when built) reports a starved stream and its MV.
        mx = units[isa.Unit.MATRIX]
        streamed = plan.streamed
        starved = Signal()
        starved_pc = mx.starved_pc if streamed else self.retired
        qentry = Signal(ENTRY_LAYOUT)
        for u in unit_list:
            q = fifo.SyncFIFOBuffered(width=ENTRY_LAYOUT.size, depth=cfg.instr_queue_depth)
            m.submodules[f"queue_{u.name.lower()}"] = queues[u] = q
            unit = units[u]
            head = Signal(ENTRY_LAYOUT, name=f"head_{u.name.lower()}")
            m.d.comb += head.eq(q.r_data)
            heads.append((q.r_rdy, head.index))
            wait = head.instr.header.wait
            ok = Signal(name=f"tokens_ok_{u.name.lower()}")
            m.d.comb += [tokens.wait[u.value].eq(wait), ok.eq(tokens.ok[u.value])]
            m.d.comb += [unit.q.payload.eq(head),
                         unit.q.valid.eq(q.r_rdy & ok & ~self.error & ~stall[u]),
                         q.r_en.eq(unit.q.ready & unit.q.valid),
                         tokens.take[u.value].eq(unit.q.valid & unit.q.ready)]
            room = Signal(name=f"rel_room_{u.name.lower()}")
            m.d.comb += [tokens.release[u.value].eq(unit.rel.payload),
                         room.eq(tokens.room[u.value] & ~stall[u]),
                         unit.rel.ready.eq(room),
                         tokens.give[u.value].eq(unit.rel.valid & room)]
            push[u] = q.w_en
            full[u] = ~q.w_rdy
            m.d.comb += q.w_data.eq(qentry)
            rel_blocked = unit.rel.valid & ~room
            if u == isa.Unit.MATRIX and streamed:
                # A streamed MV waiting for words it is owed is blocked, not working.
                m.d.comb += starved.eq(unit.starved & ~stall[u])
                rel_blocked = rel_blocked | starved
            blocked.append((q.r_rdy & ~ok & unit.idle) | rel_blocked)
            working.append(~unit.idle & ~rel_blocked)
        all_idle = Signal()
        m.d.comb += all_idle.eq(1)
        for u in unit_list:
            # The level counts an entry still on its way to the queue's output.
            with m.If((queues[u].level != 0) | ~units[u].idle):
                m.d.comb += all_idle.eq(0)

        # -- counters ---------------------------------------------------------------------
        nbusy = Signal(range(len(unit_list) + 1))
        m.d.comb += nbusy.eq(sum((~units[u].idle).as_unsigned() for u in unit_list))
        for u in unit_list:
            ctr = getattr(self, f"busy_{u.name.lower()}")
            with m.If(~units[u].idle):
                m.d.sync += ctr.eq(ctr + 1)
        with m.If(nbusy >= 2):
            m.d.sync += self.overlap.eq(self.overlap + 1)

        # -- dispatcher -----------------------------------------------------------------
        ins = fetch.instr.payload.instr
        opcode = ins.header.opcode.as_value()
        sysop = ins.body.sys.op.as_value()
        regs = Array([Signal(32, name=f"reg{i}") for i in range(32)])
        # The registers an instruction names (see ENTRY_LAYOUT), read as it is queued.
        sel = [Signal(5, name=f"rv_sel{i}") for i in range(3)]
        with m.Switch(opcode):
            with m.Case(isa.Opcode.LD, isa.Opcode.ST):
                m.d.comb += [sel[0].eq(ins.body.mem.count_reg), sel[1].eq(ins.body.mem.row_reg)]
            with m.Case(isa.Opcode.MM, isa.Opcode.MV):
                m.d.comb += sel[0].eq(ins.body.matrix.m_reg)
            with m.Case(isa.Opcode.SFU):
                m.d.comb += [sel[0].eq(ins.body.sfu.rows_reg), sel[1].eq(ins.body.sfu.pos_reg),
                             sel[2].eq(ins.body.sfu.len_reg)]
        m.d.comb += [qentry.instr.eq(ins), qentry.index.eq(fetch.instr.payload.index)]
        for i in range(3):
            m.d.comb += qentry.rv[i].eq(regs[sel[i]])
        d_code = Signal(isa.ErrorCode)
        d_err = Signal()
        d_pc = Signal(32)
        m.d.comb += d_pc.eq(fetch.instr.payload.index)
        # A reserved bit (one no field of the header or of the opcode's body covers) set:
        # MALFORMED, as the ISA simulator's decoder refuses it.
        rsvd = Signal()
        for op in isa.Opcode:
            with m.If(opcode == op.value):
                m.d.comb += rsvd.eq((ins.as_value() & isa.reserved_bits(op)) != 0)
        stuck = Signal()
        abort = Signal()
        retired = self.retired
        taken_i = fetch.instr.valid & fetch.instr.ready
        with m.If(taken_i):
            m.d.sync += retired.eq(retired + 1)

        # LDREG: the register, the word's byte address and the words read.
        lr_reg = Signal(5)
        lr_index = Signal(32)
        lr_addr = Signal(32)
        lr_lo = Signal(wbits)
        lr_second = Signal()
        lr_cmd = Signal()
        lr_data = Signal()
        lgw = geo.lg_word_bytes
        lr_cross = lr_addr[:lgw] > geo.word_bytes - 4
        tokens = ins.header.wait | ins.header.release
        own = Signal(4)
        m.d.comb += own.eq(0)
        for op, u in isa.UNIT_OF_OPCODE.items():
            with m.If(opcode == op.value):
                m.d.comb += own.eq(1 << u.value)

        readers_idle = Signal()
        m.d.comb += readers_idle.eq(1)
        for rd in readers:
            with m.If(~rd.idle):
                m.d.comb += readers_idle.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(self.error):
                    pass
                with m.Elif(fetch.instr.valid & rsvd):
                    m.d.comb += [d_err.eq(1), d_code.eq(isa.ErrorCode.MALFORMED)]
                with m.Elif(fetch.instr.valid):
                    with m.Switch(opcode):
                        with m.Case(isa.Opcode.SYS):
                            m.d.comb += fetch.instr.ready.eq(1)
                            with m.If(tokens != 0):
                                m.d.comb += [d_err.eq(1), d_code.eq(isa.ErrorCode.MALFORMED)]
                            with m.Else():
                                with m.Switch(sysop):
                                    with m.Case(isa.SysOp.NOP):
                                        pass
                                    with m.Case(isa.SysOp.SETREG):
                                        with m.If(ins.body.sys.reg != 0):
                                            m.d.sync += regs[ins.body.sys.reg].eq(
                                                ins.body.sys.value)
                                    with m.Case(isa.SysOp.LDREG):
                                        m.d.sync += [lr_reg.eq(ins.body.sys.reg),
                                                     lr_index.eq(fetch.instr.payload.index),
                                                     lr_addr.eq(ins.body.sys.value)]
                                        m.next = "LDREG_WAIT"
                                    with m.Case(isa.SysOp.BARRIER):
                                        m.next = "BARRIER"
                                    with m.Case(isa.SysOp.HALT):
                                        m.next = "HALT"
                                    with m.Default():
                                        m.d.comb += [d_err.eq(1),
                                                     d_code.eq(isa.ErrorCode.MALFORMED)]
                        for op in (isa.Opcode.LD, isa.Opcode.MM, isa.Opcode.MV, isa.Opcode.SFU,
                                   isa.Opcode.ST):
                            u = isa.unit_of(op)
                            with m.Case(op):
                                if u not in units:
                                    m.d.comb += [d_err.eq(1),
                                                 d_code.eq(isa.ErrorCode.UNSUPPORTED)]
                                    continue
                                with m.If((tokens & own) != 0):
                                    m.d.comb += [d_err.eq(1),
                                                 d_code.eq(isa.ErrorCode.MALFORMED)]
                                with m.Else():
                                    m.d.comb += [fetch.instr.ready.eq(~full[u]),
                                                 push[u].eq(~full[u]), stuck.eq(full[u])]
                        with m.Default():
                            m.d.comb += [d_err.eq(1),
                                         d_code.eq(isa.ErrorCode.ILLEGAL_OPCODE)]
                with m.Elif(fetch.exhausted):
                    # The index of the instruction that is not there.
                    m.d.comb += [d_err.eq(1), d_code.eq(isa.ErrorCode.PROGRAM_END),
                                 d_pc.eq(self.prog_count)]
            with m.State("BARRIER"):
                m.d.comb += stuck.eq(1)
                with m.If(all_idle):
                    m.next = "RUN"
            with m.State("LDREG_WAIT"):
                m.d.comb += stuck.eq(1)
                with m.If(all_idle & drd.idle):
                    m.next = "LDREG_CMD"
            with m.State("LDREG_CMD"):
                m.d.comb += lr_cmd.eq(1)
                with m.If(drd.cmd.ready):
                    m.d.sync += lr_second.eq(0)
                    m.next = "LDREG_DATA"
            with m.State("LDREG_DATA"):
                m.d.comb += lr_data.eq(1)
                with m.If(drd.data.valid):
                    with m.If(lr_cross & ~lr_second):
                        m.d.sync += [lr_lo.eq(drd.data.payload), lr_second.eq(1)]
                    with m.Else():
                        two = Mux(lr_second, Cat(lr_lo, drd.data.payload),
                                  Cat(drd.data.payload, drd.data.payload))
                        word = (two >> (lr_addr[:lgw] * 8))[:32]
                        with m.If(lr_reg != 0):
                            m.d.sync += regs[lr_reg].eq(word)
                        m.next = "RUN"
            with m.State("HALT"):
                m.d.comb += stuck.eq(1)
                with m.If(all_idle):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += abort.eq(1)
                with m.If(ird.idle & readers_idle & store.idle):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [abort.eq(1), self.finished.eq(1)]
            # After an error the FSM stays where it is; ``drained`` (below) finishes.

        # Channel 0's reader: LOAD commands, or the LDREG read while every unit idles; the
        # other channels' readers serve the LOAD unit alone.
        lc = load.cmd[0]
        with m.If(lr_cmd):
            m.d.comb += [drd.cmd.valid.eq(1),
                         drd.cmd.payload.addr.eq(self.data_base[0] +
                                                 (lr_addr & ~Const(geo.word_bytes - 1, 32))),
                         drd.cmd.payload.beats.eq(Mux(lr_cross, 2, 1)),
                         drd.cmd.payload.rows.eq(1), drd.cmd.payload.stride.eq(0)]
        with m.Else():
            m.d.comb += [drd.cmd.valid.eq(lc.valid), drd.cmd.payload.eq(lc.payload),
                         lc.ready.eq(drd.cmd.ready)]
        m.d.comb += [load.beats[0].payload.eq(drd.data.payload),
                     load.beats[0].valid.eq(drd.data.valid & ~lr_data),
                     drd.data.ready.eq(Mux(lr_data, 1, load.beats[0].ready))]
        for c in range(1, nch):
            wiring.connect(m, producer=load.cmd[c], consumer=readers[c].cmd)
            wiring.connect(m, producer=readers[c].data, consumer=load.beats[c])

        # -- deadlock and errors ------------------------------------------------------------
        dead = Signal(range(DEADLOCK_CYCLES + 1))
        any_blocked = Signal()
        any_working = Signal()
        m.d.comb += [any_blocked.eq(0), any_working.eq(0)]
        for b in blocked:
            with m.If(b):
                m.d.comb += any_blocked.eq(1)
        for w in working:
            with m.If(w):
                m.d.comb += any_working.eq(1)
        with m.If(stuck & any_blocked & ~any_working):
            m.d.sync += dead.eq(dead + (dead != DEADLOCK_CYCLES))
        with m.Else():
            m.d.sync += dead.eq(0)

        sources = [(d_err, d_code, d_pc)]
        sources += [(units[u].err, units[u].err_code, units[u].err_pc) for u in unit_list]
        # An error response on a data port: the LD receiving it (or channel 0's LDREG).
        for c, rd in enumerate(readers):
            pc = load.rx_index[c]
            sources.append((rd.error, isa.ErrorCode.AXI_ERROR,
                            Mux(lr_data, lr_index, pc) if c == 0 else pc))
        sources.append((ird.error, isa.ErrorCode.AXI_ERROR, self.retired))
        # A deadlock with the streamed engine starved is a program whose stream loads fall
        # short of its STREAM instructions: MALFORMED at that instruction, as the ISA
        # simulator reports it ("weight stream ran out").
        # A deadlock names the oldest instruction at the head of a queue (as the ISA
        # simulator does): every queued instruction is younger than ``retired``.
        oldest = self.retired
        for ready, index in heads:
            oldest = Mux(ready & (index < oldest), index, oldest)
        sources.append((dead == DEADLOCK_CYCLES,
                        Mux(starved, isa.ErrorCode.MALFORMED, isa.ErrorCode.DEADLOCK),
                        Mux(starved, starved_pc, oldest)))
        with m.If(~self.error):
            for flag, code, pc in reversed(sources):
                with m.If(flag):
                    m.d.sync += [self.error.eq(1), self.err_code.eq(code), self.err_pc.eq(pc)]
        m.d.comb += [ird.abort.eq(abort | self.error), store.abort.eq(abort | self.error)]
        for rd in readers:
            m.d.comb += rd.abort.eq(abort | self.error)
        # After an error: wait for the AXI ports to drain, then report finished.
        drained = Signal()
        with m.If(self.error & ird.idle & readers_idle & store.idle):
            m.d.sync += drained.eq(1)
        with m.If(drained):
            m.d.comb += self.finished.eq(1)
        return m


class Core(wiring.Component):
    """The accelerator: an AXI4-Lite register block and the :class:`Engine`.

    Registers are those of :data:`airfoil.csr.REGISTERS`. Writing ``CTRL.START`` while
    idle resets the engine for one cycle and starts it; ``STATUS.DONE`` rises when it has
    finished (after ``HALT``, or after an error once its AXI ports are idle).

    Parameters
    ----------
    config : AccelConfig
    sfu : bool
        Build the SFU (see :class:`Engine`).
    reset_buffer : callable or None
        ``reset_buffer(m, rst)`` returns the engine's reset (the core's reset or a start's
        pulse, registered, which reaches nearly every flip-flop) through a buffer of the
        FPGA's clock network, built in module ``m``: a board whose router would otherwise
        carry that net in the fabric passes one (the ULX3S passes a DCCA). ``None``: the
        register's net as is.

    Members
    -------
    csr : In(axi4lite_signature())
        Register port (subordinate).
    instr : Out(axi4_signature(read_only=True))
        Instruction fetch port.
    data0, data1, ... : Out(axi4_signature())
        Data port of each memory channel (``config.memory.channels`` of them).

    The data base of channel ``c`` is the register pair of
    :func:`airfoil.csr.data_base_registers` (only those of the config's channels are
    built; the others read as 0).
    """

    def __init__(self, config: AccelConfig, *, sfu: bool = True, reset_buffer=None):
        self._plan = CorePlan.of(config, sfu=sfu)    # refuses a config it cannot build
        self._config = config
        self._sfu = bool(sfu)
        self._reset_buffer = reset_buffer
        wbits = config.memory.word_bits
        super().__init__({
            "csr": In(axi4lite_signature(addr_width=csrmap.CSR_ADDR_BITS)),
            "instr": Out(axi4_signature(data_width=config.memory.instr_bits, read_only=True)),
            **{f"data{c}": Out(axi4_signature(data_width=wbits))
               for c in range(config.memory.channels)},
        })

    @property
    def config(self) -> AccelConfig:
        return self._config

    @property
    def plan(self) -> CorePlan:
        """What this core builds (:class:`~hdl.core.plan.CorePlan`)."""
        return self._plan

    def elaborate(self, platform):
        m = Module()
        soft_rst = Signal()
        engine = Engine(self._config, sfu=self._sfu)
        # The engine runs on the same clock in a domain whose reset also pulses at every
        # start (cheaper to elaborate than ResetInserter over the whole engine). The reset
        # leaves a flip-flop (high through the core's reset and the cycle after it, and in
        # the cycle after a start's write), so that its net, or the global buffer a board
        # puts it on, starts at a register placed beside it rather than at the CSR
        # decode's logic; the engine is still reset in the cycle before its ``start``.
        m.domains.engine = ClockDomain("engine", local=True)
        engine_rst = Signal(init=1, name="engine_reset")
        m.d.sync += engine_rst.eq(soft_rst)
        if self._reset_buffer is not None:
            engine_rst = self._reset_buffer(m, engine_rst)
        m.d.comb += [ClockSignal("engine").eq(ClockSignal()),
                     ResetSignal("engine").eq(engine_rst)]
        m.submodules.engine = DomainRenamer("engine")(engine)
        wiring.connect(m, wiring.flipped(self.instr), engine.instr)
        nch = self._config.memory.channels
        for c in range(nch):
            wiring.connect(m, wiring.flipped(getattr(self, f"data{c}")),
                           getattr(engine, f"data{c}"))

        names = ["PROG_BASE_LO", "PROG_BASE_HI", "PROG_COUNT"]
        for c in range(nch):
            names += csrmap.data_base_registers(c)
        regs = {name: Signal(32, name=name.lower()) for name in names}
        busy, done = Signal(), Signal()
        cycles = Signal(64)
        kick = Signal()
        m.d.comb += [
            engine.prog_base.eq(Cat(regs["PROG_BASE_LO"], regs["PROG_BASE_HI"])),
            engine.prog_count.eq(regs["PROG_COUNT"]),
        ]
        for c in range(nch):
            lo, hi = csrmap.data_base_registers(c)
            m.d.comb += engine.data_base[c].eq(Cat(regs[lo], regs[hi]))
        m.d.sync += [kick.eq(soft_rst), engine.start.eq(kick)]
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)
            with m.If(engine.finished & ~kick & ~engine.start):
                m.d.sync += [busy.eq(0), done.eq(1)]

        status = Signal(32)
        m.d.comb += status.eq(busy | (done << 1) | ((done & engine.error) << 2) |
                              (engine.err_code.as_value() << csrmap.STATUS_ERR_CODE_SHIFT))
        ro = {
            "STATUS": status, "CYCLES_LO": cycles[:32], "CYCLES_HI": cycles[32:],
            "ERR_PC": engine.err_pc, "RETIRED": engine.retired,
            "ID": csrmap.CORE_ID | isa.ISA_VERSION,
        }
        for name, reg in csrmap.COUNTER_REGISTERS.items():
            ro[reg] = getattr(engine, name)

        # AXI4-Lite writes: take address and data together, answer OKAY.
        bus = self.csr
        m.d.comb += bus.bresp.eq(0)
        with m.If(~bus.bvalid & bus.awvalid & bus.wvalid):
            m.d.comb += [bus.awready.eq(1), bus.wready.eq(1)]
            m.d.sync += bus.bvalid.eq(1)
            addr = bus.awaddr
            for reg in csrmap.REGISTERS:
                if reg.name != "CTRL" and reg.name not in regs:
                    continue            # read-only, or a channel the core does not have
                with m.If(addr == reg.offset):
                    if reg.name == "CTRL":
                        with m.If(bus.wdata[0] & ~busy):
                            m.d.comb += soft_rst.eq(1)
                            m.d.sync += [busy.eq(1), done.eq(0), cycles.eq(0)]
                    elif reg.name in regs:
                        m.d.sync += regs[reg.name].eq(bus.wdata)
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)
        # AXI4-Lite reads.
        m.d.comb += bus.rresp.eq(0)
        with m.If(~bus.rvalid & bus.arvalid):
            m.d.comb += bus.arready.eq(1)
            m.d.sync += [bus.rvalid.eq(1), bus.rdata.eq(0)]
            for reg in csrmap.REGISTERS:
                value = regs.get(reg.name, ro.get(reg.name))
                if value is None:
                    continue
                with m.If(bus.araddr == reg.offset):
                    m.d.sync += bus.rdata.eq(value)
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        return m

