"""AXI4 read engine: row commands in, bursts on the AR channel, data beats out."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .axi import BOUNDARY_BYTES, BURST_INCR

__all__ = ["AxiReader", "read_cmd_layout"]


def read_cmd_layout(addr_width: int = 64) -> data.StructLayout:
    """``rows`` rows of ``beats`` beats, row ``r`` at byte ``addr + r * stride``."""
    return data.StructLayout({"addr": addr_width, "beats": 32, "rows": 32, "stride": 40})


class AxiReader(wiring.Component):
    """Split read commands into AXI4 INCR bursts and stream the returned beats.

    Bursts are at most ``max_burst`` beats and never cross a 4 KiB boundary; at most
    ``outstanding`` bursts are in flight. The data of consecutive commands follows in
    order; the next command is accepted as soon as the previous one's last burst address
    is issued, so reads of consecutive commands overlap. ``abort`` stops issuing and
    drops returning data; ``idle`` is high when nothing is issued or in flight.

    Parameters
    ----------
    data_width : int
        AXI data width in bits.
    max_burst : int
        Longest burst in beats (1..256).
    outstanding : int
        Bursts in flight at most.
    addr_width : int
        AXI address width.

    Members
    -------
    cmd : In(stream.Signature(read_cmd_layout()))
    data : Out(stream.Signature(data_width))
    ar_*, r_* : the AXI4 read channels (manager side), named as the AXI signals.
    abort : In(1)
    idle : Out(1)
    error : Out(1)
        A beat with a response other than OKAY arrived (one-cycle pulse).
    """

    def __init__(self, *, data_width: int, max_burst: int, outstanding: int,
                 addr_width: int = 64):
        if not 1 <= max_burst <= 256:
            raise ValueError(f"Burst length must be 1..256 beats, not {max_burst!r}")
        if not 1 <= outstanding <= 64:
            raise ValueError(f"Outstanding reads must be 1..64, not {outstanding!r}")
        self._data_width = data_width
        self._max_burst = max_burst
        self._outstanding = outstanding
        self._addr_width = addr_width
        super().__init__({
            "cmd": In(stream.Signature(read_cmd_layout(addr_width))),
            "data": Out(stream.Signature(data_width)),
            "araddr": Out(addr_width), "arlen": Out(8), "arsize": Out(3), "arburst": Out(2),
            "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rlast": In(1), "rvalid": In(1),
            "rready": Out(1),
            "abort": In(1), "idle": Out(1), "error": Out(1),
        })

    @property
    def data_width(self) -> int:
        return self._data_width

    def elaborate(self, platform):
        m = Module()
        wb = self._data_width // 8
        lg_wb = exact_log2(wb)
        # Command in progress.
        active = Signal()
        addr = Signal(self._addr_width)
        row_addr = Signal(self._addr_width)
        row_left = Signal(32)
        rows_left = Signal(32)
        beats = Signal(32)
        stride = Signal(40)
        inflight = Signal(range(self._outstanding + 1))

        m.d.comb += [
            self.arsize.eq(lg_wb),
            self.arburst.eq(BURST_INCR),
            self.cmd.ready.eq(~active & ~self.arvalid & ~self.abort),
        ]
        with m.If(self.cmd.valid & self.cmd.ready):
            p = self.cmd.payload
            m.d.sync += [
                active.eq((p.beats != 0) & (p.rows != 0)),
                addr.eq(p.addr), row_addr.eq(p.addr), row_left.eq(p.beats),
                rows_left.eq(p.rows), beats.eq(p.beats), stride.eq(p.stride),
            ]

        # Length of the next burst: up to max_burst, the row's end and the 4 KiB boundary.
        to_boundary = Signal(range(BOUNDARY_BYTES // wb + 1))
        m.d.comb += to_boundary.eq((BOUNDARY_BYTES - addr[:exact_log2(BOUNDARY_BYTES)])
                                   >> lg_wb)
        blen = Signal(range(self._max_burst + 1))
        lim = Mux(row_left < self._max_burst, row_left, self._max_burst)
        m.d.comb += blen.eq(Mux(to_boundary < lim, to_boundary, lim))

        ar_fire = self.arvalid & self.arready
        r_fire = self.rvalid & self.rready
        r_done = r_fire & self.rlast
        m.d.sync += inflight.eq(inflight + ar_fire - r_done)

        with m.If(~self.arvalid):
            with m.If(active & ~self.abort & (inflight < self._outstanding)):
                m.d.sync += [self.arvalid.eq(1), self.araddr.eq(addr),
                             self.arlen.eq(blen - 1)]
                with m.If(blen == row_left):
                    m.d.sync += [row_addr.eq(row_addr + stride),
                                 addr.eq(row_addr + stride),
                                 row_left.eq(beats), rows_left.eq(rows_left - 1)]
                    with m.If(rows_left == 1):
                        m.d.sync += active.eq(0)
                with m.Else():
                    m.d.sync += [addr.eq(addr + (blen << lg_wb)),
                                 row_left.eq(row_left - blen)]
        with m.Elif(ar_fire):
            m.d.sync += self.arvalid.eq(0)
        with m.If(self.abort):
            m.d.sync += active.eq(0)

        m.d.comb += [
            self.data.payload.eq(self.rdata),
            self.data.valid.eq(self.rvalid & ~self.abort),
            self.rready.eq(self.data.ready | self.abort),
            self.error.eq(r_fire & (self.rresp != 0)),
            self.idle.eq(~active & ~self.arvalid & (inflight == 0)),
        ]
        return m
