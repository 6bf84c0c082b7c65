"""The packed weight-stream format of airfoil.packing: bit layout, round trips, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from airfoil import bitmod
from airfoil.errors import CompileError
from airfoil.formats import quantize_weights
from airfoil.packing import (BITMOD_TAGS, BLOCK_CODE, GROUP_CODES, HEADER_FIXED_BITS, OVP_ID,
                             TAG_BITS, Record, RecordTag, StreamGeometry, bits_per_weight,
                             bitmod_values, decode_weights, deinterleave, encode_weights,
                             expected_beats, interleave, nm_index_bits, ovp_decode,
                             ovp_encode, ovp_values, pack_records, pack_tensor, parse_stream,
                             quantize_stream, record_tag, tensor_records, unpack_tensor)
from sim.tb_decode.stimulus import random_records, random_weights

GEOMS = [StreamGeometry(word_bits=128, lanes=8, rows=4),
         StreamGeometry(word_bits=256, lanes=32, rows=2),
         StreamGeometry(word_bits=512, lanes=8, rows=3),
         StreamGeometry(word_bits=64, lanes=2, rows=1)]


def _same(a: Record, b: Record) -> bool:
    return (a.tag == b.tag and a.group == b.group and np.array_equal(a.q, b.q)
            and np.array_equal(a.scale_bits, b.scale_bits) and a.nm == b.nm)


def _independent_pack(geom: StreamGeometry, records) -> bytes:
    """The format of the module docstring, written field by field with Python integers."""
    acc, pos, W = 0, 0, geom.word_bits

    def put(value, bits):
        nonlocal acc, pos
        acc |= (value & ((1 << bits) - 1)) << pos
        pos += bits

    for rc in records:
        if pos % W > W - 12:
            pos += W - pos % W
        put(rc.tag.value, 6)
        put({32: 0, 64: 1, 128: 2}[rc.group], 2)
        put(rc.nm, 4)
        for s in rc.scale_bits:
            put(int(s), 16)
        b = TAG_BITS[rc.tag]
        zero = [0] * geom.rows          # UINT4Z: code = weight + its row's zero point
        if rc.tag is RecordTag.UINT4Z:  # the zero points: the negated smallest weights
            zero = [min(15, max(0, -int(min(row)))) for row in rc.q]
            for z in zero:
                put(z, 4)
        codes = (ovp_encode(rc.q) if rc.tag is RecordTag.OVP4 else
                 np.vectorize(lambda v: bitmod.encode(rc.tag.name.lower(), v))(rc.q)
                 if rc.tag in BITMOD_TAGS else rc.q)
        L = geom.lanes
        steps = list(range(rc.group // L))
        if rc.nm == BLOCK_CODE:       # step mask: steps with a nonzero (step 0 if none)
            if rc.mask is not None:
                steps = [s for s in steps if rc.mask >> s & 1]
            else:
                steps = [s for s in steps if np.any(rc.q[:, s * L:(s + 1) * L])] or [0]
            for s in range(rc.group // L):
                put(int(s in steps), 1)
            kv, ki, ib = codes, None, 0
        elif rc.nm:                   # kept entries: nonzeros, then the lowest zeros
            n, mm = {1: (1, 4), 2: (2, 4), 3: (2, 8), 4: (4, 16), 5: (8, 16)}[rc.nm]
            kv, ki = [], []
            for row in codes:
                vr, ir = [], []
                for w0 in range(0, rc.group, mm):
                    win = list(row[w0:w0 + mm])
                    pos_nz = [i for i in range(mm) if win[i] != 0]
                    pos_z = [i for i in range(mm) if win[i] == 0]
                    keep = sorted(pos_nz + pos_z[:n - len(pos_nz)])
                    vr += [win[i] for i in keep]
                    ir += keep
                kv.append(vr)
                ki.append(ir)
            ib = (mm - 1).bit_length()
        else:
            kv, ki, ib = codes, None, 0
        if rc.nm and rc.nm != BLOCK_CODE:
            steps = list(range(len(kv[0]) // L))
        for step in steps:
            for row in range(geom.rows):
                for lane in range(L):
                    put(int(kv[row][step * L + lane]) + zero[row], b)
                for lane in range(L):
                    if ib:
                        put(int(ki[row][step * L + lane]), ib)
    nbytes = -(-pos // W) * W // 8
    return acc.to_bytes(nbytes, "little")


@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: f"w{g.word_bits}l{g.lanes}r{g.rows}")
def test_packer_writes_the_documented_bits(geom):
    """Every format (INT3 straddling words), mixed per group, against a field-by-field
    writer; and the reference reader gives the records back."""
    rng = np.random.default_rng(geom.word_bits + geom.rows)
    recs = random_records(geom, rng, 40, sparsity=(0, 0, 1, 2, 3, 4, 5, BLOCK_CODE))
    assert any(rc.nm for rc in recs) and any(rc.nm == BLOCK_CODE for rc in recs)
    raw = pack_records(geom, recs)
    assert raw == _independent_pack(geom, recs)
    back = parse_stream(geom, raw)
    assert len(back) == len(recs) and all(_same(a, b) for a, b in zip(recs, back))


def test_header_never_starts_in_the_last_bits_of_a_word():
    """The padding rule the unpacker relies on, at every record start, for every geometry."""
    for g in GEOMS:
        rng = np.random.default_rng(g.word_bits)
        recs = random_records(g, rng, 40, sparsity=(0, 2, 3, BLOCK_CODE))
        raw = pack_records(g, recs)
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
        pos, padded = 0, 0
        for rc in recs:
            if pos % g.word_bits > g.word_bits - HEADER_FIXED_BITS:
                assert not bits[pos:pos + g.word_bits - pos % g.word_bits].any()
                pos += g.word_bits - pos % g.word_bits
                padded += 1
            assert int(bits[pos:pos + 4] @ (1 << np.arange(4))) == rc.tag.value
            pos += g.record_bits(rc.tag, rc.group, rc.nm, rc.step_mask(g.lanes))
        assert not bits[pos:].any() and len(raw) * 8 % g.word_bits == 0


def test_streams_concatenate_as_layers():
    g = GEOMS[0]
    rng = np.random.default_rng(1)
    a = random_records(g, rng, 5, tags=[RecordTag.INT3])
    b = random_records(g, rng, 5, tags=[RecordTag.INT8])
    back = parse_stream(g, pack_records(g, a) + pack_records(g, b))
    assert all(_same(x, y) for x, y in zip(a + b, back)) and len(back) == 10


def test_zero_words_are_padding():
    g = GEOMS[0]
    rng = np.random.default_rng(2)
    recs = random_records(g, rng, 3)
    raw = bytes(16) + pack_records(g, recs) + bytes(32)
    assert all(_same(x, y) for x, y in zip(recs, parse_stream(g, raw)))


# -- OVP ----------------------------------------------------------------------------------

def test_ovp_every_legal_pair_round_trips():
    vals = ovp_values()
    normal = vals[np.abs(vals) <= 7]
    outl = vals[np.abs(vals) > 7]
    pairs = [(a, b) for a in normal for b in normal]
    pairs += [(o, 0) for o in outl] + [(0, o) for o in outl]
    q = np.array(pairs, dtype=np.int64).reshape(-1)
    codes = ovp_encode(q)
    assert codes.min() >= -8 and codes.max() <= 7
    assert np.array_equal(ovp_decode(codes), q)
    # outliers carry the identifier in the victim's slot
    c = codes.reshape(-1, 2)
    p = q.reshape(-1, 2)
    assert np.all((c[np.abs(p[:, 0]) > 7, 1] & 15) == OVP_ID)
    assert np.all((c[np.abs(p[:, 1]) > 7, 0] & 15) == OVP_ID)
    assert sorted(set(outl.tolist())) == [-96, -64, -48, -32, -24, -16, -12,
                                          12, 16, 24, 32, 48, 64, 96]


def test_ovp_every_code_pair_decodes_to_a_legal_pair():
    codes = np.array(list(itertools.product(range(-8, 8), repeat=2))).reshape(-1)
    v = ovp_decode(codes).reshape(-1, 2)
    legal = set(ovp_values().tolist())
    assert all(int(x) in legal for x in v.reshape(-1))
    assert np.all((np.abs(v[:, 0]) <= 7) | (v[:, 1] == 0))
    assert np.all((np.abs(v[:, 1]) <= 7) | (v[:, 0] == 0))
    assert np.array_equal(ovp_decode(ovp_encode(v.reshape(-1))), v.reshape(-1))


@pytest.mark.parametrize("pair, msg", [((12, 16), "two outliers"),
                                       ((12, 3), "partner is not 0"),
                                       ((8, 0), "outlier 8 is not representable"),
                                       ((0, -100), "outlier -100 is not representable")])
def test_ovp_rejects_illegal_pairs(pair, msg):
    with pytest.raises(CompileError, match=msg):
        ovp_encode(np.array(pair))


# -- tensors and channels -------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3, 4])
def test_tensor_round_trip_with_mixed_formats_and_channels(channels):
    g = GEOMS[0]
    rng = np.random.default_rng(channels)
    R, K, group = 29, 256, 64                       # 8 row batches, the last padded
    B, G = -(-R // g.rows), K // group
    grid = rng.choice([t.value for t in TAG_BITS], size=(B, G))
    q = np.zeros((R, K), dtype=np.int64)
    for b in range(B):
        for j in range(G):
            tag = RecordTag(int(grid[b, j]))
            blk = q[b * g.rows:(b + 1) * g.rows, j * group:(j + 1) * group]
            blk[:] = random_weights(rng, tag, (g.rows, group))[:blk.shape[0]]
    scales = torch.from_numpy(rng.uniform(1e-3, 3.0, (R, G))).to(torch.float16)
    image = pack_tensor(g, q, scales, group=group, tags=grid, channels=channels)
    q2, s2, t2 = unpack_tensor(g, image, rows=R, k=K, channels=channels)
    assert torch.equal(q2, torch.from_numpy(q))
    assert torch.equal(s2.view(torch.int16), scales.view(torch.int16))
    assert np.array_equal(t2, grid)


def test_interleave_is_word_by_word():
    wb = 4
    a = bytes(range(0, 12))               # 3 words
    b = bytes(range(100, 108))            # 2 words
    img = interleave([a, b], wb)
    assert img == a[0:4] + b[0:4] + a[4:8] + b[4:8] + a[8:12] + bytes(4)
    assert deinterleave(img, 2, wb) == [a, b + bytes(4)]


def test_channel_gets_every_channels_th_row_batch():
    g = GEOMS[1]
    rng = np.random.default_rng(3)
    q = rng.integers(-8, 8, (10, 128))
    scales = torch.full((10, 1), 0.5, dtype=torch.float16)
    image = pack_tensor(g, q, scales, group=128, tags="int4", channels=2)
    streams = deinterleave(image, 2, g.word_bits // 8)
    batches = tensor_records(g, q, scales, group=128, tags="int4")
    for c in range(2):
        got = parse_stream(g, streams[c])
        want = [rc for b in range(c, len(batches), 2) for rc in batches[b]]
        assert len(got) == len(want) and all(_same(x, y) for x, y in zip(got, want))


def test_quantized_tensor_packs_and_bits_per_weight_counts_everything():
    g = StreamGeometry(word_bits=256, lanes=32, rows=2)
    torch.manual_seed(0)
    w = torch.randn(64, 512)
    q, s = quantize_weights(w, 4, 128)
    image = pack_tensor(g, q, s, group=128, tags="int4", channels=4)
    records = 32 * 4
    per_channel_bits = (records // 4) * g.record_bits(RecordTag.INT4, 128)
    words = -(-per_channel_bits // g.word_bits)
    assert len(image) == 4 * words * g.word_bits // 8
    assert bits_per_weight(image, q.numel()) == len(image) * 8 / q.numel()
    q2, s2, _ = unpack_tensor(g, image, rows=64, k=512, channels=4)
    assert torch.equal(q2, q) and torch.equal(s2.view(torch.int16), s.view(torch.int16))


# -- errors -----------------------------------------------------------------------------

def test_bad_input_is_refused_with_one_line_messages():
    g = GEOMS[0]
    ok = np.zeros((4, 32), dtype=np.int64)
    with pytest.raises(CompileError, match="unknown packed weight format 'int5'"):
        record_tag("int5")
    with pytest.raises(CompileError, match="outside the INT3 range -4..3"):
        pack_records(g, [Record(RecordTag.INT3, 32, ok + 4, np.zeros(4, np.uint16))])
    with pytest.raises(CompileError, match="group size 48 cannot be packed"):
        pack_records(g, [Record(RecordTag.INT4, 48, np.zeros((4, 48), np.int64),
                                np.zeros(4, np.uint16))])
    with pytest.raises(CompileError, match=r"shape \(3, 32\), expected \(4, 32\)"):
        pack_records(g, [Record(RecordTag.INT4, 32, ok[:3], np.zeros(4, np.uint16))])
    with pytest.raises(CompileError, match="infinite"):
        Record.make("int4", ok, np.array([1, -np.inf, 1, 1], dtype=np.float16))
    with pytest.raises(CompileError, match=r"format grid has shape \(1, 2\), expected"):
        pack_tensor(g, np.zeros((8, 64)), torch.ones(8, 2, dtype=torch.float16), group=32,
                    tags=[["int4", "int8"]])
    with pytest.raises(CompileError, match="not 2:4 sparse"):
        pack_records(g, [Record(RecordTag.INT4, 32, ok + 1, np.zeros(4, np.uint16), 2)])
    with pytest.raises(CompileError, match="OVP4 records are dense"):
        pack_records(g, [Record(RecordTag.OVP4, 32, ok, np.zeros(4, np.uint16), 2)])
    g32 = GEOMS[1]                                  # 32 lanes, 2 rows
    with pytest.raises(CompileError, match=r"kept entries per row \(\(1, 4\)\) 8 of group 32 "
                                           r"is not a multiple of lanes \(32\)"):
        pack_records(g32, [Record(RecordTag.INT4, 32, np.zeros((2, 32), np.int64),
                                  np.zeros(2, np.uint16), 1)])
    with pytest.raises(CompileError, match="bad record tag 16 at stream bit 0"):
        parse_stream(g, bytes([16]) + bytes(15))
    with pytest.raises(CompileError, match="not whole 128-bit words"):
        parse_stream(g, bytes(10))


def test_expected_beats_cover_each_record_in_order():
    g = GEOMS[1]
    rng = np.random.default_rng(9)
    recs = random_records(g, rng, 16, sparsity=(0, 2, 5, BLOCK_CODE))
    assert any(rc.nm for rc in recs) and any(rc.nm == BLOCK_CODE for rc in recs)
    beats = expected_beats(g, pack_records(g, recs))
    i = 0
    for rc in recs:
        mask = rc.step_mask(g.lanes)
        total = g.record_vectors(rc.group, rc.nm, mask)
        flat, fidx = rc.lane_order(g.lanes)
        pos = 0
        while pos < total:
            b = beats[i]
            assert b["pos"] == pos and b["first"] == (pos == 0) and b["tag"] is rc.tag
            n = b["n"]
            assert n == min(g.vectors_per_beat(rc.tag, rc.nm), total - pos)
            assert b["w"][:n * g.lanes] == flat[pos * g.lanes:(pos + n) * g.lanes].tolist()
            assert b["idx"][:n * g.lanes] == fidx[pos * g.lanes:(pos + n) * g.lanes].tolist()
            assert not any(b["w"][n * g.lanes:]) and not any(b["idx"][n * g.lanes:])
            assert b["nm"] == rc.nm and b["mask"] == mask
            pos += n
            assert b["last"] == (pos == total)
            i += 1
    assert i == len(beats)
    assert set(GROUP_CODES) == {32, 64, 128}


# -- block skip --------------------------------------------------------------------------

def _drop_steps(q, lanes, keep):
    """``q`` (rows x k) with the k-steps of each group column not in ``keep`` zeroed."""
    q = q.copy()
    for s in range(q.shape[1] // lanes):
        if s not in keep:
            q[:, s * lanes:(s + 1) * lanes] = 0
    return q


@pytest.mark.parametrize("fmt", ["int2", "int3", "int4", "int8"])
def test_block_tensor_round_trip(fmt):
    """pack -> parse -> unpack_tensor: odd masks, an all-zero record (step 0 kept), a short
    last row batch, and fewer bits than dense."""
    g = GEOMS[0]                                    # 128-bit words, 8 lanes, 4 rows
    rng = np.random.default_rng(len(fmt) * 7 + TAG_BITS[record_tag(fmt)])
    R, K, group = 11, 384, 128                      # 3 row batches x 3 group columns
    q = random_weights(rng, record_tag(fmt), (R, K))
    for b in range(0, R, g.rows):
        for j in range(K // group):
            keep = set(np.flatnonzero(rng.random(group // g.lanes) < 0.4).tolist())
            cols = slice(j * group, (j + 1) * group)
            q[b:b + g.rows, cols] = _drop_steps(q[b:b + g.rows, cols], g.lanes, keep)
    q[4:8, 128:256] = 0                             # an all-zero record
    scales = torch.from_numpy(rng.uniform(1e-3, 3.0, (R, K // group))).to(torch.float16)
    image = pack_tensor(g, q, scales, group=group, tags=fmt, sparsity="block")
    q2, s2, _ = unpack_tensor(g, image, rows=R, k=K)
    assert torch.equal(q2, torch.from_numpy(q))
    assert torch.equal(s2.view(torch.int16), scales.view(torch.int16))
    recs = parse_stream(g, image)
    assert all(rc.nm == BLOCK_CODE for rc in recs)
    assert recs[4].mask == 1 and not recs[4].q.any()           # batch 1, column 1
    for rc in recs:
        nz = (rc.q.reshape(g.rows, -1, g.lanes) != 0).any(axis=(0, 2))
        assert rc.mask == (sum(1 << s for s in np.flatnonzero(nz).tolist()) or 1)
    dense = pack_tensor(g, q, scales, group=group, tags=fmt)
    assert len(image) < len(dense)


def test_block_explicit_mask_and_mask_straddling_a_word():
    """A given mask keeps its present all-zero steps; on 64-bit words with 2 lanes a group
    of 128 has a 64-bit mask, which crosses a word boundary."""
    g = GEOMS[3]                                    # 64-bit words, 2 lanes, 1 row
    rng = np.random.default_rng(11)
    mask = 0b1010_0000_1000_0000_0000_0000_0000_0000_0100_0000_0000_0000_0000_0001_0110_1001
    q = _drop_steps(random_weights(rng, RecordTag.INT4, (1, 128)), 2,
                    {s for s in range(64) if mask >> s & 1})
    q[0, 2:4] = 0                                   # step 1: present, yet zero
    a = Record.make("int4", q, np.array([0.5], np.float16), "block", mask=mask)
    b = Record(RecordTag.INT8, 128, np.zeros((1, 128), np.int64), np.array([0x3C00],
                                                                            np.uint16),
               BLOCK_CODE)
    raw = pack_records(g, [b, a, a])
    back = parse_stream(g, raw)
    assert [rc.mask for rc in back] == [1, mask, mask]
    assert all(_same(x, y) for x, y in zip([b, a, a], back))
    assert raw == _independent_pack(g, [b, a, a])
    starts, pos = [], 0
    for rc in back:
        pos += -pos % g.word_bits if pos % g.word_bits > g.word_bits - HEADER_FIXED_BITS \
            else 0
        starts.append(pos)
        pos += g.record_bits(rc.tag, rc.group, rc.nm, rc.mask)
    m0 = [p + g.header_bits for p in starts]
    assert any(p // 64 != (p + 63) // 64 for p in m0)          # a mask straddles words
    assert g.record_bits(RecordTag.INT4, 128, BLOCK_CODE, mask) == \
        12 + 16 + 64 + bin(mask).count("1") * 2 * 4
    beats = expected_beats(g, raw)
    assert {bt["mask"] for bt in beats} == {1, mask}


def test_block_bad_input_is_refused_with_one_line_messages():
    g = GEOMS[0]
    z = np.zeros(4, np.uint16)
    q = np.zeros((4, 32), np.int64)
    q[:, 8] = 1                                     # step 1 nonzero
    for mask, msg in ((0, "not a nonzero 4-bit mask"), (16, "not a nonzero 4-bit mask"),
                      (0b1101, "nonzero weights in a k-step its mask 0xd skips")):
        with pytest.raises(CompileError, match=msg) as e:
            pack_records(g, [Record(RecordTag.INT4, 32, q, z, BLOCK_CODE, mask)])
        assert "\n" not in str(e.value)
    with pytest.raises(CompileError, match="OVP4 records are dense"):
        pack_records(g, [Record(RecordTag.OVP4, 32, q, z, BLOCK_CODE)])
    with pytest.raises(CompileError, match="a step mask is for block records"):
        pack_records(g, [Record(RecordTag.INT4, 32, q, z, 0, 3)])
    header = RecordTag.INT4.value | BLOCK_CODE << 8          # group 32, scales 0, mask 0
    with pytest.raises(CompileError, match="empty step mask at stream bit 0"):
        parse_stream(g, header.to_bytes(16, "little"))
    with pytest.raises(CompileError, match="sparsity code 6 is not allowed for OVP4"):
        parse_stream(g, (RecordTag.OVP4.value | BLOCK_CODE << 8 | 1 << 76)
                     .to_bytes(16, "little") + bytes(16))
    from airfoil.packing import quantize_stream
    w = torch.randn(4, 64)
    with pytest.raises(CompileError, match="block sparsity needs the lanes"):
        quantize_stream(w, group=32, rows=4, formats="int4", sparsity="block")
    with pytest.raises(CompileError, match="block density 0 is not accepted"):
        quantize_stream(w, group=32, rows=4, formats="int4", sparsity="block", lanes=8,
                        block_density=0)
    with pytest.raises(CompileError, match="applies to sparsity 'block', not 'dense'"):
        quantize_stream(w, group=32, rows=4, formats="int4", block_density=0.5)
# -- BitMoD formats (INT6, FP4 and FP3 variants) ------------------------------------------

@pytest.mark.parametrize("tag", list(BITMOD_TAGS), ids=lambda t: t.name.lower())
@pytest.mark.parametrize("sparsity", ["dense", "2:4"])
def test_bitmod_records_round_trip_every_code(tag, sparsity):
    """Every code of the format (the extra value included) packs, parses and unpacks back;
    the stored codes decode to the values :func:`airfoil.bitmod.decode` gives."""
    g = GEOMS[0]
    fmt = BITMOD_TAGS[tag]
    b = bitmod.code_bits(fmt)
    assert TAG_BITS[tag] == b and record_tag(tag.name.lower()) is tag
    vals = [bitmod.decode(fmt, c) for c in range(1 << b)]
    assert bitmod_values(tag).tolist() == vals
    R, K, group = 7, 128, 64                                   # 2 row batches, one padded
    reps = -(-R * K // len(vals))
    rng = np.random.default_rng(tag.value)
    q = rng.permutation(np.tile(vals, reps))[:R * K].reshape(R, K)
    kept = np.arange(K)
    if sparsity == "2:4":                       # keep 2 of 4: positions 0 and 1 of a window
        q.reshape(R, K // 4, 4)[:, :, 2:] = 0
        kept = kept[kept % 4 < 2]
    q[0, kept[:len(vals)]] = vals                              # every value, once in order
    scales = torch.from_numpy(rng.uniform(1e-3, 3.0, (R, K // group))).to(torch.float16)
    image = pack_tensor(g, q, scales, group=group, tags=tag, sparsity=sparsity)
    q2, s2, t2 = unpack_tensor(g, image, rows=R, k=K)
    assert torch.equal(q2, torch.from_numpy(q))
    assert torch.equal(s2.view(torch.int16), scales.view(torch.int16))
    assert (t2 == tag.value).all()
    # The codes as stored decode through bitmod.decode (sign-agnostic) ...
    codes = encode_weights(tag, np.array(vals))
    assert [bitmod.decode(fmt, int(c) & ((1 << b) - 1)) for c in codes] == vals
    assert decode_weights(tag, codes).tolist() == vals
    # ... and a value outside the format is refused in one line.
    bad = {3: 8, 4: 5, 6: 40}[b]
    with pytest.raises(CompileError, match=f"weight {bad} is not a {tag.name} value"):
        encode_weights(tag, np.array([0, bad]))


def test_bitmod_beats_hold_the_decoded_values():
    """Expected unpacker beats of BitMoD records carry the decoded int8 values; INT6 and
    FP3 beats keep one to two words of stream bits."""
    g = GEOMS[0]
    rng = np.random.default_rng(3)
    recs = random_records(g, rng, 45, tags=list(BITMOD_TAGS), sparsity=(0, 2, 3))
    assert {rc.tag for rc in recs} == set(BITMOD_TAGS) and any(rc.nm for rc in recs)
    beats = expected_beats(g, pack_records(g, recs))
    i = 0
    for rc in recs:
        flat, _ = rc.lane_order(g.lanes)
        got = []
        while True:
            got += beats[i]["w"][:beats[i]["n"] * g.lanes]
            i += 1
            if beats[i - 1]["last"]:
                break
        assert got == flat.tolist()
    for t in BITMOD_TAGS:
        for nm in (0, 2, 3, 4):
            v = g.vectors_per_beat(t, nm)
            bits = v * g.lanes * (TAG_BITS[t] + nm_index_bits(nm))
            assert bits <= 2 * g.word_bits and (bits > g.word_bits or v == g.beat_vectors)


def _crafted(pattern, rows=4, reps=2):
    return torch.tensor([pattern * reps] * rows, dtype=torch.float64)


@pytest.mark.parametrize("pattern,want", [
    # exactly the FP4 grid plus +16: only fp4_ea_p is exact (scale 1/8, no error)
    ([16, 12, 8, 6, 4, 3, 2, 1, 0, -1, -2, -3, -4, -6, -8, -12], RecordTag.FP4_EA_P),
    ([-16, 12, 8, 6, 4, 3, 2, 1, 0, -1, -2, -3, -4, -6, -8, -12], RecordTag.FP4_EA_N),
    ([10, 12, 8, 6, 4, 3, 2, 1, 0, -1, -2, -3, -4, -6, -8, -12], RecordTag.FP4_ER_P),
    ([-10, 12, 8, 6, 4, 3, 2, 1, 0, -1, -2, -3, -4, -6, -8, -12], RecordTag.FP4_ER_N),
])
def test_quantize_stream_picks_the_least_error_bitmod_variant(pattern, want):
    w = _crafted(pattern) / 8
    q, s, tags = quantize_stream(w, group=32, rows=4, formats="bitmod4")
    assert (tags == want.value).all()
    assert torch.equal(q.double() * s.double().repeat_interleave(32, dim=1), w)
    # The choice is the least squared error among the candidates, each quantized alone.
    errs = {}
    for f in ("fp4_er_p", "fp4_er_n", "fp4_ea_p", "fp4_ea_n"):
        qf, sf, tf = quantize_stream(w, group=32, rows=4, formats=[f])
        assert (tf == record_tag(f).value).all()
        errs[f] = float(((qf.double() * sf.double().repeat_interleave(32, dim=1) - w) ** 2)
                        .sum())
    assert min(errs, key=errs.get) == want.name.lower() and errs[want.name.lower()] == 0


def test_quantize_stream_fp3_and_int6():
    # FP3: a group whose largest magnitude is a lone +6 picks fp3_ea_p, -3 picks fp3_er_n
    w = torch.cat([_crafted([6, 4, 2, 1, 0, -1, -2, -4], reps=4),
                   _crafted([-3, 4, 2, 1, 0, -1, -2, -4], reps=4)], dim=1) / 4
    q, s, tags = quantize_stream(w, group=32, rows=4, formats="bitmod3")
    assert tags.tolist() == [[RecordTag.FP3_EA_P.value, RecordTag.FP3_ER_N.value]]
    assert torch.equal(q.double() * s.double().repeat_interleave(32, dim=1), w)
    # The FP scale is bitmod.quantize_group's (extremes onto the format's, FP16).
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 64, generator=g, dtype=torch.float64)
    for f in ("fp4_ea_n", "fp3_er_p"):
        q, s, _ = quantize_stream(w, group=32, rows=4, formats=f)
        bq, bs = bitmod.quantize_group(w.reshape(10, 32), f)
        assert torch.equal(q, bq.reshape(5, 64)) and torch.equal(s, bs.reshape(5, 2))
    # INT6 sits between INT4 and INT8 in error; FP records may be N:M sparse.
    errs = {}
    for f in ("int4", "int6", "int8"):
        q, s, _ = quantize_stream(w, group=32, rows=4, formats=f)
        errs[f] = float(((q.double() * s.double().repeat_interleave(32, dim=1) - w) ** 2)
                        .sum())
        assert int(q.abs().max()) <= (1 << (int(f[3:]) - 1)) - 1
    assert errs["int8"] < errs["int6"] < errs["int4"]
    q, _, tags = quantize_stream(w, group=32, rows=4, formats="bitmod4", sparsity="2:4")
    assert set(tags.reshape(-1).tolist()) <= {t.value for t in BITMOD_TAGS}
    assert ((q.reshape(5, 16, 4) != 0).sum(dim=-1) <= 2).all()
    with pytest.raises(CompileError, match="OVP4 records are dense"):
        quantize_stream(w, group=32, rows=4, formats=["fp4_er_p", "ovp"], sparsity="2:4")


def test_mixed_widths_take_the_narrowest_within_the_error_bound():
    """Across widths a record takes the narrowest format whose squared error is within
    MIXED_MAX_REL_ERROR of its squared weights: a smooth record (evenly spread values)
    INT4, a record with an outlier INT8, a record exactly on INT2's grid INT2; among
    formats of one width the least error still wins (the list's order does not matter)."""
    from airfoil.packing import MIXED_MAX_REL_ERROR, mixed_choice
    g = torch.Generator().manual_seed(5)
    smooth = torch.linspace(-1, 1, 4 * 32, dtype=torch.float64)[torch.randperm(128,
                                                                             generator=g)]
    spiky = smooth * 0.2
    spiky[7] = 1.0
    grid2 = torch.tensor([-1.0, 0.0, 1.0, 0.0] * 32, dtype=torch.float64)
    w = torch.cat([x.reshape(4, 32) for x in (smooth, spiky, grid2)], dim=1)
    want = [RecordTag.INT4, RecordTag.INT8, RecordTag.INT2]
    for cands in (["int2", "int4", "int8"], ["int8", "int4", "int2"]):
        q, s, tags = quantize_stream(w, group=32, rows=4, formats=cands)
        assert tags.tolist() == [[t.value for t in want]], cands
    for (k, t) in enumerate(want):          # the rule, from each format alone
        rec = w[:, 32 * k:32 * (k + 1)]
        rel = {}
        for f in ("int2", "int4", "int8"):
            qf, sf, _ = quantize_stream(rec, group=32, rows=4, formats=[f])
            rel[f] = float(((qf.double() * sf.double() - rec) ** 2).sum() / (rec ** 2).sum())
        fits = [f for f in ("int2", "int4", "int8") if rel[f] <= MIXED_MAX_REL_ERROR]
        assert (fits[0] if fits else "int8") == t.name.lower(), rel
        # the bound is the caller's: just above a format's error the record takes it
        for f in ("int2", "int4"):
            bound = rel[f] * 1.001
            _, _, tags = quantize_stream(rec, group=32, rows=4, formats=["int2", "int4", "int8"],
                                         mixed_max_error=bound)
            narrowest = next(g for g in ("int2", "int4") if rel[g] <= bound)
            assert RecordTag(int(tags[0, 0])).name.lower() == narrowest, (f, rel)
    # one width: the least error; ties the earlier candidate
    errs = [torch.tensor([3.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 5.0])]
    assert mixed_choice(errs, [4, 4], torch.zeros(3)).tolist() == [1, 0, 0]
    # across widths: within max_error of the energy the narrower, else the least error
    errs = [torch.tensor([1.0, 3.0]), torch.tensor([0.5, 0.5])]
    assert mixed_choice(errs, [2, 4], torch.tensor([100.0, 100.0]), 0.02).tolist() == [0, 1]
    assert mixed_choice(errs, [2, 4], torch.tensor([100.0, 100.0]), 0.03).tolist() == [0, 0]
