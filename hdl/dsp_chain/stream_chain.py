"""The streamed engine's chain: one row's dot products on the lane engine of a PE kind.

One operand beat is one *step* of a record: ``lanes`` decoded weights (INT8 values), their
N:M indices, the activation window and the step's value width ``vbits``. The chain picks
each lane's activation (the sparse mux of :func:`~hdl.dsp_chain.sparse.select_activation`),
then holds the step for the kind's :meth:`~hdl.pe.stream_lanes.LaneEngine.cycles`
``(vbits)`` phases (a ``dsp`` chain one cycle for a step of weights up to 4 bits and two
for wider ones, a ``bitserial`` one a cycle per radix-4 digit, a ``lut`` one a cycle per
bit-plane) and folds the phases' partial sums into the step's exact dot product. The step
flagged ``group_end`` (or ``last``) closes the record: the sum of its steps leaves on
``o`` and the sum restarts from zero::

    i --> sparse mux --> [step register, phase counter] --> [operand register] --> lanes
                                                                         |  (delay)
    o <-- [record sum] <-- [fold: beat << radix_shift + y, >> result_shift] <-+

The whole pipeline stalls while ``o`` holds a sum that is not taken.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from airfoil.sparsity import NM_PATTERNS, SparsityMode

from ..pe.kinds import pe_kind
from ..pe.stream_lanes import PHASE_BITS, VALUE_BITS_SHAPE
from .sparse import chain_window, index_bits, select_activation

__all__ = ["StreamChain", "stream_operand_layout", "stream_psum_layout"]


def stream_operand_layout(*, lanes: int, act_bits: int, window: int, index_bits: int
                          ) -> data.StructLayout:
    """Layout of one step of :class:`StreamChain`."""
    return data.StructLayout({
        "mode": SparsityMode,
        "group_end": 1,
        "last": 1,
        "vbits": VALUE_BITS_SHAPE,
        "w": data.ArrayLayout(signed(8), lanes),
        "idx": data.ArrayLayout(unsigned(index_bits), lanes),
        "act": data.ArrayLayout(signed(act_bits), window),
    })


def stream_psum_layout(acc_bits: int) -> data.StructLayout:
    """Layout of one result of :class:`StreamChain`: a record's sum and ``last``."""
    return data.StructLayout({"psum": signed(acc_bits), "last": 1})


def _check(kind, lanes, patterns) -> tuple:
    if not isinstance(lanes, int) or lanes < 2 or lanes % 2:
        raise ValueError(f"Lane count must be an even integer >= 2, not {lanes!r}")
    nm = [p for p in patterns if p in NM_PATTERNS]
    if nm and not kind.nm_sparsity:
        raise ValueError(f"The {kind.name} PE cannot run N:M patterns ({', '.join(nm)})")
    for p in nm:
        if lanes % NM_PATTERNS[p][0]:
            raise ValueError(f"Lane count {lanes} is not a multiple of n for pattern {p}")
    return patterns


