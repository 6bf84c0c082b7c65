"""Streamed MV (hdl/core/stream_mv.py): decode unit -> sparse chains -> rescale -> OUT.

Fast cases run the step adapter and the unit's error paths in ``amaranth.sim``; the RTL
cases (``rtl``) run the streamed-GEMV harness under cocotb + Verilator, weights read over
AXI4 from the memory model with random stalls and idle cycles, and compare every result
bit for bit with the golden (:func:`airfoil.packing.unpack_tensor` of the image, then
:func:`airfoil.formats.linear_reference`). One Verilator build per geometry serves all
cases; the wider geometries are ``slow``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Value
from amaranth.sim import Simulator

from airfoil import isa
from airfoil.config import load_config
from airfoil.packing import BITMOD_TAGS, BLOCK_CODE, StreamGeometry, expected_beats, pack_records
from hdl.build import write_verilog
from hdl.core.fetch import ENTRY_LAYOUT
from hdl.core.stream_mv import StepAdapter, StreamGemvHarness, StreamMatrix
from sim.measure.stream import harness_verilog, stream_runs
from sim.tb_decode.stimulus import random_records, stream_words
from sim.tb_stream.rtl import check_results, run_stream_rtl
from sim.tb_stream.stimulus import StreamCase, make_case

#: The small geometry of the fast RTL set: 64-bit words, 8 lanes, 2 chains (a beat holds
#: up to 4 lane-vectors, so the adapter spreads beats over several steps), ``MM`` of up to
#: 4 tokens.
TINY = dict(chains=2, lanes=8, word_bits=64, act_bytes=1024, out_bytes=256,
            group_sizes=(32, 64, 128),
            patterns=("dense", "1:4", "2:4", "2:8", "4:16", "8:16", "block"), tokens=4)
TINY_MEM = dict(latency=12, outstanding=2, max_burst=4)
NMS = ["dense", "1:4", "2:4", "2:8", "4:16", "8:16", "block"]
#: INT6 and the FP4/FP3 variants, drawn per record in the ``bitmod`` case.
BITMOD_NAMES = [t.name.lower() for t in BITMOD_TAGS]
#: The smallest unit for the error paths in amaranth.sim (its elaboration dominates).
ERR_UNIT = dict(chains=1, lanes=8, word_bits=64, act_bytes=1024, out_bytes=256,
                group_sizes=(32, 64), patterns=("dense", "2:4"))


# -- the step adapter (amaranth.sim) -------------------------------------------------------

def _expected_steps(geom, raw):
    """(w, idx, step, first, last, nm, tag) of every step of a stream, from the reference
    reader: step ``s`` of a record is its lane-vectors ``s * rows ..``, one per row, and
    its k-step index the ``s``-th set bit of the record's step mask."""
    from airfoil.packing import parse_stream
    out = []
    R, L = geom.rows, geom.lanes
    for rc in parse_stream(geom, raw):
        w, x = rc.lane_order(L)
        w = w.reshape(-1, R, L)
        x = x.reshape(-1, R, L)
        n = w.shape[0]
        mask = rc.step_mask(L)
        ksteps = [i for i in range(mask.bit_length()) if mask >> i & 1]
        assert len(ksteps) == n
        for s in range(n):
            out.append((w[s].tolist(), x[s].tolist(), ksteps[s], int(s == 0),
                        int(s == n - 1), rc.nm, rc.tag.value))
    return out


