"""The sparse DSP chain: amaranth.sim unit tests and cocotb + Verilator regressions.

Every case builds a GEMV with :mod:`sim.tb_chain.model` (weights pruned or masked with
:mod:`airfoil.sparsity`, expected psums from :func:`airfoil.formats.group_psum`) and
checks each psum beat bit-exactly, in order, under random idle cycles and backpressure.
"""

import json
import random
from pathlib import Path

import pytest
import torch
from amaranth.sim import Simulator

from airfoil.errors import CompileError
from airfoil.formats import group_psum
from airfoil.sparsity import (NM_PATTERNS, SparsityMode, block_group_psum, block_mask,
                              block_schedule, check_nm, is_nm, mode_of, nm_compress, nm_nbytes,
                              nm_of, pack_nm, prune_nm, sparse_group_psum, unpack_nm)
from hdl.build import write_verilog
from hdl.dsp_chain.sparse import SparseChain
from sim.tb_chain.model import beat_span, build_job, random_weights

ALL = ("dense", "1:4", "2:4", "2:8", "4:16", "8:16", "block")
ROOT = Path(__file__).resolve().parent.parent
TB_DIR = ROOT / "sim" / "tb_chain"


# -- airfoil.sparsity ----------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["1:4", "2:4", "2:8", "4:16", "8:16"])
@pytest.mark.parametrize("bits", [4, 8])
def test_nm_pack_roundtrip_and_reference(pattern, bits):
    n, m = NM_PATTERNS[pattern]
    gen = torch.Generator().manual_seed(bits + m)
    w = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (5, 64), generator=gen)
    w[0, :m] = 0                                   # a window with fewer than n nonzeros
    q = prune_nm(w, n, m)
    assert is_nm(q, n, m)
    # Pruning keeps the n largest magnitudes of every window.
    kept = (q != 0).reshape(5, -1, m)
    mags = w.abs().reshape(5, -1, m)
    lowest_kept = torch.where(kept, mags, 1 << 20).amin(dim=2)
    highest_dropped = torch.where(kept | (mags == 0), -1, mags).amax(dim=2)
    assert bool((lowest_kept >= highest_dropped).all())
    vals, idx = nm_compress(q, n, m)
    assert vals.shape == (5, 64 * n // m)
    assert bool((idx.reshape(5, -1, n).diff(dim=2) > 0).all())   # increasing in a window
    vb, ib = pack_nm(q, n, m, bits)
    assert (len(vb), len(ib)) == nm_nbytes(5, 64, n, m, bits)
    assert torch.equal(unpack_nm(vb, ib, rows=5, k=64, n=n, m=m, bits=bits), q)
    x = torch.randint(-128, 128, (64,), generator=gen)
    assert torch.equal(sparse_group_psum(vals, idx, x, n, m, 32), group_psum(q, x, 32))


def test_nm_errors():
    q = torch.tensor([[1, 2, 0, 0, 3, 4, 5, 0]])
    with pytest.raises(CompileError, match=r"not 2:4 sparse: row 0, window 1 \(k 4..7\) has 3"):
        nm_compress(q, 2, 4)
    with pytest.raises(CompileError, match="k=8 is not a multiple of the N:M window m=16"):
        check_nm(q, 8, 16)
    with pytest.raises(CompileError, match="unknown sparsity pattern '3:4'"):
        mode_of("3:4")
    assert nm_of("2:8") == (2, 8) and nm_of("block") == (1, 1)


def test_block_skip_reference():
    q = torch.tensor([[0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                      [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4]])
    mask = block_mask(q, 4)
    assert mask.tolist() == [[False, True, False, False], [True, False, False, True]]
    assert block_schedule(mask[0].tolist(), 2) == [1, 2]    # empty group 1 reads block 2
    assert block_schedule(mask[1].tolist(), 2) == [0, 3]
    x = torch.arange(16) - 8
    assert torch.equal(block_group_psum(q, mask, x, 4, 8), group_psum(q, x, 8))


def test_prune_blocks_keeps_the_steps_of_largest_norm():
    """Per record (rows x group, the last batch short), ceil(density * steps) k-steps of
    largest L2 norm stay, ties to the lower step; density 1 is the identity."""
    from airfoil.sparsity import prune_blocks

    g = torch.Generator().manual_seed(4)
    w = torch.randn(7, 64, generator=g)                  # rows 3: batches 0..2; 2 groups
    w[6, 40:48] = 0.0                                    # last batch: one row only
    w[6, 48:56] = 5.0
    out = prune_blocks(w, rows=3, lanes=8, group=32, density=0.6)    # 4 steps: keep 3
    for r0 in range(0, 7, 3):
        for c in range(2):
            blk = w[r0:r0 + 3, c * 32:(c + 1) * 32].reshape(-1, 4, 8)
            got = out[r0:r0 + 3, c * 32:(c + 1) * 32].reshape(-1, 4, 8)
            norm = (blk ** 2).sum(dim=(0, 2))
            keep = set(torch.sort(norm, descending=True, stable=True).indices[:3].tolist())
            for s in range(4):
                want = blk[:, s] if s in keep else torch.zeros_like(blk[:, s])
                assert torch.equal(got[:, s], want), (r0, c, s)
    assert not out[6, 32:64].reshape(4, 8)[1].any() and out[6, 48:56].eq(5.0).all()
    ties = torch.ones(2, 32)
    assert prune_blocks(ties, rows=2, lanes=8, group=32, density=0.5)[:, :16].eq(1).all()
    assert not prune_blocks(ties, rows=2, lanes=8, group=32, density=0.5)[:, 16:].any()
    assert torch.equal(prune_blocks(w, rows=3, lanes=8, group=32), w)
    for bad, msg in ((0.0, "block density 0.0 is not accepted"),
                     (1.01, "block density 1.01 is not accepted")):
        with pytest.raises(CompileError, match=msg):
            prune_blocks(w, rows=3, lanes=8, group=32, density=bad)
    with pytest.raises(CompileError, match="do not split into groups of 32 and k-steps"):
        prune_blocks(w[:, :40], rows=3, lanes=8, group=32, density=0.5)


def _chain(bits, groups=4, lanes=8, patterns=ALL):
    return SparseChain(lanes=lanes, weight_bits=bits, patterns=patterns, groups=groups)


def _job(dut, bits, mode, seed, *, rows, kspans, gspans=None, split=0):
    gen = torch.Generator().manual_seed(seed)
    seg_lanes = dut.lanes >> split
    span = beat_span(mode, seg_lanes)
    k = span * kspans
    group = span * (gspans or kspans)
    q = random_weights(gen, rows, k, bits, mode, block=dut.lanes)
    x = torch.randint(-128, 128, (k,), generator=gen)
    return build_job(q, x, mode, lanes=dut.lanes, window=dut.window, group=group,
                     split=split, groups=dut.groups)


def _run(dut, beats, seed, *, p_idle=0.3, p_stall=0.3, max_cycles=20000):
    """Drive beats with idle cycles, take psums with backpressure; return psum beats and
    the cycles from the first operand handshake to the last psum handshake."""
    rng = random.Random(seed)
    got, times = [], {}
    n_out = sum(1 for b in beats if b["group_end"] or b["last"])

    async def producer(ctx):
        for t, b in enumerate(beats):
            while rng.random() < p_idle:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.payload, {**b, "mode": SparsityMode(b["mode"])})
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            if t == 0:
                times["first"] = ctx.get(cycle)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        while len(got) < n_out:
            ready = rng.random() >= p_stall
            ctx.set(dut.o.ready, ready)
            *_, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if ready and valid:
                nseg = 1 << payload.split
                got.append((tuple(payload.psum[s] for s in range(nseg)), payload.last))
                times["end"] = ctx.get(cycle)
        ctx.set(dut.o.ready, 0)

    from amaranth.hdl import Module, Signal
    cycle = Signal(32)
    top = Module()
    top.submodules.dut = dut
    top.d.sync += cycle.eq(cycle + 1)
    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(1e-6 * max_cycles)
    return got, times


@pytest.mark.parametrize("bits,mode", [(4, "dense"), (4, "1:4"), (8, "2:4"), (4, "8:16"),
                                       (8, "block")])
def test_chain_sim_modes(bits, mode):
    dut = _chain(bits)
    beats, expected = _job(dut, bits, mode, seed=bits * 7 + len(mode), rows=3, kspans=3)
    got, _ = _run(dut, beats, seed=11)
    assert got == expected


@pytest.mark.parametrize("split,mode", [(1, "2:4"), (2, "2:8")])
def test_chain_sim_split(split, mode):
    """Reduction nodes cut the chain: 2**split short dot products per beat."""
    dut = _chain(4)
    beats, expected = _job(dut, 4, mode, seed=split, rows=5, kspans=2, split=split)
    assert all(len(p) == 1 << split for p, _ in expected)
    got, _ = _run(dut, beats, seed=3)
    assert got == expected


def test_chain_sim_group_ends():
    """group_end emits a psum per quantization group inside a row."""
    dut = _chain(4)
    beats, expected = _job(dut, 4, "2:4", seed=4, rows=2, kspans=6, gspans=2)
    assert len(expected) == 2 * 3
    got, _ = _run(dut, beats, seed=4)
    assert got == expected


def test_chain_latency_and_full_rate():
    """delay is the measured latency; with no stalls one beat is taken every cycle."""
    dut = _chain(4)
    assert dut.delay == 7
    beats, expected = _job(dut, 4, "dense", seed=9, rows=1, kspans=1)
    got, t = _run(dut, beats, seed=0, p_idle=0, p_stall=0)
    assert got == expected and t["end"] - t["first"] == dut.delay
    beats, expected = _job(dut, 4, "2:4", seed=9, rows=4, kspans=5)
    got, t = _run(dut, beats, seed=0, p_idle=0, p_stall=0)
    assert got == expected
    assert t["end"] - t["first"] == len(beats) - 1 + dut.delay


def test_bad_mode_flag():
    dut = _chain(4, patterns=("dense", "2:4"))
    beats, _ = _job(_chain(4), 4, "1:4", seed=1, rows=1, kspans=1)
    flags = {}

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.payload, {**beats[0], "mode": SparsityMode(beats[0]["mode"]),
                                "act": beats[0]["act"][:dut.window]})
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        await ctx.tick().repeat(3)
        flags["bad"] = ctx.get(dut.bad_mode)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert flags["bad"] == 1


