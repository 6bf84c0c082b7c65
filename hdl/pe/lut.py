"""T-MAC / LUT Tensor Core style table-lookup processing element.

Weights are INT1..INT4 bit-planes, chosen per beat at run time (``bits`` field):

* INT1 means ``{-1, +1}`` (code 0 is -1, code 1 is +1, as in BitNet-style binary
  weights); it is the natural weight of a symmetrized table and needs no offset.
* INT2..INT4 are two's complement. With ``s = 2 b - 1`` for each plane bit ``b`` a weight
  is ``w = (sum_j c_j 2**j s_j - 1) / 2`` with ``c_j = -1`` for the top plane and ``+1``
  otherwise, so ``2 * sum_i w_i x_i = sum_j c_j 2**j T(plane j) - X`` where
  ``T(p) = sum_i s_i x_i`` is a signed table entry and ``X = sum_i x_i``.

Tables (:class:`LutTableBuilder`, built once per group of ``g`` activations and shared by
every chain of an engine): ``T(p)`` over the ``2**g`` sign patterns is odd symmetric,
``T(~p) = -T(p)``, so only the ``2**(g-1)`` entries with the top pattern bit set are
stored (table symmetrization). A lookup with the top bit clear reads entry ``~p`` and
inverts it; the ``+1`` of each such negation is a population count at the root of the
adder tree. The top plane's ``c = -1`` is an inversion of the index, not a negation.

:class:`LutChain` spends one cycle per bit-plane (most significant first,
``A = 2 A + sum of lookups``), so INT1 beats take 1 cycle and INT4 beats 4 cycles:
``lanes / bits`` MACs per cycle. Group partial sums are exact integers; at a group's end
they go to the same bit-serial rescaler as the bit-serial PE, so both PEs produce the
same row results.

Why no N:M sparsity: a table is built for ``g`` fixed, consecutive activations and is
shared by all rows. Under 2:4 each row's nonzeros meet different activations (their
indices differ per row), so one shared table cannot serve the compressed weights; a
table over the whole window with zero as a third weight state needs ``3**4`` entries per
4 activations instead of ``2**3``, which costs more than the skipped zeros save. Sparse
weights run on this PE decompressed (zeros are ordinary codes), so N:M saves memory
but not cycles here.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from airfoil.formats import ACC_BITS

from .bitserial import (SCALE_M_BITS, SCALE_SHIFT_BITS, SerialRescaler, _check_int,
                        result_layout, tree_sum)

__all__ = ["LutTableBuilder", "LutChain", "LutPE", "lut_in_layout", "lut_table_layout",
           "lut_chain_layout", "entry_bits", "estimate_units"]

_FLAGS = {
    "bits": unsigned(3),
    "group_end": 1,
    "row_end": 1,
    "m": unsigned(SCALE_M_BITS),
    "shift": unsigned(SCALE_SHIFT_BITS),
}


def _check_g(component, lanes, g, max_group=1, scale_bits_per_cycle=1):
    try:
        _check_int("scale_bits_per_cycle", scale_bits_per_cycle, 1, 4)
        _check_int("Lane count", lanes, 2, 128)
        _check_int("Table group g", g, 2, 6)
        if lanes % g:
            raise TypeError(f"Lane count must be a multiple of the table group g={g}, "
                            f"not {lanes}")
        _check_int("max_group", max_group, 1, 4096)
    except TypeError:
        component._MustUse__silence = True    # never built: no "unused" warning
        raise


def entry_bits(g: int) -> int:
    """Width of a signed table entry: a sum of ``g`` INT8 activations."""
    return (g * 128).bit_length() + 1


def _xsum_bits(lanes: int) -> int:
    return (lanes * 128).bit_length() + 1


def lut_table_layout(lanes: int, g: int) -> data.StructLayout:
    """Tables of one beat: ``lanes / g`` halves of ``2**(g-1)`` entries, and ``X``."""
    return data.StructLayout({
        "t": data.ArrayLayout(data.ArrayLayout(signed(entry_bits(g)), 1 << (g - 1)),
                              lanes // g),
        "xsum": signed(_xsum_bits(lanes)),
    })


def lut_in_layout(lanes: int) -> data.StructLayout:
    """Payload of one :class:`LutPE` beat: 4-bit weight codes, INT8 activations, flags."""
    return data.StructLayout({"w": data.ArrayLayout(4, lanes),
                              "x": data.ArrayLayout(signed(8), lanes), **_FLAGS})


def lut_chain_layout(lanes: int, g: int) -> data.StructLayout:
    """Payload of one :class:`LutChain` beat: weight codes, the beat's tables, flags."""
    return data.StructLayout({"w": data.ArrayLayout(4, lanes),
                              "tab": lut_table_layout(lanes, g), **_FLAGS})


