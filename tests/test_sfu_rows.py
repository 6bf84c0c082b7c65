"""The SFU's embedding and head functions: ``DEQUANT_ROW`` (the INT8 embedding rows back
to ACT) bit-exact in its kernel, the unit and the ISA simulator against
airfoil.fixedpoint, with its cycle formula (amaranth.sim)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from airfoil import fixedpoint as fx
from airfoil.config import load_config
from airfoil.isa import Buffer, ErrorCode, SfuFunc
from hdl.sfu import dequant
from hdl.sfu.dequant import DequantRowKernel
from hdl.sfu.unit import unit_cycles
from test_sfu import SIZES, _b, _i32, _ints, _run_both, _sfu, kernel_args, run_kernel


def _records(q, sm, se, stride, group=0) -> bytearray:
    """Records of the rows of ``q`` with their scale pairs, ``stride`` bytes apart."""
    return bytearray(fx.encode_records(torch.as_tensor(q), torch.as_tensor(sm),
                                       torch.as_tensor(se), group, stride).tobytes())


def test_dequant_row_spec_inverts_quant_per_token():
    """quant_per_token then dequant_row comes back within half a step of the row's scale,
    and exactly for a row quant_per_token holds without rounding."""
    rng = np.random.default_rng(0)
    x = torch.tensor(_i32(rng, 6 * 37, shift_max=20)).reshape(6, 37)
    q, sm, se = fx.quant_per_token(x)
    y = fx.dequant_row(q, sm, se)
    step = fx.token_scale_value(sm, se) * 2.0 ** fx.ACT_FRAC
    err = (y - x).abs().to(torch.float64).amax(dim=-1)
    assert bool((err <= step * 0.51 + 1).all())
    exact = torch.tensor([[127 << 16, -(3 << 16), 0, 1 << 16]])
    qe, sme, see = fx.quant_per_token(exact)
    assert fx.dequant_row(qe, sme, see).tolist() == exact.tolist()


@pytest.mark.parametrize("n,rows,imm0,group,sa,seed", [
    (8, 2, 0, 0, 0, 1),        # records back to back
    (13, 3, 0, 0, 4, 2),       # odd length: padded values, the last word read in part
    (1, 2, 24, 0, 8, 3),       # one value a record, strided
    (37, 1, 0, 0, 0, 4),
    (13, 3, 0, 4, 4, 5),       # INT4, a scale pair per 4 values, the last group short
    (64, 2, 0, 32, 0, 6),      # INT4 g32, back to back
    (9, 2, 40, 16, 8, 7),      # INT4, one group a row, strided
])
def test_dequant_row_kernel(n, rows, imm0, group, sa, seed):
    rng = np.random.default_rng(seed)
    pairs = fx.dequant_record_layout(n, group)[1]
    lim = 8 if group else 128
    q = rng.integers(-lim, lim, size=(rows, n))
    q[0, 0], q[-1, -1] = -lim, lim - 1
    sm = rng.integers(1 << 15, 1 << 16, size=(rows, pairs))
    # Exponents from a saturating left shift (se < 16) to a right shift past every bit.
    se = rng.choice([-40, 3, 16, 22, 30, 47], size=(rows, pairs))
    if not group:
        sm, se = sm[:, 0], se[:, 0]
    stride = imm0 or dequant.record_stride(n, group)
    src = bytearray(sa) + _records(q, sm, se, stride, group)
    dst = bytearray(4 * rows * n + 8)
    args = kernel_args(func=SfuFunc.DEQUANT_ROW, n=n, rows=rows, src_addr=sa, dst_addr=8,
                       imm0=imm0, imm1=group)
    res = run_kernel(DequantRowKernel(), args, src, bytearray(4), dst)
    ref = fx.dequant_groups(torch.tensor(q), torch.tensor(sm), torch.tensor(se), group)
    assert _ints(dst[8:]).tolist() == ref.reshape(-1).tolist()
    assert res["cycles"] == dequant.cycles(args) and not res["err"]
    assert dequant.cycles(args) == rows * (n + 2 * pairs) + 2


def test_int4_embedding_records_round_trip():
    """An INT4 table (g32) quantizes each group onto -7..7, its records decode to it,
    and it comes back within half a step of each group's scale."""
    rng = np.random.default_rng(9)
    act = torch.tensor(_i32(rng, 5 * 70, shift_max=20)).reshape(5, 70)
    e = fx.QEmbedding.from_table(act, 32)
    assert e.sm.shape == (5, 3) and int(e.q.abs().max()) == 7
    assert fx.QEmbedding.from_records(e.record_array(0, 5), 70, 32) == e
    assert e.record_bytes == 40 + 3 * 8               # 35 value bytes padded to 40, 3 pairs
    step = (fx.token_scale_value(e.sm, e.se) * 2.0 ** fx.ACT_FRAC).repeat_interleave(32, 1)
    err = (e.lookup(torch.arange(5)) - act).abs().to(torch.float64)
    assert bool((err <= step[:, :70] * 0.51 + 1).all())


