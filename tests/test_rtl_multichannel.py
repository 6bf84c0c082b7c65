"""The core with one AXI4 data port per memory channel (1 to 4), in Verilator and cocotb.

Each channel count is a variant of the ``test`` config (1 channel: ``test`` itself, the
build the other core tests share) whose channels see different read latencies; the memory
model serves every data port from one image with that channel's latency and random
stalls of its own. All cases of a variant run in one simulation:

* compiled linear layers (``compiler.linear`` spreads a WGT tile's loads and the OUT
  stores over the channels), RTL == ISA simulator == golden, bit for bit;
* a hand-built program over every channel with channel offsets (each channel's memory at
  another place of the image): loads, stores, a gather, LDREG, and tokens that a slow
  channel must release before a fast one; the final image equals the ISA simulator's;
* a channel beyond the config's (MALFORMED, as the ISA simulator says) and a read past
  the memory on the last channel (AXI_ERROR, the core drains and finishes);
* a load-bound program without stalls, to measure that two channels load at once;
* (slow) a one-layer LLM on a 2-channel ``sim_llm`` generating the ISA simulator's tokens,
  and a streamed layer on a 2-channel ``test_decode`` (one weight stream per channel).
"""

import dataclasses

import numpy as np
import pytest
import torch

from airfoil import isa
from airfoil.folder import OUT_DTYPES, load_folder
from airfoil.isa import Buffer, ErrorCode, Opcode, SysOp, Unit
from airfoil.program import Program
from sim.random_regression import channel_variant

pytestmark = pytest.mark.rtl(group="rtl_multichannel")

#: The 1- and 2-channel cases share a worker (the overlap test compares them); 3 and 4
#: channels (a Verilator build each) run in groups of their own.
CHANNELS = [1, 2,
            pytest.param(3, marks=[pytest.mark.slow, pytest.mark.rtl(group="rtl_mc3")]),
            pytest.param(4, marks=[pytest.mark.slow, pytest.mark.rtl(group="rtl_mc4")])]

#: (weight format, group, n, k, out format, bias, max tile bytes); n of the second one
#: gives one OUT group (a store) per channel.
LAYERS = {
    "slices": ("int4", 64, 45, 384, "int8", True, None),
    "stores": ("int8", 32, None, 64, "int32", False, None),
    "ksplit": ("int4", 32, 24, 160, "int16", True, 200),
}

#: The hand-built program's image: per channel a region of REGION bytes at offset
#: c * REGION (the channel's memory), the source at SRC and the stores at DST of each.
REGION = 0x2000
SRC, DST, IDX, PARAMS = 0x000, 0x1000, 0x0E00, 0x0F00


def mc_config(channels: int, base: str = "test"):
    """``base`` with ``channels`` memory channels, each of its own read latency and
    outstanding limit (:func:`sim.random_regression.channel_variant`)."""
    return channel_variant(base, channels)


def _ld(buf, buf_addr, dram_addr, nbytes, channel, count=1, stride=0, wait=(), release=(),
        **kw):
    return isa.encode(Opcode.LD, wait, release, buf=buf, buf_addr=buf_addr,
                      dram_addr=dram_addr, nbytes=nbytes, count=count,
                      dram_stride=stride or nbytes, channel=channel, **kw)


def _st(buf, buf_addr, dram_addr, nbytes, channel, count=1, stride=0, wait=(), release=(),
        **kw):
    return isa.encode(Opcode.ST, wait, release, buf=buf, buf_addr=buf_addr,
                      dram_addr=dram_addr, nbytes=nbytes, count=count,
                      dram_stride=stride or nbytes, channel=channel, **kw)


HALT = isa.encode(Opcode.SYS, op=SysOp.HALT)


def _reencode(word, **changes):
    ins = isa.decode(word)
    fields = dict(ins.fields)
    fields.update(changes)
    return isa.encode(ins.opcode, ins.wait, ins.release, **fields)


