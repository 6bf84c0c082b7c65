"""The streamed engine's chain on every PE kind (amaranth.sim).

Random records of steps (weights drawn from each step's value width, dense or N:M
activation picks) run through :class:`hdl.dsp_chain.stream_chain.StreamChain` under
random idle cycles and backpressure; every record sum must equal the exact integer dot
product, in order, and a step must take the kind's cycles for its value width.
"""

import random

import pytest
from amaranth.sim import Simulator

from airfoil.sparsity import NM_PATTERNS, SparsityMode, mode_of
from hdl.dsp_chain.stream_chain import StreamChain
from hdl.pe.kinds import KINDS, PE_KINDS, pe_kind, tag_value_bits, value_bits

LANES = 8


def _records(kind, patterns, n_records, seed):
    """Records of steps as chain payloads, with the expected record sums."""
    rng = random.Random(seed)
    k = pe_kind(kind)
    widths = [b for b in (2, 3, 4, 6, 8) if b <= k.stream_value_bits]
    beats, sums = [], []
    chain = StreamChain(kind=kind, lanes=LANES, patterns=patterns)
    win = chain.window
    for _ in range(n_records):
        vb = rng.choice(widths)
        pattern = rng.choice(patterns)
        steps = rng.randint(1, 4)
        total = 0
        for s in range(steps):
            lo, hi = -(1 << (vb - 1)), (1 << (vb - 1)) - 1
            w = [rng.randint(lo, hi) for _ in range(LANES)]
            w[0] = rng.choice((lo, hi, w[0]))          # the extremes of the range
            act = [rng.randint(-128, 127) for _ in range(win)]
            if pattern in NM_PATTERNS:
                n, mm = NM_PATTERNS[pattern]
                idx = []
                for j in range(0, LANES, n):
                    idx += sorted(rng.sample(range(mm), n))
                xs = [act[(j // n) * mm + idx[j]] for j in range(LANES)]
            else:
                idx = [0] * LANES
                xs = act[:LANES]
            total += sum(a * b for a, b in zip(w, xs))
            beats.append({"mode": SparsityMode(mode_of(pattern)), "group_end": 0,
                          "last": int(s == steps - 1), "vbits": vb, "w": w, "idx": idx,
                          "act": act})
        sums.append(total)
    return chain, beats, sums


def _run(chain, beats, *, idle=0.0, stall=0.0, seed=0):
    rng = random.Random(seed)
    got, cycles = [], {}

    async def producer(ctx):
        for b in beats:
            while rng.random() < idle:
                ctx.set(chain.i.valid, 0)
                await ctx.tick()
            ctx.set(chain.i.payload, b)
            ctx.set(chain.i.valid, 1)
            await ctx.tick().until(chain.i.ready)
        ctx.set(chain.i.valid, 0)

    async def consumer(ctx):
        n = 0
        expect = sum(b["last"] for b in beats)
        while len(got) < expect:
            ctx.set(chain.o.ready, int(rng.random() >= stall))
            *_, valid, ready, payload = await ctx.tick().sample(
                chain.o.valid, chain.o.ready, chain.o.payload)
            n += 1
            if valid and ready:
                got.append(payload.psum)
        cycles["n"] = n

    sim = Simulator(chain)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(1e-8 * 20000)
    return got, cycles.get("n")


@pytest.mark.parametrize("kind", PE_KINDS)
def test_stream_chain_exact_under_backpressure(kind):
    patterns = ("dense", "2:4", "1:4") if KINDS[kind].nm_sparsity else ("dense",)
    chain, beats, sums = _records(kind, patterns, 24, seed=len(kind))
    got, _ = _run(chain, beats, idle=0.3, stall=0.3, seed=1)
    assert got == sums


@pytest.mark.parametrize("kind", PE_KINDS)
def test_stream_chain_cycles_per_step(kind):
    """Back to back, n steps of width b take n * step_cycles(b) cycles plus the latency."""
    k = pe_kind(kind)
    for vb in (2, 4, 8):
        if vb > k.stream_value_bits:
            continue
        beats = [{"mode": SparsityMode(0), "group_end": 0, "last": int(s == 15), "vbits": vb,
                  "w": [1] * LANES, "idx": [0] * LANES, "act": [1] * LANES}
                 for s in range(16)]
        chain = StreamChain(kind=kind, lanes=LANES)
        got, n = _run(chain, beats)
        assert got == [16 * LANES]
        assert n == 16 * k.step_cycles(vb) + chain.delay, (vb, n)


def test_stream_chain_refuses_nm_on_lut():
    with pytest.raises(ValueError, match="lut PE cannot run N:M"):
        StreamChain(kind="lut", lanes=LANES, patterns=("dense", "2:4"))


def test_kind_cycles_and_value_bits():
    assert [pe_kind("dsp").step_cycles(b) for b in (2, 4, 8)] == [1, 1, 2]
    assert [pe_kind("bitserial").step_cycles(b) for b in (2, 3, 4, 6, 8)] == [1, 2, 2, 3, 4]
    assert [pe_kind("lut").step_cycles(b) for b in (2, 3, 4)] == [2, 3, 4]
    assert value_bits([-2, 1]) == 2 and value_bits([-16, 16]) == 6 and value_bits([]) == 1
    assert tag_value_bits("int2") == 2 and tag_value_bits("int8") == 8
    assert tag_value_bits("fp4_ea_p") == 6 and tag_value_bits("ovp") == 8
    with pytest.raises(ValueError, match="PE kind must be one of dsp, bitserial, lut"):
        pe_kind("systolic")