@pytest.mark.parametrize("word_bits", [128, 32])
def test_unit_dequant_row_matches_isa(word_bits):
    """Records in ACT (rows from a register) to ACT rows in OUT, unit and ISA simulator."""
    rng = np.random.default_rng(word_bits)
    bufs = {b: bytearray(s) for b, s in SIZES.items()}
    n, rows = 11, 3
    x = torch.tensor(_i32(rng, rows * n, shift_max=24)).reshape(rows, n)
    q, sm, se = fx.quant_per_token(x)
    bufs[Buffer.ACT][:3 * 24] = _records(q.numpy(), sm.numpy(), se.numpy(), 24)
    instrs = [_sfu(SfuFunc.DEQUANT_ROW, src=Buffer.ACT, dst=Buffer.OUT, n=n, rows_reg=1,
                   src_addr=0, dst_addr=4)]
    res, rtl, ref, ref_err = _run_both(instrs, bufs, [0, rows], word_bits=word_bits)
    assert ref_err is None and not res["err"]
    assert rtl == ref
    args = kernel_args(func=SfuFunc.DEQUANT_ROW, n=n, rows=rows)
    assert res["released"][0][0] - res["accepted"][0] + 1 == unit_cycles(args,
                                                                          word_bits=word_bits)
    assert _ints(rtl[Buffer.OUT][4:4 + 4 * rows * n]).tolist() == \
        fx.dequant_row(q, sm, se).reshape(-1).tolist()


# -- TOPK_SAMPLE -------------------------------------------------------------------------

def _sampling_block(k, inv_t, seed) -> bytearray:
    return _b([k, inv_t, seed], "<u4")


def test_topk_sample_spec():
    """k = 1 is the argmax with the lowest index among equal maxima; a draw near 0 takes
    the first candidate, near 1 the last; a low temperature keeps to the maxima."""
    l = torch.tensor([[5, 9, 9, 1, 9, -3], [2, 2, 2, 2, 2, 2]]) << 16
    assert fx.topk_sample(l, 1, 1 << 16, 65535).tolist() == [1, 0]
    assert fx.topk_sample(l, 3, 1 << 16, 0).tolist() == [1, 0]
    assert fx.topk_sample(l, 3, 1 << 16, 65535).tolist() == [4, 2]
    # The last candidate weighing more than 0 (exp(-12) rounds to 0 in Q15).
    assert fx.topk_sample(l, 6, 1 << 16, 65535).tolist() == [3, 5]
    # 1/T = 64: the 9s alone weigh anything; the fourth candidate (5) weighs 0.
    assert fx.topk_sample(l, 4, 64 << 16, 65535)[0] == 4
    # The draws: the same for a seed and position, spread over positions.
    u = [fx.sample_uniform(7, p) for p in range(64)]
    assert u == [fx.sample_uniform(7, p) for p in range(64)]
    assert len(set(u)) > 60 and 0 <= min(u) and max(u) < 1 << 16


@pytest.mark.parametrize("n,rows,k,temp,seed,pos,imm0", [
    (11, 2, 1, 1.0, 0, 0, 0),       # argmax
    (9, 3, 4, 0.5, 5, 7, 48),       # strided rows
    (5, 2, 8, 2.0, 3, 1, 0),        # k over n: every logit a candidate
    (40, 1, 64, 1.0, 11, 30, 0),    # every candidate register
])
def test_topk_sample_kernel(n, rows, k, temp, seed, pos, imm0):
    """Bit-exact to topk_sample with ties (logits drawn from a few values)."""
    from hdl.sfu import sample
    from hdl.sfu.sample import TopkSampleKernel
    rng = np.random.default_rng(seed + n)
    stride = imm0 or 4 * n
    logits = rng.integers(-3, 4, size=(rows, n)) << rng.integers(10, 18)
    logits[0, 0] = (1 << 31) - 1 if k > 1 else logits[0, 0]
    src = bytearray(stride * rows)
    for r in range(rows):
        src[r * stride:r * stride + 4 * n] = _b(logits[r])
    inv_t = fx.inv_temperature(temp)
    aux = bytearray(4) + _sampling_block(k, inv_t, seed)
    dst = bytearray(4 * rows + 4)
    args = kernel_args(func=SfuFunc.TOPK_SAMPLE, n=n, rows=rows, src_addr=0, aux_addr=4,
                       dst_addr=4, imm0=imm0, pos=pos)
    res = run_kernel(TopkSampleKernel(), args, src, aux, dst)
    u = [fx.sample_uniform(seed, pos + r) for r in range(rows)]
    want = fx.topk_sample(torch.tensor(logits), k, inv_t, u)
    assert _ints(dst[4:]).tolist() == want.tolist()
    assert res["cycles"] == sample.cycles(args) and not res["err"]


