"""The group rescaler and the requantizer of the matrix unit (exact integer arithmetic).

Both implement :mod:`airfoil.formats` bit for bit: the rescaler adds
``psum * m << (k - k0)`` of every group onto a :data:`~airfoil.formats.ACC_BITS`-bit
accumulator per chain (starting from the bias), the requantizer computes
``clamp(floor((acc * M + 2**(S-1)) / 2**S))``.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from airfoil.fixedpoint import ACT_FRAC
from airfoil.formats import ACC_BITS, REQ_M_BITS, REQ_S_MAX, SCALE_SHIFT_MAX
from airfoil.isa import OutFormat

from ..streams import init_layout, psum_bits, psum_layout, scale_layout

__all__ = ["GroupRescaler", "Requantizer", "acc_layout", "requant_in_layout",
           "requant_out_layout", "token_requant_params", "TOKEN_REQUANT_STAGES"]


#: Register stages of :func:`token_requant_params` with ``pipelined=True``: the scale
#: pair, the exponent difference, the rounding shift's operands, the rounded sum.
TOKEN_REQUANT_STAGES = 4


def token_requant_params(m: Module, word, addr, k0, *, name: str = "tok",
                         pipelined: bool = False):
    """Per-token requantization ``(M, S)`` of a scale pair, in hardware: what
    :func:`airfoil.fixedpoint.linear_out_params` computes.

    ``word`` is the AUX word that holds the pair and ``addr`` the pair's byte address (its
    low bits pick the pair in the word): ``sm`` then ``se``, 32 bits each, signed. ``k0``
    is the instruction's accumulator exponent. Returns ``(M, S, bad)``: ``bad`` when
    ``sm`` is not in ``0 .. 2**REQ_M_BITS - 1`` (a SCALE_RANGE error).

    Combinational by default. With ``pipelined`` the work is split over
    :data:`TOKEN_REQUANT_STAGES` register stages (the pair; the exponent difference
    ``se - k0 - ACT_FRAC``; the case and the excess shift; the half-up sum), so that no
    cycle holds more than one of its adders or its barrel shift: the results belong to
    the ``word`` and ``addr`` of :data:`TOKEN_REQUANT_STAGES` cycles earlier (``k0`` held
    meanwhile).
    """
    def stage(value, label):
        """``value`` as it is, or registered when pipelined."""
        if not pipelined:
            return value
        reg = Signal(Value.cast(value).shape(), name=f"{name}_{label}")
        m.d.sync += reg.eq(value)
        return reg

    lgw = (len(word) // 8 - 1).bit_length()
    pair = word.word_select(addr[3:lgw], 64) if lgw > 3 else word[:64]
    pair = stage(pair, "pair")
    sm = pair[:32].as_signed()
    se = pair[32:64].as_signed()
    s_full = Signal(signed(36), name=f"{name}_s_full")
    bad = Signal(name=f"{name}_bad_now")
    m.d.comb += [s_full.eq(se - k0 - ACT_FRAC), bad.eq((sm < 0) | (sm >= (1 << REQ_M_BITS)))]
    s_full, sm_low, bad = (stage(s_full, "s_full"), stage(sm[:REQ_M_BITS], "sm"),
                           stage(bad, "bad1"))
    # The case of the exponent difference, and the excess over REQ_S_MAX M is rounded by.
    neg, big = Signal(name=f"{name}_neg"), Signal(name=f"{name}_big")
    e_big = Signal(range(18), name=f"{name}_e_big")
    m.d.comb += [neg.eq(s_full < 0), big.eq(s_full > REQ_S_MAX),
                 e_big.eq(Mux(s_full - REQ_S_MAX > 17, 17, s_full - REQ_S_MAX))]
    neg, big, e_big, s_low, sm_low, bad = (
        stage(neg, "neg"), stage(big, "big2"), stage(e_big, "e_big2"),
        stage(s_full[:7], "s_low"), stage(sm_low, "sm2"), stage(bad, "bad2"))
    # M rounded down by the excess, half up (the sum is below 2**17); beyond 17 bits a
    # 16-bit M is 0.
    half_up = Signal(REQ_M_BITS + 1, name=f"{name}_half_up")
    m.d.comb += half_up.eq(sm_low + (Const(1, REQ_M_BITS + 1) << (e_big - 1)[:5]))
    neg, big, e_big, s_low, sm_low, half_up, bad = (
        stage(neg, "neg3"), stage(big, "big3"), stage(e_big, "e_big3"),
        stage(s_low, "s_low3"), stage(sm_low, "sm3"), stage(half_up, "half_up3"),
        stage(bad, "bad3"))
    tok_m = Signal(REQ_M_BITS, name=f"{name}_m")
    tok_s = Signal(7, name=f"{name}_s")
    with m.If(neg):
        m.d.comb += [tok_m.eq((1 << REQ_M_BITS) - 1), tok_s.eq(0)]
    with m.Elif(big):
        m.d.comb += [tok_m.eq(half_up >> e_big), tok_s.eq(REQ_S_MAX)]
    with m.Else():
        m.d.comb += [tok_m.eq(sm_low), tok_s.eq(s_low)]
    return tok_m, tok_s, bad


def acc_layout(chains: int) -> data.ArrayLayout:
    """One batch's accumulators, one per chain."""
    return data.ArrayLayout(signed(ACC_BITS), chains)


