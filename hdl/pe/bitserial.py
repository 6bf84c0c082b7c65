"""BitMoD-style bit-serial processing element (one chain of ``lanes`` serial MACs).

One input beat carries ``lanes`` weight codes, the activations they meet, the beat's
format and the group/row flags. The PE spends ``bitmod.cycles(fmt)`` cycles on a beat,
one weight digit per lane per cycle (:func:`airfoil.bitmod.serial_digits`):

* INT2/INT3/INT4: one two's complement bit per cycle, most significant first (radix 2,
  the top bit subtracts): 2, 3, 4 cycles;
* INT6/INT8: one radix-4 Booth digit in ``{-2..2}`` per cycle (radix 4): 3, 4 cycles;
* FP4 and FP3 variants (the unified representation ``sign * {1,3,5} * 2**(0..4)``): one
  set mantissa bit per cycle, each adding ``+-x << e`` (radix 1): 2 cycles. FP3 could
  finish its power-of-two values in one cycle, but its extra values +-3 and +-6 need two
  digits, and a per-group format has one cycle count, so FP3 also takes 2 cycles: it
  saves memory (3-bit codes), not time, on this datapath.

Every lane term is ``0`` or ``+-(x << e)`` with ``e`` in 0..4: a 5-way shift mux and a
conditional inversion; the ``+1`` of each negation is added once as a population count
at the root of the lane adder tree. The beat accumulator folds the tree sums most
significant digit first (``beat = beat * radix + sum``), the group partial sum adds the
beats, and at the end of a group the exact integer partial sum goes to the bit-serial
rescaler (:class:`SerialRescaler`), which multiplies it by the group's FP16 significand
``m`` one scale bit per cycle and applies the shift ``k - k0`` as further doublings,
into a wide wrapping accumulator: ``acc += psum * m << (k - k0)`` as in
:func:`airfoil.formats.rescale`. The rescaler runs beside the next group's MACs; it
keeps up while a group lasts at least ``12 + shift`` cycles (``scale_bits_per_cycle``
> 1 shortens that for wide chains).

2:4 sparsity (``sparse=True``): the activation port is ``2 * lanes`` wide; in a sparse
beat lane ``i`` holds one of the two nonzeros of window ``i // 2`` and its 2-bit index
picks activation ``4 * (i // 2) + idx`` -- a beat covers twice the dense positions in
the same cycles. Dense beats use activations ``0..lanes-1``.
"""

from __future__ import annotations

from amaranth.hdl import Array, C, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from airfoil import bitmod
from airfoil.bitmod import BitModFormat
from airfoil.formats import ACC_BITS, SCALE_SHIFT_MAX

__all__ = ["BitSerialPE", "SerialRescaler", "bitserial_in_layout", "rescale_in_layout",
           "result_layout", "tree_sum", "estimate_units"]

#: Width of an FP16 significand (hidden bit included).
SCALE_M_BITS = 11
#: Width of the shift ``k - k0`` field.
SCALE_SHIFT_BITS = (SCALE_SHIFT_MAX).bit_length()


def _check_int(name, value, lo, hi=None, *, even=False):
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (
            hi is not None and value > hi) or (even and value % 2):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        kind = "an even integer" if even else "an integer"
        raise TypeError(f"{name} must be {kind} in {rng}, not {value!r}")


def tree_sum(values):
    """Sum a list of values with a balanced adder tree."""
    values = list(values)
    if not values:
        return C(0, 1)
    while len(values) > 1:
        nxt = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0]


def psum_bits(lanes: int, max_group: int) -> int:
    """Width of an exact group partial sum: ``max_group`` products of 8 x 8 bits."""
    return 16 + max(1, (max_group - 1).bit_length()) + 1


def rescale_in_layout(psum_width: int) -> data.StructLayout:
    """Payload of a group partial sum on its way to the rescaler."""
    return data.StructLayout({
        "psum": signed(psum_width),
        "m": unsigned(SCALE_M_BITS),
        "shift": unsigned(SCALE_SHIFT_BITS),
        "row_end": 1,
    })


def result_layout(acc_bits: int = ACC_BITS) -> data.StructLayout:
    """Payload of one row result: the wide accumulator."""
    return data.StructLayout({"acc": signed(acc_bits)})


