"""A serial line (8 data bits, no parity, one stop bit) in both directions.

Both ends count ``divisor`` clock cycles per bit (the clock frequency over the baud
rate). The receiver synchronises its input through two flip-flops, checks the start bit
half a bit after its falling edge and samples each data bit in its middle; a byte whose
stop bit is low is dropped (a framing error). Bytes leave both ends least significant
bit first, as every UART sends them.
"""


from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UartTx", "UartRx", "divisor_of"]


def divisor_of(clock_hz: float, baud: int) -> int:
    """Clock cycles per bit for ``baud`` at ``clock_hz``, refused if the rate is off by
    more than 2 % (a receiver at the far end then samples the wrong bit)."""
    div = round(clock_hz / baud)
    if div < 4 or abs(clock_hz / div - baud) > 0.02 * baud:
        raise ValueError(f"{baud} baud cannot be made from a {clock_hz / 1e6:g} MHz clock "
                         f"within 2 %")
    return div


def _check_divisor(divisor) -> int:
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 4:
        raise ValueError(f"UART divisor must be an integer >= 4, not {divisor!r}")
    return divisor


class UartTx(wiring.Component):
    """Transmitter: takes a byte when ``valid & ready`` and shifts it out on ``tx``.

    Members
    -------
    data : In(8)
    valid : In(1)
    ready : Out(1)
        High while idle (the line is at its stop level).
    tx : Out(1, init=1)
    """

    data: In(8)
    valid: In(1)
    ready: Out(1)
    tx: Out(1, init=1)

    def __init__(self, divisor: int):
        self._divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self._divisor))
        shift = Signal(10)           # start bit, 8 data bits, stop bit (LSB first)
        bits = Signal(range(11))
        m.d.comb += self.ready.eq(bits == 0)
        with m.If(bits == 0):
            with m.If(self.valid):
                m.d.sync += [shift.eq(Cat(0, self.data, 1)), bits.eq(10),
                             timer.eq(self._divisor - 1), self.tx.eq(0)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [bits.eq(bits - 1), shift.eq(shift >> 1),
                         timer.eq(self._divisor - 1)]
            # The next bit goes out; after the stop bit the line stays high.
            m.d.sync += self.tx.eq((bits == 1) | shift[1])
        return m


class UartRx(wiring.Component):
    """Receiver: ``valid`` is high for one cycle with each byte received in ``data``.

    Members
    -------
    rx : In(1, init=1)
    data : Out(8)
    valid : Out(1)
    """

    rx: In(1, init=1)
    data: Out(8)
    valid: Out(1)

    def __init__(self, divisor: int):
        self._divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(div))
        shift = Signal(8)
        bit = Signal(range(10))
        m.d.sync += self.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(div // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    m.next = "IDLE"            # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(div - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [timer.eq(div - 1), shift.eq(Cat(shift[1:], rx)),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [self.data.eq(shift), self.valid.eq(rx)]
                    m.next = "IDLE"
        return m