def _run_adapter(geom, seed, *, stall=0.3, idle=0.3):
    rng = np.random.default_rng(seed)
    recs = random_records(geom, rng, 12, sparsity=(0, 0, 1, 2, 3, 4, 5, BLOCK_CODE))
    raw = pack_records(geom, recs)
    beats = expected_beats(geom, raw)
    want = _expected_steps(geom, raw)
    dut = StepAdapter(geometry=geom)
    lay = dut.beats.payload.shape()
    got = []
    prng = np.random.default_rng(seed + 100)

    async def bench(ctx):
        i = 0
        cycles = 0
        while len(got) < len(want) and cycles < 50 * len(beats) + 200:
            offer = i < len(beats) and prng.random() >= idle
            ctx.set(dut.beats.valid, int(offer))
            if offer:
                ctx.set(dut.beats.payload, lay.const(beats[i]))
            ready = int(prng.random() >= stall)
            ctx.set(dut.steps.ready, ready)
            took = offer and ctx.get(dut.beats.ready)
            if ctx.get(dut.steps.valid) and ready:
                p = ctx.get(dut.steps.payload)
                got.append(([[int(v) for v in row] for row in p.w],
                             [[int(v) for v in row] for row in p.idx], int(p.step),
                             int(p.first), int(p.last), int(p.nm), int(p.tag)))
            await ctx.tick()
            i += int(bool(took))
            cycles += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got, want, dut


@pytest.mark.parametrize("geom", [StreamGeometry(word_bits=64, lanes=4, rows=2),
                                  StreamGeometry(word_bits=128, lanes=8, rows=8),
                                  StreamGeometry(word_bits=128, lanes=8, rows=3)],
                         ids=["beat>rows", "beat=rows", "rows3"])
@pytest.mark.parametrize("seed", [1, 2])
def test_adapter_regroups_beats_into_steps(geom, seed):
    got, want, _ = _run_adapter(geom, seed)
    assert len(got) == len(want), f"seed {seed}: {len(got)} steps, expected {len(want)}"
    for j, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"seed {seed}: step {j} differs: got {g[2:]}, expected {w[2:]}"


def test_adapter_keeps_one_step_per_cycle_when_rows_cover_a_beat():
    """rows == beat_vectors: no stall, no idle -> every cycle moves one step."""
    geom = StreamGeometry(word_bits=128, lanes=8, rows=8)
    got, want, dut = _run_adapter(geom, 3, stall=0.0, idle=0.0)
    assert got == want
    assert dut.latency == 1


def test_parameters_are_validated():
    with pytest.raises(TypeError, match="Chain count must be an integer >= 1, not 0"):
        StreamMatrix(chains=0, lanes=8, word_bits=128, act_bytes=1024, out_bytes=256)
    with pytest.raises(ValueError, match="at most 256 bits .* not 512"):
        StreamMatrix(chains=2, lanes=8, word_bits=512, act_bytes=1024, out_bytes=256)
    with pytest.raises(ValueError, match=r"Group sizes .* not \(16,\)"):
        StreamMatrix(chains=2, lanes=8, word_bits=128, act_bytes=1024, out_bytes=256,
                     group_sizes=(16,))
    with pytest.raises(ValueError, match="OUT buffer size .* not 100"):
        StreamMatrix(chains=2, lanes=8, word_bits=128, act_bytes=1024, out_bytes=100)
    with pytest.raises(TypeError, match="geometry must be a StreamGeometry, not 3"):
        StepAdapter(geometry=3)


def test_u280_slice_config_is_sized_for_int4_at_one_word_per_cycle():
    cfg = load_config("u280_slice")
    geom = StreamMatrix.geometry_of(cfg)
    assert (cfg.memory.word_bits, cfg.memory.read_latency, cfg.memory.outstanding) == \
        (512, 64, 16)
    assert geom.rows * geom.lanes * 4 >= cfg.memory.word_bits       # INT4 word per cycle
    assert geom.rows * 2 == geom.beat_vectors                        # INT2 at half a word
    assert 32 * cfg.chains * cfg.lanes <= 9024                       # 32 slices, 1 DSP/lane


# -- the unit's errors (amaranth.sim) -------------------------------------------------------

