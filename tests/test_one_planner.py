"""The single-layer compiler and the LLM lowering plan, pack and schedule a linear layer
with one implementation (:mod:`compiler.tiling`, :mod:`compiler.streams`,
:mod:`compiler.schedule`, :mod:`compiler.lower_linear`): the same layer compiled both
ways gets the same tiles, the same bytes in the image and the same tile instructions."""

import pytest
import torch

from airfoil.config import load_config
from airfoil.errors import CompileError
from airfoil.folder import load_folder
from airfoil.formats import weight_format
from airfoil.isa import Buffer, Opcode
from compiler import linear, lower_linear, lower_llm, schedule, streams, tiling
from compiler.ir import build_llama_graph
from compiler.linear import compile_linear
from compiler.llm_recipe import parse_llm_recipe
from compiler.lower_llm import compile_llm
from compiler.passes import llm_pipeline, quantized_model
from sim.isa_sim import run_isa
from llmtools import random_llama

#: Four vocabulary rows: the head is one row block of the 4-chain engines in both paths.
VOCAB = 4


def _both(tmp_path, config_name, fmt):
    """The LLM folder of a tiny model whose head is ``fmt`` g32, and the single-layer
    folder of the same head weights (no bias, INT32 results, tiles as large as the LLM
    folder's WGT slots)."""
    cfg = load_config(config_name)
    m = random_llama(heads=2, kv=1, hd=32, vocab=VOCAB, inter=96, layers=1, max_pos=16)
    recipe = {"weights": [{"match": "*", "format": "int4", "group": 32},
                          {"match": "lm_head", "format": fmt}]}
    graph = llm_pipeline(parse_llm_recipe(recipe), cfg).run(
        build_llama_graph(m.shape, m.hf_state_dict()))
    compile_llm(quantized_model(graph), cfg, tmp_path / "llm")
    llm = load_folder(tmp_path / "llm", cfg)
    head = graph.params["lm_head.weight"]
    compile_linear(head, None, cfg, tmp_path / "one", wformat=fmt, group=32,
                   out_format="int32", max_tile_bytes=llm.manifest["model"]["wgt_slot_bytes"])
    return cfg, llm, load_folder(tmp_path / "one", cfg)


def _boxes(tiles):
    return [(t["row0"], t["rows"], t["col0"], t["cols"]) for t in tiles]


def _tile_mvs(program, streamed):
    """The shape fields of a program's matrix instructions of weight tiles (streamed or
    WGT tiles; not bias tiles)."""
    return [{key: i.fields[key] for key in ("wfmt", "sparsity", "group", "rows", "k",
                                            "acc_init", "final")}
            for i in program.instructions()
            if i.opcode in (Opcode.MV, Opcode.MM) and (i.wfmt.name == "STREAM") == streamed
            and not i.bias]


def test_one_implementation():
    """Both compilers import the planner, the stream packer and the scheduler from one
    place (no copy kept equal)."""
    shared = {tiling: ("TiledLayer", "plan_layer_slots", "stream_rows", "tile_boxes"),
              streams: ("place_stream_block", "wgt_tile_layout", "pack_wgt_tile"),
              schedule: ("Scheduler",),
              lower_linear: ("lower_linear", "Arithmetic", "Vectors", "Loading")}
    for module, names in shared.items():
        for name in names:
            assert getattr(linear, name) is getattr(lower_llm, name) is \
                getattr(module, name), name
    for name in ("_rows_per_tile", "MAX_WGT_SLOTS", "plan_wgt_slots", "plan_wgt_tiles",
                 "row_block", "wgt_tiles_cycles", "check_stream_args"):
        assert not hasattr(linear, name), name
    for name in ("_stream_rows", "_tile_bytes", "plan_wgt_slots", "row_block"):
        assert not hasattr(lower_llm, name), name
    assert not hasattr(lower_llm, "_Scheduler")
    # One lowering of a linear node: neither compiler emits a tile's instructions itself.
    for module in (linear, lower_llm):
        for name in ("load_wgt_tile", "wgt_tile_fields", "load_stream_block",
                     "stream_block_fields"):
            assert not hasattr(module, name), (module.__name__, name)
    # The recipe: one reader and one check of a layer against the config for both.
    assert linear.check_layer_config is lower_llm.check_layer_config
    for module in (linear, lower_llm):
        assert not hasattr(module, "WGT_SLOTS") and not hasattr(module, "wgt_slots")


