"""LUT (T-MAC) PE: amaranth.sim unit tests and cocotb + Verilator regressions."""

import random
from pathlib import Path

import pytest
from amaranth.sim import Simulator

from hdl.build import write_verilog
from hdl.pe.lut import LutChain, LutPE, LutTableBuilder, entry_bits, lut_in_layout
from sim.tb_pe.amsim import run_stream
from sim.tb_pe.stimulus import layout_fields, lut_case, lut_value


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("g", [2, 4])
def test_dot_products_exact(g, bits):
    dut = LutPE(lanes=8, g=g, max_group=128)
    case, expected = lut_case(lanes=8, bits_choices=[bits], rows=3, groups=2, beats=3,
                              seed=10 * g + bits)
    got, _ = run_stream(dut, layout_fields(lut_in_layout(8)), case, len(expected),
                        seed=bits, idle=0.2, stall=0.3)
    assert got == expected


@pytest.mark.parametrize("g,lanes", [(3, 6), (2, 2), (6, 6)])
def test_other_table_sizes_mixed_widths(g, lanes):
    dut = LutPE(lanes=lanes, g=g, max_group=128)
    case, expected = lut_case(lanes=lanes, bits_choices=[1, 2, 3, 4], rows=2, groups=3,
                              beats=2, seed=g)
    got, _ = run_stream(dut, layout_fields(lut_in_layout(lanes)), case, len(expected),
                        seed=1, idle=0.3, stall=0.3)
    assert got == expected


def test_extreme_values():
    """Largest magnitudes: all weights -8 or +7 (INT4), -1/+1 (INT1), activations -128."""
    lanes = 8
    dut = LutPE(lanes=lanes, g=4, max_group=128)
    beats, psums = [], []
    for bits, code in ((4, 8), (4, 7), (1, 0), (1, 1)):
        beat = {f"w.{i}": code for i in range(lanes)}
        beat.update({f"x.{i}": -128 for i in range(lanes)})
        beat.update({"bits": bits, "group_end": 1, "row_end": 1, "m": 2047, "shift": 15})
        beats.append(beat)
        psums.append(lanes * lut_value(bits, code) * -128)
    got, _ = run_stream(dut, layout_fields(lut_in_layout(lanes)), beats, 4)
    assert got == [p * 2047 << 15 for p in psums]


def test_table_builder_symmetrized_entries():
    g, lanes = 4, 8
    dut = LutTableBuilder(lanes=lanes, g=g)
    rng = random.Random(4)
    xs = [rng.randint(-128, 127) for _ in range(lanes)]
    seen = {}

    async def bench(ctx):
        for i, x in enumerate(xs):
            ctx.set(dut.i.payload[i], x)
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 1)
        await ctx.tick()
        assert ctx.get(dut.o.valid)
        seen["t"] = [[ctx.get(dut.o.payload.t[t][q]) for q in range(1 << (g - 1))]
                     for t in range(lanes // g)]
        seen["x"] = ctx.get(dut.o.payload.xsum)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    # Entry q of table t: sign pattern with the top bit set, s_i = +1 where bit i is set.
    for t in range(lanes // g):
        for q in range(1 << (g - 1)):
            p = q | 1 << (g - 1)
            want = sum(xs[t * g + i] * (1 if p >> i & 1 else -1) for i in range(g))
            assert seen["t"][t][q] == want
    assert seen["x"] == sum(xs)
    assert dut.latency == 1


def test_cycles_per_plane():
    lanes = 8
    cyc = {}
    for bits in (1, 2, 4):
        dut = LutPE(lanes=lanes, g=4)
        case, expected = lut_case(lanes=lanes, bits_choices=[bits], rows=1, groups=2,
                                  beats=32, seed=1)
        got, cyc[bits] = run_stream(dut, layout_fields(lut_in_layout(lanes)), case,
                                    len(expected))
        assert got == expected
    assert cyc[2] - 64 * 2 == cyc[4] - 64 * 4 == cyc[1] - 64 > 0
    assert LutChain.cycles_per_beat(3) == 3


@pytest.mark.parametrize("kw,msg", [
    (dict(lanes=8, g=3), "Lane count must be a multiple of the table group g=3, not 8"),
    (dict(lanes=8, g=7), "Table group g must be an integer in 2..6, not 7"),
    (dict(lanes=0, g=2), "Lane count must be an integer in 2..128, not 0"),
])
def test_bad_parameters(kw, msg):
    with pytest.raises(TypeError, match=msg):
        LutPE(**kw)


def test_entry_width():
    assert entry_bits(2) == 10 and entry_bits(4) == 11


# -- RTL regressions (Verilator) ----------------------------------------------------------

BUILD = Path("build/pe")
_BUILT = {}


def _rtl(g, lanes=8):
    from sim.tb_pe.rtl import run_stream_case
    if (g, lanes) not in _BUILT:
        _BUILT[g, lanes] = write_verilog(
            LutPE(lanes=lanes, g=g, max_group=128), f"pe_lut_l{lanes}_g{g}", BUILD,
            params={"in_fields": layout_fields(lut_in_layout(lanes))})
    v, j = _BUILT[g, lanes]

    def run(bits_choices, seed, rows, groups, beats, idle=0.25, stall=0.3):
        case, expected = lut_case(lanes=lanes, bits_choices=bits_choices, rows=rows,
                                  groups=groups, beats=beats, seed=seed)
        res = run_stream_case(v, j, case, expected, seed=seed, idle=idle, stall=stall)
        assert res["outputs"] == expected and res["error"] is None
    return run


@pytest.mark.rtl(group="pe_lut")
@pytest.mark.parametrize("g", [2, 4])
def test_rtl_all_widths(g):
    """INT1..INT4 drawn per group, odd sizes, random idle cycles and backpressure."""
    _rtl(g)([1, 2, 3, 4], seed=20 + g, rows=5, groups=3, beats=5)


@pytest.mark.slow
@pytest.mark.rtl(group="pe_lut")
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("beats", [1, 7])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("g", [2, 4])
def test_rtl_sweep(g, bits, beats, seed):
    _rtl(g)([bits], seed=seed, rows=3, groups=3, beats=beats)