class GroupRescaler(wiring.Component):
    """Scale each group's partial sums and accumulate them per chain.

    A group is consumed when its partial sums and its scales are both valid (and, for the
    first group of a batch when ``use_init`` is set, the batch's starting accumulators on
    ``init``: its bias, or what an earlier K-chunk left; else a batch starts from zero).
    The group that
    carries ``batch_last`` completes the batch: its accumulators leave on ``accs``. A
    scale's signed significand ``m`` multiplies the partial sum (a negative FP16 scale
    negates it); a scale whose shift ``k - k0`` lies outside ``0..SCALE_SHIFT_MAX``, or
    that was not a finite FP16 value, sets ``error`` (sticky).

    With ``tokens > 1`` the rescaler keeps a set of accumulators per activation vector
    (token): each group brings ``m`` partial sums (one per token, in token order) that
    share the group's scales (and starting accumulators), which are taken with the last
    token's; the batch's last group sends ``m`` accumulator sets, in token order.

    Parameters
    ----------
    chains : int
    group_max : int
        Largest group size (width of the partial sums).
    tokens : int
        Accumulator sets (largest ``m``); 1 builds no ``m`` port.

    Members
    -------
    psums, scales, init : In(stream.Signature(...))
    accs : Out(stream.Signature(acc_layout(chains)))
    k0 : In(signed(7))
    use_init : In(1)
    m : In(range(tokens + 1))
        Partial sums per group (``1 .. tokens``; with ``tokens > 1``).
    error : Out(1)
    """

    def __init__(self, *, chains: int, group_max: int, tokens: int = 1):
        if not isinstance(chains, int) or chains < 1:
            raise TypeError(f"Chain count must be a positive integer, not {chains!r}")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
            raise TypeError(f"Token count must be a positive integer, not {tokens!r}")
        self._chains, self._group_max, self._tokens = chains, group_max, tokens
        members = {
            "psums": In(stream.Signature(psum_layout(chains, group_max))),
            "scales": In(stream.Signature(scale_layout(chains))),
            "init": In(stream.Signature(init_layout(chains))),
            "accs": Out(stream.Signature(acc_layout(chains))),
            "k0": In(signed(7)), "use_init": In(1),
            "error": Out(1),
        }
        if tokens > 1:
            members["m"] = In(range(tokens + 1))
        super().__init__(members)

    @property
    def tokens(self) -> int:
        """Accumulator sets: the most partial sums a group may bring."""
        return self._tokens

    @property
    def latency(self) -> int:
        """Cycles from consuming a batch's last group to its accumulators being valid."""
        return 2

    def elaborate(self, platform):
        m = Module()
        C, T = self._chains, self._tokens
        adv = Signal()
        first = Signal(init=1)
        m.d.comb += adv.eq(~self.accs.valid | self.accs.ready)
        need_init = first & self.use_init
        take = Signal()
        # The token of the next partial sum; the group's scales go with its last token.
        tok = Signal(range(T))
        last_tok = Signal()
        m.d.comb += last_tok.eq(tok == self.m - 1 if T > 1 else 1)
        m.d.comb += [
            take.eq(adv & self.psums.valid & self.scales.valid &
                    (~need_init | self.init.valid)),
            self.psums.ready.eq(take), self.scales.ready.eq(take & last_tok),
            self.init.ready.eq(take & need_init & last_tok),
        ]
        if T > 1:
            with m.If(take):
                m.d.sync += tok.eq(Mux(last_tok, 0, tok + 1))
        # Stage A: products and shifts.
        va, firsta, lasta = Signal(), Signal(), Signal()
        toka = Signal(range(T))
        pw = psum_bits(self._group_max) + 12
        prod = [Signal(signed(pw), name=f"prod{c}") for c in range(C)]
        shift = [Signal(range(SCALE_SHIFT_MAX + 1), name=f"shift{c}") for c in range(C)]
        inita = [Signal(signed(ACC_BITS), name=f"init{c}") for c in range(C)]
        bad = Signal()
        sc = self.scales.payload
        for c in range(C):
            sh = Signal(signed(8), name=f"sh{c}")
            m.d.comb += sh.eq(sc.k[c] - self.k0)
            with m.If(take & ((sh < 0) | (sh > SCALE_SHIFT_MAX))):
                m.d.comb += bad.eq(1)
        with m.If(take & sc.bad):
            m.d.comb += bad.eq(1)
        with m.If(bad):
            m.d.sync += self.error.eq(1)
        with m.If(adv):
            m.d.sync += [va.eq(take), firsta.eq(first), toka.eq(tok),
                         lasta.eq(self.psums.payload.batch_last)]
            for c in range(C):
                m.d.sync += [
                    prod[c].eq(self.psums.payload.psum[c] * sc.m[c]),
                    shift[c].eq((sc.k[c] - self.k0)[:4]),
                    inita[c].eq(Mux(self.use_init, self.init.payload.init[c], 0)),
                ]
        with m.If(take & last_tok):
            m.d.sync += first.eq(self.psums.payload.batch_last)
        # Stage B: accumulate (into the token's set).
        sets = Array([Signal(signed(ACC_BITS), name=f"acc{c}" if T == 1 else f"acc{t}_{c}")
                      for c in range(C)] for t in range(T))
        acc = sets[toka] if T > 1 else sets[0]
        with m.If(adv):
            m.d.sync += self.accs.valid.eq(va & lasta)
            with m.If(va):
                totals = []
                for c in range(C):
                    base = Mux(firsta, inita[c], acc[c])
                    total = Signal(signed(ACC_BITS), name=f"total{c}")
                    m.d.comb += total.eq(base + (prod[c] << shift[c]))
                    m.d.sync += acc[c].eq(total)
                    totals.append(total)
                m.d.sync += self.accs.payload.eq(Cat(*totals))
        return m