def test_same_tiles_bytes_and_instructions_of_a_wgt_layer(tmp_path):
    cfg, llm, one = _both(tmp_path, "sim_llm", "int8")
    head = llm.manifest["model"]["linears"]["lm_head"]
    layer = one.manifest["model"]["linears"]["linear"]
    assert _boxes(layer["tiles"]) == _boxes(head["tiles"])
    for a, b in zip(layer["tiles"], head["tiles"]):
        assert a["nbytes"] == b["nbytes"]
        assert one.image[a["addr"]:a["addr"] + a["nbytes"]] == \
            llm.image[b["addr"]:b["addr"] + b["nbytes"]]
    # The tile's loads and matrix instruction: the same slices and the same shape.
    single = _tile_mvs(one.program, False)
    assert single and single == _tile_mvs(llm.phase_program("decode"), False)[-len(single):]
    loads = [i.nbytes for i in one.program.instructions()
             if i.opcode == Opcode.LD and i.buf == Buffer.WGT]
    assert sum(loads) == sum(t["nbytes"] for t in head["tiles"])


def test_same_records_of_a_streamed_layer(tmp_path):
    cfg, llm, one = _both(tmp_path, "sim_llm_decode", "int3")
    head = llm.manifest["model"]["linears"]["lm_head"]
    layer = one.manifest["model"]["linears"]["linear"]
    assert head["streamed"] and layer["streamed"]
    assert _boxes(layer["tiles"]) == _boxes(head["tiles"])
    offsets = one.manifest["channel_offsets"]
    for a, b in zip(layer["tiles"], head["tiles"]):
        for sa, sb in zip(a["streams"], b["streams"], strict=True):
            assert sa["nbytes"] == sb["nbytes"]
            at = offsets[sa["channel"]] + sa["addr"]
            assert one.image[at:at + sa["nbytes"]] == \
                llm.image[sb["addr"]:sb["addr"] + sb["nbytes"]]
    single = _tile_mvs(one.program, True)
    assert single and single == _tile_mvs(llm.phase_program("decode"), True)[-len(single):]


@pytest.mark.parametrize("n, k, slot", [(40, 1024, 1024), (13, 256, 4096), (300, 64, 512)])
def test_planner_keeps_tiles_within_the_slot(n, k, slot):
    """Every tile fits the slot; the tiles cover the layer once, in row blocks of whole
    chains and K chunks of whole groups."""
    def size(rows, cols):
        return rows * cols // 2 + rows * cols // 32 * 2
    boxes, rows, cols = tiling.plan_wgt_tiles(n, k, 4, 32, size, slot)
    assert rows % 4 == 0 and (cols == k or cols % 32 == 0)
    assert all(size(r, c) <= slot for _, r, _, c in boxes)
    assert size(rows + 4, cols) > slot or rows >= n
    cover = torch.zeros(n, k, dtype=torch.int64)
    for r0, r, c0, c in boxes:
        cover[r0:r0 + r, c0:c0 + c] += 1
    assert bool((cover == 1).all())


@pytest.mark.parametrize("config_name, kw", [
    ("test", dict(wformat="int4", group=32)),
    ("test_decode", dict(wformat="int2", group=32)),
])
def test_each_step_is_what_the_folder_holds(tmp_path, config_name, kw):
    """The one-node graph after each step holds what the folder is made of: the quantized
    weights, the scales, the tiles, the image and the program; no step before ``emit``
    writes anything."""
    cfg = load_config(config_name)
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(24, 128, generator=g) * 0.05, torch.randn(24, generator=g)
    out = tmp_path / "out"
    steps = {s: compile_linear(w, b, cfg, out, stop_after=s, **kw)
             for s in linear.LINEAR_STEPS[:-1]}
    assert not out.exists()
    manifest = compile_linear(w, b, cfg, out, **kw)
    folder = load_folder(out, cfg)
    assert [n.op for n in steps["validate"].nodes] == ["linear"]
    layer = manifest["model"]["linears"]["linear"]
    ql = steps["quantize"].qweights["linear"]
    assert ql.shape == (24, 128) and ql.group == 32
    scales = steps["calibrate"].meta["scales"]
    assert {key: layer[key] for key in ("k0", "req_m", "req_s")} == \
        {key: scales[key] for key in ("k0", "req_m", "req_s")}
    assert manifest["input"]["scale"] == scales["x_scale"]
    assert _boxes(steps["plan"].meta["plan"].tiles) == _boxes(layer["tiles"])
    assert steps["pack"].meta["image"] == bytes(folder.image)
    assert steps["schedule"].meta["words"] == folder.program.words


def test_cli_stop_after(tmp_path, capsys):
    from clitools import cli_fails, cli_ok
    out = tmp_path / "out"
    text = cli_ok(capsys, ["compile", "--n", "16", "--k", "64", "--group", "32",
                           "--stop-after", "plan", "-o", str(out)])
    assert text.startswith("plan: 4 tiles of up to 4 rows x 64 of K")
    text = cli_ok(capsys, ["compile", "--n", "16", "--k", "64", "--group", "32",
                           "--stop-after", "schedule", "-o", str(out)])
    assert "SYS" in text.splitlines()[-1] and not out.exists()
    cli_fails(capsys, ["compile", "--stop-after", "lower", "-o", str(out)],
              "--stop-after 'lower' is not a step of a linear layer's compile (accepted: "
              "validate, quantize")


