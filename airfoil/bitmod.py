"""BitMoD weight formats: INT2..INT8 and the FP4/FP3 variants with one extra value.

Shared by the compiler (per-group datatype choice), the golden model, the bit-serial PE
generator (``hdl/pe/bitserial.py`` builds its digit tables from :func:`serial_digits`)
and the tests.

Values
------
The formats, their numbering and value tables are entries of :mod:`airfoil.format_registry`
(:class:`BitModFormat` numbers those with a BitMoD code). FP values are in units where E2M1 values are doubled, so every value is an integer:

* ``int2`` .. ``int8``: two's complement codes of ``bits`` bits. The quantizer is
  symmetric (``-qmax..qmax``); the hardware also accepts the code ``-2**(bits-1)``.
* FP4 (4-bit code ``s mmm``): magnitudes ``0, 1, 2, 3, 4, 6, 8, 12`` by ``mmm``, sign
  ``s``; the unused "-0" code ``1000`` holds the variant's extra value: ``fp4_er_p`` +10,
  ``fp4_er_n`` -10 (extra resolution), ``fp4_ea_p`` +16, ``fp4_ea_n`` -16 (extra
  asymmetry).
* FP3 (3-bit code ``s mm``): magnitudes ``0, 1, 2, 4``; code ``100`` holds the extra
  value: ``fp3_er_p`` +3, ``fp3_er_n`` -3, ``fp3_ea_p`` +6, ``fp3_ea_n`` -6.

Unified fixed-point representation
----------------------------------
Every FP value is ``sign * mantissa * 2**exp`` with a 3-bit ``mantissa`` in
``{0, 1, 3, 5}`` and a 3-bit ``exp`` in ``0..4`` (``12 = 3 * 2**2``, ``10 = 5 * 2**1``,
``16 = 1 * 2**4``). The bit-serial PE spends one cycle per set bit of a 2-bit-wide
mantissa window, always two cycles for FP4 and FP3 (see :func:`serial_digits`).

Serial digits
-------------
The bit-serial PE consumes each weight as ``cycles(fmt)`` digits, most significant
first; a digit is ``0`` or ``+-2**e``. The lane accumulates
``acc = acc * radix + sum(digit * x)``:

* ``int2``/``int3``/``int4``: one bit per cycle, radix 2, the top bit weighs negative;
* ``int6``/``int8``: radix-4 Booth digits in ``{-2, -1, 0, 1, 2}`` (3 and 4 cycles);
* FP4/FP3: radix 1 (plain sum); each cycle adds ``+-x << e`` for one set bit of the
  unified mantissa shifted by the exponent (2 cycles).
"""

from __future__ import annotations

import torch

from . import format_registry as _registry
from .errors import CompileError

__all__ = [
    "BitModFormat", "FORMAT_NAMES", "INT_FORMATS", "FP4_FORMATS", "FP3_FORMATS",
    "bitmod_format", "code_bits", "is_int", "values", "decode", "encode", "unified",
    "serial_digits", "cycles", "radix", "max_digit_exp", "quantize_group",
    "choose_formats", "dequantize", "group_psum",
]


BitModFormat = _registry.make_enum(
    "BitModFormat", {s.enum_name: s.bitmod_code for s in _registry.bitmod_formats()},
    _registry.BITMOD_CODE_BITS,
    """Weight formats of the bit-serial PE (a run-time field of its input stream): the
    formats of :mod:`airfoil.format_registry` with a BitMoD code.""")
BitModFormat.__module__ = __name__

FORMAT_NAMES = {f: f.name.lower() for f in BitModFormat}
_SPEC = {f: _registry.by_bitmod_code(f.value) for f in BitModFormat}
INT_FORMATS = tuple(f for f in BitModFormat if _SPEC[f].kind == "int")
FP4_FORMATS = tuple(f for f in BitModFormat if _SPEC[f].kind == "codebook"
                    and _SPEC[f].code_bits == 4)
FP3_FORMATS = tuple(f for f in BitModFormat if _SPEC[f].kind == "codebook"
                    and _SPEC[f].code_bits == 3)

_INT_BITS = {f: _SPEC[f].code_bits for f in INT_FORMATS}


