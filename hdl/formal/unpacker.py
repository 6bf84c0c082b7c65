"""Harness of the unpacker (:class:`~hdl.decode_unit.unpacker.Unpacker`): no beat lost,
duplicated or reordered under any backpressure.

The harness feeds a fixed packed stream (INT4 records of a small geometry, built by
:func:`airfoil.packing.pack_records` from weights that differ per record) word by word;
when a word is offered (``words.valid``) and whether the beats are taken
(``beats.ready``) are free in every cycle. Asserted:

* ``beats.valid`` once raised stays raised with a stable payload until ``ready``;
* the ``k``-th beat taken is exactly the ``k``-th beat of
  :func:`airfoil.packing.expected_beats` (every field), and no beat follows the last one;
* no beat is lost: once every word has been taken and the beats have been taken for
  ``drain`` cycles in a row, all the expected beats have come out.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Assert, Assume, Const, Cover, Module, ResetSignal, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from airfoil.packing import (Record, RecordTag, StreamGeometry, beat_value, expected_beats,
                             pack_records)
from hdl.decode_unit.unpacker import Unpacker

from .rules import hold_until_ready

__all__ = ["UnpackerHarness", "MUTATIONS", "stream_words"]

#: Deliberate faults that the checks must catch (see ``mutation``).
MUTATIONS = ("repeat_word",)


def stream_words(geom: StreamGeometry, records: int) -> tuple[list, list]:
    """The words of a stream of ``records`` INT4 records (32 weights a row) and its beats."""
    recs = []
    for r in range(records):
        q = (np.arange(32 * geom.rows).reshape(geom.rows, 32) * (r + 3)) % 15 - 7
        recs.append(Record.make(RecordTag.INT4, q, [0.5 + r] * geom.rows))
    raw = pack_records(geom, recs)
    wb = geom.word_bits // 8
    words = [int.from_bytes(raw[i:i + wb], "little") for i in range(0, len(raw), wb)]
    return words, [beat_value(geom, b) for b in expected_beats(geom, raw)]


class UnpackerHarness(wiring.Component):
    """Check an INT4 :class:`Unpacker` on a fixed stream (see the module docstring).

    Parameters
    ----------
    records : int
        Records in the stream.
    drain : int
        Cycles of taken beats after the last word by which every beat must be out.
    mutation : str, optional
        ``"repeat_word"``: the environment may offer a word again after it was taken (a
        duplicated input word; the checks must fail).
    """

    def __init__(self, *, records=2, drain=8, mutation=None):
        if mutation not in (None, *MUTATIONS):
            raise ValueError(f"mutation must be one of {MUTATIONS}, not {mutation!r}")
        self._geom = StreamGeometry(word_bits=64, lanes=8, rows=1)
        self._words, self._beats = stream_words(self._geom, records)
        self._drain, self._mutation = drain, mutation
        super().__init__({"offer": In(1), "take": In(1), "glitch": In(1)})

    @property
    def words(self) -> int:
        """Words in the stream."""
        return len(self._words)

    @property
    def beats(self) -> int:
        """Beats the stream decodes to."""
        return len(self._beats)

    def elaborate(self, platform):
        m = Module()
        g = self._geom
        m.submodules.dut = dut = Unpacker(geometry=g, tags=["int4"])
        m.d.comb += Assume(~ResetSignal())
        NW, NB = len(self._words), len(self._beats)

        # -- the words, in order, offered when the environment likes -------------------------
        w_idx = Signal(range(NW + 1))
        rom = Array(Const(w, g.word_bits) for w in self._words + [0])
        m.d.comb += [dut.words.valid.eq(self.offer & (w_idx != NW)),
                     dut.words.payload.eq(rom[w_idx])]
        with m.If(dut.words.valid & dut.words.ready):
            if self._mutation == "repeat_word":
                m.d.sync += w_idx.eq(w_idx + ~self.glitch)
            else:
                m.d.sync += w_idx.eq(w_idx + 1)

        # -- the beats, checked one by one against the golden model ---------------------------
        beats = dut.beats
        m.d.comb += beats.ready.eq(self.take)
        hold_until_ready(m, valid=beats.valid, ready=beats.ready, payload=beats.payload,
                         kind="assert", name="beat")
        b_idx = Signal(range(NB + 1))
        want = Array(Const(b, len(beats.payload.as_value())) for b in self._beats + [0])
        with m.If(beats.valid):
            m.d.comb += [Assert(b_idx != NB),
                         Assert(beats.payload.as_value() == want[b_idx])]
        with m.If(beats.valid & beats.ready):
            m.d.sync += b_idx.eq(b_idx + 1)

        # -- nothing lost ----------------------------------------------------------------------
        quiet = Signal(range(self._drain + 1))
        with m.If((w_idx == NW) & self.take):
            with m.If(quiet != self._drain):
                m.d.sync += quiet.eq(quiet + 1)
        with m.Else():
            m.d.sync += quiet.eq(0)
        with m.If(quiet == self._drain):
            m.d.comb += Assert(b_idx == NB)

        # -- not vacuous: the whole stream passes, and a beat waits on backpressure -----------
        m.d.comb += [Cover(b_idx == NB),
                     Cover(beats.valid & ~beats.ready & (b_idx == NB - 1))]
        return m
