"""Lane engines of the streamed chain, one per PE kind.

The streamed engine's chain (:class:`hdl.dsp_chain.stream_chain.StreamChain`) holds one
step (``lanes`` decoded weights of one record, INT8 values, and their activations) for
:meth:`cycles` cycles, a number that depends on the record's format through the width of
its decoded values (``value_bits``, :func:`hdl.pe.kinds.tag_value_bits`). In each of
those *phases* the lane engine turns the step into a partial sum ``y``; the chain folds
the phases most significant first (``beat = beat << radix_shift + y``) and shifts the
step's result right by ``result_shift`` (exact). So a kind is its cycles per step, its
fold and its datapath:

* :class:`DspLanes` (``dsp``): ``lanes / 2`` :class:`~hdl.pe.dsp.DspDual` multipliers.
  Weights of at most 4 bits go two to a DSP48E2 (one phase: two MACs per DSP per
  cycle); wider ones one at a time (two phases).
* :class:`BitSerialLanes` (``bitserial``): one radix-4 Booth digit of every weight per
  phase, ``ceil(value_bits / 2)`` phases (INT2 one, INT4 two, INT8 four); each lane term
  is ``0``, ``+-x`` or ``+-2x``: shifts and adds, no multiplier.
* :class:`LutLanes` (``lut``): T-MAC table lookup, one two's complement bit-plane per
  phase (INT2 two phases, INT4 four); tables of ``g`` activations built once per step
  from the activations the chain is offered (:meth:`LutLanes.prepare`, identical in every
  chain of a slice so that synthesis shares them). Weights of at most 4 bits only, dense
  steps only (a shared table cannot serve per-row N:M indices).

Every engine registers its inputs under the clock enable ``en`` and states its latency as
:attr:`delay`.
"""

from __future__ import annotations

from amaranth.hdl import C, Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .bitserial import tree_sum
from .dsp import DspDual
from .lut import _build_tables, entry_bits, lut_table_layout

__all__ = ["LaneEngine", "DspLanes", "BitSerialLanes", "LutLanes", "PHASE_BITS",
           "VALUE_BITS_SHAPE"]

#: Width of the phase counter (at most 8 phases: INT8 on one bit-plane per cycle).
PHASE_BITS = 3
#: Shape of the value-width field of a step (1..8).
VALUE_BITS_SHAPE = unsigned(4)


class LaneEngine(wiring.Component):
    """Common boundary of the lane engines.

    Members
    -------
    en : In(1)
        Clock enable; the pipeline holds while it is low.
    w : In(ArrayLayout(signed(8), lanes))
        The step's decoded weights.
    a : In(prepared_layout)
        The step's activations as :meth:`prepare` shaped them.
    vbits : In(VALUE_BITS_SHAPE)
        Value width of the step's weights.
    phase : In(PHASE_BITS)
        The phase being issued (0 first).
    last_phase : In(1)
        This is the step's last phase.
    y : Out(signed(y_bits))
        The phase's partial sum, :attr:`delay` enabled cycles later.
    """

    #: ``beat = beat << radix_shift + y`` between phases, ``beat >> result_shift`` at the end.
    radix_shift = 0
    result_shift = 0
    #: Whether N:M steps (each lane its own activation) can run on this engine.
    sparse = True
    #: Widest decoded weight value the engine multiplies.
    max_value_bits = 8
    #: Enabled cycles from the engine's inputs to ``y``.
    DELAY = 1

    def __init__(self, *, lanes: int, act_bits: int = 8):
        self._lanes, self._ab = lanes, act_bits
        super().__init__({
            "en": In(1),
            "w": In(data.ArrayLayout(signed(8), lanes)),
            "a": In(self.prepared_layout(lanes, act_bits)),
            "vbits": In(VALUE_BITS_SHAPE),
            "phase": In(PHASE_BITS),
            "last_phase": In(1),
            "y": Out(signed(self.y_bits(lanes, act_bits))),
        })

    @staticmethod
    def cycles(value_bits: int) -> int:
        """Phases of one step whose weights are ``value_bits``-bit values."""
        raise NotImplementedError

    @classmethod
    def phases(cls, m, vbits) -> Signal:
        """The phase count of a step (combinational), from :meth:`cycles`."""
        n = Signal(PHASE_BITS + 1, name="phases")
        with m.Switch(vbits):
            for b in range(1, cls.max_value_bits + 1):
                with m.Case(b):
                    m.d.comb += n.eq(cls.cycles(b))
            with m.Default():
                m.d.comb += n.eq(cls.cycles(cls.max_value_bits))
        return n

    @staticmethod
    def prepared_layout(lanes: int, act_bits: int):
        """What a chain registers of a step's activations (the lanes' own by default)."""
        return data.ArrayLayout(signed(act_bits), lanes)

    @classmethod
    def prepare(cls, m, acts, lanes: int, act_bits: int):
        """Value of :meth:`prepared_layout` from the lanes' activations (combinational)."""
        return Cat(*acts)

    @staticmethod
    def y_bits(lanes: int, act_bits: int) -> int:
        return 8 + act_bits + 2 + max(1, (lanes - 1).bit_length())

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def delay(self) -> int:
        return self.DELAY

    @property
    def multipliers(self) -> int:
        """Hardware multipliers (DSP48E2 slices expected)."""
        return 0


