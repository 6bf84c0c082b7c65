"""amaranth.sim unit tests of the core's blocks: requantizer, rescaler, chains, AXI reader."""

import random

import pytest
import torch
from amaranth.sim import Simulator

from airfoil.formats import (ACC_BITS, SCALE_SHIFT_MAX, group_psum, requantize, wrap)
from airfoil.isa import OutFormat
from hdl.core.axi_read import AxiReader
from hdl.decode_unit.rescaler import GroupRescaler, Requantizer
from hdl.dsp_chain.dense import DenseChains
from hdl.streams import psum_bits

OUT_BITS = {OutFormat.INT8: 8, OutFormat.INT16: 16, OutFormat.INT32: 32}


def _run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("seed", range(3))
def test_requantizer_matches_formats(seed):
    rng = random.Random(seed)
    items = []
    for i in range(12):
        acc = rng.choice([rng.randrange(-1 << 20, 1 << 20),
                          rng.randrange(-(1 << (ACC_BITS - 1)), 1 << (ACC_BITS - 1))])
        mult = rng.choice([0, 1, rng.randrange(1 << 15, 1 << 16), rng.randrange(1 << 16)])
        shift = rng.choice([0, 1, rng.randrange(2, 40), rng.randrange(40, 128)])
        items.append((acc, mult, shift, rng.choice(list(OutFormat)), i))
    # One parameter set per simulation (the unit holds them for a whole instruction).
    for acc, mult, shift, fmt, tag in items:
        one = Requantizer(tag_bits=16)
        res = {}

        async def b1(ctx, acc=acc, mult=mult, shift=shift, fmt=fmt, res=res, one=one):
            ctx.set(one.mult, mult)
            ctx.set(one.shift, shift)
            ctx.set(one.out_fmt, fmt)
            ctx.set(one.inp.valid, 1)
            ctx.set(one.inp.payload.acc, acc)
            await ctx.tick()
            ctx.set(one.inp.valid, 0)
            for t in range(1, 6):
                if ctx.get(one.out.valid):
                    res["t"], res["v"] = t, ctx.get(one.out.payload.value)
                await ctx.tick()
        _run(one, b1)
        want = int(requantize(torch.tensor([acc]), mult, shift, OUT_BITS[fmt])[0])
        assert res == {"t": one.latency, "v": want}, (acc, mult, shift, fmt)


@pytest.mark.parametrize("use_bias", [False, True])
def test_rescaler_accumulates_exactly(use_bias):
    rng = random.Random(7)
    C, G = 3, 32
    dut = GroupRescaler(chains=C, group_max=G)
    k0 = -20
    groups = 4
    psums = [[rng.randrange(-(1 << 20), 1 << 20) for _ in range(C)] for _ in range(groups)]
    # Signed significands (a negative FP16 scale), the extremes among them.
    ms = [[rng.choice((-1, 1)) * rng.randrange(0, 2048) for _ in range(C)]
          for _ in range(groups)]
    psums[0][0], ms[0][0] = -(1 << (psum_bits(G) - 1)), -2047
    psums[1][1], ms[1][1] = (1 << (psum_bits(G) - 1)) - 1, -2047
    ks = [[k0 + rng.randrange(0, SCALE_SHIFT_MAX + 1) for _ in range(C)] for _ in range(groups)]
    bias = [rng.randrange(-(1 << 31), 1 << 31) for _ in range(C)]
    want = []
    for c in range(C):
        acc = bias[c] if use_bias else 0
        for g in range(groups):
            acc += (psums[g][c] * ms[g][c]) << (ks[g][c] - k0)
        want.append(int(wrap(torch.tensor(acc), ACC_BITS)))
    out = {}

    async def bench(ctx):
        ctx.set(dut.k0, k0)
        ctx.set(dut.use_init, use_bias)
        ctx.set(dut.accs.ready, 1)
        ctx.set(dut.init.valid, 1)
        for c in range(C):
            ctx.set(dut.init.payload.init[c], bias[c])
        for g in range(groups):
            ctx.set(dut.psums.valid, 1)
            ctx.set(dut.scales.valid, 1)
            ctx.set(dut.psums.payload.batch_last, g == groups - 1)
            for c in range(C):
                ctx.set(dut.psums.payload.psum[c], psums[g][c])
                ctx.set(dut.scales.payload.m[c], ms[g][c])
                ctx.set(dut.scales.payload.k[c], ks[g][c])
            assert ctx.get(dut.psums.ready)
            await ctx.tick()
            ctx.set(dut.init.valid, 0)
        ctx.set(dut.psums.valid, 0)
        ctx.set(dut.scales.valid, 0)
        for t in range(1, 5):
            if ctx.get(dut.accs.valid):
                out["t"] = t
                out["acc"] = [ctx.get(dut.accs.payload[c]) for c in range(C)]
                break
            await ctx.tick()
        assert not ctx.get(dut.error)

    _run(dut, bench)
    assert out == {"t": dut.latency, "acc": want}


