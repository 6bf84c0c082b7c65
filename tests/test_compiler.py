"""Compiler: output folder contents, the golden model against independent arithmetic,
tiling rules, recipes and atomic writes."""

import json

import numpy as np
import re

import pytest
import torch

from airfoil.config import load_config
from airfoil.errors import AirfoilError, CompileError
from airfoil.folder import load_folder
from airfoil.formats import (FORMAT_BITS, act_scale, fp16_fixed, linear_reference,
                             quantize_act, quantize_weights, weight_format)
from airfoil.isa import Buffer, Opcode, decode
from compiler import linear as linear_mod
from compiler.linear import compile_linear
from compiler.llm_recipe import LINEAR_DEFAULT_RECIPE as DEFAULT_RECIPE
from compiler.llm_recipe import load_llm_recipe, parse_llm_recipe
from compiler.passes import llm_pipeline
from sim.golden import layer_tensors, run_golden
from sim.isa_sim import run_isa
from compiler.tiling import WGT_SLOTS

CFG = load_config("test")
U280 = load_config("u280")

MANIFEST_KEYS = {"format", "isa_version", "config", "config_hash", "program", "image",
                 "image_bytes", "channel_offsets", "input", "output", "model"}
LAYER_KEYS = {"n", "k", "k_in", "wformat", "streamed", "group", "k0", "req_m", "req_s",
              "out_bits", "bias", "tiles"}


def _layer(seed, n, k):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 0.05, torch.randn(n, generator=g) * 0.1


@pytest.mark.parametrize("cfg", [CFG, U280], ids=["test", "u280"])
def test_manifest_schema_and_alignment(tmp_path, cfg):
    w, b = _layer(0, 301, 640)
    m = compile_linear(w, b, cfg, tmp_path / "o", wformat="int4", group=128)
    assert set(m) == MANIFEST_KEYS
    assert json.loads((tmp_path / "o" / "manifest.json").read_text()) == m
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == \
        ["manifest.json", "program.afp", "program.s", "weights.bin"]
    assert set(m["model"]) == {"linears"} and set(m["model"]["linears"]) == {"linear"}
    layer = m["model"]["linears"]["linear"]
    assert set(layer) == LAYER_KEYS and layer["streamed"] is False
    assert (layer["n"], layer["k"], layer["wformat"], layer["group"]) == (301, 640, "int4", 128)
    assert m["config_hash"] == cfg.config_hash and m["config"] == cfg.name
    assert m["image_bytes"] == (tmp_path / "o" / "weights.bin").stat().st_size
    wb = cfg.word_bytes
    assert m["input"]["addr"] % wb == 0 and m["output"]["addr"] % wb == 0
    rows = 0
    for t in layer["tiles"]:
        assert t["addr"] % wb == 0 and t["nbytes"] % wb == 0
        assert t["nbytes"] <= cfg.buffers.weight_bytes // 2
        if t["row0"] + t["rows"] < 301:
            assert t["rows"] % cfg.chains == 0
        rows += t["rows"] if t["col0"] == 0 else 0
    assert rows == 301
    prog = load_folder(tmp_path / "o", cfg).program
    ins = [decode(x, i) for i, x in enumerate(prog.words)]
    for i in ins:
        if i.opcode in (Opcode.LD, Opcode.ST):
            for key in ("buf_addr", "dram_addr", "nbytes", "dram_stride"):
                assert i.fields[key] % wb == 0, (i, key)
            assert i.channel < cfg.memory.channels
    assert sum(i.opcode == Opcode.MV for i in ins) == len(layer["tiles"])
    assert sum(i.opcode == Opcode.LD and i.buf == Buffer.ACT for i in ins) == 1
    assert (tmp_path / "o" / "program.s").read_text().count("\n") == len(prog) + 1


@pytest.mark.parametrize("wformat, group, out_format", [
    ("int4", 128, "int8"), ("int8", 32, "int8"), ("int4", 64, "int16"), ("int8", 128, "int32")])