def requant_in_layout(tag_bits: int, per_item: bool = False) -> data.StructLayout:
    """Input of the :class:`Requantizer`; ``per_item`` adds the item's own ``mult`` and
    ``shift``."""
    if per_item:
        return data.StructLayout({"acc": signed(ACC_BITS), "tag": tag_bits,
                                  "mult": REQ_M_BITS, "shift": 7})
    return data.StructLayout({"acc": signed(ACC_BITS), "tag": tag_bits})


def requant_out_layout(tag_bits: int) -> data.StructLayout:
    return data.StructLayout({"value": signed(32), "tag": tag_bits})


class Requantizer(wiring.Component):
    """Requantize one accumulator per cycle: ``clamp(floor((acc*M + 2**(S-1)) / 2**S))``.

    A fixed pipeline of :attr:`latency` cycles without back-pressure; ``tag`` travels with
    the value (the output address).

    Parameters
    ----------
    tag_bits : int
    per_item : bool
        ``False``: ``mult`` and ``shift`` are ports, held for a whole instruction;
        ``True``: every input carries its own ``mult`` and ``shift`` (per-token
        requantization), and the ports are still present but unused.

    Members
    -------
    inp : In(stream.Signature(requant_in_layout(tag_bits, per_item), always_ready=True))
    out : Out(stream.Signature(requant_out_layout(tag_bits), always_ready=True))
    mult : In(REQ_M_BITS)
    shift : In(7)
    out_fmt : In(OutFormat)
    """

    def __init__(self, *, tag_bits: int, per_item: bool = False):
        if not isinstance(tag_bits, int) or tag_bits < 1:
            raise TypeError(f"Tag width must be a positive integer, not {tag_bits!r}")
        if not isinstance(per_item, bool):
            raise TypeError(f"per_item must be a bool, not {per_item!r}")
        self._tag_bits = tag_bits
        self._per_item = per_item
        super().__init__({
            "inp": In(stream.Signature(requant_in_layout(tag_bits, per_item),
                                       always_ready=True)),
            "out": Out(stream.Signature(requant_out_layout(tag_bits), always_ready=True)),
            "mult": In(REQ_M_BITS), "shift": In(7), "out_fmt": In(OutFormat),
        })

    @property
    def per_item(self) -> bool:
        """Whether each input carries its own ``mult`` and ``shift``."""
        return self._per_item

    @property
    def latency(self) -> int:
        """Cycles from an input to its result."""
        return 3

    def elaborate(self, platform):
        m = Module()
        tb = self._tag_bits
        pw = ACC_BITS + REQ_M_BITS + 1
        v1, v2 = Signal(), Signal()
        t1, t2 = Signal(tb), Signal(tb)
        prod = Signal(signed(pw))
        if self._per_item:
            mult = self.inp.payload.mult
            shift = Signal(7)
            m.d.sync += shift.eq(self.inp.payload.shift)
        else:
            mult, shift = self.mult, self.shift
        m.d.sync += [v1.eq(self.inp.valid), t1.eq(self.inp.payload.tag),
                     prod.eq(self.inp.payload.acc * mult)]
        # floor((t + 2**(S-1)) / 2**S) == ((t >> (S-1)) + 1) >> 1 for S >= 1.
        rounded = Signal(signed(pw))
        half = Signal(signed(pw))
        sm1 = Signal(7)
        m.d.comb += [sm1.eq(shift - 1), half.eq(prod >> sm1)]
        m.d.sync += [v2.eq(v1), t2.eq(t1),
                     rounded.eq(Mux(shift == 0, prod, (half + 1) >> 1))]
        lo = Signal(signed(33))
        hi = Signal(signed(33))
        with m.Switch(self.out_fmt):
            with m.Case(OutFormat.INT8):
                m.d.comb += [lo.eq(-128), hi.eq(127)]
            with m.Case(OutFormat.INT16):
                m.d.comb += [lo.eq(-(1 << 15)), hi.eq((1 << 15) - 1)]
            with m.Default():
                m.d.comb += [lo.eq(-(1 << 31)), hi.eq((1 << 31) - 1)]
        m.d.sync += [
            self.out.valid.eq(v2), self.out.payload.tag.eq(t2),
            self.out.payload.value.eq(Mux(rounded < lo, lo, Mux(rounded > hi, hi, rounded))),
        ]
        return m
