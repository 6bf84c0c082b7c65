"""Harness of the STORE unit's AXI4 write channels (:class:`~hdl.core.store.StoreUnit`).

The unit's queue head, ``abort``, the data bases, the release's ``ready`` and the
AW/W/B inputs are free; the queue head holds ``ST`` instructions with a small count and
size (so that the solver's multipliers stay small), the data base is word-aligned, the buffer read port returns a free
word a cycle after ``en`` and holds it while ``en`` is low, and the slave raises BVALID
only for a burst whose last W beat it has taken and holds it until BREADY. Asserted:

* AWVALID and WVALID, once raised, stay raised with their payload stable until ready;
* every burst is legal: AWLEN < ``max_burst``, AWSIZE the word, INCR, all strobes, a
  word-aligned address, no 4 KiB boundary crossed;
* every burst carries exactly AWLEN + 1 W beats, WLAST on the last and only there, and
  no W beat goes out before its burst's AW is accepted;
* one burst at a time: no AW while a burst's beats or response are outstanding;
* BREADY only while a response is owed (the last W beat sent, its B not yet taken).
"""

from __future__ import annotations

from amaranth.hdl import Assert, Assume, Cover, Module, ResetSignal, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In

from airfoil import isa
from hdl.core.axi import BOUNDARY_BYTES, BURST_INCR
from hdl.core.buffers import BufferGeometry
from hdl.core.fetch import ENTRY_LAYOUT
from hdl.core.store import StoreUnit

from .rules import hold_until_ready

__all__ = ["StoreHarness", "MUTATIONS"]

#: Deliberate faults that the checks must catch (see ``mutation``).
MUTATIONS = ("early_wlast",)