def test_parameters_validated():
    with pytest.raises(TypeError, match="Lane count must be a positive integer, not 0"):
        SparseChain(lanes=0, weight_bits=4)
    with pytest.raises(ValueError, match="power of two"):
        SparseChain(lanes=8, weight_bits=4, groups=3)
    with pytest.raises(ValueError, match="8:16"):
        SparseChain(lanes=4, weight_bits=4, patterns=("dense", "8:16"))
    with pytest.raises(ValueError, match="include 'dense'"):
        SparseChain(lanes=8, weight_bits=4, patterns=("2:4",))
    with pytest.raises(Exception, match="unknown sparsity pattern"):
        SparseChain(lanes=8, weight_bits=4, patterns=("dense", "3:4"))
    with pytest.raises(ValueError, match="packed lane pairs"):
        SparseChain(lanes=8, weight_bits=4, groups=8)
    assert SparseChain(lanes=8, weight_bits=4, patterns=ALL).window == 32
    assert SparseChain(lanes=8, weight_bits=4, patterns=("dense", "2:4")).window == 16


# -- cocotb + Verilator ----------------------------------------------------------------

_BUILT = {}


def _verilog(bits):
    """One Verilog build per weight width, shared by every mode, seed and shape."""
    if bits not in _BUILT:
        dut = _chain(bits)
        # The same top name as the bench's chain, so that they share one Verilator build.
        name = f"sparse_chain_l{dut.lanes}_int{bits}"
        v, j = write_verilog(dut, name, ROOT / "build" / "sim" / "src" / name,
                             params=dut.params())
        _BUILT[bits] = (v, j)
    return _BUILT[bits]


