"""The accelerator core: CSR block, instruction fetch, dispatcher, units and buffers.

::

    csr (AXI4-Lite) --> control/status --start--> Engine (reset at every start)
    instr (AXI4 read) --> AxiReader --> Fetch --> dispatcher --> LOAD / MATRIX / STORE queues
    data0 (AXI4) <-- AxiReader <-- LOAD unit --> ACT, WGT buffers --> MATRIX unit --> OUT
                 <-- STORE unit <-- OUT buffer

The dispatcher runs ``SYS`` itself and sends every other instruction to its unit's queue;
a queue's head starts once the tokens its ``wait`` mask names are in the token FIFOs
(counters of at most :data:`airfoil.isa.TOKEN_DEPTH`); a finished instruction puts its
``release`` tokens, waiting while a FIFO is full. On an error (or after ``HALT``) the
engine stops issuing, lets the AXI ports drain and reports ``finished``.
"""

from __future__ import annotations

from amaranth.hdl import (Cat, ClockDomain, ClockSignal, DomainRenamer, Module,
                          ResetSignal, Signal)
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from airfoil import csr as csrmap
from airfoil import isa
from airfoil.config import AccelConfig

from .axi import axi4_signature, axi4lite_signature
from .axi_read import AxiReader
from .buffers import BufferGeometry
from .fetch import ENTRY_LAYOUT, Fetch
from .load import LoadUnit
from .matrix import MatrixUnit
from .ram import Ram
from .store import StoreUnit

__all__ = ["Engine", "Core", "DEADLOCK_CYCLES"]

#: Cycles the deadlock condition must hold before the engine reports it.
DEADLOCK_CYCLES = 16

_UNITS = (isa.Unit.LOAD, isa.Unit.MATRIX, isa.Unit.STORE)


