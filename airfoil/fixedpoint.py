"""Fixed-point special functions of the special-function unit (SFU), specified once.

The golden model (``sim/golden_llm.py``), the ISA simulator and the RTL SFU implement
exactly this arithmetic: integers only at run time (``torch.int64`` tensors holding
narrower values), small tables and constants computed at compile time, shifts,
multiplies and a table-plus-Newton reciprocal and reciprocal square root.

Number formats (``Qf`` means value = integer * 2**-f):

* activations between operators: ``ACT`` = signed 32-bit, Q16 (:data:`ACT_FRAC`),
  saturating (:func:`sat`);
* INT8 tensors with a per-token scale ``sm * 2**-se`` (``sm`` a 16-bit normalised
  mantissa, ``2**15 <= sm < 2**16``, ``se`` a signed exponent): the outputs of
  :func:`quant_per_token`, the inputs of linear layers and the KV cache;
* probabilities: unsigned Q15 (``0..2**15``, 16 bits plus the value 1.0);
* table entries: unsigned Q15 (``exp2`` fraction, sigmoid), signed Q14 (RoPE).

Rounding is always "round half up" on the integer: ``(x + 2**(s-1)) >> s``
(:func:`shift_round`), with arithmetic (floor) right shifts.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch

from .formats import ACC_BITS, REQ_M_BITS, REQ_S_MAX, wrap
from .isa import TOPK_MAX

__all__ = [
    "ACT_FRAC", "ACT_BITS", "P_FRAC", "ROPE_FRAC", "W_FRAC", "GAMMA_FRAC",
    "shift_round", "shift_round_sat", "sat", "to_fixed", "from_fixed", "bit_length", "recip",
    "rsqrt",
    "exp2_neg", "exp_neg", "sigmoid", "silu", "add", "mul", "quant_per_token",
    "token_scale_value", "requantize_rows", "linear_out_params", "rmsnorm",
    "rmsnorm_weight", "rope_table", "rope", "softmax", "attention_scores", "QLinear",
    "linear", "embedding_table", "dequant_row", "dequant_groups", "dequant_record_layout",
    "dequant_record_bytes", "record_value_bits", "encode_records", "decode_records",
    "EMBED_GROUPS", "QEmbedding", "KVCacheInt", "attention",
    "attention_weights", "attention_context", "scale_to_mantissa", "attention_mask",
    "gelu_gate", "gelu", "relu", "row_mean", "layernorm_centred", "layernorm", "linear_bias",
    "TOPK_MAX", "INV_TEMP_FRAC", "INV_TEMP_BITS", "inv_temperature", "sample_uniform",
    "topk_sample", "Sampling", "SAMPLING_BLOCK_BYTES",
]

#: Fractional bits of the activations passed between operators (signed 32-bit).
ACT_FRAC = 16
ACT_BITS = 32
#: Fractional bits of softmax probabilities (unsigned, 0..2**P_FRAC).
P_FRAC = 15
#: Fractional bits of the RoPE cos/sin table (signed 16-bit).
ROPE_FRAC = 14
#: Fractional bits of the value-scaled attention weights (signed 32-bit).
W_FRAC = 20
#: Fractional bits of the RMSNorm gain (signed 32-bit).
GAMMA_FRAC = 16

I64 = torch.int64


# -- basic integer operations ---------------------------------------------------------

def shift_round(x: torch.Tensor, s) -> torch.Tensor:
    """Multiply ``x`` by ``2**-s`` rounding half up: ``(x + 2**(s-1)) >> s`` for ``s > 0``.

    ``s`` is an int or an int64 tensor broadcast against ``x``; ``s <= 0`` shifts left
    (exact). The caller guarantees the result fits in int64.
    """
    x = x.to(I64)
    if not isinstance(s, torch.Tensor):
        s = int(s)
        if s <= 0:
            return x << -s
        return (x + (1 << (s - 1))) >> s
    s = s.to(I64)
    pos = torch.clamp(s, min=0, max=62)
    right = (x + torch.where(pos > 0, torch.ones_like(pos) << torch.clamp(pos - 1, min=0),
                             torch.zeros_like(pos))) >> pos
    left = x << torch.clamp(-s, min=0, max=62)
    return torch.where(s > 0, right, left)


def shift_round_sat(x: torch.Tensor, s, bits: int = ACT_BITS) -> torch.Tensor:
    """``sat(shift_round(x, s), bits)`` without int64 overflow for left shifts.

    For ``s < 0`` the operand is first clamped to ``bits`` signed range (any larger
    value saturates anyway) and the shift limited to ``bits - 1``.
    """
    x = x.to(I64)
    lim = 1 << (bits - 1)
    if isinstance(s, torch.Tensor):
        s = s.to(I64)
        x = torch.where(s < 0, torch.clamp(x, -lim, lim), x)
        s = torch.clamp(s, min=-(bits - 1))
    elif s < 0:
        x, s = torch.clamp(x, -lim, lim), max(s, -(bits - 1))
    return sat(shift_round(x, s), bits)


def sat(x: torch.Tensor, bits: int = ACT_BITS) -> torch.Tensor:
    """Saturate to ``bits``-bit signed two's complement."""
    return torch.clamp(x, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def to_fixed(x: torch.Tensor, frac: int = ACT_FRAC, bits: int = ACT_BITS) -> torch.Tensor:
    """Compile time only: float -> saturated ``bits``-bit Q``frac`` (round half even)."""
    return sat(torch.round(x.detach().to(torch.float64) * 2.0 ** frac).to(I64), bits)


def from_fixed(x: torch.Tensor, frac: int = ACT_FRAC) -> torch.Tensor:
    """Test/reporting helper: Q``frac`` integers -> float64 values."""
    return x.to(torch.float64) * 2.0 ** -frac


def bit_length(x: torch.Tensor) -> torch.Tensor:
    """Bit length of non-negative int64 values (0 for 0): a leading-zero counter."""
    x = x.to(I64)
    n = torch.zeros_like(x)
    for sh in (32, 16, 8, 4, 2, 1):
        big = (x >> sh) > 0
        n = n + torch.where(big, sh, 0)
        x = torch.where(big, x >> sh, x)
    return n + (x > 0).to(I64)


# -- reciprocal and reciprocal square root ---------------------------------------------

#: 256-entry table: ``round(2**31 / n_mid)`` for the 8 bits under the leading one.
_RECIP_T = torch.tensor([round(2 ** 31 / ((1 << 15) + (i << 7) + (1 << 6)))
                         for i in range(256)], dtype=I64)
#: 192-entry table: ``round(2**23 / sqrt(n_mid))`` for ``n`` in ``[2**14, 2**16)``.
_RSQRT_T = torch.tensor([round(2 ** 23 / math.sqrt(((i + 64) << 8) + (1 << 7)))
                         for i in range(192)], dtype=I64)


def _normalize(a: torch.Tensor, width: int, even: bool = False):
    """Shift positive ``a`` so its bit length is ``width`` (truncating); return (n, sh)."""
    sh = bit_length(a) - width
    if even:
        sh = sh + (sh & 1)
    n = torch.where(sh >= 0, a >> torch.clamp(sh, min=0), a << torch.clamp(-sh, min=0))
    return n, sh


def recip(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reciprocal of positive integers: ``(m, e)`` with ``1 / a ~= m * 2**-e``.

    ``a`` is normalised (truncated) to ``n`` in ``[2**15, 2**16)``; a 256-entry table
    indexed by the 8 bits below the leading one gives ``y0 ~= 2**31 / n`` (16 bits), one
    Newton step ``y1 = (y0 * (2**32 - n * y0)) >> 31`` (products of 32 and 48 bits)
    refines it, saturated to 16 bits (``2**15 <= m < 2**16``). Relative error
    < 2**-14 (the normalisation truncates up to 16 bits of ``a``, < 2**-15).
    """
    a = torch.clamp(a.to(I64), min=1)
    n, sh = _normalize(a, 16)
    y0 = _RECIP_T[(n >> 7) - 256]
    y1 = (y0 * ((1 << 32) - n * y0)) >> 31
    m = torch.clamp(y1, 1 << 15, (1 << 16) - 1)
    return m, sh + 31


def rsqrt(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reciprocal square root of positive integers: ``(m, e)``, ``v**-0.5 ~= m * 2**-e``.

    ``v`` is normalised (truncated) by an even shift ``2 t`` to ``n`` in
    ``[2**14, 2**16)``; a 192-entry table gives ``y0 ~= 2**23 / sqrt(n)`` (16 bits); one
    Newton step ``y1 = (y0 * (3 * 2**30 - ((n * y0 * y0) >> 16))) >> 31`` (48-bit
    products), saturated to ``2**15 .. 2**16 - 1``; ``e = 23 + t``. Relative error
    < 2**-14.
    """
    v = torch.clamp(v.to(I64), min=1)
    n, sh = _normalize(v, 16, even=True)
    y0 = _RSQRT_T[(n >> 8) - 64]
    t = (n * y0 * y0) >> 16
    y1 = (y0 * (3 * (1 << 30) - t)) >> 31
    m = torch.clamp(y1, 1 << 15, (1 << 16) - 1)
    return m, 23 + (sh >> 1)


# -- exponential and sigmoid ---------------------------------------------------------

#: 257-entry table: ``round(2**15 * 2**(-i / 256))``, i = 0..256.
_EXP2_T = torch.tensor([round(2 ** 15 * 2 ** (-i / 256)) for i in range(257)], dtype=I64)
#: log2(e) in Q15 (unsigned 17 bits).
_LOG2E_Q15 = round(math.log2(math.e) * 2 ** 15)


def _interp(table: torch.Tensor, idx: torch.Tensor, frac: torch.Tensor, fbits: int):
    """Linear interpolation ``t[i] + ((t[i+1] - t[i]) * f) >> fbits`` (rounded)."""
    a, b = table[idx], table[idx + 1]
    return a + shift_round((b - a) * frac, fbits)


def exp2_neg(d: torch.Tensor) -> torch.Tensor:
    """``2**-d`` for non-negative Q16 ``d``, as unsigned Q15.

    The integer part is a right shift (``>= 16`` gives 0); the 16 fractional bits index
    the 257-entry table with their top 8 bits and interpolate linearly with the low 8.
    Absolute error <= 2**-15 (table rounding plus interpolation error < 2**-17).
    """
    d = torch.clamp(d.to(I64), min=0)
    ip, fp = d >> 16, d & 0xFFFF
    y = _interp(_EXP2_T, fp >> 8, fp & 0xFF, 8)
    return shift_round(y, torch.clamp(ip, max=31))


def exp_neg(d: torch.Tensor) -> torch.Tensor:
    """``exp(-d)`` for non-negative Q16 ``d`` (signed 32-bit, saturated), unsigned Q15.

    ``d * log2(e)`` is formed as ``(d * LOG2E_Q15) >> 15`` (rounded; 49-bit product),
    then :func:`exp2_neg`. Absolute error <= 2**-14.
    """
    return exp2_neg(shift_round(torch.clamp(d.to(I64), min=0) * _LOG2E_Q15, 15))


#: Sigmoid on [-16, 16] in steps of 1/16: 513 entries, unsigned Q15.
_SIG_T = torch.tensor([round(2 ** 15 / (1 + math.exp(-(i - 256) / 16))) for i in range(513)],
                      dtype=I64)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Sigmoid of Q16 ``x`` as unsigned Q15: 513-entry table over ``[-16, 16]``.

    ``x`` is clamped to ``[-16, 16)``; index ``(x + 16 * 2**16) >> 12``, linear
    interpolation with the low 12 bits. Absolute error <= 2.5 * 2**-15 (interpolation
    ``h**2 / 8 * max|s''|`` = 1.5 LSB for ``h = 1/16``, table and product rounding 1 LSB).
    """
    xc = torch.clamp(x.to(I64), -(16 << 16), (16 << 16) - 1) + (16 << 16)
    return _interp(_SIG_T, xc >> 12, xc & 0xFFF, 12)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU of Q16 ``x``: ``sat32((x * sigmoid(x)) >> 15)`` rounded, Q16."""
    return sat(shift_round(x.to(I64) * sigmoid(x), 15))


#: GELU's gate ``GELU(x) / x`` in the tanh form of GPT-2 (``gelu_new``),
#: ``sigmoid(2 sqrt(2 / pi) (x + 0.044715 x**3))``, on [-16, 16] in steps of 1/16:
#: 513 entries, unsigned Q15 (the layout of the sigmoid table).
_GELU_T = torch.tensor([round(2 ** 15 / (1 + math.exp(-2 * math.sqrt(2 / math.pi) * (
    (i - 256) / 16 + 0.044715 * ((i - 256) / 16) ** 3)))) for i in range(513)], dtype=I64)


def gelu_gate(x: torch.Tensor) -> torch.Tensor:
    """GELU's gate of Q16 ``x`` as unsigned Q15: :data:`_GELU_T` read as :func:`sigmoid`
    reads its table (clamp to ``[-16, 16)``, 12-bit linear interpolation)."""
    xc = torch.clamp(x.to(I64), -(16 << 16), (16 << 16) - 1) + (16 << 16)
    return _interp(_GELU_T, xc >> 12, xc & 0xFFF, 12)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU (tanh form) of Q16 ``x``: ``sat32((x * gelu_gate(x)) >> 15)`` rounded, Q16.

    The datapath of :func:`silu` with the gate table of :data:`_GELU_T`. Beyond the
    table the gate is 0 (``x < -16``) or 1 (``x >= 16``), as GELU's is to within 1e-50.
    Absolute error against ``gelu_new`` below 2e-4 (measured on a 2e-4 grid of [-20, 20]:
    the gate's interpolation error times ``x``).
    """
    return sat(shift_round(x.to(I64) * gelu_gate(x), 15))


def relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU of ACT ``x`` (exact)."""
    return torch.clamp(x.to(I64), min=0)


# -- element-wise ---------------------------------------------------------------------

def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Residual addition of two ACT tensors, saturating to 32 bits."""
    return sat(a.to(I64) + b.to(I64))


def mul(a: torch.Tensor, b: torch.Tensor, frac: int = ACT_FRAC) -> torch.Tensor:
    """Product of two Q``frac`` tensors: ``sat32((a * b) >> frac)`` rounded.

    Operands are 32-bit, the product 64-bit; ``|a * b| < 2**62`` always holds.
    """
    return sat(shift_round(a.to(I64) * b.to(I64), frac))


# -- per-token quantization and requantization ------------------------------------------

#: ``round(2**22 / 127)``: the constant 1/127 (16 bits).
_INV127 = round(2 ** 22 / 127)


def scale_to_mantissa(p: torch.Tensor, e: torch.Tensor | int):
    """Normalise positive ``p * 2**-e`` to ``(sm, se)``, ``2**15 <= sm < 2**16`` (rounded)."""
    p = torch.clamp(p.to(I64), min=1)
    sh = bit_length(p) - 16
    sm = shift_round(p, sh)
    over = sm >> 16
    sm = sm >> over
    return sm, (e - sh - over)


def quant_per_token(v: torch.Tensor, frac: int = ACT_FRAC
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize Q``frac`` rows (last axis) to INT8 with a dynamic per-row scale.

    ``amax = max|v|`` over the row (1 if the row is all zeros); ``(rm, re) =
    recip(amax)``; ``x = sat8((v * 127 * rm) >> re)`` rounded (``|v * 127 * rm| <
    2**55``). The scale, real value per unit of ``x``, is ``amax / 127 * 2**-frac`` held
    as ``sm * 2**-se``: ``sm, se = scale_to_mantissa(amax * round(2**22/127), 22 +
    frac)``. Return ``(x, sm, se)``; ``sm`` and ``se`` have the row shape.
    """
    return _quant_rows(v, 8, frac)


def _quant_rows(v: torch.Tensor, bits: int, frac: int):
    """:func:`quant_per_token` onto symmetric ``bits``-bit integers (``qmax = 2**(bits-1)
    - 1`` in place of 127)."""
    qm = (1 << (bits - 1)) - 1
    v = v.to(I64)
    amax = torch.clamp(v.abs().amax(dim=-1), min=1)
    rm, re = recip(amax)
    x = sat(shift_round(v * (qm * rm).unsqueeze(-1), re.unsqueeze(-1)), bits)
    sm, se = scale_to_mantissa(amax * round(2 ** 22 / qm), 22 + frac)
    return x, sm, se


def token_scale_value(sm: torch.Tensor, se: torch.Tensor) -> torch.Tensor:
    """Test/reporting helper: the float64 value of scales ``sm * 2**-se``."""
    return sm.to(torch.float64) * torch.pow(2.0, -se.to(torch.float64))


def linear_out_params(sm: torch.Tensor, se: torch.Tensor, k0: int,
                      frac_out: int = ACT_FRAC) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token requantization ``(M, S)`` of a linear layer's accumulator.

    The accumulator is in units of ``2**k0 * sm * 2**-se``; the output is Q``frac_out``:
    ``M = sm`` (16 bits) and ``S = se - k0 - frac_out``, with ``S`` limited to
    ``0..REQ_S_MAX`` as :func:`airfoil.formats.requant_params` does (``S > REQ_S_MAX``
    rounds ``M`` down by the excess; ``S < 0`` saturates the multiplier: ``M = 2**16-1``,
    ``S = 0``).
    """
    S = se - k0 - frac_out
    M = sm.clone()
    big = S > REQ_S_MAX
    M = torch.where(big, shift_round(M, torch.clamp(S - REQ_S_MAX, max=62)), M)
    M = torch.where(S < 0, torch.full_like(M, (1 << REQ_M_BITS) - 1), M)
    S = torch.clamp(S, 0, REQ_S_MAX)
    return M, S


def requantize_rows(acc: torch.Tensor, M: torch.Tensor, S: torch.Tensor,
                    out_bits: int) -> torch.Tensor:
    """:func:`airfoil.formats.requantize` with a multiplier per row (last axis = columns).

    ``clamp(floor((acc * M + 2**(S-1)) / 2**S))`` to ``out_bits`` signed, exact for any
    :data:`~airfoil.formats.ACC_BITS`-bit ``acc`` and 16-bit ``M``: ``acc`` splits into
    ``hi = acc >> 16`` and ``lo = acc & 0xFFFF`` so no product exceeds 57 bits.
    """
    acc = wrap(acc.to(I64), ACC_BITS)
    M = M.to(I64).unsqueeze(-1)
    S = S.to(I64).unsqueeze(-1)
    # S < 16: |acc| >= 2**47 saturates whatever M, so clamp; the product is < 2**63.
    a = torch.clamp(acc, -(1 << 47), 1 << 47)
    s1 = torch.clamp(S, max=15)
    t_small = shift_round(a * M, s1)
    # S >= 16: acc = hi * 2**16 + lo; floor((hi*M + 2**(S-17) + (lo*M >> 16)) / 2**(S-16)).
    hi, lo = acc >> 16, acc & 0xFFFF
    lom = lo * M
    t16 = hi * M + ((lom + (1 << 15)) >> 16)
    s2 = torch.clamp(S - 16, min=1, max=62)
    rnd = torch.ones_like(s2) << torch.clamp(S - 17, min=0, max=61)
    t_big = (hi * M + rnd + (lom >> 16)) >> s2
    t_big = torch.where(S >= ACC_BITS + REQ_M_BITS, torch.zeros_like(t_big), t_big)
    t = torch.where(S < 16, t_small, torch.where(S == 16, t16, t_big))
    t = torch.where(M == 0, torch.zeros_like(t), t)
    return sat(t, out_bits)


# -- RMSNorm ---------------------------------------------------------------------------

def rmsnorm_weight(w: torch.Tensor) -> torch.Tensor:
    """Compile time: the RMSNorm gain as signed 32-bit Q16."""
    return to_fixed(w, GAMMA_FRAC)


def _eps_const(eps: float) -> int:
    return round(eps * 2.0 ** 60)


def rmsnorm(x: torch.Tensor, gamma: torch.Tensor, eps: float, *,
            eps_q60: int | None = None) -> torch.Tensor:
    """RMSNorm of ACT rows (last axis, ``n`` elements) with Q16 gain ``gamma``; ACT out.

    1. Block normalisation: ``b = 15 - bitlen(max|x|)``; ``xs = x << b`` (``b >= 0``) or
       rounded ``x >> -b``, so ``|xs| <= 2**15`` (17-bit signed).
    2. ``ss = sum(xs**2)`` (exact, < ``n * 2**30``); ``ms = (ss * inv_n_m) >> inv_n_s``
       rounded, ``inv_n_m * 2**-inv_n_s = 1/n`` with a 16-bit mantissa (compile time).
       ``ms`` is in units of ``2**(-2b - 32)``.
    3. ``v = ms + eps_u``: ``eps_u = round(eps * 2**60) >> (28 - 2b)`` (rounded, compile-
       time constant shifted at run time).
    4. ``(r, e) = rsqrt(v)``; ``t = (xs * r) >> (e - 16)`` rounded: the
       normalised row in Q16 (``|t| < sqrt(n) * 2**16``).
    5. ``y = sat32((t * gamma) >> 16)`` rounded.

    ``eps_q60`` gives the constant ``round(eps * 2**60)`` exactly (the instruction's
    64-bit immediate, any value below ``2**64``) instead of ``eps``. ``v`` may then pass
    int64: it is computed exactly and pre-shifted by an even amount before :func:`rsqrt`,
    which truncates the same bits.
    """
    x = x.to(I64)
    n = x.shape[-1]
    c = _eps_const(eps) if eps_q60 is None else int(eps_q60)
    if not 0 <= c < 1 << 64:
        raise ValueError(f"the RMSNorm epsilon constant {c} is outside 0 .. 2**64 - 1")
    amax = torch.clamp(x.abs().amax(dim=-1, keepdim=True), min=1)
    b = 15 - bit_length(amax)
    xs = shift_round(x, -b)
    ss = (xs * xs).sum(dim=-1, keepdim=True)
    inv_m, inv_e = _inv_n(n)
    ms = shift_round(ss * inv_m, inv_e)
    vs, ks = [], []             # per row: v pre-shifted by 2k to fit int64, and k
    for msi, bi in zip(ms.reshape(-1).tolist(), b.reshape(-1).tolist()):
        s = 28 - 2 * bi
        v = msi + ((c + (1 << (s - 1))) >> s if s > 0 else c << -s)
        k = max(0, (v.bit_length() - 61) // 2 + 1) if v >= 1 << 61 else 0
        vs.append(v >> (2 * k))
        ks.append(k)
    r, e = rsqrt(torch.tensor(vs, dtype=I64).reshape(ms.shape))
    e = e + torch.tensor(ks, dtype=I64).reshape(ms.shape)
    # rsqrt(v_real) = r * 2**-e * 2**(16 + b) and xs = x_real * 2**(16 + b)
    t = shift_round(xs * r, e - ACT_FRAC)
    return sat(shift_round(t * gamma.to(I64), GAMMA_FRAC))


def _inv_n(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``1 / n`` as a 16-bit mantissa and exponent (:func:`scale_to_mantissa` of
    ``2**40 // n``), the constant both norms scale their row sums by."""
    return scale_to_mantissa(torch.tensor(1 << 40, dtype=I64) // n, 40)


def row_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ACT rows (last axis): ``(sum(x) * inv_n_m) >> inv_n_s`` rounded, ACT.

    ``sum(x)`` is exact (below ``n * 2**31``); ``inv_n`` is :func:`_inv_n` (relative error
    below 2**-15). Exact in int64 for rows of up to 2**15 elements.
    """
    x = x.to(I64)
    inv_m, inv_e = _inv_n(x.shape[-1])
    return shift_round(x.sum(dim=-1, keepdim=True) * inv_m, inv_e)


def layernorm_centred(x: torch.Tensor, gamma: torch.Tensor, eps: float, *,
                      eps_q60: int | None = None) -> torch.Tensor:
    """LayerNorm of ACT rows without its bias: :func:`rmsnorm` of the centred rows
    ``sat32(x - row_mean(x))`` with Q16 gain ``gamma`` (:func:`rmsnorm_weight`); ACT out
    (the SFU's ``LAYERNORM``).

    The centred rows' mean is (to rounding) zero, so their mean square is the variance
    LayerNorm divides by.
    """
    c = sat(x.to(I64) - row_mean(x))
    return rmsnorm(c, gamma, eps, eps_q60=eps_q60)


def layernorm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float
              ) -> torch.Tensor:
    """LayerNorm of ACT rows: :func:`add` of :func:`layernorm_centred` and the ACT bias
    ``beta`` (:func:`linear_bias`); the core runs ``LAYERNORM`` then ``ADD``."""
    return add(layernorm_centred(x, gamma, eps), beta)


# -- RoPE ------------------------------------------------------------------------------

#: Keys of a ``rope_scaling`` of type ``llama3`` (HF ``config.json``), besides the type.
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                    "original_max_position_embeddings")


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """The RoPE frequencies (float64, ``head_dim // 2``), as HF computes them.

    Default: ``theta ** (-2 i / head_dim)``. With ``scaling`` of ``rope_type`` ``llama3``
    (LLaMA 3.1 and later), frequencies of wavelength above
    ``original_max_position_embeddings / low_freq_factor`` are divided by ``factor``,
    those below ``... / high_freq_factor`` kept, and those between blended smoothly.
    """
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if not scaling:
        return inv
    factor, low, high, old = (float(scaling[k]) for k in LLAMA3_ROPE_KEYS)
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return torch.where(medium, smoothed, scaled)


def rope_table(head_dim: int, theta: float, positions: int, scaling: dict | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Compile time: cos/sin of every position and frequency, signed Q14 (16 bits).

    Shape (positions, head_dim // 2); frequencies :func:`rope_inv_freq`.
    """
    inv = rope_inv_freq(head_dim, theta, scaling)
    ang = torch.arange(positions, dtype=torch.float64).unsqueeze(1) * inv.unsqueeze(0)
    return to_fixed(torch.cos(ang), ROPE_FRAC, 16), to_fixed(torch.sin(ang), ROPE_FRAC, 16)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ACT ``x`` (..., T, head_dim), element ``i`` with ``i + head_dim/2``.

    ``cos``/``sin``: Q14 rows for the T positions. ``y1 = sat32((x1 c - x2 s) >> 14)``,
    ``y2 = sat32((x2 c + x1 s) >> 14)``, rounded (products < 2**48).
    """
    x = x.to(I64)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    y1 = shift_round(x1 * cos - x2 * sin, ROPE_FRAC)
    y2 = shift_round(x2 * cos + x1 * sin, ROPE_FRAC)
    return sat(torch.cat([y1, y2], dim=-1))


# -- attention -------------------------------------------------------------------------

def attention_scores(q, q_sm, q_se, k, k_sm, k_se) -> torch.Tensor:
    """Scores ``q . k`` of INT8 rows with per-row scales, as ACT (Q16).

    ``q``: (..., Tq, d) INT8, scales (..., Tq); ``k``: (..., Tk, d), scales (..., Tk).
    ``dot`` is exact (< 2**14 * d); per pair ``M = (q_sm * k_sm) >> 16`` rounded (at most
    16 bits), ``S = q_se + k_se - 16 - 16``; ``s = sat32((dot * M) >> S)`` rounded (a left
    shift for ``S <= 0``). The 1/sqrt(d) factor is folded into the query weights by the
    compiler pass ``fold_attention_scale``.
    """
    dot = q.to(I64) @ k.to(I64).transpose(-1, -2)
    M = shift_round(q_sm.to(I64).unsqueeze(-1) * k_sm.to(I64).unsqueeze(-2), 16)
    S = q_se.to(I64).unsqueeze(-1) + k_se.to(I64).unsqueeze(-2) - 16 - ACT_FRAC
    return shift_round_sat(dot * M, S)


def softmax(s: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax of ACT (Q16) rows as unsigned Q15 probabilities.

    ``d = max - s`` (>= 0, saturated to 32 bits); ``e = exp_neg(d)`` (Q15, masked
    entries 0); ``E = sum(e)`` (< 2**15 * n); ``(rm, re) = recip(E)``;
    ``p = (e * rm) >> (re - 15)`` rounded (``e * rm < 2**31``). ``mask`` (bool, True =
    excluded) must leave at least one entry per row.
    """
    s = s.to(I64)
    if mask is not None:
        s = torch.where(mask, torch.full_like(s, -(1 << 31)), s)
    mx = s.amax(dim=-1, keepdim=True)
    d = sat(mx - s)
    e = exp_neg(d)
    if mask is not None:
        e = torch.where(mask, torch.zeros_like(e), e)
    E = e.sum(dim=-1, keepdim=True)
    rm, re = recip(E)
    return shift_round(e * rm, re - P_FRAC)


def attention_weights(p: torch.Tensor, v_sm: torch.Tensor, v_se: torch.Tensor):
    """Fold the per-key value scales into the probabilities: signed Q20 weights.

    ``p``: (..., Tq, Tk) Q15; ``v_sm, v_se``: (..., Tk). ``w = sat32((p * v_sm) >>
    (v_se + 15 - 20))`` rounded (``p * v_sm < 2**32``).
    """
    prod = p.to(I64) * v_sm.to(I64).unsqueeze(-2)
    return shift_round_sat(prod, v_se.to(I64).unsqueeze(-2) + P_FRAC - W_FRAC)


def attention_context(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``o = sat32((w @ v) >> (20 - 16))`` rounded: Q20 weights times INT8 values, ACT.

    Products are 40 bits, sums exact in int64.
    """
    return context_out(w.to(I64) @ v.to(I64))


def context_out(acc: torch.Tensor) -> torch.Tensor:
    """The ACT output of :func:`attention_context` from its exact sum ``w @ v`` (which
    may be accumulated over chunks of keys)."""
    return sat(shift_round(acc, W_FRAC - ACT_FRAC))


# -- linear layers with per-token activations ---------------------------------------------

class QLinear:
    """A quantized weight matrix as the datapath holds it: the record every backend reads.

    The quantizer (``compiler.passes.Quantize``) writes it, the golden model computes
    with ``q`` and ``scales`` alone, the compiler packs it into WGT tiles or the weight
    stream, and :func:`airfoil.folder.read_llm_model` reads the same values back.

    Parameters
    ----------
    q : torch.Tensor
        (rows, k) int64 weight values: the integer codes of INT formats, the value of the
        code for the BitMoD FP formats and OVP4 (:meth:`airfoil.format_registry.
        FormatSpec.values`); 0 where pruned. ``k`` is a multiple of ``group`` (the input
        is zero-padded up to it, see ``in_features``).
    scales : torch.Tensor
        (rows, k / group) float16 group scales.
    group, bits : int
        Weights per scale; the widest code in bits.
    formats : torch.Tensor, optional
        (rows, k / group) int64 record tag (:mod:`airfoil.format_registry`) of each
        group's format. None: every group ``int{bits}`` on WGT tiles (dense INT4/INT8);
        given, the layer is streamed through the decode unit.
    mask : torch.Tensor, optional
        (rows, k) bool: the weights pruning kept (None: all). ``q`` is 0 elsewhere.
    sparsity : str
        The pattern ``mask`` obeys and the stream records: ``dense``, an N:M pattern
        (``2:4``, ...) or ``block``.
    in_features : int, optional
        The layer's input width before padding to a whole group (default: ``k /
        input_copies``).
    input_copies : int
        How many copies of the input, side by side, the layer reads: ``q``'s columns are
        that many blocks of ``k / input_copies``, block ``c`` applied to copy ``c``, and
        the weight is the sum of the blocks. A GGUF ``Q4_1`` layer (``w = d q + m`` per
        block of 32) is two: codes ``q`` with scales ``d``, then codes 1 with scales ``m``
        (the offset times the block's sum of inputs). Copies are not padded: ``k /
        input_copies`` is ``in_features``.
    """

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, group: int, bits: int, *,
                 formats: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 sparsity: str = "dense", in_features: int | None = None,
                 input_copies: int = 1):
        self.q, self.scales, self.group, self.bits = q, scales, int(group), int(bits)
        self.formats, self.mask, self.sparsity = formats, mask, str(sparsity)
        self.input_copies = int(input_copies)
        width = q.shape[1] // self.input_copies
        self.in_features = int(width if in_features is None else in_features)
        if self.input_copies > 1 and (q.shape[1] % self.input_copies
                                      or self.in_features != width):
            raise ValueError(f"{self.input_copies} input copies of {self.in_features} "
                             f"inputs do not make {q.shape[1]} columns")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, k), k padded to a whole group."""
        return tuple(self.q.shape)

    @property
    def streamed(self) -> bool:
        """Whether the layer runs from the weight stream (a format per group, or sparse)."""
        return self.formats is not None

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        """The matrix ``q * scale`` (the fake-quantized weights; the blocks of the input
        copies summed), ``in_features`` columns, in ``dtype`` (float64: exact)."""
        s = self.scales.to(dtype).repeat_interleave(self.group, dim=1)
        w = self.q.to(dtype) * s
        rows, k = w.shape
        w = w.reshape(rows, self.input_copies, k // self.input_copies).sum(dim=1)
        return w[:, :self.in_features]


def linear(w: QLinear, x: torch.Tensor, sm: torch.Tensor, se: torch.Tensor,
           frac_out: int = ACT_FRAC) -> torch.Tensor:
    """A linear layer on INT8 per-token activations, output ACT (Q``frac_out``).

    ``x``: (T, k) INT8 with per-token scales ``sm * 2**-se`` (T,). The accumulator is
    exactly :mod:`airfoil.formats`' (group psums, FP16 scales as ``(m, k)``, rescale by
    ``k - k0``, 56-bit wrap) with ``k0`` the least exponent of the matrix; then
    :func:`requantize_rows` with :func:`linear_out_params`. The result does not depend
    on ``k0`` (a smaller ``k0`` scales ``acc`` and ``S`` alike) while ``S`` stays within
    ``0..REQ_S_MAX`` and the accumulator does not wrap. A layer of ``input_copies`` copies
    reads ``x`` that many times side by side (the program's XQ rows hold the copies).
    """
    from .formats import accumulate, fp16_fixed, group_psum, rescale
    if w.input_copies > 1:                  # the input side by side, once per block of q
        x = torch.cat([x] * w.input_copies, dim=-1)
    if x.shape[-1] < w.shape[1]:            # the zero columns padding k to a whole group
        x = torch.nn.functional.pad(x, (0, w.shape[1] - x.shape[-1]))
    m, k = fp16_fixed(w.scales)
    k0 = int(k.min())
    acc = accumulate(rescale(group_psum(w.q, x, w.group), m, k, k0))
    M, S = linear_out_params(sm, se, k0, frac_out)
    return requantize_rows(acc, M, S, ACT_BITS)


def linear_bias(b: torch.Tensor) -> torch.Tensor:
    """Compile time: a linear layer's bias as ACT (signed 32-bit Q16).

    The bias is added to the layer's ACT output with :func:`add`, not in the accumulator:
    the accumulator's unit holds the token's activation scale, so a bias there would
    differ per token.
    """
    return to_fixed(b, ACT_FRAC)


def embedding_table(w: torch.Tensor) -> torch.Tensor:
    """Compile time: an embedding table as ACT (signed 32-bit Q16) rows."""
    return to_fixed(w, ACT_FRAC)


def dequant_row(q: torch.Tensor, sm: torch.Tensor, se: torch.Tensor) -> torch.Tensor:
    """INT8 rows (last axis) with a scale ``sm * 2**-se`` per row back to ACT:
    ``sat32((q * sm) >> (se - 16))`` rounded (a left shift where ``se < 16``).

    The inverse of :func:`quant_per_token` up to its rounding; ``|q * sm| < 2**24``.
    """
    prod = q.to(I64) * sm.to(I64).unsqueeze(-1)
    return shift_round_sat(prod, se.to(I64).unsqueeze(-1) - ACT_FRAC)


def dequant_groups(q: torch.Tensor, sm: torch.Tensor, se: torch.Tensor,
                   group: int = 0) -> torch.Tensor:
    """Rows of ``n`` values (last axis) back to ACT with a scale pair per ``group`` values
    (``sm``, ``se``: ``(..., ceil(n / group))``; the last group may be shorter):
    :func:`dequant_row` of each group. ``group = 0``: one pair per row (``sm``, ``se``:
    the row shape), :func:`dequant_row` itself."""
    if not group:
        return dequant_row(q, sm, se)
    n = q.shape[-1]
    pairs = sm.shape[-1]
    qp = torch.nn.functional.pad(q.to(I64), (0, pairs * group - n))
    y = dequant_row(qp.reshape(*q.shape[:-1], pairs, group), sm, se)
    return y.reshape(*q.shape[:-1], pairs * group)[..., :n]


def record_value_bits(group: int) -> int:
    """Bits of a record's value for a ``DEQUANT_ROW`` group field (0: INT8 per row)."""
    return 4 if group else 8


def dequant_record_layout(n: int, group: int = 0) -> tuple[int, int]:
    """``(scale_offset, pairs)`` of a ``DEQUANT_ROW`` record of ``n`` values: the values
    (INT8, or with ``group`` INT4 two a byte, the even element in the low nibble) padded
    to 8 bytes, then ``pairs`` scale pairs of int32 ``sm, se`` (one, or one per
    ``group`` values)."""
    value_bytes = -(-n * record_value_bits(group) // 8)
    return -(-value_bytes // 8) * 8, (-(-n // group) if group else 1)


def dequant_record_bytes(n: int, group: int = 0) -> int:
    """Bytes of a ``DEQUANT_ROW`` record, its scale pairs included (the stride of records
    back to back)."""
    off, pairs = dequant_record_layout(n, group)
    return off + 8 * pairs


def encode_records(q: torch.Tensor, sm: torch.Tensor, se: torch.Tensor, group: int = 0,
                   stride: int | None = None):
    """The records (rows, ``stride``) uint8 numpy array of rows ``q`` (rows, n) and their
    scale pairs (``(rows,)`` or ``(rows, pairs)``), laid out as
    :func:`dequant_record_layout`; ``stride`` (default: the record's bytes) pads."""
    import numpy as np
    rows, n = q.shape
    off, pairs = dequant_record_layout(n, group)
    out = np.zeros((rows, stride or off + 8 * pairs), dtype=np.uint8)
    v = q.to(I64).numpy()
    if group:
        v = np.pad(v & 0xF, ((0, 0), (0, n % 2)))
        out[:, :(n + 1) // 2] = (v[:, 0::2] | (v[:, 1::2] << 4)).astype(np.uint8)
    else:
        out[:, :n] = v.astype(np.int8).view(np.uint8)
    pair = np.stack([sm.reshape(rows, pairs).numpy(), se.reshape(rows, pairs).numpy()],
                    axis=-1).astype("<i4")
    out[:, off:off + 8 * pairs] = pair.reshape(rows, 2 * pairs).view(np.uint8)
    return out


def decode_records(raw, n: int, group: int = 0):
    """``(q, sm, se)`` int64 tensors of records ``raw`` ((rows, >= record bytes) uint8,
    :func:`encode_records`' layout); ``sm``, ``se`` are ``(rows,)`` when ``group`` is 0,
    else ``(rows, pairs)``."""
    import numpy as np
    raw = np.ascontiguousarray(raw)
    rows = raw.shape[0]
    off, pairs = dequant_record_layout(n, group)
    if group:
        b = raw[:, :(n + 1) // 2].astype(np.int64)
        v = np.stack([b & 0xF, b >> 4], axis=-1).reshape(rows, -1)[:, :n]
        v = np.where(v >= 8, v - 16, v)
    else:
        v = raw[:, :n].copy().view(np.int8).astype(np.int64)
    sc = raw[:, off:off + 8 * pairs].copy().view("<i4").astype(np.int64).reshape(rows, pairs, 2)
    sm, se = sc[..., 0], sc[..., 1]
    if not group:
        sm, se = sm[:, 0], se[:, 0]
    return (torch.from_numpy(v), torch.from_numpy(np.ascontiguousarray(sm)),
            torch.from_numpy(np.ascontiguousarray(se)))


#: Embedding rows quantized at a time (bounds the int64 temporaries of a large table).
_EMBED_BLOCK = 4096
#: An embedding's precisions: INT8 with a scale per row (``group`` 0), or INT4 with a
#: scale per group of 128 or 32 values.
EMBED_GROUPS = (0, 128, 32)


class QEmbedding:
    """An embedding table stored as integer rows with scales (the memory image's
    records, the SFU's ``DEQUANT_ROW`` operands): INT8 with a scale per row, or INT4 with
    a scale per ``group`` values.

    Row ``r`` is :func:`quant_per_token` of the ACT row :func:`embedding_table` gives
    (``q[r]``, ``sm[r]``, ``se[r]``), or with a ``group`` the same onto INT4 per group of
    the row; a token's activation is :func:`dequant_groups` of its row, so the golden
    model, the compiler's image and every backend read one set of values.

    Parameters
    ----------
    q : torch.Tensor
        (vocab, d) values (INT8, or INT4 with a ``group``).
    sm, se : torch.Tensor
        (vocab,) int64 scale mantissas and exponents, (vocab, ceil(d / group)) with a
        ``group``.
    group : int
        0 (INT8, a scale per row) or the values per scale of INT4 rows.
    """

    def __init__(self, q: torch.Tensor, sm: torch.Tensor, se: torch.Tensor, group: int = 0):
        self.group = int(group)
        self.q = q.to(torch.int8)
        self.sm, self.se = sm.to(I64), se.to(I64)

    @classmethod
    def from_table(cls, act: torch.Tensor, group: int = 0) -> "QEmbedding":
        """Quantize an ACT table (vocab, d) row by row (INT8), or group by group (INT4)."""
        parts = [_quant_embed(act[r:r + _EMBED_BLOCK], group)
                 for r in range(0, act.shape[0], _EMBED_BLOCK)]
        return cls(*(torch.cat([p[i] for p in parts]) for i in range(3)), group=group)

    @property
    def shape(self) -> tuple[int, int]:
        """(vocab, d)."""
        return tuple(self.q.shape)

    @property
    def bits(self) -> int:
        """Bits of a value: 8, or 4 with groups."""
        return record_value_bits(self.group)

    @property
    def record_bytes(self) -> int:
        """Bytes of one row's record (:func:`dequant_record_bytes`)."""
        return dequant_record_bytes(self.shape[1], self.group)

    def records(self, start: int, stop: int):
        """``(q, sm, se)`` of rows ``start .. stop - 1`` (``q`` int64)."""
        return self.q[start:stop].to(I64), self.sm[start:stop], self.se[start:stop]

    def record_array(self, start: int, stop: int, stride: int | None = None):
        """Rows ``start .. stop - 1`` as memory records (:func:`encode_records`)."""
        return encode_records(*self.records(start, stop), self.group, stride)

    @classmethod
    def from_records(cls, raw, d: int, group: int = 0) -> "QEmbedding":
        """The table of memory records ``raw`` (vocab, >= record bytes) uint8."""
        return cls(*decode_records(raw, d, group), group=group)

    def lookup(self, tokens: torch.Tensor) -> torch.Tensor:
        """ACT rows of the token ids ``tokens`` (:func:`dequant_groups`)."""
        return dequant_groups(self.q[tokens].to(I64), self.sm[tokens], self.se[tokens],
                              self.group)

    def __eq__(self, other) -> bool:
        return (isinstance(other, QEmbedding) and self.group == other.group
                and torch.equal(self.q, other.q)
                and torch.equal(self.sm, other.sm) and torch.equal(self.se, other.se))

    __hash__ = None


def _quant_embed(act: torch.Tensor, group: int):
    """``(q, sm, se)`` of ACT rows: :func:`quant_per_token` (group 0), or INT4 per group."""
    if not group:
        return quant_per_token(act)
    n = act.shape[-1]
    pairs = -(-n // group)
    a = torch.nn.functional.pad(act.to(I64), (0, pairs * group - n))
    q, sm, se = _quant_rows(a.reshape(*act.shape[:-1], pairs, group), 4, ACT_FRAC)
    return q.reshape(*act.shape[:-1], pairs * group)[..., :n], sm, se


# -- attention with an INT8 KV cache ------------------------------------------------------

class KVCacheInt:
    """One layer's INT8 key/value cache with a scale per (kv head, position).

    Members
    -------
    k, v : torch.Tensor
        (kv_heads, length, head_dim) INT8 values (int64 tensors).
    k_sm, k_se, v_sm, v_se : torch.Tensor
        (kv_heads, length) scale mantissas and exponents (:func:`quant_per_token`).
    """

    def __init__(self, kv_heads: int, head_dim: int):
        e = torch.zeros((kv_heads, 0, head_dim), dtype=I64)
        z = torch.zeros((kv_heads, 0), dtype=I64)
        self.k, self.v = e, e.clone()
        self.k_sm, self.k_se, self.v_sm, self.v_se = z, z.clone(), z.clone(), z.clone()

    @property
    def length(self) -> int:
        """Positions held."""
        return self.k.shape[1]

    def append(self, k: torch.Tensor, v: torch.Tensor):
        """Quantize ACT keys and values (kv_heads, T, head_dim) per row and append them."""
        kq, ksm, kse = quant_per_token(k)
        vq, vsm, vse = quant_per_token(v)
        cat = lambda a, b: torch.cat([a, b], dim=1)
        self.k, self.k_sm, self.k_se = cat(self.k, kq), cat(self.k_sm, ksm), cat(self.k_se, kse)
        self.v, self.v_sm, self.v_se = cat(self.v, vq), cat(self.v_sm, vsm), cat(self.v_se, vse)


def attention_mask(start: int, T: int, S: int, window: int = 0, causal: bool = True
                   ) -> torch.Tensor:
    """(T, S) bool, True = excluded: query ``t`` (position ``start + t``) sees the keys at
    most its position and, with a ``window`` (0: none), later than ``position - window``.
    Not ``causal`` (an encoder's bidirectional attention): every query sees all ``S`` keys
    (a window is then ignored)."""
    if not causal:
        return torch.zeros((T, S), dtype=torch.bool)
    qpos = torch.arange(start, start + T).unsqueeze(1)
    key = torch.arange(S).unsqueeze(0)
    mask = key > qpos
    if window:
        mask = mask | (key <= qpos - window)
    return mask


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCacheInt,
              heads: int, kv_heads: int, head_dim: int, window: int = 0,
              causal: bool = True) -> torch.Tensor:
    """Causal grouped-query attention of T new positions after ``cache.length`` cached ones.

    ``window`` (0: none) limits each query at position ``p`` to the keys ``p - window + 1
    .. p`` (Mistral's sliding window: :func:`attention_mask`); not ``causal`` (an
    encoder), every query sees every key in the cache.

    ``q``: (T, heads * head_dim) ACT after RoPE (1/sqrt(head_dim) folded in); ``k``,
    ``v``: (T, kv_heads * head_dim) ACT (``k`` after RoPE). Keys and values are
    quantized into the cache (:meth:`KVCacheInt.append`); queries are quantized per
    (position, head); query head ``h`` reads kv head ``h // (heads / kv_heads)``. Then
    :func:`attention_scores`, :func:`softmax` under the causal mask,
    :func:`attention_weights`, :func:`attention_context`. Returns (T, heads * head_dim)
    ACT.
    """
    T = q.shape[0]
    start = cache.length
    cache.append(k.reshape(T, kv_heads, head_dim).transpose(0, 1),
                 v.reshape(T, kv_heads, head_dim).transpose(0, 1))
    g = heads // kv_heads
    qh = q.reshape(T, kv_heads, g, head_dim).permute(1, 2, 0, 3)      # (kv, g, T, d)
    qq, q_sm, q_se = quant_per_token(qh)
    S = cache.length
    sc = attention_scores(qq, q_sm, q_se, cache.k.unsqueeze(1), cache.k_sm.unsqueeze(1),
                          cache.k_se.unsqueeze(1))                      # (kv, g, T, S)
    p = softmax(sc, attention_mask(start, T, S, window, causal))
    w = attention_weights(p, cache.v_sm.unsqueeze(1), cache.v_se.unsqueeze(1))
    o = attention_context(w, cache.v.unsqueeze(1))                     # (kv, g, T, d)
    return o.permute(2, 0, 1, 3).reshape(T, heads * head_dim)


# -- choosing the next token --------------------------------------------------------------

#: Fractional bits and width of the inverse temperature ``1 / T`` of :func:`topk_sample`.
INV_TEMP_FRAC = 16
INV_TEMP_BITS = 24
#: Odd constant (2**32 / golden ratio) spreading positions over the PRNG's seeds.
_SEED_MIX = 0x9E3779B9
#: The xorshift32 state taken for a mixed seed of 0 (a state xorshift never leaves).
_SEED_ZERO = 0x6D2B79F5
_M32 = 0xFFFFFFFF


def inv_temperature(t: float) -> int:
    """Compile or run time: ``1 / t`` as an unsigned Q16 of :data:`INV_TEMP_BITS` bits
    (rounded; at least 1); ValueError for a temperature it cannot hold."""
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive number, not {t!r}")
    v = round(2 ** INV_TEMP_FRAC / t)
    if not 1 <= v < 1 << INV_TEMP_BITS:
        lo = 2 ** INV_TEMP_FRAC / ((1 << INV_TEMP_BITS) - 1)
        raise ValueError(f"temperature {t} is outside {lo:.6f} .. {2 ** (INV_TEMP_FRAC + 1)}")
    return v


def sample_uniform(seed: int, position: int) -> int:
    """The 16-bit uniform draw of the token at ``position`` of a run seeded ``seed``.

    ``x = seed ^ (position * 0x9E3779B9)`` (mod ``2**32``; 0 becomes ``0x6D2B79F5``), then
    three xorshift32 steps (``x ^= x << 13; x ^= x >> 17; x ^= x << 5``); the top 16
    bits. A draw depends only on the seed and the position, so every backend (and a
    prompt split into several runs) draws the same.
    """
    x = (int(seed) ^ (int(position) * _SEED_MIX)) & _M32
    x = x or _SEED_ZERO
    for _ in range(3):
        x ^= (x << 13) & _M32
        x ^= x >> 17
        x ^= (x << 5) & _M32
    return x >> 16


def topk_sample(logits: torch.Tensor, k: int, inv_t: int, u) -> torch.Tensor:
    """Token ids drawn from the ``k`` largest ACT logits of each row (last axis).

    The candidates are the ``min(k, n)`` largest logits, in descending order, equal
    logits by ascending index; with ``m`` the largest, candidate ``j`` weighs ``w_j =
    exp_neg(sat32(((m - l_j) * inv_t) >> 16))`` rounded (``inv_t`` = ``1 / T`` in Q16, so
    ``w_0 = 2**15``); with ``W = sum w_j`` and the row's 16-bit draw ``u``, the pick is
    the first candidate whose running sum of weights exceeds ``(u * W) >> 16``. ``k = 1``
    is the argmax, the lowest index among equal maxima. ``u`` is an int or (rows,) tensor.
    """
    l = logits.to(I64)
    rows = l.reshape(-1, l.shape[-1])
    kk = min(int(k), rows.shape[-1])
    order = torch.sort(-rows, dim=-1, stable=True).indices[:, :kk]
    top = torch.gather(rows, 1, order)
    d = sat(shift_round((top[:, :1] - top) * int(inv_t), INV_TEMP_FRAC))
    cum = torch.cumsum(exp_neg(d), dim=-1)
    u = torch.as_tensor(u, dtype=I64).reshape(-1).expand(rows.shape[0])
    thr = (u * cum[:, -1]) >> 16
    pick = (cum <= thr.unsqueeze(-1)).sum(dim=-1)
    return order.gather(1, pick.unsqueeze(-1)).reshape(l.shape[:-1])


#: Bytes of the sampling block ``TOPK_SAMPLE`` reads (:meth:`Sampling.block`).
SAMPLING_BLOCK_BYTES = 16


@dataclass(frozen=True)
class Sampling:
    """How a run chooses its next tokens: :func:`topk_sample` of the ``k`` largest logits
    at ``temperature``, drawn with :func:`sample_uniform` from the low 32 bits of
    ``seed``; the default ``k = 1`` is greedy (the argmax). ValueError for a ``k`` outside
    ``1 .. TOPK_MAX`` or a temperature :func:`inv_temperature` cannot hold."""

    k: int = 1
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if (not isinstance(self.k, int) or isinstance(self.k, bool)
                or not 1 <= self.k <= TOPK_MAX):
            raise ValueError(f"top-k must be an integer in 1..{TOPK_MAX}, not {self.k!r}")
        inv_temperature(self.temperature)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, not {self.seed!r}")

    @property
    def inv_t(self) -> int:
        """The inverse temperature, unsigned Q16."""
        return inv_temperature(self.temperature)

    def block(self) -> bytes:
        """The :data:`SAMPLING_BLOCK_BYTES` the host writes for ``TOPK_SAMPLE``: ``k``,
        the inverse temperature and the seed as little-endian 32-bit words, then 0."""
        return struct.pack("<4I", self.k, self.inv_t, self.seed & _M32, 0)

    def choose(self, logits: torch.Tensor, position: int) -> int:
        """The token drawn from a 1-D row of ACT logits, those of the token at
        ``position``."""
        u = sample_uniform(self.seed, position)
        return int(topk_sample(logits.reshape(1, -1), self.k, self.inv_t, u)[0])
