"""The MATRIX queue of a core with a decode unit: WGT tiles and streamed weights.

::

    queue --wfmt != STREAM--> MatrixUnit   (WGT tiles, MV/MM)   --+-- act_rd, out_wr
          --wfmt == STREAM--> StreamMatrix (LD WSTREAM words)  --+    (one at a time)
                              ^-- wstream[c] (from the LOAD unit, memory channel c)

Both engines share the ACT and AUX read ports and the OUT write port, and the streamed
engine reads the tile engine's accumulator memory (a streamed ``MV`` with ``acc_init =
0`` continues what a bias tile's ``MV`` left). The front hands an
instruction to one engine only while the other is idle with no release pending, so the
MATRIX queue keeps program order: results, releases and errors come out in the order the
instructions were queued. ``wstream`` is an array of one word stream per slice of the
streamed engine (:attr:`StreamMatrix.slices`, one per memory channel): ``wstream[c]``
feeds slice ``c`` (``words[c]``).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from airfoil import isa

from .matrix import MatrixUnit
from .stream_mv import StreamMatrix

__all__ = ["MatrixFront"]


class MatrixFront(wiring.Component):
    """MATRIX unit with both engines; the members of :class:`MatrixUnit` plus ``wstream``
    (``In(stream.Signature(word_bits)).array(slices)``) and the streamed engine's
    ``starved``/``starved_pc``.

    Parameters
    ----------
    tiles : MatrixUnit
    streamed : StreamMatrix
        Built for the same memory word and ACT/OUT buffers.
    """

    def __init__(self, *, tiles: MatrixUnit, streamed: StreamMatrix):
        if not isinstance(tiles, MatrixUnit) or not isinstance(streamed, StreamMatrix):
            raise TypeError(f"MatrixFront takes a MatrixUnit and a StreamMatrix, not "
                            f"{tiles!r} and {streamed!r}")
        shared = ("act_rd", "out_wr") + tuple(n for n in ("aux_rd",)
                                             if n in streamed.signature.members)
        for name in shared:
            a, b = tiles.signature.members[name], streamed.signature.members[name]
            if a != b:
                raise ValueError(f"MatrixFront: the engines' {name} ports differ ({a} and {b})")
        if "acc_rd" in streamed.signature.members and \
                streamed.signature.members["acc_rd"].signature.flip().members != \
                tiles.signature.members["acc_peek"].signature.members:
            raise ValueError("MatrixFront: the streamed engine's acc_rd does not fit the tile "
                             "engine's accumulator memory")
        self._shared = shared
        self._tiles, self._streamed = tiles, streamed
        members = {n: v for n, v in tiles.signature.members.items() if n != "acc_peek"}
        members["wstream"] = In(stream.Signature(unsigned(streamed.geometry.word_bits))
                                ).array(streamed.slices)
        members["starved"] = Out(1)
        members["starved_pc"] = Out(32)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.tiles = t = self._tiles
        m.submodules.streamed = s = self._streamed
        engines = (t, s)

        is_stream = Signal()
        m.d.comb += is_stream.eq(self.q.payload.instr.body.matrix.wfmt.as_value() ==
                                 isa.WeightFormat.STREAM.value)
        free = [Signal(name="tiles_free"), Signal(name="stream_free")]
        for e, f in zip(engines, free):
            m.d.comb += f.eq(e.idle & ~e.rel.valid)
        # Queue head to the engine it names, once the other one is done.
        for i, e in enumerate(engines):
            want = is_stream if i else ~is_stream
            m.d.comb += [e.q.payload.eq(self.q.payload),
                         e.q.valid.eq(self.q.valid & want & free[1 - i])]
        m.d.comb += self.q.ready.eq(Mux(is_stream, s.q.ready & free[0], t.q.ready & free[1]))

        # The engine that owns the shared ports: the one that took the last instruction.
        sel = Signal()
        sel_now = Signal()
        took = self.q.valid & self.q.ready
        with m.If(took):
            m.d.sync += sel.eq(is_stream)
        m.d.comb += sel_now.eq(Mux(took, is_stream, sel))
        for name in self._shared:
            port, tp, sp = getattr(self, name), getattr(t, name), getattr(s, name)
            if name == "out_wr":
                for field in ("addr", "data", "en"):
                    m.d.comb += getattr(port, field).eq(
                        Mux(sel_now, getattr(sp, field), getattr(tp, field)))
            else:
                m.d.comb += [port.addr.eq(Mux(sel_now, sp.addr, tp.addr)),
                             port.en.eq(Mux(sel_now, sp.en, tp.en)),
                             tp.data.eq(port.data), sp.data.eq(port.data)]
        for name in ("wgt_rd", "sb_rd", "aux_rd"):
            if name not in self._shared:
                wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(t, name))
        # The streamed engine continues the tile engine's accumulators (acc_init = 0),
        # reading them only while it owns the shared ports.
        peek = t.acc_peek
        if "acc_rd" in s.signature.members:
            m.d.comb += [peek.addr.eq(s.acc_rd.addr), peek.en.eq(s.acc_rd.en & sel_now),
                         s.acc_rd.data.eq(peek.data)]
        for c in range(self._streamed.slices):
            wiring.connect(m, wiring.flipped(self.wstream[c]), s.words[c])

        # Releases (one engine at a time), errors, idle.
        m.d.comb += [self.rel.valid.eq(t.rel.valid | s.rel.valid),
                     self.rel.payload.eq(Mux(s.rel.valid, s.rel.payload, t.rel.payload)),
                     t.rel.ready.eq(self.rel.ready), s.rel.ready.eq(self.rel.ready),
                     self.err.eq(t.err | s.err),
                     self.err_code.eq(Mux(t.err, t.err_code, s.err_code)),
                     self.err_pc.eq(Mux(t.err, t.err_pc, s.err_pc)),
                     self.idle.eq(t.idle & s.idle),
                     self.starved.eq(s.starved), self.starved_pc.eq(s.starved_pc)]
        return m