class Engine(wiring.Component):
    """Everything of the core but the CSR block; reset by the CSR block at each start.

    Parameters
    ----------
    config : AccelConfig
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, not {config!r}")
        self._config = config
        self._geo = BufferGeometry.of(config)
        wbits = config.memory.word_bits
        super().__init__({
            "start": In(1), "prog_base": In(64), "prog_count": In(32), "data_base": In(64),
            "finished": Out(1), "error": Out(1), "err_code": Out(isa.ErrorCode),
            "err_pc": Out(32), "retired": Out(32),
            "instr": Out(axi4_signature(data_width=wbits, read_only=True)),
            "data0": Out(axi4_signature(data_width=wbits)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, geo = self._config, self._geo
        mc = cfg.memory

        # -- buffers --------------------------------------------------------------------
        m.submodules.act = act = Ram(width=geo.word_bits, depth=geo.act_depth)
        m.submodules.wgt = wgt = Ram(width=geo.wgt_bits, depth=geo.wgt_depth,
                                     granularity=geo.word_bits, read_ports=2)
        m.submodules.out = out = Ram(width=geo.word_bits, depth=geo.out_depth, granularity=8)

        # -- fetch ----------------------------------------------------------------------
        m.submodules.ireader = ird = AxiReader(data_width=mc.word_bits, max_burst=mc.max_burst,
                                               outstanding=mc.outstanding)
        m.submodules.fetch = fetch = Fetch(word_bits=mc.word_bits)
        m.d.comb += [fetch.start.eq(self.start), fetch.prog_base.eq(self.prog_base),
                     fetch.count.eq(self.prog_count)]
        wiring.connect(m, producer=fetch.cmd, consumer=ird.cmd)
        wiring.connect(m, producer=ird.data, consumer=fetch.beats)
        _connect_read(m, ird, self.instr)

        # -- units ----------------------------------------------------------------------
        m.submodules.dreader = drd = AxiReader(data_width=mc.word_bits, max_burst=mc.max_burst,
                                               outstanding=mc.outstanding)
        m.submodules.load = load = LoadUnit(geometry=geo, channels=mc.channels)
        m.submodules.matrix = matrix = MatrixUnit(
            geometry=geo, chains=cfg.chains, lanes=cfg.lanes,
            weight_formats=cfg.weight_formats, group_sizes=cfg.group_sizes)
        m.submodules.store = store = StoreUnit(geometry=geo, channels=mc.channels,
                                               max_burst=mc.max_burst)
        m.d.comb += [load.data_base.eq(self.data_base), store.data_base.eq(self.data_base)]
        wiring.connect(m, producer=load.cmd, consumer=drd.cmd)
        wiring.connect(m, producer=drd.data, consumer=load.beats)
        _connect_read(m, drd, self.data0)
        for name in ("awaddr", "awlen", "awsize", "awburst", "awvalid", "wdata", "wstrb",
                     "wlast", "wvalid", "bready"):
            m.d.comb += getattr(self.data0, name).eq(getattr(store, name))
        for name in ("awready", "wready", "bresp", "bvalid"):
            m.d.comb += getattr(store, name).eq(getattr(self.data0, name))
        wiring.connect(m, load.act_wr, act.wr)
        wiring.connect(m, load.wgt_wr, wgt.wr)
        wiring.connect(m, matrix.wgt_rd, wgt.rd0)
        wiring.connect(m, matrix.sb_rd, wgt.rd1)
        wiring.connect(m, matrix.act_rd, act.rd0)
        wiring.connect(m, matrix.out_wr, out.wr)
        wiring.connect(m, store.out_rd, out.rd0)
        units = {isa.Unit.LOAD: load, isa.Unit.MATRIX: matrix, isa.Unit.STORE: store}

        # -- queues and token FIFOs ------------------------------------------------------
        depth = isa.TOKEN_DEPTH
        cnt = [[Signal(range(depth + 1), name=f"tok_{s.name}_{d.name}") for d in isa.Unit]
               for s in isa.Unit]
        inc = [[Signal(name=f"inc_{s.name}_{d.name}") for d in isa.Unit] for s in isa.Unit]
        dec = [[Signal(name=f"dec_{s.name}_{d.name}") for d in isa.Unit] for s in isa.Unit]
        for s in range(4):
            for d in range(4):
                m.d.sync += cnt[s][d].eq(cnt[s][d] + inc[s][d] - dec[s][d])
        queues = {}
        push = {}
        full = {}
        blocked = []
        working = []
        for u in _UNITS:
            q = fifo.SyncFIFOBuffered(width=ENTRY_LAYOUT.size, depth=cfg.instr_queue_depth)
            m.submodules[f"queue_{u.name.lower()}"] = queues[u] = q
            unit = units[u]
            head = Signal(ENTRY_LAYOUT, name=f"head_{u.name.lower()}")
            m.d.comb += head.eq(q.r_data)
            wait = head.instr.header.wait
            ok = Signal(name=f"tokens_ok_{u.name.lower()}")
            m.d.comb += ok.eq(1)
            for s in isa.Unit:
                with m.If(wait[s.value] & (cnt[s.value][u.value] == 0)):
                    m.d.comb += ok.eq(0)
            m.d.comb += [unit.q.payload.eq(head), unit.q.valid.eq(q.r_rdy & ok & ~self.error),
                         q.r_en.eq(unit.q.ready & unit.q.valid)]
            with m.If(unit.q.valid & unit.q.ready):
                for s in isa.Unit:
                    m.d.comb += dec[s.value][u.value].eq(wait[s.value])
            rel = unit.rel.payload
            room = Signal(name=f"rel_room_{u.name.lower()}")
            m.d.comb += room.eq(1)
            for d in isa.Unit:
                with m.If(rel[d.value] & (cnt[u.value][d.value] == depth)):
                    m.d.comb += room.eq(0)
            m.d.comb += unit.rel.ready.eq(room)
            with m.If(unit.rel.valid & room):
                for d in isa.Unit:
                    m.d.comb += inc[u.value][d.value].eq(rel[d.value])
            push[u] = q.w_en
            full[u] = ~q.w_rdy
            m.d.comb += q.w_data.eq(fetch.instr.payload)
            rel_blocked = unit.rel.valid & ~room
            blocked.append((q.r_rdy & ~ok & unit.idle) | rel_blocked)
            working.append(~unit.idle & ~rel_blocked)
        all_idle = Signal()
        m.d.comb += all_idle.eq(1)
        for u in _UNITS:
            with m.If(queues[u].r_rdy | ~units[u].idle):
                m.d.comb += all_idle.eq(0)

        # -- dispatcher -----------------------------------------------------------------
        ins = fetch.instr.payload.instr
        opcode = ins.header.opcode.as_value()
        sysop = ins.body.sys.op.as_value()
        d_code = Signal(isa.ErrorCode)
        d_err = Signal()
        stuck = Signal()
        abort = Signal()
        retired = self.retired
        taken = fetch.instr.valid & fetch.instr.ready
        with m.If(taken):
            m.d.sync += retired.eq(retired + 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(self.error):
                    pass
                with m.Elif(fetch.instr.valid):
                    with m.Switch(opcode):
                        with m.Case(isa.Opcode.SYS):
                            m.d.comb += fetch.instr.ready.eq(1)
                            with m.Switch(sysop):
                                with m.Case(isa.SysOp.NOP, isa.SysOp.SETREG):
                                    pass
                                with m.Case(isa.SysOp.BARRIER):
                                    m.next = "BARRIER"
                                with m.Case(isa.SysOp.HALT):
                                    m.next = "HALT"
                                with m.Default():
                                    m.d.comb += [d_err.eq(1),
                                                 d_code.eq(isa.ErrorCode.MALFORMED)]
                        for op, u in ((isa.Opcode.LD, isa.Unit.LOAD),
                                      (isa.Opcode.MV, isa.Unit.MATRIX),
                                      (isa.Opcode.ST, isa.Unit.STORE)):
                            with m.Case(op):
                                m.d.comb += [fetch.instr.ready.eq(~full[u]),
                                             push[u].eq(~full[u])]
                                m.d.comb += stuck.eq(full[u])
                        with m.Case(isa.Opcode.MM, isa.Opcode.SFU):
                            m.d.comb += [d_err.eq(1), d_code.eq(isa.ErrorCode.UNSUPPORTED)]
                        with m.Default():
                            m.d.comb += [d_err.eq(1),
                                         d_code.eq(isa.ErrorCode.ILLEGAL_OPCODE)]
                with m.Elif(fetch.exhausted):
                    m.d.comb += [d_err.eq(1), d_code.eq(isa.ErrorCode.PROGRAM_END)]
            with m.State("BARRIER"):
                m.d.comb += stuck.eq(1)
                with m.If(all_idle):
                    m.next = "RUN"
            with m.State("HALT"):
                m.d.comb += stuck.eq(1)
                with m.If(all_idle):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += abort.eq(1)
                with m.If(ird.idle & drd.idle & store.idle):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [abort.eq(1), self.finished.eq(1)]
            # Errors leave any state but the last two for DRAIN (below).

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

        sources = [(d_err, d_code, fetch.instr.payload.index)]
        sources += [(units[u].err, units[u].err_code, units[u].err_pc) for u in _UNITS]
        sources.append((drd.error, isa.ErrorCode.AXI_ERROR, self.retired))
        sources.append((ird.error, isa.ErrorCode.AXI_ERROR, self.retired))
        sources.append((dead == DEADLOCK_CYCLES, isa.ErrorCode.DEADLOCK, self.retired))
        with m.If(~self.error):
            for flag, code, pc in reversed(sources):
                with m.If(flag):
                    m.d.sync += [self.error.eq(1), self.err_code.eq(code), self.err_pc.eq(pc)]
        m.d.comb += [ird.abort.eq(abort | self.error), drd.abort.eq(abort | self.error),
                     store.abort.eq(abort | self.error)]
        # After an error: wait for the AXI ports to drain, then report finished.
        drained = Signal()
        with m.If(self.error & ird.idle & drd.idle & store.idle):
            m.d.sync += drained.eq(1)
        with m.If(drained):
            m.d.comb += self.finished.eq(1)
        return m


def _connect_read(m, reader, port):
    for name in ("araddr", "arlen", "arsize", "arburst", "arvalid", "rready"):
        m.d.comb += getattr(port, name).eq(getattr(reader, name))
    for name in ("arready", "rdata", "rresp", "rlast", "rvalid"):
        m.d.comb += getattr(reader, name).eq(getattr(port, name))


class Core(wiring.Component):
    """The accelerator: an AXI4-Lite register block and the :class:`Engine`.

    Registers are those of :data:`airfoil.csr.REGISTERS`. Writing ``CTRL.START`` while
    idle resets the engine for one cycle and starts it; ``STATUS.DONE`` rises when it has
    finished (after ``HALT``, or after an error once its AXI ports are idle).

    Parameters
    ----------
    config : AccelConfig

    Members
    -------
    csr : In(axi4lite_signature())
        Register port (subordinate).
    instr : Out(axi4_signature(read_only=True))
        Instruction fetch port.
    data0 : Out(axi4_signature())
        Data port of memory channel 0.
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, not {config!r}")
        self._config = config
        BufferGeometry.of(config)
        wbits = config.memory.word_bits
        super().__init__({
            "csr": In(axi4lite_signature(addr_width=csrmap.CSR_ADDR_BITS)),
            "instr": Out(axi4_signature(data_width=wbits, read_only=True)),
            "data0": Out(axi4_signature(data_width=wbits)),
        })

    @property
    def config(self) -> AccelConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        soft_rst = Signal()
        engine = Engine(self._config)
        # The engine runs on the same clock in a domain whose reset also pulses at every
        # start (cheaper to elaborate than ResetInserter over the whole engine).
        m.domains.engine = ClockDomain("engine", local=True)
        m.d.comb += [ClockSignal("engine").eq(ClockSignal()),
                     ResetSignal("engine").eq(ResetSignal() | soft_rst)]
        m.submodules.engine = DomainRenamer("engine")(engine)
        wiring.connect(m, wiring.flipped(self.instr), engine.instr)
        wiring.connect(m, wiring.flipped(self.data0), engine.data0)

        regs = {name: Signal(32, name=name.lower()) for name in
                ("PROG_BASE_LO", "PROG_BASE_HI", "PROG_COUNT", "DATA_BASE_LO",
                 "DATA_BASE_HI")}
        busy, done = Signal(), Signal()
        cycles = Signal(64)
        kick = Signal()
        m.d.comb += [
            engine.prog_base.eq(Cat(regs["PROG_BASE_LO"], regs["PROG_BASE_HI"])),
            engine.data_base.eq(Cat(regs["DATA_BASE_LO"], regs["DATA_BASE_HI"])),
            engine.prog_count.eq(regs["PROG_COUNT"]),
        ]
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

        # AXI4-Lite writes: take address and data together, answer OKAY.
        bus = self.csr
        m.d.comb += bus.bresp.eq(0)
        with m.If(~bus.bvalid & bus.awvalid & bus.wvalid):
            m.d.comb += [bus.awready.eq(1), bus.wready.eq(1)]
            m.d.sync += bus.bvalid.eq(1)
            addr = bus.awaddr
            for reg in csrmap.REGISTERS:
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

