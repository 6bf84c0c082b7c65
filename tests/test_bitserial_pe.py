"""Bit-serial (BitMoD) PE: amaranth.sim unit tests and cocotb + Verilator regressions."""

from pathlib import Path

import pytest
from amaranth.hdl import Fragment

from airfoil import bitmod
from airfoil.bitmod import BitModFormat as F
from hdl.build import write_verilog
from hdl.pe.bitserial import BitSerialPE, SerialRescaler, bitserial_in_layout
from sim.tb_pe.amsim import run_stream
from sim.tb_pe.stimulus import bitserial_case, layout_fields, random_scales

ALL = list(F)
FORMAT_SETS = {f.name.lower(): [f] for f in bitmod.INT_FORMATS}
FORMAT_SETS.update({"fp4": list(bitmod.FP4_FORMATS), "fp3": list(bitmod.FP3_FORMATS)})


def _sim(lanes, fmts, *, sparse, seed, rows=2, groups=2, beats=3, idle=0.2, stall=0.3,
         port=True):
    dut = BitSerialPE(lanes=lanes, sparse=port, max_group=128)
    fields = layout_fields(bitserial_in_layout(lanes, port))
    case, expected = bitserial_case(lanes=lanes, fmts=fmts, rows=rows, groups=groups,
                                    beats=beats, seed=seed, sparse=sparse,
                                    has_sparse_port=port)
    got, cycles = run_stream(dut, fields, case, len(expected), seed=seed + 100, idle=idle,
                             stall=stall)
    return got, expected, cycles


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "2:4"])
@pytest.mark.parametrize("fset", list(FORMAT_SETS))
def test_dot_products_exact(fset, sparse):
    got, expected, _ = _sim(4, FORMAT_SETS[fset], sparse=sparse, seed=len(fset) + sparse)
    assert got == expected


