"""The ISA simulator's cycle model against the RTL core's cycle counter.

Linear layers of several shapes (INT4 and INT8, whole-K and K-split tiles) are compiled
for the ``test`` config and run once on the ISA simulator and once on the RTL core under
Verilator, all in one simulator process, without random memory stalls (the memory
model's nominal latency, so the RTL cycle count is exact). Each test asserts that the
outputs agree bit for bit and that the ISA simulator's predicted cycles are within
:data:`TOLERANCE` of the RTL's (the target of ``isa_cycle_model_error``). The first
tests check the model's parts without Verilator.
"""

import dataclasses

import numpy as np
import pytest
import torch

from airfoil.config import load_config
from airfoil.folder import OUT_DTYPES, load_folder

RTL = pytest.mark.rtl(group="rtl_core")

#: Largest accepted ``|isa - rtl| / rtl`` (the issue's target for the figure).
TOLERANCE = 0.10

# (n, k, weight format, group). The core takes ~800 to ~5k cycles on the default set and
# ~3k to ~36k on the slow one (the ISA simulator's count includes the core's start and
# end, CycleModel.program_overhead).
SHAPES = [
    pytest.param(64, 256, "int4", 128, id="64x256-int4-g128"),
    pytest.param(96, 384, "int4", 32, id="96x384-int4-g32"),
    pytest.param(48, 768, "int4", 128, id="48x768-int4-g128"),
    pytest.param(256, 512, "int4", 128, id="256x512-int4-g128"),
    pytest.param(64, 256, "int8", 128, id="64x256-int8-g128"),
    pytest.param(32, 128, "int8", 32, id="32x128-int8-g32"),
]
SLOW_SHAPES = [
    pytest.param(1024, 1024, "int4", 128, id="1024x1024-int4-g128"),
    pytest.param(128, 4096, "int4", 64, id="128x4096-int4-g64-ksplit"),
    pytest.param(128, 2048, "int8", 32, id="128x2048-int8-g32-ksplit"),
    pytest.param(512, 1024, "int8", 128, id="512x1024-int8-g128"),
]


CFG = load_config("test")


