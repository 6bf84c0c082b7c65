"""FP16 group scales to exact fixed point, in hardware (as :func:`airfoil.formats.fp16_fixed`)."""

from __future__ import annotations

from amaranth.hdl import Mux, Value

from airfoil.formats import FP16_K_MIN

__all__ = ["fp16_fixed_hw"]


def fp16_fixed_hw(raw) -> tuple[Value, Value, Value]:
    """Split a 16-bit FP16 pattern into ``(m, k, bad)`` combinationally.

    ``m`` is the signed significand (12 bits: the 11-bit magnitude with its hidden bit for
    normal numbers, negated when the sign bit is set), ``k`` the exponent (6-bit signed,
    ``FP16_K_MIN`` for subnormals and zero), so that the value is ``m * 2**k`` exactly;
    ``bad`` is 1 for an infinite or NaN pattern (where ``m`` and ``k`` are those of the
    other bits and must not be used).
    """
    raw = Value.cast(raw)
    if len(raw) != 16:
        raise TypeError(f"FP16 pattern must be 16 bits wide, not {len(raw)}")
    f, e, s = raw[0:10], raw[10:15], raw[15]
    mag = Mux(e == 0, f, f | 0x400)
    m = Mux(s, -mag, mag).as_signed()[:12].as_signed()
    k = Mux(e == 0, FP16_K_MIN, e - 25)
    bad = e == 0x1F
    return m, k, bad
