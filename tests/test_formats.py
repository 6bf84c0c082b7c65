"""The datapath arithmetic of airfoil.formats against plain Python integers."""

import random

import numpy as np
import pytest
import torch

from airfoil.errors import CompileError
from airfoil.formats import (ACC_BITS, SCALE_SHIFT_MAX, fp16_fixed, pack_int, pack_tile,
                             quantize_weights, requant_params, requantize, tile_layout,
                             unpack_int, unpack_tile, linear_reference, qmax)
from airfoil.isa import WeightFormat


def test_fp16_fixed_is_exact_for_every_positive_finite_value():
    h = torch.arange(0, 0x7C00, dtype=torch.int64).to(torch.int16).view(torch.float16)
    m, k = fp16_fixed(h)
    assert torch.equal(m.double() * torch.pow(2.0, k.double()), h.double())
    assert int(m.max()) < 1 << 11 and int(k.min()) == -24 and int(k.max()) == 5


def test_fp16_fixed_is_exact_for_every_negative_finite_value():
    h = torch.arange(0x8000, 0xFC00, dtype=torch.int64).to(torch.int16).view(torch.float16)
    m, k = fp16_fixed(h)
    assert torch.equal(m.double() * torch.pow(2.0, k.double()), h.double())
    assert int(m.min()) == -2047 and int(m.max()) == 0


def test_fp16_fixed_rejects_inf_and_nan():
    for v in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(CompileError, match="infinite"):
            fp16_fixed(torch.tensor([v], dtype=torch.float16))


def _ref_requant(acc, M, S, bits):
    t = (acc * M + ((1 << (S - 1)) if S else 0)) >> S
    return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, t))


@pytest.mark.parametrize("seed", range(4))
def test_requantize_matches_unbounded_integers(seed):
    rng = random.Random(seed)
    accs, cases = [], []
    for _ in range(3000):
        acc = rng.choice([rng.randrange(-(1 << (ACC_BITS - 1)), 1 << (ACC_BITS - 1)),
                          rng.randrange(-10 ** 7, 10 ** 7), rng.randrange(-300, 300)])
        M, S = requant_params(rng.choice([10 ** rng.uniform(-30, 4), rng.random()]))
        bits = rng.choice([8, 16, 32])
        got = int(requantize(torch.tensor([acc]), M, S, bits)[0])
        assert got == _ref_requant(acc, M, S, bits), (acc, M, S, bits)


def test_requant_params_are_normalised_and_close():
    for r in [1e-12, 3.3e-5, 0.5, 1.0, 7.25, 4096.7]:
        M, S = requant_params(r)
        assert 1 << 15 <= M < 1 << 16
        assert abs(M * 2.0 ** -S - r) <= r * 2 ** -15
    assert requant_params(0.0) == (0, 0)
    with pytest.raises(CompileError, match="too large"):
        requant_params(1e6)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_round_trip(bits):
    rng = np.random.default_rng(bits)
    v = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=1001)
    raw = pack_int(v, bits)
    assert len(raw) == (1001 * bits + 7) // 8
    assert np.array_equal(unpack_int(raw, bits, 1001), v)
    with pytest.raises(CompileError):
        pack_int([1 << (bits - 1)], bits)


def test_pack_int4_nibble_order():
    assert pack_int([1, -1, 7, -8], 4) == bytes([0xF1, 0x87])


@pytest.mark.parametrize("bits, wfmt", [(4, WeightFormat.INT4), (8, WeightFormat.INT8)])
@pytest.mark.parametrize("group", [32, 128])
def test_quantizer_and_tile_round_trip(bits, wfmt, group):
    torch.manual_seed(group + bits)
    w = torch.randn(13, 3 * group) * torch.logspace(-3, 1, 13).unsqueeze(1)
    q, s = quantize_weights(w, bits, group)
    assert int(q.abs().max()) <= qmax(bits)
    m, k = fp16_fixed(s)
    assert int(k.max() - k.min()) <= SCALE_SHIFT_MAX
    err = (q.double() * s.double().repeat_interleave(group, 1) - w.double()).abs()
    assert float((err - s.double().repeat_interleave(group, 1) / 2).max()) <= 1e-6
    lay = tile_layout(rows=13, k=3 * group, group=group, wfmt=wfmt, chains=4, lanes=8,
                      bias=True, align=16)
    bias = torch.randint(-1000, 1000, (13,))
    raw = pack_tile(lay, q, s, bias)
    assert len(raw) == lay.nbytes and lay.nbytes % 16 == 0
    q2, s2, b2 = unpack_tile(lay, raw)
    assert torch.equal(q, q2) and torch.equal(b2, bias)
    assert torch.equal(s.view(torch.int16), s2.view(torch.int16))


def test_quantizer_rejects_ragged_k():
    with pytest.raises(CompileError, match="not a multiple of the group size"):
        quantize_weights(torch.randn(4, 100), 4, 32)


def test_linear_reference_against_python_integers():
    rng = random.Random(5)
    torch.manual_seed(5)
    w = torch.randn(7, 64)
    q, s = quantize_weights(w, 4, 32)
    x = torch.randint(-127, 128, (64,))
    m, k = fp16_fixed(s)
    k0 = int(k.min())
    M, S = requant_params(0.013)
    out = linear_reference(q, s, x, 32, k0, M, S, 8)
    for r in range(7):
        acc = 0
        for g in range(2):
            ps = sum(int(q[r, i]) * int(x[i]) for i in range(32 * g, 32 * g + 32))
            acc += ps * int(m[r, g]) << (int(k[r, g]) - k0)
        assert int(out[r]) == _ref_requant(acc, M, S, 8)


def test_tile_bias_starts_where_the_matrix_unit_reads_it():
    """The bias section of a tile starts at a multiple of the memory word and of
    ``4 * chains`` bytes (one int32 per chain per read); configs whose word is narrower
    than that (8 chains, 16-byte words) had it at a word only, which the core refused."""
    from airfoil.formats import tile_layout
    rng = random.Random(3)
    for _ in range(200):
        chains, lanes = rng.choice([4, 8, 16, 128]), rng.choice([8, 32])
        group = lanes * rng.choice([1, 2, 4])
        align = rng.choice([16, 64])
        lay = tile_layout(rows=rng.randint(1, 3 * chains), k=group * rng.randint(1, 4),
                          group=group, wfmt=rng.choice([WeightFormat.INT4, WeightFormat.INT8]),
                          chains=chains, lanes=lanes, bias=True, align=align)
        assert lay.bias_offset % align == 0 and lay.bias_offset % (4 * chains) == 0
        assert lay.bias_offset >= lay.scale_offset + lay.scale_bytes
        assert lay.nbytes % align == 0 and lay.nbytes >= lay.bias_offset + lay.bias_bytes
