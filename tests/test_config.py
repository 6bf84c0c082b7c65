import dataclasses

import pytest
import yaml

from airfoil.config import AccelConfig, load_config
from airfoil.errors import ConfigError


def _write(tmp_path, data):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture
def base():
    return load_config("test").to_dict()


def test_builtin_configs_load():
    t = load_config("test")
    u = load_config("u280")
    assert t.peak_macs_per_cycle == t.chains * t.lanes
    assert u.memory.channels == 32 and u.memory.word_bits == 512 and u.dsp_ceiling == 9024
    # One slice per HBM pseudo-channel, fed at the channel's bandwidth.
    assert (u.slices, u.slice_chains, u.decode_unit) == (32, 4, True)
    assert u.channel_bytes_per_cycle == pytest.approx(14.375e9 / 225e6)
    assert t.config_hash != u.config_hash and len(t.config_hash) == 16


def test_vhk158_config():
    """The Versal HBM board: 32 pseudo-channels of 1 GiB and 25.6 GB/s (819.2 GB/s), the
    U280's slices at the clock where a 512-bit port carries a channel's rate; the core can
    be built of it."""
    from hdl.core.buffers import BufferGeometry
    v, u = load_config("vhk158"), load_config("u280")
    mem = v.memory
    assert (mem.channels, mem.channel_bytes) == (32, 1 << 30)
    assert mem.channels * mem.channel_bytes == 32 << 30
    assert mem.channels * mem.channel_gbps == pytest.approx(819.2)
    assert v.channel_bytes_per_cycle == pytest.approx(mem.word_bytes)
    assert (v.slices, v.slice_chains, v.peak_macs_per_cycle) == (32, 4, 4096)
    assert v.dsp_ceiling == 7392 and v.device is None
    assert v.buffers == u.buffers and v.config_hash != u.config_hash
    BufferGeometry.of(v)


