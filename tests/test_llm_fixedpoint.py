"""airfoil.fixedpoint: each special function against float, with stated tolerances.

Tolerances are in units of the output's least significant bit (LSB) or relative, and come
from the documented table/Newton error bounds plus the rounding of the output.
"""

import math

import pytest
import torch

from airfoil import fixedpoint as fx
from airfoil import formats


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed", [0, 1])
def test_bit_length_matches_python(seed):
    x = torch.randint(0, 1 << 62, (2000,), generator=_gen(seed))
    x[:64] = torch.arange(64)
    want = torch.tensor([int(v).bit_length() for v in x.tolist()])
    assert torch.equal(fx.bit_length(x), want)


def test_shift_round_is_round_half_up():
    x = torch.arange(-20, 21)
    got = fx.shift_round(x, 2)
    want = torch.tensor([math.floor(v / 4 + 0.5) for v in x.tolist()])
    assert torch.equal(got, want)
    assert torch.equal(fx.shift_round(x, -3), x * 8)
    s = torch.tensor([2, -1, 0] * 13 + [2, 2])
    assert torch.equal(fx.shift_round(x, s), torch.where(s == 2, want, torch.where(
        s == -1, x * 2, x)))


@pytest.mark.parametrize("seed", [0, 1])
def test_recip_and_rsqrt_relative_error(seed):
    # Documented bound: relative error < 2**-14 (normalisation truncation < 2**-15 plus
    # one Newton step from an 8-bit table, < 2**-16).
    a = torch.randint(1, 1 << 50, (20000,), generator=_gen(seed))
    a = torch.cat([a, torch.arange(1, 3000), torch.tensor([1 << 15, (1 << 16) - 1])])
    m, e = fx.recip(a)
    assert int(m.min()) >= 1 << 15 and int(m.max()) < 1 << 16
    r = m.double() * torch.pow(2.0, -e.double()) * a.double()
    assert float((r - 1).abs().max()) < 2 ** -14
    m, e = fx.rsqrt(a)
    assert int(m.min()) >= 1 << 15 and int(m.max()) < 1 << 16
    r = m.double() * torch.pow(2.0, -e.double()) * a.double().sqrt()
    assert float((r - 1).abs().max()) < 2 ** -14