def _hand_program(cfg):
    """Loads and stores on every channel, a gather, LDREG and tokens across channels."""
    C = cfg.memory.channels
    lat = [cfg.memory.latency_of(c) for c in range(C)]
    slow, fast = max(range(C), key=lat.__getitem__), min(range(C), key=lat.__getitem__)
    S, L = Unit.STORE, Unit.LOAD
    # A load on the slowest channel, then a short one on the fastest, while the STORE unit
    # waits: the first store must see the first load's data (its token comes first, though
    # the second load finishes earlier).
    words = [_ld(Buffer.KV, 0x000, SRC + 0x300, 128, slow, release=[S]),
             _ld(Buffer.KV, 0x100, SRC + 0x380, 32, fast, release=[S]),
             _st(Buffer.KV, 0x000, DST + 0x500, 128, (slow + 1) % C, wait=[L]),
             _st(Buffer.KV, 0x100, DST + 0x580, 32, (fast + 1) % C, wait=[L])]
    # Every channel: two rows of its source into ACT, stored back on the same channel.
    for c in range(C):
        words.append(_ld(Buffer.ACT, 0x200 * c, SRC + 0x40 * c, 48, c, count=2, stride=0x100,
                         release=[S]))
    for c in range(C):
        words.append(_st(Buffer.ACT, 0x200 * c, DST + 0x100 * c, 96, c, wait=[L]))
    # Indices on channel 0, rows gathered on the last channel by them, stored on channel 1.
    last = C - 1
    words += [_ld(Buffer.AUX, 0x80, IDX, 32, 0),
              _ld(Buffer.OUT, 0x100, SRC + 0x400, 32, last, count=5, stride=48, gather=1,
                  idx_addr=0x80, release=[S]),
              _st(Buffer.OUT, 0x100, DST + 0x600, 32, 1 % C, count=5, wait=[L])]
    # LDREG reads through channel 0; its value counts the rows of a WGT load on the last
    # channel, stored on channel 0.
    words += [isa.encode(Opcode.SYS, op=SysOp.LDREG, reg=6, value=PARAMS),
              _ld(Buffer.WGT, 0x40, SRC + 0x600, 16, last, count=1, stride=16, count_reg=6,
                  release=[S]),
              _st(Buffer.WGT, 0x40, DST + 0x800, 16, 0, count=1, count_reg=6, wait=[L])]
    return words + [HALT]


def _hand_image(cfg, seed):
    C = cfg.memory.channels
    rng = np.random.default_rng(seed)
    img = bytearray(rng.integers(0, 256, REGION * C, dtype=np.uint8).tobytes())
    for c in range(C):
        o = c * REGION
        img[o + DST:o + REGION] = bytes(REGION - DST)
        img[o + IDX:o + IDX + 32] = np.array([4, 0, 3, 3, 1, 2, 0, 0], dtype="<i4").tobytes()
        img[o + PARAMS:o + PARAMS + 4] = (3).to_bytes(4, "little")
    return img


def _load_bound(cfg, spread: bool):
    """Large loads into ACT and KV, alternating channels 0 and 1 when ``spread``."""
    words = []
    for i in range(6):
        words.append(_ld(Buffer.ACT, 0, SRC, cfg.buffers.act_bytes, 0))
        words.append(_ld(Buffer.KV, 0, SRC, cfg.buffers.kv_bytes, 1 if spread else 0))
    return words + [HALT]


def _compile(tmp, cfg, name, seed):
    from compiler.linear import compile_linear
    wf, group, n, k, out_fmt, bias, max_tile = LAYERS[name]
    if n is None:
        # One OUT half holds out_bytes / 2 / 4 int32 rows: one store per channel.
        n = cfg.buffers.out_bytes // 8 * cfg.memory.channels - 3
    gen = torch.Generator().manual_seed(100 * seed + n)
    w = torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    out = tmp / f"{cfg.name}_{name}"
    compile_linear(w, b, cfg, out, wformat=wf, group=group, out_format=out_fmt, seed=seed,
                   max_tile_bytes=max_tile)
    return load_folder(out, cfg)


def _linear_case(folder, cfg, seed, program=None, stall=0.25):
    from airfoil.cli.backend_rtl import channel_offsets
    from sim.rtl import RtlCase
    nbytes = folder.n * folder.out_bits // 8
    return RtlCase(program=(program or folder.program).to_bytes(),
                   image=bytes(folder.image_with_input()), seed=seed, stall=stall,
                   read_back={"out": (folder.manifest["output"]["addr"], nbytes)},
                   max_cycles=400_000, channel_offsets=channel_offsets(folder.manifest, cfg))


def _layer_cases(tmp, cfg, first_seed: int, names=tuple(LAYERS)):
    """The layers ``names`` of :data:`LAYERS` compiled for ``cfg`` (layer ``i`` with seed
    ``i``) and their RTL cases: ``(keys, cases, extra)`` with ``extra[name]`` the folder;
    case ``i``'s stall seed ``first_seed + i``."""
    keys, cases, extra = [], [], {}
    for seed, name in enumerate(names):
        f = _compile(tmp, cfg, name, seed)
        extra[name] = f
        keys.append(name)
        cases.append(_linear_case(f, cfg, first_seed + seed))
    return keys, cases, extra


