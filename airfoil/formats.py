"""Numeric formats and the datapath arithmetic, specified once.

The compiler, the torch golden model, the ISA simulator and the tests all call these
functions; the hardware implements exactly the same integer arithmetic.

Arithmetic of one matrix row ``r`` against one activation vector ``x`` (INT8)::

    psum[g]  = sum(q[r, i] * x[i] for i in group g)                  exact integer
    scale[g] = m[g] * 2**k[g]                                        FP16, exactly
    acc      = bias[r] + sum(psum[g] * m[g] << (k[g] - k0))          ACC_BITS, wraps
    out[r]   = clamp(floor((acc * M + 2**(S - 1)) / 2**S), out range)   (S = 0: acc * M)

``k0`` is the instruction's base exponent, the least ``k`` of the tile; every shift
``k[g] - k0`` lies in ``0..SCALE_SHIFT_MAX`` (the quantizer guarantees it, the hardware
flags a violation). ``acc`` is in units of ``2**k0 * x_scale``, and ``M * 2**-S`` is the
requantization multiplier ``2**k0 * x_scale / out_scale`` from :func:`requant_params`.

All tensors here are ``torch`` tensors (integers as ``int64``) unless a name says bytes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import format_registry as _registry
from .errors import CompileError
from .isa import OutFormat, WeightFormat

__all__ = [
    "ACC_BITS", "SCALE_SHIFT_MAX", "FP16_K_MIN", "FP16_K_MAX", "REQ_M_BITS", "REQ_S_MAX",
    "FORMAT_BITS", "FORMAT_BY_NAME", "OUT_BITS", "weight_format", "qmax", "fp16_fixed",
    "quantize_weights", "act_scale", "quantize_act", "group_psum", "rescale", "wrap",
    "accumulate", "requant_params", "requantize", "pack_int", "unpack_int", "TileLayout",
    "tile_layout", "pack_tile", "unpack_tile", "linear_reference",
]

#: Width of the wide accumulator across groups (two's complement, wraps).
ACC_BITS = 56
#: Largest shift ``k - k0`` the rescaler applies.
SCALE_SHIFT_MAX = 15
#: Range of the exponent ``k`` of an FP16 value ``m * 2**k`` (``m`` an 11-bit integer).
FP16_K_MIN = -24
FP16_K_MAX = 5
#: Requantization multiplier width and largest shift.
REQ_M_BITS = 16
REQ_S_MAX = 127

#: Bits per weight of each WGT-tile format, and the formats by name
#: (:mod:`airfoil.format_registry`).
FORMAT_BITS = {WeightFormat[s.enum_name]: s.code_bits for s in _registry.tile_formats()}
FORMAT_BY_NAME = {s.name: WeightFormat[s.enum_name] for s in _registry.tile_formats()}
OUT_BITS = {OutFormat.INT8: 8, OutFormat.INT16: 16, OutFormat.INT32: 32}


def weight_format(name) -> WeightFormat:
    """Return the :class:`WeightFormat` for a name such as ``"int4"``."""
    if isinstance(name, WeightFormat):
        return name
    try:
        return FORMAT_BY_NAME[str(name).lower()]
    except KeyError:
        raise CompileError(f"unknown weight format {name!r} (accepted: "
                           f"{', '.join(FORMAT_BY_NAME)})") from None


def qmax(bits: int) -> int:
    """Largest magnitude the symmetric quantizer produces for ``bits``-bit integers."""
    return (1 << (bits - 1)) - 1


# -- FP16 scales as exact fixed point ---------------------------------------------------

def fp16_fixed(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split finite FP16 values exactly into ``(m, k)`` with value ``m * 2**k``.

    ``m`` is the signed significand: the 11-bit magnitude (hidden bit included for normal
    numbers) with the FP16 sign applied, ``-2047..2047`` (a negative scale is a
    checkpoint's own, e.g. a GGUF Q4_0 block's ``d``, kept so its codes keep their 4
    bits); ``k`` lies in ``FP16_K_MIN..FP16_K_MAX``, subnormals have ``k = -24``. Raise
    :class:`CompileError` for an infinite or NaN value.
    """
    if scales.dtype != torch.float16:
        raise TypeError(f"scales must be float16, not {scales.dtype}")
    bits = scales.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    e = (bits >> 10) & 0x1F
    f = bits & 0x3FF
    if bool((e == 0x1F).any()):
        raise CompileError("group scale is infinite or NaN")
    m = torch.where(e == 0, f, f | 0x400)
    m = torch.where((bits >> 15) != 0, -m, m)
    k = torch.where(e == 0, torch.full_like(e, FP16_K_MIN), e - 25)
    return m, k


# -- quantizers (host side) ---------------------------------------------------------------