def _run_unit(unit_kw, instr_fields, words, *, opcode=isa.Opcode.MV, cycles=600):
    dut = StreamMatrix(**unit_kw)
    f = dict(instr_fields)
    f["wfmt"] = isa.WeightFormat[f["wfmt"]] if isinstance(f["wfmt"], str) else f["wfmt"]
    f["out_fmt"] = isa.OutFormat[f["out_fmt"]]
    bits = isa.encode(opcode, **f)
    offs = {name: fld.offset for name, fld in ENTRY_LAYOUT}
    entry = bits << offs["instr"] | 7 << offs["index"]
    out = {}

    async def bench(ctx):
        ctx.set(Value.cast(dut.q.payload), entry)
        ctx.set(dut.q.valid, 1)
        ctx.set(dut.rel.ready, 1)
        i, q_valid = 0, 1
        for _ in range(cycles):
            w_valid = i < len(words)
            ctx.set(dut.words[0].valid, int(w_valid))
            if w_valid:
                ctx.set(dut.words[0].payload, words[i])
            q_ready, w_ready = ctx.get(dut.q.ready), ctx.get(dut.words[0].ready)
            if ctx.get(dut.rel.valid):
                out["released"] = True
            await ctx.tick()
            if q_valid and q_ready:
                q_valid = 0
                ctx.set(dut.q.valid, 0)
            i += int(w_valid and w_ready)
            if ctx.get(dut.err) or out.get("released"):
                break
        out.update(err=ctx.get(dut.err), code=ctx.get(dut.err_code), pc=ctx.get(dut.err_pc))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


def _tiny_case(**kw):
    geom = StreamGeometry(word_bits=64, lanes=8, rows=1)
    c = make_case(geom, name="err", rows=1, k=64, group=32, fmt="int4", seed=5, **kw)
    return c, stream_words(geom, c["image"])


@pytest.mark.parametrize("change, code", [
    ({"group": 64}, isa.ErrorCode.MALFORMED),          # records are group 32
    ({"bias": 1}, isa.ErrorCode.MALFORMED),
    ({"m": 2}, isa.ErrorCode.MALFORMED),
    ({"k": 48}, isa.ErrorCode.MALFORMED),              # not a multiple of the group
    ({"acc_init": 0}, isa.ErrorCode.UNSUPPORTED),      # K-split not built
    ({"wfmt": "INT4"}, isa.ErrorCode.UNSUPPORTED),
    ({"abuf_addr": 1024 - 32}, isa.ErrorCode.BUFFER_RANGE),
    ({"abuf_addr": 4}, isa.ErrorCode.UNSUPPORTED),     # not word aligned
    ("MM", isa.ErrorCode.UNSUPPORTED),                 # m = 2 > the unit's 1 token
    ("MM0", isa.ErrorCode.MALFORMED),                  # m = 0
], ids=["group-mismatch", "bias", "m", "k", "k-split", "wgt-format", "act-range",
        "act-align", "mm-tokens", "mm-m0"])
def test_errors_are_reported(change, code):
    c, words = _tiny_case()
    fields = dict(c["instr"])
    opcode = isa.Opcode.MV
    if change in ("MM", "MM0"):
        opcode = isa.Opcode.MM
        fields["m"] = 2 if change == "MM" else 0
    else:
        fields.update(change)
    out = _run_unit(ERR_UNIT, fields, words, opcode=opcode)
    assert out["err"] == 1 and out["code"] == code, out
    assert out["pc"] == 7


def test_block_record_of_another_group_is_malformed():
    """Block records of group 32 under an MV of group 64: the step indices fit either group,
    the group code the beats carry does not."""
    geom = StreamGeometry(word_bits=64, lanes=8, rows=1)
    c = make_case(geom, name="blk", rows=1, k=64, group=32, fmt="int4", sparsity="block",
                  block_keep=0.25, seed=8)
    kw = {**ERR_UNIT, "patterns": ("dense", "block")}
    out = _run_unit(kw, c["instr"], stream_words(geom, c["image"]))
    assert out["err"] == 0 and out.get("released"), out
    out = _run_unit(kw, {**c["instr"], "group": 64}, stream_words(geom, c["image"]))
    assert out["err"] == 1 and out["code"] == isa.ErrorCode.MALFORMED, out
    out = _run_unit(ERR_UNIT, c["instr"], stream_words(geom, c["image"]))   # not built
    assert out["err"] == 1 and out["code"] == isa.ErrorCode.UNSUPPORTED, out


