"""Core, memory and host link as one design, and the ULX3S top around it.

:class:`AirfoilSystem` is everything but the clock: the :class:`~hdl.core.top.Core`
(wrapped, not changed), an :class:`~.axi_ram.AxiRam` of the config's ``channel_bytes``
serving the link, the core's instruction port and its data port, and the
:class:`~.link.HostLink` behind a UART. Its only ports are the serial lines, so the
cocotb test drives exactly what the board's USB UART does.

:class:`Ulx3sTop` adds the board: an ECP5 PLL (EHXPLLL) makes the core clock of
``clock_mhz`` from the 25 MHz oscillator, the design is held in reset until the PLL
locks (the reset on a global network, like the clock), and the serial lines go to the
``uart`` resource (the FT231X USB UART).
"""


from amaranth.hdl import ClockDomain, ClockSignal, Instance, Module, ResetSignal, Signal
from amaranth.lib import fifo, io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out

from airfoil.config import AccelConfig
from airfoil.errors import ConfigError
from hdl.core.top import Core

from .axi_ram import AxiRam
from .link import LINK_BAUD, HostLink
from .uart import UartRx, UartTx, divisor_of

__all__ = ["AirfoilSystem", "Ulx3sTop", "global_buffer", "pll_params", "pll_clock_at_most",
           "OSC_MHZ", "RX_FIFO_DEPTH"]

#: The ULX3S's oscillator.
OSC_MHZ = 25
#: Request bytes the link may fall behind the line by.
RX_FIFO_DEPTH = 16


class AirfoilSystem(wiring.Component):
    """The core with its memory and host link; a single-channel config only.

    Parameters
    ----------
    config : AccelConfig
    divisor : int
        Clock cycles per serial bit.
    sfu : bool
        Build the core's SFU.
    reset_buffer : callable or None
        The core's engine reset buffer (:class:`~hdl.core.top.Core`); the board passes
        :func:`global_buffer`, the simulation ``None``.

    Members
    -------
    uart_rx : In(1, init=1)
    uart_tx : Out(1, init=1)
    """

    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)

    def __init__(self, config: AccelConfig, *, divisor: int, sfu: bool = True,
                 reset_buffer=None):
        if config.memory.channels != 1:
            raise ConfigError(f"config {config.name}: the board memory serves one channel, "
                              f"not {config.memory.channels}")
        self._config = config
        self._divisor = divisor
        self._sfu = sfu
        self._reset_buffer = reset_buffer
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        wbits = cfg.memory.word_bits
        m.submodules.core = core = Core(cfg, sfu=self._sfu, reset_buffer=self._reset_buffer)
        m.submodules.link = link = HostLink(word_bits=wbits)
        m.submodules.memory = mem = AxiRam(
            nbytes=cfg.memory.channel_bytes,
            ports={"link": (wbits, True), "instr": (cfg.memory.instr_bits, False),
                   "data0": (wbits, True)})
        wiring.connect(m, link.mem, mem.link)
        wiring.connect(m, core.instr, mem.instr)
        wiring.connect(m, core.data0, mem.data0)
        wiring.connect(m, link.csr, core.csr)

        m.submodules.rx = rx = UartRx(self._divisor)
        m.submodules.tx = tx = UartTx(self._divisor)
        m.submodules.rx_fifo = rxq = fifo.SyncFIFOBuffered(width=8, depth=RX_FIFO_DEPTH)
        m.d.comb += [rx.rx.eq(self.uart_rx), self.uart_tx.eq(tx.tx),
                     rxq.w_data.eq(rx.data), rxq.w_en.eq(rx.valid),
                     link.rx_data.eq(rxq.r_data), link.rx_valid.eq(rxq.r_rdy),
                     rxq.r_en.eq(link.rx_ready),
                     tx.data.eq(link.tx_data), tx.valid.eq(link.tx_valid),
                     link.tx_ready.eq(tx.ready)]
        return m


def global_buffer(m: Module, signal, name: str) -> Signal:
    """``signal`` through a DCCA, onto one of the ECP5's global (clock) networks, which
    reach every slice's clock, reset and enable inputs without the fabric's routing:
    for the nets that drive thousands of flip-flops. Built in ``m`` as ``<name>_dcca``."""
    out = Signal(name=f"{name}_global")
    m.submodules[f"{name}_dcca"] = Instance("DCCA", i_CLKI=signal, i_CE=1, o_CLKO=out)
    return out


