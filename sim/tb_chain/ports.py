"""Flat port values of the sparse chain's streams, packed from the metadata field table.

Kept free of torch so that the cocotb testbench starts quickly.
"""

from __future__ import annotations

__all__ = ["pack_beat", "unpack_psum"]


def _mask(bits: int) -> int:
    return (1 << bits) - 1


def pack_beat(fields: dict, beat: dict) -> int:
    """Pack a beat dict into the integer value of the flat operand port."""
    v = 0
    for name, f in fields.items():
        val = beat[name]
        if f["count"]:
            for t, e in enumerate(val):
                v |= (int(e) & _mask(f["elem"])) << (f["offset"] + t * f["elem"])
        else:
            v |= (int(val) & _mask(f["width"])) << f["offset"]
    return v


def _field(v: int, offset: int, bits: int, signed: bool) -> int:
    u = (v >> offset) & _mask(bits)
    return u - (1 << bits) if signed and u >> (bits - 1) else u


def unpack_psum(fields: dict, value: int) -> dict:
    """Unpack the integer value of the flat psum port into a dict."""
    out = {}
    for name, f in fields.items():
        if f["count"]:
            out[name] = [_field(value, f["offset"] + t * f["elem"], f["elem"], f["signed"])
                         for t in range(f["count"])]
        else:
            out[name] = _field(value, f["offset"], f["width"], f["signed"])
    return out
