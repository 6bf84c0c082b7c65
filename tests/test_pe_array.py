"""PeArray: every PE kind behind the matrix unit's boundary, bit for bit (amaranth.sim).

Random operand / scale / init streams (several batches, groups of 32 and 64, K-split
starting accumulators, INT4 and INT8 weights, random idle cycles on every input and
random backpressure on the output) go through ``PeArray(kind)``; the accumulators must
equal :mod:`airfoil.formats` arithmetic and those of ``PeArray("dsp")`` (today's
``DenseChains + GroupRescaler`` path) on the same streams.
"""

from __future__ import annotations

import random

import pytest
import torch
from amaranth.sim import Simulator

from airfoil.formats import SCALE_SHIFT_MAX, accumulate, group_psum, rescale
from airfoil.isa import WeightFormat
from hdl.decode_unit.rescaler import GroupRescaler
from hdl.dsp_chain.dense import DenseChains
from hdl.pe.array import PE_KINDS, PeArray
from hdl.streams import init_layout, operand_layout, scale_layout

WMAX = {"int4": 7, "int8": 127}
K0 = -20


def make_case(*, chains, lanes, group, groups, batches, fmt, use_init, seed,
              shift=None):
    """Random streams and the reference accumulators (from :mod:`airfoil.formats`).

    Return ``(steps, scales, inits, expected)``: operand steps and scale/init items as
    dicts for the stream layouts, and per batch the list of ``chains`` accumulators.
    ``shift``: every group's ``k - k0`` (default random in ``0..SCALE_SHIFT_MAX``, the
    ends included).
    """
    rng = random.Random(seed)
    C, L, K = chains, lanes, group * groups
    lo = -WMAX[fmt] - 1
    steps, scales, inits, expected = [], [], [], []
    for _ in range(batches):
        w = torch.tensor([[rng.randint(lo, WMAX[fmt]) for _ in range(K)] for _ in range(C)])
        x = torch.tensor([rng.randint(-128, 127) for _ in range(K)])
        if shift is None:
            sh = torch.tensor([[rng.choice([0, SCALE_SHIFT_MAX, rng.randint(0, 15)])
                                for _ in range(groups)] for _ in range(C)])
        else:
            sh = torch.full((C, groups), shift)
        mant = torch.tensor([[rng.randint(1, 2047) for _ in range(groups)]
                             for _ in range(C)])
        init = torch.tensor([rng.randint(-(1 << 55), (1 << 55) - 1) for _ in range(C)])
        for s in range(K // L):
            steps.append({"w": [[int(w[c, s * L + i]) for i in range(L)] for c in range(C)],
                          "x": [int(v) for v in x[s * L:(s + 1) * L]],
                          "group_last": int((s + 1) * L % group == 0),
                          "batch_last": int(s == K // L - 1), "wide": int(fmt == "int8")})
        for gi in range(groups):
            scales.append({"m": [int(mant[c, gi]) for c in range(C)],
                           "k": [K0 + int(sh[c, gi]) for c in range(C)], "bad": 0})
        if use_init:
            inits.append({"init": [int(v) for v in init]})
        scaled = rescale(group_psum(w, x, group), mant, sh + K0, K0)
        acc = accumulate(scaled, acc=init if use_init else None)
        expected.append([int(v) for v in acc])
    return steps, scales, inits, expected


def run(dut, steps, scales, inits, n_out, *, use_init, seed=0, idle=0.0, stall=0.0,
        max_cycles=100_000):
    """Drive the three input streams, collect ``n_out`` batches of ``accs``.

    Return ``(results, cycles, error)``; ``cycles`` counts from the first cycle to the
    cycle the last batch is taken.
    """
    C, L = dut.chains, dut.lanes
    lays = {"operands": operand_layout(C, L), "scales": scale_layout(C),
            "init": init_layout(C)}
    out, state = [], {"cycles": 0}

    def driver(name, items, rng):
        port = getattr(dut, name)

        async def bench(ctx):
            for item in items:
                while rng.random() < idle:
                    await ctx.tick()
                ctx.set(port.payload, lays[name].const(item))
                ctx.set(port.valid, 1)
                await ctx.tick().until(port.ready)
                ctx.set(port.valid, 0)
        return bench

    rng = random.Random(seed)

    async def monitor(ctx):
        ctx.set(dut.k0, K0)
        ctx.set(dut.use_init, use_init)
        n = 0
        while len(out) < n_out:
            ready = rng.random() >= stall
            ctx.set(dut.accs.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.accs.valid, dut.accs.payload)
            n += 1
            if valid and ready:
                out.append([int(payload[c]) for c in range(C)])
            if n > max_cycles:
                raise TimeoutError(f"{len(out)} of {n_out} batches after {n} cycles")
        state["cycles"] = n
        state["error"] = ctx.get(dut.error)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for i, (name, items) in enumerate((("operands", steps), ("scales", scales),
                                       ("init", inits))):
        sim.add_testbench(driver(name, items, random.Random(seed * 7 + i)), background=True)
    sim.add_testbench(monitor)
    sim.run()
    return out, state["cycles"], state["error"]


def _array(kind, chains=2, lanes=8, **kw):
    return PeArray(kind=kind, chains=chains, lanes=lanes, group_max=64, group_min=32, **kw)


def _props(kind, **kw):
    """A :class:`PeArray` only asked for its properties (never simulated)."""
    dut = kw.pop("dut", None) or _array(kind, **kw)
    dut._MustUse__silence = True
    return dut


CASES = [  # (fmt, group, groups per batch, batches, use_init)
    ("int4", 32, 2, 3, True),
    ("int8", 64, 1, 3, False),
    ("int4", 64, 2, 2, False),
    ("int8", 32, 3, 2, True),
]


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("kind,case", [
    pytest.param(kind, c, id=f"{kind}-{c[0]}-g{c[1]}x{c[2]}-b{c[3]}" + ("-init" if c[4] else ""))
    for kind in ("bitserial", "lut") for c in CASES if c[0] in PeArray.formats_of(kind)])
def test_kind_matches_dsp_and_formats(kind, case, seed):
    fmt, group, groups, batches, use_init = case
    steps, scales, inits, expected = make_case(
        chains=2, lanes=8, group=group, groups=groups, batches=batches, fmt=fmt,
        use_init=use_init, seed=seed * 100 + group)
    kw = dict(use_init=use_init, seed=seed, idle=0.3, stall=0.3)
    got, _, err = run(_array(kind), steps, scales, inits, batches, **kw)
    ref, _, ref_err = run(_array("dsp"), steps, scales, inits, batches, **kw)
    assert ref == expected, f"seed {seed}: dsp path differs from airfoil.formats"
    assert got == ref, f"seed {seed}: {kind} differs from dsp"
    assert not err and not ref_err


@pytest.mark.parametrize("kind", PE_KINDS)
def test_dsp_and_formats_back_to_back(kind):
    """No gaps at all (the stream rates the matrix unit offers at best)."""
    steps, scales, inits, expected = make_case(
        chains=2, lanes=8, group=32, groups=2, batches=3, fmt="int4", use_init=True, seed=9)
    got, _, err = run(_array(kind), steps, scales, inits, 3, use_init=True)
    assert got == expected and not err


@pytest.mark.parametrize("kind", PE_KINDS)
def test_heavy_output_backpressure(kind):
    """Short batches and an output that is mostly not ready: results queue up in the
    chains, the operand stream waits, nothing is lost or reordered."""
    steps, scales, inits, expected = make_case(
        chains=2, lanes=8, group=32, groups=1, batches=5, fmt="int8" if kind != "lut"
        else "int4", use_init=True, seed=11)
    got, _, err = run(_array(kind), steps, scales, inits, 5, use_init=True, seed=3,
                      idle=0.1, stall=0.85)
    assert got == expected and not err


@pytest.mark.parametrize("kind", PE_KINDS)
def test_cycles_per_step(kind):
    """Back to back, ``n`` more steps cost ``n * cycles_per_step`` more cycles."""
    cyc = {}
    for groups in (2, 4):
        steps, scales, inits, expected = make_case(
            chains=2, lanes=8, group=32, groups=groups, batches=1, fmt="int4",
            use_init=False, seed=3, shift=SCALE_SHIFT_MAX)
        got, cyc[groups], _ = run(_array(kind), steps, scales, inits, 1, use_init=False)
        assert got == expected
    dut = _props(kind)
    cps = {"dsp": 1, "bitserial": 4, "lut": 4}[kind]
    assert dut.cycles_per_step("int4") == dut.cycles_per_step(WeightFormat.INT4) == cps
    assert cyc[4] - cyc[2] == 2 * (32 // 8) * dut.cycles_per_step("int4")
    assert dut.cycles_per_group("int4", 32) == 4 * cps


@pytest.mark.parametrize("kind", ["bitserial", "lut"])
def test_rescaler_bound_groups(kind):
    """With one scale bit per cycle a shift-15 group's rescale (27 cycles) outlasts its
    16 operand cycles: the steps wait, and ``cycles_per_group`` says how long."""
    cyc = {}
    for groups in (2, 4):
        steps, scales, inits, expected = make_case(
            chains=2, lanes=8, group=32, groups=groups, batches=1, fmt="int4",
            use_init=False, seed=4, shift=SCALE_SHIFT_MAX)
        dut = _array(kind, scale_bits_per_cycle=1)
        got, cyc[groups], _ = run(dut, steps, scales, inits, 1, use_init=False)
        assert got == expected
    assert dut.rescale_cycles(SCALE_SHIFT_MAX) == 27
    assert cyc[4] - cyc[2] == 2 * dut.cycles_per_group("int4", 32) == 2 * 27


def test_rescaler_width_keeps_up():
    """The default rescaler width keeps up with the smallest group at the largest shift."""
    for kind in ("bitserial", "lut"):
        for lanes, gmin in ((8, 32), (8, 64), (16, 32), (32, 32)):
            dut = _props(kind, dut=PeArray(kind=kind, chains=1, lanes=lanes, group_max=128,
                                           group_min=gmin))
            steps = gmin // lanes * dut.cycles_per_step("int4")
            fits = dut.rescale_cycles(SCALE_SHIFT_MAX) <= steps
            assert fits or dut.scale_bits_per_cycle == 4
            if dut.scale_bits_per_cycle > 1:       # the narrower one would not keep up
                narrower = _props(kind, dut=PeArray(
                    kind=kind, chains=1, lanes=lanes, group_max=128, group_min=gmin,
                    scale_bits_per_cycle=dut.scale_bits_per_cycle - 1))
                assert narrower.rescale_cycles(SCALE_SHIFT_MAX) > steps


@pytest.mark.parametrize("kind", PE_KINDS)
@pytest.mark.parametrize("bad", ["shift_high", "shift_low", "bad_flag"])
def test_bad_scale_sets_error(kind, bad):
    steps, scales, inits, _ = make_case(chains=2, lanes=8, group=32, groups=2, batches=1,
                                        fmt="int4", use_init=False, seed=5)
    if bad == "shift_high":
        scales[1]["k"][1] = K0 + SCALE_SHIFT_MAX + 1
    elif bad == "shift_low":
        scales[0]["k"][0] = K0 - 1
    else:
        scales[1]["bad"] = 1
    _, _, err = run(_array(kind), steps, scales, inits, 1, use_init=False)
    assert err == 1


def test_formats_and_errors():
    for kind, fmts in (("dsp", ("int4", "int8")), ("bitserial", ("int4", "int8")),
                       ("lut", ("int4",))):
        assert _props(kind).weight_formats == PeArray.formats_of(kind) == fmts
    assert _props("bitserial").cycles_per_step("int8") == 4
    assert _props("dsp").cycles_per_step(WeightFormat.INT8) == 2
    with pytest.raises(ValueError, match=r"int8.*not supported by the lut.*supported: int4"):
        _props("lut").cycles_per_step("int8")
    with pytest.raises(ValueError, match=r"PE kind must be one of dsp, bitserial, lut"):
        PeArray.formats_of("fpga")
    with pytest.raises(ValueError, match=r"PE kind must be one of dsp, bitserial, lut, "
                                         r"not 'gpu'"):
        PeArray(kind="gpu", chains=2, lanes=8, group_max=64)
    with pytest.raises(TypeError, match="Chain count must be a positive integer, not 0"):
        PeArray(kind="dsp", chains=0, lanes=8, group_max=64)
    with pytest.raises(ValueError, match="multiple of lanes \\(8\\), not 60"):
        PeArray(kind="lut", chains=2, lanes=8, group_max=60)
    with pytest.raises(ValueError, match="LUT group must be 2..6 and divide lanes"):
        PeArray(kind="lut", chains=2, lanes=8, group_max=64, lut_group=3)
    with pytest.raises(ValueError, match="shift must be an integer in 0..15, not 16"):
        _props("lut").latency_at(16)
    with pytest.raises(ValueError, match="scale_bits_per_cycle must be 1..4, not 5"):
        PeArray(kind="bitserial", chains=2, lanes=8, group_max=64, scale_bits_per_cycle=5)


def test_same_boundary_for_every_kind():
    sigs = {kind: _props(kind).signature for kind in PE_KINDS}
    assert sigs["bitserial"] == sigs["dsp"] and sigs["lut"] == sigs["dsp"]
    assert set(dict(sigs["dsp"].members)) == {"operands", "scales", "init", "accs", "k0",
                                              "use_init", "error"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bitserial", "lut"])
def test_wide_engine_matches_dsp(kind):
    """4 chains x 16 lanes, groups of 64 and 128, K-split init."""
    for seed, (group, groups) in enumerate([(64, 2), (128, 1)]):
        steps, scales, inits, expected = make_case(
            chains=4, lanes=16, group=group, groups=groups, batches=2, fmt="int4",
            use_init=True, seed=seed)
        mk = (lambda k: PeArray(kind=k, chains=4, lanes=16, group_max=128, group_min=64))
        kw = dict(use_init=True, seed=seed, idle=0.2, stall=0.2)
        got, _, _ = run(mk(kind), steps, scales, inits, 2, **kw)
        ref, _, _ = run(mk("dsp"), steps, scales, inits, 2, **kw)
        assert ref == expected and got == ref


def _batch_latency(dut, shift):
    """Cycles from the last step's handshake (one group of 32 back to back) to ``accs``."""
    steps, scales, _, _ = make_case(chains=2, lanes=8, group=32, groups=1, batches=1,
                                    fmt="int4", use_init=False, seed=6, shift=shift)
    state = {}

    async def bench(ctx):
        ctx.set(dut.k0, K0)
        ctx.set(dut.accs.ready, 1)
        ctx.set(dut.scales.payload, scale_layout(2).const(scales[0]))
        ctx.set(dut.scales.valid, 1)
        for s in steps:
            ctx.set(dut.operands.payload, operand_layout(2, 8).const(s))
            ctx.set(dut.operands.valid, 1)
            await ctx.tick().until(dut.operands.ready)
        ctx.set(dut.operands.valid, 0)
        n = 0
        while True:
            _, _, valid = await ctx.tick().sample(dut.accs.valid)
            n += 1
            if valid:
                break
        state["n"] = n

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return state["n"]


@pytest.mark.parametrize("kind,r", [("dsp", None), ("bitserial", None), ("bitserial", 4),
                                    ("lut", None), ("lut", 1)])
def test_latency(kind, r):
    kw = {} if r is None else {"scale_bits_per_cycle": r}
    for shift in (0, 7, SCALE_SHIFT_MAX):
        dut = _array(kind, **kw)
        assert _batch_latency(dut, shift) == dut.latency_at(shift), shift
    assert dut.latency == dut.latency_at(SCALE_SHIFT_MAX)
    if kind == "dsp":
        parts = [DenseChains(chains=2, lanes=8, group_max=64),
                 GroupRescaler(chains=2, group_max=64)]
        for p in parts:
            p._MustUse__silence = True
        assert dut.latency == sum(p.latency for p in parts)
