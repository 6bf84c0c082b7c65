"""The ``dsp`` PE: packed multipliers bit-exact against integer products, DSP48E2 inference."""

import json
import random
import subprocess

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from hdl.estimate import _yosys, component_stats
from hdl.pe.dsp import (DspDot2, DspLaneArray, DspMul1, DspPE, DspShared2, dot2_model,
                        shared2_model)


def _sext_range(bits):
    return np.arange(-(1 << (bits - 1)), 1 << (bits - 1), dtype=np.int64)


def test_dot2_packing_exhaustive():
    # Every INT4 x INT4 x INT8 x INT8 operand combination (16.7M) through the bit model.
    w = _sext_range(4)
    a = _sext_range(8)
    w0, w1, a0 = np.meshgrid(w, w, a, indexing="ij")
    w0, w1, a0 = (v.reshape(-1, 1) for v in (w0, w1, a0))
    a1 = a.reshape(1, -1)
    got = dot2_model(w0, w1, a0, a1)
    assert np.array_equal(got, w0 * a0 + w1 * a1)


def test_shared2_packing_exhaustive():
    w = _sext_range(8)
    w0, w1, a = np.meshgrid(w, w, _sext_range(8), indexing="ij")
    p0, p1 = shared2_model(w0, w1, a)
    assert np.array_equal(p0, w0 * a) and np.array_equal(p1, w1 * a)


def _run_pipeline(dut, vectors, seed, apply, read):
    """Drive ``vectors`` with a random clock enable; check each result ``delay`` enabled
    cycles after its operands. Return the number of compared results."""
    rng = random.Random(seed)
    checked = []

    async def testbench(ctx):
        in_flight = []                     # operand sets captured on enabled edges
        i = 0
        while i < len(vectors) or len(in_flight) >= 1:
            en = rng.random() < 0.7
            vec = vectors[i] if i < len(vectors) else vectors[-1]
            apply(ctx, vec)
            ctx.set(dut.en, en)
            await ctx.tick()
            if en:
                in_flight.append(vec)
                i += 1
                if len(in_flight) > dut.delay:
                    in_flight.pop(0)
                if len(in_flight) == dut.delay and i > dut.delay - 1:
                    expect = in_flight[0]
                    got = read(ctx)
                    assert got == expect[-1], f"operands {expect[:-1]}: {got} != {expect[-1]}"
                    checked.append(got)
                    if i >= len(vectors) + dut.delay - 1:
                        break

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return len(checked)


