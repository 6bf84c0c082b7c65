"""``RMSNORM``: :func:`airfoil.fixedpoint.rmsnorm` of every row; ``LAYERNORM``:
:func:`airfoil.fixedpoint.layernorm_centred`, the same kernel on the centred row.

Once per instruction a divider forms ``2**40 // n`` and its 16-bit mantissa (``1 / n``).
Per row three passes over its int32 elements: ``amax`` (block exponent ``b``) and the sum
of squares of the block-normalised ``xs``, each a read-port word (``word_bytes / 4``
elements) per cycle, then, after three cycles for the reciprocal square root (``ms +
eps``; normalise and 192-entry table; one Newton step), the output with the gain: a chunk
of ``lanes`` elements per cycle (the SFU's ``sfu_lanes``, each lane with its own two
products) where the rows, the gain and the output lie on chunks and ``n`` is a multiple
of ``lanes`` (:func:`on_chunks`, as the compiler places them), else one element per
cycle in any lane. ``LAYERNORM`` first sums the row (one more word pass) and forms its
mean with the same ``1 / n`` and the same multiplier as the mean square; the other passes
then read ``sat32(x - mean)``. One kernel serves both functions (``args.func`` selects).
The three passes take a read word's (centred) lanes from a register, a cycle after it
arrives.
"""

from __future__ import annotations

from functools import partial

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.utils import exact_log2

from airfoil import fixedpoint as fx
from airfoil.isa import SfuFunc

from .arith import (Divider, bit_length, clamp, divider_latency, normalize, rom, sat, sat_addr,
                    shift_round, shift_round_signed, span_words, tree, word_lanes)
from .kernel import WordKernel, finish_states, lane_count, put_int32
from .quant import mantissa_expr, word_amax

__all__ = ["RmsNormKernel", "cycles", "on_chunks", "rsqrt_table", "rsqrt_newton", "DIV_LATENCY",
           "KERNELS"]

#: Cycles of the ``2**40 // n`` division at the start of an instruction.
DIV_LATENCY = divider_latency(41)


def on_chunks(args, *, lanes: int):
    """Whether the output pass goes a chunk of ``lanes`` elements per cycle: ``src_addr``,
    ``dst_addr`` and ``aux_addr`` on chunks (multiples of ``4 * lanes`` bytes) and ``n``
    a multiple of ``lanes``, so every row's chunks line up with the gain's.

    ``args`` is the kernel's ``args`` (a hardware expression is returned) or a dict of
    resolved arguments (a bool): one rule for the kernel and its :func:`cycles`.
    """
    get = args.__getitem__ if isinstance(args, dict) else partial(getattr, args)
    return ((((get("src_addr") | get("dst_addr") | get("aux_addr")) & (4 * lanes - 1)) == 0)
            & ((get("n") & (lanes - 1)) == 0))


def cycles(args, *, word_bytes: int, lanes: int | None = None) -> int:
    """Cycles from ``start`` to ``done`` for resolved arguments ``args`` (a dict) on read
    ports of ``word_bytes``, with output chunks of ``lanes`` elements (default: a
    word's int32)."""
    n, rows = args["n"], args["rows"]
    if n == 0 or rows == 0:
        return DIV_LATENCY + 1
    lanes = word_bytes // 4 if lanes is None else lanes
    centre = SfuFunc(args["func"]) == SfuFunc.LAYERNORM
    words = span_words(n, word_bytes)
    out = n // lanes if on_chunks(args, lanes=lanes) else n
    return DIV_LATENCY + rows * (2 * words + out + 9 + (words + 2 if centre else 0))


def rsqrt_table(m: Module, v, name: str = "rsqrt"):
    """First stage of :func:`airfoil.fixedpoint.rsqrt` of unsigned ``v >= 1``.

    Returns ``(n, sh, y0)``: ``v`` normalised by an even shift to 16 bits, the signed
    shift and the table's estimate (a combinational ROM read).
    """
    table = rom(m, f"{name}_rom", fx._RSQRT_T.tolist())
    sh = Signal(signed(9), name=f"{name}_sh")
    m.d.comb += sh.eq(bit_length(m, v, f"{name}_bl") - 16)
    she = Signal(signed(9), name=f"{name}_she")
    m.d.comb += she.eq(sh + sh[0])
    nrm = Signal(16, name=f"{name}_n")
    m.d.comb += [nrm.eq(normalize(v, she, width=16, bits=7)),
                 table.addr.eq(nrm[8:16] - 64)]
    return nrm, she, table.data


