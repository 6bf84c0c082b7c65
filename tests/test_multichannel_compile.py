"""Streamed weights over several memory channels: compiler, golden and ISA simulator.

A core has one decode-unit slice per memory channel; the compiler places slice ``c``'s
stream of every tile in channel ``c``'s memory (the manifest's ``channel_offsets``) and
loads it on channel ``c``. These tests check the placement, the per-channel capacity
check and that golden == ISA bit-exactly for 1, 2, 3 and 4 channels (``test_mc``'s 12
chains divide by each), and that the ISA simulator's streamed MV lasts as long as its
slowest slice.
"""

import dataclasses

import pytest
import torch

from airfoil.config import load_config
from airfoil.errors import AirfoilError, CompileError
from airfoil.folder import load_folder
from airfoil.isa import Buffer, Opcode, decode
from compiler.linear import compile_linear
from compiler.streams import CHANNEL_ALIGN
from sim.golden import run_golden
from sim.isa_sim import run_isa

BASE = load_config("test_mc")
LATENCIES = (24, 40, 17, 31)


def mc_config(channels: int, **memory):
    """``test_mc`` with ``channels`` channels, each with its own read latency."""
    mem = dataclasses.replace(BASE.memory, channels=channels,
                              channel_latency=LATENCIES[:channels], **memory)
    return dataclasses.replace(BASE, name=f"test_mc{channels}", memory=mem)


def _weights(seed, n, k):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * (0.5 + torch.rand(n, 1, generator=g))


def _compile(tmp_path, cfg, seed, n, k, **kw):
    out = tmp_path / f"{cfg.name}-{seed}"
    manifest = compile_linear(_weights(seed, n, k), None, cfg, out, seed=seed, stream=True,
                              **kw)
    return manifest, load_folder(out, cfg)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("wformat,sparsity,kw", [
    ("int4", "dense", {}), ("int2", "2:4", {}), ("int4", "block", {"block_density": 0.5}),
    ("mixed", "dense", {"mixed_formats": "int2,int4,int8"})],
    ids=["int4", "int2-2:4", "block", "mixed"])
def test_golden_equals_isa(tmp_path, channels, wformat, sparsity, kw):
    cfg = mc_config(channels)
    n, k = 2 * cfg.chains + 5, 384          # the last batch is partly padding
    manifest, folder = _compile(tmp_path, cfg, channels, n, k, wformat=wformat, group=128,
                                sparsity=sparsity, **kw)
    gold = run_golden(folder)
    res, _ = run_isa(folder, cfg)
    assert torch.equal(res, gold), f"channels={channels} {wformat} {sparsity}"
    x = torch.randint(-128, 128, (k,), generator=torch.Generator().manual_seed(channels))
    assert torch.equal(run_isa(folder, cfg, x)[0], run_golden(folder, x))


def test_placement_per_channel(tmp_path):
    """Slice c's streams lie in channel c's memory, one after the other, loaded on c."""
    cfg = mc_config(3)
    manifest, folder = _compile(tmp_path, cfg, 0, 5 * cfg.chains, 256, wformat="int4",
                                group=128, max_tile_bytes=1 << 10)
    offs = manifest["channel_offsets"]
    assert len(offs) == 3 and offs[0] == 0
    assert all(o % CHANNEL_ALIGN == 0 for o in offs) and offs == sorted(offs)
    tiles = manifest["model"]["linears"]["linear"]["tiles"]
    assert len(tiles) > 1
    for c in range(3):
        end = None if c == 2 else offs[c + 1]
        addrs = [(t["streams"][c]["addr"], t["streams"][c]["nbytes"]) for t in tiles]
        assert all(t["streams"][c]["channel"] == c for t in tiles)
        for (a, nb), (a2, _) in zip(addrs, addrs[1:]):
            assert a2 == a + nb                     # contiguous in the channel's memory
        assert end is None or offs[c] + addrs[-1][0] + addrs[-1][1] <= end
    loads = [ins for ins in map(decode, folder.program.words)
             if ins.opcode == Opcode.LD and ins.buf == Buffer.WSTREAM]
    assert [ins.channel for ins in loads] == [c for _ in tiles for c in range(3)]
    assert [(ins.dram_addr, ins.nbytes) for ins in loads] == \
        [(t["streams"][c]["addr"], t["streams"][c]["nbytes"]) for t in tiles for c in range(3)]