def _corners(bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return [lo, lo + 1, -1, 0, 1, hi]


@pytest.mark.parametrize("seed", [1, 2])
def test_dot2_sim_bit_exact(seed):
    dut = DspDot2(weight_bits=4, act_bits=8)
    assert dut.delay == 3
    rng = random.Random(seed)
    vecs = [(w0, w1, a0, a1, w0 * a0 + w1 * a1)
            for w0 in _corners(4) for w1 in _corners(4)
            for a0 in _corners(8) for a1 in _corners(8)]
    rng.shuffle(vecs)
    for _ in range(500):
        w0, w1 = rng.randint(-8, 7), rng.randint(-8, 7)
        a0, a1 = rng.randint(-128, 127), rng.randint(-128, 127)
        vecs.append((w0, w1, a0, a1, w0 * a0 + w1 * a1))

    def apply(ctx, v):
        ctx.set(dut.w[0], v[0])
        ctx.set(dut.w[1], v[1])
        ctx.set(dut.a[0], v[2])
        ctx.set(dut.a[1], v[3])

    n = _run_pipeline(dut, vecs, seed, apply, lambda ctx: ctx.get(dut.y))
    assert n == len(vecs)


def test_shared2_sim_bit_exact():
    dut = DspShared2(weight_bits=8, act_bits=8)
    assert dut.delay == 3
    rng = random.Random(5)
    vecs = [(w0, w1, a, (w0 * a, w1 * a))
            for w0 in _corners(8) for w1 in _corners(8) for a in _corners(8)]
    for _ in range(400):
        w0, w1, a = (rng.randint(-128, 127) for _ in range(3))
        vecs.append((w0, w1, a, (w0 * a, w1 * a)))

    def apply(ctx, v):
        ctx.set(dut.w[0], v[0])
        ctx.set(dut.w[1], v[1])
        ctx.set(dut.a, v[2])

    n = _run_pipeline(dut, vecs, 5, apply,
                      lambda ctx: (ctx.get(dut.p[0]), ctx.get(dut.p[1])))
    assert n == len(vecs)


@pytest.mark.parametrize("weight_bits,lanes", [(4, 8), (8, 4), (3, 6)])
def test_pe_stream_mac(weight_bits, lanes):
    """DspPE: random valid/ready gaps, dot products of several beats, bit-exact sums."""
    dut = DspPE(lanes=lanes, weight_bits=weight_bits)
    rng = random.Random(weight_bits * 100 + lanes)
    lo, hi = -(1 << (weight_bits - 1)), (1 << (weight_bits - 1)) - 1
    beats, expect, acc = [], [], 0
    for dp in range(12):
        nb = rng.randint(1, 4)
        for b in range(nb):
            w = [rng.randint(lo, hi) for _ in range(lanes)]
            a = [rng.randint(-128, 127) for _ in range(lanes)]
            acc += sum(x * y for x, y in zip(w, a))
            beats.append((w, a, b == nb - 1))
        expect.append(acc)
        acc = 0
    got = []

    async def producer(ctx):
        for w, a, last in beats:
            while rng.random() < 0.3:
                await ctx.tick()
            ctx.set(dut.i.payload, {"w": w, "a": a, "last": last})
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        while len(got) < len(expect):
            ready = rng.random() < 0.6
            ctx.set(dut.o.ready, ready)
            *_, valid, acc_v = await ctx.tick().sample(dut.o.valid, dut.o.payload.acc)
            if ready and valid:
                got.append(acc_v)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    assert got == expect


def test_pe_latency():
    dut = DspPE(lanes=4, weight_bits=4)
    assert dut.delay == 6
    seen = {}

    async def testbench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.payload, {"w": [1, 2, 3, -4], "a": [5, 6, 7, 8], "last": 1})
        ctx.set(dut.i.valid, 1)
        await ctx.tick()                    # the handshake edge
        ctx.set(dut.i.valid, 0)
        for t in range(1, 20):
            if ctx.get(dut.o.valid):
                seen["t"], seen["acc"] = t, ctx.get(dut.o.payload.acc)
                return
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert seen == {"t": dut.delay, "acc": 5 + 12 + 21 - 32}


def test_parameters_validated():
    with pytest.raises(ValueError, match="INT8 x INT8"):
        DspDot2(weight_bits=8, act_bits=8)
    with pytest.raises(TypeError, match="not 0"):
        DspLaneArray(lanes=0, weight_bits=4)
    with pytest.raises(ValueError, match="even"):
        DspLaneArray(lanes=3, weight_bits=4)
    with pytest.raises(TypeError, match="Accumulator width"):
        DspPE(lanes=4, weight_bits=4, acc_bits=2)
    assert DspLaneArray(lanes=8, weight_bits=4).multipliers == 4
    assert DspLaneArray(lanes=8, weight_bits=8).multipliers == 8


@pytest.mark.parametrize("comp,expect", [
    pytest.param(lambda: DspDot2(weight_bits=4, act_bits=8), 1, marks=pytest.mark.slow),
    pytest.param(lambda: DspMul1(weight_bits=8, act_bits=8), 1, marks=pytest.mark.slow),
    (lambda: DspLaneArray(lanes=8, weight_bits=4), 4),       # 8 INT4 lanes: 4 DSP48E2
    pytest.param(lambda: DspLaneArray(lanes=4, weight_bits=8), 4, marks=pytest.mark.slow),
])
def test_yosys_infers_dsp48e2(comp, expect):
    stats = component_stats(comp(), "unit", "xcup", flatten=True)
    assert stats["dsp"] == expect, stats["cells"]
    assert stats["cells"].get("DSP48E2", 0) == expect


@pytest.mark.slow
def test_yosys_infers_dsp48e2_shared2(tmp_path):
    """DspShared2 maps to one DSP48E2. Its full synth_xilinx run traps inside the
    WebAssembly ABC9 (LUT mapping, after DSP mapping), so stop before LUT mapping."""
    v = tmp_path / "design.v"
    v.write_text(verilog.convert(DspShared2(), name="unit", emit_src=False))
    script = ("read_verilog -sv design.v; synth_xilinx -family xcup -top unit -noiopad "
              "-run :map_luts; tee -q -o stat.json stat -json")
    proc = subprocess.run(_yosys() + ["-q", "-p", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-400:]
    cells = json.loads((tmp_path / "stat.json").read_text())["design"]["num_cells_by_type"]
    assert cells.get("DSP48E2") == 1, cells
