"""Harness of the AXI4 read engine (:class:`~hdl.core.axi_read.AxiReader`).

The command stream, ``abort``, the data consumer's ``ready`` and the AR/R inputs are free,
constrained only by the stream rule, by commands of word-aligned ``addr`` and ``stride``
(the LOAD unit refuses others; the engine trusts the program base) of a few beats and
rows, and by a slave that follows AXI: it keeps the accepted bursts' lengths in order,
raises RVALID only while a burst is owed, holds RVALID and the beat until RREADY, and
drives RLAST on the last beat of each burst. Asserted:

* ARVALID, once raised, stays raised with ARADDR/ARLEN/ARSIZE/ARBURST stable until ARREADY;
* every burst is legal: ARLEN < ``max_burst``, ARSIZE the data width, INCR, the address
  word-aligned, and the burst does not cross a 4 KiB boundary;
* bursts in flight (accepted ARs whose RLAST has not been taken) never exceed
  ``outstanding``;
* the bursts of a command (from the last command until an ``abort``) are exactly its rows:
  row ``r`` at ``addr + r * stride``, each row's bursts contiguous and of ``beats`` beats
  in total, no burst beyond the last row;
* every R beat taken reaches ``data`` once (none while aborting), with its data;
* ``idle`` only when no burst is owed and every burst of the command has been issued.
"""

from __future__ import annotations

from amaranth.hdl import Assert, Assume, Cover, Module, ResetSignal, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In
from amaranth.utils import exact_log2

from hdl.core.axi import BOUNDARY_BYTES, BURST_INCR
from hdl.core.axi_read import AxiReader, read_cmd_layout

from .rules import hold_until_ready

__all__ = ["AxiReaderHarness", "MUTATIONS"]

#: Deliberate faults that the checks must catch (see ``mutation``).
MUTATIONS = ("drop_arvalid",)


