"""token_requant_params in hardware, combinational and pipelined, against
airfoil.fixedpoint.linear_out_params (bit-exact), on the edges of its cases and on seeded
random scale pairs."""

import random

import pytest
import torch
from amaranth.hdl import ClockDomain, Module, Signal, signed
from amaranth.sim import Simulator

from airfoil.fixedpoint import linear_out_params
from airfoil.formats import REQ_M_BITS, REQ_S_MAX
from hdl.decode_unit.rescaler import TOKEN_REQUANT_STAGES, token_requant_params


def _pairs():
    """(sm, se, pair index in a 128-bit word): every case of the exponent difference
    (negative, in range, M rounded by up to and beyond 17 bits) and sm out of range."""
    rng = random.Random(7)
    edges = [(0, 0), (65535, 10), (65535, 60), (12345, 40), (1, 5), (32768, 37),
             (65535, 200), (-1, 20), (65536, 20), (40000, 30 + REQ_S_MAX),
             (40001, 31 + REQ_S_MAX), (65535, 2**31 - 1), (7, -2**31)]
    pairs = [(sm, se, i % 2) for i, (sm, se) in enumerate(edges)]
    for _ in range(120):
        sm = rng.choice([rng.randrange(0, 1 << REQ_M_BITS), rng.randrange(-2**31, 2**31)])
        se = rng.randrange(-2**31, 2**31) if rng.random() < 0.1 else rng.randrange(-60, 150)
        pairs.append((sm, se, rng.randrange(2)))
    return pairs


@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("k0", [-64, -9, 0, 17, 63])
def test_token_requant_params_is_linear_out_params(pipelined, k0):
    m = Module()
    m.domains.sync = ClockDomain("sync")
    word = Signal(128)
    addr = Signal(25)
    k0_sig = Signal(signed(7), init=k0)
    tok_m, tok_s, bad = token_requant_params(m, word, addr, k0_sig, pipelined=pipelined)
    pairs = _pairs()
    delay = TOKEN_REQUANT_STAGES if pipelined else 0
    got = []

    async def bench(ctx):
        # One pair a cycle; the pipelined form gives each one TOKEN_REQUANT_STAGES later.
        for i in range(len(pairs) + delay):
            if i < len(pairs):
                sm, se, idx = pairs[i]
                pair = (sm & 0xFFFFFFFF) | ((se & 0xFFFFFFFF) << 32)
                other = 0x5A5A5A5A_A5A5A5A5
                ctx.set(word, (pair << (64 * idx)) | (other << (64 * (1 - idx))))
                ctx.set(addr, 0x100 + 8 * idx)
            if i >= delay:
                got.append((ctx.get(tok_m), ctx.get(tok_s), ctx.get(bad)))
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    checked = 0
    for (sm, se, _), (gm, gs, gbad) in zip(pairs, got, strict=True):
        assert gbad == (not 0 <= sm < (1 << REQ_M_BITS)), (sm, se)
        if gbad:
            continue
        M, S = linear_out_params(torch.tensor([sm], dtype=torch.int64),
                                 torch.tensor([se], dtype=torch.int64), k0)
        assert (gm, gs) == (int(M[0]), int(S[0])), (sm, se, k0)
        checked += 1
    assert checked > 60