def _build_tables(m, xs, g, tables):
    """Drive ``tables`` (a :func:`lut_table_layout` view) from activations ``xs``."""
    for t in range(len(xs) // g):
        grp = xs[t * g:(t + 1) * g]
        for q in range(1 << (g - 1)):
            terms = [grp[g - 1]] + [grp[i] if (q >> i) & 1 else -grp[i]
                                    for i in range(g - 1)]
            m.d.comb += tables.t[t][q].eq(tree_sum(terms))
    m.d.comb += tables.xsum.eq(tree_sum(xs))


class LutTableBuilder(wiring.Component):
    """Precompute the symmetrized tables of ``lanes`` activations (one register stage).

    Parameters
    ----------
    lanes : int
        Activations per beat (a multiple of ``g``).
    g : int
        Activations per table.

    Members
    -------
    i : In(stream.Signature(data.ArrayLayout(signed(8), lanes)))
    o : Out(stream.Signature(lut_table_layout(lanes, g)))
    """

    def __init__(self, *, lanes: int, g: int = 4):
        _check_g(self, lanes, g)
        self._lanes, self._g = lanes, g
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(8), lanes))),
            "o": Out(stream.Signature(lut_table_layout(lanes, g))),
        })

    @property
    def latency(self) -> int:
        """Register stages from activations to tables."""
        return 1

    def elaborate(self, platform):
        m = Module()
        tabs = Signal(lut_table_layout(self._lanes, self._g))
        _build_tables(m, [self.i.payload[i] for i in range(self._lanes)], self._g, tabs)
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.ready):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(tabs)]
        return m


