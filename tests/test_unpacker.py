"""The unpacker (hdl/decode_unit/unpacker.py) against airfoil.packing's reference reader.

amaranth.sim cases run in the fast set; cocotb + Verilator regressions carry ``rtl``
(and the long sweeps over the wider geometries ``slow``). Every case streams words made
by the real packer, with idle cycles on the input and backpressure on the output unless
it measures the rate, and compares every beat bit for bit.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from amaranth.hdl import Fragment, Module, Signal, signed
from amaranth.sim import Simulator

from airfoil.config import load_config
from airfoil.packing import (BITMOD_TAGS, BLOCK_CODE, NM_PATTERNS, TAG_BITS, RecordTag,
                             StreamGeometry, beat_layout, beat_value, expected_beats,
                             nm_index_bits, pack_records)
from hdl.build import write_verilog
from hdl.decode_unit.fp16 import fp16_fixed_hw
from hdl.decode_unit.unpacker import Unpacker
from sim.tb_decode.amsim import run_amaranth
from sim.tb_decode.engine import StreamEngine
from sim.tb_decode.rtl import run_unpacker_rtl
from sim.tb_decode.stimulus import make_case, random_records, stream_words

GEOMS = {
    "test": StreamGeometry.from_config(load_config("test")),     # 128-bit word, 8 lanes, 4 rows
    "u280": StreamGeometry.from_config(load_config("u280")),     # 256-bit word, 32 lanes, 2 rows
    "w512": StreamGeometry(word_bits=512, lanes=8, rows=4),
    "w64": StreamGeometry(word_bits=64, lanes=2, rows=1),
}
FORMATS = ["int2", "int3", "int4", "int8", "ovp", "uint4z"]
#: Sparsity codes drawn per record in mixes (dense twice as often, block skip included).
MIX_NM = (0, 0, 1, 2, 3, 4, 5, BLOCK_CODE)
_TAG = {"int2": RecordTag.INT2, "int3": RecordTag.INT3, "int4": RecordTag.INT4,
        "int8": RecordTag.INT8, "ovp": RecordTag.OVP4, "uint4z": RecordTag.UINT4Z}


def _streams(geom, mix, rng, count):
    """Record lists (layers) for a format name, ``"nm"`` (INT formats, every N:M pattern),
    ``"block"`` (INT formats, block skip with random step masks), ``"bitmod"`` (INT6 and
    the FP4/FP3 variants, dense, N:M and block skip, drawn per group) or ``"mixed"``
    (formats, group sizes and sparsity drawn per group, three layers)."""
    if mix == "block":
        return [random_records(geom, rng, count, tags=[_TAG[f] for f in FORMATS if f != "ovp"],
                               sparsity=(BLOCK_CODE,))]
    if mix == "mixed":
        return [random_records(geom, rng, count // 3 + 1, sparsity=MIX_NM) for _ in range(3)]
    if mix == "bitmod":                         # every format at least once
        return [[rc for t in BITMOD_TAGS for rc in random_records(geom, rng, 1, tags=[t],
                                                                  sparsity=MIX_NM)] +
                random_records(geom, rng, count, tags=list(BITMOD_TAGS), sparsity=MIX_NM)]
    if mix == "nm":
        return [random_records(geom, rng, count, tags=[_TAG[f] for f in FORMATS if f != "ovp"],
                               sparsity=(1, 2, 3, 4, 5))]
    return [random_records(geom, rng, count, tags=[_TAG[mix]])]


def _run(geom, words, beats, *, seed=0, idle=0.0, stall=0.0):
    return run_amaranth(Unpacker(geometry=geom),
                        StreamEngine(words, beats, seed=seed, idle=idle, stall=stall,
                                     max_cycles=20 * len(words) + 1000))


def test_zero_points_follow_the_rows_across_beats():
    """UINT4Z with 3 rows a record and 8 lane-vectors a beat: a beat's slots start at
    every row in turn, and each weight is its code minus its own row's zero point (block
    skip too: the step mask follows the zero points)."""
    g = StreamGeometry(word_bits=128, lanes=8, rows=3)
    assert g.vectors_per_beat(RecordTag.UINT4Z) % g.rows
    rng = np.random.default_rng(5)
    recs = random_records(g, rng, 10, tags=[RecordTag.UINT4Z], sparsity=(0, BLOCK_CODE))
    assert any(rc.nm == BLOCK_CODE for rc in recs)
    assert {int(q.min()) for rc in recs for q in rc.q} & {-15, -14, -13}   # zero points > 12
    words, beats = make_case(g, [recs])
    res = _run(g, words, beats, idle=0.2, stall=0.3)
    assert res["errors"] == [] and res["items_out"] == len(beats)
    assert res["error_flag"] == 0


# -- parameters and structure ------------------------------------------------------------

def test_geometry_and_parameters_are_validated():
    with pytest.raises(ValueError, match="word_bits must be .* not 96"):
        StreamGeometry(word_bits=96, lanes=8, rows=1)
    with pytest.raises(ValueError, match="lanes must be .* not 6"):
        StreamGeometry(word_bits=128, lanes=6, rows=1)
    with pytest.raises(ValueError, match="rows must be .* not 0"):
        StreamGeometry(word_bits=128, lanes=8, rows=0)
    with pytest.raises(TypeError, match="geometry must be a StreamGeometry, not 128"):
        Unpacker(geometry=128)


@pytest.mark.parametrize("name", list(GEOMS))
def test_full_beat_holds_one_to_two_words_in_every_format(name):
    g = GEOMS[name]
    assert g.ops == g.beat_vectors * g.lanes
    assert g.ops * 2 >= g.word_bits                 # INT2: one word per beat at least
    assert (g.beat_vectors - 1) * g.lanes * 2 < g.word_bits     # and no more slots
    for tag, bits in TAG_BITS.items():
        for nm in [0] + list(NM_PATTERNS):
            v = g.vectors_per_beat(tag, nm)
            beat = v * g.lanes * (bits + nm_index_bits(nm))
            assert beat >= g.word_bits and (beat <= 2 * g.word_bits or v == 1), (tag, nm)
    dut = Unpacker(geometry=g)
    assert dut.beats.payload.shape() == beat_layout(g)
    assert len(dut.words.payload) == g.word_bits
    assert dut.buffer_bits >= g.header_bits + dut.beat_bits_max + g.word_bits
    Fragment.get(dut, None)                         # elaborates


# -- bit-exact with backpressure (amaranth.sim) ------------------------------------------

_MIXES = FORMATS + ["nm", "block", "bitmod", "mixed"]
_FAST = {("test", mix) for mix in _MIXES} | {("u280", "mixed"), ("w64", "mixed"),
                                             ("w64", "int3"), ("w64", "block"),
                                             ("w64", "bitmod")}
_CASES = [pytest.param(geom, mix, seed, marks=() if (geom, mix) in _FAST and seed == 0
                       else pytest.mark.slow)
          for geom in ("test", "u280", "w64") for mix in _MIXES for seed in (0, 1)]


@pytest.mark.parametrize("geom, mix, seed", _CASES)
def test_bit_exact_with_idle_and_backpressure(geom, mix, seed):
    g = GEOMS[geom]
    rng = np.random.default_rng([seed, len(mix), g.word_bits])
    words, beats = make_case(g, _streams(g, mix, rng, 12))
    res = _run(g, words, beats, seed=seed, idle=0.3, stall=0.4)
    assert res["errors"] == []
    assert res["items_in"] == len(words) and res["items_out"] == len(beats)
    assert res["error_flag"] == 0


def _rate_records(g, rng, mix, count):
    """Group-128 records of one format, of INT formats at 2:4 (``"nm"``), block-skip
    (``"block"``), of the BitMoD formats (``"bitmod"``) or mixed."""
    if mix == "block":
        return [random_records(g, rng, count, groups=[128], sparsity=(BLOCK_CODE,),
                               tags=[_TAG[f] for f in FORMATS if f != "ovp"])]
    if mix == "mixed":
        return [random_records(g, rng, count, groups=[128], sparsity=MIX_NM)]
    if mix == "bitmod":
        return [random_records(g, rng, count, groups=[128], sparsity=MIX_NM,
                               tags=list(BITMOD_TAGS))]
    if mix == "nm":
        return [random_records(g, rng, count, groups=[128], sparsity=(2,),
                               tags=[_TAG[f] for f in FORMATS if f != "ovp"])]
    return [random_records(g, rng, count, tags=[_TAG[mix]], groups=[128])]


@pytest.mark.parametrize("mix", _MIXES)
def test_full_rate_without_backpressure(mix):
    """One word accepted in every cycle from the first to the last word (group 128)."""
    g = GEOMS["test"]
    rng = np.random.default_rng(7)
    streams = _rate_records(g, rng, mix, 24)
    words, beats = make_case(g, streams)
    res = _run(g, words, beats)
    assert res["errors"] == []
    assert res["items_in"] == len(words) and len(words) > 60
    assert res["accept_span"] == len(words)         # words per cycle == 1 exactly


def test_latency_from_completing_word_to_first_beat():
    g = GEOMS["test"]
    rng = np.random.default_rng(3)
    for tag in (RecordTag.INT3, RecordTag.INT8):    # a beat of 1.5 and of 2 words
        recs = random_records(g, rng, 1, tags=[tag], groups=[128])
        words, beats = make_case(g, [recs])
        dut = Unpacker(geometry=g)
        res = run_amaranth(dut, StreamEngine(words, beats))
        assert res["errors"] == []
        need = g.header_bits + g.vectors_per_beat(tag) * g.lanes * TAG_BITS[tag]
        completing = -(-need // g.word_bits) - 1            # index of the word
        assert res["first_accept"] == 0
        assert res["first_out"] == completing + dut.latency, tag


# -- error handling ----------------------------------------------------------------------

@pytest.mark.parametrize("header, tags", [
    (0x10, None), (0x3 | 3 << 6, None), (0x3F, None), (0x3 | 7 << 8, None),
    (0x5 | 2 << 8, None), (0x5 | BLOCK_CODE << 8, None), (0x3 | BLOCK_CODE << 8, None),
    (0x7, ["int4", "int6", "fp4_er_n"]), (0x6 | 2 << 8, ["int4"])])
def test_malformed_header_is_skipped_and_flagged(header, tags):
    """A reserved tag (16; 63, the top of the 6-bit field), group code or sparsity code,
    OVP4 with N:M or block skip, a block record with an empty step mask (the zero bits
    after the header), or a format the unpacker was not built to decode: its word is
    dropped and error is set."""
    g = GEOMS["test"]
    rng = np.random.default_rng(5)
    recs = random_records(g, rng, 4, tags=tags)
    words, beats = make_case(g, [recs])
    dut = Unpacker(geometry=g, tags=tags)
    res = run_amaranth(dut, StreamEngine([header] + words, beats, seed=0, idle=0.2,
                                         stall=0.2, max_cycles=20 * len(words) + 1000))
    assert res["errors"] == []
    assert res["error_flag"] == 1


def test_decoded_formats_follow_the_config():
    """The BitMoD formats are decoded when the config lists them; INT2/3/4/8, OVP4 and
    UINT4Z always; fewer formats, fewer lane-vector kinds."""
    full = Unpacker.from_config(load_config("test_decode"))
    assert set(full.tags) == set(TAG_BITS)
    cfg = load_config("test_decode")
    some = dataclasses.replace(cfg, weight_formats=("int2", "int4", "fp3_ea_n"))
    dut = Unpacker.from_config(some)
    assert dut.tags == (RecordTag.INT2, RecordTag.INT3, RecordTag.INT4, RecordTag.INT8,
                        RecordTag.OVP4, RecordTag.FP3_EA_N, RecordTag.UINT4Z)
    assert len(dut.kinds) < len(full.kinds)
    Fragment.get(full, None)
    Fragment.get(dut, None)
    with pytest.raises(ValueError, match="at least one record format"):
        Unpacker(geometry=GEOMS["test"], tags=[])


def test_bad_scale_sets_bad_and_error():
    g = GEOMS["test"]
    rng = np.random.default_rng(6)
    rec = random_records(g, rng, 1, tags=[RecordTag.INT4], groups=[32])[0]
    good = pack_records(g, [rec])
    want = expected_beats(g, good)
    rec.scale_bits[1] = 0xFC00                      # -inf
    raw = pack_records(g, [rec])
    for b in want:
        b["m"][1], b["k"][1], b["bad"] = -0x400, 6, 1      # what the other bits give
    res = _run(g, stream_words(g, raw), [beat_value(g, b) for b in want], stall=0.3)
    assert res["errors"] == []
    assert res["error_flag"] == 1


def test_fp16_conversion_is_exact():
    """Every subnormal, every exponent's extremes and a stride through the rest, both signs,
    inf and NaN: m * 2**k equals the value (m signed); bad exactly for inf and NaN (every
    positive finite pattern goes through the RTL in test_rtl_every_fp16_scale)."""
    width = 256
    m = Module()
    raw = [Signal(16, name=f"raw{i}") for i in range(width)]
    outs = []
    for i, r in enumerate(raw):
        mm, kk, bb = fp16_fixed_hw(r)
        sm, sk, sb = Signal(signed(12), name=f"m{i}"), Signal(6, name=f"k{i}"), Signal(
            name=f"b{i}")
        m.d.comb += [sm.eq(mm), sk.eq(kk), sb.eq(bb)]
        outs.append((sm, sk, sb))
    low = np.arange(0x800)                                        # zero, subnormals, ...
    edges = (np.arange(32)[:, None] << 10 | np.array([0, 1, 0x3FF])).reshape(-1)
    stride = np.arange(0, 1 << 15, 37)
    pos = np.unique(np.concatenate([low, edges, stride]))
    pats = np.concatenate([pos, pos | 0x8000])
    pats = np.concatenate([pats, np.zeros(-pats.size % width, dtype=pats.dtype)])
    vals = pats.astype(np.uint16).view(np.float16).astype(np.float64)
    got = {}

    async def bench(ctx):
        for base in range(0, pats.size, width):
            for i in range(width):
                ctx.set(raw[i], int(pats[base + i]))
            await ctx.delay(1e-9)
            for i, (sm, sk, sb) in enumerate(outs):
                k = ctx.get(sk)
                got[base + i] = (ctx.get(sm), k - 64 if k >= 32 else k, ctx.get(sb))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    for i, p in enumerate(pats.tolist()):
        mm, kk, bb = got[i]
        sign, exp = p >> 15, (p >> 10) & 0x1F
        assert bb == int(exp == 0x1F), hex(p)
        if not bb:
            assert abs(mm) < 1 << 11 and (mm < 0) == (sign and vals[i] != 0), hex(p)
            assert mm * 2.0 ** kk == vals[i], hex(p)


# -- RTL (cocotb + Verilator) ------------------------------------------------------------

def _verilog(name, tmp_path_factory):
    g = GEOMS[name]
    out = tmp_path_factory.mktemp(f"unpacker_{name}")
    return write_verilog(Unpacker(geometry=g), f"unpacker_w{g.word_bits}_l{g.lanes}_r{g.rows}",
                         out, params={"word_bits": g.word_bits, "lanes": g.lanes,
                                      "rows": g.rows})


@pytest.fixture(scope="module")
def rtl_test(tmp_path_factory):
    return _verilog("test", tmp_path_factory)


@pytest.mark.rtl(group="unpacker_test")
@pytest.mark.parametrize("seed", [11, pytest.param(12, marks=pytest.mark.slow),
                                  pytest.param(13, marks=pytest.mark.slow)])
def test_rtl_mixed_formats_bit_exact_with_backpressure(rtl_test, seed):
    """Formats and group sizes mixed per group over three layers, 0.3 idle, 0.4 stall."""
    g = GEOMS["test"]
    rng = np.random.default_rng(seed)
    words, beats = make_case(g, _streams(g, "mixed", rng, 90))
    res = run_unpacker_rtl(*rtl_test, words, beats, seed=seed, idle=0.3, stall=0.4)
    assert res["errors"] == [] and res["items_out"] == len(beats)
    assert res["error_flag"] == 0


@pytest.mark.rtl(group="unpacker_test")
def test_rtl_bitmod_formats_bit_exact_with_backpressure(rtl_test):
    """INT6 and every FP4/FP3 variant (every code, the extra value included), dense and
    N:M, group sizes drawn per record; 0.3 idle, 0.4 stall."""
    g = GEOMS["test"]
    rng = np.random.default_rng(17)
    streams = _streams(g, "bitmod", rng, 60)
    assert {rc.tag for rc in streams[0]} == set(BITMOD_TAGS)
    words, beats = make_case(g, streams)
    res = run_unpacker_rtl(*rtl_test, words, beats, seed=17, idle=0.3, stall=0.4)
    assert res["errors"] == [] and res["items_out"] == len(beats)
    assert res["error_flag"] == 0


@pytest.mark.rtl(group="unpacker_test")
def test_rtl_full_rate_every_format(rtl_test):
    """Per format (group 128, 24 records), 2:4, then all mixed: one word per cycle exactly."""
    g = GEOMS["test"]
    rng = np.random.default_rng(21)
    for mix in _MIXES:
        words, beats = make_case(g, _rate_records(g, rng, mix, 24))
        res = run_unpacker_rtl(*rtl_test, words, beats, seed=21)
        assert res["errors"] == []
        assert res["items_in"] == len(words) > 90
        assert res["accept_span"] == len(words), (mix, res["accept_span"], len(words))


@pytest.mark.rtl(group="unpacker_test")
@pytest.mark.parametrize("every", [pytest.param(False),
                                   pytest.param(True, marks=pytest.mark.slow)])
def test_rtl_every_fp16_scale(rtl_test, every):
    """FP16 scales through the RTL: every subnormal, each exponent's extremes and a stride
    through the rest, each with both signs; with ``every``, all 63488 finite values."""
    g = GEOMS["test"]
    rng = np.random.default_rng(31)
    if every:
        pats = np.arange(0x7C00, dtype=np.uint16)
    else:
        edges = (np.arange(31)[:, None] << 10 | np.array([0, 1, 0x3FF])).reshape(-1)
        pats = np.unique(np.concatenate([np.arange(0x400), edges,
                                         np.arange(0, 0x7C00, 97)])).astype(np.uint16)
    pats = np.concatenate([pats, pats | 0x8000])
    pats = np.concatenate([pats, np.full(-pats.size % g.rows, 0x3C00, dtype=np.uint16)])
    recs = []
    for i in range(0, pats.size, g.rows):
        rec = random_records(g, rng, 1, tags=[RecordTag.INT2], groups=[32], sparsity=(2,))[0]
        rec.scale_bits = pats[i:i + g.rows]
        recs.append(rec)
    words, beats = make_case(g, [recs])
    res = run_unpacker_rtl(*rtl_test, words, beats, seed=31, stall=0.1)
    assert res["errors"] == [] and res["items_out"] == len(beats)


@pytest.mark.slow
@pytest.mark.rtl
@pytest.mark.parametrize("name", ["u280", "w512", "w64"])
def test_rtl_sweep_wide_geometries(name, tmp_path_factory):
    """Bit-exact with backpressure over every format and a mix, then full rate per format."""
    g = GEOMS[name]
    v, j = _verilog(name, tmp_path_factory)
    rng = np.random.default_rng(41)
    for seed, mix in enumerate(_MIXES):
        words, beats = make_case(g, _streams(g, mix, rng, 60))
        res = run_unpacker_rtl(v, j, words, beats, seed=seed, idle=0.3, stall=0.4)
        assert res["errors"] == [], (mix, res["errors"])
        rate = _rate_records(g, rng, mix, 128)
        rate_words, rate_beats = make_case(g, rate)
        res = run_unpacker_rtl(v, j, rate_words, rate_beats, seed=seed)
        assert res["errors"] == []
        masks = [rc.step_mask(g.lanes) for rc in rate[0]]
        if all(g.record_bits(rc.tag, rc.group, rc.nm, mk) >=
               g.word_bits * g.record_beats(rc.tag, rc.group, rc.nm, mk)
               for rc, mk in zip(rate[0], masks)):
            assert res["accept_span"] == len(rate_words), (mix, res["accept_span"])


# -- the bench path ------------------------------------------------------------------------

@pytest.mark.rtl(group="unpacker_test")
def test_bench_figures_are_work_over_cycles(rtl_test, tmp_path):
    """The bench code at a small shape: words per cycle is the stream's words over the
    cycles of that run, and bits per weight the packed image's bits over the weights."""
    from sim.measure.decode import image_bits_per_weight, unpacker_words_per_cycle
    from airfoil.packing import pack_tensor, tensor_records
    from sim.tb_decode.stimulus import stream_words

    cfg = load_config("test")
    g = StreamGeometry.from_config(cfg)
    r = unpacker_words_per_cycle(cfg, "int3", rows=8, k=512, build_dir=tmp_path)
    assert r["words_per_cycle"] == r["words"] / r["cycles"]
    records = [rc for b in tensor_records(g, np.zeros((8, 512)), np.ones((8, 4), np.float16),
                                          group=128, tags="int3") for rc in b]
    assert r["words"] == len(stream_words(g, pack_records(g, records)))
    assert r["cycles"] == r["words"]                  # full rate at this shape as well
    bpw = image_bits_per_weight(cfg, "int3", rows=8, k=512)
    image = pack_tensor(g, np.zeros((8, 512)), np.ones((8, 4), np.float16), group=128,
                        tags="int3", channels=cfg.memory.channels)
    assert bpw == len(image) * 8 / (8 * 512)
