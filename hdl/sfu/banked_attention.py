"""``ATT_QK`` and ``ATT_PV`` on a banked KV buffer: a key group (one record of each of
``banks`` keys) per record word.

On a KV buffer of ``B`` banks (``buffers.kv_banks``, :mod:`airfoil.kv_banks`) the records
of the keys ``g * B .. g * B + B - 1`` (a *key group*) lie at the same offset of the ``B``
banks, so the kernels' ``aux`` read port is a bank row (``B`` buffer words) and every
record word they read holds that word of ``B`` records. The kernels compute what
:class:`~hdl.sfu.attention.AttentionScores` and :class:`~hdl.sfu.attention.
AttentionContext` compute, bit for bit (the ISA simulator's ``_sfu_func`` is the
reference), with ``B`` copies of the per-key datapath:

* :class:`BankedAttentionScores` (``ATT_QK``): per ``(row, head)`` and key group, the
  query record's :func:`~hdl.sfu.attention.qk_chunks` words (``src``) meet the group's
  record words, ``B x word_bytes`` INT8 products a cycle into ``B`` adder trees; the ``B``
  scores are rescaled side by side and written, contiguous as the ``(row, head, key)``
  scores are, through a write port of a buffer word (with byte enables) in the
  :func:`group_words` cycles the group's scores span at most. A group takes
  ``max(chunks, group_words)`` cycles.
* :class:`BankedAttentionContext` (``ATT_PV``): per ``(row, head)`` and key group, the
  group's probabilities (:func:`group_words` words of ``src``) and its records' scale
  pairs (one bank row) give ``B`` Q20 weights, then the ``ceil(n / word_bytes)`` value
  words of the group accumulate ``B`` products per lane into the ``word_bytes`` lanes of
  the context accumulator, read on ``aux`` while ``src`` reads the next group's
  probabilities: a group takes ``max(group_words, ceil(n / word_bytes) + 1)`` cycles.
  After the last group the one-bank kernel's output pass writes the outputs, a buffer
  word (``word_bytes / 4`` int32) a cycle (:func:`~hdl.sfu.attention.pv_out_words`
  cycles).

Keys past ``length`` in the last group are masked (their scores are not written, their
values not accumulated). Records must start on buffer words (``aux_addr`` and ``imm1``,
and for ``ATT_QK`` ``src_addr`` and ``imm0``, multiples of the word; else MALFORMED, as
the ISA simulator refuses them), so no funnel is needed.
"""

from __future__ import annotations

import operator

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.utils import exact_log2

from airfoil import fixedpoint as fx
from airfoil.isa import ATT_PV_MAX_HEAD_DIM, ErrorCode

from . import attention as att
from .arith import tree
from .kernel import ADDR_BITS

__all__ = ["BankedAttentionScores", "BankedAttentionContext", "group_words",
           "qk_cycles", "pv_cycles"]