@pytest.mark.parametrize("k,inv_t", [(0, 1 << 16), (fx.TOPK_MAX + 1, 1 << 16), (3, 0),
                                     (3, 1 << fx.INV_TEMP_BITS)])
def test_topk_sample_refuses_its_block(k, inv_t):
    from hdl.sfu.sample import TopkSampleKernel
    args = kernel_args(func=SfuFunc.TOPK_SAMPLE, n=4, rows=1)
    block = _sampling_block(k, inv_t, 1)
    res = run_kernel(TopkSampleKernel(), args, _b([1, 2, 3, 4]), block, bytearray(4))
    assert res["err"] and res["err_code"] == ErrorCode.MALFORMED


def _topk_on_unit_and_isa(k: int, *, n: int, rows: int, scale: int, temp: float,
                          seed: int, pos: int, config=None, kernels=None):
    """TOPK_SAMPLE over ``rows`` random logit rows in OUT (rows and position from
    registers), the block in AUX, the token ids to AUX: the unit and the ISA simulator."""
    rng = np.random.default_rng(k)
    bufs = {b: bytearray(s) for b, s in SIZES.items()}
    bufs[Buffer.OUT][:4 * n * rows] = _b(rng.integers(-scale, scale, size=n * rows)
                                         << (18 - scale))
    bufs[Buffer.AUX][16:28] = _sampling_block(k, fx.inv_temperature(temp), seed)
    instrs = [_sfu(SfuFunc.TOPK_SAMPLE, src=Buffer.OUT, dst=Buffer.AUX, aux=Buffer.AUX, n=n,
                   rows_reg=1, pos_reg=2, src_addr=0, dst_addr=64, aux_addr=16)]
    return _run_both(instrs, bufs, [0, rows, pos], config=config, kernels=kernels)


@pytest.mark.parametrize("k", [1, 8, 9])
def test_unit_topk_sample_of_a_smaller_sampler(k):
    """A config's ``limits.topk_max`` sizes the sampler: up to it the unit is bit-exact
    with the ISA simulator of that config in the cycles of the formula (the count of its
    candidates, not 64's); a ``k`` past it is MALFORMED on both."""
    from hdl.sfu.unit import default_kernels
    cfg = load_config("test")
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, topk_max=8))
    n, rows = 21, 2
    res, rtl, ref, ref_err = _topk_on_unit_and_isa(
        k, n=n, rows=rows, scale=6, temp=0.5, seed=77, pos=3, config=cfg,
        kernels=default_kernels(cfg.limits, word_bits=128))
    if k > 8:
        assert ref_err == (ErrorCode.MALFORMED, 0)
        assert res["err"] and res["err_code"] == ErrorCode.MALFORMED
        return
    assert ref_err is None and not res["err"]
    assert rtl == ref
    args = kernel_args(func=SfuFunc.TOPK_SAMPLE, n=n, rows=rows)
    took = res["released"][0][0] - res["accepted"][0] + 1
    assert took == unit_cycles(args, word_bits=128, topk_max=8)
    assert took == unit_cycles(args, word_bits=128) - rows * (fx.TOPK_MAX - 8)


@pytest.mark.parametrize("k", [1, 5])
def test_unit_topk_sample_matches_isa(k):
    """Unit and ISA simulator bit-exact, with the unit's cycle formula."""
    n, rows = 13, 2
    res, rtl, ref, ref_err = _topk_on_unit_and_isa(k, n=n, rows=rows, scale=4, temp=0.7,
                                                   seed=1234, pos=9)
    assert ref_err is None and not res["err"]
    assert rtl == ref
    args = kernel_args(func=SfuFunc.TOPK_SAMPLE, n=n, rows=rows)
    assert res["released"][0][0] - res["accepted"][0] + 1 == unit_cycles(args, word_bits=128)