def quantize_weights(w: torch.Tensor, bits: int, group: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``w`` (rows x k, float) symmetrically in groups of ``group`` along k.

    Return ``(q, scales)``: ``q`` int64 in ``-qmax..qmax``, ``scales`` float16 of shape
    (rows, k / group). A group's scale is its largest magnitude over ``qmax``, raised to
    at least ``2**-14`` of the tensor's largest scale so that every tile's exponent spread
    stays within :data:`SCALE_SHIFT_MAX` (such groups hold only negligible weights).
    """
    rows, k = w.shape
    if k % group:
        raise CompileError(f"k={k} is not a multiple of the group size {group}")
    wf = w.detach().to(torch.float64).reshape(rows, k // group, group)
    amax = wf.abs().amax(dim=2)
    s = amax / qmax(bits)
    smax = float(s.max()) if s.numel() else 0.0
    if smax == 0.0:
        s = torch.ones_like(s)
    else:
        s = torch.clamp(s, min=smax * 2.0 ** -14)
    s16 = s.to(torch.float16)
    s16 = torch.where(s16 > 0, s16, torch.tensor(2.0 ** -24, dtype=torch.float16))
    if bool(torch.isinf(s16).any()):
        raise CompileError("weights too large: a group scale overflows FP16")
    q = torch.round(wf / s16.to(torch.float64).unsqueeze(2))
    q = torch.clamp(q, -qmax(bits), qmax(bits)).to(torch.int64).reshape(rows, k)
    return q, s16


def act_scale(x: torch.Tensor) -> float:
    """Per-tensor INT8 scale of ``x``: largest magnitude over 127 (1.0 for all zeros)."""
    a = float(x.detach().abs().max()) if x.numel() else 0.0
    return float(np.float32(a / 127.0)) if a > 0 else 1.0


def quantize_act(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Quantize ``x`` to INT8 with ``scale`` (round half to even, clamp to +-127)."""
    q = torch.round(x.detach().to(torch.float64) / float(scale))
    return torch.clamp(q, -127, 127).to(torch.int64)


# -- datapath arithmetic -----------------------------------------------------------------

def group_psum(q: torch.Tensor, x: torch.Tensor, group: int) -> torch.Tensor:
    """Exact per-group dot products.

    ``q``: (rows, k) weights; ``x``: (k,) or (m, k) INT8 activations. Return int64 of
    shape (rows, k/group) or (m, rows, k/group).
    """
    rows, k = q.shape
    qg = q.to(torch.int64).reshape(rows, k // group, group)
    xx = x.to(torch.int64)
    if xx.dim() == 1:
        return (qg * xx.reshape(1, k // group, group)).sum(dim=2)
    m = xx.shape[0]
    return (qg.unsqueeze(0) * xx.reshape(m, 1, k // group, group)).sum(dim=3)


def rescale(psum: torch.Tensor, m: torch.Tensor, k: torch.Tensor, k0: int) -> torch.Tensor:
    """Scale group partial sums by their fixed-point scales into accumulator units."""
    shift = k - k0
    if shift.numel() and (int(shift.min()) < 0 or int(shift.max()) > SCALE_SHIFT_MAX):
        raise CompileError(f"group scale exponent outside the rescaler window "
                           f"(k0={k0}, shifts {int(shift.min())}..{int(shift.max())}, "
                           f"accepted 0..{SCALE_SHIFT_MAX})")
    return (psum * m) << shift


def wrap(acc: torch.Tensor, bits: int = ACC_BITS) -> torch.Tensor:
    """Wrap integers to ``bits``-bit two's complement."""
    half = 1 << (bits - 1)
    return ((acc + half) & ((1 << bits) - 1)) - half


def accumulate(scaled: torch.Tensor, bias: torch.Tensor | None = None,
               acc: torch.Tensor | None = None) -> torch.Tensor:
    """Sum rescaled group sums over the last axis onto ``acc`` (or ``bias``, or zero)."""
    total = scaled.sum(dim=-1)
    if acc is not None:
        total = total + acc
    elif bias is not None:
        total = total + bias.to(torch.int64)
    return wrap(total)


def requant_params(multiplier: float) -> tuple[int, int]:
    """Return ``(M, S)`` with ``M * 2**-S`` nearest to ``multiplier`` (``M`` 16 bits).

    ``M`` is normalised to ``2**15 <= M < 2**16`` unless the multiplier is zero or so
    small that ``S`` would exceed :data:`REQ_S_MAX`.
    """
    if not (multiplier >= 0.0 and math.isfinite(multiplier)):
        raise CompileError(f"requantization multiplier must be finite and >= 0, "
                           f"not {multiplier}")
    if multiplier == 0.0:
        return 0, 0
    f, e = math.frexp(multiplier)          # multiplier = f * 2**e, 0.5 <= f < 1
    mm = round(f * (1 << REQ_M_BITS))
    s = REQ_M_BITS - e
    if mm == 1 << REQ_M_BITS:
        mm >>= 1
        s -= 1
    if s < 0:
        raise CompileError(f"requantization multiplier {multiplier:g} too large "
                           f"(accepted below {1 << REQ_M_BITS})")
    if s > REQ_S_MAX:
        mm = (mm + (1 << (s - REQ_S_MAX - 1))) >> (s - REQ_S_MAX)
        s = REQ_S_MAX
    return int(mm), int(s)


def requantize(acc: torch.Tensor, mult: int, shift: int, out_bits: int) -> torch.Tensor:
    """``clamp(floor((acc * mult + 2**(shift-1)) / 2**shift))`` to ``out_bits`` signed.

    Exact for any ``acc`` of :data:`ACC_BITS` bits, computed in int64 without overflow.
    """
    acc = acc.to(torch.int64)
    lo_out, hi_out = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    if mult == 0:
        return torch.zeros_like(acc)
    if shift < 16:
        # |acc| >= 2**47 saturates whatever M (>= 2**15 when shift < REQ_S_MAX).
        a = torch.clamp(acc, -(1 << 47), 1 << 47)
        t = a * mult
        if shift:
            t = (t + (1 << (shift - 1))) >> shift
    elif shift >= ACC_BITS + REQ_M_BITS:
        # |acc * M| < 2**(shift-1): the rounded quotient is 0.
        t = torch.zeros_like(acc)
    else:
        hi = acc >> 16
        lo = acc & 0xFFFF
        if shift == 16:
            t = hi * mult + ((lo * mult + (1 << 15)) >> 16)
        else:
            t = (hi * mult + (1 << (shift - 17)) + ((lo * mult) >> 16)) >> (shift - 16)
    return torch.clamp(t, lo_out, hi_out)


# -- bit packing -------------------------------------------------------------------------

def pack_int(values, bits: int) -> bytes:
    """Pack signed integers as ``bits``-bit two's complement, LSB first, into bytes.

    Values may straddle byte boundaries (INT3); the last byte is zero-padded.
    """
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if v.size and (v.min() < lo or v.max() > hi):
        raise CompileError(f"value outside the {bits}-bit range {lo}..{hi}")
    if 8 % bits == 0 and v.size % (8 // bits) == 0:
        # Whole values per byte (INT2, INT4, INT8): shift and OR, the same bytes as below
        # without a bit array (the packer of a multi-GB image).
        per = 8 // bits
        u8 = (v & ((1 << bits) - 1)).astype(np.uint8).reshape(-1, per)
        out = u8[:, 0].copy()
        for j in range(1, per):
            out |= u8[:, j] << np.uint8(j * bits)
        return out.tobytes()
    u = (v & ((1 << bits) - 1)).astype(np.uint64)
    bitarr = ((u[:, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    return np.packbits(bitarr.reshape(-1), bitorder="little").tobytes()


def unpack_int(raw: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_int`: ``count`` signed ``bits``-bit integers (int64)."""
    need = (count * bits + 7) // 8
    if len(raw) < need:
        raise ValueError(f"need {need} bytes for {count} x INT{bits}, have {len(raw)}")
    b = np.unpackbits(np.frombuffer(bytes(raw[:need]), dtype=np.uint8), bitorder="little")
    b = b[:count * bits].reshape(count, bits).astype(np.int64)
    u = (b << np.arange(bits, dtype=np.int64)).sum(axis=1)
    return np.where(u >= 1 << (bits - 1), u - (1 << bits), u)


# -- weight tiles ------------------------------------------------------------------------

class TileLayout:
    """Byte layout of one weight tile in memory and in the WGT buffer.

    A tile holds ``rows`` output rows (padded to a multiple of ``chains``) of ``k``
    weights. Sections, each starting at a multiple of ``align`` bytes:

    * weights: for each batch of ``chains`` rows, for each step of ``lanes`` along k,
      for each chain: ``lanes`` weights of that row, packed by :func:`pack_int` -- the
      order in which the chains consume them, one step per cycle;
    * scales: for each batch, for each group, for each chain: FP16 little-endian;
    * bias (optional): int32 little-endian per padded row, starting at a multiple of
      ``4 * chains`` bytes as well (the MATRIX unit reads one int32 per chain at once).
    """

    def __init__(self, *, rows, k, group, wfmt, chains, lanes, bias, align):
        if k % group or group % lanes:
            raise CompileError(f"tile k={k} must be a multiple of group={group}, and the "
                               f"group a multiple of lanes={lanes}")
        self.rows, self.k, self.group = rows, k, group
        self.wfmt, self.chains, self.lanes = WeightFormat(wfmt), chains, lanes
        self.has_bias, self.align = bias, align
        self.bits = FORMAT_BITS[self.wfmt]
        self.batches = -(-rows // chains)
        self.padded_rows = self.batches * chains
        self.groups = k // group
        up = lambda n: -(-n // align) * align
        self.weight_bytes = (self.padded_rows * k * self.bits + 7) // 8
        self.scale_offset = up(self.weight_bytes)
        self.scale_bytes = self.padded_rows * self.groups * 2
        bias_align = max(align, 4 * chains)
        self.bias_offset = -(-(self.scale_offset + self.scale_bytes) // bias_align) * bias_align
        self.bias_bytes = self.padded_rows * 4 if bias else 0
        self.nbytes = up(self.bias_offset + self.bias_bytes)

    def __repr__(self):
        return (f"TileLayout(rows={self.rows}, k={self.k}, group={self.group}, "
                f"{self.wfmt.name}, nbytes={self.nbytes})")


def tile_layout(**kw) -> TileLayout:
    """Return the :class:`TileLayout` for keyword parameters (see the class)."""
    return TileLayout(**kw)


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    pad = torch.zeros((rows - t.shape[0],) + tuple(t.shape[1:]), dtype=t.dtype)
    return torch.cat([t, pad])


def pack_tile(lay: TileLayout, q: torch.Tensor, scales: torch.Tensor,
              bias: torch.Tensor | None = None) -> bytes:
    """Pack one tile's weights (rows x k), FP16 scales and optional int32 bias."""
    C, L, B = lay.chains, lay.lanes, lay.batches
    qp = _pad_rows(q.to(torch.int64), lay.padded_rows)
    # (batch, chain, step, lane) -> (batch, step, chain, lane)
    order = qp.reshape(B, C, lay.k // L, L).permute(0, 2, 1, 3).reshape(-1)
    one = torch.tensor(1.0, dtype=torch.float16)
    sp = _pad_rows(scales.to(torch.float16), lay.padded_rows)
    sp[lay.rows:] = one           # padding rows: any legal scale
    sorder = sp.reshape(B, C, lay.groups).permute(0, 2, 1).reshape(-1)
    out = bytearray(lay.nbytes)
    w = pack_int(order.numpy(), lay.bits)
    out[:len(w)] = w
    s = sorder.contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
    out[lay.scale_offset:lay.scale_offset + len(s)] = s
    if lay.has_bias:
        if bias is None:
            raise CompileError("tile layout has a bias section but no bias was given")
        b = _pad_rows(bias.to(torch.int64), lay.padded_rows)
        if int(b.min()) < -(1 << 31) or int(b.max()) >= 1 << 31:
            raise CompileError("bias does not fit in int32 accumulator units")
        out[lay.bias_offset:lay.bias_offset + lay.bias_bytes] = \
            b.numpy().astype("<i4").tobytes()
    return bytes(out)


def unpack_tile(lay: TileLayout, raw: bytes
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Inverse of :func:`pack_tile`: ``(q, scales, bias)`` for the tile's real rows."""
    C, L, B = lay.chains, lay.lanes, lay.batches
    if len(raw) < lay.nbytes:
        raise ValueError(f"tile needs {lay.nbytes} bytes, have {len(raw)}")
    n = lay.padded_rows * lay.k
    w = torch.from_numpy(unpack_int(raw[:lay.weight_bytes], lay.bits, n))
    q = w.reshape(B, lay.k // L, C, L).permute(0, 2, 1, 3).reshape(lay.padded_rows, lay.k)
    s = np.frombuffer(bytes(raw[lay.scale_offset:lay.scale_offset + lay.scale_bytes]),
                      dtype="<i2").copy()
    sc = torch.from_numpy(s).view(torch.float16)
    sc = sc.reshape(B, lay.groups, C).permute(0, 2, 1).reshape(lay.padded_rows, lay.groups)
    bias = None
    if lay.has_bias:
        bb = np.frombuffer(bytes(raw[lay.bias_offset:lay.bias_offset + lay.bias_bytes]),
                           dtype="<i4").astype(np.int64)
        bias = torch.from_numpy(bb)[:lay.rows]
    return q[:lay.rows].contiguous(), sc[:lay.rows].contiguous(), bias


def linear_reference(q: torch.Tensor, scales: torch.Tensor, x: torch.Tensor, group: int,
                     k0: int, mult: int, shift: int, out_bits: int,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """The whole-row arithmetic of the module docstring for one (rows x k) weight block."""
    m, k = fp16_fixed(scales)
    acc = accumulate(rescale(group_psum(q, x, group), m, k, k0), bias=bias)
    return requantize(acc, mult, shift, out_bits)
