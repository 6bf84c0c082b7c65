"""The RTL core runs what the LLM programs need, equal to the ISA simulator byte for byte.

Hand-built programs (:func:`airfoil.isa.encode`) over a random data image: LD/ST on every
buffer, run-time registers (SETREG, LDREG, ``count_reg``, ``row_reg``), gathers by index,
token waits between the units, the concurrency counters, and faults. Every case runs in
one Verilator process on the core of the ``test`` config (the build the other core tests
share) under random AXI stalls drawn from the case's seed; each case's final data image
must equal the ISA simulator's on the same image, and a faulting case must stop with the
simulator's error code. The weight stream of the LOAD unit (LD WSTREAM) is checked in
amaranth.sim on the unit alone, since no MATRIX unit consumes it yet.
"""

import numpy as np
import pytest

from airfoil import isa
from airfoil.config import load_config
from airfoil.isa import Buffer, ErrorCode, Opcode, SysOp, Unit
from airfoil.program import Program

#: The Verilator cases share one build with tests/test_rtl_core.py.
rtl = pytest.mark.rtl(group="rtl_core")


IMAGE_BYTES = 1 << 15
#: Data-relative regions of the image: a source area the loads read, a destination
#: area the stores write, the parameter block LDREG reads and an index table.
SRC, DST, PARAMS, IDX = 0x0000, 0x4000, 0x7F00, 0x7E00


def _ld(buf, buf_addr, dram_addr, nbytes, count=1, stride=0, wait=(), release=(), **kw):
    return isa.encode(Opcode.LD, wait, release, buf=buf, buf_addr=buf_addr,
                      dram_addr=dram_addr, nbytes=nbytes, count=count,
                      dram_stride=stride or nbytes, **kw)


def _st(buf, buf_addr, dram_addr, nbytes, count=1, stride=0, wait=(), release=(), **kw):
    return isa.encode(Opcode.ST, wait, release, buf=buf, buf_addr=buf_addr,
                      dram_addr=dram_addr, nbytes=nbytes, count=count,
                      dram_stride=stride or nbytes, **kw)


def _sys(op, **kw):
    return isa.encode(Opcode.SYS, op=op, **kw)


HALT = _sys(SysOp.HALT)


def _image(seed: int) -> bytearray:
    rng = np.random.default_rng(seed)
    img = bytearray(rng.integers(0, 256, IMAGE_BYTES, dtype=np.uint8).tobytes())
    img[DST:DST + 0x3000] = bytes(0x3000)
    # Parameter block: small run-time values (counts, row offsets) as little-endian int32.
    img[PARAMS:PARAMS + 32] = np.array([3, 2, 5, 1, 4, 0, 7, 6], dtype="<i4").tobytes()
    img[PARAMS + 14:PARAMS + 18] = (6).to_bytes(4, "little")    # across a word boundary
    # Index table of a gather (int32 row numbers, with a repeat).
    img[IDX:IDX + 24] = np.array([5, 0, 7, 2, 2, 9], dtype="<i4").tobytes()
    return img


def _prog_every_buffer(config):
    """LD into and ST out of each buffer, with LOAD->STORE tokens."""
    words = []
    for i, b in enumerate((Buffer.ACT, Buffer.WGT, Buffer.OUT, Buffer.KV, Buffer.AUX)):
        size = {Buffer.ACT: config.buffers.act_bytes, Buffer.WGT: config.buffers.weight_bytes,
                Buffer.OUT: config.buffers.out_bytes, Buffer.KV: config.buffers.kv_bytes,
                Buffer.AUX: config.buffers.aux_bytes}[b]
        top = size - 3 * 48                            # the last rows of the buffer
        words.append(_ld(b, top, SRC + 0x400 * i, 48, count=3, stride=80,
                         release=[Unit.STORE]))
        words.append(_st(b, top + 16, DST + 0x200 * i, 32, count=4, stride=64,
                         wait=[Unit.LOAD]))
    # WGT rows are wider than a memory word: words at every offset within a row.
    words.append(_ld(Buffer.WGT, 0x40, SRC + 0x1000, 16, count=5, stride=48,
                     release=[Unit.STORE]))
    words.append(_st(Buffer.WGT, 0x50, DST + 0xC00, 64, wait=[Unit.LOAD]))
    return words + [HALT]