def test_golden_against_independent_arithmetic(tmp_path, wformat, group, out_format):
    """The folder round trip (pack, image, manifest, unpack) loses nothing, and the result
    is the float model of the quantized tensors within the rounding of the output."""
    n, k = 45, 3 * group
    w, b = _layer(7, n, k)
    calib = torch.randn(5, k, generator=torch.Generator().manual_seed(1))
    m = compile_linear(w, b, CFG, tmp_path / "o", wformat=wformat, group=group,
                       out_format=out_format, calib=calib)
    folder = load_folder(tmp_path / "o", CFG)
    # tensors straight from the quantizer, not through the folder
    q, s16 = quantize_weights(w, FORMAT_BITS[weight_format(wformat)], group)
    x_scale = act_scale(calib)
    assert m["input"]["scale"] == x_scale
    x_q = quantize_act(calib[0], x_scale)
    assert torch.equal(folder.default_input(), x_q)
    t = layer_tensors(folder)
    assert torch.equal(t["q"], q) and torch.equal(t["scales"].view(torch.int16),
                                                  s16.view(torch.int16))
    k0 = int(fp16_fixed(s16)[1].min())
    assert m["model"]["linears"]["linear"]["k0"] == k0
    unit = 2.0 ** k0 * x_scale
    bias_q = torch.round(b.double() / unit).long()
    assert torch.equal(t["bias"], bias_q)
    lay = m["model"]["linears"]["linear"]
    out_bits = lay["out_bits"]
    expect = linear_reference(q, s16, x_q, group, k0, lay["req_m"], lay["req_s"], out_bits,
                              bias=bias_q)
    gold = run_golden(folder)
    assert torch.equal(gold, expect)
    # float model of the same quantized tensors: within half an output step (+ the 2**-15
    # relative error of the 16-bit requantization multiplier and float64 rounding)
    wq = q.double().reshape(n, k // group, group) * s16.double().unsqueeze(2)
    y = (wq.reshape(n, k) @ (x_q.double() * x_scale) + bias_q.double() * unit)
    y = y / m["output"]["scale"]
    lo, hi = -(1 << out_bits - 1), (1 << out_bits - 1) - 1
    yc = y.clamp(lo, hi)
    tol = 0.5 + yc.abs().max().item() * 2.0 ** -15 + 1e-6
    assert (gold.double() - yc).abs().max().item() <= tol
    if out_bits == 8:
        # calibrated on the same sample: the stored input's result uses the INT8 range
        assert gold.abs().max() >= 32


def test_k_whole_when_it_fits_else_split(tmp_path):
    w, b = _layer(2, 40, 1024)
    m = compile_linear(w, b, CFG, tmp_path / "a", wformat="int4", group=128)
    assert {(t["col0"], t["cols"]) for t in m["model"]["linears"]["linear"]["tiles"]} == {(0, 1024)}
    m = compile_linear(w, b, CFG, tmp_path / "b", wformat="int4", group=128,
                       max_tile_bytes=1024)
    chunks = sorted({(t["col0"], t["cols"]) for t in m["model"]["linears"]["linear"]["tiles"]})
    assert len(chunks) > 1 and chunks[0][0] == 0
    assert sum(c for _, c in chunks) == 1024 and all(c % 128 == 0 for _, c in chunks)
    assert torch.equal(run_golden(load_folder(tmp_path / "a", CFG)),
                       run_golden(load_folder(tmp_path / "b", CFG)))


def test_plan_respects_buffers():
    for cfg in (CFG, U280):
        for n, k, fmt, ob in ((1000, 1536, "int4", 8), (77, 4096, "int8", 16), (5, 32, "int8", 32)):
            if k > cfg.buffers.act_bytes:
                continue
            plan = linear_mod.plan_linear(n, k, cfg, wformat=fmt, group=32, out_bits=ob,
                                          bias=True)
            assert plan.rows_per_tile % cfg.chains == 0
            assert plan.group_rows % plan.rows_per_tile == 0
            assert (plan.group_rows * ob // 8) % cfg.word_bytes == 0
            assert plan.group_rows * ob // 8 <= cfg.buffers.out_bytes // 2
            assert plan.slots in WGT_SLOTS and plan.slot_bytes % cfg.word_bytes == 0
            assert plan.slots * plan.slot_bytes <= cfg.buffers.weight_bytes
            for t in plan.tiles:
                assert t["layout"].nbytes <= min(plan.slot_bytes,
                                                 cfg.buffers.weight_bytes // 2)
    # small tiles get four WGT slots, big ones two (double buffering)
    kw = dict(wformat="int4", group=128, out_bits=8, bias=True)
    assert linear_mod.plan_linear(1000, 1536, U280, **kw).slots == 4
    assert linear_mod.plan_linear(1000, 1536, CFG, **kw).slots == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(group=48), "group size 48 is not built into config 'test'"),
    (dict(wformat="int2"), "streamed weights (int2) need the decode unit, which config "
                           "'test' lacks"),
    (dict(wformat="int2", stream=False), "int2 needs the decode unit, not WGT tiles"),
    (dict(wformat="fp4"), "format = 'fp4' is not supported"),
    (dict(out_format="int4"), "output format 'int4'"),
])
def test_compile_errors_are_one_line(tmp_path, kwargs, message):
    w, b = _layer(0, 10, 100)
    with pytest.raises(CompileError, match=re.escape(message)) as ei:
        compile_linear(w, b, CFG, tmp_path / "o", **kwargs)
    assert "\n" not in str(ei.value)
    assert not (tmp_path / "o").exists()


def test_k_beyond_act_buffer(tmp_path):
    w, b = _layer(0, 4, 8192)
    with pytest.raises(CompileError, match="ACT buffer"):
        compile_linear(w, b, CFG, tmp_path / "o", group=128)


