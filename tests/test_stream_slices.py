"""The streamed MATRIX engine in slices (hdl/core/stream_mv.py, ``slices > 1``).

One slice per memory channel: each reads its own weight stream (row batch ``b`` of the
slice's chains goes to slice ``b % slices``, :mod:`airfoil.packing`) on its own AXI4 port
with its own read latency and random stalls, and the slices run at the same time. The
geometries are the ``test_mc`` board (12 chains x 8 lanes, 128-bit words) on 1, 2, 3 and
4 channels; the results are compared bit for bit with the golden (the streams read back
by the reference reader), which also proves that no word is lost, duplicated or
reordered on any port. A memory-bound layer takes about ``1 / slices`` of the cycles of
one slice. The 3-channel board (and the 1-channel one it is timed against) run in the
fast set, and the 512-bit words and 32 lanes of the U280 slices in amaranth.sim; 2 and 4
channels are ``slow``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Value
from amaranth.sim import Simulator

from airfoil.config import load_config
from airfoil.packing import StreamGeometry
from hdl.build import write_verilog
from hdl.core.fetch import ENTRY_LAYOUT
from hdl.core.matrix_front import MatrixFront
from hdl.core.stream_mv import StreamGemvHarness, StreamMatrix
from sim.tb_stream.rtl import check_results, run_stream_rtl
from sim.tb_stream.stimulus import StreamCase, encode_instr, make_case

#: Read latency of each slice's port (the first three are test_mc's channel latencies).
LATENCIES = (24, 40, 17, 31)


def _mc(slices: int):
    """test_mc on ``slices`` memory channels (12 chains: slices of 12 / slices chains)."""
    cfg = load_config("test_mc")
    return dataclasses.replace(cfg, name=f"test_mc_s{slices}",
                               memory=dataclasses.replace(cfg.memory, channels=slices,
                                                          channel_latency=()))


_BUILT = {}


def _harness(slices: int):
    """Verilog of the test_mc harness on ``slices`` channels (written once per session)."""
    if slices not in _BUILT:
        cfg = _mc(slices)
        h = StreamGemvHarness.from_config(cfg)
        assert h.unit.slices == slices and h.unit.geometry.rows == 12 // slices
        _BUILT[slices] = (cfg, *write_verilog(h, f"stream_gemv_{cfg.name}",
                                              Path("build") / "stream" / cfg.name,
                                              params=h.params()))
    return _BUILT[slices]


def _cases(cfg, seed):
    """Dense INT4, INT4 2:4, INT8 block skip, a mixed tensor (formats and patterns drawn
    per record), a single row, and two MVs consuming one stream per slice; row counts that
    are not multiples of the chains."""
    geom, S, C = StreamMatrix.geometry_of(cfg), cfg.slices, cfg.chains
    base = seed * 100
    kw = dict(slices=S)
    cases = [
        make_case(geom, name="int4-dense", rows=2 * C + 5, k=256, group=128, fmt="int4",
                  seed=base, **kw),
        make_case(geom, name="int4-2:4", rows=C + 1, k=256, group=64, fmt="int4",
                  sparsity="2:4", seed=base + 1, out_fmt="INT16", **kw),
        make_case(geom, name="int8-block", rows=2 * C - 1, k=384, group=128, fmt="int8",
                  sparsity="block", seed=base + 2, **kw),
        make_case(geom, name="int4-block50", rows=C + 3, k=256, group=64, fmt="int4",
                  sparsity="block", block_keep=0.5, seed=base + 3, **kw),
        make_case(geom, name="mixed", rows=3 * C - 1, k=256, group=32,
                  fmt=["int2", "int3", "int4", "int8", "ovp"],
                  sparsity=["dense", "2:4", "block"], seed=base + 4, out_fmt="INT16",
                  abuf_addr=64, obuf_addr=16, **kw),
        make_case(geom, name="rows1", rows=1, k=128, group=32, fmt="int4", seed=base + 5,
                  out_fmt="INT32", **kw),
    ]
    a = make_case(geom, name="stream-a", rows=C + 2, k=128, group=32, fmt=["int2", "int8"],
                  sparsity=["dense", "2:4"], seed=base + 6, **kw)
    b = make_case(geom, name="stream-b", rows=C // 2 + 1, k=64, group=64,
                  fmt=["int3", "int4"], seed=base + 7, out_fmt="INT16", **kw)
    cases.append(StreamCase(a, streams=[x + y for x, y in zip(a["streams"], b["streams"])],
                            image_words=a["image_words"] + b["image_words"]))
    cases.append(StreamCase(b, streams=[b""] * S, image_words=0))
    return cases


def _check_slices(slices, seeds=(1,)):
    cfg, v, j = _harness(slices)
    for seed in seeds:
        cases = _cases(cfg, seed)
        res = run_stream_rtl(v, j, cases, latency=LATENCIES[:slices],
                             outstanding=cfg.memory.outstanding, seed=seed, stall=0.25,
                             idle=0.3)
        check_results(cases, res)
        for c, r in zip(cases, res):
            if not c["name"].startswith("stream-"):
                # Every word of every slice's stream was handed to the unit, once.
                assert r["beats"] == c["image_words"], (c["name"], r)
            assert r["useful"] <= r["beats"]


@pytest.mark.rtl
def test_rtl_three_slices_bit_exact():
    """test_mc itself: 3 slices of 4 chains, ports of different latencies, random stalls."""
    _check_slices(3)


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.parametrize("slices", [1, 2, 4])
def test_rtl_slices_bit_exact(slices):
    _check_slices(slices, seeds=(1, 2))


def _layer_cycles(slices, *, fmt="int8", rows=48, k=1024):
    """Cycles of one memory-bound dense GEMV (no stalls) on ``slices`` slices."""
    cfg, v, j = _harness(slices)
    geom = StreamMatrix.geometry_of(cfg)
    c = make_case(geom, name=f"{fmt}-{slices}", rows=rows, k=k, group=128, fmt=fmt, seed=7,
                  slices=slices)
    res = run_stream_rtl(v, j, [c], latency=LATENCIES[:slices],
                         outstanding=cfg.memory.outstanding, seed=1)
    check_results([c], res)
    return res[0]["cycles"]


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_three_slices_take_a_third_of_the_cycles():
    """INT8 (16 weights per 128-bit word) keeps every slice memory-bound: three ports
    finish the layer in about a third of the cycles of one."""
    one, three = _layer_cycles(1), _layer_cycles(3)
    assert three <= 1.15 / 3 * one, (one, three)


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.parametrize("slices", [2, 4])
def test_rtl_slices_divide_the_cycles(slices):
    one, many = _layer_cycles(1), _layer_cycles(slices)
    assert many <= 1.15 / slices * one, (one, many)


# -- parameters and the front (no simulation) ------------------------------------------

def test_slice_parameters():
    with pytest.raises(ValueError, match=r"Chain count \(12\) must be a multiple of the "
                                         r"slice count \(5\)"):
        StreamMatrix(chains=12, lanes=8, word_bits=128, act_bytes=1024, out_bytes=256,
                     slices=5)
    with pytest.raises(TypeError, match="Slice count must be an integer >= 1, not 0"):
        StreamMatrix(chains=12, lanes=8, word_bits=128, act_bytes=1024, out_bytes=256,
                     slices=0)
    u = StreamMatrix.from_config(_mc(4))
    assert (u.slices, u.chains, u.geometry.rows) == (4, 12, 3)
    assert len(u.words) == 4
    # 512-bit words need every group to span whole words (64 bytes).
    StreamMatrix(chains=8, lanes=32, word_bits=512, act_bytes=4096, out_bytes=1024,
                 group_sizes=(64, 128), slices=2)
    with pytest.raises(ValueError, match="at most 256 bits .* not 512"):
        StreamMatrix(chains=8, lanes=32, word_bits=512, act_bytes=4096, out_bytes=1024,
                     group_sizes=(32, 64, 128), slices=2)


def test_front_has_one_word_stream_per_slice():
    """MatrixFront.wstream[c] is slice c's word stream (the LOAD unit drives it from
    memory channel c)."""
    from hdl.core.buffers import BufferGeometry
    from hdl.core.matrix import MatrixUnit

    cfg = load_config("test_decode")            # 4 chains: on 2 channels, 2 slices
    cfg = dataclasses.replace(cfg, memory=dataclasses.replace(cfg.memory, channels=2))
    tiles = MatrixUnit(geometry=BufferGeometry.of(cfg), chains=cfg.chains, lanes=cfg.lanes,
                       weight_formats=cfg.weight_formats, group_sizes=cfg.group_sizes,
                       pe=cfg.pe, lut_group=cfg.lut_group)
    front = MatrixFront(tiles=tiles, streamed=StreamMatrix.from_config(cfg))
    assert len(front.wstream) == 2
    assert front.signature.members["wstream"].dimensions == (2,)
    assert front.wstream[1].payload.shape().width == StreamMatrix.geometry_of(cfg).word_bits


# -- 512-bit words (the U280's ports), amaranth.sim --------------------------------------

def _sim_unit(unit_kw, cases, *, seed=0, stall=0.3, max_cycles=20000):
    """Run ``cases`` on a :class:`StreamMatrix` in amaranth.sim: ACT and OUT as Python
    memories, each slice's words offered with random gaps (probability ``stall``);
    return OUT bytes and cycles (entry offered to release) per case."""
    dut = StreamMatrix(**unit_kw)
    S = dut.slices
    W = unit_kw["word_bits"]
    wb = W // 8
    offs = {name: fld.offset for name, fld in ENTRY_LAYOUT}
    rng = np.random.default_rng(seed)
    results = []

    async def bench(ctx):
        ctx.set(dut.rel.ready, 1)
        for i, c in enumerate(cases):
            act = bytearray(unit_kw["act_bytes"])
            a0 = c["instr"]["abuf_addr"]
            act[a0:a0 + c["k"]] = np.asarray(c["act"], dtype=np.int8).tobytes()
            out = bytearray(unit_kw["out_bytes"])
            words = [[int.from_bytes(st[n:n + wb], "little") for n in range(0, len(st), wb)]
                     for st in c["streams"]]
            pos = [0] * S
            entry = encode_instr(c["instr"]) << offs["instr"] | i << offs["index"]
            ctx.set(Value.cast(dut.q.payload), entry)
            ctx.set(dut.q.valid, 1)
            rd_data = 0
            for cyc in range(max_cycles):
                offer = []
                for s in range(S):
                    o = pos[s] < len(words[s]) and rng.random() >= stall
                    offer.append(o)
                    ctx.set(dut.words[s].valid, int(o))
                    if o:
                        ctx.set(dut.words[s].payload, words[s][pos[s]])
                ctx.set(dut.act_rd.data, rd_data)
                took = [offer[s] and ctx.get(dut.words[s].ready) for s in range(S)]
                q_took = ctx.get(dut.q.valid) and ctx.get(dut.q.ready)
                en, addr = ctx.get(dut.act_rd.en), ctx.get(dut.act_rd.addr)
                wen = ctx.get(dut.out_wr.en)
                if wen:
                    wa, wd = ctx.get(dut.out_wr.addr), ctx.get(dut.out_wr.data)
                    for byte in range(wb):
                        if wen >> byte & 1:
                            out[wa * wb + byte] = wd >> (8 * byte) & 0xFF
                rel, err = ctx.get(dut.rel.valid), ctx.get(dut.err)
                await ctx.tick()
                if en:
                    rd_data = int.from_bytes(act[addr * wb:(addr + 1) * wb], "little")
                if q_took:
                    ctx.set(dut.q.valid, 0)
                for s in range(S):
                    pos[s] += int(bool(took[s]))
                assert not err, (c["name"], ctx.get(dut.err_code))
                if rel:
                    break
            else:
                raise AssertionError(f"case {c['name']} timed out")
            assert pos == [len(w) for w in words], (c["name"], pos)
            results.append((bytes(out), cyc + 1))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


def _check_sim(cases, outs):
    for c, (raw, _) in zip(cases, outs):
        ob = c["instr"]["obuf_addr"]
        got = np.frombuffer(raw[ob:ob + c["rows"] * c["out_bytes"]],
                            dtype={1: np.int8, 2: np.int16, 4: np.int32}[c["out_bytes"]])
        diff = np.nonzero(got.astype(np.int64) != c["expected"])[0]
        assert not diff.size, f"case {c['name']}: rows {diff.tolist()} differ"


def test_512_bit_words_32_lanes_bit_exact():
    """The U280 slice geometry: 512-bit words, 32 lanes, 4 chains per slice (two slices):
    INT4 dense, INT8 2:4 and an INT2/INT4/INT8 block-skip mix."""
    kw = dict(chains=8, lanes=32, word_bits=512, act_bytes=4096, out_bytes=1024,
              group_sizes=(64, 128), patterns=("dense", "2:4", "block"), slices=2)
    geom = StreamGeometry(word_bits=512, lanes=32, rows=4)
    cases = [
        make_case(geom, name="int4", rows=11, k=256, group=128, fmt="int4", seed=1,
                  slices=2),
        make_case(geom, name="int8-2:4", rows=9, k=256, group=128, fmt="int8",
                  sparsity="2:4", seed=2, slices=2, out_fmt="INT16"),
        make_case(geom, name="mix-block", rows=13, k=256, group=64,
                  fmt=["int2", "int4", "int8"], sparsity=["dense", "block"], seed=3,
                  slices=2, abuf_addr=128),
    ]
    _check_sim(cases, _sim_unit(kw, cases))


@pytest.mark.rtl
def test_rtl_three_slices_mm_bit_exact():
    """MM on three slices: each slice applies its records to every token, the serializer
    writes each super-batch's vectors slice by slice, token by token; random stalls."""
    cfg, v, j = _harness(3)
    geom, S, C = StreamMatrix.geometry_of(cfg), cfg.slices, cfg.chains
    cases = [make_case(geom, name=f"mm{t}-{sp}", rows=2 * C + 5, k=128, group=64,
                       fmt=["int4", "int2"], sparsity=sp, seed=40 + t, slices=S, tokens=t,
                       out_fmt="INT16", obuf_addr=32)
             for t, sp in ((2, "dense"), (5, "2:4"), (cfg.limits.stream_tokens, "block"))]
    res = run_stream_rtl(v, j, cases, latency=LATENCIES[:S],
                         outstanding=cfg.memory.outstanding, seed=4, stall=0.25, idle=0.3)
    check_results(cases, res)
    for c, r in zip(cases, res):
        assert r["beats"] == c["image_words"], (c["name"], r)
