"""The SFU's embedding and head functions: ``DEQUANT_ROW`` (the INT8 embedding rows back
to ACT) bit-exact in its kernel, the unit and the ISA simulator against
airfoil.fixedpoint, with its cycle formula (amaranth.sim)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from airfoil import fixedpoint as fx
from airfoil.isa import Buffer, SfuFunc
from hdl.sfu import dequant
from hdl.sfu.dequant import DequantRowKernel
from test_sfu import SIZES, _b, _i32, _ints, _run_both, _sfu, kernel_args, run_kernel


def _records(q, sm, se, stride) -> bytearray:
    """Records of the rows of ``q`` with their scale pairs, ``stride`` bytes apart."""
    rows, n = q.shape
    out = bytearray(stride * rows)
    for r in range(rows):
        out[r * stride:r * stride + n] = _b(q[r], "<i1")
        at = r * stride + dequant.record_stride(n) - 8
        out[at:at + 8] = _b([sm[r], se[r]])
    return out


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


@pytest.mark.parametrize("n,rows,imm0,sa,seed", [
    (8, 2, 0, 0, 1),        # records back to back
    (13, 3, 0, 4, 2),       # odd length: padded values, the last word read in part
    (1, 2, 24, 8, 3),       # one value a record, strided
    (37, 1, 0, 0, 4),
])
def test_dequant_row_kernel(n, rows, imm0, sa, seed):
    rng = np.random.default_rng(seed)
    q = rng.integers(-128, 128, size=(rows, n))
    q[0, 0], q[-1, -1] = -128, 127
    sm = rng.integers(1 << 15, 1 << 16, size=rows)
    # Exponents from a saturating left shift (se < 16) to a right shift past every bit.
    se = np.array([-40, 3, 16, 30, 47][:rows] if rows > 1 else [22])
    stride = imm0 or dequant.record_stride(n)
    src = bytearray(sa) + _records(q, sm, se, stride)
    dst = bytearray(4 * rows * n + 8)
    args = kernel_args(func=SfuFunc.DEQUANT_ROW, n=n, rows=rows, src_addr=sa, dst_addr=8,
                       imm0=imm0)
    res = run_kernel(DequantRowKernel(), args, src, bytearray(4), dst)
    ref = fx.dequant_row(torch.tensor(q), torch.tensor(sm), torch.tensor(se))
    assert _ints(dst[8:]).tolist() == ref.reshape(-1).tolist()
    assert res["cycles"] == dequant.cycles(args) and not res["err"]


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
    assert _ints(rtl[Buffer.OUT][4:4 + 4 * rows * n]).tolist() == \
        fx.dequant_row(q, sm, se).reshape(-1).tolist()