def test_same_weights_same_answer_on_any_channel_count(tmp_path):
    """INT4 scales are per row and group, so the layer's result does not depend on how
    its rows are spread over the slices."""
    outs = []
    for c in (1, 2, 3, 4):
        cfg = mc_config(c)
        _, folder = _compile(tmp_path, cfg, 9, 3 * cfg.chains + 1, 256, wformat="int4",
                             group=64)
        outs.append(run_isa(folder, cfg)[0])
    assert all(torch.equal(o, outs[0]) for o in outs[1:])


def test_more_channels_fewer_cycles(tmp_path):
    """A memory-bound streamed layer: the MV lasts as long as its slowest slice. Each
    channel's words are 64 bits wide, so that even four channels feed the chains less than
    their INT8 rate (two cycles per step on the ``dsp`` kind) and the layer stays
    memory-bound."""
    busy = {}
    for c in (1, 2, 4):
        cfg = mc_config(c, word_bits=64)
        _, folder = _compile(tmp_path, cfg, 3, 8 * cfg.chains, 1024, wformat="int8",
                             group=128, max_tile_bytes=1 << 20)
        busy[c] = run_isa(folder, cfg)[1]["busy_matrix"]
    assert busy[2] < 0.6 * busy[1] and busy[4] < 0.6 * busy[2], busy


def test_channel_capacity_is_checked(tmp_path):
    cfg = mc_config(2, channel_bytes=1 << 16)
    with pytest.raises(CompileError, match=r"channel [01]'s memory would hold \d+ bytes, more "
                                           r"than one channel's capacity"):
        _compile(tmp_path, cfg, 0, 4 * cfg.chains, 4096, wformat="int8", group=128)


def test_bad_channel_offsets_refused(tmp_path):
    cfg = mc_config(2)
    _, folder = _compile(tmp_path, cfg, 0, cfg.chains, 128, wformat="int4", group=128)
    for bad in ([0], [4096, 0], [0, -1], "0,0"):
        folder.manifest["channel_offsets"] = bad
        with pytest.raises(AirfoilError, match="channel_offsets"):
            folder.channel_offsets


def _loads_ahead_of_each_mv(words):
    """For each MV STREAM j, the loads placed before it that belong to tile j or later (a
    tile's loads: its bias tile's LD WGT, then one LD WSTREAM per channel from 0)."""
    tile_of_load, mv_pos, tile = [], [], -1
    instrs = [decode(w) for w in words]
    for pos, ins in enumerate(instrs):
        if ins.opcode == Opcode.LD and ins.buf in (Buffer.WSTREAM, Buffer.WGT):
            starts = ins.buf == Buffer.WGT or (ins.channel == 0 and not (
                pos and instrs[pos - 1].opcode == Opcode.LD and
                instrs[pos - 1].buf == Buffer.WGT))
            tile += starts
            tile_of_load.append((pos, tile))
        elif ins.opcode == Opcode.MV and ins.wfmt.name == "STREAM":
            mv_pos.append(pos)
    return [sum(1 for p, t in tile_of_load if p < mp and t >= j) for j, mp in enumerate(mv_pos)]


@pytest.mark.parametrize("depth", [8, 16, 32])
@pytest.mark.parametrize("bias", [False, True])
def test_streamed_loads_leave_each_mv_room_in_the_queue(tmp_path, depth, bias):
    """A load blocked on a full stream FIFO waits for its MV: the loads queued ahead of
    that MV must fit the instruction queue with room for it, on any channel count."""
    cfg = dataclasses.replace(mc_config(4), instr_queue_depth=depth)
    w = _weights(3, 96, 64)
    b = torch.randn(96) if bias else None
    out = tmp_path / f"d{depth}{bias}"
    compile_linear(w, b, cfg, out, seed=3, stream=True, wformat="int4", group=32)
    folder = load_folder(out, cfg)
    ahead = _loads_ahead_of_each_mv(folder.program.words)
    assert len(ahead) >= 4 and max(ahead) <= depth - 1, ahead
    out_isa, _ = run_isa(folder, cfg)
    assert torch.equal(out_isa, run_golden(folder))

