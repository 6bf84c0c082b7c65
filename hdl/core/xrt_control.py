"""The core as a Vitis RTL kernel: XRT's ``ap_ctrl_hs`` control port in front of the core's
CSR block.

XRT starts a kernel by writing its arguments and ``ap_start`` to ``s_axi_control``
(:mod:`airfoil.kernel` has the layout) and waits for ``ap_done`` (or the interrupt).
The core has a register map of its own (:mod:`airfoil.csr`), so :class:`XrtControl`
wraps the core's public ports: it answers ``s_axi_control`` and, on ``ap_start``, plays
the core's programming sequence as an AXI4-Lite manager of the core's ``csr`` port::

    s_axi_control --> arguments, ap_ctrl --ap_start--> sequencer --csr--> Core
                                       <--ap_done----  (writes the bases, PROG_COUNT,
                                                        CTRL.START; polls STATUS; reads
                                                        ERR_PC and CYCLES)

``ap_ready`` rises (and ``ap_start`` clears) once the core has taken ``CTRL.START``;
``ap_done`` rises when ``STATUS.DONE`` has been read, after a clean ``HALT`` and after an
error alike, so a faulting program never hangs the host: the ``status`` register then
holds ``ERROR`` and ``ERR_CODE``. ``ISR`` bit 0 (done) and bit 1 (ready) are set when the
matching ``IER`` bit is, a write of 1 toggles them, and ``interrupt`` is
``GIE & |(IER & ISR)``. The instruction and data ports are the core's, unchanged.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from airfoil import csr as csrmap
from airfoil import kernel as kmap
from airfoil.config import AccelConfig

from .axi import axi4_signature, axi4lite_signature
from .top import Core

__all__ = ["XrtControl"]

#: Core registers read after ``STATUS.DONE``, into the result register of the same name.
_RESULT_READS = (("STATUS", "status", 0), ("ERR_PC", "err_pc", 0),
                 ("CYCLES_LO", "cycles", 0), ("CYCLES_HI", "cycles", 1))


class XrtControl(wiring.Component):
    """The core behind an ``ap_ctrl_hs`` AXI4-Lite control port.

    Members
    -------
    s_axi_control : In(axi4lite_signature())
        XRT's control port (subordinate), :mod:`airfoil.kernel`'s layout.
    interrupt : Out(1)
        ``GIE & |(IER & ISR)``.
    instr, data0, data1, ... : Out(axi4_signature())
        The core's instruction and data ports.
    """

    def __init__(self, config: AccelConfig, *, sfu: bool = True):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, not {config!r}")
        self._config = config
        self._sfu = bool(sfu)
        wbits = config.memory.word_bits
        super().__init__({
            "s_axi_control": In(axi4lite_signature(addr_width=kmap.CONTROL_ADDR_BITS)),
            "interrupt": Out(1),
            "instr": Out(axi4_signature(data_width=config.memory.instr_bits, read_only=True)),
            **{f"data{c}": Out(axi4_signature(data_width=wbits))
               for c in range(config.memory.channels)},
        })

    @property
    def config(self) -> AccelConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        nch = self._config.memory.channels
        m.submodules.core = core = Core(self._config, sfu=self._sfu)
        wiring.connect(m, wiring.flipped(self.instr), core.instr)
        for c in range(nch):
            wiring.connect(m, wiring.flipped(getattr(self, f"data{c}")),
                           getattr(core, f"data{c}"))

        # The registers behind s_axi_control, one 32-bit word each.
        args = kmap.kernel_args(nch)
        results = kmap.status_registers(nch)
        words = {}                          # byte offset -> Signal(32)
        arg_words = {}                      # (arg name, word index) -> Signal(32)
        for reg in (*args, *results):
            for i in range(reg.size // 4):
                s = Signal(32, name=f"{reg.name}_w{i}")
                words[reg.offset + 4 * i] = s
                arg_words[reg.name, i] = s
        writable = {a.offset + 4 * i for a in args for i in range(a.size // 4)}
        ap_start, ap_done, ap_idle, ap_ready = (Signal(name=n) for n in
                                                ("ap_start", "ap_done", "ap_idle", "ap_ready"))
        gie, ier, isr = Signal(), Signal(2), Signal(2)
        m.d.comb += self.interrupt.eq(gie & (ier & isr).any())

        # The sequence of core CSR writes a run starts with: the arguments, then START.
        steps = [(csrmap.offset(name), arg_words[a.name, i])
                 for a in args for i, name in enumerate(a.csr)]
        steps.append((csrmap.offset("CTRL"), Const(csrmap.CTRL_START, 32)))
        step_addr = Array(Const(a, csrmap.CSR_ADDR_BITS) for a, _ in steps)
        step_data = Array(v for _, v in steps)
        step = Signal(range(len(steps)))
        reads = Array(Const(csrmap.offset(n), csrmap.CSR_ADDR_BITS)
                      for n, _, _ in _RESULT_READS)
        rstep = Signal(range(len(_RESULT_READS)))

        bus = core.csr
        m.d.comb += bus.wstrb.eq(0xF)
        finished = Signal()
        with m.FSM(name="sequencer"):
            with m.State("IDLE"):
                m.d.comb += ap_idle.eq(1)
                with m.If(ap_start):
                    m.d.sync += step.eq(0)
                    m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += [bus.awaddr.eq(step_addr[step]), bus.wdata.eq(step_data[step]),
                             bus.awvalid.eq(1), bus.wvalid.eq(1)]
                with m.If(bus.awready):
                    m.next = "WRITE_RESP"
            with m.State("WRITE_RESP"):
                m.d.comb += bus.bready.eq(1)
                with m.If(bus.bvalid):
                    with m.If(step == len(steps) - 1):
                        m.d.sync += rstep.eq(0)
                        m.next = "READ"
                    with m.Else():
                        m.d.sync += step.eq(step + 1)
                        m.next = "WRITE"
            with m.State("READ"):
                m.d.comb += [bus.araddr.eq(reads[rstep]), bus.arvalid.eq(1)]
                with m.If(bus.arready):
                    m.next = "READ_DATA"
            with m.State("READ_DATA"):
                m.d.comb += bus.rready.eq(1)
                with m.If(bus.rvalid):
                    with m.Switch(rstep):
                        for j, (_, name, i) in enumerate(_RESULT_READS):
                            with m.Case(j):
                                m.d.sync += arg_words[name, i].eq(bus.rdata)
                    polling = (rstep == 0) & ~(bus.rdata & csrmap.STATUS_DONE).any()
                    with m.If(polling):
                        m.next = "READ"
                    with m.Elif(rstep == len(_RESULT_READS) - 1):
                        m.d.comb += finished.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += rstep.eq(rstep + 1)
                        m.next = "READ"
        taken = Signal()
        m.d.comb += taken.eq((step == len(steps) - 1) & bus.bvalid & bus.bready)

        # s_axi_control writes: address and data together, answered OKAY.
        ctl = self.s_axi_control
        m.d.comb += [ctl.bresp.eq(0), ctl.rresp.eq(0)]
        with m.If(~ctl.bvalid & ctl.awvalid & ctl.wvalid):
            m.d.comb += [ctl.awready.eq(1), ctl.wready.eq(1)]
            m.d.sync += ctl.bvalid.eq(1)
            with m.Switch(ctl.awaddr):
                with m.Case(kmap.AP_CTRL):
                    with m.If(ctl.wdata[0] & ap_idle):
                        m.d.sync += ap_start.eq(1)
                with m.Case(kmap.GIE):
                    m.d.sync += gie.eq(ctl.wdata[0])
                with m.Case(kmap.IER):
                    m.d.sync += ier.eq(ctl.wdata[:2])
                with m.Case(kmap.ISR):
                    m.d.sync += isr.eq(isr ^ ctl.wdata[:2])
                for off in sorted(writable):
                    with m.Case(off):
                        m.d.sync += words[off].eq(ctl.wdata)
        with m.If(ctl.bvalid & ctl.bready):
            m.d.sync += ctl.bvalid.eq(0)

        # s_axi_control reads; reading AP_CTRL clears ap_done and ap_ready.
        readable = {kmap.AP_CTRL: Cat(ap_start, ap_done, ap_idle, ap_ready),
                    kmap.GIE: gie, kmap.IER: ier, kmap.ISR: isr, **words}
        with m.If(~ctl.rvalid & ctl.arvalid):
            m.d.comb += ctl.arready.eq(1)
            m.d.sync += [ctl.rvalid.eq(1), ctl.rdata.eq(0)]
            with m.Switch(ctl.araddr):
                for off, value in readable.items():
                    with m.Case(off):
                        m.d.sync += ctl.rdata.eq(value)
            with m.If(ctl.araddr == kmap.AP_CTRL):
                m.d.sync += [ap_done.eq(0), ap_ready.eq(0)]
        with m.If(ctl.rvalid & ctl.rready):
            m.d.sync += ctl.rvalid.eq(0)

        # Run events (after the clear on read, so an event in the same cycle wins).
        with m.If(taken):
            m.d.sync += [ap_start.eq(0), ap_ready.eq(1)]
            with m.If(ier[1]):
                m.d.sync += isr[1].eq(1)
        with m.If(finished):
            m.d.sync += ap_done.eq(1)
            with m.If(ier[0]):
                m.d.sync += isr[0].eq(1)
        return m
