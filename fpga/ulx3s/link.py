"""The host link: a framed request/reply protocol over the serial line, and its RTL end.

Every request is a 9-byte header, ``op`` then two little-endian 32-bit fields ``addr``
and ``arg``, followed (``WRITE_MEM`` only) by its payload. Every reply ends with one
status byte (:data:`STATUS_OK`, or the bits :data:`STATUS_BUS_ERROR` and
:data:`STATUS_BAD_OP`)::

    op          addr           arg          payload    reply
    WRITE_MEM   byte address   byte count   the bytes  status
    READ_MEM    byte address   byte count   -          the bytes, status
    WRITE_CSR   CSR offset     value        -          status
    READ_CSR    CSR offset     -            -          value (4 bytes, LE), status

Memory accesses reach the core's memory one byte at a time (single-beat AXI4 accesses
of one byte lane), so an address or count needs no alignment; the serial line, not the
bus, sets the speed. :data:`LINK_BAUD` is the rate of the board build.
"""

from __future__ import annotations

import struct

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from airfoil import csr as csrmap
from hdl.core.axi import BURST_INCR, RESP_OKAY, axi4_signature, axi4lite_signature

__all__ = ["WRITE_MEM", "READ_MEM", "WRITE_CSR", "READ_CSR", "HEADER_BYTES", "LINK_BAUD",
           "STATUS_OK", "STATUS_BUS_ERROR", "STATUS_BAD_OP", "request", "reply_bytes",
           "HostLink"]

WRITE_MEM = 0x57     # 'W'
READ_MEM = 0x52      # 'R'
WRITE_CSR = 0x43     # 'C'
READ_CSR = 0x63      # 'c'
#: Bytes of a request header: op, addr, arg.
HEADER_BYTES = 9
#: Serial rate of the board build (the ULX3S's FT231X USB UART runs it reliably).
LINK_BAUD = 1_000_000
STATUS_OK = 0x00
STATUS_BUS_ERROR = 0x01      # an AXI response other than OKAY
STATUS_BAD_OP = 0x02         # an unknown op (its header was read, its payload is not)


def request(op: int, addr: int, arg: int = 0, payload: bytes = b"") -> bytes:
    """The bytes of one request."""
    if op not in (WRITE_MEM, READ_MEM, WRITE_CSR, READ_CSR):
        raise ValueError(f"unknown link op {op!r}")
    if op == WRITE_MEM and len(payload) != arg:
        raise ValueError(f"WRITE_MEM of {arg} bytes with a payload of {len(payload)}")
    return struct.pack("<BII", op, addr, arg) + payload


def reply_bytes(op: int, arg: int = 0) -> int:
    """Bytes of the reply to a request (the status byte included)."""
    return {WRITE_MEM: 1, READ_MEM: arg + 1, WRITE_CSR: 1, READ_CSR: 5}[op]