def test_rescaler_flags_shift_outside_window():
    dut = GroupRescaler(chains=2, group_max=32)

    async def bench(ctx):
        ctx.set(dut.k0, -10)
        ctx.set(dut.accs.ready, 1)
        ctx.set(dut.psums.valid, 1)
        ctx.set(dut.scales.valid, 1)
        ctx.set(dut.scales.payload.m[0], 1024)
        ctx.set(dut.scales.payload.k[0], -10 + SCALE_SHIFT_MAX)
        ctx.set(dut.scales.payload.m[1], 1024)
        ctx.set(dut.scales.payload.k[1], -10 + SCALE_SHIFT_MAX + 1)
        await ctx.tick()
        ctx.set(dut.psums.valid, 0)
        await ctx.tick()
        assert ctx.get(dut.error)

    _run(dut, bench)


def test_dense_chains_group_sums():
    rng = random.Random(3)
    C, L, G = 2, 4, 8
    dut = DenseChains(chains=C, lanes=L, group_max=G)
    assert dut.latency == DenseChains.LATENCY
    steps = 3 * G // L
    w = torch.tensor([[rng.randrange(-8, 8) for _ in range(steps * L)] for _ in range(C)])
    x = torch.tensor([rng.randrange(-128, 128) for _ in range(steps * L)])
    want = group_psum(w, x, G)          # (C, groups)
    got = []
    accepted_last = []

    async def bench(ctx):
        ctx.set(dut.psums.ready, 1)
        for t in range(steps + 6):
            if ctx.get(dut.psums.valid):
                got.append((t, [ctx.get(dut.psums.payload.psum[c]) for c in range(C)],
                            ctx.get(dut.psums.payload.batch_last)))
            s = t
            if s < steps:
                ctx.set(dut.operands.valid, 1)
                for c in range(C):
                    for lane in range(L):
                        ctx.set(dut.operands.payload.w[c][lane], int(w[c, s * L + lane]))
                for lane in range(L):
                    ctx.set(dut.operands.payload.x[lane], int(x[s * L + lane]))
                last = (s + 1) % (G // L) == 0
                ctx.set(dut.operands.payload.group_last, last)
                ctx.set(dut.operands.payload.batch_last, s == steps - 1)
                if last:
                    accepted_last.append(t)
            else:
                ctx.set(dut.operands.valid, 0)
            await ctx.tick()

    _run(dut, bench)
    assert [g[1] for g in got] == want.T.tolist()
    assert [g[0] - a for g, a in zip(got, accepted_last)] == [dut.latency] * len(got)
    assert [g[2] for g in got] == [0, 0, 1]


def test_axi_reader_bursts():
    dut = AxiReader(data_width=32, max_burst=4, outstanding=2, addr_width=32)
    ars = []
    beats = []
    max_inflight = [0]

    async def bench(ctx):
        ctx.set(dut.cmd.valid, 1)
        ctx.set(dut.cmd.payload.addr, 4096 - 8)
        ctx.set(dut.cmd.payload.beats, 7)
        ctx.set(dut.cmd.payload.rows, 2)
        ctx.set(dut.cmd.payload.stride, 64)
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        ctx.set(dut.data.ready, 1)
        queue = []
        for _ in range(80):
            ctx.set(dut.arready, 1)
            if ctx.get(dut.arvalid):
                ars.append((ctx.get(dut.araddr), ctx.get(dut.arlen) + 1))
                queue.append([ars[-1][1], 0])
            max_inflight[0] = max(max_inflight[0], len(queue))
            if queue:
                n, i = queue[0]
                ctx.set(dut.rvalid, 1)
                ctx.set(dut.rdata, len(beats))
                ctx.set(dut.rlast, i == n - 1)
                if ctx.get(dut.data.valid):
                    beats.append(ctx.get(dut.data.payload))
                queue[0][1] += 1
                if queue[0][1] == n:
                    queue.pop(0)
            else:
                ctx.set(dut.rvalid, 0)
            await ctx.tick()
        assert ctx.get(dut.idle)

    _run(dut, bench)
    assert ars == [(4088, 2), (4096, 4), (4112, 1), (4152, 4), (4168, 3)]
    assert beats == list(range(14))
    assert max_inflight[0] <= 2
