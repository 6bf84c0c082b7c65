"""Program fuzzer (sim/program_fuzz.py): random legal and illegal programs give the same
status, error code, error instruction and output memory on the ISA simulator and the core.

The RTL cases of a config run in one simulator process (the module fixtures); a failure
names the program's seed and prints its disassembly (``generate(seed, config)`` rebuilds
it). The hand-written programs pin the core's error reports that the fuzzer found wrong.
"""

import pytest

from airfoil import isa
from airfoil.config import load_config
from airfoil.errors import ProgramError
from airfoil.isa import Buffer, ErrorCode, Opcode, SfuFunc, SysOp, Unit
from sim.program_fuzz import (FAR_ADDR, FuzzProgram, Outcome, compare, fuzz, generate,
                              kinds_of, report, run_isa_side, run_rtl_side)

CFG = load_config("test")
DECODE_CFG = load_config("test_decode")
#: Seeds of the default set: a few hundred programs on ``test``, a hundred on
#: ``test_decode`` (its streamed weights and starved streams).
SEEDS = {"test": range(300), "test_decode": range(100)}
#: Seeds of the slow set (>= 1,000 programs in all; ``test_x2``: two memory channels).
SLOW_SEEDS = {"test": range(10_000, 11_200), "test_decode": range(20_000, 20_400),
              "test_x2": range(30_000, 30_400)}


def _configs():
    from sim.measure.mc import mc_config
    return {"test": CFG, "test_decode": DECODE_CFG,
            "test_x2": mc_config(2, CFG, out_rows=1)}         # OUT as large as test's


# -- the generator and the ISA side (no simulator) --------------------------------------

def test_generator_is_reproducible_from_the_seed():
    for seed in range(30):
        a, b = generate(seed, CFG), generate(seed, CFG)
        assert (a.kind, a.words, a.image) == (b.kind, b.words, b.image), seed


@pytest.mark.parametrize("name", ["test", "test_decode"])
def test_isa_raises_each_planted_fault_where_planted(name):
    cfg = _configs()[name]
    seen = set()
    for seed in SEEDS[name]:
        fp = generate(seed, cfg)
        got = run_isa_side(fp, cfg)
        seen.add(fp.kind)
        assert (got.error or ErrorCode.NONE, got.index) == (fp.expect, fp.where), \
            report(fp, f"ISA simulator: {got.describe()}")
    assert seen == set(kinds_of(cfg)), f"kinds never drawn: {set(kinds_of(cfg)) - seen}"


def test_isa_refuses_tiles_the_tile_engine_cannot_decode():
    """``test_decode`` lists INT2 for its weight stream; a WGT tile in INT2 is UNSUPPORTED
    (the ISA simulator ran it, the core's tile engine decodes INT4 and INT8 only)."""
    from sim.isa_sim import IsaSim
    mv = isa.encode(Opcode.MV, wfmt=isa.WeightFormat.INT2, group=32, rows=4, k=32, m=1)
    with pytest.raises(ProgramError) as e:
        IsaSim(DECODE_CFG, bytearray(64)).run([mv, _halt()])
    assert (e.value.code, e.value.index) == (ErrorCode.UNSUPPORTED, 0)


def test_compare_flags_each_difference():
    done = Outcome(True, output=bytes(4))
    assert compare(done, Outcome(True, output=bytes(4))) is None
    assert "differs in 1 bytes" in compare(done, Outcome(True, output=b"\0\0\1\0"))
    assert "hang" in compare(done, Outcome(False))
    assert compare(Outcome(True, ErrorCode.DEADLOCK, 3), Outcome(True, ErrorCode.DEADLOCK, 4))
    assert compare(Outcome(True, ErrorCode.MALFORMED, 3), done)


# -- both sides ----------------------------------------------------------------------------

def _core(cfg):
    from airfoil.cli.backend_rtl import emit_core
    return emit_core(cfg, "build")


def _nop():
    return isa.encode(Opcode.SYS, op=SysOp.NOP)


def _halt():
    return isa.encode(Opcode.SYS, op=SysOp.HALT)


def _ld(**kw):
    fields = dict(buf=Buffer.ACT, buf_addr=0, dram_addr=0, nbytes=CFG.word_bytes, count=1,
                  dram_stride=0)
    fields.update(kw)
    return isa.encode(Opcode.LD, **fields)