def _rtl_jobs(bits, cases, seed, idle=0.3, stall=0.3):
    """Run jobs ``cases`` = [(mode, data seed, rows, kspans, split, gspans)] back to back on
    the one build for ``bits``; every psum beat must match."""
    from sim.cocotb_runner import run_cocotb
    v, j = _verilog(bits)
    dut = _chain(bits)                   # asked for its parameters only, never elaborated
    dut._MustUse__silence = True
    jobs = []
    for mode, dseed, rows, kspans, split, gspans in cases:
        beats, expected = _job(dut, bits, mode, dseed, rows=rows, kspans=kspans, split=split,
                               gspans=gspans)
        jobs.append({"name": f"{mode} seed={dseed} rows={rows} kspans={kspans} "
                             f"split={split} group_spans={gspans}",
                     "beats": beats, "expected": expected})
    job = ROOT / "build" / "sim" / "jobs" / f"chain-int{bits}-{seed}-{abs(hash(str(cases)))}.json"
    job.parent.mkdir(parents=True, exist_ok=True)
    job.write_text(json.dumps({"jobs": jobs, "meta": str(j), "p_idle": idle,
                               "p_stall": stall}))
    res = run_cocotb(sources=[v], top=v.stem, test_module="tb_sparse_chain",
                     test_dir=TB_DIR, seed=seed, env={"CHAIN_JOB": job})
    assert len(res["jobs"]) == len(jobs)
    for r, one in zip(res["jobs"], jobs):
        assert r["error"] is None and r["mismatches"] == 0, r
        assert r["received"] == len(one["expected"]) and r["sent"] == len(one["beats"]), r
    return res


