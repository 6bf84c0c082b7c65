"""``TOPK_SAMPLE``: :func:`airfoil.fixedpoint.topk_sample` of rows of logits on chip.

Three reads fetch the sampling block (``k``, inverse temperature, seed). Per row: one
cycle forms the row's draw (:func:`airfoil.fixedpoint.sample_uniform`, a multiplier and
three xorshift steps), then one logit per cycle enters a sorted array of
 ``topk_max`` candidate registers (the config's ``limits.topk_max``; every register
compares with the new logit at once; a strictly larger one goes before an equal one, so
equal logits keep ascending indices), a cycle drains the last read, a four-stage pipeline
forms every candidate's weight and the running sums (the scaled distance, the exponent's
product by log2(e), the table's interpolation, then the shift and the sum: always
``topk_max`` steps, those past ``k`` weighing 0, so the cycles do not depend on ``k``),
a cycle registers the draw's threshold, and a last one compares every running sum with
it at once and writes the token id.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring

from airfoil import fixedpoint as fx
from airfoil.isa import TOPK_MAX, SfuFunc

from .arith import rom, sat, sat_addr, shift_round
from .kernel import finish_states, kernel_signature

__all__ = ["TopkSampleKernel", "cycles", "KERNELS"]

#: Register stages from a candidate's step to its running sum (:class:`TopkSampleKernel`).
_WEIGHT_STAGES = 4


def cycles(args, *, topk_max: int = TOPK_MAX) -> int:
    """Cycles from ``start`` to ``done`` for resolved arguments ``args`` (a dict) of a
    well-formed sampling block, on a kernel of ``topk_max`` candidates (the count does
    not depend on the block's values)."""
    rows, n = args["rows"], args["n"]
    if rows == 0 or n == 0:
        return 1
    return 5 + rows * (n + topk_max + 7)


def exp2_pairs() -> list[int]:
    """ROM words ``T[i] | T[i + 1] << 16`` of the exp2 table, i = 0..255."""
    t = [int(v) for v in fx._EXP2_T]
    return [t[i] | t[i + 1] << 16 for i in range(len(t) - 1)]


def exp_neg_stages(m: Module, d):
    """Hardware :func:`airfoil.fixedpoint.exp_neg` of unsigned ``d < 2**31``: unsigned Q15,
    two cycles after ``d``, in two register stages (the product by log2(e); the table
    pair and the interpolation) and the last shift combinational."""
    table = rom(m, "exp2_rom", exp2_pairs())
    t = Signal(34)
    m.d.sync += t.eq(shift_round(d * fx._LOG2E_Q15, 15))
    m.d.comb += table.addr.eq(t[8:16])
    lo = Cat(table.data[:16], 0).as_signed()
    hi = Cat(table.data[16:32], 0).as_signed()
    y = Signal(17)
    ip = Signal(len(t) - 16)
    m.d.sync += [y.eq(lo + shift_round((hi - lo) * t[:8], 8)), ip.eq(t[16:])]
    return shift_round(y, Mux(ip > 31, 31, ip[:5]))


def uniform_expr(seed, position):
    """Hardware :func:`airfoil.fixedpoint.sample_uniform` (16 bits)."""
    x = (seed ^ (position * fx._SEED_MIX))[:32]
    x = Mux(x == 0, fx._SEED_ZERO, x)
    for _ in range(3):
        x = x ^ (x << 13)[:32]
        x = x ^ (x >> 17)
        x = x ^ (x << 5)[:32]
    return x[16:32]


class TopkSampleKernel(wiring.Component):
    """Compute ``TOPK_SAMPLE`` over ``rows`` rows of ``n`` int32 logits (row ``r`` at
    ``src_addr + r * imm0``; ``imm0 = 0``: ``4 n``), the sampling block at ``aux_addr``,
    the token ids at ``dst_addr``. Takes :func:`cycles` cycles; a ``k`` or an inverse
    temperature out of range is MALFORMED (``k`` above ``topk_max``, the candidate
    registers)."""

    def __init__(self, *, topk_max: int = TOPK_MAX):
        if isinstance(topk_max, bool) or not isinstance(topk_max, int) or \
                not 1 <= topk_max <= TOPK_MAX:
            raise ValueError(f"topk_max must be an integer in 1..{TOPK_MAX}, not {topk_max!r}")
        self._topk_max = topk_max
        super().__init__(kernel_signature())

    def elaborate(self, platform):
        m = Module()
        a = self.args
        K = self._topk_max
        sum_bits = (K << 15).bit_length()   # a running sum of K weights of at most 2**15
        sel = max(1, (K - 1).bit_length())   # bits of a candidate's number
        stride = Signal(32)
        m.d.comb += stride.eq(Mux(a.imm0 != 0, a.imm0, a.n << 2))

        k, inv_t, seed = Signal(32), Signal(32), Signal(32)
        keff = Signal(range(K + 1))          # min(k, n)
        m.d.comb += keff.eq(Mux(a.n < k, a.n, k))
        row = Signal(64)                     # byte address of the row's logits
        r = Signal(32)
        out = Signal(64)                     # byte address of the row's token id
        u = Signal(16)
        i = Signal(20)                       # logit whose read is issued

        # Candidates: value and index, descending by value (ascending index among equals).
        val = Array(Signal(signed(32), name=f"val{j}") for j in range(K))
        idx = Array(Signal(20, name=f"idx{j}") for j in range(K))
        cnt = Signal(range(K + 1))           # candidates held
        pend, wi = Signal(), Signal(20)      # a logit arrives this cycle, and its index
        issue = Signal()
        m.d.sync += [pend.eq(issue), wi.eq(i)]
        v = self.src.data.as_signed()
        ins = [Signal(name=f"ins{j}") for j in range(K)]
        for j in range(K):
            m.d.comb += ins[j].eq((j < keff) & ((j >= cnt) | (v > val[j])))
        with m.If(pend):
            for j in range(K):
                first = ins[j] if j == 0 else ins[j] & ~ins[j - 1]
                with m.If(first):
                    m.d.sync += [val[j].eq(v), idx[j].eq(wi)]
                with m.Elif(ins[j]):
                    m.d.sync += [val[j].eq(val[j - 1]), idx[j].eq(idx[j - 1])]
            m.d.sync += cnt.eq(Mux(cnt < keff, cnt + 1, cnt))

        # Weights: stage 1 the scaled distance of candidate c, stages 2 and 3 its exp
        # (exp_neg_stages), stage 4 the running sum; the candidate's number and whether it
        # is one of the k go along.
        c = Signal(range(K + _WEIGHT_STAGES))
        d = Signal(31)
        dj = [Signal(range(K), name=f"dj{s}") for s in range(_WEIGHT_STAGES - 1)]
        dlive = [Signal(name=f"dlive{s}") for s in range(_WEIGHT_STAGES - 1)]
        step = Signal()
        m.d.sync += dlive[0].eq(0)
        with m.If(step & (c < K)):
            dist = Signal(33)
            m.d.comb += dist.eq(val[0] - val[c[:sel]])
            m.d.sync += [d.eq(sat(shift_round(dist * inv_t[:24], fx.INV_TEMP_FRAC), 32)),
                         dj[0].eq(c), dlive[0].eq(c < keff)]
        for s in range(1, _WEIGHT_STAGES - 1):
            m.d.sync += [dj[s].eq(dj[s - 1]), dlive[s].eq(dlive[s - 1])]
        w = exp_neg_stages(m, d)
        cum = Array(Signal(sum_bits, name=f"cum{j}") for j in range(K))
        total = Signal(sum_bits)
        with m.If(dlive[-1]):
            m.d.sync += [cum[dj[-1]].eq(total + w), total.eq(total + w)]

        # The pick: candidates whose running sum is at most the threshold come before it.
        thr = Signal(sum_bits + 16)          # registered in THRESHOLD, after the last sum
        below = Cat(*[(j < keff) & (cum[j] <= thr) for j in range(K)])
        pick = Signal(range(K + 1))
        m.d.comb += pick.eq(sum(below[j] for j in range(K)))

        params = Signal(range(4))
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [row.eq(a.src_addr), r.eq(0), out.eq(a.dst_addr),
                                 params.eq(0)]
                    with m.If((a.rows == 0) | (a.n == 0)):
                        m.next = "END"
                    with m.Else():
                        m.next = "PARAMS"
            with m.State("PARAMS"):
                # Reads of k, 1/T and the seed; each word arrives the cycle after.
                m.d.comb += [self.busy.eq(1), self.aux.en.eq(params < 3),
                             self.aux.addr.eq(sat_addr(a.aux_addr + (params << 2)))]
                m.d.sync += params.eq(params + 1)
                with m.Switch(params):
                    with m.Case(1):
                        m.d.sync += k.eq(self.aux.data)
                    with m.Case(2):
                        m.d.sync += inv_t.eq(self.aux.data)
                    with m.Case(3):
                        m.d.sync += seed.eq(self.aux.data)
                        bad = ((k < 1) | (k > K) | (inv_t < 1) |
                               (inv_t >= 1 << fx.INV_TEMP_BITS))
                        m.next = "ROW"
                        with m.If(bad):
                            m.next = "ERR"
            with m.State("ROW"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [u.eq(uniform_expr(seed, a.pos + r)), i.eq(0), cnt.eq(0),
                             c.eq(0), total.eq(0)]
                m.next = "SCAN"
            with m.State("SCAN"):
                m.d.comb += [self.busy.eq(1), self.src.en.eq(1), issue.eq(1),
                             self.src.addr.eq(sat_addr(row + (i << 2)))]
                m.d.sync += i.eq(i + 1)
                with m.If(i == a.n - 1):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.next = "WEIGHT"
            with m.State("WEIGHT"):
                m.d.comb += [self.busy.eq(1), step.eq(1)]
                m.d.sync += c.eq(c + 1)
                with m.If(c == K + _WEIGHT_STAGES - 2):    # the last sum in this cycle
                    m.next = "THRESHOLD"
            with m.State("THRESHOLD"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += thr.eq((u * total) >> 16)
                m.next = "PICK"
            with m.State("PICK"):
                m.d.comb += [self.busy.eq(1), self.dst.addr.eq(sat_addr(out)),
                             self.dst.data.eq(idx[pick[:sel]]), self.dst.en.eq(0b1111)]
                m.d.sync += [row.eq(row + stride), out.eq(out + 4), r.eq(r + 1)]
                m.next = "ROW"
                with m.If(r == a.rows - 1):
                    m.next = "END"
            finish_states(m, self)
        return m


#: Kernel factories by function, for :class:`hdl.sfu.unit.SfuUnit`.
KERNELS = {SfuFunc.TOPK_SAMPLE: TopkSampleKernel}