def test_pattern_not_built_is_unsupported():
    geom = StreamGeometry(word_bits=64, lanes=8, rows=1)
    c = make_case(geom, name="nm", rows=1, k=64, group=32, fmt="int4", sparsity="2:4",
                  seed=6)
    out = _run_unit({**ERR_UNIT, "patterns": ("dense",)}, c["instr"],
                    stream_words(geom, c["image"]))
    assert out["err"] == 1 and out["code"] == isa.ErrorCode.UNSUPPORTED, out


def test_bad_scale_is_scale_range():
    c, words = _tiny_case()
    out = _run_unit(ERR_UNIT, {**c["instr"], "k0": 5}, words)      # k - k0 < 0
    assert out["err"] == 1 and out["code"] == isa.ErrorCode.SCALE_RANGE, out


def test_clean_case_releases_without_error():
    c, words = _tiny_case()
    out = _run_unit(ERR_UNIT, c["instr"], words)
    assert out["err"] == 0 and out.get("released"), out


# -- RTL ---------------------------------------------------------------------------------

def _harness(tmp_root, name, unit_kw, mem):
    h = StreamGemvHarness(unit_kw=unit_kw, max_burst=mem["max_burst"],
                          outstanding=mem["outstanding"])
    return write_verilog(h, name, tmp_root / name, params=h.params())


@pytest.fixture(scope="module")
def tiny_harness(tmp_path_factory):
    return _harness(tmp_path_factory.mktemp("stream_rtl"), "stream_gemv_tiny", TINY, TINY_MEM)


def _cases(geom, seed, *, big=False):
    """Every format x pattern, a mixed tensor, a tensor of BitMoD formats (INT6 and the
    FP4/FP3 variants, with N:M patterns) drawn per record, and odd row counts."""
    rows = 2 * geom.rows + 1                       # rows % chains != 0
    k = 256 if big else 128
    # The smallest group every pattern fits: a 512-bit word's group spans whole words and
    # keeps a multiple of 32 lanes at 1:4.
    small = 32 if geom.word_bits <= 256 else 128
    cases = []
    for fmt in ("int4", "int8"):
        for sp in NMS:
            cases.append(make_case(geom, name=f"{fmt}-{sp}", rows=rows, k=k, group=128,
                                   fmt=fmt, sparsity=sp, seed=seed * 100 + len(cases)))
    for fmt in ("int2", "int3", "ovp"):
        cases.append(make_case(geom, name=f"{fmt}-dense", rows=rows, k=k, group=64, fmt=fmt,
                               seed=seed * 100 + len(cases)))
    cases.append(make_case(geom, name="mixed", rows=3 * geom.rows - 1, k=2 * k, group=small,
                           fmt=["int2", "int3", "int4", "int8", "ovp"], sparsity=NMS,
                           seed=seed * 100 + len(cases), out_fmt="INT16", abuf_addr=64,
                           obuf_addr=16))
    cases.append(make_case(geom, name="bitmod", rows=3 * geom.rows + 1, k=k, group=small,
                           fmt=BITMOD_NAMES, sparsity=NMS, seed=seed * 100 + len(cases),
                           out_fmt="INT16"))
    cases.append(make_case(geom, name="int4-rows1", rows=1, k=k, group=64, fmt="int4",
                           sparsity="2:4", seed=seed * 100 + len(cases), out_fmt="INT32"))
    # Two MVs consuming one stream: the first read carries both tensors' records.
    a = make_case(geom, name="stream-a", rows=rows, k=k, group=small, fmt=["int2", "int8"],
                  sparsity=["dense", "2:4"], seed=seed * 100 + len(cases))
    b = make_case(geom, name="stream-b", rows=geom.rows, k=k // 2, group=64,
                  fmt=["int3", "ovp"], seed=seed * 100 + len(cases) + 1, out_fmt="INT16")
    cases.append(StreamCase(a, image=a["image"] + b["image"],
                            streams=[x + y for x, y in zip(a["streams"], b["streams"])],
                            image_words=a["image_words"] + b["image_words"]))
    cases.append(StreamCase(b, image=b"", streams=[b""] * len(b["streams"]), image_words=0))
    return cases