class StoreHarness(wiring.Component):
    """Check a :class:`StoreUnit` (see the module docstring).

    Parameters
    ----------
    max_burst : int
        The unit's longest burst.
    max_count, max_words : int
        Largest row count and row size (in memory words) of the ``ST`` sent.
    abort : bool
        Leave ``abort`` free (else it stays low).
    scope : str
        ``"all"``: every property; ``"handshake"``: the AW and W handshake rules and
        the fixed AWSIZE/AWBURST/WSTRB only, which hold by k-induction (the others need
        the unit's internal state, so they are bounded checks).
    mutation : str, optional
        ``"early_wlast"``: the slave sees WLAST also on a free cycle (the checks must fail).
    """

    def __init__(self, *, max_burst=2, max_count=2, max_words=3, abort=True, scope="all",
                 mutation=None):
        if scope not in ("all", "handshake"):
            raise ValueError(f"scope must be 'all' or 'handshake', not {scope!r}")
        self._scope = scope
        if mutation not in (None, *MUTATIONS):
            raise ValueError(f"mutation must be one of {MUTATIONS}, not {mutation!r}")
        self._geo = BufferGeometry(word_bits=64, act_bytes=64, wgt_bytes=64, out_bytes=64,
                                   wgt_bits=64, kv_bytes=64, aux_bytes=64)
        self._dut = StoreUnit(geometry=self._geo, channels=1, max_burst=max_burst)
        self._max_burst, self._max_count, self._max_words = max_burst, max_count, max_words
        self._abort, self._mutation = abort, mutation
        super().__init__({
            "q": In(stream.Signature(ENTRY_LAYOUT)), "rel_ready": In(1),
            "abort": In(1), "data_base": In(64), "rd_word": In(64), "glitch": In(1),
            "awready": In(1), "wready": In(1), "bvalid": In(1), "bresp": In(2),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self._dut
        m.d.comb += Assume(~ResetSignal())
        wb = self._geo.word_bytes
        lgw = self._geo.lg_word_bytes

        def claim(*conds):
            """Assert ``conds`` (in the full scope only)."""
            return [Assert(c) for c in conds] if self._scope == "all" else []

        # -- the queue head: ST of a few small rows ------------------------------------------
        q = self.q
        wiring.connect(m, wiring.flipped(q), dut.q)
        hold_until_ready(m, valid=q.valid, ready=q.ready, payload=q.payload, kind="assume",
                         name="q")
        mem = q.payload.instr.body.mem
        with m.If(q.valid):
            m.d.comb += Assume((mem.count_reg == 0) & (mem.row_reg == 0) &
                               (mem.count <= self._max_count) &
                               (mem.nbytes <= self._max_words * wb))
        # the data base is a word address (the unit adds it unchecked)
        m.d.comb += Assume(self.data_base[:lgw] == 0)
        m.d.comb += [dut.rel.ready.eq(self.rel_ready), dut.data_base[0].eq(self.data_base),
                     dut.abort.eq(self.abort if self._abort else 0)]
        # the buffer read port: a word a cycle after en, held while en is low
        with m.If(dut.rd.en):
            m.d.sync += dut.rd.data.eq(self.rd_word)

        # -- AW ------------------------------------------------------------------------------
        aw_fire = dut.awvalid & self.awready
        m.d.comb += dut.awready.eq(self.awready)
        hold_until_ready(m, valid=dut.awvalid, ready=self.awready,
                         payload=[dut.awaddr, dut.awlen, dut.awsize, dut.awburst],
                         kind="assert", name="aw")
        with m.If(dut.awvalid):
            m.d.comb += Assert((dut.awsize == lgw) & (dut.awburst == BURST_INCR))
            m.d.comb += claim(dut.awlen < self._max_burst, dut.awaddr[:lgw] == 0,
                              dut.awaddr[:12] + ((dut.awlen + 1) << lgw) <= BOUNDARY_BYTES)

        # -- W: the beats of the accepted burst ------------------------------------------------
        wlast = dut.wlast
        if self._mutation == "early_wlast":
            wlast = dut.wlast | self.glitch
        m.d.comb += dut.wready.eq(self.wready)
        w_fire = dut.wvalid & self.wready
        hold_until_ready(m, valid=dut.wvalid, ready=self.wready,
                         payload=[dut.wdata, dut.wstrb, wlast], kind="assert", name="w")
        w_owed = Signal(9)          # beats of the accepted AW still to come
        b_owed = Signal()           # the burst's beats are sent, its response not yet taken
        with m.If(dut.wvalid):
            m.d.comb += Assert(dut.wstrb == (1 << wb) - 1)
            m.d.comb += claim(w_owed != 0, wlast == (w_owed == 1))
        with m.If(dut.awvalid):
            m.d.comb += claim((w_owed == 0) & ~b_owed)
        with m.If(aw_fire):
            m.d.sync += w_owed.eq(dut.awlen + 1)
        with m.If(w_fire):
            m.d.sync += w_owed.eq(w_owed - 1)
            with m.If(w_owed == 1):
                m.d.sync += b_owed.eq(1)

        # -- B -----------------------------------------------------------------------------------
        m.d.comb += [dut.bvalid.eq(self.bvalid), dut.bresp.eq(self.bresp)]
        m.d.comb += Assume(~self.bvalid | b_owed)
        hold_until_ready(m, valid=self.bvalid, ready=dut.bready, payload=self.bresp,
                         kind="assume", name="b")
        with m.If(dut.bready):
            m.d.comb += claim(b_owed)
        b_fire = self.bvalid & dut.bready
        with m.If(b_fire):
            m.d.sync += b_owed.eq(0)

        # -- not vacuous -------------------------------------------------------------------------
        bursts = Signal(range(4))
        with m.If(b_fire & (self.bresp == 0) & (bursts != 3)):
            m.d.sync += bursts.eq(bursts + 1)
        long_burst = Signal()
        with m.If(aw_fire):
            m.d.sync += long_burst.eq(dut.awlen + 1 == self._max_burst)
        m.d.comb += [
            Cover(b_fire & long_burst),
            Cover(dut.rel.valid & dut.rel.ready & (bursts == 3)),
            Cover(dut.awvalid & ~self.awready),
        ]
        return m
