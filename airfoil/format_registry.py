"""The weight formats, each specified once: one :class:`FormatSpec` per format.

Every numbering and table of weight formats in the project derives from this registry:
the ISA's :class:`airfoil.isa.WeightFormat` (WGT-tile formats of the MATRIX unit), the
record tags of the packed weight stream (:class:`airfoil.packing.RecordTag`, the tag
field of a record header, :data:`TAG_FIELD_BITS` wide), the BitMoD format numbering
(:class:`airfoil.bitmod.BitModFormat`), the code widths and value tables the packer,
the reference reader, the golden model, the ISA simulator and the RTL unpacker use, the
format lists of a configuration (:mod:`airfoil.config`) and the tile formats of each PE
kind (:mod:`hdl.pe.kinds`).

A format is one of three kinds:

* ``"int"``: two's complement codes of ``code_bits`` bits (the value is the code);
* ``"codebook"``: a ``code_bits``-bit unsigned code indexes :attr:`FormatSpec.codebook`,
  the value of each code (BitMoD's FP4/FP3 variants); the RTL unpacker builds its decode
  tables from these;
* ``"ovp"``: OliVe outlier-victim pairs (:mod:`airfoil.packing` defines the pair code);
* ``"zero_point"``: ``code_bits``-bit unsigned codes ``u`` and a ``code_bits``-bit
  unsigned zero point ``z`` per row of a record (beside its scale): the value is
  ``u - z`` (an asymmetric checkpoint's 4-bit codes and zero points as they are), so a
  row's values span at most ``2 ** code_bits - 1`` and lie in ``-(2 ** code_bits - 1) ..
  2 ** code_bits - 1``.

Values are integers; a weight is ``value * scale`` with the group's FP16 scale.

Adding a format
---------------
Append one :class:`FormatSpec` to :data:`BUILTIN_FORMATS` (a free record ``tag`` in
``1..MAX_TAG``; an ``isa_code`` only if the MATRIX unit reads it from WGT tiles; a
``bitmod_code`` only if the bit-serial PE names it; ``tile_pe_kinds`` the PE kinds whose
MATRIX unit computes its tiles). The enums and tables above follow. Then add its tests
(``tests/test_format_registry.py`` shows a format flowing through every consumer). A
format can also be registered at run time with :func:`registered` (a context manager
that removes it again): the packer, the reference reader, the golden model, the ISA
simulator and an unpacker elaborated afterwards take it; enums built at import
(``RecordTag``, ``BitModFormat``) do not gain a member, so code that accepts a run-time
format reads it through :func:`by_tag` / :func:`by_name`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

__all__ = [
    "FormatSpec", "FormatTag", "BUILTIN_FORMATS", "TAG_FIELD_BITS", "MAX_TAG", "PAD_TAG",
    "ISA_CODE_BITS", "ISA_STREAM_CODE", "BITMOD_CODE_BITS", "all_formats", "by_name",
    "by_tag", "by_isa_code", "by_bitmod_code", "find_by_name", "streamed_formats",
    "tile_formats", "bitmod_formats", "register", "unregister", "registered",
    "format_names", "make_enum",
]

#: Width of the tag field of a record header (:mod:`airfoil.packing`).
TAG_FIELD_BITS = 6
#: Largest record tag a format may take (tag 0 is PAD).
MAX_TAG = (1 << TAG_FIELD_BITS) - 1
#: Record tag 0: skip to the next word boundary (no format).
PAD_TAG = 0
#: Width of a matrix instruction's ``wfmt`` field (:class:`airfoil.isa.WeightFormat`).
ISA_CODE_BITS = 4
#: ``wfmt`` code of ``STREAM``: the weights come from the packed weight stream.
ISA_STREAM_CODE = 4
#: Width of a BitMoD format code (the bit-serial PE's run-time format field).
BITMOD_CODE_BITS = 4


class FormatTag(NamedTuple):
    """A record tag of a format registered at run time (no :class:`RecordTag` member):
    ``value`` and ``name`` like an enum member's."""
    value: int
    name: str