@pytest.mark.rtl
@pytest.mark.parametrize("seed", [1, 2])
def test_rtl_every_format_and_pattern_bit_exact(tiny_harness, seed):
    geom = StreamGeometry(word_bits=TINY["word_bits"], lanes=TINY["lanes"],
                          rows=TINY["chains"])
    cases = _cases(geom, seed)
    v, j = tiny_harness
    res = run_stream_rtl(v, j, cases, latency=TINY_MEM["latency"],
                         outstanding=TINY_MEM["outstanding"], seed=seed, stall=0.25,
                         idle=0.3)
    check_results(cases, res)
    for c, r in zip(cases, res):
        if not c["name"].startswith("stream-"):
            assert r["beats"] == c["image_words"], (c["name"], r)
        assert r["useful"] <= r["beats"] <= r["cycles"]


def _config(name):
    """A board config with every N:M pattern, block skip and the BitMoD formats built (the
    test board lists only dense and INT4/INT8)."""
    cfg = load_config(name)
    return dataclasses.replace(cfg, sparsity=tuple(["dense"] + NMS[1:]),
                               weight_formats=tuple(dict.fromkeys(cfg.weight_formats +
                                                                  tuple(BITMOD_NAMES))))


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.parametrize("config", ["test", "u280_slice"])
def test_rtl_config_geometries_bit_exact(config):
    cfg = _config(config)
    v, j = harness_verilog(cfg, Path("build") / "stream" / cfg.name)
    geom = StreamMatrix.geometry_of(cfg)
    for seed in (1, 2):
        cases = _cases(geom, seed, big=True)
        res = run_stream_rtl(v, j, cases, latency=cfg.memory.read_latency,
                             outstanding=cfg.memory.outstanding, seed=seed, stall=0.2,
                             idle=0.2)
        check_results(cases, res)


@pytest.mark.rtl
@pytest.mark.slow
def test_bench_figures_are_work_over_rtl_cycles():
    """The bench code at a small shape: each figure is the run's counts over its cycles."""
    from bench.stream import stream_figures

    cfg = _config("test")
    runs = stream_runs(cfg, rows=2 * cfg.chains, k=512, formats=("int2", "int4"))
    figs = stream_figures(cfg, runs)
    for f in ("int2", "int4"):
        r = runs[f"{f}-dense"]
        name = f"decode_weight_port_utilization_{f}"
        assert figs[name] == r["useful"] / r["cycles"] and 0 < figs[name] <= 1
        assert figs[f"{name}_cycles"] == r["cycles"]
        assert figs[f"{name}_config_hash"] == cfg.config_hash
        assert r["useful"] == r["beats"]            # one channel: no whole padding words
    d, s = runs["int4-dense"], runs["int4-2:4"]
    assert figs["sparse_2of4_streamed_cycle_ratio"] == s["cycles"] / d["cycles"]
    assert figs["sparse_2of4_streamed_bytes_ratio"] == s["image_bytes"] / d["image_bytes"]
    b = runs["int4-block"]
    assert figs["block_skip_streamed_cycle_ratio"] == b["cycles"] / d["cycles"] < 1
    assert figs["block_skip_streamed_cycle_ratio_cycles"] == b["cycles"]
    assert figs["block_skip_streamed_bytes_ratio"] == b["image_bytes"] / d["image_bytes"]


def _block_pair(geom, seed, *, rows, k):
    """A dense INT4 case and a block-skip INT4 case keeping half the k-steps of every
    record, of the same shape."""
    dense = make_case(geom, name="int4-dense", rows=rows, k=k, group=128, fmt="int4",
                      seed=seed)
    block = make_case(geom, name="int4-block50", rows=rows, k=k, group=128, fmt="int4",
                      sparsity="block", block_keep=0.5, seed=seed + 1)
    return dense, block