def bitmod_format(name) -> BitModFormat:
    """Return the :class:`BitModFormat` for a name such as ``"fp4_ea_p"`` or ``"int6"``."""
    if isinstance(name, BitModFormat):
        return name
    for f, n in FORMAT_NAMES.items():
        if str(name).lower() == n:
            return f
    raise CompileError(f"unknown BitMoD format {name!r} (accepted: "
                       f"{', '.join(FORMAT_NAMES.values())})")


def is_int(fmt) -> bool:
    """Whether ``fmt`` is a two's complement integer format."""
    return bitmod_format(fmt) in _INT_BITS


def code_bits(fmt) -> int:
    """Width of one weight code in memory."""
    return _SPEC[bitmod_format(fmt)].code_bits


def decode(fmt, code: int) -> int:
    """Value of one code (an unsigned ``code_bits(fmt)``-bit integer)."""
    fmt = bitmod_format(fmt)
    n = code_bits(fmt)
    if not 0 <= int(code) < 1 << n:
        raise CompileError(f"code {code} is outside 0..{(1 << n) - 1} for {FORMAT_NAMES[fmt]}")
    return _SPEC[fmt].values()[int(code)]


def values(fmt) -> tuple[int, ...]:
    """All values of ``fmt``, indexed by code (INT: the full two's complement range)."""
    fmt = bitmod_format(fmt)
    return tuple(decode(fmt, c) for c in range(1 << code_bits(fmt)))


def encode(fmt, value: int) -> int:
    """Code of an integer value of ``fmt`` (raise :class:`CompileError` if absent)."""
    fmt = bitmod_format(fmt)
    vals = values(fmt)
    if int(value) not in vals:
        raise CompileError(f"value {value} is not representable in {FORMAT_NAMES[fmt]}")
    if int(value) == 0:
        return 0
    return vals.index(int(value))


def unified(fmt, code: int) -> tuple[int, int, int]:
    """Unified ``(sign, mantissa, exp)`` of an FP code: value = (-1)**sign * m * 2**exp.

    ``mantissa`` is 0, 1, 3 or 5 and ``exp`` is in 0..4. Integer formats are not in this
    representation (the PE reads their two's complement bits directly): raise.
    """
    fmt = bitmod_format(fmt)
    if fmt in _INT_BITS:
        raise CompileError(f"{FORMAT_NAMES[fmt]} is an integer format (no unified FP form)")
    v = decode(fmt, code)
    if v == 0:
        return 0, 0, 0
    a, e = abs(v), 0
    while a % 2 == 0:
        a //= 2
        e += 1
    return int(v < 0), a, e


def cycles(fmt) -> int:
    """Cycles the bit-serial PE spends on one weight of ``fmt``."""
    fmt = bitmod_format(fmt)
    if fmt in _INT_BITS:
        b = _INT_BITS[fmt]
        return b // 2 if b >= 6 else b
    return 2


def radix(fmt) -> int:
    """Factor the PE's beat accumulator is multiplied by before each digit is added."""
    fmt = bitmod_format(fmt)
    if fmt in _INT_BITS:
        return 4 if _INT_BITS[fmt] >= 6 else 2
    return 1


#: Largest digit exponent: a digit is ``+-2**e`` with ``e`` in ``0..MAX_DIGIT_EXP``.
max_digit_exp = 4


def serial_digits(fmt, code: int) -> list[int]:
    """Digits of one weight, most significant first; each is ``0`` or ``+-2**e``.

    ``value == fold(digits)`` with ``fold = lambda acc, d: acc * radix(fmt) + d``.
    """
    fmt = bitmod_format(fmt)
    n = cycles(fmt)
    if fmt in _INT_BITS:
        b = _INT_BITS[fmt]
        bits = [(int(code) >> i) & 1 for i in range(b)]
        if b < 6:
            return [(-bits[p] if p == b - 1 else bits[p]) for p in reversed(range(b))]
        out = []
        for p in reversed(range(n)):
            lo = bits[2 * p - 1] if p else 0
            out.append(-2 * bits[2 * p + 1] + bits[2 * p] + lo)
        return out
    s, m, e = unified(fmt, code)
    sg = -1 if s else 1
    terms = [sg * (1 << (e + i)) for i in range(3) if (m >> i) & 1]
    return terms + [0] * (n - len(terms))