def test_exp_and_sigmoid_tables():
    d = torch.arange(0, 24 << 16, 977)
    y = fx.exp_neg(d)
    # exp: <= 2 LSB of Q15 (table rounding 0.5, interpolation < 0.25, the log2(e) product
    # rounding < 0.5 LSB of the argument).
    assert float((y.double() / 2 ** 15 - torch.exp(-d.double() / 2 ** 16)).abs().max()) \
        <= 2 * 2 ** -15
    x = torch.arange(-40 << 16, 40 << 16, 1231)
    s = fx.sigmoid(x)
    # sigmoid: <= 2.5 LSB of Q15 (interpolation over steps of 1/16: h**2/8 * max|s''| =
    # 1.5 LSB, table and product rounding 1 LSB; clamping beyond +-16 costs < 0.01 LSB).
    assert float((s.double() / 2 ** 15 - torch.sigmoid(x.double() / 2 ** 16)).abs().max()) \
        <= 2.5 * 2 ** -15
    # silu(x) = x * sigmoid(x): error <= |x| * 2.5 LSB(Q15) + 0.5 LSB(Q16).
    y = fx.silu(x)
    ref = torch.nn.functional.silu(x.double() / 2 ** 16)
    bound = x.double().abs() / 2 ** 16 * 2.5 * 2 ** -15 + 2 ** -17
    assert bool(((fx.from_fixed(y) - ref).abs() <= bound + 1e-12).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_softmax_against_float(seed):
    s = torch.randn(6, 40, generator=_gen(seed)) * 4
    mask = torch.zeros(6, 40, dtype=torch.bool)
    mask[2, 5:] = True
    p = fx.softmax(fx.to_fixed(s), mask)
    ref = s.double().masked_fill(mask, float("-inf")).softmax(-1)
    # Each exp is within 2 LSB (Q15) and the reciprocal within 2**-14 relative; a
    # probability is then within 4 LSB of Q15.
    assert float((p.double() / 2 ** 15 - ref).abs().max()) <= 4 * 2 ** -15
    assert bool((p[mask] == 0).all())


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scale", [1e-2, 1.0, 300.0])
def test_rmsnorm_against_float(seed, scale):
    n = 96
    x = torch.randn(4, n, generator=_gen(seed)) * scale
    w = torch.rand(n, generator=_gen(seed + 7)) + 0.5
    xf, wf = fx.to_fixed(x), fx.rmsnorm_weight(w)
    y = fx.rmsnorm(xf, wf, 1e-5)
    # The reference takes the same fixed-point input and gain, so only the function's
    # error counts: 15-bit block-normalised input (2**-15 relative to max|x|), rsqrt
    # 2**-14 relative; the output |y| <= sqrt(n) * max(w), so bound 4e-4 * sqrt(n).
    xr, wr = fx.from_fixed(xf), fx.from_fixed(wf)
    ref = xr / torch.sqrt((xr * xr).mean(-1, keepdim=True) + 1e-5) * wr
    assert float((fx.from_fixed(y) - ref).abs().max()) <= 4e-4 * math.sqrt(n)


def test_rope_against_float():
    x = torch.randn(3, 5, 16, generator=_gen(3)) * 5
    cos, sin = fx.rope_table(16, 10000.0, 5)
    y = fx.rope(fx.to_fixed(x), cos, sin)
    from compiler.reference import apply_rope, rope_tables
    c, s = rope_tables(16, 10000.0, torch.arange(5))
    ref = apply_rope(fx.from_fixed(fx.to_fixed(x)), c, s)
    # Q14 table entries are within 2**-15 each; |y error| <= (|x1| + |x2|) * 2**-15 + LSB.
    assert float((fx.from_fixed(y) - ref).abs().max()) <= 2 * 15 * 2 ** -15 + 2 ** -16


@pytest.mark.parametrize("seed", [0, 1])
def test_quant_per_token(seed):
    v = torch.randn(8, 64, generator=_gen(seed)) * torch.logspace(-2, 3, 8).unsqueeze(1)
    vf = fx.to_fixed(v)
    x, sm, se = fx.quant_per_token(vf)
    assert int(x.abs().max()) <= 127 and bool((x.abs().amax(-1) >= 126).all())
    assert bool(((sm >= 1 << 15) & (sm < 1 << 16)).all())
    scale = fx.token_scale_value(sm, se)
    vr = fx.from_fixed(vf)
    ref_scale = vr.abs().amax(-1) / 127
    # The scale is amax/127 to 2**-15 relative; each element within half a step plus the
    # reciprocal's 2**-14 relative error of 127 steps.
    assert float(((scale - ref_scale) / ref_scale).abs().max()) < 2 ** -15
    err = (x.double() * scale.unsqueeze(1) - vr).abs() / scale.unsqueeze(1)
    assert float(err.max()) <= 0.5 + 127 * 2 ** -14
    z, zsm, _ = fx.quant_per_token(torch.zeros(2, 5, dtype=torch.int64))
    assert bool((z == 0).all()) and bool((zsm > 0).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_requantize_rows_equals_formats(seed):
    g = _gen(seed)
    acc = formats.wrap(torch.randint(-(1 << 62), 1 << 62, (60, 9), generator=g))
    acc[:, :4] = acc[:, :4] >> 30
    M = torch.randint(1 << 15, 1 << 16, (60,), generator=g)
    S = torch.randint(0, 128, (60,), generator=g)
    S[:24] = torch.arange(24)
    M[5] = 0
    got = fx.requantize_rows(acc, M, S, 32)
    for i in range(60):
        assert torch.equal(got[i], formats.requantize(acc[i], int(M[i]), int(S[i]), 32)), i


@pytest.mark.parametrize("seed", [0, 1])
def test_linear_against_float(seed):
    g = _gen(seed)
    w = torch.randn(24, 64, generator=g) * 0.1
    q, s = formats.quantize_weights(w, 4, 32)
    ql = fx.QLinear(q, s, 32, 4)
    v = torch.randn(5, 64, generator=g)
    x, sm, se = fx.quant_per_token(fx.to_fixed(v))
    y = fx.linear(ql, x, sm, se)
    ref = (x.double() * fx.token_scale_value(sm, se).unsqueeze(1)) @ \
        ql.dequantize().double().t()
    # Exact integer accumulation; only the 16-bit multiplier (2**-16 relative) and the
    # output rounding (half an LSB of Q16) differ.
    bound = ref.abs() * 2 ** -15 + 2 ** -16
    assert bool(((fx.from_fixed(y) - ref).abs() <= bound).all())


def test_attention_kv_cache_prefill_equals_decode():
    g = _gen(5)
    T, H, KV, d = 6, 4, 2, 8
    q = fx.to_fixed(torch.randn(T, H * d, generator=g))
    k = fx.to_fixed(torch.randn(T, KV * d, generator=g))
    v = fx.to_fixed(torch.randn(T, KV * d, generator=g))
    full = fx.attention(q, k, v, fx.KVCacheInt(KV, d), H, KV, d)
    c = fx.KVCacheInt(KV, d)
    parts = [fx.attention(q[:4], k[:4], v[:4], c, H, KV, d)]
    for t in (4, 5):
        parts.append(fx.attention(q[t:t + 1], k[t:t + 1], v[t:t + 1], c, H, KV, d))
    assert torch.equal(torch.cat(parts), full)
    # Float attention on the same inputs (scale 1: folded by the compiler): the INT8
    # queries, keys and values cost up to ~2 % of the output range.
    qf, kf, vf = (fx.from_fixed(t) for t in (q, k, v))
    qh = qf.view(T, H, d).transpose(0, 1)
    kh = kf.view(T, KV, d).transpose(0, 1).repeat_interleave(H // KV, 0)
    vh = vf.view(T, KV, d).transpose(0, 1).repeat_interleave(H // KV, 0)
    att = (qh @ kh.transpose(1, 2)).masked_fill(
        torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    ref = (att @ vh).transpose(0, 1).reshape(T, H * d)
    assert float((fx.from_fixed(full) - ref).abs().max()) <= 0.02 * float(vf.abs().max())