def test_u280_buffers_hold_a_7b_layer():
    """The U280's buffers fit the card's URAM (960 blocks of 288 Kb) with room to spare:
    18.1 MiB, ~515 blocks, under 60 % of them (a 4 MiB WGT buffer, two 2 MiB tile slots,
    took 11 % off the cycle model's 7B decode step against 2 MiB)."""
    u = load_config("u280")
    b = u.buffers
    total = b.act_bytes + b.weight_bytes + b.out_bytes + b.kv_bytes + b.aux_bytes
    assert total / (288 * 1024 // 8) < 0.6 * u.device.uram


def test_memory_parallel_fields(base, tmp_path):
    """Per-channel latency, outstanding reads and bandwidth, slices of the decode unit,
    refused values."""
    base["memory"]["channels"] = 2
    base["memory"]["channel_latency"] = [10, 30]
    base["memory"]["channel_outstanding"] = [2, 8]
    base["memory"]["channel_gbps"] = 1.6
    c = load_config(_write(tmp_path, base))
    assert [c.memory.latency_of(i) for i in range(2)] == [10, 30]
    assert [c.memory.outstanding_of(i) for i in range(2)] == [2, 8]
    u = c.memory.uniform(3)
    assert (u.channels, u.latency_of(2), u.outstanding_of(2)) == (
        3, c.memory.read_latency, c.memory.outstanding)
    assert c.channel_bytes_per_cycle == pytest.approx(1.6e9 / (c.clock_mhz * 1e6))
    for key, value, msg in (
            ("channel_latency", [10], "one latency per channel"),
            ("channel_latency", [10, 0], "entries must be 1..1024"),
            ("channel_outstanding", [4], "one count per channel"),
            ("channel_outstanding", [4, 65], "entries must be 1..64"),
            ("channel_gbps", -1, "channel_gbps must be 0..1000")):
        bad = dict(base, memory=dict(base["memory"], **{key: value}))
        with pytest.raises(ConfigError, match=msg):
            load_config(_write(tmp_path, bad))
    mc = load_config("test_mc")
    assert (mc.slices, mc.slice_chains) == (3, 4)
    with pytest.raises(ConfigError, match="one equal slice per memory channel"):
        dataclasses.replace(mc, memory=dataclasses.replace(mc.memory, channels=5,
                                                           channel_latency=()))
    with pytest.raises(ConfigError, match="a streamed group spans whole memory words"):
        dataclasses.replace(mc, memory=dataclasses.replace(mc.memory, word_bits=512))


def test_sfu_lanes(base, tmp_path):
    """Left out: the buffer word's int32 count; given: read, outside the program hash (it
    changes cycles, not programs) and inside the hardware hash (it changes the core, so a
    built core or a place-and-route report of another lane count is not reused); a bad
    value refused by name."""
    t = load_config("test")
    assert t.sfu_lanes is None and t.sfu_lane_count == t.memory.word_bits // 32 == 4
    assert load_config("u280").sfu_lane_count == 16
    c = load_config(_write(tmp_path, dict(base, sfu_lanes=2)))
    assert c.sfu_lane_count == 2 and c.config_hash == t.config_hash
    assert c.hardware_hash != t.hardware_hash
    assert load_config(_write(tmp_path, dict(base))).hardware_hash == t.hardware_hash
    for value in (3, 0, 8, "2", True):
        with pytest.raises(ConfigError, match="sfu_lanes"):
            load_config(_write(tmp_path, dict(base, sfu_lanes=value)))


def test_sfu_word_bits(base, tmp_path):
    """Left out: the buffer word; given: the SFU kernels' word and the default lane count,
    outside the program hash and inside the hardware hash (left out, the hardware hash of
    every config stays); a bad value, or a narrower word on a banked KV buffer, refused
    by name."""
    t = load_config("test")
    assert t.sfu_word_bits is None and t.sfu_word_width == t.memory.word_bits == 128
    c = load_config(_write(tmp_path, dict(base, sfu_word_bits=32)))
    assert c.sfu_word_width == 32 and c.sfu_lane_count == 1
    assert c.config_hash == t.config_hash and c.hardware_hash != t.hardware_hash
    assert load_config(_write(tmp_path, dict(base))).hardware_hash == t.hardware_hash
    assert load_config("ulx3s").sfu_word_width == 32
    for value in (16, 48, 256):
        with pytest.raises(ConfigError, match="sfu_word_bits must be a power of two from "
                                              "32 to 128"):
            load_config(_write(tmp_path, dict(base, sfu_word_bits=value)))
    for value in ("32", True):
        with pytest.raises(ConfigError, match="sfu_word_bits"):
            load_config(_write(tmp_path, dict(base, sfu_word_bits=value)))
    with pytest.raises(ConfigError, match="sfu_lanes must be a power of two dividing 2"):
        load_config(_write(tmp_path, dict(base, sfu_word_bits=64, sfu_lanes=4)))
    banked = dict(base, buffers=dict(base["buffers"], kv_banks=2))
    with pytest.raises(ConfigError, match="sfu_word_bits must be the buffer word"):
        load_config(_write(tmp_path, dict(banked, sfu_word_bits=64)))


def test_sfu_funcs(base, tmp_path):
    """Left out: every SFU function, both hashes of every config unchanged; given: the
    functions built, in both hashes whatever their order; an unknown or repeated name, or
    an empty list, refused by name with the accepted ones."""
    from airfoil.isa import SfuFunc
    t = load_config("test")
    assert t.sfu_funcs is None and t.sfu_functions == frozenset(SfuFunc)
    assert load_config(_write(tmp_path, dict(base))).config_hash == t.config_hash
    c = load_config(_write(tmp_path, dict(base, sfu_funcs=["SILU", "RMSNORM"])))
    assert c.sfu_functions == {SfuFunc.SILU, SfuFunc.RMSNORM}
    assert c.config_hash != t.config_hash and c.hardware_hash != t.hardware_hash
    d = load_config(_write(tmp_path, dict(base, sfu_funcs=["RMSNORM", "SILU"])))
    assert (d.config_hash, d.hardware_hash) == (c.config_hash, c.hardware_hash)
    assert SfuFunc.GELU not in load_config("ulx3s").sfu_functions
    for value in (["SILU", "SWISH"], ["SILU", "SILU"], []):
        with pytest.raises(ConfigError, match=r"sfu_funcs must list SFU functions once "
                                              r"each, at least one \(accepted: COPY, "):
            load_config(_write(tmp_path, dict(base, sfu_funcs=value)))
    with pytest.raises(ConfigError, match="field 'sfu_funcs' must be a list"):
        load_config(_write(tmp_path, dict(base, sfu_funcs="SILU")))


def test_limits_section(base, tmp_path):
    """Left out: the defaults; given: read, part of the hash; a bad value refused by name.
    The derived K-split limit is the MATRIX unit's accumulator depth."""
    from airfoil.isa import ATT_PV_MAX_HEAD_DIM
    from hdl.core.buffers import BufferGeometry
    from hdl.core.matrix import acc_depth
    t = load_config("test")
    assert t.limits.att_pv_max_head_dim == ATT_PV_MAX_HEAD_DIM
    c = load_config(_write(tmp_path, dict(base, limits={"att_pv_max_head_dim": 64})))
    assert c.limits.att_pv_max_head_dim == 64 and c.config_hash != t.config_hash
    for value in (6, 0, 8192, "64"):
        with pytest.raises(ConfigError, match="att_pv_max_head_dim"):
            load_config(_write(tmp_path, dict(base, limits={"att_pv_max_head_dim": value})))
    with pytest.raises(ConfigError, match="unknown field 'limits.k_split'"):
        load_config(_write(tmp_path, dict(base, limits={"k_split": 4})))
    for name in ("test", "sim_llm", "u280_slice"):
        cfg = load_config(name)
        geo = BufferGeometry.of(cfg)
        assert cfg.k_split_batches == acc_depth(geo, cfg.chains, min(cfg.group_sizes))
    # 16 KiB of WGT buffer, batches of 4 chains x 32 INT4 weights (64 bytes): 256.
    assert t.k_split_batches == 16384 // 64 == 256


def test_round_trip_and_hash_ignores_name(tmp_path, base):
    base["name"] = "renamed"
    c = load_config(_write(tmp_path, base))
    assert c == dataclasses.replace(load_config("test"), name="renamed")
    assert c.config_hash == load_config("test").config_hash
    base["lanes"] = 16
    assert load_config(_write(tmp_path, base)).config_hash != c.config_hash


def test_frozen():
    c = load_config("test")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lanes = 3


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(lane=4), "unknown field 'lane'"),
    (lambda d: d["memory"].update(width=4), "unknown field 'memory.width'"),
    (lambda d: d.update(lanes="8"), "field 'lanes' must be int, not str"),
    (lambda d: d.update(lanes=True), "field 'lanes' must be int"),
    (lambda d: d.update(lanes=6), "lanes must be a power of two"),
    (lambda d: d.update(chains=0), "chains must be 1..1024, not 0"),
    (lambda d: d.update(pe="gpu"), "pe must be one of dsp, bitserial, lut, not 'gpu'"),
    (lambda d: d.update(weight_formats=["fp32"]), "unknown format 'fp32'"),
    (lambda d: d.update(group_sizes=[48]), "48 is not supported"),
    (lambda d: d.update(sparsity=["2:4"]), "sparsity must include 'dense'"),
    (lambda d: d["memory"].update(word_bits=100), "memory.word_bits must be a power of two"),
    (lambda d: d["buffers"].update(act_bytes=1000), "buffers.act_bytes must be a power of two"),
    (lambda d: d.pop("memory"), "missing field 'memory'"),
    (lambda d: d.update(group_sizes=32), "field 'group_sizes' must be a list"),
])
def test_bad_fields_name_the_field(tmp_path, base, mutate, message):
    mutate(base)
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, base))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("lanes: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(p)


def test_from_dict_validates_group_vs_lanes(base):
    base["lanes"] = 64
    with pytest.raises(ConfigError, match="not a multiple of lanes"):
        AccelConfig.from_dict(base)


def test_stream_tokens_limit(base, tmp_path):
    """limits.stream_tokens: 16 when left out, part of the hash, 1..256 accepted; the
    streamed engine of a config is built for that many tokens."""
    from hdl.core.stream_mv import StreamMatrix
    t = load_config("test")
    assert t.limits.stream_tokens == 16
    c = load_config(_write(tmp_path, dict(base, limits={"stream_tokens": 4})))
    assert c.limits.stream_tokens == 4 and c.config_hash != t.config_hash
    for value in (0, 257, "8", True):
        with pytest.raises(ConfigError, match=r"limits\.stream_tokens"):
            load_config(_write(tmp_path, dict(base, limits={"stream_tokens": value})))
    cfg = load_config("u280_slice")
    assert StreamMatrix.config_kw(cfg)["tokens"] == cfg.limits.stream_tokens == 16


def test_topk_max_limit(base, tmp_path):
    """limits.topk_max: the ISA's 64 when left out and then out of the hash (configs of
    before keep theirs), smaller ones in it, 1..64 accepted; the sampler is built with it."""
    from airfoil.isa import TOPK_MAX, SfuFunc
    from hdl.sfu.unit import default_kernels
    t = load_config("test")
    assert t.limits.topk_max == TOPK_MAX == 64
    same = load_config(_write(tmp_path, dict(base, limits={"topk_max": 64})))
    assert same.config_hash == t.config_hash
    c = load_config(_write(tmp_path, dict(base, limits={"topk_max": 8})))
    assert c.limits.topk_max == 8 and c.config_hash != t.config_hash
    for value in (0, 65, "8", True):
        with pytest.raises(ConfigError, match=r"limits\.topk_max"):
            load_config(_write(tmp_path, dict(base, limits={"topk_max": value})))
    assert default_kernels(c.limits)[SfuFunc.TOPK_SAMPLE].keywords == {"topk_max": 8}


def test_base_config_overlaid_field_by_field(tmp_path):
    """A file with ``base`` states what differs: mappings overlay field by field."""
    p = _write(tmp_path, {"name": "t2", "base": "test", "chains": 2,
                          "memory": {"read_latency": 40}})
    t, d = load_config("test"), load_config(p)
    assert (d.name, d.chains, d.memory.read_latency) == ("t2", 2, 40)
    assert d.memory.word_bits == t.memory.word_bits and d.buffers == t.buffers
    # A base given as a path beside the file, two levels deep.
    q = tmp_path / "c3.yaml"
    q.write_text(yaml.safe_dump({"base": "c.yaml", "name": "t3", "lanes": 4}))
    e = load_config(q)
    assert (e.name, e.chains, e.lanes, e.memory.read_latency) == ("t3", 2, 4, 40)


@pytest.mark.parametrize("base, match", [("nope", "not found"), (3, "must name a config"),
                                         ("c.yaml", "loop")])
def test_base_config_errors(tmp_path, base, match):
    p = _write(tmp_path, {"name": "x", "base": base})
    with pytest.raises(ConfigError, match=match):
        load_config(p)
