"""Stimulus and reference results for the processing-element testbenches.

Both the ``amaranth.sim`` unit tests and the cocotb regressions use these cases: a case
is a list of input beats (field path -> integer) and the expected row results, computed
from :mod:`airfoil.bitmod` (decoded weight values) and :mod:`airfoil.formats` (the group
rescale and the wrapping accumulator), never from the hardware's own digit algorithm.

Payloads are packed with a *field map* ``{path: [offset, width]}`` that the test derives
from the component's layout (:func:`layout_fields`) and hands to the testbench in the
metadata JSON, so the testbench never imports ``hdl``.
"""

from __future__ import annotations

import random

import torch

from airfoil import bitmod
from airfoil.formats import fp16_fixed, rescale, wrap

__all__ = ["layout_fields", "pack", "unpack_signed", "random_scales", "bitserial_case",
           "lut_case", "lut_value"]


def layout_fields(layout, prefix: str = "", base: int = 0) -> dict:
    """Flatten an Amaranth data layout into ``{path: [offset, width]}`` (paths like
    ``"w.3"``); enum and plain shapes are leaves."""
    from amaranth.hdl import Shape
    from amaranth.lib import data

    out = {}
    if isinstance(layout, data.Layout):
        for name, field in layout:
            key = f"{prefix}{name}"
            out.update(layout_fields(field.shape, key + ".", base + field.offset))
        return out
    width = Shape.cast(layout).width
    out[prefix.rstrip(".")] = [base, width]
    return out


def pack(fields: dict, values: dict) -> int:
    """Pack ``{path: int}`` into one integer by the field map (missing fields are 0)."""
    word = 0
    for path, v in values.items():
        off, width = fields[path]
        word |= (int(v) & ((1 << width) - 1)) << off
    return word


def unpack_signed(word: int, width: int) -> int:
    """Read a ``width``-bit two's complement integer."""
    word &= (1 << width) - 1
    return word - (1 << width) if word >> (width - 1) else word


def random_scales(rng: random.Random, n: int, spread: int = 15):
    """``n`` random FP16 group scales as ``(m, shift)`` lists with ``k0`` the least ``k``.

    The exponent field spans ``spread + 1`` values, so every shift is in ``0..spread``.
    """
    e0 = rng.randint(1, 29 - spread)
    bits = [(rng.randint(e0, e0 + spread) << 10) | rng.getrandbits(10) for _ in range(n)]
    s16 = torch.tensor(bits, dtype=torch.int16).view(torch.float16)
    m, k = fp16_fixed(s16)
    k0 = int(k.min())
    return m.tolist(), (k - k0).tolist()


def _rows_reference(psums, ms, shifts, rows_groups):
    """Row accumulators from per-group partial sums (airfoil.formats semantics)."""
    out, i = [], 0
    for ng in rows_groups:
        ps = torch.tensor(psums[i:i + ng], dtype=torch.int64)
        m = torch.tensor(ms[i:i + ng], dtype=torch.int64)
        k = torch.tensor(shifts[i:i + ng], dtype=torch.int64)
        out.append(int(wrap(rescale(ps, m, k, 0).sum())))
        i += ng
    return out


def bitserial_case(*, lanes: int, fmts, rows: int, groups: int, beats: int, seed: int,
                   sparse: bool = False, has_sparse_port: bool = True):
    """A random case for :class:`hdl.pe.bitserial.BitSerialPE`.

    ``fmts``: formats to draw each group's format from; ``beats``: beats per group
    (each ``lanes`` weights; in 2:4 mode they cover ``2 * lanes`` positions). Codes are
    drawn over each format's full code space, activations over -128..127.
    Return ``(beats, expected)``: a list of ``{path: int}`` payloads and row results.
    """
    rng = random.Random(seed)
    fmts = [bitmod.bitmod_format(f) for f in fmts]
    xw = 2 * lanes if has_sparse_port else lanes
    ngroups = rows * groups
    ms, shifts = random_scales(rng, ngroups)
    out_beats, psums = [], []
    for g in range(ngroups):
        fmt = rng.choice(fmts)
        nb = bitmod.code_bits(fmt)
        psum = 0
        for b in range(beats):
            codes = [rng.getrandbits(nb) for _ in range(lanes)]
            xs = [rng.randint(-128, 127) for _ in range(xw)]
            beat = {f"w.{i}": c for i, c in enumerate(codes)}
            beat.update({f"x.{i}": v for i, v in enumerate(xs)})
            beat["fmt"] = fmt.value
            if sparse:
                idx = []
                for _w in range(lanes // 2):
                    idx += sorted(rng.sample(range(4), 2))
                beat.update({f"idx.{i}": v for i, v in enumerate(idx)})
                beat["sparse"] = 1
                sel = [xs[4 * (i // 2) + idx[i]] for i in range(lanes)]
            else:
                sel = xs[:lanes]
            psum += sum(bitmod.decode(fmt, c) * x for c, x in zip(codes, sel))
            if b == beats - 1:
                beat.update({"group_end": 1, "m": ms[g], "shift": shifts[g],
                             "row_end": int(g % groups == groups - 1)})
            out_beats.append(beat)
        psums.append(psum)
    return out_beats, _rows_reference(psums, ms, shifts, [groups] * rows)


def lut_value(bits: int, code: int) -> int:
    """Weight value of a LUT-PE code: INT1 is ``{0: -1, 1: +1}``, else two's complement."""
    if bits == 1:
        return 1 if code & 1 else -1
    return code - (1 << bits) if code >> (bits - 1) else code


def lut_case(*, lanes: int, bits_choices, rows: int, groups: int, beats: int, seed: int):
    """A random case for the LUT PE (weights + activations; the builder makes the tables).

    Each group draws its weight width from ``bits_choices`` (1..4). Return
    ``(beats, expected)`` like :func:`bitserial_case`.
    """
    rng = random.Random(seed)
    ngroups = rows * groups
    ms, shifts = random_scales(rng, ngroups)
    out_beats, psums = [], []
    for g in range(ngroups):
        bits = rng.choice(list(bits_choices))
        psum = 0
        for b in range(beats):
            codes = [rng.getrandbits(bits) for _ in range(lanes)]
            xs = [rng.randint(-128, 127) for _ in range(lanes)]
            beat = {f"w.{i}": c for i, c in enumerate(codes)}
            beat.update({f"x.{i}": v for i, v in enumerate(xs)})
            beat["bits"] = bits
            psum += sum(lut_value(bits, c) * x for c, x in zip(codes, xs))
            if b == beats - 1:
                beat.update({"group_end": 1, "m": ms[g], "shift": shifts[g],
                             "row_end": int(g % groups == groups - 1)})
            out_beats.append(beat)
        psums.append(psum)
    return out_beats, _rows_reference(psums, ms, shifts, [groups] * rows)
