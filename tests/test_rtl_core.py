"""The RTL core under Verilator and cocotb: bit-exact against the golden, errors flagged.

All cases of a parameter set run in one simulator process on one build (the module
fixture), under random stalls on every AXI channel drawn from the case's seed; each test
then checks its own case, so a failure names the format, group and seed.
"""

import numpy as np
import pytest
import torch

from airfoil import isa
from airfoil.config import load_config
from airfoil.folder import OUT_DTYPES, load_folder
from airfoil.program import Program

pytestmark = pytest.mark.rtl(group="rtl_core")

SEEDS = range(5)
COMBOS = [("int4", 32), ("int4", 128), ("int8", 32), ("int8", 128)]
OUT_FORMATS = ("int8", "int16", "int32", "int8", "int16")
KSPLIT = [("int4", 0), ("int8", 1)]


@pytest.fixture(scope="module")
def config():
    return load_config("test")


@pytest.fixture(scope="module")
def core(config):
    from airfoil.cli.backend_rtl import emit_core
    return emit_core(config, "build")


def _shape(wf, group, seed):
    # Small odd shapes: N not a multiple of chains, several groups and tiles.
    n = 13 + 2 * seed
    k = group * (3 if group == 32 else 2)
    return n, k


def _compile(tmp, config, wf, group, seed, max_tile_bytes=None):
    from compiler.linear import compile_linear
    n, k = _shape(wf, group, seed)
    gen = torch.Generator().manual_seed(1000 * seed + group + len(wf))
    w = torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen) if seed % 2 == 0 else None
    out = tmp / f"{wf}_g{group}_s{seed}{'_split' if max_tile_bytes else ''}"
    compile_linear(w, b, config, out, wformat=wf, group=group,
                   out_format=OUT_FORMATS[seed], seed=seed, max_tile_bytes=max_tile_bytes)
    return load_folder(out, config)


def _case(folder, seed, program=None, stall=0.25):
    from sim.rtl import RtlCase
    nbytes = folder.n * folder.out_bits // 8
    return RtlCase(program=(program or folder.program).to_bytes(), image=bytes(folder.image),
                   seed=seed, stall=stall,
                   read_back={"out": (folder.manifest["output"]["addr"], nbytes)},
                   max_cycles=200_000)


def _words_with(folder, index, word):
    words = list(folder.program.words)
    words[index] = word
    return Program(words, folder.program.config_hash)


def _reencode(word, **changes):
    ins = isa.decode(word)
    fields = dict(ins.fields)
    fields.update(changes)
    return isa.encode(ins.opcode, ins.wait, ins.release, **fields)


def _index_of(folder, opcode):
    return next(i for i, w in enumerate(folder.program.words)
                if isa.decode(w).opcode == opcode)


def _k_split_beyond_limit(folder, config):
    """The folder's first MV as an MM that leaves its accumulators for a next K-chunk
    (``final = 0``) over one batch more than the MATRIX unit keeps
    (``config.k_split_batches``): ``m`` vectors one word apart of ``2 * chains`` rows."""
    mv = _index_of(folder, isa.Opcode.MV)
    ins = isa.decode(folder.program.words[mv])
    fields = dict(ins.fields, m=config.k_split_batches // 2 + 1, rows=2 * config.chains,
                  astride=1, final=0)
    return _words_with(folder, mv, isa.encode(isa.Opcode.MM, ins.wait, ins.release,
                                              **fields))


@pytest.fixture(scope="module")
def results(core, config, tmp_path_factory):
    """Run every case of this module in one simulation; return results by key."""
    from sim.rtl import run_core
    tmp = tmp_path_factory.mktemp("rtl_core")
    keys, cases, folders = [], [], {}
    for wf, group in COMBOS:
        for seed in SEEDS:
            f = _compile(tmp, config, wf, group, seed)
            folders[(wf, group, seed)] = f
            keys.append((wf, group, seed))
            cases.append(_case(f, seed))
    for wf, seed in KSPLIT:
        # A small tile cap splits K into chunks accumulated across MV instructions.
        f = _compile(tmp, config, wf, 32, seed, max_tile_bytes=200)
        folders[("ksplit", wf, seed)] = f
        keys.append(("ksplit", wf, seed))
        cases.append(_case(f, seed))
    base = folders[("int4", 32, 0)]
    # Error cases, built from a valid program.
    illegal = 3
    keys.append("illegal")
    cases.append(_case(base, 7, _words_with(base, illegal, 0xF)))
    ld = _index_of(base, isa.Opcode.LD)
    keys.append("malformed")
    cases.append(_case(base, 8, _words_with(
        base, ld, _reencode(base.program.words[ld], nbytes=config.word_bytes + 8))))
    mv = _index_of(base, isa.Opcode.MV)
    keys.append("scale_range")
    cases.append(_case(base, 9, _words_with(
        base, mv, _reencode(base.program.words[mv], k0=-60))))
    keys.append("deadlock")
    dead = Program([base.program.words[mv],
                    isa.encode(isa.Opcode.SYS, op=isa.SysOp.HALT)],
                   base.program.config_hash)
    cases.append(_case(base, 10, dead))
    keys.append("unsupported")
    cases.append(_case(base, 11, _words_with(
        base, mv, _reencode(base.program.words[mv], wfmt=isa.WeightFormat.INT2))))
    keys.append("k_split_limit")
    cases.append(_case(base, 13, _k_split_beyond_limit(base, config)))
    keys.append("program_end")
    nop = isa.encode(isa.Opcode.SYS, op=isa.SysOp.NOP)
    cases.append(_case(base, 12, Program([nop, nop], base.program.config_hash)))
    out = run_core(verilog=core["sources"], meta=core["meta"], config=config, cases=cases,
                   build_root="build/sim")
    assert len(out) == len(keys)
    return {k: (r, folders.get(k, base), i) for i, (k, r) in
            enumerate(zip(keys, out))} | {"_base_mv": mv, "_illegal": illegal}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("wf,group", COMBOS)