@dataclass(frozen=True)
class FormatSpec:
    """One weight format.

    Attributes
    ----------
    name : str
        Lower-case name (``"int4"``, ``"fp4_er_p"``); ``aliases`` are also accepted.
    code_bits : int
        Bits of one weight code in memory.
    kind : str
        ``"int"``, ``"codebook"``, ``"ovp"`` or ``"zero_point"`` (module docstring).
    codebook : tuple of int
        ``"codebook"``: the value of each unsigned code (``2 ** code_bits`` entries).
    tag : int or None
        Record tag in the packed weight stream (``None``: not streamed).
    isa_code : int or None
        ``wfmt`` code of a matrix instruction reading WGT tiles of it (``None``: none).
    bitmod_code : int or None
        BitMoD format code (:class:`airfoil.bitmod.BitModFormat`), if the bit-serial PE
        names it.
    tile_pe_kinds : tuple of str
        PE kinds whose MATRIX unit computes WGT tiles of it exactly.
    always_decoded : bool
        Every decode unit reads its records (otherwise only when a configuration lists it).
    configurable : bool
        A configuration's ``weight_formats`` may list it.
    encoder, decoder : callable, optional
        ``"ovp"``: values -> signed codes and codes -> values (pairs along the last axis).
    """

    name: str
    code_bits: int
    kind: str = "int"
    codebook: tuple = ()
    tag: int | None = None
    isa_code: int | None = None
    bitmod_code: int | None = None
    tile_pe_kinds: tuple = ()
    always_decoded: bool = False
    configurable: bool = True
    aliases: tuple = ()
    encoder: Callable | None = field(default=None, compare=False, repr=False)
    decoder: Callable | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.kind not in ("int", "codebook", "ovp", "zero_point"):
            raise ValueError(f"format {self.name}: kind must be int, codebook, ovp or "
                             f"zero_point")
        if not 1 <= self.code_bits <= 8:
            raise ValueError(f"format {self.name}: code_bits must be 1..8")
        if self.kind == "codebook":
            if len(self.codebook) != 1 << self.code_bits:
                raise ValueError(f"format {self.name}: a codebook of {self.code_bits}-bit "
                                 f"codes has {1 << self.code_bits} entries")
            if any(not -128 <= v <= 127 for v in self.codebook):
                raise ValueError(f"format {self.name}: codebook values must be 8-bit signed")
        if self.tag is not None and not 1 <= self.tag <= MAX_TAG:
            raise ValueError(f"format {self.name}: tag must be in 1..{MAX_TAG}")
        if self.isa_code is not None and not (0 <= self.isa_code < 1 << ISA_CODE_BITS
                                              and self.isa_code != ISA_STREAM_CODE):
            raise ValueError(f"format {self.name}: isa_code {self.isa_code} is not free")

    # -- identity --------------------------------------------------------------------------

    @property
    def enum_name(self) -> str:
        """Member name in the derived enums (``"INT4"``, ``"OVP4"``)."""
        return "OVP4" if self.kind == "ovp" else self.name.upper()

    @property
    def names(self) -> tuple:
        return (self.name,) + tuple(self.aliases)

    @property
    def streamed(self) -> bool:
        """Whether the packed weight stream can carry it (it has a record tag)."""
        return self.tag is not None

    @property
    def zero_point_bits(self) -> int:
        """Bits of a row's zero point in a record (``"zero_point"``: ``code_bits``; 0
        for the other kinds, which have none)."""
        return self.code_bits if self.kind == "zero_point" else 0

    def zero_points(self, rows) -> np.ndarray:
        """The zero point of each row of values ``rows`` (..., n): the one that makes the
        row's smallest value code 0 (0 when no value is negative), clipped to the field.
        :meth:`encode` refuses a row whose values span more than the codes."""
        v = np.asarray(rows, dtype=np.int64)
        return np.clip(-v.min(axis=-1), 0, (1 << self.zero_point_bits) - 1)

    @property
    def tile(self) -> bool:
        """Whether the MATRIX unit reads it from WGT tiles (it has an ISA code)."""
        return self.isa_code is not None

    # -- values ----------------------------------------------------------------------------

    def values(self) -> tuple:
        """Every value by unsigned code (``"int"``: two's complement; ``"ovp"``: every
        value a weight may take, sorted)."""
        if self.kind == "codebook":
            return tuple(self.codebook)
        if self.kind == "zero_point":
            top = (1 << self.code_bits) - 1
            return tuple(range(-top, top + 1))
        if self.kind == "int":
            n = self.code_bits
            return tuple(c - (1 << n) if c >> (n - 1) else c for c in range(1 << n))
        return tuple(int(v) for v in self.decoder(None))

    @property
    def value_bits(self) -> int:
        """Smallest signed width holding every decoded value (what a PE multiplies)."""
        vals = self.values()
        lo, hi = min(min(vals), 0), max(max(vals), 0)
        b = 1
        while not (-(1 << (b - 1)) <= lo and hi <= (1 << (b - 1)) - 1):
            b += 1
        return b

    def quant_values(self) -> tuple:
        """Sorted values the quantizer picks from (``"int"``: symmetric, ``-qmax..qmax``)."""
        vals = sorted(set(self.values()))
        if self.kind in ("int", "zero_point"):
            q = (1 << (self.code_bits - 1)) - 1
            vals = [v for v in vals if -q <= v <= q]
        return tuple(vals)

    def decode(self, codes, zero=0) -> np.ndarray:
        """Values of codes (signed or unsigned ``code_bits``-bit integers); ``zero``: the
        zero points (``"zero_point"``, broadcast against the codes)."""
        c = np.asarray(codes, dtype=np.int64)
        if self.kind == "ovp":
            return self.decoder(c)
        n = self.code_bits
        u = c & ((1 << n) - 1)
        if self.kind == "zero_point":
            return u - np.asarray(zero, dtype=np.int64)
        if self.kind == "int":
            return np.where(u >> (n - 1) != 0, u - (1 << n), u)
        return np.asarray(self.codebook, dtype=np.int64)[u]

    def encode(self, values, zero=0) -> np.ndarray:
        """Signed codes (as :func:`airfoil.formats.pack_int` stores them) of values;
        raise :class:`~airfoil.errors.CompileError` for a value the format lacks. A value
        of several codes takes the lowest. ``zero``: the zero points (``"zero_point"``,
        broadcast against the values; :meth:`zero_points`)."""
        from .errors import CompileError

        v = np.asarray(values, dtype=np.int64)
        n = self.code_bits
        if self.kind == "ovp":
            return self.encoder(v)
        if self.kind == "zero_point":
            u = v + np.asarray(zero, dtype=np.int64)
            bad = (u < 0) | (u >= 1 << n)
            if bool(bad.any()):
                raise CompileError(f"weight {int(v[bad].reshape(-1)[0])} is not a "
                                   f"{self.enum_name} value of its row: a row's values "
                                   f"span at most {(1 << n) - 1} (codes 0..{(1 << n) - 1} "
                                   f"minus the row's zero point)")
            return np.where(u >= 1 << (n - 1), u - (1 << n), u)
        if self.kind == "int":
            lo, hi = -(1 << (n - 1)), (1 << (n - 1)) - 1
            bad = (v < lo) | (v > hi)
            if bool(bad.any()):
                raise CompileError(f"weight {int(v[bad].reshape(-1)[0])} is not a "
                                   f"{self.enum_name} value: outside the {self.enum_name} "
                                   f"range {lo}..{hi}")
            return v
        lut = np.full(256, -1, dtype=np.int64)                 # value + 128 -> code
        for c in reversed(range(len(self.codebook))):
            lut[self.codebook[c] + 128] = c
        inside = (v >= -128) & (v <= 127)
        codes = np.where(inside, lut[np.clip(v, -128, 127) + 128], -1)
        if bool((codes < 0).any()):
            x = int(v[codes < 0].reshape(-1)[0])
            raise CompileError(f"weight {x} is not a {self.enum_name} value (accepted: "
                               f"{', '.join(map(str, sorted(set(self.codebook))))})")
        return np.where(codes >= 1 << (n - 1), codes - (1 << n), codes)

    def quantize(self, w, scale) -> np.ndarray:
        """Values of float weights ``w`` (..., n) with per-group ``scale`` (...): the
        nearest of :meth:`quant_values` to ``w / scale`` (ties to the lower; ``"int"``
        rounds half to even and clamps to ``-qmax..qmax``). Not for ``"ovp"`` (pairs)."""
        a = np.asarray(w, dtype=np.float64) / np.asarray(scale, dtype=np.float64)[..., None]
        if self.kind in ("int", "zero_point"):
            q = (1 << (self.code_bits - 1)) - 1
            return np.clip(np.round(a), -q, q).astype(np.int64)
        if self.kind == "ovp":
            raise ValueError("OVP4 quantizes pairs (airfoil.packing.quantize_stream)")
        grid = np.asarray(self.quant_values(), dtype=np.float64)
        i = np.clip(np.searchsorted(grid, a), 1, len(grid) - 1)
        lo, hi = grid[i - 1], grid[i]
        return np.where(a - lo <= hi - a, lo, hi).astype(np.int64)

    def record_tag(self):
        """The format's record tag: the :class:`~airfoil.packing.RecordTag` member, or a
        :class:`FormatTag` for a format registered at run time."""
        from .packing import RecordTag

        if self.tag is None:
            from .errors import CompileError
            raise CompileError(f"{self.name} is not a streamed format (no record tag)")
        try:
            return RecordTag(self.tag)
        except ValueError:
            return FormatTag(self.tag, self.enum_name)