def _run_config(tmp, channels):
    """Every case of the variant with ``channels`` channels in one simulation."""
    from airfoil.cli.backend_rtl import emit_core
    from sim.rtl import RtlCase, run_core
    cfg = mc_config(channels)
    core = emit_core(cfg, "build")
    keys, cases, extra = _layer_cases(tmp, cfg, 10 * channels)
    base = extra["slices"]
    words = list(base.program.words)
    ld = next(i for i, w in enumerate(words) if isa.decode(w).opcode == Opcode.LD)
    st = next(i for i, w in enumerate(words) if isa.decode(w).opcode == Opcode.ST)
    for key, index, chan in (("bad_ld_channel", ld, channels), ("bad_st_channel", st, 63)):
        bad = list(words)
        bad[index] = _reencode(words[index], channel=chan)
        extra[key] = (Program(bad, base.program.config_hash), index)
        keys.append(key)
        cases.append(_linear_case(base, cfg, 5, program=extra[key][0]))
    # A read beyond the memory on the last channel: SLVERR.
    far = [_ld(Buffer.ACT, 0, 1 << 32, 64, channels - 1), HALT]
    keys.append("axi_error")
    cases.append(RtlCase(program=Program(far, cfg.config_hash_bytes).to_bytes(),
                         image=bytes(256), seed=3, max_cycles=20_000, poll=16))
    offsets = [c * REGION for c in range(channels)]
    for seed in range(2):
        img = _hand_image(cfg, seed)
        prog = _hand_program(cfg)
        extra[("hand", seed)] = (img, prog, offsets)
        keys.append(("hand", seed))
        cases.append(RtlCase(program=Program(prog, cfg.config_hash_bytes).to_bytes(),
                             image=bytes(img), seed=40 + seed, stall=0.3 if seed else 0.0,
                             read_back={"image": (0, len(img))}, max_cycles=100_000,
                             poll=16, channel_offsets=offsets))
    for spread in ((False, True) if channels >= 2 else (False,)):
        prog = _load_bound(cfg, spread)
        keys.append(("load_bound", spread))
        cases.append(RtlCase(program=Program(prog, cfg.config_hash_bytes).to_bytes(),
                             image=bytes(cfg.buffers.act_bytes), stall=0.0,
                             max_cycles=200_000, poll=16))
    out = run_core(verilog=core["sources"], meta=core["meta"], config=cfg, cases=cases,
                   build_root="build/sim", work_dir=tmp / f"run_{cfg.name}")
    assert len(out) == len(keys)
    return cfg, core, dict(zip(keys, out)), extra


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(channels)``: the results of a variant, simulated once per module."""
    cache = {}

    def get(channels):
        if channels not in cache:
            cache[channels] = _run_config(tmp_path_factory.mktemp(f"mc{channels}"), channels)
        return cache[channels]
    return get


def _out(r, folder):
    dt = np.dtype(OUT_DTYPES[folder.out_bits])
    return torch.from_numpy(np.frombuffer(r["reads"]["out"], dtype=dt).astype(np.int64))


@pytest.mark.parametrize("channels", CHANNELS)
def test_core_has_a_data_port_per_channel(runs, channels):
    import json
    cfg, core, res, _ = runs(channels)
    meta = json.loads(core["meta"].read_text())
    assert meta["data_ports"] == [f"data{c}" for c in range(channels)]
    names = {p["name"] for p in meta["ports"]}
    for c in range(channels):
        assert {f"data{c}__araddr", f"data{c}__awaddr", f"data{c}__rdata",
                f"data{c}__wdata"} <= names
    assert f"data{channels}__araddr" not in names
    # Each channel's DATA_BASE pair holds what the host wrote.
    r = res[("hand", 0)]
    assert len(set(r["data_bases"])) == channels
    assert [b - r["data_bases"][0] for b in r["data_bases"]] == \
        [c * REGION for c in range(channels)]


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("name", list(LAYERS))
def test_linear_layer_bit_exact(runs, channels, name):
    from sim.golden import run_golden
    from sim.isa_sim import run_isa
    cfg, _, res, extra = runs(channels)
    r, folder = res[name], extra[name]
    assert r["done"] and not r["error"], \
        f"core error {ErrorCode(r['err_code']).name} at instruction {r['err_pc']}"
    got = _out(r, folder)
    want = run_golden(folder)
    isa_out, _ = run_isa(folder, cfg)
    assert torch.equal(isa_out, want)
    assert torch.equal(got, want), (got - want).nonzero()
    assert r["retired"] == len(folder.program.words)
    # The compiled program uses every channel for loads (and stores, for "stores"), and
    # every channel's port carried reads.
    ins = [isa.decode(w) for w in folder.program.words]
    used = {i.channel for i in ins if i.opcode == Opcode.LD}
    if name != "ksplit":
        assert used == set(range(channels)), used
    if name == "stores":
        assert {i.channel for i in ins if i.opcode == Opcode.ST} == set(range(channels))
    assert all(r["read_beats_per_channel"][c] > 0 for c in used), r["read_beats_per_channel"]


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("seed", range(2))
def test_hand_program_matches_isa_simulator(runs, channels, seed):
    from sim.isa_sim import IsaSim
    cfg, _, res, extra = runs(channels)
    r = res[("hand", seed)]
    img, words, offsets = extra[("hand", seed)]
    assert r["done"] and not r["error"], \
        f"core error {ErrorCode(r['err_code']).name} at instruction {r['err_pc']}"
    want = bytearray(img)
    IsaSim(cfg, want, offsets).run(words)
    got = r["reads"]["image"]
    bad = [i for i in range(len(want)) if got[i] != want[i]]
    assert not bad, f"{len(bad)} bytes differ, first at {bad[0]:#x}"
    # Independent of the ISA simulator: channel c's rows came from its own region.
    for c in range(channels):
        o = c * REGION
        for row in range(2):
            src = o + SRC + 0x40 * c + 0x100 * row
            dst = o + DST + 0x100 * c + 48 * row
            assert got[dst:dst + 48] == img[src:src + 48], (c, row)


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("key", ["bad_ld_channel", "bad_st_channel"])
def test_channel_out_of_range_is_malformed(runs, channels, key):
    from airfoil.errors import ProgramError
    from sim.isa_sim import IsaSim
    cfg, _, res, extra = runs(channels)
    r = res[key]
    prog, index = extra[key]
    folder = extra["slices"]
    with pytest.raises(ProgramError) as e:
        IsaSim(cfg, folder.image_with_input(), folder.channel_offsets).run(prog.words)
    assert r["done"] and r["error"]
    assert ErrorCode(r["err_code"]) == e.value.code == ErrorCode.MALFORMED
    assert r["err_pc"] == e.value.index == index


@pytest.mark.parametrize("channels", CHANNELS)
def test_axi_error_on_last_channel(runs, channels):
    _, _, res, _ = runs(channels)
    r = res["axi_error"]
    assert r["done"] and r["error"]
    assert ErrorCode(r["err_code"]) == ErrorCode.AXI_ERROR


def test_two_channels_load_at_once(runs):
    """The same loads take clearly fewer cycles spread over two channels than on one."""
    _, _, one, _ = runs(1)
    _, _, two, _ = runs(2)
    r1, r2 = one[("load_bound", False)], two[("load_bound", True)]
    r2_single = two[("load_bound", False)]
    for r in (r1, r2, r2_single):
        assert r["done"] and not r["error"], ErrorCode(r["err_code"]).name
    words = r1["read_beats"]
    assert r2["read_beats"] == words == r2_single["read_beats"]
    assert r2["read_beats_per_channel"][0] == r2["read_beats_per_channel"][1]
    # One channel delivers at most one word per cycle; two (into two buffers) nearly two.
    assert r1["cycles"] >= words
    assert r2["cycles"] < 0.6 * r1["cycles"], (r1["cycles"], r2["cycles"])
    assert r2["cycles"] < 0.6 * r2_single["cycles"], (r2_single["cycles"], r2["cycles"])


@pytest.mark.slow
@pytest.mark.rtl(group="rtl_mc_llm")
def test_llm_layer_on_two_channels_generates_the_isa_tokens(tmp_path):
    """A one-layer GQA LLaMA on a 2-channel ``sim_llm``: the RTL core generates the tokens
    of the ISA simulator and the golden model, under random stalls on both channels."""
    from airfoil.cli.backend_rtl import generate_rtl
    from compiler.ir import build_llama_graph
    from compiler.llm_recipe import parse_llm_recipe
    from compiler.lower_llm import compile_llm
    from compiler.passes import llm_pipeline, quantized_model
    from llmtools import random_llama
    from sim.golden_llm import generate_folder
    from sim.isa_sim import generate_isa
    cfg = mc_config(2, "sim_llm")
    recipe = {"weights": [{"match": "*", "format": "int8", "group": 32},
                          {"match": "*.mlp.*", "format": "int4"}]}
    m = random_llama(heads=4, kv=2, hd=16, vocab=37, inter=96, layers=1, max_pos=32, seed=1)
    g = llm_pipeline(parse_llm_recipe(recipe)).run(build_llama_graph(m.shape,
                                                                     m.hf_state_dict()))
    compile_llm(quantized_model(g), cfg, tmp_path / "out", max_prompt=4)
    folder = load_folder(tmp_path / "out", cfg)
    prompt = [5, 17, 2, 30]
    want = generate_folder(folder, prompt, 3)[0]
    assert generate_isa(folder, cfg, prompt, 3)[0] == want
    got, runs = generate_rtl(folder, cfg, prompt, 3, seed=2)
    assert got == want
    assert all(b > 0 for b in runs[0]["read_beats_per_channel"]), runs[0]


@pytest.mark.slow
@pytest.mark.rtl(group="rtl_mc_stream")
def test_streamed_layer_on_two_channels(tmp_path):
    """``test_decode`` with two channels: each slice's weight stream comes through its own
    port (``LD WSTREAM`` on channel c feeds slice c, channel 1's memory at its offset in
    the image), bit-exact under random stalls on both channels."""
    from airfoil.cli.backend_rtl import run_rtl
    from compiler.linear import compile_linear
    from sim.golden import run_golden
    from sim.isa_sim import run_isa
    cfg = mc_config(2, "test_decode")
    gen = torch.Generator().manual_seed(3)
    compile_linear(torch.randn(64, 512, generator=gen), None, cfg, tmp_path / "s",
                   wformat="int4", group=32, stream=True)
    folder = load_folder(tmp_path / "s", cfg)
    ins = [isa.decode(w) for w in folder.program.words]
    assert {i.channel for i in ins if i.opcode == Opcode.LD and i.buf == Buffer.WSTREAM} \
        == {0, 1}
    want = run_golden(folder)
    assert torch.equal(run_isa(folder, cfg)[0], want)
    got, stats = run_rtl(tmp_path / "s", cfg, seed=4, stalls=True)
    assert torch.equal(got, want)
    assert all(b > 0 for b in stats["read_beats_per_channel"]), stats


@pytest.mark.parametrize("channels", CHANNELS)
def test_load_bound_cycles_follow_the_isa_simulator(runs, channels):
    """The load-bound programs take the cycles the ISA simulator counts (within 5%): each
    channel's latency, outstanding reads and bandwidth bound its loads alike in both."""
    from sim.isa_sim import IsaSim
    cfg, _, res, _ = runs(channels)
    for spread in ((False, True) if channels >= 2 else (False,)):
        r = res[("load_bound", spread)]
        assert r["done"] and not r["error"], ErrorCode(r["err_code"]).name
        isa_cycles = IsaSim(cfg, bytearray(cfg.buffers.act_bytes)).run(
            _load_bound(cfg, spread))["cycles"]
        assert abs(isa_cycles - r["cycles"]) <= 0.05 * r["cycles"], (spread, isa_cycles,
                                                                     r["cycles"])


