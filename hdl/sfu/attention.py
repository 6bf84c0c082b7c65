"""Attention kernels of the SFU: ``ATT_QK``, ``SOFTMAX`` and ``ATT_PV``.

Each kernel is a :class:`wiring.Component` with the members of
:func:`hdl.sfu.kernel.kernel_signature` and computes its function of :mod:`airfoil.fixedpoint`
bit-exactly, with the memory layout of :class:`airfoil.isa.SfuFunc` (the reference is the
ISA simulator's ``_sfu_func``):

* :class:`AttentionScores` (``ATT_QK``): one score per ``(row, head, key)``; both records
  of a pair stream in a buffer word per cycle on ``src`` and ``aux`` (``word_bytes`` INT8
  MACs per cycle into an adder tree), then the pair's scales give the rescale;
  :func:`qk_chunks` cycles per score when both record streams are word-aligned
  (:func:`qk_aligned`), one more (the funnel's word) when not.
* :class:`Softmax` (``SOFTMAX``): three passes per row (max over the visible keys a word
  of scores per cycle, then exp and sum, and normalise and write, a chunk of ``lanes``
  scores per cycle through ``lanes`` copies of a 4-stage exp pipeline), with a
  table-plus-Newton reciprocal between the second and third pass.
* :class:`AttentionContext` (``ATT_PV``): per ``(row, head)`` and key, the probability
  and the value record's scale pair give the Q20 weight, then the record's values stream
  in a word (``word_bytes``) per cycle into an on-chip accumulator of ``max_head_dim``
  lanes; a final pass writes the ``n`` outputs a buffer word (``word_bytes / 4`` int32)
  per cycle (:func:`pv_out_words`).

The kernels' read ports are a buffer word wide (``word_bits``, 32 to 512), and the write
ports of :class:`Softmax` and :class:`AttentionContext` too (with byte enables;
:class:`AttentionScores` writes an int32 at a time). Records may
start at any byte address: each read port feeds a *funnel* that joins the previous and the
current word, so one extra word per stream aligns them (that word is read only when the
record reaches into it, so nothing past a record's end is read). The compiler places
records at word-aligned addresses and strides (``compiler.lower_llm.record_bytes``):
``ATT_QK`` then takes each chunk straight from its word and spends no cycle on the
funnel, ``ATT_PV`` none past a key's values (:func:`qk_aligned`, :func:`pv_aligned`). Every table is a
ROM built from :mod:`airfoil.fixedpoint`'s own tables. Each kernel's cycle count, start to
``done``, is :func:`cycles` of its arguments (1 for refused arguments).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory, wiring
from amaranth.utils import exact_log2

from airfoil import fixedpoint as fx
from airfoil.isa import ATT_PV_MAX_HEAD_DIM, ErrorCode, SfuFunc

from .arith import live_lanes, span_words, tree, word_lanes
from .kernel import ADDR_BITS, kernel_signature, lane_count
from .quant import recip_correction, recip_newton

__all__ = ["AttentionScores", "Softmax", "AttentionContext", "KERNELS", "cycles",
           "qk_cycles", "softmax_cycles", "softmax_shifted", "pv_cycles", "qk_chunks",
           "qk_aligned", "pv_aligned", "pv_scale_words", "pv_out_words"]

#: Stages of the softmax pipeline (read, d, table, exp and sum, the output's product by
#: the reciprocal, its rounding and write).
_SOFTMAX_LATENCY = 5
_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


# -- cycle formulas ---------------------------------------------------------------------

def _arg(args, name: str) -> int:
    value = args.get(name, 0) if isinstance(args, Mapping) else getattr(args, name)
    return int(getattr(value, "value", value))


def _up8(n: int) -> int:
    return (n + 7) // 8 * 8


def _qk_pv_refused(args) -> bool:
    n, rows = _arg(args, "n"), _arg(args, "rows")
    H, KV, L = _arg(args, "heads"), _arg(args, "kv_heads"), _arg(args, "length")
    return n < 1 or rows < 1 or KV < 1 or KV > H or L < 1


def _check_word_bytes(word_bytes) -> int:
    if (not isinstance(word_bytes, int) or isinstance(word_bytes, bool) or word_bytes < 4
            or word_bytes & (word_bytes - 1)):
        raise TypeError(f"Word width must be a power of two of at least 4 bytes, "
                        f"not {word_bytes!r}")
    return word_bytes


def qk_chunks(n: int, word_bytes: int) -> int:
    """Words of ``word_bytes`` one ``ATT_QK`` record of ``n`` values and its scale pair
    fills when aligned (``ceil((up8(n) + 8) / word_bytes)``); one more word is read per
    record for the funnel."""
    return -(-(_up8(n) + 8) // word_bytes)


def qk_aligned(args, word_bytes: int) -> bool:
    """Whether every query and key record of an ``ATT_QK`` starts on a word of
    ``word_bytes``: ``src_addr``, the query stride ``imm0``, ``aux_addr`` and the key
    stride ``imm1`` all multiples of it (then no record needs the funnel's word)."""
    return not any(_arg(args, name) % word_bytes
                   for name in ("src_addr", "imm0", "aux_addr", "imm1"))


def pv_aligned(args, word_bytes: int) -> bool:
    """Whether every value record of an ``ATT_PV`` starts on a word of ``word_bytes`` (at
    least 8) and its scale pair too: ``aux_addr``, the key stride ``imm1`` and
    ``up8(n)`` all multiples of it. Then a key needs no funnel word past its values."""
    return word_bytes >= 8 and not any(v % word_bytes for v in (
        _arg(args, "aux_addr"), _arg(args, "imm1"), _up8(_arg(args, "n"))))


def pv_scale_words(word_bytes: int, aligned: bool = False) -> int:
    """Words ``ATT_PV`` reads per key for the 8-byte scale pair: the words it spans, plus
    one for the funnel unless the pair starts on a word (``aligned``, :func:`pv_aligned`)."""
    return max(8 // word_bytes, 1) + (0 if aligned else 1)


def qk_cycles(args, *, word_bytes: int) -> int:
    """Cycles of :class:`AttentionScores` from ``start`` to ``done`` for ``args``.

    ``args`` is a mapping (or an object with attributes) holding the
    :data:`~hdl.sfu.kernel.ARGS_LAYOUT` fields ``n``, ``rows``, ``heads``, ``kv_heads``
    and ``length``, and the record addresses and strides ``src_addr``, ``imm0``,
    ``aux_addr``, ``imm1`` (absent: 0); ``word_bytes`` is the width of the kernel's read
    ports. Each score takes :func:`qk_chunks` cycles (one more, the funnel's word, unless
    :func:`qk_aligned`), and the last one 4 more to rescale and write.
    """
    _check_word_bytes(word_bytes)
    if _qk_pv_refused(args):
        return 1
    pairs = _arg(args, "rows") * _arg(args, "heads") * _arg(args, "length")
    funnel = 0 if qk_aligned(args, word_bytes) else 1
    return pairs * (qk_chunks(_arg(args, "n"), word_bytes) + funnel) + 4


def softmax_cycles(args, *, word_bytes: int, lanes: int | None = None) -> int:
    """Cycles of :class:`Softmax` from ``start`` to ``done`` (fields ``n``, ``rows``,
    ``heads``, ``pos``, ``length``, ``imm0``: the window, ``imm1``: bidirectional; 1 when
    refused) with ports of ``word_bytes`` and chunks of ``lanes`` scores (None: a
    word's): per row the max pass over the words the visible scores span
    (:func:`~hdl.sfu.arith.span_words`), the exp pass over the chunks they span, 7
    cycles (exp pipeline drain and reciprocal), the output pass over the chunks all
    ``length`` span and one more when :func:`softmax_shifted` (``src_addr``, ``dst_addr``;
    absent: 0); then the last row's drain and ``done``."""
    lanes = lane_count(lanes, 8 * _check_word_bytes(word_bytes), "Softmax")
    n, rows, L = _arg(args, "n"), _arg(args, "rows"), _arg(args, "length")
    out_chunks = span_words(L, 4 * lanes) + softmax_shifted(args, lanes)
    H, pos, window = _arg(args, "heads"), _arg(args, "pos"), _arg(args, "imm0")
    both_ways = _arg(args, "imm1") != 0
    if n < 1 or rows < 1 or L < 1 or (window and not both_ways and pos + rows >= L + window):
        return 1
    total = _SOFTMAX_LATENCY + 1           # drain of the last row, then done
    for t in range(rows):
        visible = L if both_ways else min(L, pos + t + 1)
        total += H * (span_words(visible, word_bytes) + span_words(visible, 4 * lanes)
                      + out_chunks + 7)
    return total


def softmax_shifted(args, lanes: int) -> bool:
    """Whether :class:`Softmax`'s rows start at other lanes of their chunks of ``lanes``
    scores in ``src`` and ``dst`` (``src_addr`` and ``dst_addr`` apart by other than a
    multiple of ``4 * lanes`` bytes): then the output pass funnels its chunks from the
    src row's lanes to the dst row's and takes one cycle more per row to write the last.
    In place (the compiler's ``SOFTMAX``) they never are."""
    return (_arg(args, "dst_addr") - _arg(args, "src_addr")) % (4 * lanes) != 0


def pv_cycles(args, max_head_dim: int = ATT_PV_MAX_HEAD_DIM, *, word_bytes: int) -> int:
    """Cycles of :class:`AttentionContext` from ``start`` to ``done`` (fields ``n``,
    ``rows``, ``heads``, ``kv_heads``, ``length``); 1 when ``n > max_head_dim``.

    Per ``(row, head)``: per key the :func:`pv_scale_words`, ``ceil(n / word_bytes)``
    value words and the funnel's word (neither funnel word when :func:`pv_aligned`, for
    which ``args`` also gives ``aux_addr`` and ``imm1``; absent: 0: a key is then the
    words of its record, as in ``ATT_QK``, and one cycle more finishes the last value
    word's accumulation); then the output pass's :func:`pv_out_words` cycles.
    """
    _check_word_bytes(word_bytes)
    if _qk_pv_refused(args) or _arg(args, "n") > max_head_dim:
        return 1
    n, L = _arg(args, "n"), _arg(args, "length")
    aligned = pv_aligned(args, word_bytes)
    per_key = pv_scale_words(word_bytes, aligned) + -(-n // word_bytes) + (0 if aligned else 1)
    drain = 1 if aligned else 0
    return (_arg(args, "rows") * _arg(args, "heads")
            * (L * per_key + drain + pv_out_words(args, word_bytes)) + 2)


def pv_out_words(args, word_bytes: int) -> int:
    """Cycles of the ``ATT_PV`` output pass per ``(row, head)`` (fields ``n`` and
    ``dst_addr``): a buffer word of ``word_bytes / 4`` outputs a cycle, the
    ``ceil(4 n / word_bytes)`` words of ``n`` int32, and one more (the funnel's) unless
    every head's outputs start on a word (``dst_addr`` and ``4 n`` multiples of
    ``word_bytes``)."""
    n = _arg(args, "n")
    on_words = _arg(args, "dst_addr") % word_bytes == 0 and 4 * n % word_bytes == 0
    return -(-4 * n // word_bytes) + (0 if on_words else 1)


def cycles(args, *, word_bytes: int, max_head_dim: int = ATT_PV_MAX_HEAD_DIM,
           lanes: int | None = None, kv_banks: int = 1) -> int:
    """Cycles of the attention kernel named by ``args["func"]`` (a :class:`SfuFunc`) with
    read ports of ``word_bytes`` (``SOFTMAX``: chunks of ``lanes`` scores, None: a
    word's); ``ATT_QK`` and ``ATT_PV`` on a KV buffer of ``kv_banks`` banks take the
    formulas of :mod:`hdl.sfu.banked_attention` when there are several."""
    from . import banked_attention
    func = SfuFunc(_arg(args, "func"))
    if func == SfuFunc.ATT_QK:
        if kv_banks > 1:
            return banked_attention.qk_cycles(args, word_bytes=word_bytes, banks=kv_banks)
        return qk_cycles(args, word_bytes=word_bytes)
    if func == SfuFunc.SOFTMAX:
        return softmax_cycles(args, word_bytes=word_bytes, lanes=lanes)
    if func == SfuFunc.ATT_PV:
        if kv_banks > 1:
            return banked_attention.pv_cycles(args, max_head_dim, word_bytes=word_bytes,
                                              banks=kv_banks)
        return pv_cycles(args, max_head_dim, word_bytes=word_bytes)
    raise ValueError(f"Function must be ATT_QK, SOFTMAX or ATT_PV, not {func.name}")


# -- shared datapath pieces -------------------------------------------------------------

def _funnel(prev, data, offset):
    """The word (of ``data``'s width) at byte ``offset`` of ``prev`` followed by ``data``."""
    return (Cat(prev, data) >> Cat(Const(0, 3), offset))[:len(data)]


def _shift_round(m: Module, x, s, width: int, name: str):
    """``fx.shift_round(x, s)`` for signed ``x`` and unsigned ``s``: a signed result."""
    res = Signal(signed(width), name=name)
    sm1 = Signal(len(s), name=f"{name}_sm1")
    m.d.comb += sm1.eq(s - 1)
    with m.If(s == 0):
        m.d.comb += res.eq(x)
    with m.Else():
        m.d.comb += res.eq(((x >> sm1) + 1) >> 1)
    return res


def _sat32(m: Module, x, name: str):
    """Saturate signed ``x`` to 32 bits."""
    res = Signal(signed(32), name=name)
    with m.If(x > _INT32_MAX):
        m.d.comb += res.eq(_INT32_MAX)
    with m.Elif(x < _INT32_MIN):
        m.d.comb += res.eq(_INT32_MIN)
    with m.Else():
        m.d.comb += res.eq(x)
    return res


def _shift_round_sat(m: Module, x, s, name: str):
    """``fx.shift_round_sat(x, s)`` (32-bit result) for signed ``x`` and signed ``s``.

    A right shift is limited to 62 and a left shift to 31 with the operand first clamped
    to ``[-2**31, 2**31]``, exactly as the torch reference does.
    """
    width = len(x) + 1
    right_s = Signal(range(63), name=f"{name}_rs")
    left_s = Signal(range(32), name=f"{name}_ls")
    with m.If(s > 62):
        m.d.comb += right_s.eq(62)
    with m.Elif(s > 0):
        m.d.comb += right_s.eq(s)
    with m.If(s < -31):
        m.d.comb += left_s.eq(31)
    with m.Elif(s < 0):
        m.d.comb += left_s.eq(-s)
    right = _shift_round(m, x, right_s, width, f"{name}_right")
    clamped = Signal(signed(33), name=f"{name}_clamped")
    with m.If(x > (1 << 31)):
        m.d.comb += clamped.eq(1 << 31)
    with m.Elif(x < _INT32_MIN):
        m.d.comb += clamped.eq(_INT32_MIN)
    with m.Else():
        m.d.comb += clamped.eq(x)
    left = Signal(signed(64), name=f"{name}_left")
    m.d.comb += left.eq(clamped << left_s)
    pre = Signal(signed(max(width, 64)), name=f"{name}_pre")
    m.d.comb += pre.eq(Mux(s > 0, right, left))
    return _sat32(m, pre, name)


def _rom(table) -> memory.Memory:
    values = [int(v) for v in table.tolist()]
    return memory.Memory(shape=unsigned(max(v.bit_length() for v in values)),
                         depth=len(values), init=values)


def _max_head_dim(kernel, value) -> int:
    """``value`` as the largest head dimension an ``ATT_PV`` ``kernel`` accumulates (a
    positive multiple of 4), else TypeError (the kernel, refused, is never elaborated)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 4 or value % 4:
        kernel._MustUse__silence = True
        raise TypeError(f"Maximum head dimension must be a positive multiple of 4, "
                        f"not {value!r}")
    return value


class _ContextAccumulator:
    """The ``ATT_PV`` kernels' context accumulator: ``word_bytes`` memories of 64-bit
    lanes, row ``r`` of lane ``b`` holding element ``r * word_bytes + b`` of the head's
    context, all lanes at one read address (:attr:`addr_r`, transparent for the write)
    and one write address (:attr:`addr_w`, :attr:`we`). The kernel drives :attr:`new`
    (each lane's written value) from :attr:`old` (each lane's read value)."""

    def __init__(self, m: Module, word_bytes: int, max_head_dim: int):
        depth = -(-max_head_dim // word_bytes)
        self.addr_r, self.addr_w = Signal(range(depth)), Signal(range(depth))
        self.we = Signal()
        self.old, self.new = [], []
        for b in range(word_bytes):
            m.submodules[f"acc{b}"] = acc = memory.Memory(shape=signed(64), depth=depth,
                                                          init=[])
            wr = acc.write_port()
            rd = acc.read_port(transparent_for=(wr,))
            new = Signal(signed(64), name=f"acc_new{b}")
            m.d.comb += [rd.addr.eq(self.addr_r), wr.addr.eq(self.addr_w),
                         wr.en.eq(self.we), wr.data.eq(new)]
            self.old.append(rd.data)
            self.new.append(new)


class _ContextOutput:
    """The output pass of ``ATT_PV`` (both of its kernels): per ``(row, head)``, the ``n``
    outputs ``sat32(shift_round(acc, 4))`` (ACT) a buffer word of ``L = word_bytes / 4``
    a cycle, in :func:`pv_out_words` cycles.

    The accumulator is the kernels' (``word_bytes`` memories of 64-bit lanes, row ``r`` of
    lane ``b`` holding element ``r * word_bytes + b``), so output chunk ``c`` (elements
    ``c L .. c L + L - 1``) is a quarter of row ``c // 4``. Word ``k`` of a head's pass
    reads chunk ``k`` (:attr:`row`); a cycle later its ``L`` lanes are rescaled and the
    funnel of the previous chunk and this one, shifted to the lane of the head's first
    output in its ``dst`` word, is written under the byte enables of the outputs it holds
    (chunks past ``n``, and the chunk before the first, hold none). So word ``k`` of the
    pass is the ``k``-th word of ``dst`` the head's outputs reach, the last (the funnel's)
    empty when they end on a word.

    The kernel's FSM drives :attr:`issue` with :attr:`word` (``0 .. words - 1``) and
    :attr:`last` (the run's last word); :attr:`finish` marks the run's last write.
    """

    def __init__(self, m: Module, kernel, launch, acc_old):
        a, wb = kernel.args, kernel._word_bytes
        lg, lanes = exact_log2(wb), wb // 4
        llg = lg - 2
        #: Words of a head's pass (:func:`pv_out_words`), set at ``launch``.
        self.words = Signal(20)
        self.issue, self.word, self.last = Signal(), Signal(20), Signal()
        chunks = Signal(20)
        with m.If(launch):
            on_words = (a.dst_addr[:lg] == 0) & ((a.n << 2)[:lg] == 0)
            m.d.sync += [chunks.eq((a.n + lanes - 1) >> llg),
                         self.words.eq(((a.n + lanes - 1) >> llg) + Mux(on_words, 0, 1))]
        #: The accumulator row to read in an issue cycle (row 0 past the last chunk).
        self.row = Mux(self.word < chunks, self.word >> 2, 0)

        vo, k, last = Signal(), Signal(20), Signal()
        m.d.sync += [vo.eq(self.issue), k.eq(self.word), last.eq(self.last)]
        quarter = Cat(*acc_old).word_select(k[:2], 64 * lanes)
        vals = Cat(*(_sat32(m, _shift_round(m, quarter[64 * j:64 * j + 64].as_signed(),
                                            Const(fx.W_FRAC - fx.ACT_FRAC, 3), 64,
                                            f"pv_round{j}"), f"pv_out{j}")
                     for j in range(lanes)))
        live = Cat(*(Cat(Const(j, llg), k) < a.n for j in range(lanes)))
        prev_vals, prev_live = Signal(32 * lanes), Signal(lanes)
        out_addr = Signal(ADDR_BITS)         # the byte address of the head's first output
        # Lanes from the previous chunk's first to the word's: the chunk's lanes, less the
        # lane of the head's first output in its word.
        shift = Signal(range(lanes + 1))
        m.d.comb += shift.eq(lanes - (out_addr[2:lg] if llg else 0))
        with m.If(vo):
            m.d.sync += [prev_vals.eq(vals), prev_live.eq(live)]
            with m.If(k == self.words - 1):
                m.d.sync += out_addr.eq(out_addr + (a.n << 2))
        with m.If(launch):
            m.d.sync += out_addr.eq(a.dst_addr)
        held = Mux(k == 0, 0, prev_live)
        word_live = (Cat(held, live) >> shift)[:lanes]
        with m.If(vo):
            m.d.comb += [kernel.dst.addr.eq(Cat(Const(0, lg), out_addr[lg:] + k)),
                         kernel.dst.data.eq((Cat(prev_vals, vals) >> (32 * shift))
                                            [:32 * lanes]),
                         kernel.dst.en.eq(Cat(*(x.replicate(4) for x in word_live)))]
        #: The run's last write.
        self.finish = vo & last

    def state(self, m: Module, walk):
        """The body of the kernel FSM's output state: a head's words, then the next
        ``(row, head)`` (state ``KEYS``) or, after the run's last, ``IDLE``."""
        m.d.comb += self.issue.eq(1)
        with m.If(self.word == self.words - 1):
            walk.advance(m)
            with m.If(walk.last):
                m.d.comb += self.last.eq(1)
                m.next = "IDLE"
            with m.Else():
                m.next = "KEYS"
        with m.Else():
            m.d.sync += self.word.eq(self.word + 1)


class _Kernel(wiring.Component):
    """Common control of the attention kernels: ``busy``, ``done`` and the error result.

    Subclasses implement ``_datapath(m, launch)``, which returns ``(refuse, code,
    finish)``: ``refuse`` (combinational, sampled with ``start``) refuses the arguments
    with error ``code``; ``launch`` is asserted by this class in the ``start`` cycle of an
    accepted run (the datapath initialises its counters then); the datapath drives
    ``finish`` in the cycle of its last write, so ``done`` follows one cycle later.

    ``word_bits`` is the width of the read ports (the buffers' word: of the record
    streams of ``ATT_QK`` and ``ATT_PV``, of the :class:`Softmax`'s passes), ``write_bits``
    of the write port (32, or the word for the :class:`Softmax`'s chunks and the
    :class:`AttentionContext`'s output words).
    """

    def __init__(self, *, word_bits: int = 32, write_bits: int = 32, aux_bits=None):
        try:
            if not isinstance(word_bits, int) or isinstance(word_bits, bool) or word_bits % 8:
                raise TypeError(f"Word width must be a whole number of bytes, not "
                                f"{word_bits!r}")
            self._word_bytes = _check_word_bytes(word_bits // 8)
        except TypeError:
            self._MustUse__silence = True       # refused, so never elaborated
            raise
        super().__init__(kernel_signature(word_bits, write_bits, aux_bits))

    @property
    def word_bits(self) -> int:
        """Width of the read ports."""
        return 8 * self._word_bytes

    def _datapath(self, m: Module, launch):  # pragma: no cover - abstract
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        launch = Signal()
        refuse, code, finish = self._datapath(m, launch)
        m.d.sync += [self.done.eq(0), self.err.eq(0)]
        m.d.sync += self.err_code.eq(ErrorCode.NONE)
        with m.If(self.start & ~self.busy):
            m.d.sync += self.busy.eq(1)
            with m.If(refuse):
                m.d.sync += [self.done.eq(1), self.err.eq(1), self.err_code.eq(code)]
            with m.Else():
                m.d.comb += launch.eq(1)
        with m.If(finish):
            m.d.sync += self.done.eq(1)
        with m.If(self.done):
            m.d.sync += self.busy.eq(0)
        return m

    def _head_refusal(self, m: Module):
        """MALFORMED check shared by ATT_QK and ATT_PV.

        Refuses ``n``, ``rows``, ``kv_heads`` or ``length`` of 0 and ``kv_heads > heads``
        as the ISA simulator does. ``heads`` not a multiple of ``kv_heads`` otherwise is
        left to :class:`~hdl.sfu.unit.SfuUnit`'s divider (a kernel given such arguments
        maps head ``h`` to kv head ``floor(h * kv_heads / heads)``).
        """
        a = self.args
        bad = Signal(name="malformed")
        m.d.comb += bad.eq((a.n == 0) | (a.rows == 0) | (a.kv_heads == 0) | (a.length == 0)
                           | (a.kv_heads > a.heads))
        return bad


class _HeadWalk:
    """Counters over ``(row, head, key)`` and the record addresses of a pair.

    Query (or probability) rows advance in ``(row, head)`` order; head ``h`` reads the
    key/value records of kv head ``kv = h // (heads / kv_heads) = floor(h * kv_heads /
    heads)`` at ``aux_addr + (l * kv_heads + kv) * imm1``. The kv head follows from a
    remainder ``h * kv_heads - kv * heads`` in ``[0, heads)`` kept by one add and compare
    per head, so no divider is needed.
    """

    def __init__(self, m: Module, args, launch, keys=None):
        self.args = args
        #: Key steps of a ``(row, head)``: ``length``, or the key groups of a banked buffer.
        self.keys = args.length if keys is None else keys
        self.stride_l = Signal(ADDR_BITS)
        self.row = Signal(32)
        self.head = Signal(10)
        self.kv = Signal(10)
        self.rem = Signal(10)
        self.key = Signal(32)
        self.qrec = Signal(ADDR_BITS)
        self.kbase = Signal(ADDR_BITS)
        self.krec = Signal(ADDR_BITS)
        a = args
        with m.If(launch):
            m.d.sync += [
                self.stride_l.eq(a.kv_heads * a.imm1),
                self.row.eq(0), self.head.eq(0), self.kv.eq(0), self.rem.eq(0),
                self.key.eq(0), self.qrec.eq(a.src_addr), self.kbase.eq(a.aux_addr),
                self.krec.eq(a.aux_addr),
            ]

    @property
    def last_key(self):
        return self.key == self.keys - 1

    @property
    def last(self):
        """The current pair is the last one."""
        return (self.last_key & (self.head == self.args.heads - 1)
                & (self.row == self.args.rows - 1))

    def advance(self, m: Module):
        """Go to the next key (and the next ``(row, head)`` after the last key)."""
        a = self.args
        with m.If(~self.last_key):
            m.d.sync += [self.key.eq(self.key + 1), self.krec.eq(self.krec + self.stride_l)]
        with m.Else():
            m.d.sync += [self.key.eq(0), self.qrec.eq(self.qrec + a.imm0)]
            step = self.rem + a.kv_heads
            with m.If(self.head == a.heads - 1):
                m.d.sync += [self.head.eq(0), self.kv.eq(0), self.rem.eq(0),
                             self.row.eq(self.row + 1),
                             self.kbase.eq(a.aux_addr), self.krec.eq(a.aux_addr)]
            with m.Elif(step >= a.heads):
                m.d.sync += [self.head.eq(self.head + 1), self.rem.eq(step - a.heads),
                             self.kv.eq(self.kv + 1), self.kbase.eq(self.kbase + a.imm1),
                             self.krec.eq(self.kbase + a.imm1)]
            with m.Else():
                m.d.sync += [self.head.eq(self.head + 1), self.rem.eq(step),
                             self.krec.eq(self.kbase)]

    def count(self, m: Module, run, w, last_w):
        """While ``run``: count ``w`` through a key's (or key group's) cycles ``0 ..
        last_w``, then go to the next key, and clear ``run`` after the last."""
        with m.If(run):
            with m.If(w == last_w):
                m.d.sync += w.eq(0)
                self.advance(m)
                with m.If(self.last):
                    m.d.sync += run.eq(0)
            with m.Else():
                m.d.sync += w.eq(w + 1)


# -- ATT_QK -----------------------------------------------------------------------------

class AttentionScores(_Kernel):
    """``ATT_QK``: :func:`airfoil.fixedpoint.attention_scores` over GQA heads.

    Writes the int32 scores ``(rows, heads, length)`` contiguously at ``dst_addr``. For
    each score the query record (``src``) and the key record (``aux``) stream in whole, a
    word of ``word_bytes`` per cycle on each port: :func:`qk_chunks` aligned words each
    plus one for the funnel, or without it when every record starts on a word
    (:func:`qk_aligned`: each chunk is then the word itself). The values of a word go
    into ``word_bytes`` INT8 products and an adder tree, the scale pair is picked from
    its word(s); three stages rescale (the product by the scale pair's mantissa), round and
    saturate, and write. Scores are issued back to back, so a run takes :func:`qk_cycles` cycles.

    Parameters
    ----------
    word_bits : int
        Width of the read ports (a power of two, at least 32): the buffers' word.
    """

    def cycles(self, args) -> int:
        """See :func:`qk_cycles`."""
        return qk_cycles(args, word_bytes=self._word_bytes)

    def _datapath(self, m: Module, launch):
        a = self.args
        wb = self._word_bytes
        lg = exact_log2(wb)
        walk = _HeadWalk(m, a, launch)
        # Per run: the chunks C of a record (C + 1 words are read), the bytes an aligned
        # record leaves free in its last word (an offset up to them needs no funnel word
        # past the record), and where sm and se lie in the record's aligned chunks.
        chunks = Signal(20)
        slack = Signal(lg)
        sm_chunk = Signal(20)
        sm_lane = Signal(range(wb // 4))
        se_lane = Signal(range(wb // 4))
        up8 = Signal(21)
        m.d.comb += up8.eq(((a.n + 7) >> 3) << 3)
        # Every record on a word: no funnel word, each chunk is the word that arrives.
        aligned = Signal()
        with m.If(launch):
            rec = up8 + 8
            m.d.sync += [chunks.eq((rec + wb - 1) >> lg), slack.eq((0 - rec)[:lg]),
                         sm_chunk.eq(up8 >> lg),
                         aligned.eq((a.src_addr | a.imm0 | a.aux_addr | a.imm1)[:lg] == 0)]
            if wb > 4:
                m.d.sync += [sm_lane.eq(up8[2:lg]), se_lane.eq((up8 + 4)[2:lg])]

        # Issue: word w of the current pair's two records.
        run = Signal()
        w = Signal(20)
        out_addr = Signal(ADDR_BITS)
        with m.If(launch):
            m.d.sync += [run.eq(1), w.eq(0), out_addr.eq(a.dst_addr)]
        qbase = Cat(Const(0, lg), walk.qrec[lg:])
        kbase = Cat(Const(0, lg), walk.krec[lg:])
        # The funnel's word past the record is read only when the record reaches into it,
        # so a record that ends at the end of its buffer is never read beyond.
        tail = w == chunks
        m.d.comb += [
            self.src.en.eq(run & ~(tail & (walk.qrec[:lg] <= slack))),
            self.aux.en.eq(run & ~(tail & (walk.krec[:lg] <= slack))),
            self.src.addr.eq(qbase + (w << lg)), self.aux.addr.eq(kbase + (w << lg)),
        ]
        # Arrival tags (one cycle after issue).
        v1, w1, last1 = Signal(), Signal(20), Signal()
        qoff1, koff1 = Signal(lg), Signal(lg)
        m.d.sync += [v1.eq(run), w1.eq(w), last1.eq(walk.last),
                     qoff1.eq(walk.qrec[:lg]), koff1.eq(walk.krec[:lg])]
        last_w = Signal(20)
        m.d.comb += last_w.eq(Mux(aligned, chunks - 1, chunks))
        walk.count(m, run, w, last_w)

        # Arrival: funnel both ports into aligned chunks; chunk j holds record bytes
        # j * wb .. j * wb + wb - 1.
        qprev, kprev = Signal(8 * wb), Signal(8 * wb)
        with m.If(v1):
            m.d.sync += [qprev.eq(self.src.data), kprev.eq(self.aux.data)]
        qchunk = Mux(aligned, self.src.data, _funnel(qprev, self.src.data, qoff1))
        kchunk = Mux(aligned, self.aux.data, _funnel(kprev, self.aux.data, koff1))
        j = Signal(20)
        m.d.comb += j.eq(Mux(aligned, w1, w1 - 1))
        prods = []
        for b in range(wb):
            p = Signal(signed(16), name=f"prod{b}")
            live = Cat(Const(b, lg), j) < a.n
            m.d.comb += p.eq(Mux(live, qchunk[8 * b:8 * b + 8].as_signed()
                                 * kchunk[8 * b:8 * b + 8].as_signed(), 0))
            prods.append(p)
        dot = Signal(signed(40))
        dot_next = Signal(signed(40))
        m.d.comb += dot_next.eq(Mux(j == 0, 0, dot) + tree(operator.add, prods))
        q_sm_here = qchunk.word_select(sm_lane, 32).as_signed()
        k_sm_here = kchunk.word_select(sm_lane, 32).as_signed()
        qsm, ksm = Signal(signed(32)), Signal(signed(32))
        # Stage A (registered at the arrival of the last chunk, which holds se): dot, M, S.
        va, lasta = Signal(), Signal()
        dot_a = Signal(signed(40))
        mant_a = Signal(signed(49))
        shift_a = Signal(signed(34))
        m.d.sync += va.eq(0)
        with m.If(v1 & (aligned | (w1 != 0))):
            m.d.sync += dot.eq(dot_next)
            with m.If(j == sm_chunk):
                m.d.sync += [qsm.eq(q_sm_here), ksm.eq(k_sm_here)]
            with m.If(j == chunks - 1):
                msum = Signal(signed(64))
                m.d.comb += msum.eq(Mux(j == sm_chunk, q_sm_here, qsm)
                                    * Mux(j == sm_chunk, k_sm_here, ksm))
                mant = _shift_round(m, msum, Const(16, 5), 49, "qk_mant")
                m.d.sync += [va.eq(1), lasta.eq(last1), dot_a.eq(dot_next), mant_a.eq(mant),
                             shift_a.eq(qchunk.word_select(se_lane, 32).as_signed()
                                        + kchunk.word_select(se_lane, 32).as_signed()
                                        - 16 - fx.ACT_FRAC)]
        # Stage B: rescale. Stage C: round, saturate, write.
        vb, lastb = Signal(), Signal()
        prod_b = Signal(signed(89))
        shift_b = Signal(signed(34))
        m.d.sync += [vb.eq(va), lastb.eq(lasta), prod_b.eq(dot_a * mant_a),
                     shift_b.eq(shift_a)]
        score = _shift_round_sat(m, prod_b, shift_b, "qk_score")
        with m.If(vb):
            m.d.comb += [self.dst.addr.eq(out_addr), self.dst.data.eq(score),
                         self.dst.en.eq(0b1111)]
            m.d.sync += out_addr.eq(out_addr + 4)
        finish = Signal()
        m.d.comb += finish.eq(vb & lastb)
        return self._head_refusal(m), ErrorCode.MALFORMED, finish


# -- SOFTMAX ----------------------------------------------------------------------------

_PASS_MAX, _PASS_EXP, _PASS_OUT = 0, 1, 2


class Softmax(_Kernel):
    """``SOFTMAX``: :func:`airfoil.fixedpoint.softmax` of ``rows x heads`` rows of
    ``length`` int32 scores with the causal mask: row ``(t, h)`` sees keys
    ``0 .. pos + t``, or with a sliding window ``imm0`` (nonzero) the keys
    ``pos + t - imm0 + 1 .. pos + t``; with ``imm1`` nonzero (bidirectional attention, an
    encoder's) every row sees all ``length`` keys and ``imm0`` is ignored.

    The exp and output passes take a *chunk* per cycle: ``lanes`` scores on a
    ``4 * lanes``-byte boundary of the ``src`` row (a row starting mid-chunk has its first
    chunk partly outside it; lanes outside count as masked), each lane with its own copy
    of the 4-stage exp pipeline and exp2 table ROM. Per row: a max pass over the words
    that hold the ``v = min(length, pos + t + 1)`` visible scores (a read-port word per
    cycle, ``word_bits``), an exp-and-sum pass over the chunks that hold them (the
    chunk's exponentials summed by an adder tree into the row's energy; the sum is of
    integers, so exact in any order), 4 cycles to drain the exp pipeline, 3 cycles of
    reciprocal (leading-one detector and 256-entry ROM, then one Newton step in two), then
    an output pass over the chunks of all ``length`` scores that re-reads the visible
    scores, recomputes their exponentials, registers their products by the reciprocal and
    writes the Q15 probabilities a stage later (0 for masked keys).
    The write port is a buffer word wide: a chunk of outputs is shifted from the
    ``src`` row's chunk lanes to the ``dst`` row's by a funnel over the previous chunk
    (rows of the same offset in a chunk, in place as the compiler runs ``SOFTMAX``, need
    none) and written under the byte enables of the row's lanes, so the output pass
    takes as many cycles at every offset. The keys before a window are read in the max
    and exp passes but masked, so the cycles do not depend on the window. Rows follow
    back to back; a run takes :func:`softmax_cycles` cycles. Without a window every row
    sees key 0 (``pos`` is unsigned); ``length = 0``, or a window that leaves the last
    row no key (``pos + rows - imm0 >= length``), is refused as MALFORMED.

    Parameters
    ----------
    word_bits : int
        Width of the read and write ports (a buffer word: a power of two, at least 32).
    lanes : int or None
        Scores of a chunk (:func:`~hdl.sfu.kernel.lane_count`: a power of two dividing
        ``word_bits / 32``; None: a word's); the SFU's ``sfu_lanes``, since each lane
        holds three multipliers (``d * log2 e``, the table interpolation, the
        normalisation) as ``SILU``'s lanes hold their products.
    """

    def __init__(self, *, word_bits: int = 32, lanes: int | None = None):
        self._lanes = lane_count(lanes, word_bits, "Softmax")
        super().__init__(word_bits=word_bits, write_bits=word_bits)

    @property
    def lanes(self) -> int:
        """Scores of a chunk of the exp and output passes."""
        return self._lanes

    @property
    def latency(self) -> int:
        """Cycles from a chunk's read to its probabilities' write in the output pass."""
        return _SOFTMAX_LATENCY

    def cycles(self, args) -> int:
        """See :func:`softmax_cycles`."""
        return softmax_cycles(args, word_bytes=self._word_bytes, lanes=self._lanes)

    def _exp_lane(self, m: Module, i: int, row_max, score):
        """Lane ``i``'s exp pipeline from a score arriving in stage 1: returns
        ``exp_neg(sat(row_max - score))`` (Q15, 17 bits), valid in stage 4."""
        exp_rom = _rom(fx._EXP2_T)
        m.submodules[f"exp_rom{i}"] = exp_rom
        exp_lo, exp_hi = exp_rom.read_port(), exp_rom.read_port()
        # Stage 1: d = sat(max - s).
        full = Signal(signed(34), name=f"sm_full{i}")
        diff = Signal(31, name=f"sm_diff{i}")
        m.d.comb += full.eq(row_max - score)
        m.d.sync += diff.eq(Mux(full > _INT32_MAX, _INT32_MAX, full))
        # Stage 2: d * log2(e), split into integer and fraction, address the exp2 table.
        scaled = Signal(signed(49), name=f"sm_scaled{i}")
        m.d.comb += scaled.eq(diff * fx._LOG2E_Q15)
        t2 = _shift_round(m, scaled, Const(15, 4), 34, f"sm_t2_{i}")
        ip3, frac3 = Signal(18, name=f"sm_ip3_{i}"), Signal(8, name=f"sm_frac3_{i}")
        m.d.comb += [exp_lo.addr.eq(t2[8:16]), exp_hi.addr.eq(t2[8:16] + 1)]
        m.d.sync += [ip3.eq(t2[16:34]), frac3.eq(t2[:8])]
        # Stage 3: interpolate and shift: e = exp_neg(d) (Q15).
        delta = Signal(signed(18), name=f"sm_delta{i}")
        m.d.comb += delta.eq(exp_hi.data - exp_lo.data)
        interp = Signal(signed(27), name=f"sm_interp{i}")
        m.d.comb += interp.eq(delta * frac3)
        y = Signal(signed(19), name=f"sm_y{i}")
        m.d.comb += y.eq(exp_lo.data + _shift_round(m, interp, Const(8, 4), 27,
                                                    f"sm_interp_r{i}"))
        ishift = Signal(5, name=f"sm_ishift{i}")
        m.d.comb += ishift.eq(Mux(ip3 > 31, 31, ip3))
        return _shift_round(m, y, ishift, 19, f"sm_exp{i}")

    def _datapath(self, m: Module, launch):
        a = self.args
        P = self._lanes
        m.submodules.recip_rom = recip_rom = _rom(fx._RECIP_T)
        rcp = recip_rom.read_port()

        t = Signal(32)              # query row
        h = Signal(10)
        key = Signal(32)            # word (max pass) or chunk (exp and output passes)
        src_row = Signal(ADDR_BITS)
        dst_row = Signal(ADDR_BITS)
        visible = Signal(33)
        limit = Signal(34)
        both_ways = a.imm1 != 0
        m.d.comb += limit.eq(Mux(both_ways, a.length, a.pos + t + 1))
        m.d.comb += visible.eq(Mux(limit < a.length, limit, a.length))
        # The first key of the row's window (0 without one).
        lower = Signal(34)
        windowed = (a.imm0 != 0) & (limit > a.imm0) & ~both_ways
        m.d.comb += lower.eq(Mux(windowed, limit - a.imm0, 0))
        last_row = (t == a.rows - 1) & (h == a.heads - 1)

        # Issue side.
        rd = Signal()
        tag_pass = Signal(2)
        tag_first = Signal()
        tag_live = Signal(P)        # lanes of a visible key in the window
        tag_row = Signal(P)         # lanes of the row (the output pass writes them)
        tag_last = Signal()
        wait = Signal(3)
        energy = Signal(48)
        norm = Signal(16)
        nshift = Signal(6)
        recip_m = Signal(16)
        recip_y0 = Signal(16)                # the table's estimate and the Newton step's
        recip_corr = Signal(signed(36))      # correction 2**32 - norm * y0 (RECIP1)
        out_shift = Signal(6)
        issue = Signal()
        # The max pass reads word ``key`` of the row (its scores from lane ``first`` of
        # the first word on), the exp and output passes chunk ``key`` (the row's scores
        # from lane ``sfirst`` of its first chunk on; its outputs go to lane ``dfirst``
        # of the first chunk of the ``dst`` row).
        wb = self._word_bytes
        lg = exact_log2(wb)
        clg = exact_log2(4 * P)     # bytes of a chunk
        first = Signal(range(wb // 4))
        sfirst, dfirst = Signal(range(P)), Signal(range(P))
        if wb > 4:
            m.d.comb += first.eq(src_row[2:lg])
        if P > 1:
            m.d.comb += [sfirst.eq(src_row[2:clg]), dfirst.eq(dst_row[2:clg])]
        chunk_addr = Signal(ADDR_BITS)
        m.d.comb += chunk_addr.eq(Cat(Const(0, clg), src_row[clg:]) + (key << clg))
        chunk1 = Signal(range(wb // (4 * P)))      # the chunk's place in its word
        if lg > clg:
            m.d.sync += chunk1.eq(chunk_addr[clg:lg])
        max_pass = Signal()
        m.d.comb += [self.src.addr.eq(Mux(max_pass,
                                          Cat(Const(0, lg), src_row[lg:]) + (key << lg),
                                          Cat(Const(0, lg), chunk_addr[lg:]))),
                     self.src.en.eq(rd)]
        # Lanes from the src row's to the dst row's in a chunk (the same in every row);
        # when not P (:func:`softmax_shifted`), an output chunk joins two chunks.
        ahead = Signal(range(P + 1))
        shifted = Signal()
        if P > 1:
            m.d.comb += ahead.eq(P - (a.dst_addr[2:clg] - a.src_addr[2:clg])[:clg - 2])
        else:
            m.d.comb += ahead.eq(P)
        m.d.comb += shifted.eq(ahead != P)
        live = Cat(*live_lanes(P, key, sfirst + lower, visible - lower))
        # A chunk past the row's visible scores (at some offsets) is not read.
        chunk_rd = (key << exact_log2(P)) < sfirst + visible
        in_row = Cat(*live_lanes(P, key, sfirst, a.length))
        with m.FSM():
            with m.State("IDLE"):
                with m.If(launch):
                    m.d.sync += [t.eq(0), h.eq(0), key.eq(0), src_row.eq(a.src_addr),
                                 dst_row.eq(a.dst_addr)]
                    m.next = "MAX"
            with m.State("MAX"):
                # A word past the row's visible scores (at some offsets) is not read.
                m.d.comb += [max_pass.eq(1), rd.eq((key << (lg - 2)) < first + visible),
                             issue.eq(1), tag_pass.eq(_PASS_MAX), tag_first.eq(key == 0)]
                with m.If(key == span_words(visible, wb) - 1):
                    m.d.sync += key.eq(0)
                    m.next = "EXP"
                with m.Else():
                    m.d.sync += key.eq(key + 1)
            with m.State("EXP"):
                m.d.comb += [rd.eq(chunk_rd), issue.eq(1), tag_pass.eq(_PASS_EXP),
                             tag_live.eq(live)]
                with m.If(key == span_words(visible, 4 * P) - 1):
                    m.d.sync += [key.eq(0), wait.eq(0)]
                    m.next = "WAIT"
                with m.Else():
                    m.d.sync += key.eq(key + 1)
            with m.State("WAIT"):
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == 3):
                    m.next = "RECIP0"
            with m.State("RECIP0"):
                # energy >= 2**15 (the row maximum contributes exp(0) = 2**15).
                length = Signal(range(49))
                for i in range(48):
                    with m.If(energy[i]):
                        m.d.comb += length.eq(i + 1)
                sh = Signal(6)
                m.d.comb += [sh.eq(length - 16), rcp.addr.eq((energy >> sh)[7:15])]
                m.d.sync += [norm.eq(energy >> sh), nshift.eq(sh)]
                m.next = "RECIP1"
            with m.State("RECIP1"):
                m.d.sync += [recip_y0.eq(rcp.data),
                             recip_corr.eq(recip_correction(norm, rcp.data))]
                m.next = "RECIP2"
            with m.State("RECIP2"):
                mantissa, _ = recip_newton(recip_y0, recip_corr, nshift)
                m.d.sync += [recip_m.eq(mantissa), out_shift.eq(nshift + 31 - fx.P_FRAC),
                             energy.eq(0)]
                m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += [rd.eq(chunk_rd), issue.eq(1),
                             tag_pass.eq(_PASS_OUT), tag_first.eq(key == 0),
                             tag_live.eq(live), tag_row.eq(in_row)]
                with m.If(key == span_words(a.length, 4 * P) - 1 + shifted):
                    m.d.sync += [key.eq(0), src_row.eq(src_row + (a.length << 2)),
                                 dst_row.eq(dst_row + (a.length << 2))]
                    with m.If(last_row):
                        m.d.comb += tag_last.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        with m.If(h == a.heads - 1):
                            m.d.sync += [h.eq(0), t.eq(t + 1)]
                        with m.Else():
                            m.d.sync += h.eq(h + 1)
                        m.next = "MAX"
                with m.Else():
                    m.d.sync += key.eq(key + 1)

        # The destination chunk of an output chunk: the funnel joins the previous chunk
        # and this one, shifted from the src row's lanes to the dst row's, so it holds the
        # dst chunk ``key`` (``key - 1`` when the dst row starts in an earlier lane).
        dst_chunk = Signal(ADDR_BITS)
        m.d.comb += dst_chunk.eq(Cat(Const(0, clg), dst_row[clg:]) + (key << clg)
                                 - Mux(dfirst < sfirst, 4 * P, 0))

        # The tags follow the chunk through the pipeline (stage s holds them in ``tags[s]``).
        tags = [dict(v=issue, pass_=tag_pass, first=tag_first, live=tag_live, row=tag_row,
                     last=tag_last, key=key, dst=dst_chunk)]
        for stage in range(1, _SOFTMAX_LATENCY + 1):
            prev = tags[-1]
            regs = {name: Signal.like(sig, name=f"sm_{name}{stage}")
                    for name, sig in prev.items()}
            m.d.sync += [regs[name].eq(sig) for name, sig in prev.items()]
            tags.append(regs)
        s1, s4, s5 = tags[1], tags[4], tags[5]

        # Stage 1: the word arrives; update the max (max pass) or start each lane's exp.
        # The largest visible score of the word (a max tree; other lanes, those before a
        # window included, count as -2**31).
        # The row's window in its words, a register taken every cycle: a word of the max
        # pass reaches stage 1 the cycle after its issue, in the same row (the row changes
        # only after the output pass), so the register holds the window of its row.
        win_first = Signal((first + lower).shape())
        win_count = Signal((visible - lower).shape())     # negative: no key of it is seen
        m.d.sync += [win_first.eq(first + lower), win_count.eq(visible - lower)]
        word_max = tree(lambda p, q: Mux(p > q, p, q),
                        [Mux(lv, x, _INT32_MIN) for lv, x in
                         word_lanes(self.src.data, s1["key"], win_first, win_count)])
        row_max = Signal(signed(32))
        with m.If(s1["v"] & (s1["pass_"] == _PASS_MAX)):
            with m.If(s1["first"] | (word_max > row_max)):
                m.d.sync += row_max.eq(word_max)
        chunk = self.src.data.word_select(chunk1, 32 * P) if lg > clg else self.src.data
        e4 = []
        for i in range(P):
            expo = self._exp_lane(m, i, row_max, chunk[32 * i:32 * i + 32].as_signed())
            e = Signal(17, name=f"sm_e4_{i}")
            m.d.sync += e.eq(Mux(tags[3]["live"][i], expo, 0))
            e4.append(e)

        # Stage 4: accumulate the sum, or (output pass) the product by the reciprocal.
        with m.If(s4["v"] & (s4["pass_"] == _PASS_EXP)):
            m.d.sync += energy.eq(energy + tree(operator.add, e4))
        with m.If(launch):
            m.d.sync += energy.eq(0)
        probs = []
        for i in range(P):
            prob_x = Signal(signed(34), name=f"sm_prob_x{i}")
            m.d.sync += prob_x.eq(e4[i] * recip_m)
            probs.append(_shift_round(m, prob_x, out_shift, 34, f"sm_prob{i}")[:32])
        # Stage 5: round and write.
        out_vals, out_row = Cat(*probs), s5["row"]
        prev_vals, prev_row = Signal(32 * P), Signal(P)
        writing = s5["v"] & (s5["pass_"] == _PASS_OUT)
        with m.If(writing):
            m.d.sync += [prev_vals.eq(out_vals), prev_row.eq(out_row)]
        # The src row's lanes are ``P - ahead`` behind the dst row's, in every row.
        row_en = Mux(s5["first"], 0, prev_row)
        shifted_vals = (Cat(prev_vals, out_vals) >> (ahead * 32))[:32 * P]
        shifted_row = (Cat(row_en, out_row) >> ahead)[:P]
        chunk_en = Mux(writing, Cat(*[b.replicate(4) for b in shifted_row]), 0)
        dst_place = s5["dst"][clg:lg] if lg > clg else Const(0, 1)
        m.d.comb += [self.dst.addr.eq(Cat(Const(0, lg), s5["dst"][lg:])),
                     self.dst.data.eq(Cat(*[shifted_vals] * (wb // (4 * P)))),
                     self.dst.en.eq(chunk_en << (dst_place * 4 * P))]
        finish = Signal()
        m.d.comb += finish.eq(s5["v"] & s5["last"])
        refuse = Signal()
        m.d.comb += refuse.eq((a.n == 0) | (a.rows == 0) | (a.length == 0) |
                              ((a.imm0 != 0) & (a.imm1 == 0) &
                               (a.pos + a.rows >= a.length + a.imm0)))
        return refuse, ErrorCode.MALFORMED, finish


# -- ATT_PV -----------------------------------------------------------------------------

class AttentionContext(_Kernel):
    """``ATT_PV``: :func:`~airfoil.fixedpoint.attention_weights` then
    :func:`~airfoil.fixedpoint.attention_context` over GQA heads.

    For each ``(row, head)`` and key ``l``: read the probability (``src``) and the value
    record's scale pair (:func:`pv_scale_words` ``aux`` words), form the Q20 weight, then
    stream the record's ``ceil(n / word_bytes) + 1`` value words into ``word_bytes``
    multiply-accumulate lanes over an on-chip accumulator (a memory of ``ceil(max_head_dim /
    word_bytes)`` x 64 bits per lane, read-modify-write); after the last key the output
    pass (:class:`_ContextOutput`) writes ``sat32(shift_round(acc, 4))`` (ACT) a buffer
    word of ``word_bytes / 4`` outputs a cycle, :func:`pv_out_words` cycles. When
    :func:`pv_aligned` (the compiler's layout) neither funnel word is read: a key is the
    scale pair's word and its value words, the pair's product with the probability formed
    as it arrives. A value word is then accumulated in the cycle after it arrives (the
    accumulator's read is issued as it arrives), so the weight formed a cycle after the
    pair is in time for the first value word, and the next key's pair is read while the
    last value word of a key is accumulated; one cycle after the last key lets it finish
    before the output pass reads the accumulator. Off the word, the funnel's words give
    the weight its time and a value word is accumulated as it arrives. A run takes
    :func:`pv_cycles` cycles.

    Parameters
    ----------
    max_head_dim : int
        Largest head dimension ``n`` this instance accumulates (a multiple of 4); a larger
        ``n`` is refused with :attr:`~airfoil.isa.ErrorCode.UNSUPPORTED`.
    word_bits : int
        Width of the read and write ports (a power of two, at least 32): the buffers'
        word.
    """

    def __init__(self, *, max_head_dim: int = ATT_PV_MAX_HEAD_DIM, word_bits: int = 32):
        self._max_head_dim = _max_head_dim(self, max_head_dim)
        super().__init__(word_bits=word_bits, write_bits=word_bits)

    @property
    def max_head_dim(self) -> int:
        """Largest head dimension accepted."""
        return self._max_head_dim

    def cycles(self, args) -> int:
        """See :func:`pv_cycles`."""
        return pv_cycles(args, self._max_head_dim, word_bytes=self._word_bytes)

    def _datapath(self, m: Module, launch):
        a = self.args
        wb = self._word_bytes
        lg = exact_log2(wb)
        nscale = pv_scale_words(wb)
        # The scale pair's last word is the funnel's: needed only when the pair reaches
        # into it (its offset in the word is above the room an aligned pair leaves).
        scale_slack = (nscale - 1) * wb - 8
        walk = _HeadWalk(m, a, launch)
        acc = _ContextAccumulator(m, wb, self._max_head_dim)

        nchunks = Signal(20)             # ceil(n / wb) value chunks
        value_slack = Signal(lg)         # bytes the values leave free in their last chunk
        up8 = Signal(ADDR_BITS)
        # Every record and scale pair on a word (pv_aligned): the pair is one word, each
        # value chunk is the word that arrives, so no funnel word is read.
        aligned = Signal()
        with m.If(launch):
            up8_next = ((a.n + 7) >> 3) << 3
            m.d.sync += [nchunks.eq((a.n + wb - 1) >> lg), value_slack.eq((0 - a.n)[:lg]),
                         up8.eq(up8_next)]
            if wb >= 8:
                m.d.sync += aligned.eq((a.aux_addr | a.imm1 | up8_next)[:lg] == 0)
        w = Signal(20)                   # 0..vfirst-1: scale words; then the value words
        vfirst = Signal(range(nscale + 1))
        m.d.comb += vfirst.eq(Mux(aligned, 1, nscale))
        out = _ContextOutput(m, self, launch, acc.old)
        p_addr = Signal(ADDR_BITS)
        issue = Signal()
        rec = walk.krec
        spair = Signal(ADDR_BITS)
        m.d.comb += spair.eq(rec + up8)
        soff, voff = spair[:lg], rec[:lg]
        sbase = Cat(Const(0, lg), spair[lg:])
        vbase = Cat(Const(0, lg), rec[lg:])
        last_w = Signal(20)
        m.d.comb += last_w.eq(Mux(aligned, nchunks, nchunks + nscale))
        keys = Signal()
        with m.FSM():
            with m.State("IDLE"):
                with m.If(launch):
                    m.d.sync += [w.eq(0), p_addr.eq(a.src_addr)]
                    m.next = "KEYS"
            with m.State("KEYS"):
                m.d.comb += keys.eq(1)
                # A funnel word past the pair or the values is read only when needed.
                skip = ~aligned & (((w == nscale - 1) & (soff <= scale_slack))
                                   | ((w == last_w) & (voff <= value_slack)))
                m.d.comb += [issue.eq(1), self.aux.en.eq(~skip),
                             self.aux.addr.eq(Mux(w < vfirst, sbase + (w << lg),
                                                  vbase + ((w - vfirst) << lg))),
                             self.src.addr.eq(Cat(Const(0, lg), p_addr[lg:])),
                             self.src.en.eq(w == 0)]
                with m.If(w == last_w):
                    m.d.sync += [w.eq(0), p_addr.eq(p_addr + 4)]
                    with m.If(walk.last_key):
                        m.d.sync += out.word.eq(0)
                        with m.If(aligned):
                            m.next = "DRAIN"
                        with m.Else():
                            m.next = "OUT"
                    with m.Else():
                        walk.advance(m)
                with m.Else():
                    m.d.sync += w.eq(w + 1)
            with m.State("DRAIN"):
                # Aligned: the last value word arrives; it is accumulated in the next
                # cycle, where the output pass's first read sees it through the
                # transparent port.
                m.next = "OUT"
            with m.State("OUT"):
                out.state(m, walk)

        # Stage 1: arrival of the key stream.
        v1, w1, first1, off1 = Signal(), Signal(20), Signal(), Signal(lg)
        p_lane1 = Signal(range(wb // 4))
        m.d.sync += [v1.eq(issue), w1.eq(w), first1.eq(walk.key == 0),
                     off1.eq(Mux(w < vfirst, soff, voff))]
        if wb > 4:
            m.d.sync += p_lane1.eq(p_addr[2:lg])
        prev = Signal(8 * wb)
        with m.If(v1):
            m.d.sync += prev.eq(self.aux.data)
        chunk = Mux(aligned, self.aux.data, _funnel(prev, self.aux.data, off1))
        prob = Signal(signed(32))
        prob_now = self.src.data.word_select(p_lane1, 32).as_signed()
        prod = Signal(signed(64))
        weight = Signal(signed(32))
        se = Signal(signed(32))
        # The scale pair's chunk arrives with the funnel's word (w1 = 1), or aligned with
        # its own word and the probability (w1 = 0); the weight follows a cycle later.
        pair_at = Mux(aligned, 0, 1)
        with m.If(v1 & (w1 == 0)):
            m.d.sync += prob.eq(prob_now)
        with m.If(v1 & (w1 == pair_at)):
            m.d.sync += prod.eq(Mux(aligned, prob_now, prob) * chunk[:32].as_signed())
        # se: the second scale chunk (4-byte words), or the upper half of the first.
        if nscale == 3:
            m.d.comb += se.eq(chunk[:32].as_signed())
        else:
            se_held = Signal(signed(32))
            with m.If(v1 & (w1 == pair_at)):
                m.d.sync += se_held.eq(chunk[32:64].as_signed())
            m.d.comb += se.eq(se_held)
        wshift = Signal(signed(34))
        m.d.comb += wshift.eq(se + fx.P_FRAC - fx.W_FRAC)
        wnew = _shift_round_sat(m, prod, wshift, "pv_weight")
        with m.If(v1 & (w1 == pair_at + 1)):
            m.d.sync += weight.eq(wnew)
        # Value chunk i arrives at w1 = 1 + i (aligned) or nscale + 1 + i. Off the word
        # it is accumulated as it arrives (its accumulator word read at the issue, the
        # weight formed two cycles before); aligned, its accumulator word is read as it
        # arrives and written a cycle later (stage 2), when the weight is there.
        value1 = Signal()
        value_i = Signal(20)
        m.d.comb += [value_i.eq(Mux(aligned, w1 - 1, w1 - nscale - 1)),
                     value1.eq(v1 & (w1 >= Mux(aligned, 1, nscale + 1)))]
        acc_v, acc_first, acc_i, acc_chunk = value1, first1, value_i, chunk
        read_at = Mux(keys, w - nscale - 1, out.row)
        if wb >= 8:                      # only such words can be aligned (pv_aligned)
            v2, first2 = Signal(), Signal()
            i2 = Signal(20)
            chunk2 = Signal(8 * wb)
            m.d.sync += [v2.eq(value1), first2.eq(first1), i2.eq(value_i), chunk2.eq(chunk)]
            acc_v, acc_first = Mux(aligned, v2, value1), Mux(aligned, first2, first1)
            acc_i, acc_chunk = Mux(aligned, i2, value_i), Mux(aligned, chunk2, chunk)
            read_at = Mux(aligned, Mux(value1, value_i, out.row), read_at)
        m.d.comb += [acc.addr_r.eq(read_at), acc.addr_w.eq(acc_i), acc.we.eq(acc_v)]
        for b, (old, new) in enumerate(zip(acc.old, acc.new)):
            m.d.comb += new.eq(Mux(acc_first, 0, old)
                               + weight * acc_chunk[8 * b:8 * b + 8].as_signed())

        finish = Signal()
        m.d.comb += finish.eq(out.finish)
        refuse = Signal()
        code = Signal(ErrorCode)
        malformed = self._head_refusal(m)
        m.d.comb += refuse.eq(malformed | (a.n > self._max_head_dim))
        with m.If(malformed):
            m.d.comb += code.eq(ErrorCode.MALFORMED)
        with m.Else():
            m.d.comb += code.eq(ErrorCode.UNSUPPORTED)
        return refuse, code, finish


#: Kernel factories by function, for :class:`hdl.sfu.unit.SfuUnit`.
KERNELS = {
    SfuFunc.ATT_QK: AttentionScores,
    SfuFunc.SOFTMAX: Softmax,
    SfuFunc.ATT_PV: AttentionContext,
}
