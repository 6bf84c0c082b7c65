"""BitMoD formats: value sets, codes, unified representation, serial digits, choice."""

import pytest
import torch

from airfoil import bitmod
from airfoil.bitmod import BitModFormat as F
from airfoil.errors import CompileError

# The value sets of the BitMoD formats (airfoil/bitmod.py), in units where E2M1 values are doubled.
FP4_BASE = {0, 1, 2, 3, 4, 6, 8, 12, -1, -2, -3, -4, -6, -8, -12}
FP3_BASE = {0, 1, 2, 4, -1, -2, -4}
EXTRA = {F.FP4_ER_P: 10, F.FP4_ER_N: -10, F.FP4_EA_P: 16, F.FP4_EA_N: -16,
         F.FP3_ER_P: 3, F.FP3_ER_N: -3, F.FP3_EA_P: 6, F.FP3_EA_N: -6}
CYCLES = {F.INT2: 2, F.INT3: 3, F.INT4: 4, F.INT6: 3, F.INT8: 4}


@pytest.mark.parametrize("fmt", list(EXTRA))
def test_fp_value_sets(fmt):
    vals = bitmod.values(fmt)
    base = FP4_BASE if fmt in bitmod.FP4_FORMATS else FP3_BASE
    assert len(vals) == 1 << bitmod.code_bits(fmt)
    assert set(vals) == base | {EXTRA[fmt]}
    assert len(set(vals)) == len(vals)      # every code is a distinct value


@pytest.mark.parametrize("fmt", list(CYCLES))
def test_int_value_sets(fmt):
    n = bitmod.code_bits(fmt)
    assert sorted(bitmod.values(fmt)) == list(range(-(1 << (n - 1)), 1 << (n - 1)))


@pytest.mark.parametrize("fmt", list(F))
def test_encode_decode_round_trip(fmt):
    for code, v in enumerate(bitmod.values(fmt)):
        assert bitmod.decode(fmt, bitmod.encode(fmt, v)) == v
        assert bitmod.encode(fmt, v) == code


@pytest.mark.parametrize("fmt", list(F))
def test_serial_digits_fold_to_the_value(fmt):
    r = bitmod.radix(fmt)
    n = bitmod.cycles(fmt)
    assert n == CYCLES.get(fmt, 2)
    for code in range(1 << bitmod.code_bits(fmt)):
        digits = bitmod.serial_digits(fmt, code)
        assert len(digits) == n
        acc = 0
        for d in digits:
            a = abs(d)
            assert a == 0 or (a & (a - 1) == 0 and a <= 1 << bitmod.max_digit_exp)
            if fmt in (F.INT6, F.INT8):
                assert a <= 2            # radix-4 Booth digits
            elif fmt in CYCLES:
                assert a <= 1            # one bit per cycle
            acc = acc * r + d
        assert acc == bitmod.decode(fmt, code)


@pytest.mark.parametrize("fmt", list(EXTRA))
def test_unified_representation(fmt):
    for code in range(1 << bitmod.code_bits(fmt)):
        s, man, e = bitmod.unified(fmt, code)
        assert man in (0, 1, 3, 5) and 0 <= e <= 4 and s in (0, 1)
        assert (-1) ** s * man * (1 << e) == bitmod.decode(fmt, code)


def test_bad_input_messages():
    with pytest.raises(CompileError, match="unknown BitMoD format 'fp5'"):
        bitmod.bitmod_format("fp5")
    with pytest.raises(CompileError, match="not representable in fp4_er_p"):
        bitmod.encode("fp4_er_p", 16)
    with pytest.raises(CompileError, match="outside 0..7"):
        bitmod.decode("fp3_ea_n", 8)
    with pytest.raises(CompileError, match="integer format"):
        bitmod.unified("int4", 3)
    with pytest.raises(CompileError, match="multiple of the group size"):
        bitmod.choose_formats(torch.zeros(1, 100), bitmod.FP4_FORMATS, 128)


def _outlier_weights(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(32, 1024, generator=g)
    mask = torch.rand(32, 1024, generator=g) < 0.005
    return w + mask * torch.randn(32, 1024, generator=g) * 8


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("family,plain", [(bitmod.FP4_FORMATS, "int4"),
                                          (bitmod.FP3_FORMATS, "int3")])
def test_choice_beats_plain_int(family, plain, seed):
    w = _outlier_weights(seed)
    vals, fmts, scales, err = bitmod.choose_formats(w, family, 128)
    _, _, _, err_int = bitmod.choose_formats(w, [plain], 128)
    assert float(err.sum()) < 0.8 * float(err_int.sum())
    # The stored values, formats and scales reproduce the reported error exactly.
    wq = bitmod.dequantize(vals.reshape(-1, 128), scales.reshape(-1))
    direct = ((w.to(torch.float64).reshape(-1, 128) - wq) ** 2).sum(dim=1)
    assert torch.equal(direct, err.reshape(-1))
    for f in set(fmts.flatten().tolist()):
        sel = (fmts == f).flatten()
        assert set(vals.reshape(-1, 128)[sel].flatten().tolist()) <= set(bitmod.values(F(f)))


def test_choice_is_the_least_error_per_group():
    w = _outlier_weights(2)[:4]
    _, fmts, _, err = bitmod.choose_formats(w, bitmod.FP4_FORMATS, 128)
    each = torch.stack([bitmod.choose_formats(w, [f], 128)[3] for f in bitmod.FP4_FORMATS])
    assert torch.equal(err, each.min(dim=0).values)
    assert torch.equal(fmts, torch.tensor([f.value for f in bitmod.FP4_FORMATS])[
        each.argmin(dim=0)])


def test_group_psum_is_exact():
    g = torch.Generator().manual_seed(3)
    vals = torch.randint(-16, 17, (3, 256), generator=g)
    x = torch.randint(-128, 128, (256,), generator=g)
    ps = bitmod.group_psum(vals, x, 128)
    assert ps.tolist() == [[sum(int(vals[r, i]) * int(x[i]) for i in range(gg * 128,
                                                                           gg * 128 + 128))
                            for gg in range(2)] for r in range(3)]