def test_channel_bandwidth_paces_the_reads(runs, tmp_path):
    """With ``channel_gbps`` at half a port's rate the memory model offers each channel's
    read beats at half the rate: the load-bound program on two channels takes about twice
    the cycles of the full-rate run, and the ISA simulator's count follows it."""
    from sim.isa_sim import IsaSim
    from sim.rtl import RtlCase, run_core
    cfg, core, res, _ = runs(2)
    wb = cfg.memory.word_bytes
    half = dataclasses.replace(cfg, memory=dataclasses.replace(
        cfg.memory, channel_gbps=wb / 2 * cfg.clock_mhz / 1e3))
    assert half.channel_bytes_per_cycle == wb / 2
    prog = _load_bound(half, True)
    image = bytes(cfg.buffers.act_bytes)
    case = RtlCase(program=Program(prog, half.config_hash_bytes).to_bytes(), image=image,
                   stall=0.0, max_cycles=400_000, poll=16)
    r, = run_core(verilog=core["sources"], meta=core["meta"], config=half, cases=[case],
                  build_root="build/sim", work_dir=tmp_path / "run")
    full = res[("load_bound", True)]
    assert r["done"] and not r["error"], ErrorCode(r["err_code"]).name
    assert r["read_beats"] == full["read_beats"]
    assert r["read_beats_per_channel"] == full["read_beats_per_channel"]
    # Each channel's beats at most every other cycle: twice the full-rate time, less the
    # program's fixed overhead.
    per_channel = max(r["read_beats_per_channel"])
    assert r["cycles"] >= 2 * per_channel
    assert 1.7 * full["cycles"] < r["cycles"] < 2.2 * full["cycles"], (full["cycles"],
                                                                      r["cycles"])
    isa = IsaSim(half, bytearray(image)).run(prog)["cycles"]
    assert abs(isa - r["cycles"]) <= 0.05 * r["cycles"], (isa, r["cycles"])