def _prog_registers():
    """SETREG/LDREG feed count_reg and row_reg of loads and stores."""
    return [
        _sys(SysOp.SETREG, reg=3, value=2),
        _sys(SysOp.LDREG, reg=5, value=PARAMS + 8),          # 5
        _sys(SysOp.LDREG, reg=7, value=PARAMS + 14),         # 6, across two memory words
        _sys(SysOp.LDREG, reg=0, value=PARAMS),              # register 0 stays 0
        _ld(Buffer.KV, 0x100, SRC + 0x800, 32, count=1, stride=96, count_reg=5, row_reg=3,
            release=[Unit.STORE]),
        _st(Buffer.KV, 0x100, DST, 32, count=9, stride=32, count_reg=5, row_reg=3,
            wait=[Unit.LOAD]),
        # row_reg = 0 (register 0): no offset, count from the field.
        _ld(Buffer.ACT, 0, SRC + 0x100, 16, count=2, row_reg=0, release=[Unit.STORE]),
        _st(Buffer.ACT, 0, DST + 0x800, 16, count=2, count_reg=0, wait=[Unit.LOAD]),
        # A register rewritten once the instructions that name it have run.
        _sys(SysOp.BARRIER),
        _sys(SysOp.SETREG, reg=3, value=4),
        _ld(Buffer.AUX, 0x40, SRC + 0xA00, 16, count=1, stride=16, count_reg=3,
            release=[Unit.STORE]),
        _st(Buffer.AUX, 0x40, DST + 0x1000, 16, count=1, count_reg=3, row_reg=3,
            stride=16, wait=[Unit.LOAD]),
        # The two-word LDREG's value, as a store offset (row_reg=7).
        _ld(Buffer.OUT, 0, SRC + 0x40, 16, count=1, release=[Unit.STORE]),
        _st(Buffer.OUT, 0, DST + 0x1800, 16, row_reg=7, stride=16, wait=[Unit.LOAD]),
        HALT,
    ]


def _prog_gather():
    """An embedding lookup: indices loaded into AUX, then rows gathered by them."""
    return [
        _ld(Buffer.AUX, 0x80, IDX, 32),
        # No token: a gather starts after the unit's earlier transfers completed.
        _ld(Buffer.KV, 0x200, SRC + 0x2000, 32, count=6, stride=48, gather=1, idx_addr=0x80,
            release=[Unit.STORE]),
        _sys(SysOp.SETREG, reg=9, value=4),
        _ld(Buffer.ACT, 0x10, SRC + 0x3000, 16, count=1, stride=64, gather=1,
            idx_addr=0x84, count_reg=9, row_reg=9, release=[Unit.STORE]),
        _st(Buffer.KV, 0x200, DST, 6 * 32, wait=[Unit.LOAD]),
        _st(Buffer.ACT, 0x10, DST + 0x400, 64, wait=[Unit.LOAD]),
        HALT,
    ]


def _prog_concurrent():
    """A long LD into WGT while independent stores run (no tokens between them)."""
    return [
        _ld(Buffer.OUT, 0, SRC, 512),
        _sys(SysOp.BARRIER),
        _ld(Buffer.WGT, 0, SRC + 0x1000, 8192),
        _st(Buffer.OUT, 0, DST, 512),
        _st(Buffer.OUT, 0, DST + 0x400, 256, count=2, stride=0x200),
        HALT,
    ]


def _prog_serial():
    """The same transfers, serialised by tokens: no two units are ever busy together."""
    return [
        _ld(Buffer.OUT, 0, SRC, 512, release=[Unit.STORE]),
        _st(Buffer.OUT, 0, DST, 512, wait=[Unit.LOAD], release=[Unit.LOAD]),
        _ld(Buffer.WGT, 0, SRC + 0x1000, 4096, wait=[Unit.STORE], release=[Unit.STORE]),
        _st(Buffer.OUT, 0, DST + 0x400, 256, count=2, stride=0x200, wait=[Unit.LOAD]),
        HALT,
    ]