def bitserial_in_layout(lanes: int, sparse: bool) -> data.StructLayout:
    """Payload of one bit-serial PE input beat."""
    fields = {
        "w": data.ArrayLayout(8, lanes),
        "x": data.ArrayLayout(signed(8), 2 * lanes if sparse else lanes),
        "fmt": BitModFormat,
        "group_end": 1,
        "row_end": 1,
        "m": unsigned(SCALE_M_BITS),
        "shift": unsigned(SCALE_SHIFT_BITS),
    }
    if sparse:
        fields["idx"] = data.ArrayLayout(2, lanes)
        fields["sparse"] = 1
    return data.StructLayout(fields)


class SerialRescaler(wiring.Component):
    """Multiply group partial sums by their scales bit-serially into a wide accumulator.

    For each input ``(psum, m, shift, row_end)`` it computes ``t = psum * m << shift``
    most significant scale bits first, ``r = scale_bits_per_cycle`` bits a cycle
    (``t = t << r + sum of the set bits' psum << i``; ``ceil(11 / r)`` cycles), then the
    shift as doublings, up to ``r`` a cycle; it adds ``t`` to the accumulator (wrapping at
    ``acc_bits``) and, on ``row_end``, emits the accumulator and clears it. With ``r = 1``
    (BitMoD's bit-serial dequantization) a group takes ``12 + shift`` cycles.

    Parameters
    ----------
    psum_width : int
        Width of the signed partial sums.
    acc_bits : int
        Width of the accumulator (default :data:`airfoil.formats.ACC_BITS`).
    scale_bits_per_cycle : int
        Scale bits consumed per cycle (1..4): more adders, fewer cycles per group.

    Members
    -------
    i : In(stream.Signature(rescale_in_layout(psum_width)))
    o : Out(stream.Signature(result_layout(acc_bits)))
    """

    def __init__(self, *, psum_width: int, acc_bits: int = ACC_BITS,
                 scale_bits_per_cycle: int = 1):
        try:
            _check_int("Partial sum width", psum_width, 2, 64)
            _check_int("Accumulator width", acc_bits, psum_width + SCALE_M_BITS, 128)
            _check_int("scale_bits_per_cycle", scale_bits_per_cycle, 1, 4)
        except TypeError:
            self._MustUse__silence = True
            raise
        self._psum_width, self._acc_bits = psum_width, acc_bits
        self._r = scale_bits_per_cycle
        super().__init__({
            "i": In(stream.Signature(rescale_in_layout(psum_width))),
            "o": Out(stream.Signature(result_layout(acc_bits))),
        })

    @property
    def acc_bits(self) -> int:
        return self._acc_bits

    @property
    def scale_bits_per_cycle(self) -> int:
        return self._r

    def cycles(self, shift: int) -> int:
        """Cycles per group of shift ``k - k0`` (back to back, output not stalled)."""
        r = self._r
        return -(-SCALE_M_BITS // r) + -(-shift // r) + 1

    def elaborate(self, platform):
        m = Module()
        A, r = self._acc_bits, self._r
        digits = -(-SCALE_M_BITS // r)
        ps = Signal(signed(self._psum_width))
        mm = Signal(digits * r)              # the significand, zero-padded at the top
        nm = Signal(range(max(digits, SCALE_M_BITS + SCALE_SHIFT_MAX) + 1))
        ns = Signal(range(SCALE_SHIFT_MAX + 1))
        t = Signal(signed(A))
        acc = Signal(signed(A))
        row_end = Signal()
        busy = Signal()
        total = Signal(signed(A))
        fin = Signal()           # the group's product is complete and can leave this cycle
        m.d.comb += [
            total.eq(acc + t),
            fin.eq(busy & (nm == 0) & (ns == 0) & (~row_end | ~self.o.valid | self.o.ready)),
            self.i.ready.eq(~busy | fin),
        ]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(fin):
            m.d.sync += busy.eq(0)
            with m.If(row_end):
                m.d.sync += [self.o.payload.acc.eq(total), self.o.valid.eq(1), acc.eq(0)]
            with m.Else():
                m.d.sync += acc.eq(total)
        if r == 1:
            # One loop: 11 significand bits then ``shift`` zero bits, ``t = 2 t + bit psum``.
            n = Signal(range(SCALE_M_BITS + SCALE_SHIFT_MAX + 1))
            m.d.comb += [nm.eq(n), ns.eq(0)]
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += [ps.eq(self.i.payload.psum), mm.eq(self.i.payload.m),
                             n.eq(SCALE_M_BITS + self.i.payload.shift), t.eq(0),
                             row_end.eq(self.i.payload.row_end), busy.eq(1)]
            with m.Elif(busy & (n != 0)):
                m.d.sync += [t.eq((t << 1) + Mux(mm[-1], ps, 0)), mm.eq(mm << 1),
                             n.eq(n - 1)]
            return m
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [ps.eq(self.i.payload.psum), mm.eq(self.i.payload.m), nm.eq(digits),
                         ns.eq(self.i.payload.shift), t.eq(0),
                         row_end.eq(self.i.payload.row_end), busy.eq(1)]
        with m.Elif(busy & (nm != 0)):
            part = tree_sum([Mux(mm[-1 - i], ps << (r - 1 - i), 0) for i in range(r)])
            m.d.sync += [t.eq((t << r) + part), mm.eq(mm << r), nm.eq(nm - 1)]
        with m.Elif(busy & (ns != 0)):
            with m.If(ns >= r):
                m.d.sync += [t.eq(t << r), ns.eq(ns - r)]
            for k in range(1, r):
                with m.Elif(ns == k):
                    m.d.sync += [t.eq(t << k), ns.eq(0)]
        return m


class BitSerialPE(wiring.Component):
    """One chain of BitMoD bit-serial lanes with a bit-serial group rescaler.

    Parameters
    ----------
    lanes : int
        Weights per beat (even, 2..128).
    sparse : bool
        Support 2:4 beats (activation port ``2 * lanes`` wide, 2-bit indices).
    max_group : int
        Largest number of products in one group (sizes the partial sum).
    acc_bits : int
        Width of the row accumulator.
    scale_bits_per_cycle : int
        Scale bits the group rescaler consumes per cycle (1, BitMoD's bit-serial
        rescale, up to 4 for wide chains whose groups last fewer than ``12 + shift``
        cycles).

    Members
    -------
    i : In(stream.Signature(bitserial_in_layout(lanes, sparse)))
        Beats: weight codes (low bits, per ``fmt``), activations, ``fmt`` (constant
        within a group), ``group_end``/``row_end`` on a group's/row's last beat, and the
        group scale ``m``/``shift`` (read on the ``group_end`` beat).
    o : Out(stream.Signature(result_layout(acc_bits)))
        One accumulator per row.
    """

    def __init__(self, *, lanes: int, sparse: bool = True, max_group: int = 128,
                 acc_bits: int = ACC_BITS, scale_bits_per_cycle: int = 1):
        try:
            _check_int("Lane count", lanes, 2, 128, even=True)
            if not isinstance(sparse, bool):
                raise TypeError(f"sparse must be a bool, not {sparse!r}")
            _check_int("max_group", max_group, 1, 4096)
            _check_int("scale_bits_per_cycle", scale_bits_per_cycle, 1, 4)
        except TypeError:
            self._MustUse__silence = True    # never built: no "unused" warning
            raise
        self._lanes, self._sparse, self._max_group = lanes, sparse, max_group
        self._psum_width = psum_bits(lanes, max_group)
        self._acc_bits = acc_bits
        self._scale_r = scale_bits_per_cycle
        super().__init__({
            "i": In(stream.Signature(bitserial_in_layout(lanes, sparse))),
            "o": Out(stream.Signature(result_layout(acc_bits))),
        })

    lanes = property(lambda self: self._lanes)
    sparse = property(lambda self: self._sparse)
    max_group = property(lambda self: self._max_group)
    psum_width = property(lambda self: self._psum_width)

    @staticmethod
    def cycles_per_beat(fmt) -> int:
        """Cycles one beat of format ``fmt`` occupies the lanes."""
        return bitmod.cycles(fmt)

    @property
    def latency(self) -> int:
        """Cycles from the last digit of a row to its rescaler start (pipeline stages)."""
        return 2

    @staticmethod
    def _pack_digit(d: int):
        """``(nz, neg, e)`` of a digit ``0`` or ``+-2**e`` as a 5-bit constant."""
        return C(int(d != 0) | int(d < 0) << 1 | (abs(d).bit_length() - 1 if d else 0) << 2,
                 5)

    @property
    def _base_rom(self):
        """Digits of the codes every FP4 (FP3) variant shares, by ``(fp3, code, j)``."""
        rom = []
        for f in (BitModFormat.FP4_ER_P, BitModFormat.FP3_ER_P):
            n = bitmod.code_bits(f)
            for c in range(16):
                cc = c & ((1 << n) - 1)
                extra = cc == 1 << (n - 1)
                for jj in range(2):
                    d = 0 if extra else bitmod.serial_digits(f, cc)[jj]
                    rom.append(self._pack_digit(d))
        return rom

    def _digit(self, m, code, fmt, j, lane, fp_extra):
        """Return ``(nz, neg, e)`` of lane ``lane``'s digit ``j`` (most significant first)."""
        nz = Signal(name=f"nz{lane}")
        neg = Signal(name=f"neg{lane}")
        e = Signal(3, name=f"e{lane}")
        # FP digits: the variant-independent codes from one small table, the extra-value
        # code ("-0") from the per-PE signal ``fp_extra`` (both generated from bitmod).
        fp3 = (fmt.as_value() >= BitModFormat.FP3_ER_P.value)
        is_extra = Mux(fp3, code[:3] == 0b100, code[:4] == 0b1000)
        fp_d = Signal(5, name=f"fpd{lane}")
        m.d.comb += fp_d.eq(Mux(is_extra, fp_extra,
                                Array(self._base_rom)[Cat(j[0], code[:4], fp3)]))
        # INT bit planes and radix-4 Booth digits.
        nbits = Signal(4, name=f"nb{lane}")
        with m.Switch(fmt):
            for f, b in ((BitModFormat.INT2, 2), (BitModFormat.INT3, 3),
                         (BitModFormat.INT4, 4)):
                with m.Case(f):
                    m.d.comb += nbits.eq(b)
        plane = Signal(3, name=f"plane{lane}")
        m.d.comb += plane.eq(nbits - 1 - j)
        bit = code.bit_select(plane, 1)
        trip = Signal(3, name=f"trip{lane}")
        booth_p = Signal(2, name=f"bp{lane}")
        m.d.comb += [
            booth_p.eq(Mux(fmt == BitModFormat.INT8, 3, 2) - j),
            trip.eq(Cat(C(0, 1), code).bit_select(booth_p * 2, 3)),
        ]
        with m.Switch(fmt):
            with m.Case(BitModFormat.INT2, BitModFormat.INT3, BitModFormat.INT4):
                m.d.comb += [nz.eq(bit), neg.eq(bit & (j == 0)), e.eq(0)]
            with m.Case(BitModFormat.INT6, BitModFormat.INT8):
                m.d.comb += [nz.eq((trip != 0) & (trip != 7)), neg.eq(trip[2]),
                             e.eq((trip == 3) | (trip == 4))]
            with m.Default():
                m.d.comb += [nz.eq(fp_d[0]), neg.eq(fp_d[1]), e.eq(fp_d[2:])]
        return nz, neg, e

    def elaborate(self, platform):
        m = Module()
        L = self._lanes
        PW = self._psum_width
        m.submodules.rescaler = resc = SerialRescaler(
            psum_width=PW, acc_bits=self._acc_bits, scale_bits_per_cycle=self._scale_r)
        wiring.connect(m, wiring.flipped(self.o), resc.o)

        # -- stage 0: the current beat and its digit counter ---------------------------
        cur = Signal(bitserial_in_layout(L, self._sparse))
        busy = Signal()
        j = Signal(2)
        ncyc = Signal(3)
        with m.Switch(cur.fmt):
            for f in BitModFormat:
                with m.Case(f):
                    m.d.comb += ncyc.eq(bitmod.cycles(f))
        last = Signal()
        m.d.comb += last.eq(j == ncyc - 1)
        adv = Signal()       # the pipeline moves (no group waiting on a busy rescaler)
        m.d.comb += self.i.ready.eq(adv & (~busy | last))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [cur.eq(self.i.payload), busy.eq(1), j.eq(0)]
        with m.Elif(adv & busy):
            with m.If(last):
                m.d.sync += busy.eq(0)
            with m.Else():
                m.d.sync += j.eq(j + 1)

        # -- lane terms and the adder tree ----------------------------------------------
        fp_extra = Signal(5)     # digit j of the format's extra value (shared by all lanes)
        with m.Switch(Cat(j[0], cur.fmt)):
            for f in bitmod.FP4_FORMATS + bitmod.FP3_FORMATS:
                n = bitmod.code_bits(f)
                for jj in range(2):
                    with m.Case(jj | f.value << 1):
                        d = bitmod.serial_digits(f, 1 << (n - 1))[jj]
                        m.d.comb += fp_extra.eq(self._pack_digit(d))
        terms, negs = [], []
        for lane in range(L):
            nz, neg, e = self._digit(m, cur.w[lane], cur.fmt, j, lane, fp_extra)
            x = Signal(signed(8), name=f"x{lane}")
            if self._sparse:
                win = Array(cur.x[4 * (lane // 2) + s] for s in range(4))
                m.d.comb += x.eq(Mux(cur.sparse, win[cur.idx[lane]], cur.x[lane]))
            else:
                m.d.comb += x.eq(cur.x[lane])
            term = Signal(signed(13), name=f"term{lane}")
            mag = Signal(signed(13), name=f"mag{lane}")
            m.d.comb += [mag.eq(x << e), term.eq(Mux(nz, Mux(neg, ~mag, mag), 0))]
            terms.append(term)
            negs.append(nz & neg)
        sbits = 13 + max(1, (L - 1).bit_length()) + 1
        s = Signal(signed(sbits))
        m.d.comb += s.eq(tree_sum(terms + [tree_sum(negs)]))

        # -- stage 1: registered tree sum ----------------------------------------------
        p_valid = Signal()
        p_s = Signal(signed(sbits))
        p_first, p_last, p_ge, p_re = Signal(), Signal(), Signal(), Signal()
        p_rad = Signal(2)        # log2(radix)
        p_m = Signal(SCALE_M_BITS)
        p_sh = Signal(SCALE_SHIFT_BITS)
        rad = Signal(2)
        with m.Switch(cur.fmt):
            for f in BitModFormat:
                with m.Case(f):
                    m.d.comb += rad.eq(bitmod.radix(f).bit_length() - 1)
        with m.If(adv):
            m.d.sync += [p_valid.eq(busy), p_s.eq(s), p_first.eq(j == 0), p_last.eq(last),
                         p_ge.eq(cur.group_end), p_re.eq(cur.row_end), p_rad.eq(rad),
                         p_m.eq(cur.m), p_sh.eq(cur.shift)]

        # -- stage 2: beat accumulator and group partial sum ----------------------------
        beat = Signal(signed(PW))
        psum = Signal(signed(PW))
        beat_next = Signal(signed(PW))
        psum_next = Signal(signed(PW))
        prev = Signal(signed(PW))
        m.d.comb += [
            prev.eq(Mux(p_first, 0, beat)),
            beat_next.eq(Mux(p_rad == 2, prev << 2, Mux(p_rad == 1, prev << 1, prev)) + p_s),
            psum_next.eq(psum + beat_next),
        ]
        h_full = Signal()
        commit = p_valid & p_last & p_ge
        m.d.comb += adv.eq(~(commit & h_full & ~resc.i.ready))
        with m.If(resc.i.ready):
            m.d.sync += h_full.eq(0)
        m.d.comb += resc.i.valid.eq(h_full)
        with m.If(p_valid & adv):
            m.d.sync += beat.eq(beat_next)
            with m.If(p_last):
                m.d.sync += psum.eq(psum_next)
                with m.If(p_ge):
                    m.d.sync += [psum.eq(0), h_full.eq(1),
                                 resc.i.payload.psum.eq(psum_next),
                                 resc.i.payload.m.eq(p_m), resc.i.payload.shift.eq(p_sh),
                                 resc.i.payload.row_end.eq(p_re)]
        return m


def estimate_units(config) -> dict:
    """Units of this module for ``airfoil estimate``: the PE at the configuration's lanes.

    ``macs_per_cycle`` is the dense peak, INT2/FP4/FP3 weights (2 cycles per beat); 2:4
    beats double it, INT4/INT8 halve it.
    """
    pe = BitSerialPE(lanes=config.lanes, sparse="2:4" in config.sparsity,
                     max_group=max(config.group_sizes))
    pe.macs_per_cycle = config.lanes // 2
    return {"bitserial_pe": pe}
