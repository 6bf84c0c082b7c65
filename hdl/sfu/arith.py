"""Integer building blocks of the SFU kernels, each the hardware form of an
:mod:`airfoil.fixedpoint` operation.

Expressions are combinational; :class:`Divider` is the one sequential block (kernels
that need a run-time quotient, ``n / heads`` or ``2**40 / n``, compute it once per
instruction). Tables become ROMs (:func:`rom`) filled from :mod:`airfoil.fixedpoint`'s
own tensors, so no number is copied.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .kernel import ADDR_BITS

__all__ = ["bit_length", "shift_round", "shift_round_signed", "sat", "clamp", "normalize",
           "rom", "sat_addr", "align4", "span_words", "live_lanes", "word_lanes", "tree",
           "Divider", "divider_latency"]


def bit_length(m: Module, x, name: str = "bitlen") -> Signal:
    """Bit length of unsigned ``x`` (0 for 0): a priority encoder (flat ``If`` chain)."""
    r = Signal(range(len(x) + 1), name=name)
    for i in range(len(x)):
        with m.If(x[i]):
            m.d.comb += r.eq(i + 1)
    return r


def shift_round(x, s):
    """``(x + 2**(s-1)) >> s`` for an unsigned shift amount ``s`` (``s = 0``: ``x``)."""
    half = (Const(1, 1) << s) >> 1
    return (x + half) >> s


def shift_round_signed(x, s, *, bits: int):
    """:func:`airfoil.fixedpoint.shift_round` for a signed ``s`` with ``|s| < 2**bits``."""
    return Mux(s < 0, x << (-s)[:bits], shift_round(x, s[:bits]))


def clamp(x, lo: int, hi: int):
    """``min(max(x, lo), hi)`` in ``x``'s shape (widened by the constants)."""
    return Mux(x > hi, hi, Mux(x < lo, lo, x))


def sat(x, bits: int):
    """Saturate ``x`` to a ``bits``-bit signed value."""
    return clamp(x, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)[:bits].as_signed()


def normalize(a, sh, *, width: int, bits: int):
    """``a >> sh`` (``sh >= 0``) or ``a << -sh`` for signed ``sh``, cut to ``width`` bits."""
    return Mux(sh < 0, a << (-sh)[:bits], a >> sh[:bits])[:width]


def rom(m: Module, name: str, values) -> memory.ReadPort:
    """Add a ROM holding ``values`` (non-negative ints) to ``m``; return its comb port."""
    values = [int(v) for v in values]
    if min(values) < 0:
        raise ValueError(f"ROM {name} holds non-negative values, not {min(values)}")
    mem = memory.Memory(shape=unsigned(max(max(values).bit_length(), 1)),
                        depth=len(values), init=values)
    m.submodules[name] = mem
    return mem.read_port(domain="comb")


def sat_addr(a):
    """A byte address that saturates at the top of the port's range (never wraps).

    Buffers are smaller than ``2**ADDR_BITS`` bytes, so a saturated address is always
    out of range and the unit reports it instead of wrapping into the buffer.
    """
    top = (1 << ADDR_BITS) - 4
    return Mux(a > top, top, a)[:ADDR_BITS]


def align4(a):
    """``a`` rounded down to a multiple of 4."""
    return Cat(Const(0, 2), a[2:])


def span_words(count: int, word_bytes: int) -> int:
    """Words a row pass reads for ``count`` int32 starting at any 4-byte offset of a word
    of ``word_bytes``: the most the row spans, ``ceil((count + e - 1) / e)`` for ``e =
    word_bytes / 4`` (``count`` for 4-byte words), so the pass takes the same cycles at
    every offset. ``count`` may be an int or a hardware value."""
    e = word_bytes // 4
    return (count + 2 * e - 2) >> (e.bit_length() - 1)     # an int, or a Value of count


def live_lanes(per_word: int, word, first, count) -> list:
    """Which of the ``per_word`` int32 lanes of word ``word`` of a row pass hold one of
    the row's ``count`` elements (a hardware bit per lane).

    The row's element ``i`` is lane ``(first + i) % per_word`` of word
    ``(first + i) // per_word`` (``first``: the row's lane in its first word).
    """
    live = []
    for lane in range(per_word):
        at = Cat(Const(lane, (per_word - 1).bit_length()), word)
        live.append((at >= first) & (at < first + count))
    return live


def word_lanes(data, word, first, count):
    """The int32 lanes of read-port word ``word`` of a row pass: ``[(live, x)]``, ``live``
    as :func:`live_lanes` says (``len(data) / 32`` lanes a word)."""
    per_word = len(data) // 32
    return [(live, data[32 * lane:32 * lane + 32].as_signed())
            for lane, live in enumerate(live_lanes(per_word, word, first, count))]


def tree(op, terms):
    """``terms`` combined by the binary ``op`` as a balanced tree (depth ``log2``)."""
    terms = list(terms)
    while len(terms) > 1:
        pairs = [op(terms[i], terms[i + 1]) for i in range(0, len(terms) - 1, 2)]
        terms = pairs + terms[len(terms) - len(terms) % 2:]
    return terms[0]


def divider_latency(width: int) -> int:
    """Cycles from ``start`` to ``done`` of a :class:`Divider` of ``width`` bits."""
    return width + 1


class Divider(wiring.Component):
    """Unsigned restoring divider: one quotient bit per cycle.

    ``start`` (one cycle) samples ``dividend`` and ``divisor``; :attr:`latency` cycles
    later ``done`` is high for one cycle and ``quotient``/``remainder`` hold the result
    until the next ``start``. A zero divisor gives an all-ones quotient.

    Parameters
    ----------
    width : int
        Bits of the dividend and quotient.
    divisor_width : int
        Bits of the divisor and remainder.
    """

    def __init__(self, *, width: int, divisor_width: int):
        for what, v in (("Dividend width", width), ("Divisor width", divisor_width)):
            if not isinstance(v, int) or v < 1:
                raise TypeError(f"{what} must be a positive integer, not {v!r}")
        self._width, self._dw = width, divisor_width
        super().__init__({
            "start": In(1), "dividend": In(width), "divisor": In(divisor_width),
            "done": Out(1), "quotient": Out(width), "remainder": Out(divisor_width),
        })

    @property
    def latency(self) -> int:
        """Cycles from ``start`` to ``done``."""
        return divider_latency(self._width)

    def elaborate(self, platform):
        m = Module()
        w, dw = self._width, self._dw
        cnt = Signal(range(w + 1))
        run = Signal()
        divisor = Signal(dw)
        rem = Signal(dw + 1)
        q = self.quotient
        shifted = Cat(q[w - 1], rem[:dw])
        ge = shifted >= divisor
        m.d.comb += [self.remainder.eq(rem[:dw]), self.done.eq(run & (cnt == 0))]
        with m.If(self.start):
            m.d.sync += [q.eq(self.dividend), divisor.eq(self.divisor), rem.eq(0),
                         cnt.eq(w), run.eq(1)]
        with m.Elif(cnt != 0):
            m.d.sync += [q.eq(Cat(ge, q[:w - 1])), rem.eq(Mux(ge, shifted - divisor, shifted)),
                         cnt.eq(cnt - 1)]
        with m.Elif(run):
            m.d.sync += run.eq(0)
        return m