#: Programs whose error report the core got wrong before: (name, words, code, index).
REGRESSIONS = [
    # A reserved bit is MALFORMED at its instruction (the core ignored it).
    ("reserved_bit", [_nop(), _halt() | 1 << 255], ErrorCode.MALFORMED, 1),
    ("reserved_header_bit", [_ld() | 1 << 15, _halt()], ErrorCode.MALFORMED, 0),
    # PROGRAM_END names the missing instruction (the core named the last one).
    ("program_end", [_nop(), _nop()], ErrorCode.PROGRAM_END, 2),
    # DEADLOCK names the oldest waiting instruction (the core gave its dispatch count).
    ("deadlock", [_nop(), isa.encode(Opcode.ST, wait=[Unit.MATRIX], buf=Buffer.ACT,
                                     buf_addr=0, dram_addr=0, nbytes=CFG.word_bytes,
                                     count=1, dram_stride=0), _nop(), _halt()],
     ErrorCode.DEADLOCK, 1),
    # AXI_ERROR names the LD (or LDREG) that met the error response (the core gave its
    # dispatch count).
    ("axi_ld", [_ld(), _nop(), _ld(dram_addr=FAR_ADDR), _ld(), _nop(), _halt()],
     ErrorCode.AXI_ERROR, 2),
    ("axi_ldreg", [_nop(), isa.encode(Opcode.SYS, op=SysOp.LDREG, reg=3, value=FAR_ADDR),
                   _nop(), _halt()], ErrorCode.AXI_ERROR, 1),
    # An int32 SFU operand not at a multiple of 4 bytes is MALFORMED (the ISA simulator
    # read it unaligned).
    ("sfu_misaligned", [_nop(), isa.encode(Opcode.SFU, func=SfuFunc.SILU, src=Buffer.ACT,
                                           dst=Buffer.ACT, src_addr=2, dst_addr=64, n=4,
                                           rows=1), _halt()], ErrorCode.MALFORMED, 1),
    # An SFU operand in WGT is BUFFER_RANGE (the ISA simulator copied from WGT).
    ("sfu_wgt", [_nop(), isa.encode(Opcode.SFU, func=SfuFunc.COPY, src=Buffer.WGT,
                                    dst=Buffer.ACT, src_addr=0, dst_addr=0, n=16, rows=1),
                 _halt()], ErrorCode.BUFFER_RANGE, 1),
]


def _regressions():
    return [FuzzProgram(seed=i, kind=name, words=words, image=bytes(16384), expect=code,
                        where=index) for i, (name, words, code, index) in
            enumerate(REGRESSIONS)]


@pytest.fixture(scope="module")
def regression_results():
    fps = _regressions()
    return fps, run_rtl_side(fps, CFG, _core(CFG))


@pytest.mark.rtl(group="rtl_core")
@pytest.mark.parametrize("i", range(len(REGRESSIONS)), ids=[r[0] for r in REGRESSIONS])
def test_core_reports_error_where_isa_does(regression_results, i):
    fps, rtl = regression_results
    fp = fps[i]
    want = Outcome(True, fp.expect, fp.where)
    assert compare(want, run_isa_side(fp, CFG)) is None, report(fp, "ISA simulator")
    assert compare(want, rtl[i]) is None, report(fp, compare(want, rtl[i]))


def _check(name, seeds, batch):
    cfg = _configs()[name]
    summary = fuzz(seeds, cfg, _core(cfg), batch=batch)
    assert summary.cases == len(seeds)
    assert not summary.mismatches, (f"{len(summary.mismatches)} of {summary.cases} programs "
                                    f"disagree; the first:\n{summary.mismatches[0]}")


@pytest.mark.rtl(group="rtl_core")
def test_fuzz_programs_agree_on_test():
    _check("test", SEEDS["test"], batch=len(SEEDS["test"]))


@pytest.mark.rtl
def test_fuzz_programs_agree_on_test_decode():
    _check("test_decode", SEEDS["test_decode"], batch=len(SEEDS["test_decode"]))


@pytest.mark.rtl(group="rtl_core")
@pytest.mark.slow
@pytest.mark.parametrize("name", ["test", "test_decode", "test_x2"])
def test_fuzz_many_programs_agree(name):
    _check(name, SLOW_SEEDS[name], batch=400)


@pytest.mark.rtl(group="rtl_core")
def test_fill_programs_agree():
    """The directed programs that fill the SFU queue and the token FIFOs run alike."""
    from sim.program_fuzz import fill_programs
    fps = fill_programs(CFG)
    for fp, out in zip(fps, run_rtl_side(fps, CFG, _core(CFG))):
        assert compare(run_isa_side(fp, CFG), out) is None, report(fp, out.describe())