def rsqrt_newton(nrm, she, y0):
    """Second stage of :func:`airfoil.fixedpoint.rsqrt`: one Newton step on the table's
    ``y0``; returns ``(mantissa, exponent)`` (16-bit unsigned, signed exponent)."""
    t = (nrm * y0 * y0) >> 16
    y1 = (y0 * (Const(3 << 30, signed(40)) - t)) >> 31
    return clamp(y1, 1 << 15, (1 << 16) - 1)[:16], 23 + (she >> 1)


class RmsNormKernel(WordKernel):
    """Normalise ``rows`` rows of ``n`` int32 with the int32 Q16 gain at ``aux_addr``;
    ``LAYERNORM`` first subtracts each row's mean.

    ``eps`` is the 64-bit constant ``imm1 * 2**32 + imm0`` (``eps * 2**60``). Takes
    :func:`cycles` cycles.

    Parameters
    ----------
    word_bits : int
        Width of the ports (a power of two, at least 32): the buffers' word.
    lanes : int or None
        Elements of an output chunk, each lane with its own two products (a power of two
        dividing ``word_bits / 32``); default: a word's int32.
    funcs : tuple of SfuFunc
        The functions built (``RMSNORM``, ``LAYERNORM`` or both; default both): one alone
        leaves out ``args.func``'s choice and, for ``RMSNORM``, the mean pass.
    """

    def __init__(self, *, word_bits: int = 32, lanes: int | None = None,
                 funcs: tuple = (SfuFunc.RMSNORM, SfuFunc.LAYERNORM)):
        if not funcs or not set(funcs) <= set(KERNELS):
            raise ValueError(f"The norm kernel computes RMSNORM and LAYERNORM, not {funcs!r}")
        self._lanes = lane_count(lanes, word_bits, "RMSNORM")
        self._funcs = tuple(funcs)
        super().__init__(partial(cycles, lanes=self._lanes), word_bits=word_bits,
                         word_writes=True)

    @property
    def lanes(self) -> int:
        """Elements of an output chunk."""
        return self._lanes

    def elaborate(self, platform):
        m = Module()
        a = self.args
        wb = self._word_bytes
        lg = exact_log2(wb)
        m.submodules.div = div = Divider(width=41, divisor_width=20)
        m.d.comb += [div.dividend.eq(1 << 40), div.divisor.eq(a.n)]
        inv_m_c, inv_e_c = mantissa_expr(m, div.quotient, 40, "inv")
        inv_m = Signal(16)
        inv_e = Signal(6)

        r = Signal(32)
        j = Signal(20)
        wj = Signal(20)
        base = Signal(48)
        obase = Signal(48)
        pend_a = Signal()
        pend_s = Signal()
        pend_y = Signal()
        m.d.sync += [pend_a.eq(0), pend_s.eq(0), pend_y.eq(0)]

        # Passes 1 and 2 read word k of the row (tag k1), pass 3 a chunk or an element.
        k1 = Signal(20)
        first = Signal(range(wb // 4))
        if wb > 4:
            m.d.comb += first.eq(base[2:lg])
        raw = word_lanes(self.src.data, k1, first, a.n)
        # LAYERNORM's pass 0: the row sum, then its mean; the other passes read x - mean.
        # Built without LAYERNORM, the kernel has no pass 0, no mean and no centring.
        layer = SfuFunc.LAYERNORM in self._funcs
        centre = Signal()
        if SfuFunc.RMSNORM not in self._funcs:
            m.d.comb += centre.eq(1)
        elif layer:
            m.d.comb += centre.eq(a.func == SfuFunc.LAYERNORM)
        sm = Signal(signed(54))
        pend_m = Signal()
        mu = Signal(signed(36))
        if layer:
            m.d.sync += pend_m.eq(0)
            with m.If(pend_m):
                m.d.sync += sm.eq(sm + tree(lambda p, q: p + q,
                                            [Mux(live, x_l, 0) for live, x_l in raw]))

        def centred(v, name):
            if not layer:
                return v
            c = Signal(signed(32), name=name)
            m.d.comb += c.eq(Mux(centre, sat(v - mu, 32), v))
            return c

        # The word's lanes (centred for LAYERNORM) in a register, a cycle after arrival.
        lanes = []
        for i, (live, x_l) in enumerate(raw):
            live_r, x_r = Signal(name=f"live_r{i}"), Signal(signed(32), name=f"x_r{i}")
            m.d.sync += [live_r.eq(live), x_r.eq(centred(x_l, f"c{i}"))]
            lanes.append((live_r, x_r))
        pend_a1, pend_s1 = Signal(), Signal()
        m.d.sync += [pend_a1.eq(pend_a), pend_s1.eq(pend_s)]
        # Pass 1: amax; b = 15 - bitlen(max(amax, 1)), a register taken every cycle: the
        # sum-of-squares pass's first lanes come two cycles after the last amax update
        # (A_DRAIN, then its issue), so b holds the row's by then.
        amax = Signal(32)
        with m.If(pend_a1):
            m.d.sync += amax.eq(word_amax(m, lanes, amax))
        b = Signal(signed(7))
        m.d.sync += b.eq(15 - bit_length(m, Mux(amax == 0, 1, amax), "amax_bl"))
        # Pass 2: sum of squares. Each word lane's block-normalised xs serves pass 3 too.
        ss = Signal(56)
        squares, xs_word = [], []
        for i, (live, x_l) in enumerate(lanes):
            xs_l = Signal(signed(18), name=f"xs{i}")
            sq = Signal(36, name=f"sq{i}")
            m.d.comb += [xs_l.eq(shift_round_signed(x_l, -b, bits=5)),
                         sq.eq(Mux(live, xs_l * xs_l, 0))]
            squares.append(sq)
            xs_word.append(xs_l)
        with m.If(pend_s1):
            m.d.sync += ss.eq(ss + tree(lambda p, q: p + q, squares))
        # Reciprocal square root of ms + eps; the mean (state MU) through the same product.
        in_mu = Signal()
        scaled = Signal(signed(74))
        m.d.comb += scaled.eq(shift_round((Mux(in_mu, sm, ss) if layer else ss) * inv_m,
                                          inv_e))
        ms = Signal(74)
        m.d.comb += ms.eq(scaled)
        eps = Signal(64)
        m.d.comb += eps.eq(shift_round(Cat(a.imm0, a.imm1), (28 - 2 * b)[:6]))
        v = Signal(75)
        nrm, she, y0 = rsqrt_table(m, v)
        nrm_r, she_r, y0_r = Signal.like(nrm), Signal.like(she), Signal.like(y0)
        rs_m, rs_e = rsqrt_newton(nrm_r, she_r, y0_r)
        rr = Signal(16)
        ee = Signal(6)
        # Pass 3: output, chunk (or, when not on_chunks, element) j of the row read in
        # one cycle (tag wj, the gain's lanes registered at arrival); in the next but one
        # each lane's xs times the rsqrt is registered with its gain, and their product
        # written in the one after (tag wj3).
        P = self._lanes
        chunk_lg = exact_log2(4 * P)
        wide = Signal()             # a chunk per cycle (args are stable)
        if P > 1:
            m.d.comb += wide.eq(on_chunks(a, lanes=P))

        def per_wide(chunk, element):
            return element if P == 1 else Mux(wide, chunk, element)

        def chunk_lanes(word, off, width):
            """The P lanes of ``width`` bits of the chunk (or element, lane 0) that the
            read at byte offset ``off`` of its word returned."""
            chunk = word.word_select(off[chunk_lg:lg], width * P) if 4 * P < wb else word
            element = word.word_select(off[2:lg], width) if wb > 4 else word
            return [per_wide(chunk[:width], element) if i == 0
                    else chunk[width * i:width * (i + 1)] for i in range(P)]

        xaddr, gaddr = Signal(len(self.src.addr)), Signal(len(self.aux.addr))
        daddr = Signal(len(self.dst.addr))
        x_off, x_off2, g_off = Signal(lg), Signal(lg), Signal(lg)
        wj2, wj3 = Signal.like(wj), Signal.like(wj)
        pend_y2, pend_y3 = Signal(), Signal()
        m.d.comb += [xaddr.eq(sat_addr(base + per_wide(j << chunk_lg, j << 2))),
                     gaddr.eq(sat_addr(a.aux_addr + per_wide(j << chunk_lg, j << 2))),
                     daddr.eq(sat_addr(obase + per_wide(wj3 << chunk_lg, wj3 << 2)))]
        m.d.sync += [x_off.eq(xaddr[:lg]), g_off.eq(gaddr[:lg]), x_off2.eq(x_off),
                     wj2.eq(wj), wj3.eq(wj2), pend_y2.eq(pend_y), pend_y3.eq(pend_y2)]
        xs_lanes = chunk_lanes(Cat(*xs_word), x_off2, 18)
        g_lanes = chunk_lanes(self.aux.data, g_off, 32)
        ys = []
        for i in range(P):
            t = Signal(signed(36), name=f"t{i}")
            g1 = Signal(signed(32), name=f"g1_{i}")
            g = Signal(signed(32), name=f"g{i}")
            y = Signal(signed(32), name=f"y{i}")
            m.d.sync += [t.eq(shift_round(xs_lanes[i].as_signed() * rr,
                                          (ee - fx.ACT_FRAC)[:6])),
                         g1.eq(g_lanes[i].as_signed()), g.eq(g1)]
            m.d.comb += y.eq(sat(shift_round(t * g, fx.GAMMA_FRAC), 32))
            ys.append(y)
        element_write = put_int32(self.dst, daddr, ys[0])
        with m.If(pend_y3):
            if P == 1:
                m.d.comb += element_write
            else:
                with m.If(wide):        # the chunk's lanes of its word
                    en = Const((1 << 4 * P) - 1, wb)
                    m.d.comb += [self.dst.addr.eq(Cat(Const(0, lg), daddr[lg:])),
                                 self.dst.data.eq(Cat(*ys * (wb // (4 * P)))),
                                 self.dst.en.eq(en << (daddr[chunk_lg:lg] * 4 * P)
                                                if 4 * P < wb else en)]
                with m.Else():
                    m.d.comb += element_write

        kwords = Signal(20)
        m.d.comb += self.aux.addr.eq(Cat(Const(0, lg), gaddr[lg:]))
        wbase = Cat(Const(0, lg), base[lg:])
        out_count = per_wide(a.n >> exact_log2(P), a.n)

        def word_pass(state, nxt, pend):
            # Words past the row's last (at some offsets there is none) are not read.
            with m.State(state):
                m.d.comb += [self.busy.eq(1), self.src.addr.eq(sat_addr(wbase + (j << lg))),
                             self.src.en.eq((j << (lg - 2)) < first + a.n)]
                m.d.sync += [pend.eq(1), k1.eq(j), j.eq(j + 1)]
                with m.If(j == kwords - 1):
                    m.d.sync += j.eq(0)
                    m.next = nxt

        def out_pass(state, nxt, pend):
            with m.State(state):
                m.d.comb += [self.busy.eq(1), self.src.en.eq(1), self.aux.en.eq(1),
                             self.src.addr.eq(Cat(Const(0, lg), xaddr[lg:]))]
                m.d.sync += [pend.eq(1), wj.eq(j), j.eq(j + 1)]
                with m.If(j == out_count - 1):
                    m.d.sync += j.eq(0)
                    m.next = nxt

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.comb += div.start.eq(1)
                    m.next = "DIV"
            with m.State("DIV"):
                m.d.comb += self.busy.eq(1)
                with m.If(div.done):
                    m.d.sync += [inv_m.eq(inv_m_c), inv_e.eq(inv_e_c), r.eq(0), j.eq(0),
                                 amax.eq(0), ss.eq(0), sm.eq(0), base.eq(a.src_addr),
                                 obase.eq(a.dst_addr), kwords.eq(span_words(a.n, wb))]
                    with m.If(a.n == 0):
                        m.next = "ERR"
                    with m.Elif(a.rows == 0):
                        m.next = "END"
                    with m.Elif(centre):
                        m.next = "M" if layer else "A"
                    with m.Else():
                        m.next = "A"
            if layer:
                word_pass("M", "M_DRAIN", pend_m)
                with m.State("M_DRAIN"):
                    m.d.comb += self.busy.eq(1)
                    m.next = "MU"
                with m.State("MU"):
                    m.d.comb += [self.busy.eq(1), in_mu.eq(1)]
                    m.d.sync += mu.eq(scaled)
                    m.next = "A"
            word_pass("A", "A_DRAIN", pend_a)
            with m.State("A_DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.next = "S"
            word_pass("S", "S_DRAIN", pend_s)
            with m.State("S_DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.next = "S_DRAIN1"
            with m.State("S_DRAIN1"):
                m.d.comb += self.busy.eq(1)
                m.next = "V0"
            with m.State("V0"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += v.eq(Mux(ms + eps == 0, 1, ms + eps))
                m.next = "V1"
            with m.State("V1"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [nrm_r.eq(nrm), she_r.eq(she), y0_r.eq(y0)]
                m.next = "V2"
            with m.State("V2"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [rr.eq(rs_m), ee.eq(rs_e)]
                m.next = "Y"
            out_pass("Y", "Y_DRAIN0", pend_y)
            with m.State("Y_DRAIN0"):
                m.d.comb += self.busy.eq(1)
                m.next = "Y_DRAIN1"
            with m.State("Y_DRAIN1"):
                m.d.comb += self.busy.eq(1)
                m.next = "Y_DRAIN"
            with m.State("Y_DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [r.eq(r + 1), amax.eq(0), ss.eq(0), sm.eq(0),
                             base.eq(base + (a.n << 2)), obase.eq(obase + (a.n << 2))]
                with m.If(r == a.rows - 1):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Elif(centre):
                    m.next = "M" if layer else "A"
                with m.Else():
                    m.next = "A"
            finish_states(m, self)
        return m


#: Kernel factories by function, for :class:`hdl.sfu.unit.SfuUnit`.
#: Both norms share one factory, so the unit builds one kernel for them.
KERNELS = {SfuFunc.RMSNORM: RmsNormKernel, SfuFunc.LAYERNORM: RmsNormKernel}