@pytest.mark.rtl
def test_rtl_block_skip_bit_exact_and_fewer_cycles_than_dense(tiny_harness):
    """Half the k-steps of each record skipped: bit-exact under random stalls, and fewer
    stream words and cycles than the dense layer of the same (odd) shape."""
    geom = StreamGeometry(word_bits=TINY["word_bits"], lanes=TINY["lanes"],
                          rows=TINY["chains"])
    dense, block = _block_pair(geom, 40, rows=2 * geom.rows + 1, k=384)
    v, j = tiny_harness
    for stall, idle in ((0.0, 0.0), (0.25, 0.3)):
        res = run_stream_rtl(v, j, [dense, block], latency=TINY_MEM["latency"],
                             outstanding=TINY_MEM["outstanding"], seed=3, stall=stall,
                             idle=idle)
        check_results([dense, block], res)
        assert block["image_words"] < dense["image_words"]
        assert res[1]["cycles"] < res[0]["cycles"], (stall, res)


def _mm_cases(geom, seed, tokens):
    """MMs of ``tokens`` vectors: dense and sparse INT4, a mixed tensor of every format and
    pattern, odd row counts and results at an offset."""
    rows = 2 * geom.rows + 1
    return [make_case(geom, name=f"mm{tokens}-int4-{sp}", rows=rows, k=256, group=128,
                      fmt="int4", sparsity=sp, seed=seed * 10 + i, tokens=tokens)
            for i, sp in enumerate(("dense", "2:4", "block"))] + [
        make_case(geom, name=f"mm{tokens}-mixed", rows=3 * geom.rows - 1, k=128, group=32,
                  fmt=["int2", "int3", "int4", "int8", "ovp"], sparsity=NMS,
                  seed=seed * 10 + 7, out_fmt="INT16", obuf_addr=16, tokens=tokens)]


@pytest.mark.rtl
@pytest.mark.parametrize("seed", [1, 2])
def test_rtl_mm_applies_each_record_to_every_token_bit_exact(tiny_harness, seed):
    """MM on streamed weights: 2, 3 and 4 (the unit's most) tokens per weight pass, each
    result bit-exact with the golden under random stalls, and each record read once: the
    stream words equal one MV's."""
    geom = StreamGeometry(word_bits=TINY["word_bits"], lanes=TINY["lanes"],
                          rows=TINY["chains"])
    cases = [c for t in (2, 3, TINY["tokens"]) for c in _mm_cases(geom, seed, t)]
    v, j = tiny_harness
    res = run_stream_rtl(v, j, cases, latency=TINY_MEM["latency"],
                         outstanding=TINY_MEM["outstanding"], seed=seed, stall=0.25,
                         idle=0.3)
    check_results(cases, res)
    for c, r in zip(cases, res):
        assert r["beats"] == c["image_words"], (c["name"], r)


@pytest.mark.rtl
def test_rtl_mm_reads_weights_once_for_all_tokens(tiny_harness):
    """One MM of 4 tokens against 4 MVs of the same weights (no stalls): the same results,
    a quarter of the stream words, and fewer cycles; the chains' work bounds the MM from
    below (4 tokens x k-steps)."""
    geom = StreamGeometry(word_bits=TINY["word_bits"], lanes=TINY["lanes"],
                          rows=TINY["chains"])
    T = TINY["tokens"]
    mm = make_case(geom, name="mm", rows=2 * geom.rows, k=256, group=128, fmt="int4",
                   seed=77, tokens=T)
    mvs = []
    for t in range(T):
        mv = StreamCase(mm, act=mm["act"][t], expected=mm["expected"][t * mm["rows"]:
                                                                     (t + 1) * mm["rows"]],
                        instr={**mm["instr"], "m": 1}, tokens=1, name=f"mv{t}")
        mvs.append(mv)
    v, j = tiny_harness
    res = run_stream_rtl(v, j, [mm] + mvs, latency=TINY_MEM["latency"],
                         outstanding=TINY_MEM["outstanding"], seed=5)
    check_results([mm] + mvs, res)
    one, each = res[0], res[1:]
    assert one["beats"] == mm["image_words"] == each[0]["beats"]
    ksteps = mm["rows"] // geom.rows * mm["k"] // geom.lanes
    assert T * ksteps <= one["cycles"] < sum(r["cycles"] for r in each), (one, each)