def test_recipes(tmp_path):
    """One layer reads the recipes a model does: its default, a rule matching the layer,
    the output section; the keyword options override the recipe as one more rule."""
    lq = linear_mod.layer_quant(CFG)
    assert (lq.formats, lq.group, lq.streamed) == (("int4",), 128, False)
    assert load_llm_recipe(DEFAULT_RECIPE).output == "int8"
    recipe = parse_llm_recipe({"weights": [{"match": "*", "format": "int8", "group": 32}],
                               "output": {"format": "int16"}})
    assert linear_mod.layer_quant(CFG, recipe).formats == ("int8",)
    assert linear_mod.layer_quant(CFG, recipe, wformat="int4").group == 32
    w, b = _layer(0, 8, 64)
    m = compile_linear(w, b, CFG, tmp_path / "o", recipe=recipe)
    assert m["output"]["bits"] == 16 and m["model"]["linears"]["linear"]["wformat"] == "int8"
    with pytest.raises(CompileError, match=r"unknown section 'groups' \(accepted: weights"):
        parse_llm_recipe({"weights": [{"match": "*"}], "groups": 32}, "r.yaml")
    with pytest.raises(CompileError, match="group must be a positive integer, not '32'"):
        parse_llm_recipe({"weights": [{"match": "*", "group": "32"}]}, "r.yaml")
    with pytest.raises(CompileError, match=r"output = \{'format': 'int12'\} is not supported"):
        parse_llm_recipe({"weights": [{"match": "*"}], "output": {"format": "int12"}})
    with pytest.raises(CompileError, match="must be a mapping"):
        parse_llm_recipe([1, 2], "r.yaml")
    # A model's recipe has no output section.
    with pytest.raises(CompileError, match="output sets one linear layer's result format"):
        llm_pipeline(recipe)


def test_failed_write_leaves_previous_folder(tmp_path, monkeypatch):
    w, b = _layer(0, 12, 64)
    out = tmp_path / "o"
    compile_linear(w, b, CFG, out, group=32)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(linear_mod, "listing", boom)
    with pytest.raises(RuntimeError):
        compile_linear(w * 2, b, CFG, out, group=32)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]       # no temporary left
    # a fresh path gets no folder at all
    with pytest.raises(RuntimeError):
        compile_linear(w, b, CFG, tmp_path / "new", group=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    w, b = _layer(0, 12, 64)
    with pytest.raises(CompileError, match="not an Airfoil output folder"):
        compile_linear(w, b, CFG, tmp_path / "o", group=32)
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("damage, message", [
    ("manifest.json", "manifest.json is missing"),
    ("weights.bin", "image file 'weights.bin' is missing"),
    ("program.afp", "program file 'program.afp' is missing"),
])
def test_missing_files(tmp_path, damage, message):
    w, b = _layer(0, 12, 64)
    compile_linear(w, b, CFG, tmp_path / "o", group=32)
    (tmp_path / "o" / damage).unlink()
    with pytest.raises(AirfoilError, match=message):
        load_folder(tmp_path / "o", CFG)


def test_corrupt_manifest_and_truncated_image(tmp_path):
    w, b = _layer(0, 12, 64)
    compile_linear(w, b, CFG, tmp_path / "o", group=32)
    img = tmp_path / "o" / "weights.bin"
    img.write_bytes(img.read_bytes()[:-16])
    with pytest.raises(AirfoilError, match="truncated"):
        load_folder(tmp_path / "o", CFG)
    (tmp_path / "o" / "manifest.json").write_text("{not json")
    with pytest.raises(AirfoilError, match="not valid JSON"):
        load_folder(tmp_path / "o", CFG)


def test_input_helpers(tmp_path):
    w, b = _layer(0, 12, 64)
    compile_linear(w, b, CFG, tmp_path / "o", group=32)
    f = load_folder(tmp_path / "o", CFG)
    x = torch.arange(-32, 32)
    img = f.image_with_input(x)
    assert torch.equal(f.read_input(img), x) and not torch.equal(f.default_input(), x)
    with pytest.raises(AirfoilError, match="K=64"):
        f.image_with_input(torch.zeros(63, dtype=torch.int64))
    with pytest.raises(AirfoilError, match="outside INT8"):
        f.image_with_input(torch.full((64,), 200))
    with pytest.raises(AirfoilError, match="integers"):
        f.image_with_input(np.zeros(64))


@pytest.mark.parametrize("kwargs", [dict(wformat="int4"), dict(wformat="int8", bias=False),
                                    dict(wformat="int2", stream=True)])
def test_k_not_a_multiple_of_the_group_is_padded(tmp_path, kwargs):
    """A K of 100 with groups of 32 is padded to 128 with zero columns (the input with
    zeros): the folder keeps the layer's 100 inputs, golden and ISA simulator agree
    bit-exactly, and the result is the 100-input layer's."""
    kw = dict(kwargs)
    cfg = load_config("test_decode") if kw.get("stream") else CFG
    w, b = _layer(0, 10, 100)
    if not kw.pop("bias", True):
        b = None
    m = compile_linear(w, b, cfg, tmp_path / "o", group=32, **kw)
    lin = m["model"]["linears"]["linear"]
    assert (lin["k"], lin["k_in"], m["input"]["shape"]) == (128, 100, [100])
    folder = load_folder(tmp_path / "o", cfg)
    x = torch.randint(-128, 128, (100,), generator=torch.Generator().manual_seed(1))
    for xi in (None, x):
        assert torch.equal(run_isa(folder, cfg, xi)[0], run_golden(folder, xi))
    t = layer_tensors(folder)
    assert not t["q"][:, 100:].any()