def pll_params(clock_mhz: float) -> dict:
    """EHXPLLL dividers for ``clock_mhz`` from the 25 MHz oscillator, exactly.

    ``CLKI_DIV`` and ``CLKFB_DIV`` set the output (25 / CLKI_DIV * CLKFB_DIV MHz, the
    feedback taken from CLKOP) and ``CLKOP_DIV`` puts the VCO in 400..800 MHz.
    """
    for clki in range(1, 129):
        for fb in range(1, 81):
            f = OSC_MHZ / clki * fb
            if abs(f - clock_mhz) > 1e-6:
                continue
            for op in range(1, 129):
                if 400 <= f * op <= 800:
                    return {"CLKI_DIV": clki, "CLKFB_DIV": fb, "CLKOP_DIV": op,
                            "CLKOP_CPHASE": op - 1}
    raise ConfigError(f"the ECP5 PLL cannot make {clock_mhz} MHz from {OSC_MHZ} MHz exactly")


def pll_clock_at_most(mhz: float) -> float | None:
    """The fastest core clock of at most ``mhz`` that the PLL makes exactly from the
    oscillator (a phase detector of at least 3.125 MHz: ``CLKI_DIV`` up to 8; whole kHz)
    and the host link's baud rate is made from within 2 %; ``None`` below every one.
    What a build that misses its clock can be rebuilt at (``--clock-mhz``)."""
    best = None
    for clki in range(1, 9):
        for fb in range(1, 81):
            f = OSC_MHZ * fb / clki
            if f > mhz or (best is not None and f <= best) or round(f, 3) != f:
                continue
            try:
                pll_params(f)
                divisor_of(f * 1e6, LINK_BAUD)
            except (ConfigError, ValueError):
                continue
            best = f
    return best


class Ulx3sTop(wiring.Component):
    """The board's top: PLL, reset until lock, the system on the USB UART.

    The core clock is ``clock_mhz`` (default: the config's ``clock_mhz``), the PLL's
    output; the UART's divisor follows it.
    """

    def __init__(self, config: AccelConfig, *, sfu: bool = True,
                 clock_mhz: float | None = None):
        self._config = config
        self._sfu = sfu
        self._clock_mhz = config.clock_mhz if clock_mhz is None else clock_mhz
        try:
            self._pll = pll_params(self._clock_mhz)
            self._divisor = divisor_of(self._clock_mhz * 1e6, LINK_BAUD)
        except (ConfigError, ValueError) as e:
            self._MustUse__silence = True      # refused, never to be elaborated
            raise ConfigError(str(e)) from None
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        clk25 = platform.request("clk25", dir="-")
        m.submodules.clk_buf = clk_buf = io.Buffer("i", clk25)
        clk_in = clk_buf.i
        m.domains.sync = sync = ClockDomain("sync")
        locked = Signal()
        p = self._pll
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=str(OSC_MHZ), a_FREQUENCY_PIN_CLKOP=f"{self._clock_mhz:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            p_CLKI_DIV=p["CLKI_DIV"], p_CLKFB_DIV=p["CLKFB_DIV"],
            p_CLKOP_DIV=p["CLKOP_DIV"], p_CLKOP_CPHASE=p["CLKOP_CPHASE"],
            i_CLKI=clk_in, i_CLKFB=ClockSignal("sync"), i_RST=0, i_STDBY=0,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=0, i_PHASESTEP=0,
            i_PHASELOADREG=0, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=sync.clk, o_LOCK=locked)
        # The resets reach every flip-flop (the core's engine reset, this one or a start's
        # pulse, some 6,000 LSR pins; this one the other 560): as fabric nets they crowd
        # the routing of the whole die, so each leaves through a DCCA onto a global
        # network, as the clock does (this one from its synchronizer, in a domain of its
        # own on the same clock).
        m.domains.reset_source = ClockDomain("reset_source", local=True)
        m.d.comb += [ClockSignal("reset_source").eq(sync.clk),
                     sync.rst.eq(global_buffer(m, ResetSignal("reset_source"), "reset"))]
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="reset_source")
        uart = platform.request("uart", dir={"rx": "-", "tx": "-", "rts": "-", "dtr": "-"})
        m.submodules.system = system = AirfoilSystem(
            cfg, divisor=self._divisor, sfu=self._sfu,
            reset_buffer=lambda mod, rst: global_buffer(mod, rst, "engine_reset"))
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [system.uart_rx.eq(rx_buf.i), tx_buf.o.eq(system.uart_tx)]
        return m
