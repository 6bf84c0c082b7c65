"""The core's memory on the board: on-chip block RAM behind AXI4 subordinate ports.

One RAM of ``nbytes`` bytes, as wide as the widest port, serves its ports one burst at a
time: while idle it takes the first port (in the order given) with a read or write
address, runs that burst to its last beat (a write to its response), then looks again.
One read port and one write port of the RAM, so it maps onto the FPGA's block RAMs
(the ECP5's DP16KD) without copies.

A port narrower than the RAM (the core's instruction port) reads the lane of the RAM
word its address names; write ports are as wide as the RAM. Bursts are INCR of whole
beats. A burst that reaches past the memory's end answers SLVERR on every beat (read
data zero, writes dropped), as the simulation memory does.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In
from amaranth.utils import ceil_log2, exact_log2

from hdl.core.axi import RESP_OKAY, axi4_signature
from hdl.core.ram import Ram

__all__ = ["AxiRam", "RESP_SLVERR"]

RESP_SLVERR = 2


class AxiRam(wiring.Component):
    """``nbytes`` bytes of block RAM behind the named AXI4 ports.

    Parameters
    ----------
    nbytes : int
        Memory size (a power of two).
    ports : dict
        ``name -> (data_width, writable)``; each becomes a member
        ``In(axi4_signature(data_width=..., read_only=not writable))``.
    """

    def __init__(self, *, nbytes: int, ports: dict):
        if nbytes < 64 or nbytes & (nbytes - 1):
            raise ValueError(f"memory size must be a power of two >= 64, not {nbytes!r}")
        if not ports:
            raise ValueError("the memory needs at least one port")
        self._width = max(w for w, _ in ports.values())
        for name, (w, writable) in ports.items():
            if writable and w != self._width:
                raise ValueError(f"write port {name!r} must be {self._width} bits wide "
                                 f"(the RAM's width), not {w}")
        self._nbytes = nbytes
        self._ports = dict(ports)
        super().__init__({name: In(axi4_signature(data_width=w, read_only=not wr))
                          for name, (w, wr) in ports.items()})

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def elaborate(self, platform):
        m = Module()
        W = self._width
        wbytes = W // 8
        wshift = exact_log2(wbytes)
        depth = self._nbytes // wbytes
        m.submodules.ram = ram = Ram(width=W, depth=depth, granularity=8)
        names = list(self._ports)
        ports = [getattr(self, n) for n in names]

        sel = Signal(range(max(2, len(ports))))
        addr = Signal(64)            # byte address of the next beat to issue
        left = Signal(9)             # beats still to issue (read) or to take (write)
        beat = Signal(range(wbytes + 1))   # bytes per beat of the selected port
        bad = Signal()               # the burst reaches past the memory: SLVERR
        rvalid, rlast = Signal(), Signal()
        lane = Signal(range(max(2, wbytes)))   # byte offset of the beat in flight
        m.d.comb += [ram.rd0.addr.eq(addr[wshift:]), ram.wr.addr.eq(addr[wshift:])]

        def past_end(a, length, nbeat):
            # From the beat that holds the first byte to the end of the last one.
            start = a & ~(nbeat - 1)
            return (start + (length + 1) * nbeat) > self._nbytes

        with m.FSM():
            with m.State("IDLE"):
                first = True
                for i, p in enumerate(ports):
                    w = self._ports[names[i]][0]
                    cases = [("READ", p.arvalid, p.araddr, p.arlen, p.arready)]
                    if self._ports[names[i]][1]:
                        cases.append(("WRITE", p.awvalid, p.awaddr, p.awlen, p.awready))
                    for state, valid, a, length, ready in cases:
                        with (m.If if first else m.Elif)(valid):
                            m.d.comb += ready.eq(1)
                            m.d.sync += [sel.eq(i), addr.eq(a), left.eq(length + 1),
                                         beat.eq(w // 8),
                                         bad.eq(past_end(a, length, w // 8)),
                                         rvalid.eq(0)]
                            m.next = state
                        first = False
            with m.State("READ"):
                ready = Signal()
                for i, p in enumerate(ports):
                    with m.If(sel == i):
                        m.d.comb += ready.eq(p.rready)
                # Issue a beat when the output register is free or being taken.
                take = ~rvalid | ready
                m.d.comb += ram.rd0.en.eq(take & (left != 0))
                with m.If(take):
                    with m.If(left != 0):
                        m.d.sync += [rvalid.eq(1), rlast.eq(left == 1),
                                     lane.eq(addr[:wshift] if wshift else 0),
                                     addr.eq(addr + beat), left.eq(left - 1)]
                    with m.Else():
                        m.d.sync += rvalid.eq(0)
                with m.If(rvalid & ready & rlast):
                    m.next = "IDLE"
                for i, p in enumerate(ports):
                    w = self._ports[names[i]][0]
                    data = ram.rd0.data
                    if w < W:
                        data = data.word_select(lane[exact_log2(w // 8):], w)
                    m.d.comb += [p.rdata.eq(Mux(bad, 0, data)), p.rlast.eq(rlast),
                                 p.rresp.eq(Mux(bad, RESP_SLVERR, RESP_OKAY)),
                                 p.rvalid.eq(rvalid & (sel == i))]
            with m.State("WRITE"):
                for i, p in enumerate(ports):
                    if not self._ports[names[i]][1]:
                        continue
                    with m.If(sel == i):
                        m.d.comb += [p.wready.eq(1), ram.wr.data.eq(p.wdata)]
                        with m.If(p.wvalid):
                            m.d.comb += ram.wr.en.eq(Mux(bad, 0, p.wstrb))
                            m.d.sync += addr.eq(addr + beat)
                            with m.If(p.wlast):
                                m.next = "RESP"
            with m.State("RESP"):
                for i, p in enumerate(ports):
                    if not self._ports[names[i]][1]:
                        continue
                    m.d.comb += [p.bvalid.eq(sel == i),
                                 p.bresp.eq(Mux(bad, RESP_SLVERR, RESP_OKAY))]
                    with m.If((sel == i) & p.bready):
                        m.next = "IDLE"
        return m