class HostLink(wiring.Component):
    """The RTL end of the link: requests from ``rx_*``, replies to ``tx_*``.

    Parameters
    ----------
    word_bits : int
        Data width of the memory port.

    Members
    -------
    rx_data, rx_valid : In ; rx_ready : Out
        Request bytes (a stream).
    tx_data, tx_valid : Out ; tx_ready : In
        Reply bytes (a stream).
    mem : Out(axi4_signature(data_width=word_bits))
        The memory, one byte per access.
    csr : Out(axi4lite_signature(addr_width=airfoil.csr.CSR_ADDR_BITS))
        The core's registers.
    """

    def __init__(self, *, word_bits: int):
        self._word_bits = word_bits
        super().__init__({
            "rx_data": In(8), "rx_valid": In(1), "rx_ready": Out(1),
            "tx_data": Out(8), "tx_valid": Out(1), "tx_ready": In(1),
            "mem": Out(axi4_signature(data_width=word_bits)),
            "csr": Out(axi4lite_signature(addr_width=csrmap.CSR_ADDR_BITS)),
        })

    def elaborate(self, platform):
        m = Module()
        wbytes = self._word_bits // 8
        lane_bits = exact_log2(wbytes)
        mem, csr = self.mem, self.csr

        op = Signal(8)
        header = Signal(64)
        got = Signal(range(HEADER_BYTES))
        addr = Signal(32)
        left = Signal(32)
        status = Signal(8)
        byte = Signal(8)
        word = Signal(32)           # READ_CSR's value, sent LSB first
        sent = Signal(range(5))
        aw_done, w_done = Signal(), Signal()
        lane = addr[:lane_bits] if lane_bits else Const(0, 1)

        m.d.comb += [
            mem.awaddr.eq(addr), mem.awlen.eq(0), mem.awsize.eq(0),
            mem.awburst.eq(BURST_INCR), mem.wlast.eq(1),
            mem.araddr.eq(addr), mem.arlen.eq(0), mem.arsize.eq(0),
            mem.arburst.eq(BURST_INCR),
            csr.awaddr.eq(addr), csr.wdata.eq(left), csr.wstrb.eq(0xF),
            csr.araddr.eq(addr),
        ]

        def send(value, then):
            m.d.comb += [self.tx_valid.eq(1), self.tx_data.eq(value)]
            with m.If(self.tx_ready):
                then()

        def write_taken(port):
            """Offer ``port``'s write address and data until each is taken (in either
            order); the condition of both taken."""
            m.d.comb += [port.awvalid.eq(~aw_done), port.wvalid.eq(~w_done)]
            aw = aw_done | port.awready
            w = w_done | port.wready
            m.d.sync += [aw_done.eq(aw), w_done.eq(w)]
            return aw & w

        def next_byte(again: str):
            m.d.sync += [addr.eq(addr + 1), left.eq(left - 1)]
            with m.If(left == 1):
                m.next = "STATUS"
            with m.Else():
                m.next = again

        with m.FSM():
            with m.State("OP"):
                m.d.comb += self.rx_ready.eq(1)
                with m.If(self.rx_valid):
                    m.d.sync += [op.eq(self.rx_data), got.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += self.rx_ready.eq(1)
                with m.If(self.rx_valid):
                    m.d.sync += [header.eq(Cat(header[8:], self.rx_data)), got.eq(got + 1)]
                    with m.If(got == HEADER_BYTES - 2):
                        m.next = "DISPATCH"
            with m.State("DISPATCH"):
                m.d.sync += [addr.eq(header[:32]), left.eq(header[32:]),
                             status.eq(STATUS_OK), aw_done.eq(0), w_done.eq(0)]
                with m.Switch(op):
                    with m.Case(WRITE_MEM):
                        m.next = "W_BYTE"
                        with m.If(header[32:] == 0):
                            m.next = "STATUS"
                    with m.Case(READ_MEM):
                        m.next = "R_ADDR"
                        with m.If(header[32:] == 0):
                            m.next = "STATUS"
                    with m.Case(WRITE_CSR):
                        m.next = "C_WRITE"
                    with m.Case(READ_CSR):
                        m.next = "C_ADDR"
                    with m.Default():
                        m.d.sync += status.eq(STATUS_BAD_OP)
                        m.next = "STATUS"

            # -- WRITE_MEM: one single-beat, one-lane write per payload byte ------------
            with m.State("W_BYTE"):
                m.d.comb += self.rx_ready.eq(1)
                with m.If(self.rx_valid):
                    m.d.sync += [mem.wdata.eq(Cat(*[self.rx_data] * wbytes)),
                                 mem.wstrb.eq(1 << lane), aw_done.eq(0), w_done.eq(0)]
                    m.next = "W_ACCESS"
            with m.State("W_ACCESS"):
                with m.If(write_taken(mem)):
                    m.next = "W_RESP"
            with m.State("W_RESP"):
                m.d.comb += mem.bready.eq(1)
                with m.If(mem.bvalid):
                    with m.If(mem.bresp != RESP_OKAY):
                        m.d.sync += status.eq(status | STATUS_BUS_ERROR)
                    next_byte("W_BYTE")

            # -- READ_MEM: one single-beat read per byte, sent as it arrives -----------
            with m.State("R_ADDR"):
                m.d.comb += mem.arvalid.eq(1)
                with m.If(mem.arready):
                    m.next = "R_DATA"
            with m.State("R_DATA"):
                m.d.comb += mem.rready.eq(1)
                with m.If(mem.rvalid):
                    m.d.sync += byte.eq(mem.rdata.word_select(lane, 8))
                    with m.If(mem.rresp != RESP_OKAY):
                        m.d.sync += status.eq(status | STATUS_BUS_ERROR)
                    m.next = "R_SEND"
            with m.State("R_SEND"):
                send(byte, lambda: next_byte("R_ADDR"))

            # -- WRITE_CSR / READ_CSR: one AXI4-Lite access ----------------------------
            with m.State("C_WRITE"):
                with m.If(write_taken(csr)):
                    m.next = "C_RESP"
            with m.State("C_RESP"):
                m.d.comb += csr.bready.eq(1)
                with m.If(csr.bvalid):
                    with m.If(csr.bresp != RESP_OKAY):
                        m.d.sync += status.eq(STATUS_BUS_ERROR)
                    m.next = "STATUS"
            with m.State("C_ADDR"):
                m.d.comb += csr.arvalid.eq(1)
                with m.If(csr.arready):
                    m.next = "C_DATA"
            with m.State("C_DATA"):
                m.d.comb += csr.rready.eq(1)
                with m.If(csr.rvalid):
                    m.d.sync += [word.eq(csr.rdata), sent.eq(0)]
                    with m.If(csr.rresp != RESP_OKAY):
                        m.d.sync += status.eq(STATUS_BUS_ERROR)
                    m.next = "C_SEND"
            with m.State("C_SEND"):
                def shifted():
                    m.d.sync += [word.eq(word >> 8), sent.eq(sent + 1)]
                    with m.If(sent == 3):
                        m.next = "STATUS"
                send(word[:8], shifted)

            with m.State("STATUS"):
                def done():
                    m.next = "OP"
                send(status, done)
        return m