class AxiReaderHarness(wiring.Component):
    """Check an :class:`AxiReader` (see the module docstring).

    Parameters
    ----------
    data_width, max_burst, outstanding, addr_width : int
        The reader's parameters (small ones keep the state space small).
    max_beats, max_rows : int
        Largest ``beats`` and ``rows`` of a command the environment sends.
    scope : str
        ``"all"``: every property; ``"handshake"``: the AR handshake rule and the fixed
        ARSIZE/ARBURST only, which hold by k-induction (the others need the reader's
        internal state, so they are bounded checks).
    mutation : str, optional
        ``"drop_arvalid"``: the harness sees ARVALID masked by a free input, as if the
        reader dropped it before ARREADY (the checks must fail).
    """

    def __init__(self, *, data_width=8, max_burst=4, outstanding=2, addr_width=12,
                 max_beats=6, max_rows=2, scope="all", mutation=None):
        if scope not in ("all", "handshake"):
            raise ValueError(f"scope must be 'all' or 'handshake', not {scope!r}")
        self._scope = scope
        if mutation not in (None, *MUTATIONS):
            raise ValueError(f"mutation must be one of {MUTATIONS}, not {mutation!r}")
        self._dut = AxiReader(data_width=data_width, max_burst=max_burst,
                              outstanding=outstanding, addr_width=addr_width)
        self._max_burst, self._outstanding = max_burst, outstanding
        self._addr_width, self._data_width = addr_width, data_width
        self._max_beats, self._max_rows = max_beats, max_rows
        self._mutation = mutation
        super().__init__({
            "cmd": In(stream.Signature(read_cmd_layout(addr_width))),
            "abort": In(1), "data_ready": In(1), "glitch": In(1),
            "arready": In(1), "rvalid": In(1), "rdata": In(data_width), "rresp": In(2),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self._dut
        m.d.comb += Assume(~ResetSignal())
        wb = self._data_width // 8
        lgw = exact_log2(wb)
        aw = self._addr_width
        N = self._outstanding

        def claim(*conds):
            """Assert ``conds`` (in the full scope only)."""
            return [Assert(c) for c in conds] if self._scope == "all" else []

        # -- the command stream -----------------------------------------------------------
        cmd = self.cmd
        wiring.connect(m, wiring.flipped(cmd), dut.cmd)
        hold_until_ready(m, valid=cmd.valid, ready=cmd.ready, payload=cmd.payload,
                         kind="assume", name="cmd")
        with m.If(cmd.valid):
            p = cmd.payload
            m.d.comb += Assume((p.addr[:lgw] == 0) & (p.stride[:lgw] == 0) &
                               (p.beats <= self._max_beats) & (p.rows <= self._max_rows) &
                               (p.stride < (1 << aw)))
        m.d.comb += [dut.abort.eq(self.abort), dut.data.ready.eq(self.data_ready)]

        # -- AR, as the slave sees it -----------------------------------------------------
        arvalid = Signal()
        m.d.comb += arvalid.eq(dut.arvalid)
        if self._mutation == "drop_arvalid":
            m.d.comb += arvalid.eq(dut.arvalid & ~self.glitch)
        m.d.comb += dut.arready.eq(self.arready)
        ar_fire = arvalid & self.arready
        hold_until_ready(m, valid=arvalid, ready=self.arready,
                         payload=[dut.araddr, dut.arlen, dut.arsize, dut.arburst],
                         kind="assert", name="ar")
        blen = dut.arlen + 1
        with m.If(arvalid):
            m.d.comb += Assert((dut.arsize == lgw) & (dut.arburst == BURST_INCR))
            m.d.comb += claim(dut.arlen < self._max_burst, dut.araddr[:lgw] == 0,
                              dut.araddr[:exact_log2(BOUNDARY_BYTES)] + (blen << lgw) <=
                              BOUNDARY_BYTES)

        # -- the slave: burst lengths in flight, in order ---------------------------------
        lens = [Signal(9, name=f"slave_len{i}") for i in range(N + 1)]
        n_fly = Signal(range(N + 2))
        beat = Signal(9)
        rlast = Signal()
        m.d.comb += [rlast.eq(beat + 1 == lens[0]), dut.rlast.eq(rlast),
                     dut.rvalid.eq(self.rvalid), dut.rdata.eq(self.rdata),
                     dut.rresp.eq(self.rresp)]
        m.d.comb += Assume(~self.rvalid | (n_fly != 0))
        hold_until_ready(m, valid=self.rvalid, ready=dut.rready,
                         payload=[self.rdata, self.rresp], kind="assume", name="r")
        r_fire = self.rvalid & dut.rready
        r_done = r_fire & rlast
        with m.If(r_fire):
            m.d.sync += beat.eq(beat + 1)
        with m.If(r_done):
            m.d.sync += beat.eq(0)
            for i in range(N):
                m.d.sync += lens[i].eq(lens[i + 1])
        with m.If(ar_fire):
            for i in range(N + 1):
                slot = n_fly - r_done
                with m.If(slot == i):
                    m.d.sync += lens[i].eq(blen)
        m.d.sync += n_fly.eq(n_fly + ar_fire - r_done)
        m.d.comb += claim(n_fly <= N)

        # -- the bursts a command asks for -------------------------------------------------
        active = Signal()            # bursts of the command still to come
        tainted = Signal()           # an abort since the last command
        row = Signal(aw)
        pos = Signal(range(self._max_beats + 1))
        rows_left = Signal(range(self._max_rows + 1))
        beats = Signal(range(self._max_beats + 1))
        stride = Signal(aw)
        with m.If(cmd.valid & cmd.ready):
            p = cmd.payload
            m.d.sync += [active.eq((p.beats != 0) & (p.rows != 0)), tainted.eq(0),
                         row.eq(p.addr), pos.eq(0), rows_left.eq(p.rows),
                         beats.eq(p.beats), stride.eq(p.stride)]
        with m.If(self.abort):
            m.d.sync += tainted.eq(1)
        with m.If(ar_fire & ~tainted):
            m.d.comb += claim(active, dut.araddr == (row + (pos << lgw))[:aw],
                              pos + blen <= beats)
            with m.If(pos + blen == beats):
                m.d.sync += [row.eq(row + stride), pos.eq(0), rows_left.eq(rows_left - 1)]
                with m.If(rows_left == 1):
                    m.d.sync += active.eq(0)
            with m.Else():
                m.d.sync += pos.eq(pos + blen)
        with m.If(dut.idle):
            m.d.comb += claim((n_fly == 0) & (~active | tainted))

        # -- data out ------------------------------------------------------------------------
        d_fire = dut.data.valid & dut.data.ready
        m.d.comb += claim(d_fire == (r_fire & ~self.abort))
        with m.If(dut.data.valid):
            m.d.comb += claim(dut.data.payload == self.rdata)

        # -- not vacuous -------------------------------------------------------------------
        row_done = Signal()
        with m.If(ar_fire & ~tainted & (pos + blen == beats) & (rows_left == 1)):
            m.d.sync += row_done.eq(1)
        m.d.comb += [
            Cover(r_done & (lens[0] == self._max_burst)),
            Cover(n_fly == N),
            Cover(arvalid & (dut.araddr[:exact_log2(BOUNDARY_BYTES)] + (blen << lgw) ==
                             BOUNDARY_BYTES) & (blen < self._max_burst) & ~tainted),
            Cover(row_done & dut.idle & (rows_left == 0) & (beats > self._max_burst)),
        ]
        return m