def _four_units(config, tmp, seed):
    """LOAD -> MATRIX -> SFU -> STORE through tokens: a compiled MV layer (8 MV, 96 rows),
    then SFU ADD of its int32 results and an AUX row (into KV); and an SFU COPY into OUT
    that runs while the MATRIX unit writes OUT (no tokens between them), so the two
    writers of OUT meet. Returns ``(words, image)``."""
    import torch
    from airfoil.folder import load_folder
    from compiler.linear import compile_linear
    gen = torch.Generator().manual_seed(seed)
    compile_linear(torch.randn(96, 64, generator=gen), None, config, tmp / "lin",
                   wformat="int4", group=32, out_format="int32", seed=seed)
    folder = load_folder(tmp / "lin", config)
    img = _image(seed)
    assert len(folder.image) <= SRC + 0x1000
    img[:len(folder.image)] = folder.image
    ins = [isa.decode(w) for w in folder.program.words]
    assert [i.opcode for i in ins[-2:]] == [Opcode.ST, Opcode.SYS]
    mvs = [j for j, i in enumerate(ins) if i.opcode == Opcode.MV]
    words = list(folder.program.words)
    for j in (mvs[0], mvs[-1]):         # tokens to the SFU: the COPY, the ADD
        mv = ins[j]
        words[j] = isa.encode(Opcode.MV, wait=mv.wait, release=mv.release |
                              1 << Unit.SFU.value, **mv.fields)
    # The COPY starts once the first MV is done, while the others write OUT.
    words[mvs[1]:mvs[1]] = [
        _ld(Buffer.AUX, 0x100, SRC + 0x1000, 544, release=[Unit.SFU]),
        isa.encode(Opcode.SFU, wait=[Unit.LOAD, Unit.MATRIX], release=[Unit.STORE],
                   func=isa.SfuFunc.COPY, src=Buffer.AUX, src_addr=0x120, dst=Buffer.OUT,
                   dst_addr=0x200, n=512),
    ]
    return words[:-1] + [
        _st(Buffer.OUT, 0x200, DST + 0x200, 512, wait=[Unit.SFU]),
        isa.encode(Opcode.SFU, wait=[Unit.MATRIX], release=[Unit.STORE], func=isa.SfuFunc.ADD,
                   src=Buffer.OUT, src_addr=0, aux=Buffer.AUX, aux_addr=0x100, dst=Buffer.KV,
                   dst_addr=0x40, n=8, rows=1),
        _st(Buffer.KV, 0x40, DST + 0x100, 32, wait=[Unit.SFU]),
        HALT,
    ], img


def _fault_programs(config):
    kv = config.buffers.kv_bytes
    return {
        "kv_range": [_ld(Buffer.KV, kv - 32, SRC, 48), HALT],
        "st_gather": [_st(Buffer.ACT, 0, DST, 16, gather=1), HALT],
        "count_reg_zero": [_sys(SysOp.SETREG, reg=4, value=0),
                           _ld(Buffer.ACT, 0, SRC, 16, count_reg=4), HALT],
        "idx_range": [_ld(Buffer.ACT, 0, SRC, 16, count=4, gather=1,
                          idx_addr=config.buffers.aux_bytes - 8), HALT],
        "misaligned": [_st(Buffer.KV, 8, DST, 16), HALT],
        "st_wstream": [_st(Buffer.WSTREAM, 0, DST, 16), HALT],
        "sys_tokens": [isa.encode(Opcode.SYS, release=[Unit.STORE], op=SysOp.NOP), HALT],
        "own_token": [_ld(Buffer.ACT, 0, SRC, 16, wait=[Unit.LOAD]), HALT],
    }


@pytest.fixture(scope="module")
def config():
    return load_config("test")