def test_matrix_step_rate_and_tail():
    """INT8 steps take two WGT rows (and the packed chains one more cycle on the last); a
    K-chunk that is not final skips the serializer and the requantizer; rows pad to whole
    batches of ``chains``."""
    from hdl.core.matrix_timing import ACC_WRITE_CYCLES, REQUANT_LATENCY
    from sim.cycle_model import CycleModel
    cm = CycleModel(CFG)
    c, lanes = CFG.chains, CFG.lanes
    i4 = cm.matrix(64, 256)
    i8 = cm.matrix(64, 256, wfmt="int8")
    steps = (64 // c) * (256 // lanes)
    assert i8.busy - i4.busy == steps + 1
    assert cm.matrix(64, 256, wfmt="int4") == i4
    assert i4.busy - cm.matrix(64, 256, final=False).busy == c + REQUANT_LATENCY - \
        ACC_WRITE_CYCLES
    assert cm.matrix(61, 256) == i4
    assert i4.busy == i4.latency


def test_matrix_batch_lower_bounds():
    """A batch takes at least the serializer's ``chains`` cycles when final, and the
    scale reader's cycles per group scale (plus one read for its start values)."""
    from hdl.core.matrix_timing import SCALE_READ_CYCLES
    from sim.cycle_model import CycleModel
    cm = CycleModel(CFG)
    short = cm.matrix(8, CFG.lanes)             # two batches of one step each
    one = cm.matrix(4, CFG.lanes)
    assert short.busy - one.busy == CFG.chains
    wide = CycleModel(dataclasses.replace(CFG, lanes=32))
    free = wide.matrix(4, 64, final=False)
    bound = wide.matrix(4, 64, final=False, group=32, use_init=True)
    assert bound.busy - free.busy == SCALE_READ_CYCLES * 3 - 64 // 32


def test_matrix_cost_is_the_units_count():
    """The model charges the MATRIX unit's own count (the one the RTL tests measure) and
    the token hand-off, on every PE kind."""
    from hdl.core.matrix import MatrixUnit
    from sim.cycle_model import TOKEN_HANDOFF, CycleModel
    for pe, wfmt in (("dsp", "int8"), ("bitserial", "int4"), ("lut", "int4")):
        cfg = dataclasses.replace(CFG, pe=pe, weight_formats=(wfmt,))
        for final, use_init in ((True, False), (False, True)):
            unit = MatrixUnit.cycles(chains=cfg.chains, lanes=cfg.lanes, rows=13, k=128,
                                     group=32, wfmt=wfmt, m=3, final=final,
                                     use_init=use_init, pe=pe)
            cost = CycleModel(cfg).matrix(13, 128, 3, wfmt=wfmt, final=final, group=32,
                                          use_init=use_init)
            assert cost.busy == cost.latency == unit + TOKEN_HANDOFF


def test_store_is_serial_per_burst():
    from sim.cycle_model import (AW_CYCLES, B_CYCLES, RELEASE_CYCLES, ST_BEAT_CYCLES,
                                 ST_PREP_CYCLES, TOKEN_HANDOFF, CycleModel)
    cm = CycleModel(CFG)
    mem = CFG.memory
    wb = CFG.word_bytes
    one = cm.store(wb)
    assert one.latency == (ST_PREP_CYCLES + AW_CYCLES + ST_BEAT_CYCLES + mem.write_latency +
                           B_CYCLES + RELEASE_CYCLES + TOKEN_HANDOFF)
    two = cm.store((mem.max_burst + 1) * wb)      # a second burst of one beat
    assert two.latency - one.latency == (mem.max_burst * ST_BEAT_CYCLES + AW_CYCLES +
                                         mem.write_latency + B_CYCLES)
    assert one.busy == 1                            # the read channel stays free


def test_back_to_back_loads_pay_the_latency_once():
    """Two LDs on one channel: the second one's token comes its beats plus the
    receiver's gap after the first one's (as :class:`sim.memory.Memory` schedules them)."""
    from sim.cycle_model import LD_RECORD_GAP, CycleModel
    cm = CycleModel(CFG)
    a, b = cm.load(64 * CFG.word_bytes), cm.load(32 * CFG.word_bytes)
    assert (a.busy + b.latency) - a.latency == 32 + LD_RECORD_GAP


def test_a_shared_write_port_is_taken_round_robin():
    """LDs of several channels into one buffer write port share it equally while each
    holds words, so the first one is slowed as much as the later ones; a channel slower
    than its share leaves the rest of the port to the others."""
    from sim.cycle_model import round_robin_ends
    assert round_robin_ends([(0, 100, 1.0)]) == [100]
    assert round_robin_ends([(0, 100, 1.0), (0, 100, 1.0)]) == [200, 200]
    # The second one arrives after 40 words of the first: 60 + 60 words at half rate.
    assert round_robin_ends([(0, 100, 1.0), (40, 100, 1.0)]) == [160, 200]
    # A channel delivering a quarter word a cycle leaves three quarters to the other.
    fast, slow = round_robin_ends([(0, 300, 1.0), (0, 100, 0.25)])
    assert (fast, slow) == (400, 400)
    assert round_robin_ends([(0, 10, 1.0), (20, 10, 1.0)]) == [10, 30]


def test_ldreg_reads_its_word_after_the_read_latency():
    """SYS LDREG costs the dispatcher the wait, command and ARVALID cycles, channel 0's
    read latency and its beats: two when the 32-bit word crosses a memory word."""
    from sim.cycle_model import LDREG_ISSUE_CYCLES, CycleModel
    cm = CycleModel(CFG)
    wb = CFG.word_bytes
    lat = CFG.memory.latency_of(0)
    assert cm.ldreg(0).busy == cm.ldreg(wb - 4).busy == LDREG_ISSUE_CYCLES + lat + 1
    assert cm.ldreg(wb - 2).busy == LDREG_ISSUE_CYCLES + lat + 2
    slow = CycleModel(dataclasses.replace(CFG, memory=dataclasses.replace(
        CFG.memory, read_latency=CFG.memory.read_latency + 10)))
    assert slow.ldreg(0).busy - cm.ldreg(0).busy == 10


def test_bad_arguments_are_named():
    from sim.cycle_model import CycleModel
    cm = CycleModel(CFG)
    with pytest.raises(ValueError, match="rows must be a positive integer, not 0"):
        cm.matrix(0, 64)
    with pytest.raises(ValueError, match="group must be a positive integer or None, not 0"):
        cm.matrix(4, 64, group=0)
    with pytest.raises(TypeError, match="config must be an AccelConfig"):
        CycleModel("test")


@pytest.mark.parametrize("config,word_bytes", [("test", 16), ("u280", 64)])
def test_sfu_attention_takes_a_word_of_the_config_per_cycle(config, word_bytes):
    """The SFU's attention products cost a record's words of the config's buffer word: one
    more key of head_dim 128 (a 136-byte record) costs each head ceil(136 / word) cycles
    of ATT_QK on word-aligned records (one more, the funnel's word, on records 136 bytes
    apart) and as many of ATT_PV, the scale pair's word and the value words (on records
    136 bytes apart 2 + ceil(128 / word) + 1: the pair's and the values' funnel words)."""
    import dataclasses

    from airfoil.isa import SfuFunc
    from sim.cycle_model import CycleModel
    cfg = load_config(config)           # with one KV bank (u280 has one per channel)
    cm = CycleModel(dataclasses.replace(cfg, buffers=dataclasses.replace(cfg.buffers,
                                                                         kv_banks=1)))
    shape = dict(n=128, rows=1, heads=32, kv_heads=8)

    def per_key(func, stride):
        return (cm.sfu_call(func, length=513, imm0=stride, imm1=stride, **shape).busy
                - cm.sfu_call(func, length=512, imm0=stride, imm1=stride, **shape).busy) // 32

    aligned = -(-136 // word_bytes) * word_bytes
    assert per_key(SfuFunc.ATT_QK, aligned) == -(-136 // word_bytes)
    assert per_key(SfuFunc.ATT_QK, 136) == -(-136 // word_bytes) + 1
    assert per_key(SfuFunc.ATT_PV, aligned) == 1 + 128 // word_bytes == -(-136 // word_bytes)
    assert per_key(SfuFunc.ATT_PV, 136) == 2 + 128 // word_bytes + 1


def test_sfu_attention_on_kv_banks_takes_a_key_group_per_record_word():
    """On u280's 32 KV banks a key group (32 keys) of head_dim 128 costs each head the 3
    words of its records in ATT_QK (its 32 scores span at most 3 words too), and in
    ATT_PV the 3 words its probabilities may span, under which its scale pairs' row and
    the previous group's 2 value words are read; records off the word are refused (1
    cycle)."""
    from airfoil.isa import SfuFunc
    from sim.cycle_model import CycleModel
    cm = CycleModel(load_config("u280"))
    shape = dict(n=128, rows=1, heads=32, kv_heads=8, imm0=192, imm1=192)

    def per_group(func, keys=512, **kw):
        return (cm.sfu_call(func, length=keys + 32, **{**shape, **kw}).busy
                - cm.sfu_call(func, length=keys, **{**shape, **kw}).busy) // 32

    assert per_group(SfuFunc.ATT_QK) == per_group(SfuFunc.ATT_QK, keys=511) == 3
    assert per_group(SfuFunc.ATT_PV) == per_group(SfuFunc.ATT_PV, keys=511) == 3
    assert per_group(SfuFunc.ATT_QK, imm1=136) == per_group(SfuFunc.ATT_PV, imm1=136) == 0


@pytest.mark.parametrize("config,lanes", [("test", 4), ("u280", 16)])
def test_sfu_elementwise_takes_a_chunk_of_the_config_per_cycle(config, lanes):
    """Element-wise SFU functions on rows that start on words take a word of int32 (MUL,
    SILU and ROPE: ``sfu_lanes``) per cycle, rows off the word an element: one more row of
    4096 int32 costs 4096 / lanes cycles of ADD, MUL, SILU and ROPE, and 4096 when its
    destination is 4 bytes off the word."""
    import dataclasses

    from airfoil.isa import SfuFunc
    from sim.cycle_model import CycleModel
    cfg = load_config(config)

    def per_row(cm, func, dst_addr, **kw):
        return (cm.sfu_call(func, n=4096, rows=3, dst_addr=dst_addr, **kw).busy
                - cm.sfu_call(func, n=4096, rows=2, dst_addr=dst_addr, **kw).busy)

    cm = CycleModel(cfg)
    for func in (SfuFunc.ADD, SfuFunc.MUL, SfuFunc.SILU):
        assert per_row(cm, func, 0) == 4096 // lanes
        assert per_row(cm, func, 4) == 4096
    assert per_row(cm, SfuFunc.ROPE, 0, heads=32) == 4096 // lanes
    assert per_row(cm, SfuFunc.ROPE, 4, heads=32) == 4096
    narrow = CycleModel(dataclasses.replace(cfg, sfu_lanes=2))
    assert per_row(narrow, SfuFunc.SILU, 0) == per_row(narrow, SfuFunc.ROPE, 0, heads=32) \
        == 2048
    assert per_row(narrow, SfuFunc.MUL, 0) == 2048
    assert per_row(narrow, SfuFunc.ADD, 0) == 4096 // lanes


def test_program_overhead_follows_the_memory_latency():
    from sim.cycle_model import CycleModel
    cm = CycleModel(CFG)
    slow = CycleModel(dataclasses.replace(CFG, memory=dataclasses.replace(
        CFG.memory, read_latency=CFG.memory.read_latency + 10)))
    assert slow.program_overhead() - cm.program_overhead() == 10


def _shape_key(n, k, wf, group):
    return f"{n}x{k}_{wf}_g{group}"


def _compile(tmp, config, n, k, wf, group):
    from compiler.linear import compile_linear
    gen = torch.Generator().manual_seed(n * 7919 + k)
    w, b = torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    path = tmp / _shape_key(n, k, wf, group)
    compile_linear(w, b, config, path, wformat=wf, group=group, out_format="int8", seed=0)
    return load_folder(path, config)


def _run_all(tmp, shapes):
    """Compile ``shapes``, run them on RTL (one process, no stalls) and on the ISA sim."""
    from airfoil.cli.backend_rtl import emit_core
    from sim.isa_sim import run_isa
    from sim.rtl import RtlCase, run_core

    config = load_config("test")
    folders, cases = {}, []
    for p in shapes:
        n, k, wf, group = p.values
        f = _compile(tmp, config, n, k, wf, group)
        folders[p.id] = f
        spec = f.manifest["output"]
        nbytes = f.n * np.dtype(OUT_DTYPES[f.out_bits]).itemsize
        cases.append(RtlCase(program=f.program.to_bytes(), image=bytes(f.image_with_input()),
                             stall=0.0, read_back={"out": (int(spec["addr"]), nbytes)}))
    core = emit_core(config, "build")
    runs = run_core(verilog=core["sources"], meta=core["meta"], config=config, cases=cases,
                    build_root="build/sim")
    results = {}
    for p, r in zip(shapes, runs):
        f = folders[p.id]
        isa_out, stats = run_isa(f, config)
        dt = np.dtype(OUT_DTYPES[f.out_bits])
        rtl_out = torch.from_numpy(np.frombuffer(r["reads"]["out"], dtype=dt).astype(np.int64))
        results[p.id] = {"rtl": r, "rtl_out": rtl_out, "isa_out": isa_out,
                         "isa_cycles": stats["cycles"]}
    return results


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory):
    return _run_all(tmp_path_factory.mktemp("cycle_model"), SHAPES)


@pytest.fixture(scope="module")
def slow_runs(tmp_path_factory):
    return _run_all(tmp_path_factory.mktemp("cycle_model_slow"), SLOW_SHAPES)


def _check(res):
    r = res["rtl"]
    assert r["done"] and not r["error"], r
    assert torch.equal(res["isa_out"], res["rtl_out"])
    isa, rtl = res["isa_cycles"], r["cycles"]
    err = abs(isa - rtl) / rtl
    assert err <= TOLERANCE, f"ISA {isa} cycles vs RTL {rtl}: error {err:.3f}"


@RTL
@pytest.mark.parametrize("n,k,wf,group", SHAPES)
def test_isa_cycles_match_rtl(default_runs, request, n, k, wf, group):
    _check(default_runs[request.node.callspec.id])


@RTL
@pytest.mark.slow
@pytest.mark.parametrize("n,k,wf,group", SLOW_SHAPES)
def test_isa_cycles_match_rtl_large(slow_runs, request, n, k, wf, group):
    _check(slow_runs[request.node.callspec.id])


@RTL
def test_bench_figure_is_the_relative_error(tmp_path):
    """The bench code at a small shape: the figure is |isa - rtl| / rtl of that run."""
    from sim.measure.model_error import measure_model_error
    config = load_config("test")
    f = _compile(tmp_path, config, 32, 256, "int4", 64)
    r = measure_model_error(f.path, config, build_dir="build")
    assert r["error"] == abs(r["isa_cycles"] - r["rtl_cycles"]) / r["rtl_cycles"]
    assert r["error"] <= TOLERANCE
