"""ISA simulator against the golden model, its error paths and its cycle model."""

import dataclasses
import random

import pytest
import torch

from airfoil.config import load_config
from airfoil.errors import ProgramError
from airfoil.folder import Folder, load_folder
from airfoil import fixedpoint as fx
from airfoil.isa import (ATT_PV_MAX_HEAD_DIM, TOKEN_DEPTH, Buffer, ErrorCode, Opcode, SfuFunc,
                         SysOp, Unit, WeightFormat, decode, encode)
from airfoil.program import Program
from compiler.linear import compile_linear
from sim.cycle_model import DISPATCH_CYCLES, CycleModel
from sim.golden import run_golden
from sim.isa_sim import IsaSim, run_isa

CFG = load_config("test")


def _layer(seed, n, k, bias=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * (0.5 + torch.rand(n, 1, generator=g))
    b = torch.randn(n, generator=g) if bias else None
    return w, b


def _compile(tmp_path, seed, n, k, name="f", **kw):
    w, b = _layer(seed, n, k, kw.pop("bias", True))
    compile_linear(w, b, CFG, tmp_path / name, seed=seed, **kw)
    return load_folder(tmp_path / name, CFG)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("wformat", ["int4", "int8"])
def test_isa_matches_golden(tmp_path, wformat, group, seed):
    rng = random.Random(seed * 7 + group)
    n = rng.choice([1, 3, 5, 7]) + 8 * rng.randrange(0, 12)      # odd, never a power of 2
    k = group * rng.choice([1, 3, 5, 7])
    if k == 128:
        k = 384                                                    # 128 is a power of two
    folder = _compile(tmp_path, seed, n, k, wformat=wformat, group=group,
                      bias=bool(seed % 2))
    gold = run_golden(folder)
    out, stats = run_isa(folder, CFG)
    assert out.shape == (n,)
    assert torch.equal(out, gold), f"n={n} k={k}"
    assert stats["macs"] == n * k
    # a second, random input exercising the full INT8 range
    x = torch.randint(-128, 128, (k,), generator=torch.Generator().manual_seed(seed))
    out2, _ = run_isa(folder, CFG, x)
    assert torch.equal(out2, run_golden(folder, x))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("out_format", ["int8", "int16", "int32"])
def test_k_split_with_bias(tmp_path, out_format, seed):
    folder = _compile(tmp_path, seed, 29, 480, group=32, out_format=out_format,
                      max_tile_bytes=512)
    tiles = folder.manifest["model"]["linears"]["linear"]["tiles"]
    assert len({t["col0"] for t in tiles}) > 1, "the layer must be split along K"
    words = [decode(w) for w in folder.program.words]
    mvs = [i for i in words if i.opcode == Opcode.MV]
    assert any(not i.acc_init for i in mvs) and any(not i.final for i in mvs)
    out, _ = run_isa(folder, CFG)
    assert torch.equal(out, run_golden(folder))


def test_out_halves_rotate_and_many_stores(tmp_path):
    # 700 outputs of 16 bits need several OUT halves (512 bytes each): exercises the
    # STORE -> MATRIX tokens and the word alignment of every ST.
    folder = _compile(tmp_path, 3, 700, 96, group=32, out_format="int16")
    out, stats = run_isa(folder, CFG)
    assert stats["count_store"] >= 3
    assert torch.equal(out, run_golden(folder))


@pytest.mark.parametrize("wformat", ["int4", "int8"])
def test_u280_slices_and_slots(tmp_path, wformat):
    """On U280 a tile's LDs go one per WGT bank over the 32 channels and the tiles rotate
    through the planner's WGT slots (INT8: 3, its 5 tiles estimated and simulated 38 cycles
    faster than in 4; INT4: 4); the banks take their words in the same cycle (a word a
    cycle each), where the same config with one WGT write port takes them one after the
    other, as on the RTL core."""
    u280 = load_config("u280")
    one_port = dataclasses.replace(u280, buffers=dataclasses.replace(u280.buffers,
                                                                     wgt_banks=1))
    w, b = _layer(5, 1100, 768)
    cycles = {}
    for cfg in (u280, one_port):
        out_dir = tmp_path / str(cfg.buffers.wgt_banks)
        compile_linear(w, b, cfg, out_dir, wformat=wformat, group=64)
        folder = load_folder(out_dir, cfg)
        ins = [decode(x) for x in folder.program.words]
        assert len({i.channel for i in ins if i.opcode == Opcode.LD}) == u280.memory.channels
        assert len({i.wbuf_addr for i in ins if i.opcode == Opcode.MV}) == \
            (3 if wformat == "int8" and cfg is u280 else 4)
        out, stats = run_isa(folder, cfg)
        assert torch.equal(out, run_golden(folder))
        wgt_words = sum(i.count * i.nbytes for i in ins if i.opcode == Opcode.LD
                        and i.buf == Buffer.WGT) // u280.word_bytes
        cycles[cfg.buffers.wgt_banks] = stats["cycles"]
    assert cycles[1] >= wgt_words > u280.memory.channels
    assert cycles[32] < cycles[1] // 2


# -- helpers to mutate programs -------------------------------------------------------------

def _small(tmp_path):
    return _compile(tmp_path, 1, 13, 64, group=32, wformat="int8")


def _with_words(folder, words):
    return Folder(folder.manifest, folder.image, Program(words, CFG.config_hash_bytes),
                  config=CFG)


def _patch(folder, pred, **changes):
    """Return a folder whose first instruction matching ``pred`` has fields changed."""
    words = list(folder.program.words)
    for i, w in enumerate(words):
        ins = decode(w)
        if pred(ins):
            fields = dict(ins.fields)
            wait = changes.pop("wait", ins.wait)
            release = changes.pop("release", ins.release)
            fields.update(changes)
            words[i] = encode(ins.opcode, wait=wait, release=release, **fields)
            return _with_words(folder, words), i
    raise AssertionError("no instruction matched")


def _expect(folder, code, index=None, match=None):
    with pytest.raises(ProgramError, match=match) as ei:
        run_isa(folder, CFG)
    assert ei.value.code == code, str(ei.value)
    assert code.name in str(ei.value)
    if index is not None:
        assert ei.value.index == index
        assert f"instruction {index} " in str(ei.value)
    return ei.value


def is_mv(i):
    return i.opcode == Opcode.MV


def is_ld_wgt(i):
    return i.opcode == Opcode.LD and i.buf == Buffer.WGT


def _as_k_split_mm(folder, m, rows):
    """The folder with its first MV turned into an MM of ``m`` vectors (overlapping, one
    word apart) over ``rows`` rows that leaves its accumulators for a next K-chunk
    (``final = 0``)."""
    words = list(folder.program.words)
    i = next(j for j, w in enumerate(words) if is_mv(decode(w)))
    ins = decode(words[i])
    words[i] = encode(Opcode.MM, ins.wait, ins.release,
                      **dict(ins.fields, m=m, rows=rows, astride=1, final=0))
    return _with_words(folder, words), i


def test_k_split_beyond_the_accumulators_is_unsupported(tmp_path):
    """m vectors x ceil(rows / chains) batches over config.k_split_batches: UNSUPPORTED, as
    the MATRIX unit refuses it (its accumulator memory is that deep); at the limit it runs."""
    f = _small(tmp_path)
    rows = 2 * CFG.chains
    most = CFG.k_split_batches // 2
    # At the limit the check passes: the next one fails on the tile's 8 rows, of which the
    # program loaded 4 (the other 4 read as scales outside the rescaler window).
    _expect(_as_k_split_mm(f, most, rows)[0], ErrorCode.SCALE_RANGE)
    bad, i = _as_k_split_mm(f, most + 1, rows)
    _expect(bad, ErrorCode.UNSUPPORTED, index=i, match="k_split_batches")


def test_unpatched_small_program_runs(tmp_path):
    f = _small(tmp_path)
    out, _ = run_isa(_with_words(f, f.program.words), CFG)
    assert torch.equal(out, run_golden(f))


def test_deadlock_detected(tmp_path):
    f = _small(tmp_path)
    bad, i = _patch(f, is_ld_wgt, release=0)
    e = _expect(bad, ErrorCode.DEADLOCK, match="waits for a token from LOAD")
    assert e.index > i


def test_token_fifo_overflow(tmp_path):
    f = _small(tmp_path)
    ld = dict(buf=Buffer.ACT, channel=0, buf_addr=0, dram_addr=0, nbytes=16, count=1,
              dram_stride=16)
    words = [encode(Opcode.LD, release=[Unit.STORE], **ld) for _ in range(TOKEN_DEPTH + 1)]
    words.append(encode(Opcode.SYS, op=SysOp.HALT))
    _expect(_with_words(f, words), ErrorCode.MALFORMED, index=TOKEN_DEPTH, match="token FIFO")
    # exactly TOKEN_DEPTH outstanding tokens are legal
    _, stats = run_isa(_with_words(f, words[1:]), CFG)
    assert stats["count_load"] == TOKEN_DEPTH


def test_illegal_opcode(tmp_path):
    f = _small(tmp_path)
    words = list(f.program.words)
    words[2] = (words[2] & ~0xF) | 0xF
    _expect(_with_words(f, words), ErrorCode.ILLEGAL_OPCODE, index=2, match="unknown opcode 15")


def test_malformed_enum_field(tmp_path):
    f = _small(tmp_path)
    words = list(f.program.words)
    i = next(j for j, w in enumerate(words) if decode(w).opcode == Opcode.MV)
    words[i] |= 15 << 16                          # wfmt code 15 does not exist
    _expect(_with_words(f, words), ErrorCode.MALFORMED, index=i)


def test_mv_needs_one_vector(tmp_path):
    bad, i = _patch(_small(tmp_path), is_mv, m=2)
    _expect(bad, ErrorCode.MALFORMED, index=i, match="m=1")


@pytest.mark.parametrize("field, value", [("buf_addr", 8), ("dram_addr", 4), ("nbytes", 20),
                                          ("count", 0)])
def test_misaligned_or_empty_transfer(tmp_path, field, value):
    bad, i = _patch(_small(tmp_path), is_ld_wgt, **{field: value})
    _expect(bad, ErrorCode.MALFORMED, index=i, match=field)


def test_buffer_range(tmp_path):
    bad, i = _patch(_small(tmp_path), is_ld_wgt, buf_addr=CFG.buffers.weight_bytes - 16)
    _expect(bad, ErrorCode.BUFFER_RANGE, index=i, match="WGT")
    bad, i = _patch(_small(tmp_path), is_mv, abuf_addr=CFG.buffers.act_bytes - 8)
    _expect(bad, ErrorCode.BUFFER_RANGE, index=i, match="ACT")


def test_memory_range(tmp_path):
    f = _small(tmp_path)
    bad, i = _patch(f, is_ld_wgt, dram_addr=len(f.image))
    _expect(bad, ErrorCode.AXI_ERROR, index=i)


def test_scale_shift_outside_window(tmp_path):
    f = _small(tmp_path)
    k0 = f.manifest["model"]["linears"]["linear"]["k0"]
    bad, i = _patch(f, is_mv, k0=10)             # above every FP16 exponent
    _expect(bad, ErrorCode.SCALE_RANGE, index=i, match="k0")
    bad, i = _patch(f, is_mv, k0=k0 - 16)
    _expect(bad, ErrorCode.SCALE_RANGE, index=i)


def test_unsupported_group_and_format(tmp_path):
    f = _small(tmp_path)
    bad, i = _patch(f, is_mv, group=64, k=64)
    cfg = dataclasses.replace(CFG, group_sizes=(32, 128))
    ff = Folder(dict(bad.manifest, config_hash=cfg.config_hash), bad.image,
                Program(bad.program.words, cfg.config_hash_bytes), config=cfg)
    with pytest.raises(ProgramError, match="UNSUPPORTED") as ei:
        run_isa(ff, cfg)
    assert ei.value.code == ErrorCode.UNSUPPORTED and ei.value.index == i
    bad, i = _patch(f, is_mv, wfmt=WeightFormat.INT2)
    _expect(bad, ErrorCode.UNSUPPORTED, index=i, match="int2")


def test_program_end_without_halt(tmp_path):
    f = _small(tmp_path)
    words = list(f.program.words)
    assert decode(words[-1]).op == SysOp.HALT
    _expect(_with_words(f, words[:-1]), ErrorCode.PROGRAM_END, index=len(words) - 1)


def test_sys_takes_no_tokens(tmp_path):
    f = _small(tmp_path)
    words = list(f.program.words)
    words[-1] = encode(Opcode.SYS, wait=[Unit.LOAD], op=SysOp.HALT)
    _expect(_with_words(f, words), ErrorCode.MALFORMED, index=len(words) - 1)


def test_sfu_copy(tmp_path):
    f = _small(tmp_path)
    wb = CFG.word_bytes
    words = [
        encode(Opcode.LD, release=[Unit.SFU], buf=Buffer.ACT, channel=0, buf_addr=0,
               dram_addr=0, nbytes=64, count=1, dram_stride=64),
        encode(Opcode.SFU, wait=[Unit.LOAD], release=[Unit.STORE], src=Buffer.ACT,
               dst=Buffer.OUT, src_addr=3, dst_addr=wb, n=40),
        encode(Opcode.ST, wait=[Unit.SFU], buf=Buffer.OUT, channel=0, buf_addr=wb,
               dram_addr=f.manifest["output"]["addr"], nbytes=48, count=1, dram_stride=48),
        encode(Opcode.SYS, op=SysOp.HALT),
    ]
    image = bytearray(f.image)
    stats = IsaSim(CFG, image).run(words)
    a = f.manifest["output"]["addr"]
    assert image[a:a + 40] == f.image[3:43]
    assert image[a + 40:a + 48] == bytes(8)
    assert stats["count_sfu"] == 1


# -- cycle model -----------------------------------------------------------------------------

def test_serial_chain_costs_add_up(tmp_path):
    """A program whose every step waits for the previous one costs the sum of its parts."""
    f = _small(tmp_path)
    ins = [decode(w) for w in f.program.words]
    lds = [i for i in ins if i.opcode == Opcode.LD]
    mv = next(i for i in ins if i.opcode == Opcode.MV)
    st = next(i for i in ins if i.opcode == Opcode.ST)
    L, M, S = Unit.LOAD, Unit.MATRIX, Unit.STORE

    def re(i, wait, release):
        return encode(i.opcode, wait=wait, release=release, **i.fields)
    words = [re(lds[0], [], []), re(lds[1], [], [M]), re(mv, [L], [S]), re(st, [M], []),
             encode(Opcode.SYS, op=SysOp.HALT)]
    _, stats = run_isa(_with_words(f, words), CFG)
    cm = CycleModel(CFG)
    a, b = cm.load(lds[0].nbytes), cm.load(lds[1].nbytes)
    # dispatch: instruction i enters its queue at cycle i and may start one cycle later
    ld_done = max(1 + a.latency, 1 + a.busy + b.latency)
    mvc = cm.matrix(mv.rows, mv.k, 1, wfmt=mv.wfmt, final=bool(mv.final), group=mv.group,
                    use_init=bool(mv.bias and mv.acc_init or not mv.acc_init))
    mv_done = ld_done + mvc.latency
    st_done = mv_done + cm.store(st.nbytes).latency
    assert stats["cycles"] == st_done + cm.program_overhead()
    assert stats["busy_matrix"] == mvc.busy


def test_double_buffering_overlaps_load_and_matrix(tmp_path):
    folder = _compile(tmp_path, 0, 200, 1536, group=128)
    _, stats = run_isa(folder, CFG)
    assert stats["cycles"] < stats["busy_load"] + stats["busy_matrix"]
    assert stats["cycles"] >= max(stats["busy_load"], stats["busy_matrix"])


def test_cycle_model_rates():
    cm = CycleModel(CFG)
    mem = CFG.memory
    assert cm.words_per_cycle(mem.read_latency) == 1.0
    slow = CycleModel(dataclasses.replace(CFG, memory=dataclasses.replace(
        mem, outstanding=1, read_latency=48)))
    assert slow.words_per_cycle(48) == pytest.approx(16 / 64)
    c = slow.load(64 * CFG.word_bytes)
    from sim.cycle_model import LD_ISSUE_CYCLES, LD_RECORD_GAP, RELEASE_CYCLES, TOKEN_HANDOFF
    assert (c.busy, c.latency) == (256 + LD_RECORD_GAP, LD_ISSUE_CYCLES + 48 + 256 +
                                   RELEASE_CYCLES + TOKEN_HANDOFF)
    # 9 rows are 3 batches of ceil(100 / 8) = 13 steps; a batch of fewer steps than
    # chains waits for the serializer's chains cycles.
    m = cm.matrix(rows=9, k=100)
    assert m.busy == 2 * 13 + cm.matrix(rows=1, k=100).busy
    assert cm.matrix(rows=1, k=1).busy == cm.matrix(rows=1, k=CFG.chains * CFG.lanes).busy


# -- SFU arguments at the edges of their fields ------------------------------------------------

def _sfu_fault(words):
    """Run ``words`` on a zeroed image; the fault's code (None when the program halts)."""
    try:
        IsaSim(CFG, bytearray(1 << 16)).run(words)
    except ProgramError as e:
        return e.code
    return None


def _sfu(**kw):
    return [encode(Opcode.SFU, **kw), encode(Opcode.SYS, op=SysOp.HALT)]


def test_sfu_rope_odd_head_dimension_is_malformed():
    words = _sfu(func=SfuFunc.ROPE, src=Buffer.ACT, dst=Buffer.ACT, aux=Buffer.AUX, n=3,
                 rows=1, heads=1)
    assert _sfu_fault(words) == ErrorCode.MALFORMED


def test_sfu_rmsnorm_takes_the_largest_epsilon_constant():
    words = _sfu(func=SfuFunc.RMSNORM, src=Buffer.ACT, dst=Buffer.ACT, aux=Buffer.AUX, n=8,
                 rows=2, imm0=0xFFFFFFFF, imm1=0xFFFFFFFF)
    assert _sfu_fault(words) is None


@pytest.mark.parametrize("func", [SfuFunc.ATT_QK, SfuFunc.ATT_PV])
def test_sfu_attention_keys_beyond_the_buffers_stop_before_reading(func):
    """2**32 - 1 keys: BUFFER_RANGE from the span of the scores, nothing allocated."""
    words = [encode(Opcode.SYS, op=SysOp.SETREG, reg=2, value=2 ** 32 - 1),
             *_sfu(func=func, src=Buffer.ACT, dst=Buffer.ACT, aux=Buffer.KV, n=64, rows=1,
                   heads=1, kv_heads=1, len_reg=2, imm0=72, imm1=0)]
    assert _sfu_fault(words) == ErrorCode.BUFFER_RANGE


@pytest.mark.parametrize("limit", [ATT_PV_MAX_HEAD_DIM, 16])
def test_sfu_att_pv_head_dimension_over_the_accumulator_is_unsupported(limit):
    """The config's limits.att_pv_max_head_dim (default ATT_PV_MAX_HEAD_DIM) bounds n."""
    cfg = dataclasses.replace(CFG, limits=dataclasses.replace(CFG.limits,
                                                              att_pv_max_head_dim=limit))

    def fault_of(n):
        words = [encode(Opcode.SYS, op=SysOp.SETREG, reg=2, value=1),
                 *_sfu(func=SfuFunc.ATT_PV, src=Buffer.ACT, dst=Buffer.ACT, aux=Buffer.KV,
                       n=n, rows=1, heads=1, kv_heads=1, len_reg=2)]
        try:
            IsaSim(cfg, bytearray(1 << 16)).run(words)
        except ProgramError as e:
            return e
        return None

    assert fault_of(limit) is None
    e = fault_of(limit + 4)
    assert e.code == ErrorCode.UNSUPPORTED and "att_pv_max_head_dim" in str(e)


def test_sfu_attention_long_keys_in_chunks_match_one_pass():
    """Enough keys at stride 0 to take several chunks: the same scores as the function."""
    L, hd = 300, 2 ** 14           # chunks of 256 keys; the u280 KV buffer holds a record
    image = bytearray(1 << 16)
    words = [encode(Opcode.SYS, op=SysOp.SETREG, reg=2, value=L),
             *_sfu(func=SfuFunc.ATT_QK, src=Buffer.KV, dst=Buffer.ACT, aux=Buffer.KV, n=hd,
                   rows=1, heads=1, kv_heads=1, len_reg=2, imm0=0, imm1=0)]
    sim = IsaSim(load_config("u280"), image)
    rng = random.Random(5)
    rec = bytes(rng.randrange(256) for _ in range(hd)) + (3000).to_bytes(4, "little") + \
        (20).to_bytes(4, "little")
    sim.buffers[Buffer.KV][:len(rec)] = rec
    sim.run(words)
    q = torch.tensor(list(rec[:hd]), dtype=torch.uint8).view(torch.int8).to(torch.int64)
    one = fx.attention_scores(q.reshape(1, hd), torch.tensor([3000]), torch.tensor([20]),
                              q.reshape(1, hd), torch.tensor([3000]), torch.tensor([20]))
    got = [int.from_bytes(sim.buffers[Buffer.ACT][4 * j:4 * j + 4], "little", signed=True)
           for j in range(L)]
    assert one[0, 0] != 0 and got == [int(one[0, 0])] * L


def _two_channel_loads(bufs, words: int):
    """Two LDs of ``words`` memory words on channels 0 and 1 (issued a cycle apart) into
    ``bufs``, the first one's token to a STORE that waits for it: the traced run on the
    ISA simulator, and the cycles by which the second one's words reach the port after
    the first one's."""
    from sim.random_regression import channel_variant
    cfg = channel_variant("test", 2)
    wb = cfg.word_bytes
    prog = [encode(Opcode.LD, release=[Unit.STORE] if c == 0 else [], buf=b, channel=c,
                   buf_addr=0, dram_addr=c * words * wb, nbytes=words * wb, count=1,
                   dram_stride=words * wb) for c, b in enumerate(bufs)]
    prog += [encode(Opcode.ST, wait=[Unit.LOAD], buf=Buffer.OUT, channel=0, buf_addr=0,
                    dram_addr=4 * words * wb, nbytes=wb, count=1, dram_stride=wb),
             encode(Opcode.SYS, op=SysOp.HALT)]
    sim = IsaSim(cfg, bytearray(8 * words * wb))
    sim.trace = []
    sim.run(prog)
    lag = 1 + cfg.memory.latency_of(1) - cfg.memory.latency_of(0)
    return {ev.index: ev for ev in sim.trace}, lag


def test_loads_into_one_buffer_share_its_port_round_robin():
    """Two LDs on two channels into one buffer write it round robin: once the second
    one's words arrive, each takes every other cycle of the port, so the first one ends
    as many cycles later as it had words left, and its token (and the STORE waiting for
    it) with it; into two buffers neither holds the other back."""
    words = 256
    apart, lag = _two_channel_loads([Buffer.ACT, Buffer.AUX], words)
    shared, _ = _two_channel_loads([Buffer.ACT, Buffer.ACT], words)
    assert 0 < lag < words
    for ev in (apart, shared):
        assert ev[2].start == ev[0].finish              # the STORE waits for the token
    assert shared[0].finish - apart[0].finish == words - lag
    assert shared[1].finish - apart[1].finish == words - lag


def test_ldreg_waits_for_the_units_and_the_read():
    """SYS LDREG waits until every unit is idle, then reads its word: the next
    instruction is dispatched CycleModel.ldreg's cycles after the load before it
    completes."""
    wb = CFG.word_bytes
    words = 64
    prog = [encode(Opcode.LD, buf=Buffer.ACT, channel=0, buf_addr=0, dram_addr=0,
                   nbytes=words * wb, count=1, dram_stride=words * wb),
            encode(Opcode.SYS, op=SysOp.LDREG, reg=3, value=0),
            encode(Opcode.LD, buf=Buffer.AUX, channel=0, buf_addr=0, dram_addr=0,
                   nbytes=wb, count=1, dram_stride=wb),
            encode(Opcode.SYS, op=SysOp.HALT)]
    sim = IsaSim(CFG, bytearray(2 * words * wb))
    sim.trace = []
    sim.run(prog)
    first, second = sim.trace
    assert second.start == first.finish + CycleModel(CFG).ldreg(0).busy + DISPATCH_CYCLES