class LutChain(wiring.Component):
    """One chain of table lookups over weight bit-planes, with the bit-serial rescaler.

    Parameters
    ----------
    lanes : int
        Weights per beat.
    g : int
        Activations per table (``lanes / g`` lookups per cycle).
    max_group : int
        Largest number of products in one group (sizes the partial sum).
    acc_bits : int
        Width of the row accumulator.
    scale_bits_per_cycle : int
        Scale bits the group rescaler consumes per cycle (1..4), as for the bit-serial PE.

    Members
    -------
    i : In(stream.Signature(lut_chain_layout(lanes, g)))
        Beats: weight codes (low ``bits`` bits), the tables of their activations,
        ``bits`` (1..4, constant within a group), group/row flags and the group scale.
    o : Out(stream.Signature(result_layout(acc_bits)))
        One accumulator per row.
    """

    def __init__(self, *, lanes: int, g: int = 4, max_group: int = 128,
                 acc_bits: int = ACC_BITS, scale_bits_per_cycle: int = 1):
        _check_g(self, lanes, g, max_group, scale_bits_per_cycle)
        self._lanes, self._g, self._max_group, self._acc_bits = lanes, g, max_group, acc_bits
        self._scale_r = scale_bits_per_cycle
        # 2 * psum: products of 4 x 8 bits (|w x| <= 1024) over max_group, doubled.
        self._psum_width = 12 + max(1, (max_group - 1).bit_length()) + 1
        super().__init__({
            "i": In(stream.Signature(lut_chain_layout(lanes, g))),
            "o": Out(stream.Signature(result_layout(acc_bits))),
        })

    lanes = property(lambda self: self._lanes)
    g = property(lambda self: self._g)

    @staticmethod
    def cycles_per_beat(bits: int) -> int:
        """Cycles one beat of ``bits``-bit weights occupies the chain."""
        return bits

    @property
    def latency(self) -> int:
        """Cycles from the last plane of a row to its rescaler start (pipeline stages)."""
        return 2

    def elaborate(self, platform):
        m = Module()
        L, g = self._lanes, self._g
        PW = self._psum_width
        m.submodules.rescaler = resc = SerialRescaler(
            psum_width=PW - 1, acc_bits=self._acc_bits, scale_bits_per_cycle=self._scale_r)
        wiring.connect(m, wiring.flipped(self.o), resc.o)

        cur = Signal(lut_chain_layout(L, g))
        busy = Signal()
        j = Signal(2)
        last = Signal()
        m.d.comb += last.eq(j == cur.bits - 1)
        adv = Signal()
        m.d.comb += self.i.ready.eq(adv & (~busy | last))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [cur.eq(self.i.payload), busy.eq(1), j.eq(0)]
        with m.Elif(adv & busy):
            with m.If(last):
                m.d.sync += busy.eq(0)
            with m.Else():
                m.d.sync += j.eq(j + 1)

        plane = Signal(2)
        top = Signal()           # two's complement top plane: index inverted
        m.d.comb += [plane.eq(cur.bits - 1 - j), top.eq((j == 0) & (cur.bits != 1))]
        vals, negs = [], []
        eb = entry_bits(g)
        for t in range(L // g):
            pat = Signal(g, name=f"pat{t}")
            m.d.comb += pat.eq(Cat(cur.w[t * g + i].bit_select(plane, 1) for i in range(g))
                               ^ Mux(top, (1 << g) - 1, 0))
            hi = pat[g - 1]
            q = Signal(g - 1, name=f"q{t}")
            m.d.comb += q.eq(Mux(hi, pat[:g - 1], ~pat[:g - 1]))
            ent = Signal(signed(eb), name=f"ent{t}")
            m.d.comb += ent.eq(Array(cur.tab.t[t][k] for k in range(1 << (g - 1)))[q])
            val = Signal(signed(eb), name=f"val{t}")
            m.d.comb += val.eq(Mux(hi, ent, ~ent))
            vals.append(val)
            negs.append(~hi)
        sbits = eb + max(1, (L // g - 1).bit_length()) + 1
        s = Signal(signed(sbits))
        m.d.comb += s.eq(tree_sum(vals + [tree_sum(negs)]))

        p_valid, p_first, p_last, p_ge, p_re, p_one = (Signal(name=n) for n in (
            "p_valid", "p_first", "p_last", "p_ge", "p_re", "p_one"))
        p_s = Signal(signed(sbits))
        p_x = Signal(signed(_xsum_bits(L)))
        p_m = Signal(SCALE_M_BITS)
        p_sh = Signal(SCALE_SHIFT_BITS)
        with m.If(adv):
            m.d.sync += [p_valid.eq(busy), p_s.eq(s), p_first.eq(j == 0), p_last.eq(last),
                         p_ge.eq(cur.group_end), p_re.eq(cur.row_end),
                         p_one.eq(cur.bits == 1), p_x.eq(cur.tab.xsum), p_m.eq(cur.m),
                         p_sh.eq(cur.shift)]

        acc = Signal(signed(PW))
        psum2 = Signal(signed(PW))
        acc_next = Signal(signed(PW))
        beat2 = Signal(signed(PW))
        psum2_next = Signal(signed(PW))
        m.d.comb += [
            acc_next.eq(Mux(p_first, 0, acc << 1) + p_s),
            beat2.eq(Mux(p_one, acc_next << 1, acc_next - p_x)),
            psum2_next.eq(psum2 + beat2),
        ]
        h_full = Signal()
        commit = p_valid & p_last & p_ge
        m.d.comb += [adv.eq(~(commit & h_full & ~resc.i.ready)), resc.i.valid.eq(h_full)]
        with m.If(resc.i.ready):
            m.d.sync += h_full.eq(0)
        with m.If(p_valid & adv):
            m.d.sync += acc.eq(acc_next)
            with m.If(p_last):
                m.d.sync += psum2.eq(psum2_next)
                with m.If(p_ge):
                    m.d.sync += [psum2.eq(0), h_full.eq(1),
                                 resc.i.payload.psum.eq(psum2_next >> 1),
                                 resc.i.payload.m.eq(p_m), resc.i.payload.shift.eq(p_sh),
                                 resc.i.payload.row_end.eq(p_re)]
        return m


class LutPE(wiring.Component):
    """A standalone LUT PE: table builder and :class:`LutChain` behind one input stream.

    In an engine one :class:`LutTableBuilder` feeds every chain; this wrapper builds the
    tables of each beat itself so that a chain can be tested (and swapped for the other
    PEs) with weights and activations as input.

    Parameters
    ----------
    lanes, g, max_group, acc_bits, scale_bits_per_cycle
        As for :class:`LutChain`.

    Members
    -------
    i : In(stream.Signature(lut_in_layout(lanes)))
    o : Out(stream.Signature(result_layout(acc_bits)))
    """

    def __init__(self, *, lanes: int, g: int = 4, max_group: int = 128,
                 acc_bits: int = ACC_BITS, scale_bits_per_cycle: int = 1):
        _check_g(self, lanes, g, max_group, scale_bits_per_cycle)
        self._kw = dict(lanes=lanes, g=g, max_group=max_group, acc_bits=acc_bits,
                        scale_bits_per_cycle=scale_bits_per_cycle)
        super().__init__({
            "i": In(stream.Signature(lut_in_layout(lanes))),
            "o": Out(stream.Signature(result_layout(acc_bits))),
        })

    lanes = property(lambda self: self._kw["lanes"])
    g = property(lambda self: self._kw["g"])

    def elaborate(self, platform):
        m = Module()
        L, g = self._kw["lanes"], self._kw["g"]
        m.submodules.chain = chain = LutChain(**self._kw)
        wiring.connect(m, wiring.flipped(self.o), chain.o)
        tabs = Signal(lut_table_layout(L, g))
        _build_tables(m, [self.i.payload.x[i] for i in range(L)], g, tabs)
        m.d.comb += self.i.ready.eq(~chain.i.valid | chain.i.ready)
        with m.If(self.i.ready):
            m.d.sync += chain.i.valid.eq(self.i.valid)
            m.d.sync += [chain.i.payload.w.eq(self.i.payload.w),
                         chain.i.payload.tab.eq(tabs)]
            for f in _FLAGS:
                m.d.sync += getattr(chain.i.payload, f).eq(getattr(self.i.payload, f))
        return m


def estimate_units(config) -> dict:
    """Units of this module for ``airfoil estimate``: one chain and one table builder.

    ``macs_per_cycle`` of the chain is its peak with INT1 weights (``lanes``); INT2 halves
    it. The builder is shared by all chains of an engine (no MACs of its own).
    """
    chain = LutChain(lanes=config.lanes, g=config.lut_group,
                     max_group=max(config.group_sizes))
    chain.macs_per_cycle = config.lanes
    return {"lut_chain": chain,
            "lut_table_builder": LutTableBuilder(lanes=config.lanes, g=config.lut_group)}