def make_enum(name: str, members: dict, shape: int, doc: str):
    """An Amaranth enum ``name`` of ``shape`` bits with ``members`` (name -> value)."""
    import types

    from amaranth.lib import enum

    def body(ns):
        ns["__doc__"] = doc
        for k, v in members.items():
            ns[k] = v
    return types.new_class(name, (enum.Enum,), {"shape": shape}, body)


# -- the built-in formats ----------------------------------------------------------------

def _fp_codebook(magnitudes, extra) -> tuple:
    """BitMoD FP code ``s m..m`` -> value: ``+-magnitudes[m]``, the "-0" code is ``extra``."""
    return tuple(magnitudes) + (extra,) + tuple(-m for m in magnitudes[1:])


#: FP4 magnitudes by the three low code bits (E2M1 values doubled), FP3 by two.
FP4_MAGNITUDES = (0, 1, 2, 3, 4, 6, 8, 12)
FP3_MAGNITUDES = (0, 1, 2, 4)


def _ovp_encode(v):
    from .packing import ovp_encode
    return ovp_encode(v)


def _ovp_decode(c):
    from .packing import ovp_decode, ovp_values
    return ovp_values() if c is None else ovp_decode(c)


def _fp(name, mags, extra, tag, bitmod_code):
    return FormatSpec(name, 4 if len(mags) == 8 else 3, "codebook", _fp_codebook(mags, extra),
                      tag=tag, bitmod_code=bitmod_code)