class StreamChain(wiring.Component):
    """Dot products of one row of streamed steps on the lanes of a PE kind.

    Parameters
    ----------
    kind : str
        The PE kind (:data:`hdl.pe.kinds.KINDS`).
    lanes : int
        Weights per step (even; a multiple of every pattern's ``n``).
    patterns : tuple of str
        Sparsity patterns built in; N:M ones only on a kind that runs them
        (:attr:`~hdl.pe.kinds.PeKind.nm_sparsity`).
    act_bits, acc_bits : int
        Activation width (8) and record sum width (wraps).

    Members
    -------
    i : In(stream.Signature(stream_operand_layout(...)))
    o : Out(stream.Signature(stream_psum_layout(acc_bits)))
        One per ``group_end`` or ``last`` step.
    """

    def __init__(self, *, kind: str, lanes: int, patterns=("dense",), act_bits: int = 8,
                 acc_bits: int = 32):
        try:
            self._kind = pe_kind(kind)
            patterns = _check(self._kind, lanes, tuple(patterns))
        except ValueError:
            self._MustUse__silence = True    # never built: no "unused" warning
            raise
        self._lanes, self._ab, self._acc = lanes, act_bits, acc_bits
        self._patterns = patterns
        self._window = chain_window(lanes, patterns)
        self._ib = index_bits(patterns)
        super().__init__({
            "i": In(stream.Signature(stream_operand_layout(
                lanes=lanes, act_bits=act_bits, window=self._window, index_bits=self._ib))),
            "o": Out(stream.Signature(stream_psum_layout(acc_bits))),
        })

    @property
    def kind(self):
        return self._kind

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def window(self) -> int:
        """Activations per step."""
        return self._window

    @property
    def index_bits(self) -> int:
        return self._ib

    @property
    def delay(self) -> int:
        """Cycles from the handshake of a one-phase ``last`` step to its sum being valid."""
        return 3 + self._kind.lanes.DELAY

    def elaborate(self, platform):
        m = Module()
        L, ab = self._lanes, self._ab
        Lanes = self._kind.lanes
        m.submodules.lanes = eng = Lanes(lanes=L, act_bits=ab)
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), eng.en.eq(en)]
        p = self.i.payload

        # Step register and phase counter: a step is held for its phases. The lanes'
        # activations are picked (and prepared for the engine) on the way in, from the
        # window every chain of a slice shares, so synthesis can share that logic.
        sel = [select_activation(m, p, j, self._patterns, ab) for j in range(L)]
        held = data.StructLayout({"group_end": 1, "last": 1, "vbits": VALUE_BITS_SHAPE,
                                  "w": p.w.shape(), "a": Lanes.prepared_layout(L, ab)})
        cur = Signal(held)
        busy = Signal()
        phase = Signal(PHASE_BITS)
        nph = Lanes.phases(m, cur.vbits)
        last_ph = Signal()
        m.d.comb += [last_ph.eq(phase == nph - 1),
                     self.i.ready.eq(en & (~busy | last_ph))]
        with m.If(en):
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += [cur.group_end.eq(p.group_end), cur.last.eq(p.last),
                             cur.vbits.eq(p.vbits), cur.w.eq(p.w),
                             cur.a.eq(Lanes.prepare(m, sel, L, ab)),
                             busy.eq(1), phase.eq(0)]
            with m.Elif(busy):
                m.d.sync += [busy.eq(~last_ph), phase.eq(Mux(last_ph, 0, phase + 1))]

        # Operand register of the engine, and the control stages beside the engine.
        ctl = data.StructLayout({"valid": 1, "first": 1, "last_phase": 1, "emit": 1,
                                 "last": 1})
        depth = 1 + Lanes.DELAY
        stages = [Signal(ctl, name=f"ctl{s}") for s in range(depth)]
        w1, a1 = Signal.like(cur.w), Signal.like(cur.a)
        vb1, ph1, lp1 = Signal.like(cur.vbits), Signal.like(phase), Signal()
        with m.If(en):
            m.d.sync += [
                stages[0].valid.eq(busy), stages[0].first.eq(phase == 0),
                stages[0].last_phase.eq(last_ph),
                stages[0].emit.eq(last_ph & (cur.group_end | cur.last)),
                stages[0].last.eq(cur.last),
                w1.eq(cur.w), a1.eq(cur.a), vb1.eq(cur.vbits), ph1.eq(phase),
                lp1.eq(last_ph),
            ]
            m.d.sync += [stages[s].eq(stages[s - 1]) for s in range(1, depth)]
        m.d.comb += [eng.w.eq(w1), eng.a.eq(a1), eng.vbits.eq(vb1), eng.phase.eq(ph1),
                     eng.last_phase.eq(lp1)]

        # Fold the phases, sum the steps of a record.
        c = stages[-1]
        max_ph = Lanes.cycles(Lanes.max_value_bits)
        beat = Signal(signed(len(eng.y) + Lanes.radix_shift * max_ph + 1))
        beat_next = Signal.like(beat)
        m.d.comb += beat_next.eq(Mux(c.first, 0, beat << Lanes.radix_shift) + eng.y)
        step = Signal(signed(len(beat) - Lanes.result_shift))
        m.d.comb += step.eq(beat_next >> Lanes.result_shift)
        total = Signal(signed(self._acc))
        with m.If(en):
            m.d.sync += self.o.valid.eq(0)
            with m.If(c.valid):
                m.d.sync += beat.eq(beat_next)
                with m.If(c.last_phase):
                    with m.If(c.emit):
                        m.d.sync += [self.o.valid.eq(1), self.o.payload.last.eq(c.last),
                                     self.o.payload.psum.eq(total + step), total.eq(0)]
                    with m.Else():
                        m.d.sync += total.eq(total + step)
        return m