# -- quantization and per-group datatype choice ---------------------------------------

def _nearest(w: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Index into sorted ``grid`` of the value nearest each ``w`` (ties to the lower)."""
    i = torch.searchsorted(grid, w).clamp(1, len(grid) - 1)
    lo, hi = grid[i - 1], grid[i]
    return torch.where((w - lo) <= (hi - w), i - 1, i)


def _fp16_scale(s: torch.Tensor) -> torch.Tensor:
    s16 = s.to(torch.float16)
    tiny = torch.tensor(2.0 ** -24, dtype=torch.float16)
    return torch.where(s16 > 0, s16, tiny)


def quantize_group(w: torch.Tensor, fmt, floor: float | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize each row of ``w`` (groups x n, float) to ``fmt`` with one FP16 scale.

    The scale maps the group's extremes onto the format's extremes without clipping
    (``max(wmax / vmax, wmin / vmin)``, raised to at least ``floor`` when given, then
    FP16-rounded); each weight takes the nearest value. Return ``(values, scales)``:
    int64 values of ``fmt`` and float16 scales.
    """
    spec = fmt if isinstance(fmt, _registry.FormatSpec) else _SPEC[bitmod_format(fmt)]
    grid = torch.tensor(spec.quant_values(), dtype=torch.float64)
    wf = w.detach().to(torch.float64)
    vmax, vmin = float(grid.max()), float(grid.min())
    hi = wf.amax(dim=1).clamp(min=0) / vmax
    lo = wf.amin(dim=1).clamp(max=0) / vmin
    s = torch.maximum(hi, lo)
    if floor is not None:
        s = torch.clamp(s, min=float(floor))
    s16 = _fp16_scale(s)
    if bool(torch.isinf(s16).any()):
        raise CompileError("weights too large: a group scale overflows FP16")
    idx = _nearest((wf / s16.to(torch.float64).unsqueeze(1)).contiguous(), grid)
    return grid[idx].to(torch.int64), s16


def dequantize(vals: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Float64 weights ``vals * scale`` (values groups x n, scales per group)."""
    return vals.to(torch.float64) * scales.to(torch.float64).unsqueeze(-1)


def choose_formats(w: torch.Tensor, candidates, group: int = 128):
    """Per group of ``group`` weights along each row, pick the least-squared-error format.

    ``w``: (rows, k) float; ``candidates``: formats (names or members), e.g.
    ``FP4_FORMATS`` (BitMoD's 4-bit mixture) or ``FP3_FORMATS``. Ties go to the earlier
    candidate. Return ``(values, formats, scales, sq_error)``: int64 values (rows, k),
    int64 :class:`BitModFormat` codes (rows, k/group), float16 scales (rows, k/group) and
    the float64 squared error per group.
    """
    cands = [bitmod_format(c) for c in candidates]
    if not cands:
        raise CompileError("choose_formats needs at least one candidate format")
    rows, k = w.shape
    if k % group:
        raise CompileError(f"k={k} is not a multiple of the group size {group}")
    wg = w.detach().to(torch.float64).reshape(rows * (k // group), group)
    best = None
    for f in cands:
        v, s = quantize_group(wg, f)
        err = ((wg - dequantize(v, s)) ** 2).sum(dim=1)
        if best is None:
            best = [v, torch.full((len(wg),), f.value, dtype=torch.int64), s, err]
            continue
        better = err < best[3]
        best[0] = torch.where(better.unsqueeze(1), v, best[0])
        best[1] = torch.where(better, torch.full_like(best[1], f.value), best[1])
        best[2] = torch.where(better, s, best[2])
        best[3] = torch.where(better, err, best[3])
    g = k // group
    return (best[0].reshape(rows, k), best[1].reshape(rows, g), best[2].reshape(rows, g),
            best[3].reshape(rows, g))


def group_psum(vals: torch.Tensor, x: torch.Tensor, group: int) -> torch.Tensor:
    """Exact per-group dot products of decoded values (rows, k) with INT8 ``x`` (k,)."""
    rows, k = vals.shape
    return (vals.to(torch.int64).reshape(rows, k // group, group)
            * x.to(torch.int64).reshape(1, k // group, group)).sum(dim=2)