_ALL_KINDS = ("dsp", "bitserial", "lut")

BUILTIN_FORMATS = (
    FormatSpec("int2", 2, tag=1, isa_code=2, bitmod_code=0, always_decoded=True),
    FormatSpec("int3", 3, tag=2, isa_code=3, bitmod_code=1, always_decoded=True),
    FormatSpec("int4", 4, tag=3, isa_code=0, bitmod_code=2, always_decoded=True,
               tile_pe_kinds=_ALL_KINDS),
    FormatSpec("int6", 6, tag=6, bitmod_code=3),
    FormatSpec("int8", 8, tag=4, isa_code=1, bitmod_code=4, always_decoded=True,
               tile_pe_kinds=("dsp", "bitserial")),
    FormatSpec("ovp", 4, "ovp", tag=5, always_decoded=True, configurable=False,
               aliases=("ovp4",), encoder=_ovp_encode, decoder=_ovp_decode),
    _fp("fp4_er_p", FP4_MAGNITUDES, 10, 7, 5),
    _fp("fp4_er_n", FP4_MAGNITUDES, -10, 8, 6),
    _fp("fp4_ea_p", FP4_MAGNITUDES, 16, 9, 7),
    _fp("fp4_ea_n", FP4_MAGNITUDES, -16, 10, 8),
    _fp("fp3_er_p", FP3_MAGNITUDES, 3, 11, 9),
    _fp("fp3_er_n", FP3_MAGNITUDES, -3, 12, 10),
    _fp("fp3_ea_p", FP3_MAGNITUDES, 6, 13, 11),
    _fp("fp3_ea_n", FP3_MAGNITUDES, -6, 14, 12),
    FormatSpec("uint4z", 4, "zero_point", tag=15, always_decoded=True),
)