class DspLanes(LaneEngine):
    """``dsp``: lane pairs on :class:`~hdl.pe.dsp.DspDual`, narrow weights two per DSP."""

    @staticmethod
    def cycles(value_bits: int) -> int:
        return 1 if value_bits <= DspDual.NARROW_BITS else 2

    DELAY = DspDual.DELAY + 1          # and the registered lane sum

    @property
    def multipliers(self) -> int:
        return self._lanes // 2

    def elaborate(self, platform):
        m = Module()
        pair = Signal()
        m.d.comb += pair.eq(self.vbits <= DspDual.NARROW_BITS)
        ys = []
        for j in range(self._lanes // 2):
            mul = m.submodules[f"mul{j}"] = DspDual()
            m.d.comb += [mul.en.eq(self.en), mul.pair.eq(pair), mul.sel.eq(self.phase[0]),
                         mul.w[0].eq(self.w[2 * j]), mul.w[1].eq(self.w[2 * j + 1]),
                         mul.a[0].eq(self.a[2 * j]), mul.a[1].eq(self.a[2 * j + 1])]
            ys.append(mul.y)
        with m.If(self.en):
            m.d.sync += self.y.eq(tree_sum(ys))
        return m


class BitSerialLanes(LaneEngine):
    """``bitserial``: one radix-4 Booth digit of every lane's weight per phase."""

    radix_shift = 2

    @staticmethod
    def cycles(value_bits: int) -> int:
        return -(-value_bits // 2)

    def elaborate(self, platform):
        m = Module()
        n = self.phases(m, self.vbits)
        i = Signal(PHASE_BITS)                 # digit index, most significant first
        m.d.comb += i.eq(n - 1 - self.phase)
        terms = []
        for j in range(self._lanes):
            w = Cat(C(0, 1), self.w[j])     # w[-1] = 0 below the lowest digit
            b_lo, b_mid, b_hi = (Array(w[2 * d + t] for d in range(4))[i] for t in range(3))
            x = self.a[j]
            t = Signal(signed(self._ab + 2), name=f"t{j}")
            with m.Switch(Cat(b_lo, b_mid, b_hi)):
                with m.Case(0b001, 0b010):
                    m.d.comb += t.eq(x)
                with m.Case(0b011):
                    m.d.comb += t.eq(x << 1)
                with m.Case(0b100):
                    m.d.comb += t.eq(-(x << 1))
                with m.Case(0b101, 0b110):
                    m.d.comb += t.eq(-x)
            terms.append(t)
        with m.If(self.en):
            m.d.sync += self.y.eq(tree_sum(terms))
        return m


class LutLanes(LaneEngine):
    """``lut``: symmetrized table lookups, one two's complement bit-plane per phase."""

    radix_shift = 1
    result_shift = 1          # the planes sum to 2 * the dot product
    sparse = False
    max_value_bits = 4
    #: Activations per table.
    G = 4

    @staticmethod
    def cycles(value_bits: int) -> int:
        return max(2, value_bits)

    @staticmethod
    def prepared_layout(lanes: int, act_bits: int):
        return lut_table_layout(lanes, LutLanes.G)

    @classmethod
    def prepare(cls, m, acts, lanes: int, act_bits: int):
        tabs = Signal(lut_table_layout(lanes, cls.G))
        _build_tables(m, list(acts), cls.G, tabs)
        return tabs.as_value()

    @staticmethod
    def y_bits(lanes: int, act_bits: int) -> int:
        return entry_bits(LutLanes.G) + max(1, (lanes - 1).bit_length()) + 3

    def elaborate(self, platform):
        m = Module()
        g, L = self.G, self._lanes
        n = self.phases(m, self.vbits)
        plane = Signal(PHASE_BITS)
        top = Signal()                   # the top plane counts -2**b: its index inverted
        m.d.comb += [plane.eq(n - 1 - self.phase), top.eq(self.phase == 0)]
        vals, negs = [], []
        eb = entry_bits(g)
        for t in range(L // g):
            pat = Signal(g, name=f"pat{t}")
            m.d.comb += pat.eq(Cat(self.w[t * g + i].bit_select(plane, 1)
                                   for i in range(g)) ^ Mux(top, (1 << g) - 1, 0))
            hi = pat[g - 1]
            q = Signal(g - 1, name=f"q{t}")
            m.d.comb += q.eq(Mux(hi, pat[:g - 1], ~pat[:g - 1]))
            ent = Signal(signed(eb), name=f"ent{t}")
            m.d.comb += ent.eq(Array(self.a.t[t][k] for k in range(1 << (g - 1)))[q])
            val = Signal(signed(eb), name=f"val{t}")
            m.d.comb += val.eq(Mux(hi, ent, ~ent))
            vals.append(val)
            negs.append(~hi)
        s = tree_sum(vals + [tree_sum(negs)])
        with m.If(self.en):
            # 2 * sum w x = sum_planes c_j 2**j T(plane j) - X: X leaves with the last plane.
            m.d.sync += self.y.eq(Mux(self.last_phase, s - self.a.xsum, s))
        return m