def test_arithmetic_options():
    """The one lowering's arithmetic: static scales carry the layer's requantization and
    output width; per-token ones the scale pairs' address, INT32 results and no tile
    bias (a tile's bias in accumulator units would differ per token)."""
    from airfoil.isa import OutFormat
    from compiler.lower_linear import Arithmetic
    static = Arithmetic(32, -9, 16, req_m=1234, req_s=20, bias="tiles").fields()
    assert static == {"group": 32, "k0": -9, "out_fmt": OutFormat.INT16, "req_m": 1234,
                      "req_s": 20}
    per_token = Arithmetic(32, -9, per_token=True, scales=0x40, bias="sfu").fields()
    assert per_token["tok_scale"] == 1 and per_token["sbuf_addr"] == 0x40
    assert per_token["out_fmt"] == OutFormat.INT32 and per_token["req_m"] == 0
    for bad in (dict(per_token=True, bias="tiles"), dict(per_token=True, out_bits=8),
                dict(out_bits=4), dict(bias="rows")):
        with pytest.raises(CompileError):
            Arithmetic(32, 0, **bad)


def test_one_slot_policy():
    """Both compilers split the WGT buffer by one rule: the slot count whose tiles take the
    fewest cycles in the cycle model's estimate, then the fewest tiles, then the most
    slots. A 77 x 4096 INT8 layer on config test is 100 tiles in 4 slots, 80 in 3 and 60
    in 2: the 2 slots' big tiles cannot load while the other computes, the 4 slots' pay
    the MATRIX unit's drain 20 times more than the 3 slots', which it takes."""
    cfg = load_config("test")
    plan = linear.plan_linear(77, 4096, cfg, wformat="int8", group=32, out_bits=8, bias=True)
    assert (plan.slots, len(plan.tiles)) == (3, 80)
    assert plan.slot_bytes == tiling.slot_bytes(cfg, 3)
    for estimates, slots in ((((100, 32), (90, 16), (90, 16)), 3),     # fewest cycles
                             (((90, 32), (90, 16), (90, 16)), 3),      # then fewest tiles
                             (((90, 16), (90, 16), (90, 16)), 4),      # then most slots
                             (((80, 32), (90, 24), (100, 16)), 4),     # cycles over tiles
                             (((100, 32), (100, 24), (100, 16)), 2)):
        by_size = {tiling.slot_bytes(cfg, s): e for s, e in zip(tiling.WGT_SLOTS, estimates)}
        estimate = lambda s, size: by_size[size]     # noqa: E731
        assert tiling.plan_wgt_slots(cfg, 1, estimate) == (slots, tiling.slot_bytes(cfg, slots))
    with pytest.raises(CompileError, match="does not fit half the WGT buffer"):
        tiling.plan_wgt_slots(cfg, tiling.slot_bytes(cfg, 2) + 1, estimate)


def test_slot_estimate_ranks_as_the_isa_simulator(tmp_path):
    """The estimate of :func:`compiler.tiling.wgt_tiles_cycles` orders the slot counts of a
    layer as the ISA simulator's runs of the programs compiled with each do."""
    cfg, int8 = load_config("test"), weight_format("int8")
    torch.manual_seed(0)
    weight, bias = torch.randn(77, 4096), torch.randn(77)
    kw = dict(wformat="int8", group=32, out_bits=8, bias=True)
    estimated, simulated = {}, {}
    for slots in tiling.WGT_SLOTS:
        size = tiling.slot_bytes(cfg, slots)
        forced = lambda config, need, estimate, s=slots, size=size: (s, size)  # noqa: E731
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tiling, "plan_wgt_slots", forced)
            plan = linear.plan_linear(77, 4096, cfg, **kw)
            compile_linear(weight, bias, cfg, tmp_path / str(slots), wformat="int8",
                           group=32, out_format="int8")
        boxes = [(t["row0"], t["rows"], t["col0"], t["cols"]) for t in plan.tiles]
        estimated[slots] = tiling.wgt_tiles_cycles(
            cfg, boxes, lambda rows, cols: streams.wgt_tile_layout(
                cfg, rows, cols, group=32, wfmt=int8, bias=True).nbytes,
            slots, k=4096, wfmt=int8, group=32, bias=True)
        _, stats = run_isa(load_folder(tmp_path / str(slots), cfg), cfg)
        simulated[slots] = stats["cycles"]
    assert sorted(estimated, key=estimated.get) == sorted(simulated, key=simulated.get)
    assert linear.plan_linear(77, 4096, cfg, **kw).slots == min(simulated, key=simulated.get)
