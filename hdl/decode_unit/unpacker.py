"""The unpacker: raw memory words of packed weights -> lane-aligned signed 8-bit operands.

The stream format (records of INT2/INT3/INT4/INT6/INT8/OVP4 and BitMoD FP4/FP3 weights
with FP16 scales, PAD, lane-vector order, N:M indices and block-skip step masks) and the
output beat are defined in :mod:`airfoil.packing`; this is its hardware reader.

Structure: a bit buffer (a gearbox) of :attr:`Unpacker.buffer_bits` bits holds the
unread part of the stream, head at bit 0. Every cycle it may take one whole word (placed
right after the bits it holds) and may remove one *action* from its head:

* a *beat*: up to ``beat_vectors`` lane-vectors of the current record (at the
  start of a record together with its header, whose scales are converted to fixed point
  on the way), decoded to signed 8-bit weights and 4-bit N:M indices into the output
  register. A block-skip header also carries the step mask (``group / lanes`` bits after
  the scales): the record then holds ``popcount(mask) * rows`` lane-vectors, and every
  beat carries the mask (other records carry all their steps as the mask). The codes of a
  lane-vector are cut out of the buffer once per code width (and index width); INT codes
  are their own values, the unsigned codes of a zero-point format (``UINT4Z``) are minus
  their row's zero point (the header's zero points, after the scales), OVP4 pairs go
  through the outlier-victim decode and BitMoD FP codes (any codebook format of
  :mod:`airfoil.format_registry`) through a constant table per code width built from the
  registry's codebooks (the entries all formats of a width share, and the others chosen
  by the tag);
* a *skip*: a PAD tag, a header position in the last 11 bits of a word, or a malformed
  header (which also sets ``error``) drops the rest of the current word.

A full beat removes one to two words' worth of bits
(:meth:`~airfoil.packing.StreamGeometry.vectors_per_beat`) and a header rides along with
the first beat of its record, so the buffer drains at least as fast as one word per
cycle fills it, for every format: the unpacker takes one word per cycle, sustained, as
long as each record holds at least one word of bits per beat it takes
(``header_bits + mask bits + rows * kept * (bits + index bits) >= word_bits * beats``,
``kept`` the weights kept per row, ``group`` when dense, ``lanes`` times the present
steps for block skip, :meth:`~airfoil.packing.StreamGeometry.record_beats`; a short
last beat, as of a record shorter than a word, still costs a cycle). ``words.ready``
depends only on the fill level, never on the output.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from airfoil import format_registry
from airfoil.packing import (BLOCK_CODE, GROUP_CODES, GROUP_SHIFT, HEADER_FIXED_BITS,
                             NM_PATTERNS, NM_SHIFT, OVP_ID, OVP_MAGNITUDES, SCALE_K_SHAPE,
                             SCALE_M_SHAPE, StreamGeometry, beat_layout, format_spec,
                             nm_index_bits, nm_kept, record_tag)

from .fp16 import fp16_fixed_hw

__all__ = ["Unpacker"]


class Unpacker(wiring.Component):
    """Decode a packed weight stream at one memory word per cycle.

    Parameters
    ----------
    geometry : StreamGeometry
        Word width, lanes and rows per record (:class:`airfoil.packing.StreamGeometry`).
    tags : sequence, optional
        Record formats to decode (:class:`~airfoil.packing.RecordTag` members, tags or
        names); default: every streamed format of :mod:`airfoil.format_registry`. A
        record of another format is malformed (skipped, ``error``).

    Members
    -------
    words : In(stream.Signature(unsigned(word_bits)))
        Raw memory words of the stream, in order.
    beats : Out(stream.Signature(beat_layout(geometry)))
        Decoded beats (:func:`airfoil.packing.beat_layout`), exactly
        :func:`airfoil.packing.expected_beats` of the words.
    error : Out(1)
        Sticky: a malformed header (reserved tag or a format not among ``tags``, group
        code or sparsity code, an N:M pattern or block skip that does not fit the
        lanes or the format, an empty step mask) was skipped, or a scale was negative,
        infinite or NaN (that record's beats carry ``bad``).
    """

    def __init__(self, *, geometry: StreamGeometry, tags=None):
        if not isinstance(geometry, StreamGeometry):
            self._MustUse__silence = True
            raise TypeError(f"geometry must be a StreamGeometry, not {geometry!r}")
        self._geom = geometry
        if tags is None:
            tags = [f.tag for f in format_registry.streamed_formats()]
        chosen = {record_tag(t).value: record_tag(t) for t in tags}
        if not chosen:
            self._MustUse__silence = True
            raise ValueError("tags must name at least one record format")
        self._tags = tuple(chosen[v] for v in sorted(chosen))
        super().__init__({
            "words": In(stream.Signature(unsigned(geometry.word_bits))),
            "beats": Out(stream.Signature(beat_layout(geometry))),
            "error": Out(1),
        })

    @classmethod
    def from_config(cls, cfg, rows: int | None = None) -> "Unpacker":
        """The unpacker of one memory channel of an :class:`~airfoil.config.AccelConfig`:
        the formats of :attr:`~airfoil.config.AccelConfig.stream_formats`."""
        return cls(geometry=StreamGeometry.from_config(cfg, rows), tags=cfg.stream_formats)

    @property
    def tags(self) -> tuple:
        """The record formats decoded."""
        return self._tags

    @property
    def geometry(self) -> StreamGeometry:
        return self._geom

    @property
    def latency(self) -> int:
        """Cycles from the handshake of the word that completes a beat to that beat being
        valid on ``beats`` (when the output is free)."""
        return 2

    @property
    def kinds(self) -> list:
        """Lane-vector layouts ``(tag, index bits)`` the unpacker decodes (OVP4 is dense)."""
        ibs = sorted({0} | {nm_index_bits(c) for c in NM_PATTERNS})
        return [(t, ib) for t in self._tags for ib in ibs
                if ib == 0 or format_spec(t).kind != "ovp"]

    def _vpb(self, tag, ib) -> int:
        nm = next(c for c in [0] + list(NM_PATTERNS) if nm_index_bits(c) == ib)
        return self._geom.vectors_per_beat(tag, nm)

    @property
    def beat_bits_max(self) -> int:
        """Most stream bits one full beat of weights holds (header excluded)."""
        L = self._geom.lanes
        return max(self._vpb(t, ib) * L * (format_spec(t).code_bits + ib)
                   for t, ib in self.kinds)

    @property
    def mask_bits_max(self) -> int:
        """Bits of the longest step mask (block skip at the largest group)."""
        g = self._geom
        return max([0] + [g.mask_bits(grp, BLOCK_CODE) for grp in GROUP_CODES
                          if grp % g.lanes == 0])

    @property
    def zero_widths(self) -> list:
        """Bits of a record's zero points, by the decoded formats (0: none), sorted."""
        return sorted({0} | {self._geom.zero_bits(t) for t in self._tags})

    @property
    def buffer_bits(self) -> int:
        """Capacity of the bit buffer: a header (zero points and step mask included) and
        a full beat, plus two words of slack (one in flight behind the fill-level check,
        one to keep taking words while a beat waits for its last bits)."""
        return (self._geom.header_bits + max(self.zero_widths) + self.mask_bits_max +
                self.beat_bits_max + 2 * self._geom.word_bits)

    def elaborate(self, platform):
        m = Module()
        g = self._geom
        W, L, R, H = g.word_bits, g.lanes, g.rows, g.header_bits
        C = self.buffer_bits
        BMAX = self.beat_bits_max
        V = g.beat_vectors
        NV = g.max_record_vectors
        SM = g.max_record_steps
        MB = self.mask_bits_max
        tags = list(self._tags)
        kinds = self.kinds
        # step-mask widths of the block-skip groups that fit the lanes (0: no mask)
        block_groups = [grp for grp in GROUP_CODES if grp % L == 0]
        mask_widths = sorted({0} | {g.mask_bits(grp, BLOCK_CODE) for grp in block_groups})

        buf = Signal(C)
        fill = Signal(range(C + 1))
        phase = Signal(range(W))
        in_rec = Signal()
        rem = Signal(range(NV + 1))
        pos = Signal(range(NV))
        cur_tag = Signal(format_registry.TAG_FIELD_BITS)
        cur_nm = Signal(3)
        cur_m = Signal(data.ArrayLayout(SCALE_M_SHAPE, R))
        cur_k = Signal(data.ArrayLayout(SCALE_K_SHAPE, R))
        cur_bad = Signal()
        cur_mask = Signal(SM)
        cur_gcode = Signal(2)
        ZW = self.zero_widths
        # Zero-point bits of the decoded formats (0: none); they share one code width.
        ZP = max(f.zero_point_bits for f in map(format_spec, tags))
        if len({f.zero_point_bits for f in map(format_spec, tags)} - {0}) > 1:
            raise ValueError("the zero-point formats decoded must share one code width")
        cur_z = Signal(data.ArrayLayout(unsigned(max(ZP, 1)), R))
        cur_row = Signal(range(R))              # row of the next lane-vector of the record

        # -- header fields at the head of the buffer -----------------------------------
        hdr_tag = buf[0:GROUP_SHIFT]
        hdr_gcode = buf[GROUP_SHIFT:NM_SHIFT]
        hdr_nm = buf[NM_SHIFT:HEADER_FIXED_BITS]
        hdr_m = Signal.like(cur_m)
        hdr_k = Signal.like(cur_k)
        hdr_bad = Signal()
        bads = []
        for i in range(R):
            mm, kk, bb = fp16_fixed_hw(buf[HEADER_FIXED_BITS + 16 * i:][:16])
            m.d.comb += [hdr_m[i].eq(mm), hdr_k[i].eq(kk)]
            bads.append(bb)
        m.d.comb += hdr_bad.eq(_any(bads))
        hdr_zbits = Signal(range(max(ZW) + 1))  # bits of the zero points after the scales
        for t in tags:
            if g.zero_bits(t):
                with m.If(hdr_tag == t.value):
                    m.d.comb += hdr_zbits.eq(g.zero_bits(t))
        hdr_z = Signal.like(cur_z)
        if ZP:
            m.d.comb += [hdr_z[i].eq(buf[H + ZP * i:][:ZP]) for i in range(R)]

        tag_ok = Signal()
        with m.Switch(hdr_tag):
            with m.Case(*[t.value for t in tags]):
                m.d.comb += tag_ok.eq(1)
        shape_ok = Signal()                     # group code and N:M pattern fit the lanes
        hdr_total = Signal(range(NV + 1))
        hdr_mask = Signal(SM)                   # present steps (all, unless block skip)
        hdr_mbits = Signal(range(MB + 1))       # bits of the step mask after the scales
        mask_empty = Signal()                   # a block-skip mask of no step (malformed)
        step_masks = {}                         # block skip: the mask after the zero points
        for grp in block_groups:
            S = g.mask_bits(grp, BLOCK_CODE)
            step_masks[grp] = Signal(S, name=f"mbits{grp}")
            with m.Switch(hdr_zbits):
                for Z in ZW:
                    with m.Case(Z):
                        m.d.comb += step_masks[grp].eq(buf[H + Z:H + Z + S])
        with m.Switch(Cat(hdr_gcode, hdr_nm)):
            for grp, code in GROUP_CODES.items():
                for nm in [0] + list(NM_PATTERNS):
                    if nm_kept(grp, nm) % L == 0:
                        steps = g.record_vectors(grp, nm) // R
                        with m.Case(code | nm << 2):
                            m.d.comb += [hdr_total.eq(g.record_vectors(grp, nm)),
                                         hdr_mask.eq((1 << steps) - 1), shape_ok.eq(1)]
                if grp in block_groups:
                    S = g.mask_bits(grp, BLOCK_CODE)
                    mbits = step_masks[grp]
                    with m.Case(code | BLOCK_CODE << 2):
                        m.d.comb += [hdr_mask.eq(mbits), hdr_mbits.eq(S),
                                     hdr_total.eq(_popcount(mbits) * R),
                                     mask_empty.eq(~mbits.any()), shape_ok.eq(1)]

        at_header = ~in_rec & (fill != 0)
        late = phase > W - HEADER_FIXED_BITS
        # The fixed header bits lie in one word (present once fill != 0); the step mask may
        # lie in the next, so an empty mask is judged once its bits are in.
        ovp_values = [t.value for t in tags if format_spec(t).kind == "ovp"]
        hdr_ovp = Signal()
        if ovp_values:
            with m.Switch(hdr_tag):
                with m.Case(*ovp_values):
                    m.d.comb += hdr_ovp.eq(1)
        malformed = ~late & (hdr_tag != format_registry.PAD_TAG) & (
            ~tag_ok | ~shape_ok | (mask_empty & (fill >= H + hdr_zbits + hdr_mbits)) |
            (hdr_ovp & (hdr_nm != 0)))
        skip = Signal()
        start = Signal()
        m.d.comb += [
            skip.eq(at_header & (late | (hdr_tag == format_registry.PAD_TAG) | malformed)),
            start.eq(at_header & ~skip),
        ]

        # -- the beat at the head --------------------------------------------------------
        tag = Signal(format_registry.TAG_FIELD_BITS)
        nm = Signal(3)
        m.d.comb += [tag.eq(Mux(in_rec, cur_tag, hdr_tag)),
                     nm.eq(Mux(in_rec, cur_nm, hdr_nm))]
        ib = Signal(3)
        with m.Switch(nm):
            for code in NM_PATTERNS:
                with m.Case(code):
                    m.d.comb += ib.eq(nm_index_bits(code))
        kind = Signal(range(len(kinds)))
        for ki, (t, kib) in enumerate(kinds):
            with m.If((tag == t.value) & (ib == kib)):
                m.d.comb += kind.eq(ki)
        avail = Mux(in_rec, rem, hdr_total)
        vpb = Signal(range(V + 1))                   # lane-vectors in a full beat
        with m.Switch(kind):
            for ki, (t, kib) in enumerate(kinds):
                with m.Case(ki):
                    m.d.comb += vpb.eq(self._vpb(t, kib))
        n = Signal(range(V + 1))
        m.d.comb += n.eq(Mux(avail < vpb, avail, vpb))
        beat_bits = Signal(range(BMAX + 1))         # n lane-vectors (constant multiples)
        with m.Switch(kind):
            for ki, (t, kib) in enumerate(kinds):
                with m.Case(ki):
                    m.d.comb += beat_bits.eq(n * (L * (format_spec(t).code_bits + kib)))
        need = Signal(range(H + max(ZW) + MB + BMAX + 1))
        m.d.comb += need.eq(Mux(in_rec, 0, H + hdr_zbits + hdr_mbits) + beat_bits)

        beats = self.beats
        out_free = ~beats.valid | beats.ready
        emit = Signal()
        m.d.comb += emit.eq((in_rec | start) & (fill >= need) & out_free)

        consume = Signal(range(C + 1))
        with m.If(skip):
            m.d.comb += consume.eq(W - phase)
        with m.Elif(emit):
            m.d.comb += consume.eq(need)

        # -- decode the weights (and N:M indices) of the beat --------------------------
        win = Signal(BMAX)
        with m.If(in_rec):
            m.d.comb += win.eq(buf[:BMAX])
        with m.Else():
            with m.Switch(Cat(hdr_mbits, hdr_zbits)):
                for Z in ZW:
                    for S in mask_widths:
                        with m.Case(S | Z << len(hdr_mbits)):
                            m.d.comb += win.eq(buf[H + Z + S:H + Z + S + BMAX])
        mags = Array(Const(x, 8) for x in OVP_MAGNITUDES)

        def outlier(c):
            mag = mags[c[0:3]]
            return Mux(c[3], -mag, mag)

        # Constant value tables of the codebook formats (code -> value, the registry's
        # codebooks), by code width: the codes on which every format of a width agrees
        # share one table entry, the others (as the BitMoD variants' extra value's code)
        # are chosen by the tag.
        fp_tables = {t: [int(v) for v in format_spec(t).codebook] for t in tags
                     if format_spec(t).kind == "codebook"}
        fp_widths = {}
        for t in fp_tables:
            fp_widths.setdefault(format_spec(t).code_bits, []).append(t)

        def value(j, t, kib):
            b = format_spec(t).code_bits
            base = (j // L) * L * (b + kib)
            if format_spec(t).kind == "ovp":
                p0 = base + (j % L - j % 2) * 4
                c0, c1 = win[p0:p0 + 4], win[p0 + 4:p0 + 8]
                if j % 2 == 0:
                    return Mux(c1 == OVP_ID, outlier(c0), Mux(c0 == OVP_ID, 0, c0.as_signed()))
                return Mux(c1 == OVP_ID, 0, Mux(c0 == OVP_ID, outlier(c1), c1.as_signed()))
            return win[base + (j % L) * b:][:b]

        # Kinds whose lane-vectors share one code layout (width, index width) share the
        # code extraction; OVP4 is its own layout.
        layouts = {}
        for ki, (t, kib) in enumerate(kinds):
            kd = format_spec(t).kind
            key = (kd, kib) if kd in ("ovp", "zero_point") else (format_spec(t).code_bits, kib)
            layouts.setdefault(key, (t, []))[1].append(ki)

        def index(j, t, kib):
            b = format_spec(t).code_bits
            base = (j // L) * L * (b + kib) + L * b
            return win[base + (j % L) * kib:][:kib]

        # The zero point of each lane-vector slot of the beat: the record's lane-vector
        # ``i`` holds row ``i % rows``, so slot ``s`` holds row ``(row0 + s) % rows``.
        row0 = Mux(in_rec, cur_row, 0)
        slot_zero = []
        for sl in range(V if ZP else 0):
            zs = Signal(ZP, name=f"z{sl}")
            with m.Switch(row0):
                for r0 in range(R):
                    with m.Case(r0):
                        i = (r0 + sl) % R
                        m.d.comb += zs.eq(Mux(in_rec, cur_z[i], hdr_z[i]))
            slot_zero.append(zs)

        weights, indices = [], []
        for j in range(g.ops):
            w = Signal(8, name=f"w{j}")
            code = Signal(8, name=f"c{j}")      # the weight's code (FP widths), zero-extended
            x = Signal(4, name=f"x{j}")
            with m.Switch(kind):
                for (lay, kib), (t, kis) in layouts.items():
                    if j // L >= self._vpb(t, kib):
                        continue
                    with m.Case(*kis):
                        v = value(j, t, kib)
                        if lay == "zero_point":
                            v = Cat(v, Const(0, 1)).as_signed() - \
                                Cat(slot_zero[j // L], Const(0, 1)).as_signed()
                        m.d.comb += w.eq(v if lay in ("ovp", "zero_point") else v.as_signed())
                        if lay in fp_widths:
                            m.d.comb += code.eq(v)
                        if kib:
                            m.d.comb += x.eq(index(j, t, kib))
            # An FP record's codes go through its table (overriding two's complement).
            with m.Switch(tag):
                for b, fts in fp_widths.items():
                    with m.Case(*[t.value for t in fts]):
                        with m.Switch(code[:b]):
                            for c in range(1 << b):
                                vals = {fp_tables[t][c] for t in fts}
                                with m.Case(c):
                                    if len(vals) == 1:
                                        m.d.comb += w.eq(Const(vals.pop(), signed(8)))
                                        continue
                                    with m.Switch(tag):
                                        for t in fts:
                                            with m.Case(t.value):
                                                m.d.comb += w.eq(
                                                    Const(fp_tables[t][c], signed(8)))
            live = n > j // L
            weights.append(Mux(live, w, 0))
            indices.append(Mux(live, x, 0))

        # -- output register -------------------------------------------------------------
        with m.If(emit):
            p = beats.payload
            m.d.sync += [beats.valid.eq(1), p.n.eq(n), p.first.eq(start),
                         p.last.eq(avail <= vpb), p.tag.as_value().eq(tag), p.nm.eq(nm),
                         p.pos.eq(Mux(in_rec, pos, 0)),
                         p.m.eq(Mux(in_rec, cur_m, hdr_m)),
                         p.k.eq(Mux(in_rec, cur_k, hdr_k)),
                         p.bad.eq(Mux(in_rec, cur_bad, hdr_bad)),
                         p.mask.eq(Mux(in_rec, cur_mask, hdr_mask)),
                         p.group.eq(Mux(in_rec, cur_gcode, hdr_gcode))]
            m.d.sync += [p.w[j].eq(weights[j]) for j in range(g.ops)]
            m.d.sync += [p.idx[j].eq(indices[j]) for j in range(g.ops)]
        with m.Elif(beats.ready):
            m.d.sync += beats.valid.eq(0)

        # -- record state ------------------------------------------------------------------
        with m.If(emit):
            with m.If(start):
                m.d.sync += [in_rec.eq(hdr_total != n), rem.eq(hdr_total - n), pos.eq(n),
                             cur_tag.eq(hdr_tag), cur_nm.eq(hdr_nm), cur_m.eq(hdr_m),
                             cur_k.eq(hdr_k), cur_bad.eq(hdr_bad), cur_mask.eq(hdr_mask),
                             cur_gcode.eq(hdr_gcode), cur_z.eq(hdr_z)]
                with m.If(hdr_bad):
                    m.d.sync += self.error.eq(1)
            with m.Else():
                m.d.sync += [in_rec.eq(rem != n), rem.eq(rem - n), pos.eq(pos + n)]
        if ZP:                                 # the row after the beat's last lane-vector
            row_next = Signal(range(R + V + 1))
            m.d.comb += row_next.eq(row0 + n)
            with m.If(emit):
                with m.Switch(row_next):
                    for x in range(R + V + 1):
                        with m.Case(x):
                            m.d.sync += cur_row.eq(x % R)
        with m.If(skip & malformed):
            m.d.sync += self.error.eq(1)

        # -- the bit buffer --------------------------------------------------------------
        accept = Signal()
        m.d.comb += [
            self.words.ready.eq(fill <= C - W),
            accept.eq(self.words.valid & self.words.ready),
        ]
        base = Signal(range(C + 1))
        m.d.comb += base.eq(fill - consume)
        incoming = Signal(C)
        with m.If(accept):
            m.d.comb += incoming.eq(self.words.payload << base)
        m.d.sync += [
            buf.eq((buf >> consume) | incoming),
            fill.eq(base + Mux(accept, W, 0)),
            phase.eq(phase + consume),
        ]
        return m


def _popcount(value):
    """Number of set bits of a value (an adder tree over its bits)."""
    bits = [value[i] for i in range(len(value))]
    while len(bits) > 1:
        bits = [bits[i] + bits[i + 1] if i + 1 < len(bits) else bits[i]
                for i in range(0, len(bits), 2)]
    return bits[0]


def _any(values):
    """OR of a list of 1-bit values (0 for an empty list)."""
    out = Const(0, 1)
    for v in values:
        out = out | v
    return out
