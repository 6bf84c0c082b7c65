"""The packed weight-stream format: what the compiler writes and the unpacker reads.

One module defines the byte image of packed weights for every format, the packer that
writes it (compiler and golden model), the reference unpacker (tests), and the output
beat of the hardware unpacker (``hdl/decode_unit/unpacker.py``), so the four agree.

Words and bits
--------------
A *stream* is a sequence of memory words of ``word_bits`` bits (the port width). Word
``i`` occupies bytes ``i * word_bits / 8 ..`` of the stream; bit ``j`` of a word is bit
``j % 8`` of its byte ``j // 8`` (little endian, LSB first, as :func:`airfoil.formats.
pack_int`). The stream is read as one continuous bit string: bit ``t`` is bit
``t % word_bits`` of word ``t // word_bits``. Every field below is LSB first and fields
follow each other with no gap, so values straddle word boundaries freely (INT3 does).

Records
-------
The bit string is a sequence of *records*. A record is one *group column*: the same
quantization group (``group`` consecutive weights along k) of ``rows`` consecutive
output rows, where ``rows`` is :attr:`StreamGeometry.rows` (the chains one unpacker
feeds). Its layout::

    bits 0..5     tag        RecordTag: the weight format of the record (0 = PAD; the
                             tags of :mod:`airfoil.format_registry`, the others
                             reserved)
    bits 6..7     group      0: 32, 1: 64, 2: 128 weights per row
    bits 8..11    sparsity   0: dense; N:M code of :data:`NM_PATTERNS` (1: 1:4, 2: 2:4,
                             3: 2:8, 4: 4:16, 5: 8:16); 6: block skip (:data:`BLOCK_CODE`)
    16 * rows     scales     FP16 bit patterns of the rows' group scales, row 0 first
    b * rows      zeros      zero-point formats only (``UINT4Z``): the rows' ``b``-bit
                             unsigned zero points, row 0 first
    group / lanes step mask  block skip only: bit ``s`` set = k-step ``s`` is present
    lane-vectors             the weights (and N:M indices)

The weights of a record are cut into *lane-vectors* of ``lanes`` weights of one row.
Lane-vector ``i`` holds row ``i % rows``, k positions ``(i // rows) * lanes`` onwards
(lane 0 first): the order in which ``rows`` chains consume them, one k-step after the
other (the order of :class:`airfoil.formats.TileLayout`). A dense lane-vector is its
``lanes`` weights of ``bits`` bits each.

An N:M record keeps ``N`` entries in every window of ``M`` consecutive weights of a row
(``group * N / M`` kept entries per row, a multiple of ``lanes``): the nonzeros, and where
a window has fewer, zeros at its lowest unused positions; each entry has its value and
its *index* ``0..M-1`` in the window, entries in increasing index order. Lane-vectors
cut the kept entries as above (row ``i % rows``, kept entries ``(i // rows) * lanes``
onwards); an N:M lane-vector is its ``lanes`` values (``bits`` each) followed by their
``lanes`` indices (``log2(M)`` bits each, unsigned).

A *block-skip* record (sparsity code 6, any format but OVP4) is dense-valued but
leaves out whole *k-steps*: k-step ``s`` is the ``lanes`` weights ``s * lanes ..`` of
every one of the record's ``rows`` rows (a block of ``rows x lanes`` weights, what the
chains consume in one cycle). The *step mask* of ``group / lanes`` bits after the scales
(LSB first like every field, so it may straddle words) names the present k-steps; only
their lane-vectors follow, in the usual order over present steps (lane-vector ``i`` holds
row ``i % rows`` of the ``(i // rows)``-th present step), and the skipped steps' weights
are zero. The packer marks a step present when any of its weights is nonzero and keeps
step 0 of an all-zero record, so the mask is never 0 and every record still yields its
group partial sums; a record holds ``popcount(mask) * rows`` lane-vectors.

A value of ``bits`` bits is:

* ``INT2``, ``INT3``, ``INT4``, ``INT6``, ``INT8``: two's complement (the full range is
  legal).
* BitMoD FP formats (:mod:`airfoil.bitmod`): ``FP4_ER_P``, ``FP4_ER_N``, ``FP4_EA_P``,
  ``FP4_EA_N`` (4-bit codes ``s mmm``: magnitudes ``0, 1, 2, 3, 4, 6, 8, 12``, sign
  ``s``; the "-0" code ``1000`` holds the variant's extra value +10, -10, +16, -16) and
  ``FP3_ER_P``, ``FP3_ER_N``, ``FP3_EA_P``, ``FP3_EA_N`` (3-bit codes ``s mm``:
  magnitudes ``0, 1, 2, 4``; code ``100`` holds +3, -3, +6, -6). Values are integers in
  units where E2M1 values are doubled; the code -> value map is :func:`airfoil.bitmod.
  values`, the one definition the packer, the reference reader and the unpacker's
  tables are built from. FP records may be N:M sparse (their values are just weights
  with indices).
* ``UINT4Z``: unsigned 4-bit codes ``u``; the weight is ``u - z`` with its row's zero
  point ``z`` from the header (``-15..15``; a row's weights span at most 15). The packer
  takes ``z`` as the negated smallest weight of the row (0 when none is negative).
* ``OVP4``: OliVe-style outlier-victim pairs over 4-bit codes. Lanes ``2p, 2p + 1`` form a
  pair (``lanes`` is even). A normal code is an INT4 value in ``-7..7``; code ``0b1000``
  (``-8``) is the *identifier*, never a value. A pair ``(c0, c1)`` decodes as:

  - ``c1 == 0b1000``: ``(outlier(c0), 0)`` -- the right weight is the pruned victim;
  - else ``c0 == 0b1000``: ``(0, outlier(c1))`` -- the left weight is the victim;
  - else ``(int4(c0), int4(c1))``.

  ``outlier(c)`` is an E2M1 "abfloat": sign ``c[3]``, magnitude
  :data:`OVP_MAGNITUDES` ``[c & 7]`` = ``(2 + c[0]) << (c[2:1] + 2)`` for ``c & 7 != 0``,
  and 0 for ``c & 7 == 0`` (so the ambiguous pair ``(0b1000, 0b1000)`` means ``(0, 0)``
  both ways). Outliers are therefore +-12, 16, 24, 32, 48, 64, 96 and need the other
  weight of their pair to be 0. A group's scale is chosen so that its normal weights lie
  in -7..7. OVP4 records are dense.

End of a stream, padding
------------------------
Tag 0 (``PAD``) means "skip to the next word boundary". A header never starts in the
last ``HEADER_FIXED_BITS - 1`` (11) bits of a word: where a record would, the packer
leaves those bits zero and the reader skips them as padding. Every stream the packer
writes ends on a word boundary (the rest of its last word is zero, a PAD), so streams
concatenate: a layer in INT4 followed by a layer in INT2 is just two streams back to
back. An all-zero word is a whole-word PAD; memory channels are padded with such words
to equal length. Only the zero-point formats (:meth:`airfoil.format_registry.FormatSpec.
zero_point_bits`) carry zero points, after the scales.

Precision per layer and per group
---------------------------------
Each record carries its own tag, group size and sparsity, so the format may change from
one group column to the next (and from layer to layer). :func:`pack_tensor` takes either
one format for the tensor or a (row batch x group column) array of formats.

Channels (interleave)
---------------------
A tensor with ``R`` rows is cut into row batches of ``rows`` rows (the last one padded
with zero rows whose scale is 1.0); batch ``b`` goes to channel ``b % channels``, and
each channel's stream holds its batches in order, each batch's group columns in k
order (:func:`pack_channels`). In a core, channel ``c``'s stream feeds the decode unit of
slice ``c``, and a compiled folder places it in channel ``c``'s memory; so a ``rows``-row
batch is a slice's share of one ``chains``-row batch of the whole core. :func:`pack_tensor`
interleaves the channel streams word by word into one image: image word ``i`` is word
``i // channels`` of channel ``i % channels`` (shorter channel streams are padded with
all-zero words first), i.e. the usual address interleave of a multi-channel memory at
one word of granularity.

Output beats
------------
The unpacker emits a record as a sequence of beats of :func:`beat_layout`; each carries
``n`` lane-vectors of one record, :meth:`StreamGeometry.vectors_per_beat` (fewer in the
last beat of a record) of the :attr:`StreamGeometry.beat_vectors` slots (unused slots
are zero): ``w``, the weights as signed 8-bit
integers, ``idx``, their N:M indices (0 when dense), ``nm``, the sparsity code, the
record's scales exactly as ``m[row], k[row]`` (:func:`airfoil.formats.fp16_fixed`;
``bad`` flags a negative, infinite or NaN FP16 pattern, which the packer never writes),
``pos`` (index of the beat's first lane-vector in the record), ``first``/``last``
(record boundaries), the tag, ``group`` (the header's group code) and ``mask``, the
record's present k-steps (:meth:`Record.step_mask`: the step mask of a block-skip record,
all of its ``record_vectors / rows`` steps otherwise), from which a consumer knows the
k-step (activation window) of each step it assembles: the lowest set bit not yet taken.

A full beat holds between one and two words of stream bits (:attr:`StreamGeometry.ops`
weights of dense INT2, INT3, INT4, OVP4, FP4 or FP3, half as many of INT6 or INT8; N:M
indices count as bits), so the beat rate never limits the word rate, except that a
record's last beat may be short (a record shorter than a word, or a block-skip record
whose lane-vectors are not whole beats) and still costs a cycle: the unpacker keeps one
word per cycle when every record holds at least a word of bits per beat
(:meth:`StreamGeometry.record_bits` ``>= word_bits *`` :meth:`StreamGeometry.record_beats`;
for dense and N:M records with a power-of-two ``rows`` that is ``record_bits >=
word_bits``).

A consumer with ``rows`` chains of ``lanes`` lanes takes one k-step (``rows``
lane-vectors) per cycle; a full INT2 beat holds ``beat_vectors / rows`` steps, so to
keep pace with dense INT2 at one word per cycle it needs ``beat_vectors`` chains per
unpacker (twice what INT4 needs; e.g. two chains per row, each taking every other
k-step, their group sums added), or it applies backpressure and the port runs at the
chains' rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from . import bitmod
from . import format_registry as _registry
from .errors import CompileError
from .formats import fp16_fixed, pack_int, unpack_int
from .isa import WeightFormat

__all__ = [
    "RecordTag", "TAG_BITS", "TAG_BY_NAME", "GROUP_CODES", "GROUP_SHIFT", "NM_SHIFT",
    "HEADER_FIXED_BITS", "format_spec",
    "NM_PATTERNS", "NM_BY_NAME", "BLOCK_CODE", "nm_code", "nm_index_bits", "nm_compress",
    "nm_expand",
    "OVP_ID", "OVP_MAGNITUDES", "SCALE_M_BITS", "SCALE_M_SHAPE", "SCALE_K_SHAPE",
    "StreamGeometry", "Record",
    "record_tag", "step_mask",
    "ovp_encode", "ovp_decode", "ovp_values", "bitmod_values", "encode_weights",
    "decode_weights",
    "pack_records", "record_starts", "parse_stream", "expected_beats", "beat_layout",
    "beat_value",
    "tensor_records", "pack_tensor", "nm_kept", "unpack_tensor", "interleave",
    "deinterleave",
    "bits_per_weight", "read_records", "RECORD_FORMATS", "BITMOD_TAGS", "MIXED_PRESETS",
    "STREAM_FORMATS", "DEFAULT_MIXED", "record_formats", "stream_formats",
    "core_stream_geometry", "quantize_stream", "mixed_choice", "MIXED_MAX_REL_ERROR",
    "MIXED_MAX_ERROR_RANGE",
    "pack_channels", "unpack_channels",
]


RecordTag = _registry.make_enum(
    "RecordTag", {"PAD": _registry.PAD_TAG,
                  **{f.enum_name: f.tag for f in sorted(_registry.streamed_formats(),
                                                        key=lambda f: f.tag)}},
    _registry.TAG_FIELD_BITS,
    """Format of a record in the packed weight stream (bits 0..5 of its header): ``PAD``
    and the streamed formats of :mod:`airfoil.format_registry` by their tags.""")
RecordTag.__module__ = __name__


def format_spec(tag) -> _registry.FormatSpec:
    """The :class:`~airfoil.format_registry.FormatSpec` of a record tag (a member, a
    :class:`~airfoil.format_registry.FormatTag` or an int)."""
    return _registry.by_tag(tag)


#: Record formats whose codes are BitMoD codes (:mod:`airfoil.bitmod`) and that a decode
#: unit reads only when a configuration lists them, by the BitMoD format of the same name:
#: their code -> value maps are :func:`airfoil.bitmod.values`.
BITMOD_TAGS = {RecordTag(f.tag): bitmod.BitModFormat(f.bitmod_code)
               for f in _registry.streamed_formats()
               if f.bitmod_code is not None and not f.always_decoded}
#: Bits per weight of each record format.
TAG_BITS = {t: format_spec(t).code_bits for t in RecordTag if t is not RecordTag.PAD}
TAG_BY_NAME = {n: RecordTag(f.tag) for f in _registry.streamed_formats() for n in f.names}
#: Group size -> 2-bit code in the record header.
GROUP_CODES = {32: 0, 64: 1, 128: 2}
#: First bit of the group code and of the sparsity code in a record header.
GROUP_SHIFT = _registry.TAG_FIELD_BITS
NM_SHIFT = GROUP_SHIFT + 2
#: Header bits before the scales: tag, group code, sparsity code.
HEADER_FIXED_BITS = 12
#: N:M sparsity code in a record header -> (N, M); code 0 is dense. The numbering is
#: that of the chain's sparsity modes (``airfoil.sparsity.SparsityMode``).
NM_PATTERNS = {1: (1, 4), 2: (2, 4), 3: (2, 8), 4: (4, 16), 5: (8, 16)}
#: Sparsity code of a block-skip record (a step mask follows the scales): the value of
#: ``airfoil.sparsity.SparsityMode.BLOCK``, the chain mode that runs it.
BLOCK_CODE = 6
NM_BY_NAME = {"dense": 0, "1:4": 1, "2:4": 2, "2:8": 3, "4:16": 4, "8:16": 5,
              "block": BLOCK_CODE}
#: OVP identifier code (marks the pruned victim of an outlier).
OVP_ID = 0b1000
#: OVP outlier magnitude by the low three bits of its code.
OVP_MAGNITUDES = (0, 12, 16, 24, 32, 48, 64, 96)

#: A group scale as exact fixed point ``m * 2**k`` (:func:`airfoil.formats.fp16_fixed`):
#: ``m`` the significand with its hidden bit (``SCALE_M_BITS``) and the FP16 sign applied
#: (``SCALE_M_SHAPE``), ``k`` in ``FP16_K_MIN..FP16_K_MAX``.
SCALE_M_BITS = 11
SCALE_M_SHAPE = signed(SCALE_M_BITS + 1)
SCALE_K_SHAPE = signed(6)


def record_tag(fmt):
    """Return the :class:`RecordTag` for a name (``"int4"``, ``"ovp"``), a WeightFormat, a
    tag or a tag value (a :class:`~airfoil.format_registry.FormatTag` for a format
    registered at run time)."""
    if isinstance(fmt, RecordTag) or isinstance(fmt, _registry.FormatTag):
        if fmt.value == _registry.PAD_TAG:
            raise CompileError("PAD is not a weight format")
        return fmt
    if isinstance(fmt, WeightFormat):
        return _registry.by_isa_code(fmt).record_tag()
    if isinstance(fmt, (int, np.integer)):
        try:
            return format_spec(int(fmt)).record_tag()
        except KeyError:
            raise CompileError(f"record tag {int(fmt)} names no weight format") from None
    spec = _registry.find_by_name(fmt)
    if spec is None or not spec.streamed:
        names = [n for f in _registry.streamed_formats() for n in f.names]
        raise CompileError(f"unknown packed weight format {fmt!r} (accepted: "
                           f"{', '.join(names)})")
    return spec.record_tag()


def nm_code(sparsity) -> int:
    """Header code of a sparsity pattern name (``"dense"``, ``"2:4"``, ...) or code."""
    if isinstance(sparsity, (int, np.integer)) and (
            sparsity == 0 or sparsity in NM_PATTERNS or sparsity == BLOCK_CODE):
        return int(sparsity)
    try:
        return NM_BY_NAME[str(sparsity)]
    except KeyError:
        raise CompileError(f"unknown sparsity pattern {sparsity!r} (accepted: "
                           f"{', '.join(NM_BY_NAME)})") from None


def nm_index_bits(code: int) -> int:
    """Bits of one N:M index for a sparsity code (0 for dense and block skip)."""
    return (NM_PATTERNS[code][1] - 1).bit_length() if code in NM_PATTERNS else 0


def nm_kept(group: int, code: int) -> int:
    """Entries kept per row of a group (``group`` when dense; for block skip the most a
    record may hold, all of them)."""
    if code not in NM_PATTERNS:
        return group
    n, mm = NM_PATTERNS[code]
    return group * n // mm


def nm_compress(q, code: int) -> tuple[np.ndarray, np.ndarray]:
    """Kept values and indices (last axis compressed) of N:M-sparse weights ``q``.

    Raise :class:`CompileError` when a window holds more than ``N`` nonzeros.
    """
    q = np.asarray(q, dtype=np.int64)
    if code not in NM_PATTERNS:
        return q, np.zeros_like(q)
    n, mm = NM_PATTERNS[code]
    win = q.reshape(q.shape[:-1] + (q.shape[-1] // mm, mm))
    nz = win != 0
    if bool((nz.sum(axis=-1) > n).any()):
        raise CompileError(f"weights are not {n}:{mm} sparse (a window of {mm} holds more "
                           f"than {n} nonzeros)")
    key = np.where(nz, 0, mm) + np.arange(mm)          # nonzeros first, then lowest zeros
    idx = np.sort(np.argsort(key, axis=-1, kind="stable")[..., :n], axis=-1)
    vals = np.take_along_axis(win, idx, axis=-1)
    shape = q.shape[:-1] + (q.shape[-1] * n // mm,)
    return vals.reshape(shape), idx.reshape(shape)


def nm_expand(vals, idx, code: int) -> np.ndarray:
    """Inverse of :func:`nm_compress`: dense weights from kept values and indices."""
    vals = np.asarray(vals, dtype=np.int64)
    if code not in NM_PATTERNS:
        return vals
    n, mm = NM_PATTERNS[code]
    v = vals.reshape(vals.shape[:-1] + (vals.shape[-1] // n, n))
    i = np.asarray(idx, dtype=np.int64).reshape(v.shape)
    out = np.zeros(v.shape[:-1] + (mm,), dtype=np.int64)
    np.put_along_axis(out, i, v, axis=-1)
    return out.reshape(vals.shape[:-1] + (vals.shape[-1] * mm // n,))


def _bits_for(n: int) -> int:
    """Bits of an unsigned field holding 0..n."""
    return max(1, int(n).bit_length())


@dataclass(frozen=True)
class StreamGeometry:
    """Shape of one packed weight stream and of the unpacker that reads it.

    Parameters
    ----------
    word_bits : int
        Memory word (port) width: a power of two, 64..1024.
    lanes : int
        Weights per lane-vector (the chain's lanes): a power of two, 2..128.
    rows : int
        Rows per record: the chains one unpacker feeds (1..64).
    """

    word_bits: int
    lanes: int
    rows: int

    def __post_init__(self):
        w, l, r = self.word_bits, self.lanes, self.rows
        if not (isinstance(w, int) and 64 <= w <= 1024 and w & (w - 1) == 0):
            raise ValueError(f"word_bits must be a power of two in 64..1024, not {w!r}")
        if not (isinstance(l, int) and 2 <= l <= 128 and l & (l - 1) == 0):
            raise ValueError(f"lanes must be a power of two in 2..128, not {l!r}")
        if not (isinstance(r, int) and 1 <= r <= 64):
            raise ValueError(f"rows must be an integer in 1..64, not {r!r}")

    @classmethod
    def from_config(cls, cfg, rows: int | None = None) -> "StreamGeometry":
        """Geometry of one memory channel of ``cfg``: ``rows`` defaults to chains per channel."""
        if rows is None:
            rows = max(1, cfg.chains // cfg.memory.channels)
        return cls(word_bits=cfg.memory.word_bits, lanes=cfg.lanes, rows=rows)

    @property
    def header_bits(self) -> int:
        """Bits of a record header: tag, group, sparsity and ``rows`` FP16 scales."""
        return HEADER_FIXED_BITS + 16 * self.rows

    @property
    def beat_vectors(self) -> int:
        """Lane-vector slots in a beat: the fewest whose dense INT2 weights fill a word,
        ``ceil(word_bits / (2 * lanes))``."""
        return -(-self.word_bits // (2 * self.lanes))

    def vectors_per_beat(self, tag, nm: int = 0) -> int:
        """Lane-vectors in a full beat of ``tag`` (N:M code ``nm``): :attr:`beat_vectors`
        halved while the beat would hold more than two words of stream bits (so a full
        beat holds one to two words, or one lane-vector when that is longer)."""
        per_vec = self.lanes * (format_spec(tag).code_bits + nm_index_bits(nm))
        v = self.beat_vectors
        while v > 1 and v * per_vec > 2 * self.word_bits:
            v //= 2
        return v

    @property
    def ops(self) -> int:
        """Signed 8-bit weights in one output beat."""
        return self.beat_vectors * self.lanes

    def record_vectors(self, group: int, nm: int = 0, mask: int | None = None) -> int:
        """Lane-vectors in a record of ``group``-weight groups (N:M code ``nm``); for block
        skip, ``popcount(mask) * rows`` (all steps when ``mask`` is ``None``)."""
        if nm == BLOCK_CODE and mask is not None:
            return self.rows * int(mask).bit_count()
        return self.rows * nm_kept(group, nm) // self.lanes

    @property
    def max_record_vectors(self) -> int:
        return self.record_vectors(max(GROUP_CODES))

    def record_beats(self, tag, group: int, nm: int = 0, mask: int | None = None) -> int:
        """Output beats of a record: its lane-vectors over :meth:`vectors_per_beat`."""
        return -(-self.record_vectors(group, nm, mask) // self.vectors_per_beat(tag, nm))

    @property
    def max_record_steps(self) -> int:
        """k-steps of the longest record (bits of a beat's ``mask``)."""
        return max(1, max(GROUP_CODES) // self.lanes)

    def zero_bits(self, tag) -> int:
        """Bits of a record's zero points: ``rows`` zero points of a zero-point format,
        else 0."""
        return self.rows * format_spec(tag).zero_point_bits

    def mask_bits(self, group: int, nm: int = 0) -> int:
        """Bits of a record's step mask: ``group / lanes`` for block skip, else 0."""
        return group // self.lanes if nm == BLOCK_CODE else 0

    def record_bits(self, tag, group: int, nm: int = 0, mask: int | None = None) -> int:
        """Bits of a whole record (header and step mask included); a block-skip record
        without ``mask`` counts all its steps (the most it may take)."""
        bits = format_spec(tag).code_bits
        return (self.header_bits + self.zero_bits(tag) + self.mask_bits(group, nm) +
                self.record_vectors(group, nm, mask) * self.lanes *
                (bits + nm_index_bits(nm)))

    def check_group(self, group: int, nm: int = 0) -> None:
        if group not in GROUP_CODES:
            raise CompileError(f"group size {group} cannot be packed (accepted: "
                               f"{', '.join(map(str, GROUP_CODES))})")
        if nm_kept(group, nm) % self.lanes:
            what = "group size" if nm == 0 else f"kept entries per row ({NM_PATTERNS[nm]})"
            raise CompileError(f"{what} {nm_kept(group, nm)} of group {group} is not a "
                               f"multiple of lanes ({self.lanes})")


def beat_layout(geom: StreamGeometry) -> data.StructLayout:
    """Payload of one unpacker output beat for ``geom`` (see the module docstring)."""
    return data.StructLayout({
        "w": data.ArrayLayout(signed(8), geom.ops),
        "n": unsigned(_bits_for(geom.beat_vectors)),
        "pos": unsigned(_bits_for(geom.max_record_vectors - 1)),
        "first": unsigned(1),
        "last": unsigned(1),
        "tag": RecordTag,
        "nm": unsigned(3),
        "idx": data.ArrayLayout(unsigned(4), geom.ops),
        "m": data.ArrayLayout(SCALE_M_SHAPE, geom.rows),
        "k": data.ArrayLayout(SCALE_K_SHAPE, geom.rows),
        "bad": unsigned(1),
        "mask": unsigned(geom.max_record_steps),
        "group": unsigned(2),
    })


# -- element codes ------------------------------------------------------------------------

def ovp_values() -> np.ndarray:
    """Every weight value an OVP4 record can hold (normal values and outliers)."""
    out = [v for v in range(-7, 8)] + [s * m for m in OVP_MAGNITUDES[1:] for s in (1, -1)]
    return np.array(sorted(out), dtype=np.int64)


def _outlier_codes() -> dict:
    codes = {}
    for c in range(16):
        mag = OVP_MAGNITUDES[c & 7]
        if mag:
            codes[-mag if c & 8 else mag] = c
    return codes


_OUTLIER_CODE = _outlier_codes()
#: value + 128 -> outlier code (-1: not an outlier value), for values -128..127.
_OUTLIER_LUT = np.full(256, -1, dtype=np.int64)
for _v, _c in _OUTLIER_CODE.items():
    _OUTLIER_LUT[_v + 128] = _c


def ovp_encode(q) -> np.ndarray:
    """Encode weights (a multiple of 2 along the last axis) as OVP4 codes in -8..7.

    Raise :class:`CompileError` for a pair with two outliers, an outlier whose partner is
    not 0, or a value that is neither a normal value (-7..7) nor an outlier.
    """
    v = np.asarray(q, dtype=np.int64)
    if v.shape[-1] % 2:
        raise CompileError(f"OVP4 needs an even number of weights per row, not {v.shape[-1]}")
    a, b = v[..., 0::2], v[..., 1::2]
    out_a, out_b = np.abs(a) > 7, np.abs(b) > 7
    if bool((out_a & out_b).any()):
        raise CompileError("OVP4 pair holds two outliers (accepted: at most one per pair)")
    if bool((out_a & (b != 0)).any() or (out_b & (a != 0)).any()):
        raise CompileError("OVP4 outlier's pair partner is not 0 (the victim must be pruned)")
    lut = lambda x: np.where((x >= -128) & (x <= 127), _OUTLIER_LUT[np.clip(x, -128, 127)
                                                                       + 128], -1)
    bad = (out_a & (lut(a) < 0)) | (out_b & (lut(b) < 0))
    if bool(bad.any()):
        x = int(np.where(out_a, a, b)[bad].reshape(-1)[0])
        raise CompileError(f"OVP4 outlier {x} is not representable (accepted: "
                           f"+-{', '.join(map(str, OVP_MAGNITUDES[1:]))})")
    code_of = lambda x: np.where(np.abs(x) > 7, lut(x), x & 15)
    ca = np.where(out_b, OVP_ID, code_of(a))
    cb = np.where(out_a, OVP_ID, code_of(b))
    codes = np.empty_like(v)
    codes[..., 0::2], codes[..., 1::2] = ca, cb
    return np.where(codes >= 8, codes - 16, codes)


def ovp_decode(codes) -> np.ndarray:
    """Decode OVP4 codes (signed or unsigned 4-bit, pairs along the last axis) to values."""
    c = np.asarray(codes, dtype=np.int64) & 15
    mags = np.array(OVP_MAGNITUDES, dtype=np.int64)
    outlier = lambda x: np.where(x & 8, -mags[x & 7], mags[x & 7])
    int4 = lambda x: np.where(x >= 8, x - 16, x)
    c0, c1 = c[..., 0::2], c[..., 1::2]
    v0 = np.where(c1 == OVP_ID, outlier(c0), np.where(c0 == OVP_ID, 0, int4(c0)))
    v1 = np.where(c1 == OVP_ID, 0, np.where(c0 == OVP_ID, outlier(c1), int4(c1)))
    out = np.empty_like(c)
    out[..., 0::2], out[..., 1::2] = v0, v1
    return out


def bitmod_values(tag) -> np.ndarray:
    """Values of a codebook record format indexed by its unsigned code
    (:attr:`airfoil.format_registry.FormatSpec.codebook`, :func:`airfoil.bitmod.values`)."""
    return np.array(format_spec(tag).values(), dtype=np.int64)


def encode_weights(tag, q) -> np.ndarray:
    """Return the signed codes (one per weight) that ``tag`` stores for weights ``q``."""
    return format_spec(tag).encode(q)


def decode_weights(tag, codes) -> np.ndarray:
    """Inverse of :func:`encode_weights`."""
    return format_spec(tag).decode(codes)


# -- records ------------------------------------------------------------------------------

@dataclass
class Record:
    """One group column: ``rows`` rows x ``group`` weights in one format, with scales.

    Members
    -------
    tag : RecordTag
    group : int
    q : numpy.ndarray
        int64 weights (dense, zeros included), shape (rows, group).
    scale_bits : numpy.ndarray
        uint16 FP16 bit patterns of the rows' scales, shape (rows,).
    nm : int
        Sparsity code (0: dense, a key of :data:`NM_PATTERNS`, or :data:`BLOCK_CODE`).
    mask : int or None
        Block skip: the step mask (bit ``s``: k-step ``s`` present); ``None`` lets the
        packer derive it from the weights (:func:`step_mask`).
    """

    tag: RecordTag
    group: int
    q: np.ndarray
    scale_bits: np.ndarray
    nm: int = 0
    mask: int | None = None

    @classmethod
    def make(cls, tag, q, scales, sparsity="dense", mask: int | None = None) -> "Record":
        """Build a record from weights (rows x group) and FP16 scales (a tensor or array)."""
        s = torch.as_tensor(np.asarray(scales, dtype=np.float16)) if not isinstance(
            scales, torch.Tensor) else scales.to(torch.float16)
        fp16_fixed(s.reshape(-1))           # refuse infinite and NaN scales
        bits = s.reshape(-1).contiguous().view(torch.int16).numpy().astype(np.uint16)
        q = np.asarray(q, dtype=np.int64)
        return cls(record_tag(tag), q.shape[1], q, bits, nm_code(sparsity), mask)

    def step_mask(self, lanes: int) -> int:
        """The record's present k-steps: its mask (or :func:`step_mask` of its weights)
        for block skip, all ``kept / lanes`` steps otherwise."""
        if self.nm == BLOCK_CODE:
            return step_mask(self.q, lanes) if self.mask is None else int(self.mask)
        return (1 << (nm_kept(self.group, self.nm) // lanes)) - 1

    def lane_order(self, lanes: int) -> tuple[np.ndarray, np.ndarray]:
        """The record's kept values and their N:M indices in lane-vector order (flat); a
        block-skip record gives its present steps only."""
        vals, idx = nm_compress(self.q, self.nm)
        r, kept = vals.shape
        steps = lambda a: a.reshape(r, kept // lanes, lanes).transpose(1, 0, 2)
        vals, idx = steps(vals), steps(idx)
        if self.nm == BLOCK_CODE:
            mask = self.step_mask(lanes)
            keep = [s for s in range(kept // lanes) if mask >> s & 1]
            vals, idx = vals[keep], idx[keep]
        return vals.reshape(-1), idx.reshape(-1)


def step_mask(q, lanes: int) -> int:
    """Step mask of block-skip weights ``q`` (rows x group): bit ``s`` set when k-step
    ``s`` (weights ``s * lanes ..`` of every row) holds a nonzero; step 0 when none does."""
    q = np.asarray(q, dtype=np.int64)
    nz = (q.reshape(q.shape[0], -1, lanes) != 0).any(axis=(0, 2))
    mask = sum(1 << s for s in np.flatnonzero(nz).tolist())
    return mask or 1


def _bits_le(raw: bytes, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[:count]


def _u_as_s(v: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned field values as the signed values pack_int stores in the same bits."""
    v = np.asarray(v, dtype=np.int64)
    return np.where(v >= 1 << (bits - 1), v - (1 << bits), v)


def _field_bits(values, bits: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    return _bits_le(pack_int(v, bits), v.size * bits)


def _record_bits(geom: StreamGeometry, recs: list, mask: int | None = None) -> np.ndarray:
    """Bits of records sharing tag, group, sparsity (and step mask, for block skip): an
    array (len(recs), record_bits)."""
    tag, group, nm = recs[0].tag, recs[0].group, recs[0].nm
    n, r, L, F = len(recs), geom.rows, geom.lanes, HEADER_FIXED_BITS
    head = np.array([tag.value | GROUP_CODES[group] << GROUP_SHIFT | nm << NM_SHIFT] * n,
                    dtype=np.int64)
    hbits = _field_bits(_u_as_s(head, F), F).reshape(n, F)
    sc = np.stack([rc.scale_bits.astype(np.int64) for rc in recs])
    sbits = _field_bits(_u_as_s(sc, 16), 16).reshape(n, 16 * r)
    spec = format_spec(tag)
    zero = np.zeros((n, r), dtype=np.int64)
    if spec.zero_point_bits:
        zero = np.stack([spec.zero_points(rc.q) for rc in recs])
        zb = spec.zero_point_bits
        sbits = np.concatenate([sbits, _field_bits(_u_as_s(zero, zb), zb).reshape(n, zb * r)],
                               axis=1)
    S = geom.mask_bits(group, nm)
    if S:
        mbits = np.array([(mask >> i) & 1 for i in range(S)] * n,
                         dtype=np.uint8).reshape(n, S)
        sbits = np.concatenate([sbits, mbits], axis=1)
    orders = [rc.lane_order(L) for rc in recs]
    nvec = geom.record_vectors(group, nm, mask)
    row_zero = np.repeat(zero[:, np.arange(nvec) % r], L, axis=1)     # per lane-vector
    w = spec.encode(np.stack([o[0] for o in orders]), row_zero)
    wbits = _field_bits(w, format_spec(tag).code_bits).reshape(n, nvec, -1)
    ib = nm_index_bits(nm)
    if ib:
        idx = np.stack([o[1] for o in orders])
        ibits = _field_bits(_u_as_s(idx, ib), ib).reshape(n, nvec, -1)
        wbits = np.concatenate([wbits, ibits], axis=2)
    return np.concatenate([hbits, sbits, wbits.reshape(n, -1)], axis=1).astype(np.uint8)


def _check_record(geom: StreamGeometry, rc: Record) -> None:
    try:
        spec = format_spec(rc.tag)
    except KeyError:
        raise CompileError(f"record tag {rc.tag!r} is not a weight format") from None
    if rc.nm != 0 and rc.nm not in NM_PATTERNS and rc.nm != BLOCK_CODE:
        raise CompileError(f"record sparsity code {rc.nm!r} is unknown (accepted: 0, "
                           f"{', '.join(map(str, NM_PATTERNS))} and {BLOCK_CODE} (block))")
    if rc.nm and spec.kind == "ovp":
        raise CompileError("OVP4 records are dense (N:M and block sparsity are for the INT "
                           "and FP formats)")
    geom.check_group(rc.group, rc.nm)
    if rc.q.shape != (geom.rows, rc.group):
        raise CompileError(f"record weights have shape {tuple(rc.q.shape)}, expected "
                           f"({geom.rows}, {rc.group}) (rows x group)")
    if rc.nm == BLOCK_CODE and rc.mask is not None:
        steps = rc.group // geom.lanes
        mask = rc.mask
        if not (isinstance(mask, (int, np.integer)) and 0 < mask < 1 << steps):
            raise CompileError(f"block step mask {mask!r} is not a nonzero {steps}-bit "
                               f"mask (accepted: 1..{(1 << steps) - 1})")
        absent = [s for s in range(steps) if not mask >> s & 1]
        if absent and np.asarray(rc.q)[:, [s * geom.lanes + j for s in absent
                                          for j in range(geom.lanes)]].any():
            raise CompileError(f"block record has nonzero weights in a k-step its mask "
                               f"{mask:#x} skips (accepted: zeros in skipped steps)")
    if rc.mask is not None and rc.nm != BLOCK_CODE:
        raise CompileError(f"a step mask is for block records (sparsity {BLOCK_CODE}), not "
                           f"sparsity code {rc.nm}")
    if rc.scale_bits.shape != (geom.rows,):
        raise CompileError(f"record has {rc.scale_bits.size} scales, expected {geom.rows}")
    if spec.kind == "ovp" and geom.lanes % 2:
        raise CompileError("OVP4 needs an even lane count")


def record_starts(geom: StreamGeometry, keys) -> tuple[list, int]:
    """Where each record of a stream starts (bits) and the stream's bits in whole words,
    from the records' ``(tag, group, nm, step mask)`` alone: a record's size depends on
    them, not on its values, so a stream is sized without packing it."""
    W = geom.word_bits
    sizes: dict = {}
    starts, pos = [], 0
    for key in keys:
        size = sizes.get(key)
        if size is None:
            size = sizes[key] = geom.record_bits(*key)
        if pos % W > W - HEADER_FIXED_BITS:
            pos += W - pos % W           # no header in the last 11 bits of a word
        starts.append(pos)
        pos += size
    return starts, -(-pos // W) * W


def pack_records(geom: StreamGeometry, records) -> bytes:
    """Pack records into one stream of whole words (ending in PAD) and return its bytes."""
    records = list(records)
    keys = []
    for rc in records:
        _check_record(geom, rc)
        mask = rc.step_mask(geom.lanes) if rc.nm == BLOCK_CODE else None
        keys.append((rc.tag, rc.group, rc.nm, mask))
    starts, total = record_starts(geom, keys)
    out = np.zeros(total, dtype=np.uint8)
    i = 0
    while i < len(records):                 # runs of records sharing tag, group and mask
        j = i
        while j < len(records) and keys[j] == keys[i]:
            j += 1
        bits = _record_bits(geom, records[i:j], keys[i][3])
        idx = np.asarray(starts[i:j], dtype=np.int64)[:, None] + np.arange(bits.shape[1])
        out[idx] = bits
        i = j
    return np.packbits(out, bitorder="little").tobytes()


def _uint(bits: np.ndarray) -> int:
    return int(sum(int(b) << i for i, b in enumerate(bits)))


def parse_stream(geom: StreamGeometry, raw: bytes) -> list:
    """Reference reader: the records of a stream (inverse of :func:`pack_records`).

    Raise :class:`CompileError` naming the bit position of a malformed header.
    """
    W = geom.word_bits
    if len(raw) % (W // 8):
        raise CompileError(f"stream of {len(raw)} bytes is not whole {W}-bit words")
    records, pos = read_records(geom, raw)
    if pos < len(raw) * 8:
        raise CompileError(f"record at stream bit {pos} runs past the end of the stream")
    return records


def read_records(geom: StreamGeometry, raw: bytes, start: int = 0,
                 count: int | None = None) -> tuple[list, int]:
    """Read up to ``count`` records (all when ``None``) from stream bit ``start`` on.

    PAD tags and the padding after them are skipped. Return ``(records, pos)``: the
    records read and the bit after the last one (after the padding that follows it when
    ``count`` is ``None``). Fewer than ``count`` records come back when the bits run out
    (a record cut off by the end of ``raw`` is not returned, and ``pos`` is its start).
    Raise :class:`CompileError` naming the bit position of a malformed header.
    """
    W = geom.word_bits
    bits = _bits_le(bytes(raw), len(raw) * 8)
    codes = {c: g for g, c in GROUP_CODES.items()}
    pos, records = start, []
    while pos < bits.size and (count is None or len(records) < count):
        ph = pos % W
        tagv = _uint(bits[pos:pos + GROUP_SHIFT]) if ph <= W - HEADER_FIXED_BITS else 0
        if tagv == _registry.PAD_TAG:
            pos += W - ph
            continue
        try:
            spec = format_spec(tagv)
        except KeyError:
            raise CompileError(f"bad record tag {tagv} at stream bit {pos}") from None
        gcode = _uint(bits[pos + GROUP_SHIFT:pos + NM_SHIFT])
        nm = _uint(bits[pos + NM_SHIFT:pos + HEADER_FIXED_BITS])
        if gcode not in codes or (nm and nm not in (*NM_PATTERNS, BLOCK_CODE)):
            raise CompileError(f"bad group/sparsity code ({gcode}, {nm}) "
                               f"at stream bit {pos}")
        tag, group = spec.record_tag(), codes[gcode]
        if nm and (spec.kind == "ovp" or nm_kept(group, nm) % geom.lanes):
            raise CompileError(f"sparsity code {nm} is not allowed for {tag.name} group "
                               f"{group} at stream bit {pos}")
        S = geom.mask_bits(group, nm)
        m0 = pos + geom.header_bits + geom.zero_bits(tag)     # the step mask's first bit
        if m0 + S > bits.size:
            break                                   # cut off by the end of the data
        mask = _uint(bits[m0:m0 + S]) if S else None
        if S and mask == 0:
            raise CompileError(f"block record with an empty step mask at stream bit {pos} "
                               f"(accepted: at least one k-step)")
        if pos + geom.record_bits(tag, group, nm, mask) > bits.size:
            break                                   # cut off by the end of the data
        p = pos + HEADER_FIXED_BITS
        sc = np.array([_uint(bits[p + 16 * i:p + 16 * i + 16]) for i in range(geom.rows)],
                      dtype=np.uint16)
        p += 16 * geom.rows
        L, R = geom.lanes, geom.rows
        b, ib = spec.code_bits, nm_index_bits(nm)
        nvec = geom.record_vectors(group, nm, mask)
        zb = spec.zero_point_bits
        zero = np.array([_uint(bits[p + zb * i:p + zb * i + zb]) for i in range(R)],
                        dtype=np.int64) if zb else np.zeros(R, dtype=np.int64)
        p += zb * R + S
        vbits = bits[p:p + nvec * L * (b + ib)].reshape(nvec, L * (b + ib))
        unpack = lambda bb, w: unpack_int(np.packbits(bb.reshape(-1), bitorder="little")
                                          .tobytes(), w, nvec * L)
        vals = spec.decode(unpack(vbits[:, :L * b], b).reshape(nvec, L),
                           zero[np.arange(nvec) % R, None])
        idx = (unpack(vbits[:, L * b:], ib) & ((1 << ib) - 1)).reshape(nvec, L) if ib else \
            np.zeros_like(vals)
        kept = nvec * L // R
        unorder = lambda a: a.reshape(kept // L, R, L).transpose(1, 0, 2).reshape(R, kept)
        q = nm_expand(unorder(vals), unorder(idx), nm)
        if S:                                       # present steps back in place
            full = np.zeros((R, group // L, L), dtype=np.int64)
            full[:, [s for s in range(S) if mask >> s & 1]] = q.reshape(R, -1, L)
            q = full.reshape(R, group)
        records.append(Record(tag, group, q, sc, nm, mask))
        pos = p + nvec * L * (b + ib)
    return records, pos


def expected_beats(geom: StreamGeometry, raw: bytes) -> list:
    """The exact beats the unpacker emits for a stream, as dicts of :func:`beat_layout`.

    Every field is given; unused weight slots are 0.
    """
    beats = []
    L = geom.lanes
    for rc in parse_stream(geom, raw):
        m, k = fp16_fixed(torch.from_numpy(rc.scale_bits.astype(np.int16)).view(
            torch.float16))
        scale = {"m": [int(a) for a in m], "k": [int(b) for b in k], "bad": 0}
        flat, fidx = rc.lane_order(L)
        mask = rc.step_mask(L)
        total = geom.record_vectors(rc.group, rc.nm, mask)
        vpb = geom.vectors_per_beat(rc.tag, rc.nm)
        pad = lambda a: [int(x) for x in a] + [0] * (geom.ops - len(a))
        for pos in range(0, total, vpb):
            n = min(vpb, total - pos)
            beats.append({"w": pad(flat[pos * L:(pos + n) * L]), "n": n, "pos": pos,
                          "first": int(pos == 0), "last": int(pos + n == total),
                          "tag": rc.tag, "nm": rc.nm,
                          "idx": pad(fidx[pos * L:(pos + n) * L]), "mask": mask,
                          "group": GROUP_CODES[rc.group], **scale})
    return beats


def beat_value(geom: StreamGeometry, beat: dict) -> int:
    """The payload bits of one beat as an integer (for bit-exact comparison)."""
    layout = beat_layout(geom)
    tag = int(getattr(beat["tag"], "value", beat["tag"]))    # a run-time format's too
    bits = int(layout.const({**beat, "tag": RecordTag.PAD}).as_bits())
    return bits | tag << layout["tag"].offset


# -- tensors ------------------------------------------------------------------------------

def _tag_grid(tags, batches: int, groups: int) -> np.ndarray:
    if isinstance(tags, (str, RecordTag, WeightFormat, _registry.FormatTag)):
        return np.full((batches, groups), record_tag(tags).value, dtype=np.int64)
    grid = np.asarray([[record_tag(t).value for t in row]
                       for row in np.asarray(tags, dtype=object).reshape(-1, groups)])
    if grid.shape != (batches, groups):
        raise CompileError(f"format grid has shape {grid.shape}, expected "
                           f"({batches}, {groups}) (row batches x group columns)")
    return grid


def tensor_records(geom: StreamGeometry, q, scales, *, group: int, tags,
                   sparsity="dense") -> list:
    """Cut a tensor into records: a list over row batches of lists over group columns.

    ``q``: (R, K) integer weights; ``scales``: (R, K / group) FP16; ``tags``: one format
    for the tensor or one per (row batch, group column); ``sparsity``: the tensor's N:M
    pattern (``"dense"``, ``"2:4"``, ...).
    """
    nm = nm_code(sparsity)
    geom.check_group(group, nm)
    q = np.asarray(q.numpy() if isinstance(q, torch.Tensor) else q, dtype=np.int64)
    s = scales if isinstance(scales, torch.Tensor) else torch.as_tensor(
        np.asarray(scales, dtype=np.float16))
    if q.ndim != 2 or q.shape[1] % group:
        raise CompileError(f"weights of shape {tuple(q.shape)} are not (rows, k) with k a "
                           f"multiple of the group size {group}")
    R, K = q.shape
    G = K // group
    if tuple(s.shape) != (R, G):
        raise CompileError(f"scales have shape {tuple(s.shape)}, expected ({R}, {G})")
    fp16_fixed(s.reshape(-1).to(torch.float16))
    r = geom.rows
    B = -(-R // r)
    qp = np.zeros((B * r, K), dtype=np.int64)
    qp[:R] = q
    sb = np.full((B * r, G), 0x3C00, dtype=np.uint16)          # padding rows: scale 1.0
    sb[:R] = s.to(torch.float16).contiguous().view(torch.int16).numpy().astype(np.uint16)
    grid = _tag_grid(tags, B, G)
    out = []
    for b in range(B):
        rows = qp[b * r:(b + 1) * r]
        out.append([Record(record_tag(int(grid[b, j])), group,
                           rows[:, j * group:(j + 1) * group], sb[b * r:(b + 1) * r, j], nm)
                    for j in range(G)])
    return out


def interleave(streams, word_bytes: int) -> bytes:
    """Interleave channel streams word by word (zero-word padding to equal length)."""
    streams = [bytes(s) for s in streams]
    for c, s in enumerate(streams):
        if len(s) % word_bytes:
            raise CompileError(f"channel {c} stream is {len(s)} bytes, not whole "
                               f"{word_bytes}-byte words")
    n = max((len(s) for s in streams), default=0) // word_bytes
    arr = np.zeros((n, len(streams), word_bytes), dtype=np.uint8)
    for c, s in enumerate(streams):
        a = np.frombuffer(s, dtype=np.uint8).reshape(-1, word_bytes)
        arr[:a.shape[0], c] = a
    return arr.tobytes()


def deinterleave(image: bytes, channels: int, word_bytes: int) -> list:
    """Inverse of :func:`interleave`: the channel streams (with their padding words)."""
    if len(image) % (channels * word_bytes):
        raise CompileError(f"image of {len(image)} bytes is not whole rounds of "
                           f"{channels} x {word_bytes}-byte words")
    arr = np.frombuffer(bytes(image), dtype=np.uint8).reshape(-1, channels, word_bytes)
    return [arr[:, c].tobytes() for c in range(channels)]


def pack_channels(geom: StreamGeometry, q, scales, *, group: int, tags, channels: int = 1,
                  sparsity="dense") -> list:
    """Pack one tensor into one stream per memory channel (row batch ``b`` to channel
    ``b % channels``, see the module docstring); each stream ends on a word boundary."""
    if not (isinstance(channels, int) and channels >= 1):
        raise CompileError(f"channels must be a positive integer, not {channels!r}")
    batches = tensor_records(geom, q, scales, group=group, tags=tags, sparsity=sparsity)
    return [pack_records(geom, [rc for b in range(c, len(batches), channels)
                                for rc in batches[b]]) for c in range(channels)]


def unpack_channels(geom: StreamGeometry, streams, *, rows: int, k: int) -> tuple:
    """Reference inverse of :func:`pack_channels`: ``(q, scales, tags)`` from the channel
    streams (trailing PAD words allowed).

    ``q`` int64 (rows, k), ``scales`` float16 (rows, k / group), ``tags`` an int array of
    :class:`RecordTag` values per (row batch, group column).
    """
    channels = len(streams)
    per_channel = [parse_stream(geom, bytes(s)) for s in streams]
    r = geom.rows
    B = -(-rows // r)
    batches, qs, ss, ts = [], [], [], []
    # Each channel's records in row batches: consecutive records up to k weights per row.
    # A channel may end with a batch more than it owns (slices run in lockstep, so a
    # compiler pads the channels of fewer batches); it is not read.
    chunks = []
    for recs in per_channel:
        chunks.append([])
        width = k
        for rc in recs:
            if width == k:
                chunks[-1].append([])
                width = 0
            chunks[-1][-1].append(rc)
            width += rc.group
            if width > k:
                raise CompileError(f"image does not hold k={k} weights per row")
    for b in range(B):
        c, idx = b % channels, b // channels
        recs = chunks[c][idx] if idx < len(chunks[c]) else []
        if sum(rc.group for rc in recs) != k:
            raise CompileError(f"image does not hold k={k} weights per row")
        batches.append(recs)
    for recs in batches:
        qs.append(np.concatenate([rc.q for rc in recs], axis=1))
        ss.append(np.stack([rc.scale_bits for rc in recs], axis=1))
        ts.append([rc.tag.value for rc in recs])
    q = torch.from_numpy(np.concatenate(qs)[:rows])
    s = torch.from_numpy(np.concatenate(ss)[:rows].astype(np.int16)).view(torch.float16)
    return q, s, np.array(ts, dtype=np.int64)


def pack_tensor(geom: StreamGeometry, q, scales, *, group: int, tags,
                channels: int = 1, sparsity="dense") -> bytes:
    """Pack one tensor into one image, its channel streams interleaved word by word."""
    return interleave(pack_channels(geom, q, scales, group=group, tags=tags,
                                    channels=channels, sparsity=sparsity),
                      geom.word_bits // 8)


def unpack_tensor(geom: StreamGeometry, image: bytes, *, rows: int, k: int,
                  channels: int = 1) -> tuple:
    """Reference inverse of :func:`pack_tensor` (see :func:`unpack_channels`)."""
    return unpack_channels(geom, deinterleave(image, channels, geom.word_bits // 8),
                           rows=rows, k=k)


def bits_per_weight(image: bytes, weights: int) -> float:
    """Bits of the image per weight: ``len(image) * 8 / weights``."""
    return len(image) * 8 / weights


# -- streamed weights of a core, quantization with a per-record format choice --------------

def record_formats() -> tuple:
    """Names of the record formats registered now (:mod:`airfoil.format_registry`)."""
    return tuple(f.name for f in _registry.streamed_formats())


def stream_formats() -> tuple:
    """Weight formats a streamed layer may name now: :func:`record_formats`, ``mixed`` and
    the presets of :data:`MIXED_PRESETS`."""
    return record_formats() + ("mixed",) + tuple(MIXED_PRESETS)


#: Record formats by name (``ovp4`` is also accepted for ``ovp``): the built-in ones
#: (:func:`record_formats` includes formats registered at run time).
RECORD_FORMATS = record_formats()
#: Named candidate lists of a per-record choice: BitMoD's 4-bit mixture (its four FP4
#: variants) and its 3-bit one (the four FP3 variants).
MIXED_PRESETS = {
    "bitmod4": tuple(bitmod.FORMAT_NAMES[f] for f in bitmod.FP4_FORMATS),
    "bitmod3": tuple(bitmod.FORMAT_NAMES[f] for f in bitmod.FP3_FORMATS),
}
#: Weight formats a streamed layer may name: one record format, ``mixed`` (a choice per
#: record among candidates, :func:`quantize_stream`) or a preset of :data:`MIXED_PRESETS`.
STREAM_FORMATS = stream_formats()
#: Candidate formats of ``mixed`` when none are given: two 4-bit formats, as BitMoD mixes
#: variants of one width (across widths, :func:`mixed_choice` trades error for bits).
DEFAULT_MIXED = ("int4", "ovp")


def core_stream_geometry(cfg) -> StreamGeometry:
    """Stream geometry of an RTL core: one decode unit per memory channel (a *slice*) feeds
    that slice's :attr:`~airfoil.config.AccelConfig.slice_chains` chains.

    Records hold ``cfg.slice_chains`` rows, lane-vectors ``cfg.lanes`` weights, words the
    memory port width. A tensor's row batches go to the channels round robin (batch ``b``
    to channel ``b % channels``), so a whole ``chains``-row batch of the core is one record
    per slice. Raise :class:`CompileError` when a slice has more chains than a record can
    hold.
    """
    try:
        return StreamGeometry(word_bits=cfg.memory.word_bits, lanes=cfg.lanes,
                              rows=cfg.slice_chains)
    except ValueError as e:
        raise CompileError(f"config {cfg.name!r} cannot stream weights: {e}") from None


def _quantize_int(w: torch.Tensor, s: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``w`` (..., group) by scales ``s`` (...) to symmetric ``bits``-bit integers."""
    qm = (1 << (bits - 1)) - 1
    return torch.clamp(torch.round(w / s.unsqueeze(-1)), -qm, qm)


def _quantize_ovp(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """OVP4 values of ``w`` (..., group) with scales ``s``: every weight takes the nearest
    value of :func:`ovp_values`; where a pair then holds an outlier (magnitude > 7), the
    weight of larger magnitude keeps its value and its partner (the victim) becomes 0."""
    grid = torch.from_numpy(ovp_values().astype(np.float64))
    a = (w / s.unsqueeze(-1)).contiguous()
    i = torch.searchsorted(grid, a).clamp(1, len(grid) - 1)
    lo, hi = grid[i - 1], grid[i]
    v = torch.where((a - lo) <= (hi - a), lo, hi)
    v0, v1 = v[..., 0::2], v[..., 1::2]
    a0, a1 = a[..., 0::2].abs(), a[..., 1::2].abs()
    outlier = (v0.abs() > 7) | (v1.abs() > 7)
    left = a0 >= a1
    out = v.clone()
    out[..., 0::2] = torch.where(outlier & ~left, torch.zeros_like(v0), v0)
    out[..., 1::2] = torch.where(outlier & left, torch.zeros_like(v1), v1)
    return out


#: Scale candidates of INT2..INT4 per group: the largest magnitude over ``qmax`` times these
#: (above 1: the largest weights clip, the rest gain resolution).
_INT_CLIP = (1.0, 1.25, 1.5, 2.0)
#: Scale candidates of OVP4 per group: the largest magnitude over these values (7: no
#: outliers; larger: the biggest weights become outliers).
_OVP_SCALE_DIVISORS = (7.0, 12.0, 16.0, 24.0, 32.0)


def _fp16(s: torch.Tensor) -> torch.Tensor:
    s16 = s.to(torch.float16)
    s16 = torch.where(s16 > 0, s16, torch.tensor(2.0 ** -24, dtype=torch.float16))
    if bool(torch.isinf(s16).any()):
        raise CompileError("weights too large: a group scale overflows FP16")
    return s16


def _quantize_tag(w: torch.Tensor, tag: RecordTag, floor: float | None = None):
    """Quantize groups ``w`` (..., group) to ``tag``; return ``(values, fp16 scales)``.

    ``floor``: smallest scale (raises tiny scales so the layer's exponents stay in one
    rescaler window). OVP4 tries each of :data:`_OVP_SCALE_DIVISORS` per group and keeps
    the least squared error. The BitMoD FP formats take BitMoD's own scale and rounding
    (:func:`airfoil.bitmod.quantize_group`: the group's extremes onto the format's, no
    clipping, nearest value).
    """
    spec = format_spec(tag)
    if spec.kind == "codebook":
        flat = w.reshape(-1, w.shape[-1])
        q, s16 = bitmod.quantize_group(flat, spec, floor)
        err = ((flat - bitmod.dequantize(q, s16)) ** 2).sum(dim=-1)
        return q.reshape(w.shape), s16.reshape(w.shape[:-1]), err.reshape(w.shape[:-1])
    amax = w.abs().amax(dim=-1)
    ovp = spec.kind == "ovp"
    qm = float((1 << (spec.code_bits - 1)) - 1)
    divisors = _OVP_SCALE_DIVISORS if ovp else \
        tuple(qm * c for c in _INT_CLIP) if spec.code_bits <= 4 else (qm,)
    best = None
    for d in divisors:
        s = amax / d
        if floor is not None:
            s = torch.clamp(s, min=floor)
        s16 = _fp16(s)
        sf = s16.to(torch.float64)
        q = _quantize_ovp(w, sf) if ovp else _quantize_int(w, sf, spec.code_bits)
        err = ((w - q * sf.unsqueeze(-1)) ** 2).sum(dim=-1)
        if best is None:
            best = [q, s16, err]
            continue
        better = err < best[2]
        best[0] = torch.where(better.unsqueeze(-1), q, best[0])
        best[1] = torch.where(better, s16, best[1])
        best[2] = torch.where(better, err, best[2])
    return best[0].to(torch.int64), best[1], best[2]


#: The default of the largest squared error of a record, as a fraction of its squared
#: weights, for which a choice among candidates of several widths takes a narrower one
#: (:func:`mixed_choice`; a recipe rule's ``mixed_max_error``): 1.25 %, a
#: signal-to-quantization-noise ratio of 19 dB.
MIXED_MAX_REL_ERROR = 0.0125
#: The bounds a ``mixed_max_error`` may take (inclusive): 0 (a narrower width only when
#: exact) to 1 (an error as large as the record itself).
MIXED_MAX_ERROR_RANGE = (0.0, 1.0)


def mixed_choice(errors, bits, energy: torch.Tensor,
                 max_error: float = MIXED_MAX_REL_ERROR) -> torch.Tensor:
    """The index of the candidate each record takes, from its squared ``errors`` (one
    tensor per candidate), the candidates' ``bits`` per value and the records' squared
    weights ``energy``.

    Among candidates of one width the least error wins (ties: the earlier), as BitMoD
    picks among its variants. Across widths the error alone would always take the widest,
    so a record takes the narrowest width whose best candidate's error is at most
    ``max_error`` (a fraction, :data:`MIXED_MAX_ERROR_RANGE`) of its energy, and the least
    error of all when none is.
    """
    err = torch.stack(list(errors))                                 # (C, ...)
    width = torch.tensor(list(bits), dtype=torch.int64)
    least = torch.argmin(err, dim=0)                                # first of equal minima
    pick = least.clone()
    chosen = torch.zeros_like(least, dtype=torch.bool)
    for b in sorted(set(width.tolist())):
        mask = (width == b).view(-1, *([1] * (err.dim() - 1)))
        e = torch.where(mask, err, torch.full_like(err, float("inf")))
        fits = ~chosen & (e.amin(dim=0) <= max_error * energy)
        pick = torch.where(fits, torch.argmin(e, dim=0), pick)
        chosen |= fits
    return pick


def quantize_stream(w: torch.Tensor, *, group: int, rows: int, formats,
                    sparsity="dense", lanes: int | None = None,
                    block_density: float = 1.0,
                    mixed_max_error: float = MIXED_MAX_REL_ERROR
                    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Quantize float weights for a packed stream, choosing a format per record.

    The weights are first pruned to ``sparsity`` (magnitude, :func:`airfoil.sparsity.
    prune_nm`; for ``"block"``, the k-steps of least L2 norm of each record down to
    ``block_density``, :func:`airfoil.sparsity.prune_blocks`). Each record (``rows``
    consecutive rows x one group column; the last row
    batch padded with zero rows) takes, among ``formats``, the format
    :func:`mixed_choice` picks (among formats of one width the least squared error over
    its weights, as BitMoD's per-group choice; across widths the narrowest within
    ``mixed_max_error``). Each
    row of a record has its own FP16 scale: of a few candidates (its largest magnitude
    over the format's largest normal value, and for INT2..INT4 smaller ones that clip the
    largest weights, for OVP4 ones that make them outliers) the one of least squared
    error for that row; a BitMoD FP format takes BitMoD's scale (the row's extremes onto
    the format's, :func:`airfoil.bitmod.quantize_group`); scales
    are raised to at least ``2**-14`` of the layer's largest, so that every exponent lies
    in one rescaler window (see :func:`airfoil.formats.quantize_weights`).

    Parameters
    ----------
    w : torch.Tensor
        (R, K) float weights, K a multiple of ``group``.
    group : int
        Weights per group (32, 64 or 128).
    rows : int
        Rows per record (:attr:`StreamGeometry.rows`).
    formats : str or sequence
        One format (``"int4"``), candidates (``["int2", "int4", "int8"]``) or a preset
        name of :data:`MIXED_PRESETS` (``"bitmod4"``).
    sparsity : str
        ``"dense"``, an N:M pattern or ``"block"`` (:data:`NM_BY_NAME`).
    lanes : int, optional
        Weights per lane-vector (:attr:`StreamGeometry.lanes`); needed for ``"block"``.
    block_density : float
        ``"block"``: fraction of each record's k-steps kept (``0 < d <= 1``; 1 prunes
        nothing).
    mixed_max_error : float
        Candidates of several widths: the largest squared error of a record, as a
        fraction of its squared weights, with which it takes a narrower width
        (:func:`mixed_choice`; default :data:`MIXED_MAX_REL_ERROR`).

    Returns
    -------
    (torch.Tensor, torch.Tensor, numpy.ndarray)
        int64 values (R, K), float16 scales (R, K / group) and the :class:`RecordTag`
        value of each record (row batches x group columns), for :func:`pack_tensor`.
    """
    from .sparsity import prune_blocks, prune_nm

    if isinstance(formats, str) and formats.lower() in MIXED_PRESETS:
        formats = MIXED_PRESETS[formats.lower()]
    cands = [record_tag(f) for f in ([formats] if isinstance(formats, (
        str, RecordTag, _registry.FormatTag))
                                     else list(formats))]
    if not cands:
        raise CompileError("quantize_stream needs at least one weight format")
    nm = nm_code(sparsity)
    if nm and any(format_spec(t).kind == "ovp" for t in cands):
        raise CompileError(f"OVP4 records are dense; sparsity {sparsity!r} needs the other "
                           f"formats ({', '.join(f for f in record_formats() if f != 'ovp')})")
    if group not in GROUP_CODES:
        raise CompileError(f"group size {group} cannot be packed (accepted: "
                           f"{', '.join(map(str, GROUP_CODES))})")
    if not (isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[1] % group == 0):
        raise CompileError(f"weights of shape {tuple(getattr(w, 'shape', ()))} are not "
                           f"(rows, k) with k a multiple of the group size {group}")
    R, K = w.shape
    G, B = K // group, -(-R // rows)
    wf = w.detach().to(torch.float64)
    if nm in NM_PATTERNS:
        n, mm = NM_PATTERNS[nm]
        wf = prune_nm(wf, n, mm)
    if nm == BLOCK_CODE:
        if lanes is None:
            raise CompileError("block sparsity needs the lanes of a k-step (lanes=...)")
        if group % lanes:
            raise CompileError(f"group size {group} is not a multiple of lanes ({lanes})")
        wf = prune_blocks(wf, rows=rows, lanes=lanes, group=group, density=block_density)
    elif block_density != 1.0:
        raise CompileError(f"block density {block_density!r} applies to sparsity 'block', "
                           f"not {sparsity!r}")
    wp = torch.zeros((B * rows, K), dtype=torch.float64)
    wp[:R] = wf
    # (B, G, rows, group): one entry per record
    recs = wp.reshape(B, rows, G, group).permute(0, 2, 1, 3)
    first = [_quantize_tag(recs, t) for t in cands]
    smax = max(float(f[1].to(torch.float64).max()) for f in first)
    floor = smax * 2.0 ** -14 if smax > 0 else None
    tried = [_quantize_tag(recs, t, floor) for t in cands]
    pick = mixed_choice([err.sum(dim=-1) for _, _, err in tried],
                        [format_spec(t).code_bits for t in cands],
                        (recs ** 2).sum(dim=(-1, -2)), mixed_max_error)  # (B, G)
    best = [torch.zeros_like(tried[0][0]), torch.zeros_like(tried[0][1]), None,
            torch.zeros((B, G), dtype=torch.int64)]
    for i, (t, (q, s16, _)) in enumerate(zip(cands, tried)):
        here = pick == i
        best[0] = torch.where(here[..., None, None], q, best[0])
        best[1] = torch.where(here[..., None], s16, best[1])
        best[3] = torch.where(here, torch.full_like(best[3], t.value), best[3])
    q = best[0].permute(0, 2, 1, 3).reshape(B * rows, K)[:R].contiguous()
    s16 = best[1].permute(0, 2, 1).reshape(B * rows, G)[:R].contiguous()
    return q, s16, best[3].numpy()