def test_matches_golden(results, wf, group, seed):
    r, folder, _ = results[(wf, group, seed)]
    _check_golden(r, folder)
    assert r["retired"] == len(folder.program.words)
    assert r["cycles"] > 0


def _check_golden(r, folder):
    from sim.golden import run_golden
    assert r["done"] and not r["error"], f"core error {isa.ErrorCode(r['err_code']).name}"
    dt = np.dtype(OUT_DTYPES[folder.out_bits])
    got = torch.from_numpy(np.frombuffer(r["reads"]["out"], dtype=dt).astype(np.int64))
    want = run_golden(folder)
    assert torch.equal(got, want), (got - want).nonzero()


@pytest.mark.parametrize("wf,seed", KSPLIT)
def test_ksplit_matches_golden(results, wf, seed):
    r, folder, _ = results[("ksplit", wf, seed)]
    mvs = [isa.decode(w) for w in folder.program.words]
    assert any(i.opcode == isa.Opcode.MV and not i.acc_init for i in mvs), "no K-split"
    _check_golden(r, folder)


def test_illegal_opcode_raises_error(results):
    r, _, _ = results["illegal"]
    assert r["done"] and r["error"]
    assert isa.ErrorCode(r["err_code"]) == isa.ErrorCode.ILLEGAL_OPCODE
    assert r["err_pc"] == results["_illegal"]


def test_malformed_load_raises_error(results):
    r, _, _ = results["malformed"]
    assert r["error"] and isa.ErrorCode(r["err_code"]) == isa.ErrorCode.MALFORMED


def test_scale_out_of_window_raises_error(results):
    r, _, _ = results["scale_range"]
    assert r["error"] and isa.ErrorCode(r["err_code"]) == isa.ErrorCode.SCALE_RANGE
    assert r["err_pc"] == results["_base_mv"]


def test_deadlock_detected(results):
    r, _, _ = results["deadlock"]
    assert r["done"] and r["error"]
    assert isa.ErrorCode(r["err_code"]) == isa.ErrorCode.DEADLOCK


def test_missing_halt_is_program_end(results):
    r, _, _ = results["program_end"]
    assert r["done"] and r["error"]
    assert isa.ErrorCode(r["err_code"]) == isa.ErrorCode.PROGRAM_END


def test_unbuilt_weight_format_unsupported(results):
    r, _, _ = results["unsupported"]
    assert r["error"] and isa.ErrorCode(r["err_code"]) == isa.ErrorCode.UNSUPPORTED


def test_k_split_beyond_the_accumulators_unsupported(results, config):
    """The limit the config derives (k_split_batches) is the RTL's and the ISA simulator's."""
    from airfoil.errors import ProgramError
    from sim.isa_sim import IsaSim
    r, base, _ = results["k_split_limit"]
    assert r["error"] and isa.ErrorCode(r["err_code"]) == isa.ErrorCode.UNSUPPORTED
    assert r["err_pc"] == results["_base_mv"]
    with pytest.raises(ProgramError, match="k_split_batches") as e:
        IsaSim(config, bytearray(base.image)).run(
            _k_split_beyond_limit(base, config).words)
    assert (e.value.code, e.value.index) == (isa.ErrorCode.UNSUPPORTED, results["_base_mv"])


def test_csr_id(results):
    r, _, _ = results[("int4", 32, 0)]
    from airfoil import csr
    assert r["id"] == csr.CORE_ID | isa.ISA_VERSION


def test_bench_path_small_shape(config):
    """The bench code at a small shape: figure == work / cycles of that run."""
    from sim.measure.gemv import bandwidth_ceiling, measure_gemv
    r = measure_gemv(24, 256, "int4", 128, config, build_dir="build")
    assert r["macs"] == 24 * 256
    assert r["macs_per_cycle"] == r["macs"] / r["cycles"]
    assert 0 < r["macs_per_cycle"] <= config.peak_macs_per_cycle
    assert bandwidth_ceiling(config, "int4", 128) == 128 / (4 + 16 / 128)


@pytest.mark.slow
@pytest.mark.parametrize("wf,group", [("int4", 128), ("int8", 32)])
def test_larger_layer_under_stalls(core, config, tmp_path, wf, group):
    from compiler.linear import compile_linear
    from sim.golden import run_golden
    from sim.rtl import run_core
    gen = torch.Generator().manual_seed(5)
    w, b = torch.randn(200, 1024, generator=gen), torch.randn(200, generator=gen)
    compile_linear(w, b, config, tmp_path / "f", wformat=wf, group=group)
    folder = load_folder(tmp_path / "f", config)
    r = run_core(verilog=core["sources"], meta=core["meta"], config=config,
                 cases=[_case(folder, 5)], build_root="build/sim")[0]
    assert r["done"] and not r["error"]
    got = torch.from_numpy(np.frombuffer(r["reads"]["out"], dtype=np.int8).astype(np.int64))
    assert torch.equal(got, run_golden(folder))


@pytest.mark.slow
def test_bench_gemv_meets_target(config):
    """The full bench layer streams at >= 90 % of min(peak, AXI bandwidth ceiling)."""
    from sim.measure.gemv import BENCH_SHAPE, bandwidth_ceiling, measure_gemv
    n, k, wf, g = BENCH_SHAPE
    r = measure_gemv(n, k, wf, g, config, build_dir="build")
    bound = min(config.peak_macs_per_cycle, bandwidth_ceiling(config, wf, g))
    assert r["macs_per_cycle"] >= 0.9 * bound, (r["macs_per_cycle"], bound)