def group_words(banks: int, word_bytes: int) -> int:
    """Buffer words the int32 of a key group (``banks`` scores or probabilities at any
    4-byte offset) span at most: ``ceil((4 * banks + word_bytes - 4) / word_bytes)``."""
    return -(-(4 * banks + word_bytes - 4) // word_bytes)


def _groups(args, banks: int) -> int:
    return -(-att._arg(args, "length") // banks)


def _qk_period(n: int, banks: int, word_bytes: int) -> int:
    return max(att.qk_chunks(n, word_bytes), group_words(banks, word_bytes))


def _misaligned(args, word_bytes: int, names) -> bool:
    return any(att._arg(args, name) % word_bytes for name in names)


def qk_cycles(args, *, word_bytes: int, banks: int) -> int:
    """Cycles of :class:`BankedAttentionScores` from ``start`` to ``done`` (the fields of
    :func:`hdl.sfu.attention.qk_cycles`; 1 when refused): each key group of each
    ``(row, head)`` takes ``P = max(qk_chunks, group_words)`` cycles; the last one's
    scores are rescaled and written ``qk_chunks + group_words + 3 - P`` cycles later."""
    att._check_word_bytes(word_bytes)
    if att._qk_pv_refused(args) or _misaligned(args, word_bytes,
                                               ("src_addr", "imm0", "aux_addr", "imm1")):
        return 1
    n = att._arg(args, "n")
    period = _qk_period(n, banks, word_bytes)
    groups = att._arg(args, "rows") * att._arg(args, "heads") * _groups(args, banks)
    return (groups * period + att.qk_chunks(n, word_bytes) + group_words(banks, word_bytes)
            + 3 - period)


def pv_cycles(args, max_head_dim: int = ATT_PV_MAX_HEAD_DIM, *, word_bytes: int,
              banks: int) -> int:
    """Cycles of :class:`BankedAttentionContext` from ``start`` to ``done`` (the fields of
    :func:`hdl.sfu.attention.pv_cycles`; 1 when refused): per ``(row, head)`` each key
    group takes a period of ``max(group_words, values + 1)`` cycles (its probability
    words on ``src``; the previous group's ``values = ceil(n / word_bytes)`` value words
    and its scale pairs' bank row on ``aux``), the last group's value words ``values``
    more, then the output pass's :func:`~hdl.sfu.attention.pv_out_words` cycles (a
    buffer word of outputs a cycle)."""
    att._check_word_bytes(word_bytes)
    n = att._arg(args, "n")
    if (att._qk_pv_refused(args) or n > max_head_dim
            or _misaligned(args, word_bytes, ("aux_addr", "imm1"))):
        return 1
    values = -(-n // word_bytes)
    period = max(group_words(banks, word_bytes), values + 1)
    return (att._arg(args, "rows") * att._arg(args, "heads")
            * (_groups(args, banks) * period + values + att.pv_out_words(args, word_bytes))
            + 2)


class _BankedKernel(att._Kernel):
    """A record kernel on a KV buffer of ``banks`` banks: ``src`` a word of ``word_bits``,
    ``aux`` a bank row (``banks`` words), ``dst`` a word with byte enables."""

    def __init__(self, *, word_bits: int, banks: int):
        if not isinstance(banks, int) or isinstance(banks, bool) or banks < 2 or (
                banks & (banks - 1)):
            raise TypeError(f"KV banks must be a power of two of at least 2, not {banks!r}")
        self._banks = banks
        super().__init__(word_bits=word_bits, write_bits=word_bits,
                         aux_bits=banks * word_bits)

    @property
    def banks(self) -> int:
        """Banks of the KV buffer (keys per record word)."""
        return self._banks

    def _aligned(self, m: Module, names):
        """Whether the records named by the address and stride fields ``names`` start on
        words."""
        ok = Signal(name="on_words")
        lg = exact_log2(self._word_bytes)
        m.d.comb += ok.eq(Cat(*(getattr(self.args, x)[:lg] for x in names)) == 0)
        return ok

    def _group_keys(self, m: Module, walk):
        """The keys of the current group that are below ``length``, one bit a bank."""
        a, B = self.args, self._banks
        first = Signal(32, name="group_first")
        m.d.comb += first.eq(walk.key << exact_log2(B))
        live = Signal(B, name="group_live")
        m.d.comb += live.eq(Cat(*(first + b < a.length for b in range(B))))
        return live

    def _walk(self, m: Module, launch):
        groups = Signal(32, name="key_groups")
        lgb = exact_log2(self._banks)
        m.d.comb += groups.eq((self.args.length + self._banks - 1) >> lgb)
        return att._HeadWalk(m, self.args, launch, keys=groups)


class BankedAttentionScores(_BankedKernel):
    """``ATT_QK`` on a KV buffer of ``banks`` banks (see the module docstring); a run takes
    :func:`qk_cycles` cycles.

    Parameters
    ----------
    word_bits : int
        Width of a buffer word (a power of two, at least 32).
    banks : int
        Banks of the KV buffer (a power of two, at least 2).
    """

    def cycles(self, args) -> int:
        """See :func:`qk_cycles`."""
        return qk_cycles(args, word_bytes=self._word_bytes, banks=self._banks)

    def _datapath(self, m: Module, launch):
        a, wb, B = self.args, self._word_bytes, self._banks
        lg = exact_log2(wb)
        nw = group_words(B, wb)
        walk = self._walk(m, launch)
        chunks, sm_chunk = Signal(20), Signal(20)
        sm_lane, se_lane = Signal(range(wb // 4)), Signal(range(wb // 4))
        up8 = Signal(21)
        m.d.comb += up8.eq(((a.n + 7) >> 3) << 3)
        with m.If(launch):
            m.d.sync += [chunks.eq((up8 + 8 + wb - 1) >> lg), sm_chunk.eq(up8 >> lg)]
            if wb > 4:
                m.d.sync += [sm_lane.eq(up8[2:lg]), se_lane.eq((up8 + 4)[2:lg])]
        period = Signal(20)
        m.d.comb += period.eq(Mux(chunks > nw, chunks, nw))

        # Issue: word w of the query record and of the group's records (w < chunks).
        run = Signal()
        w = Signal(20)
        with m.If(launch):
            m.d.sync += [run.eq(1), w.eq(0)]
        live = self._group_keys(m, walk)
        m.d.comb += [self.src.en.eq(run & (w < chunks)), self.aux.en.eq(run & (w < chunks)),
                     self.src.addr.eq(walk.qrec + (w << lg)),
                     self.aux.addr.eq(walk.krec + (w << lg))]
        v1, j, last1 = Signal(), Signal(20), Signal()
        live1 = Signal(B)
        m.d.sync += [v1.eq(run & (w < chunks)), j.eq(w), last1.eq(walk.last),
                     live1.eq(live)]
        walk.count(m, run, w, period - 1)

        # Arrival: word j of the query and of each bank's record; at the last word the
        # pairs' scales (stage A), then the rescale of every bank's score (stage B).
        q = self.src.data
        va, lasta = Signal(), Signal()
        livea = Signal(B)
        m.d.sync += va.eq(0)
        q_sm_here = q.word_select(sm_lane, 32).as_signed()
        qsm = Signal(signed(32))
        end = v1 & (j == chunks - 1)
        with m.If(v1 & (j == sm_chunk)):
            m.d.sync += qsm.eq(q_sm_here)
        with m.If(end):
            m.d.sync += [va.eq(1), lasta.eq(last1), livea.eq(live1)]
        q_sm = Mux(j == sm_chunk, q_sm_here, qsm)
        scores = []
        for b in range(B):
            k = self.aux.data[8 * wb * b:8 * wb * (b + 1)]
            prods = []
            for i in range(wb):
                p = Signal(signed(16), name=f"prod{b}_{i}")
                m.d.comb += p.eq(Mux(Cat(Const(i, lg), j) < a.n,
                                     q[8 * i:8 * i + 8].as_signed()
                                     * k[8 * i:8 * i + 8].as_signed(), 0))
                prods.append(p)
            dot, dot_next = Signal(signed(40), name=f"dot{b}"), Signal(signed(40),
                                                                       name=f"dot_next{b}")
            m.d.comb += dot_next.eq(Mux(j == 0, 0, dot) + tree(operator.add, prods))
            k_sm_here = k.word_select(sm_lane, 32).as_signed()
            ksm = Signal(signed(32), name=f"ksm{b}")
            dot_a = Signal(signed(40), name=f"dot_a{b}")
            mant_a = Signal(signed(49), name=f"mant_a{b}")
            shift_a = Signal(signed(34), name=f"shift_a{b}")
            with m.If(v1):
                m.d.sync += dot.eq(dot_next)
            with m.If(v1 & (j == sm_chunk)):
                m.d.sync += ksm.eq(k_sm_here)
            with m.If(end):
                msum = Signal(signed(64), name=f"msum{b}")
                m.d.comb += msum.eq(q_sm * Mux(j == sm_chunk, k_sm_here, ksm))
                mant = att._shift_round(m, msum, Const(16, 5), 49, f"qk_mant{b}")
                m.d.sync += [dot_a.eq(dot_next), mant_a.eq(mant),
                             shift_a.eq(q.word_select(se_lane, 32).as_signed()
                                        + k.word_select(se_lane, 32).as_signed()
                                        - 16 - fx.ACT_FRAC)]
            prod_b = Signal(signed(89), name=f"prod_b{b}")
            m.d.comb += prod_b.eq(dot_a * mant_a)
            scores.append(att._shift_round_sat(m, prod_b, shift_a, f"qk_score{b}"))

        # Write: the group's live scores, contiguous from out_addr, placed in the words
        # they span (byte enables), one word a cycle over the next group_words cycles.
        out_addr = Signal(ADDR_BITS)
        with m.If(launch):
            m.d.sync += out_addr.eq(a.dst_addr)
        lane = out_addr[2:lg] if wb > 4 else Const(0, 1)
        window = Signal(8 * wb * nw)
        enables = Signal(wb * nw)
        base = Signal(ADDR_BITS - lg)
        k_out = Signal(range(nw + 1))
        writing, lastw = Signal(), Signal()
        count = Signal(range(B + 1))
        m.d.comb += count.eq(sum(livea[b] for b in range(B)))
        with m.If(writing):
            m.d.comb += [self.dst.addr.eq(Cat(Const(0, lg), base + k_out)),
                         self.dst.data.eq(window.word_select(k_out, 8 * wb)),
                         self.dst.en.eq(enables.word_select(k_out, wb))]
            with m.If(k_out == nw - 1):
                m.d.sync += writing.eq(0)
            with m.Else():
                m.d.sync += k_out.eq(k_out + 1)
        # A group's scores may arrive in the cycle of the previous group's last word.
        with m.If(va):
            m.d.sync += [window.eq(Cat(*scores) << (lane * 32)),
                         enables.eq(Cat(*(livea[b].replicate(4) for b in range(B)))
                                    << (lane * 4)),
                         base.eq(out_addr[lg:]), k_out.eq(0), writing.eq(1),
                         lastw.eq(lasta), out_addr.eq(out_addr + (count << 2))]
        finish = Signal()
        m.d.comb += finish.eq(writing & lastw & (k_out == nw - 1))
        refuse, code = Signal(), Signal(ErrorCode)
        malformed = self._head_refusal(m)
        aligned = self._aligned(m, ("src_addr", "imm0", "aux_addr", "imm1"))
        m.d.comb += [refuse.eq(malformed | ~aligned), code.eq(ErrorCode.MALFORMED)]
        return refuse, code, finish


class BankedAttentionContext(_BankedKernel):
    """``ATT_PV`` on a KV buffer of ``banks`` banks (see the module docstring); a run takes
    :func:`pv_cycles` cycles.

    Per ``(row, head)`` key group ``g`` takes a period of ``P = max(group_words,
    values + 1)`` cycles (``values = ceil(n / word_bytes)``): its first
    :func:`group_words` cycles read the group's probabilities (``src``, only the words
    they reach); on ``aux`` the first ``values`` cycles read the value rows of group
    ``g - 1`` and the last cycle the bank row of group ``g``'s scale pairs, so its ``B``
    weights are formed as that row arrives, after group ``g - 1``'s value rows have
    used theirs. Each value row is accumulated as it arrives (its accumulator word read
    at its issue, transparent to the write of the previous group's); the last group's
    value rows follow its period. After the last group the output pass writes
    ``sat32(shift_round(acc, 4))`` (ACT) a buffer word of ``word_bytes / 4`` outputs a
    cycle, as the one-bank kernel's (:class:`~hdl.sfu.attention._ContextOutput`).

    Parameters
    ----------
    max_head_dim : int
        Largest head dimension ``n`` accumulated (a multiple of 4; larger is UNSUPPORTED).
    word_bits : int
        Width of a buffer word (a power of two, at least 32).
    banks : int
        Banks of the KV buffer (a power of two, at least 2).
    """

    def __init__(self, *, max_head_dim: int = ATT_PV_MAX_HEAD_DIM, word_bits: int,
                 banks: int):
        self._max_head_dim = att._max_head_dim(self, max_head_dim)
        super().__init__(word_bits=word_bits, banks=banks)

    @property
    def max_head_dim(self) -> int:
        """Largest head dimension accepted."""
        return self._max_head_dim

    def cycles(self, args) -> int:
        """See :func:`pv_cycles`."""
        return pv_cycles(args, self._max_head_dim, word_bytes=self._word_bytes,
                         banks=self._banks)

    def _datapath(self, m: Module, launch):
        a, wb, B = self.args, self._word_bytes, self._banks
        lg = exact_log2(wb)
        nw = group_words(B, wb)
        walk = self._walk(m, launch)
        acc = att._ContextAccumulator(m, wb, self._max_head_dim)

        nvalues = Signal(20)              # ceil(n / wb) value rows
        pair_word = Signal(20)            # the record word of the scale pair
        sm_lane, se_lane = Signal(range(wb // 4)), Signal(range(wb // 4))
        with m.If(launch):
            up8 = ((a.n + 7) >> 3) << 3
            m.d.sync += [nvalues.eq((a.n + wb - 1) >> lg), pair_word.eq(up8 >> lg)]
            if wb > 4:
                m.d.sync += [sm_lane.eq(up8[2:lg]), se_lane.eq((up8 + 4)[2:lg])]
        period = Signal(20)
        m.d.comb += period.eq(Mux(nvalues + 1 > nw, nvalues + 1, nw))
        live = self._group_keys(m, walk)
        out = att._ContextOutput(m, self, launch, acc.old)
        # A period (slot w) of group g: its probability words (src, slots 0 .. nw-1), the
        # value rows of group g - 1 (aux, slots 0 .. nvalues-1, from record vrec) and
        # its scale pairs' bank row (aux, the last slot).
        w = Signal(20)
        p_addr, vrec = Signal(ADDR_BITS), Signal(ADDR_BITS)
        vfirst = Signal()                 # the group of the value rows is the head's first
        value_issue, prob_issue, pair_issue = Signal(), Signal(), Signal()
        p_word = Cat(Const(0, lg), p_addr[lg:])
        # Only the probability words the group's live keys reach are read.
        live_count = Signal(range(B + 1))
        m.d.comb += live_count.eq(sum(live[b] for b in range(B)))
        p_reach = Signal(ADDR_BITS + 1)
        m.d.comb += p_reach.eq(p_addr[:lg] + (live_count << 2))
        with m.FSM():
            with m.State("IDLE"):
                with m.If(launch):
                    m.d.sync += [w.eq(0), p_addr.eq(a.src_addr)]
                    m.next = "KEYS"
            with m.State("KEYS"):
                m.d.comb += [prob_issue.eq(w < nw),
                             value_issue.eq((w < nvalues) & (walk.key != 0)),
                             pair_issue.eq(w == period - 1),
                             self.src.en.eq(prob_issue & ((w << lg) < p_reach)),
                             self.src.addr.eq(p_word + (w << lg)),
                             self.aux.en.eq(value_issue | pair_issue),
                             self.aux.addr.eq(Mux(pair_issue, walk.krec + (pair_word << lg),
                                                  vrec + (w << lg)))]
                with m.If(pair_issue):
                    m.d.sync += [w.eq(0), p_addr.eq(p_addr + (live_count << 2)),
                                 vrec.eq(walk.krec), vfirst.eq(walk.key == 0)]
                    with m.If(walk.last_key):
                        m.next = "TAIL"
                    with m.Else():
                        walk.advance(m)
                with m.Else():
                    m.d.sync += w.eq(w + 1)
            with m.State("TAIL"):
                # The value rows of the head's last group.
                m.d.comb += [value_issue.eq(1), self.aux.en.eq(1),
                             self.aux.addr.eq(vrec + (w << lg))]
                with m.If(w == nvalues - 1):
                    m.d.sync += [w.eq(0), out.word.eq(0)]
                    m.next = "OUT"
                with m.Else():
                    m.d.sync += w.eq(w + 1)
            with m.State("OUT"):
                out.state(m, walk)

        # Arrival: the probability words gather into a window (from the group's first
        # probability's lane); with the pairs' row, the period's last word, the B weights
        # are formed, after the value rows of the previous group (slots before the last)
        # have used theirs.
        w1, lane1 = Signal(20), Signal(max(lg - 2, 1))
        prob1, pair1, value1, vfirst1 = Signal(), Signal(), Signal(), Signal()
        live1 = Signal(B)
        m.d.sync += [w1.eq(w), prob1.eq(prob_issue), pair1.eq(pair_issue),
                     value1.eq(value_issue), vfirst1.eq(vfirst), live1.eq(live)]
        if wb > 4:
            m.d.sync += lane1.eq(p_addr[2:lg])
        probs = [Signal(8 * wb, name=f"probs{k}") for k in range(nw)]
        for k in range(nw):
            with m.If(prob1 & (w1 == k)):
                m.d.sync += probs[k].eq(self.src.data)
        weights = [Signal(signed(32), name=f"weight{b}") for b in range(B)]
        window = Signal(8 * wb * nw)
        m.d.comb += window.eq(Cat(*(Mux(prob1 & (w1 == k), self.src.data, probs[k])
                                    for k in range(nw))) >> (lane1 * 32))
        for b in range(B):
            pair = self.aux.data[8 * wb * b:8 * wb * (b + 1)]
            prod = Signal(signed(64), name=f"pv_prod{b}")
            m.d.comb += prod.eq(window[32 * b:32 * b + 32].as_signed()
                                * pair.word_select(sm_lane, 32).as_signed())
            wshift = Signal(signed(34), name=f"pv_wshift{b}")
            m.d.comb += wshift.eq(pair.word_select(se_lane, 32).as_signed()
                                  + fx.P_FRAC - fx.W_FRAC)
            wnew = att._shift_round_sat(m, prod, wshift, f"pv_weight{b}")
            with m.If(pair1):
                m.d.sync += weights[b].eq(Mux(live1[b], wnew, 0))

        # Value row i arrives at w1 = i: accumulated as it arrives (its accumulator word
        # read at the issue).
        m.d.comb += [acc.addr_r.eq(Mux(value_issue, w, out.row)),
                     acc.addr_w.eq(w1), acc.we.eq(value1)]
        for i, (old, new) in enumerate(zip(acc.old, acc.new)):
            terms = [weights[b] * self.aux.data[8 * wb * b + 8 * i:8 * wb * b + 8 * i + 8]
                     .as_signed() for b in range(B)]
            m.d.comb += new.eq(Mux(vfirst1, 0, old) + tree(operator.add, terms))

        finish = Signal()
        m.d.comb += finish.eq(out.finish)
        refuse, code = Signal(), Signal(ErrorCode)
        malformed = self._head_refusal(m)
        aligned = self._aligned(m, ("aux_addr", "imm1"))
        m.d.comb += refuse.eq(malformed | ~aligned | (a.n > self._max_head_dim))
        with m.If(malformed | ~aligned):
            m.d.comb += code.eq(ErrorCode.MALFORMED)
        with m.Else():
            m.d.comb += code.eq(ErrorCode.UNSUPPORTED)
        return refuse, code, finish