@pytest.mark.rtl(group="sparse_chain")
@pytest.mark.parametrize("bits", [4, 8])
def test_chain_rtl(bits):
    """Representative subset: every mode once, odd sizes, idle cycles and backpressure."""
    cases = [(mode, 100 + t, 3 if t % 2 else 1, 3 + 2 * (t % 2), 0, None)
             for t, mode in enumerate(ALL)]
    cases.append(("2:4", 200, 5, 3, 1, None))           # split: two short dot products
    _rtl_jobs(bits, cases, seed=bits)


@pytest.mark.rtl(group="sparse_chain")
@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("mode", list(ALL))
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_chain_rtl_sweep(bits, mode, seed):
    """{INT4, INT8} x every mode x odd sizes x seeds, group ends inside rows and splits."""
    cases = []
    for rows, kspans, gspans in ((1, 1, None), (3, 5, None), (7, 3, 1), (5, 9, 3)):
        cases.append((mode, seed * 100 + rows, rows, kspans, 0, gspans))
    for split in (1, 2):
        if mode != "block" and (8 >> split) % nm_of(mode)[0] == 0:
            cases.append((mode, seed * 100 + 50 + split, 5, 3, split, None))
    _rtl_jobs(bits, cases, seed=seed, idle=0.1 * (seed - 10), stall=0.15 * (seed - 10))


@pytest.mark.rtl(group="sparse_chain_bench")
def test_bench_figures_match_their_cycles():
    """The bench code at a small shape: each figure is the work over the cycles it ran."""
    from sim.measure.sparse import measure
    from airfoil.config import load_config

    fig = measure(load_config("test"), rows=3, k=256, group=128, build_dir=ROOT / "build",
                  synth=False)
    c24, cd = fig["sparse_2of4_cycle_ratio_cycles"]
    c14, cd2 = fig["sparse_1of4_cycle_ratio_cycles"]
    assert cd == cd2 == fig["dsp_int4_macs_per_dsp_cycle_with_fill_cycles"]
    assert fig["sparse_2of4_cycle_ratio"] == c24 / cd
    assert fig["sparse_1of4_cycle_ratio"] == c14 / cd
    assert fig["dsp_int4_macs_per_dsp_cycle_with_fill"] == 3 * 256 / cd / 4
    # Operands are taken one beat per cycle with no bubble: 2 MACs per DSP per cycle.
    assert fig["dsp_int4_macs_per_dsp_cycle_cycles"] == 3 * 256 // 8
    assert fig["dsp_int4_macs_per_dsp_cycle"] == 2.0
    assert fig["sparse_dense_utilisation"] == 3 * 256 / (cd * 8)
    # Full rate: one beat per cycle plus the pipeline fill (delay 7, inclusive count).
    assert cd == 3 * 256 // 8 + 7 and c24 == 3 * 256 // 16 + 7 and c14 == 3 * 256 // 32 + 7