_FORMATS: list = []


def _check_free(spec: FormatSpec) -> None:
    for other in _FORMATS:
        clash = [what for what, a, b in (
            ("name", set(spec.names), set(other.names)), ("tag", {spec.tag}, {other.tag}),
            ("isa_code", {spec.isa_code}, {other.isa_code}),
            ("bitmod_code", {spec.bitmod_code}, {other.bitmod_code}))
            if (a & b) - {None}]
        if clash:
            raise ValueError(f"format {spec.name}: {', '.join(clash)} already taken by "
                             f"{other.name}")


def register(spec: FormatSpec) -> FormatSpec:
    """Add a format (its name, tag and codes must be free); return it."""
    _check_free(spec)
    _FORMATS.append(spec)
    return spec


def unregister(spec: FormatSpec) -> None:
    """Remove a format registered with :func:`register`."""
    if spec in BUILTIN_FORMATS:
        raise ValueError(f"{spec.name} is a built-in format")
    _FORMATS.remove(spec)


@contextmanager
def registered(spec: FormatSpec):
    """Register ``spec`` for the duration of a ``with`` block."""
    register(spec)
    try:
        yield spec
    finally:
        unregister(spec)


for _spec in BUILTIN_FORMATS:
    register(_spec)


# -- lookups -----------------------------------------------------------------------------

def all_formats() -> tuple:
    """Every registered format, built-ins first in :data:`BUILTIN_FORMATS` order."""
    return tuple(_FORMATS)


def format_names() -> tuple:
    return tuple(s.name for s in _FORMATS)


def find_by_name(name) -> FormatSpec | None:
    """The format of a name or alias (any case), or ``None``."""
    n = str(name).lower()
    return next((s for s in _FORMATS if n in s.names), None)


def by_name(name) -> FormatSpec:
    """The format of a name or alias; raise :class:`~airfoil.errors.CompileError`."""
    spec = find_by_name(name)
    if spec is None:
        from .errors import CompileError
        raise CompileError(f"unknown weight format {name!r} (accepted: "
                           f"{', '.join(n for s in _FORMATS for n in s.names)})")
    return spec


def _code(x) -> int:
    return int(getattr(x, "value", x))


def _find(field: str, code, missing: str) -> FormatSpec:
    """The format whose ``field`` is ``code``; else ``KeyError(missing.format(code))``."""
    c = _code(code)
    for s in _FORMATS:
        if getattr(s, field) == c:
            return s
    raise KeyError(missing.format(c))


def by_tag(tag) -> FormatSpec:
    """The format of a record tag (an int, a ``RecordTag`` or a :class:`FormatTag`);
    raise ``KeyError`` for PAD or a free tag."""
    return _find("tag", tag, "record tag {} names no weight format")


def by_isa_code(code) -> FormatSpec:
    """The WGT-tile format of a ``wfmt`` code (``KeyError`` for STREAM or a free code)."""
    return _find("isa_code", code, "wfmt code {} names no WGT-tile format")


def by_bitmod_code(code) -> FormatSpec:
    """The BitMoD variant of a per-group variant code (``KeyError`` for a free code)."""
    return _find("bitmod_code", code, "BitMoD code {} names no format")


def streamed_formats() -> tuple:
    """Formats the packed weight stream carries (in registry order)."""
    return tuple(s for s in _FORMATS if s.streamed)


def tile_formats() -> tuple:
    """Formats of WGT tiles (with an ISA code)."""
    return tuple(s for s in _FORMATS if s.tile)


def bitmod_formats() -> tuple:
    """Formats with a BitMoD code, in code order."""
    return tuple(sorted((s for s in _FORMATS if s.bitmod_code is not None),
                        key=lambda s: s.bitmod_code))