@pytest.mark.parametrize("fmt", ALL, ids=[f.name.lower() for f in ALL])
def test_every_code(fmt):
    """Each code of the format meets random activations (one group per row)."""
    n = 1 << bitmod.code_bits(fmt)
    lanes = 8
    dut = BitSerialPE(lanes=lanes, sparse=False, max_group=256)
    fields = layout_fields(bitserial_in_layout(lanes, False))
    case, _ = bitserial_case(lanes=lanes, fmts=[fmt], rows=1, groups=1,
                                    beats=n // lanes or 1, seed=7, has_sparse_port=False)
    for b, beat in enumerate(case):
        for i in range(lanes):
            beat[f"w.{i}"] = (b * lanes + i) % n
    # Reference for the overwritten codes: decoded values, then formats.rescale's
    # ``psum * m << (k - k0)``.
    psum = sum(bitmod.decode(fmt, beat[f"w.{i}"]) * beat[f"x.{i}"]
               for beat in case for i in range(lanes))
    expected = [psum * case[-1]["m"] << case[-1]["shift"]]
    got, _ = run_stream(dut, fields, case, 1)
    assert got == expected


def test_dense_beats_on_a_dense_only_pe():
    got, expected, _ = _sim(6, ALL, sparse=False, seed=5, port=False)
    assert got == expected


def test_cycles_scale_with_width():
    """Back-to-back beats: INT2 takes half the cycles of INT4, INT8 as many as INT4."""
    cyc = {}
    for f in (F.INT2, F.INT4, F.INT8, F.FP4_EA_P):
        _, _, cyc[f] = _sim(8, [f], sparse=False, seed=1, rows=1, groups=2, beats=32,
                            idle=0.0, stall=0.0)
    assert cyc[F.INT2] / cyc[F.INT4] <= 0.55
    assert cyc[F.INT8] == cyc[F.INT4]
    assert cyc[F.FP4_EA_P] == cyc[F.INT2]
    # Lanes busy 2 * 32 * cycles(fmt); the rest is the pipeline and the last rescale.
    assert cyc[F.INT4] - 2 * 32 * 4 == cyc[F.INT2] - 2 * 32 * 2 > 0


@pytest.mark.parametrize("r", [1, 2, 3, 4])
def test_rescaler_alone(r):
    import random
    rng = random.Random(3 + r)
    ms, shifts = random_scales(rng, 6)
    dut = SerialRescaler(psum_width=24, scale_bits_per_cycle=r)
    fields = {"psum": [0, 24], "m": [24, 11], "shift": [35, 4], "row_end": [39, 1]}
    psums = [rng.randint(-(1 << 23), (1 << 23) - 1) for _ in range(6)]
    beats = [{"psum": p, "m": m, "shift": s, "row_end": int(i % 3 == 2)}
             for i, (p, m, s) in enumerate(zip(psums, ms, shifts))]
    want = [sum(p * m << s for p, m, s in zip(psums[i:i + 3], ms[i:i + 3], shifts[i:i + 3]))
            for i in (0, 3)]
    got, _ = run_stream(dut, fields, beats, 2, idle=0.3, stall=0.5)
    assert got == want
    # Back to back, no stalls: the rescaler is the bottleneck, one group per cycles(shift).
    beats = [{"psum": 1, "m": 1024, "shift": 15, "row_end": 1}] * 4
    _, cyc = run_stream(SerialRescaler(psum_width=24, scale_bits_per_cycle=r), fields,
                        beats, 4)
    per = dut.cycles(15)
    assert per == -(-11 // r) + -(-15 // r) + 1
    assert cyc == 4 * per + 2


def test_wide_rescaler_in_the_pe():
    """A 4-bit-per-cycle rescaler behind 16 lanes, groups of 2 beats, with stalls."""
    dut = BitSerialPE(lanes=16, sparse=True, max_group=128, scale_bits_per_cycle=4)
    fields = layout_fields(bitserial_in_layout(16, True))
    case, expected = bitserial_case(lanes=16, fmts=ALL, rows=3, groups=3, beats=2, seed=9,
                                    sparse=True)
    got, _ = run_stream(dut, fields, case, len(expected), seed=1, idle=0.1, stall=0.2)
    assert got == expected


@pytest.mark.parametrize("kw,msg", [
    (dict(lanes=3), "Lane count must be an even integer in 2..128, not 3"),
    (dict(lanes=8, sparse=1), "sparse must be a bool, not 1"),
    (dict(lanes=8, max_group=0), "max_group must be an integer in 1..4096, not 0"),
])
def test_bad_parameters(kw, msg):
    with pytest.raises(TypeError, match=msg):
        BitSerialPE(**kw)


def test_properties():
    pe = BitSerialPE(lanes=8)
    Fragment.get(pe, None)                     # elaborates
    assert (pe.lanes, pe.sparse, pe.latency) == (8, True, 2)
    assert [pe.cycles_per_beat(f) for f in (F.INT2, F.INT3, F.INT4, F.INT6, F.INT8,
                                            F.FP4_ER_N, F.FP3_EA_P)] == [2, 3, 4, 3, 4, 2, 2]


# -- RTL regressions (Verilator) ----------------------------------------------------------

BUILD = Path("build/pe")


@pytest.fixture(scope="module")
def rtl8():
    """One build for every format and both sparsity modes (precision is a run-time field)."""
    from sim.tb_pe.rtl import run_stream_case
    lanes = 8
    v, j = write_verilog(BitSerialPE(lanes=lanes, sparse=True, max_group=128),
                         "pe_bitserial_l8", BUILD,
                         params={"in_fields": layout_fields(bitserial_in_layout(lanes, True))})

    def run(fmts, sparse, seed, rows, groups, beats, idle=0.25, stall=0.3):
        case, expected = bitserial_case(lanes=lanes, fmts=fmts, rows=rows, groups=groups,
                                        beats=beats, seed=seed, sparse=sparse)
        res = run_stream_case(v, j, case, expected, seed=seed, idle=idle, stall=stall)
        assert res["outputs"] == expected and res["error"] is None
        return res
    return run


@pytest.mark.rtl(group="pe_bitserial_l8")
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "2:4"])
def test_rtl_all_formats(rtl8, sparse):
    """Every format, groups drawing formats at random, odd sizes, with backpressure."""
    rtl8(ALL, sparse, seed=11 + sparse, rows=5, groups=3, beats=5)


@pytest.mark.slow
@pytest.mark.rtl(group="pe_bitserial_l8")
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("beats", [1, 7])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "2:4"])
@pytest.mark.parametrize("fset", list(FORMAT_SETS))
def test_rtl_sweep(rtl8, fset, sparse, beats, seed):
    rtl8(FORMAT_SETS[fset], sparse, seed=seed, rows=3, groups=3, beats=beats)


@pytest.mark.rtl(group="pe_bitserial_l8")
def test_bench_cycles_are_the_simulated_cycles():
    """The bench's RTL cycle count equals amaranth.sim's on the same case (INT2, INT4)."""
    from sim.measure.pe import bitserial_cycles
    from airfoil.config import load_config

    cfg = load_config("test")
    L, G = cfg.lanes, max(cfg.group_sizes)
    fields = layout_fields(bitserial_in_layout(L, True))
    for f in (F.INT2, F.INT4):
        rtl = bitserial_cycles(cfg, f, G, BUILD, None, rows=1)
        case, expected = bitserial_case(lanes=L, fmts=[f], rows=1, groups=1, beats=G // L,
                                        seed=1)
        got, sim = run_stream(BitSerialPE(lanes=L, sparse=True, max_group=G), fields, case,
                              len(expected))
        assert got == expected
        assert rtl == sim
        # Busy lanes: (G / L) beats x cycles(fmt); the rest is pipeline and one rescale.
        assert rtl > G // L * bitmod.cycles(f)