@pytest.fixture(scope="module")
def runs(config, tmp_path_factory):
    """Run every case in one simulation; return ``{name: (rtl result, image, words)}``."""
    from airfoil.cli.backend_rtl import emit_core
    from sim.rtl import RtlCase, run_core
    core = emit_core(config, "build")
    progs = {"every_buffer": _prog_every_buffer(config), "registers": _prog_registers(),
             "gather": _prog_gather(), "concurrent": _prog_concurrent(),
             "serial": _prog_serial(), "no_stall": _prog_registers()}
    progs.update(_fault_programs(config))
    progs["wstream"] = [_ld(Buffer.WSTREAM, 0, SRC, 64), HALT]
    tmp = tmp_path_factory.mktemp("rtl_llm")
    special = {}
    special["four_units"] = progs["four_units"] = _four_units(config, tmp, 21)
    names, cases, images = [], [], {}
    for seed, (name, words) in enumerate(progs.items()):
        if name in special:
            words, img = special[name]
        else:
            img = _image(seed)
        images[name] = (img, words)
        names.append(name)
        program = Program(words, config.config_hash_bytes).to_bytes()
        cases.append(RtlCase(program=program, image=bytes(img), seed=100 + seed,
                             stall=0.0 if name == "no_stall" else 0.3,
                             read_back={"image": (0, IMAGE_BYTES)}, max_cycles=200_000,
                             poll=16))
    out = run_core(verilog=core["sources"], meta=core["meta"], config=config, cases=cases,
                   build_root="build/sim", work_dir=tmp)
    assert len(out) == len(names)
    return {n: (r, *images[n]) for n, r in zip(names, out)}


def _isa(config, img, words):
    """The ISA simulator on a copy of the image: ``(image, stats, fault code or None)``."""
    from airfoil.errors import ProgramError
    from sim.isa_sim import IsaSim
    ref = bytearray(img)
    try:
        stats = IsaSim(config, ref).run(words)
    except ProgramError as e:
        return ref, None, e.code
    return ref, stats, None


def _diff(got: bytes, want: bytes) -> str:
    bad = [i for i in range(len(want)) if got[i] != want[i]]
    return f"{len(bad)} bytes differ, first at {bad[0]:#x}" if bad else "equal"


@rtl
@pytest.mark.parametrize("name", ["every_buffer", "registers", "gather", "concurrent",
                                  "serial", "no_stall", "four_units"])
def test_matches_isa_simulator(runs, config, name):
    if name not in runs:
        pytest.skip("the SFU is not built (hdl/sfu/unit.py is missing)")
    r, img, words = runs[name]
    assert r["done"] and not r["error"], \
        f"core error {ErrorCode(r['err_code']).name} at instruction {r['err_pc']}"
    want, stats, code = _isa(config, img, words)
    assert code is None
    got = r["reads"]["image"]
    assert got == bytes(want), _diff(got, want)
    assert got != bytes(img), "the program stored nothing"
    assert r["retired"] == len(words)


@rtl
def test_gather_reads_rows_by_index(runs):
    """The gather's rows are the table rows its indices name (independent of the ISA sim)."""
    r, img, _ = runs["gather"]
    got = r["reads"]["image"]
    for j, row in enumerate([5, 0, 7, 2, 2, 9]):
        src = SRC + 0x2000 + row * 48
        assert got[DST + 32 * j:DST + 32 * j + 32] == img[src:src + 32], j


@rtl
def test_registers_offset_rows(runs):
    """count_reg = r5 (loaded: 5) rows from row r3 (set: 2) of the source."""
    r, img, _ = runs["registers"]
    got = r["reads"]["image"]
    for j in range(5):
        src = SRC + 0x800 + (2 + j) * 96
        assert got[DST + 32 * (2 + j):DST + 32 * (3 + j)] == img[src:src + 32], j


@rtl
def test_four_units_all_busy(runs):
    if "four_units" not in runs:
        pytest.skip("the SFU is not built (hdl/sfu/unit.py is missing)")
    r, _, _ = runs["four_units"]
    c = r["counters"]
    assert all(c[f"busy_{u}"] > 0 for u in ("load", "matrix", "sfu", "store")), c
    assert 0 < c["overlap"] < r["cycles"]


@rtl
def test_counters_show_concurrency(runs):
    r, _, _ = runs["concurrent"]
    c = r["counters"]
    assert 0 < c["busy_load"] < r["cycles"] and 0 < c["busy_store"] < r["cycles"]
    assert c["busy_matrix"] == 0 and c["busy_sfu"] == 0
    assert 0 < c["overlap"] <= min(c["busy_load"], c["busy_store"])
    from sim.rtl import overlap_fraction
    assert overlap_fraction(r) == c["overlap"] / r["cycles"]
    assert r["overlap_cycles"] == c["overlap"] and r["busy_load"] == c["busy_load"]


@rtl
def test_counters_serial_program_has_no_overlap(runs):
    r, _, _ = runs["serial"]
    c = r["counters"]
    assert c["busy_load"] > 0 and c["busy_store"] > 0
    assert c["overlap"] == 0, c


@rtl
@pytest.mark.parametrize("name", ["kv_range", "st_gather", "count_reg_zero", "idx_range",
                                  "misaligned", "st_wstream", "sys_tokens", "own_token"])
def test_faults_match_isa_simulator(runs, config, name):
    r, img, words = runs[name]
    _, _, code = _isa(config, img, words)
    assert code is not None
    assert r["done"] and r["error"]
    assert ErrorCode(r["err_code"]) == code, (ErrorCode(r["err_code"]).name, code.name)


@rtl
def test_wstream_without_consumer_is_unsupported(runs, config):
    from hdl.core.plan import CorePlan
    if CorePlan.of(config).streamed:
        pytest.skip("the MATRIX unit consumes the weight stream")
    r, _, _ = runs["wstream"]
    assert r["error"] and ErrorCode(r["err_code"]) == ErrorCode.UNSUPPORTED


@pytest.mark.parametrize("seed", range(3))
def test_load_unit_weight_stream(config, seed):
    """LD into WSTREAM: the beats leave on ``wstream`` in order under random backpressure,
    the tokens are released after the last one, and nothing is written to a buffer
    (amaranth.sim of the LoadUnit alone)."""
    import random
    from amaranth.sim import Simulator
    from hdl.core.buffers import BufferGeometry
    from hdl.core.load import LoadUnit
    geo = BufferGeometry.of(config)
    dut = LoadUnit(geometry=geo, channels=1, wstream=True)
    rng = random.Random(seed)
    rows, nbytes = 3, 2 * geo.word_bytes
    words = [rng.getrandbits(geo.word_bits) for _ in range(rows * 2)]
    bits = _ld(Buffer.WSTREAM, 0, 0x200, nbytes, count=rows, stride=0x40,
               release=[Unit.MATRIX])
    got, seen = [], {}

    async def producer(ctx):
        ctx.set(dut.data_base[0], 0x10000)
        ctx.set(dut.q.payload.instr.as_value(), bits)
        ctx.set(dut.q.payload.index, 7)
        ctx.set(dut.q.valid, 1)
        await ctx.tick().until(dut.q.ready)
        ctx.set(dut.q.valid, 0)
        ctx.set(dut.cmd[0].ready, 1)
        (cmd,) = await ctx.tick().sample(dut.cmd[0].payload).until(dut.cmd[0].valid)
        ctx.set(dut.cmd[0].ready, 0)
        seen["cmd"] = (cmd.addr, cmd.beats, cmd.rows, cmd.stride)
        for w in words:
            while rng.random() < 0.3:
                await ctx.tick()
            ctx.set(dut.beats[0].payload, w)
            ctx.set(dut.beats[0].valid, 1)
            await ctx.tick().until(dut.beats[0].ready)
            ctx.set(dut.beats[0].valid, 0)
        ctx.set(dut.rel.ready, 1)
        (rel,) = await ctx.tick().sample(dut.rel.payload).until(dut.rel.valid)
        seen["rel"] = rel
        seen["got_at_release"] = len(got)

    async def consumer(ctx):
        while True:
            ready = rng.random() < 0.5
            ctx.set(dut.wstream[0].ready, ready)
            _, _, valid, payload, wr = await ctx.tick().sample(
                dut.wstream[0].valid, dut.wstream[0].payload, dut.wr[0].valid)
            assert not wr, "a WSTREAM beat went to a buffer"
            if valid and ready:
                got.append(payload)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer, background=True)
    sim.run_until(2e-5)
    assert seen["cmd"] == (0x10000 + 0x200, 2, rows, 0x40)
    assert got == words
    assert seen["rel"] == 1 << Unit.MATRIX.value and seen["got_at_release"] == len(words)
