"""Streamed weights (ISA v3): compile, golden and ISA simulator agree bit-exactly.

Covers every record format x N:M pattern (a subset by default, the rest ``slow``),
block skip (pruned to a density of k-steps per record), per-record mixed formats, odd
shapes, several seeds, the cycle cost of a streamed MV,
the compiler's one-line errors and the simulator's refusal of malformed STREAM programs.
"""

import dataclasses
import math
import random

import numpy as np
import pytest
import torch

from airfoil.config import load_config
from airfoil.errors import CompileError, ProgramError
from airfoil.folder import load_folder
from airfoil.formats import fp16_fixed, linear_reference
from airfoil.isa import (_TABLES, Buffer, ErrorCode, Opcode, OutFormat, SfuFunc, Sparsity,
                         SysOp, Unit, WeightFormat, encode)
from airfoil.packing import (BITMOD_TAGS, MIXED_PRESETS, NM_PATTERNS, RecordTag,
                             core_stream_geometry, nm_code, nm_kept, pack_tensor,
                             quantize_stream, read_records)
from airfoil.sparsity import is_nm
from clitools import cli_fails, cli_ok
from compiler import linear
from compiler.linear import compile_linear
from compiler.llm_recipe import layer_rule
from sim.cycle_model import STREAM_LATENCY, stream_matrix_work
from sim.golden import layer_tensors, run_golden
from sim.isa_sim import IsaSim, run_isa
from sim.tb_decode.stimulus import bitmod_layer

CFG = load_config("test_decode")
FORMATS = ["int2", "int3", "int4", "int8", "ovp"]
PATTERNS = ["dense", "2:4", "1:4", "2:8", "4:16", "8:16"]
#: (format, sparsity) pairs of the default run; the rest of the grid is marked slow.
FAST = {("int4", p) for p in PATTERNS} | {(f, "dense") for f in FORMATS} | \
    {("int2", "2:4"), ("int3", "1:4"), ("int8", "2:8"), ("int2", "8:16"), ("int3", "4:16")}


def _weights(seed, n, k, outliers=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * (0.5 + torch.rand(n, 1, generator=g))
    if outliers:        # a few large weights per row: where OVP4 wins over INT4
        idx = torch.randint(0, k, (n, max(1, k // 64)), generator=g)
        w.scatter_(1, idx, 12.0 * torch.sign(torch.randn(idx.shape, generator=g)))
    return w


def _shape(seed, group):
    rng = random.Random(seed * 31 + group)
    n = rng.choice([1, 3, 5, 7, 9]) + CFG.chains * rng.randrange(0, 10)   # odd: not x chains
    k = group * rng.choice([1, 2, 3, 5])
    return n, k


def _check_backends(tmp_path, seed, n, k, bias=False, **kw):
    """Compile, then golden == ISA on the stored input and on a full-range random one."""
    out = tmp_path / "f"
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 7)) if bias else None
    manifest = compile_linear(_weights(seed, n, k, kw.pop("outliers", False)), b, CFG, out,
                              seed=seed, stream=True, **kw)
    folder = load_folder(out, CFG)
    gold = run_golden(folder)
    res, stats = run_isa(folder, CFG)
    assert res.shape == (n,)
    assert torch.equal(res, gold), f"seed={seed} n={n} k={k} {kw}"
    x = torch.randint(-128, 128, (k,), generator=torch.Generator().manual_seed(seed + 1))
    res2, _ = run_isa(folder, CFG, x)
    assert torch.equal(res2, run_golden(folder, x)), f"seed={seed} n={n} k={k} {kw}"
    return manifest, folder, stats


def _grid():
    for f in FORMATS:
        for p in PATTERNS:
            if f == "ovp" and p != "dense":
                continue
            marks = () if (f, p) in FAST else (pytest.mark.slow,)
            yield pytest.param(f, p, marks=marks, id=f"{f}-{p}")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("wformat,sparsity", list(_grid()))
def test_format_sparsity_grid(tmp_path, wformat, sparsity, seed):
    group = (32, 64, 128)[seed % 3]
    n, k = _shape(seed, group)
    manifest, folder, stats = _check_backends(tmp_path, seed, n, k, wformat=wformat,
                                              group=group, sparsity=sparsity, bias=seed == 1)
    layer = manifest["model"]["linears"]["linear"]
    tag = "ovp4" if wformat == "ovp" else wformat
    assert layer["streamed"] and layer["formats"] == {tag: -(-n // CFG.chains) * (k // group)}
    # The image holds exactly what the quantizer produced, pruned to N:M.
    w = _weights(seed, n, k)
    q, s16, _ = quantize_stream(w, group=group, rows=CFG.chains, formats=[wformat],
                                sparsity=sparsity)
    t = layer_tensors(folder)
    assert torch.equal(t["q"], q)
    assert torch.equal(t["scales"].view(torch.int16), s16.view(torch.int16))
    if sparsity != "dense":
        assert is_nm(t["q"], *NM_PATTERNS[nm_code(sparsity)])
    # ... and the golden is the formats arithmetic of those tensors.
    x = folder.read_input(folder.image_with_input())
    ref = linear_reference(q, s16, x, group, layer["k0"], layer["req_m"], layer["req_s"],
                           layer["out_bits"], bias=t["bias"])
    assert torch.equal(run_golden(folder), ref)
    assert (t["bias"] is not None) == layer["bias"] == (seed == 1)
    # one MV per tile, two (bias tile, stream) with a bias
    assert stats["count_matrix"] == len(layer["tiles"]) * (1 + layer["bias"])


@pytest.mark.parametrize("seed", range(3))
def test_bias_rides_in_bias_tiles(tmp_path, seed):
    """The bias in the image is the compiler's rounding of the float bias; the bias tiles'
    weights are zero; golden == ISA; the same layer without bias differs by the bias."""
    n, k = 3 * CFG.chains + 2, 96
    m, folder, stats = _check_backends(tmp_path / "b", seed, n, k, bias=True, wformat="int4",
                                       group=32, sparsity="1:4")
    layer = m["model"]["linears"]["linear"]
    bias = torch.randn(n, generator=torch.Generator().manual_seed(seed + 7)).double()
    want = torch.round(bias / (2.0 ** layer["k0"] * m["input"]["scale"])).to(torch.int64)
    assert torch.equal(layer_tensors(folder)["bias"], want)
    assert all("bias_addr" in t for t in layer["tiles"])
    prog = IsaSim.prepare(folder.program.words)
    assert sum(ins.opcode == Opcode.LD and ins.buf == Buffer.WGT for ins in prog) == \
        len(layer["tiles"])


@pytest.mark.parametrize("seed", range(3))
def test_quantizer_error_is_bounded(seed):
    """Dequantized weights stay close to the (pruned) float weights; tighter with width."""
    w = _weights(seed, 12, 256)
    errs = {}
    for f in ("int2", "int3", "int4", "int8"):
        q, s, _ = quantize_stream(w, group=64, rows=4, formats=f)
        deq = q.double() * s.double().repeat_interleave(64, dim=1)
        errs[f] = float(((deq - w.double()) ** 2).mean() / (w.double() ** 2).mean())
    assert errs["int8"] < 1e-4 < errs["int4"] < errs["int3"] < errs["int2"] < 0.4, errs


@pytest.mark.parametrize("seed", range(3))
def test_mixed_formats_per_record(tmp_path, seed):
    n, k = 4 * CFG.chains + 3, 256
    manifest, folder, _ = _check_backends(tmp_path, seed, n, k, wformat="mixed", group=32,
                                          outliers=True)
    layer = manifest["model"]["linears"]["linear"]
    assert set(layer["formats"]) == {"int4", "ovp4"}, layer["formats"]
    # Per record, the stored format is the one of least squared error.
    w = _weights(seed, n, k, outliers=True)
    _, _, tags = quantize_stream(w, group=32, rows=CFG.chains, formats=["int4", "ovp"])
    errs = []
    for f in ("int4", "ovp"):
        q, s, _ = quantize_stream(w, group=32, rows=CFG.chains, formats=[f])
        d = (q.double() * s.double().repeat_interleave(32, dim=1) - w.double()) ** 2
        d = torch.cat([d, torch.zeros(-n % CFG.chains, k, dtype=torch.float64)])
        errs.append(d.reshape(-1, CFG.chains, k // 32, 32).sum(dim=(1, 3)))
    want = torch.where(errs[1] < errs[0], RecordTag.OVP4.value, RecordTag.INT4.value)
    assert np.array_equal(tags, want.numpy())
    # Three candidates of different widths and a sparsity.
    m2, _, _ = _check_backends(tmp_path / "b", seed, n, k, wformat="mixed", group=64,
                               mixed_formats="int2,int3,int8", sparsity="2:4")
    assert set(m2["model"]["linears"]["linear"]["formats"]) <= {"int2", "int3", "int8"}


def test_streamed_mv_cycles_follow_the_cost_model(tmp_path):
    """One tile: MATRIX busy = max(stream words, k-steps) + STREAM_LATENCY."""
    n, k, group = 2 * CFG.chains + 1, 256, 32
    for sp in ("dense", "2:4", "1:4"):
        m, _, stats = _check_backends(tmp_path / sp.replace(":", "_"), 3, n, k,
                                      wformat="int4", group=group, sparsity=sp,
                                      max_tile_bytes=1 << 20)
        tiles = m["model"]["linears"]["linear"]["tiles"]
        words = sum(t["streams"][0]["nbytes"] for t in tiles) // CFG.word_bytes
        ksteps = -(-n // CFG.chains) * (k // group) * nm_kept(group, nm_code(sp)) // CFG.lanes
        work = sum(stream_matrix_work(t["streams"][0]["nbytes"] // CFG.word_bytes,
                                      -(-t["rows"] // CFG.chains) * (k // group)
                                      * nm_kept(group, nm_code(sp)) // CFG.lanes)
                   for t in tiles)
        assert stats["busy_matrix"] == work + len(tiles) * STREAM_LATENCY, sp
        assert work >= max(words, ksteps) // len(tiles)


def test_sparse_stream_moves_fewer_bytes_and_cycles(tmp_path):
    n, k = 64, 1024
    res = {}
    for sp in ("dense", "2:4"):
        m, _, stats = _check_backends(tmp_path / sp.replace(":", "_"), 5, n, k,
                                      wformat="int4", group=128, sparsity=sp)
        res[sp] = (m["model"]["linears"]["linear"]["stream_bytes"], stats["cycles"], m["model"]["linears"]["linear"])
    bits = res["2:4"][2]["stream_bits"]
    # 2:4 INT4: 2 bits of values and 1 bit of index per weight, scales as dense.
    assert bits["values"] == n * k * 2 and bits["indices"] == n * k
    assert bits["headers"] == res["dense"][2]["stream_bits"]["headers"]
    assert res["2:4"][0] < res["dense"][0] and res["2:4"][1] < res["dense"][1]


def test_default_tile_path_unchanged(tmp_path):
    """Without streaming options the WGT-tile program is emitted, bias included."""
    w = _weights(0, 13, 128)
    m = compile_linear(w, torch.randn(13), CFG, tmp_path / "t", wformat="int4", group=32)
    assert not m["model"]["linears"]["linear"]["streamed"]
    prog = load_folder(tmp_path / "t", CFG).program
    assert all(ins.fields.get("buf") != Buffer.WSTREAM for ins in IsaSim.prepare(prog.words))


@pytest.mark.parametrize("kwargs,message", [
    ({"wformat": "int5", "stream": True}, "format = 'int5' is not supported"),
    ({"wformat": "int4", "sparsity": "3:4"}, "sparsity = '3:4' is not supported"),
    ({"wformat": "ovp", "sparsity": "2:4"}, "ovp weights are dense"),
    ({"wformat": "mixed", "mixed_formats": "int4,fp4"}, "mixed = ['int4', 'fp4'] is not supported"),
    ({"wformat": "mixed", "mixed_formats": ""}, "mixed = [] is not supported"),
    ({"wformat": "int4", "stream": True, "mixed_formats": "int2"}, "apply to wformat 'mixed'"),
    ({"wformat": "int4", "stream": False, "sparsity": "2:4"}, "int4/2:4 needs the decode unit, not WGT tiles"),
    ({"wformat": "int4", "stream": True, "group": 48}, "group size 48"),
    ({"wformat": "int4", "stream": True, "bias": "bad"}, "bias must be a tensor of shape (8,)"),
    ({"wformat": "int4", "sparsity": "1:4", "group": 64, "config": "u280_slice"},
     "kept entries per row ((1, 4)) 16 of group 64 is not a multiple of lanes (32)"),
    ({"wformat": "int4", "stream": True, "config": "test"}, "need the decode unit, which config"),
    ({"wformat": "int4", "sparsity": "2:4", "config": "sim_llm"}, "need the decode unit, which config"),
    # block skip
    ({"wformat": "int4", "sparsity": "block", "block_density": 0.0},
     "density = 0.0 is not supported"),
    ({"wformat": "int4", "sparsity": "block", "block_density": 1.5},
     "density = 1.5 is not supported"),
    ({"wformat": "int4", "sparsity": "2:4", "block_density": 0.5},
     "density applies to sparsity block, not '2:4'"),
    ({"wformat": "int4", "stream": False, "block_density": 0.5},
     "density applies to sparsity block, not 'dense'"),
    ({"wformat": "ovp", "sparsity": "block"}, "ovp weights are dense"),
    ({"wformat": "int4", "sparsity": "block", "config": "no_block"},
     "sparsity 'block' is not built in config"),
    ({"wformat": "int4", "sparsity": "block", "config": "test"}, "need the decode unit, which config"),
])
def test_bad_options_one_line_errors(tmp_path, kwargs, message):
    kw = dict(kwargs)
    bias = torch.randn(9) if kw.pop("bias", False) else None
    name = kw.pop("config", "test_decode")
    cfg = dataclasses.replace(CFG, sparsity=("dense", "2:4")) if name == "no_block" else \
        load_config(name)
    with pytest.raises(CompileError) as e:
        compile_linear(_weights(0, 8, 128), bias, cfg, tmp_path / "x", **kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_stream_options(tmp_path, capsys):
    out = tmp_path / "s"
    text = cli_ok(capsys, ["compile", "--config", "test_decode", "-o", str(out), "--n", "21",
                           "--k", "128", "--group", "32", "--stream", "--sparsity", "2:4",
                           "--no-bias"])
    assert "streamed int4 2:4 g32" in text
    sums = [cli_ok(capsys, ["run", "--backend", b, str(out)]).split("checksum ")[1].split()[0]
            for b in ("torch", "isa")]
    assert sums[0] == sums[1]
    cli_ok(capsys, ["compile", "--config", "test_decode", "-o", str(tmp_path / "m"), "--n", "9",
                    "--k", "64", "--group", "32", "--wformat", "mixed", "--mixed-formats",
                    "int2,int4", "--no-bias"])
    # The built-in layer has a bias: it rides in bias tiles.
    text = cli_ok(capsys, ["compile", "--config", "test_decode", "-o", str(tmp_path / "b"),
                           "--n", "10", "--k", "64", "--group", "32", "--wformat", "int2",
                           "--stream"])
    assert "streamed int2 dense g32" in text
    sums = [cli_ok(capsys, ["run", "--backend", b, str(tmp_path / "b")]).split("checksum ")[1]
            for b in ("torch", "isa")]
    assert sums[0].split()[0] == sums[1].split()[0]
    cli_fails(capsys, ["compile", "--config", "test_decode", "-o", str(tmp_path / "e"),
                       "--sparsity", "2:3", "--no-bias"], "sparsity = '2:3' is not supported")
    cli_fails(capsys, ["compile", "--config", "test_decode", "-o", str(tmp_path / "e"),
                       "--wformat", "ovp", "--no-bias", "--sparsity", "1:4"],
              "ovp weights are dense")


def test_layer_options_are_a_recipe_rule():
    """compile_linear's options become one recipe rule, checked as a recipe's rules are."""
    assert layer_rule(wformat="mixed", stream=True, sparsity="2:4",
                      mixed_formats="int2,int4") == {
        "match": "*", "mixed": ["int2", "int4"], "sparsity": "2:4", "stream": True}
    assert layer_rule(wformat="ovp4") == {"match": "*", "format": "ovp"}
    assert layer_rule(wformat="mixed", mixed_formats="int4,ovp4")["mixed"] == ["int4", "ovp"]
    assert layer_rule(sparsity="block", block_density=0.25) == {
        "match": "*", "sparsity": "block", "density": 0.25}
    with pytest.raises(CompileError, match="stream = 'yes' is not supported"):
        layer_rule(stream="yes")
    with pytest.raises(CompileError, match="density = 'half' is not supported"):
        layer_rule(block_density="half")
    lq = linear.layer_quant(CFG, wformat="int4", stream=True, group=32)
    assert lq.streamed and lq.formats == ("int4",)
    assert linear.layer_quant(CFG, wformat="bitmod3", group=32).formats == \
        tuple(MIXED_PRESETS["bitmod3"])


# -- BitMoD formats ------------------------------------------------------------------------

#: Every BitMoD record format, FP3 first: a record on an FP3 grid is also exact in an FP4
#: variant now and then, and ties go to the earlier candidate.
BITMOD_ALL = [t.name.lower() for t in BITMOD_TAGS if t.name.startswith("FP3")] + \
    [t.name.lower() for t in BITMOD_TAGS if t.name.startswith("FP4")] + ["int6"]


@pytest.mark.parametrize("preset,sparsity,seed", [("bitmod4", "dense", 0),
                                                  ("bitmod3", "2:4", 1),
                                                  ("bitmod4", "2:8", 2)])
def test_bitmod_presets_compile_and_agree(tmp_path, preset, sparsity, seed):
    """bitmod4/bitmod3: torch golden == ISA, the stored records are the quantizer's choice
    among the preset's variants, and more than one variant is used."""
    group = (32, 64, 128)[seed % 3]
    n, k = _shape(seed + 5, group)
    m, folder, _ = _check_backends(tmp_path, seed, n, k, wformat=preset, group=group,
                                   sparsity=sparsity, bias=seed == 0)
    layer = m["model"]["linears"]["linear"]
    assert layer["candidates"] == list(MIXED_PRESETS[preset]) and layer["wformat"] == preset
    w = _weights(seed, n, k)
    q, s16, tags = quantize_stream(w, group=group, rows=CFG.chains, formats=preset,
                                   sparsity=sparsity)
    names, counts = np.unique(tags, return_counts=True)
    assert layer["formats"] == {RecordTag(int(t)).name.lower(): int(c)
                                for t, c in zip(names, counts)}
    assert len(layer["formats"]) > 1
    t = layer_tensors(folder)
    assert torch.equal(t["q"], q) and torch.equal(t["scales"].view(torch.int16),
                                                  s16.view(torch.int16))
    assert layer["weight_mse"] > 0


@pytest.mark.parametrize("sparsity,seed", [("dense", 3), ("2:4", 4)])
def test_every_bitmod_format_in_one_layer(tmp_path, sparsity, seed):
    """A layer whose records sit on the grids of INT6 and every FP4/FP3 variant: with no
    error allowed across widths (``mixed_max_error`` 0, so a record takes the
    narrowest format that holds it exactly) the per-record choice finds each, and torch
    golden == ISA (odd sizes)."""
    n, k, group = 4 * CFG.chains + 3, 9 * 32, 32
    w, names = bitmod_layer(np.random.default_rng(seed), n, k, group=group, rows=CFG.chains,
                            formats=BITMOD_ALL, sparsity=sparsity)
    out = tmp_path / "f"
    m = compile_linear(torch.from_numpy(w), None, CFG, out, seed=seed, wformat="mixed",
                       mixed_formats=",".join(BITMOD_ALL), group=group, sparsity=sparsity,
                       mixed_max_error=0.0)
    layer = m["model"]["linears"]["linear"]
    want = dict(zip(*np.unique(names.astype(str), return_counts=True)))
    assert layer["formats"] == {f: int(c) for f, c in want.items()}
    assert set(layer["formats"]) == set(BITMOD_ALL)
    folder = load_folder(out, CFG)
    gold = run_golden(folder)
    assert torch.equal(run_isa(folder, CFG)[0], gold)
    x = torch.randint(-128, 128, (k,), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run_isa(folder, CFG, x)[0], run_golden(folder, x))


def test_bitmod4_error_below_int4_on_gaussian_weights():
    """The per-record FP4 mixture fits Gaussian weights better than INT4 (same bits)."""
    w = _weights(0, 64, 512)
    err = {}
    for f in ("int4", "bitmod4"):
        q, s, _ = quantize_stream(w, group=128, rows=CFG.chains, formats=f)
        deq = q.double() * s.double().repeat_interleave(128, dim=1)
        err[f] = float(((deq - w.double()) ** 2).mean())
    assert err["bitmod4"] < err["int4"], err


def test_bitmod_format_not_in_config_is_refused(tmp_path):
    cfg = dataclasses.replace(CFG, name="no_fp", weight_formats=("int2", "int4", "int8"))
    assert cfg.decode_unit
    for kw, bad in ((dict(wformat="fp4_er_p"), "fp4_er_p"), (dict(wformat="bitmod3"), "fp3_er_p"),
                    (dict(wformat="int6", stream=True), "int6"),
                    (dict(wformat="mixed", mixed_formats="int4,fp4_ea_n"), "fp4_ea_n")):
        with pytest.raises(CompileError) as e:
            compile_linear(_weights(0, 8, 128), None, cfg, tmp_path / "x", group=32, **kw)
        msg = str(e.value)
        assert f"streamed weight format {bad!r} is not built in config 'no_fp'" in msg, msg
        assert "(accepted: int2, int3, int4, int8, ovp, uint4z)" in msg and "\n" not in msg
    with pytest.raises(CompileError, match="ovp weights are dense"):
        compile_linear(_weights(0, 8, 128), None, CFG, tmp_path / "x", group=32,
                       wformat="mixed", mixed_formats="fp4_er_p,ovp", sparsity="2:4")


def test_cli_bitmod_formats(tmp_path, capsys):
    """The documented commands: --mixed-formats with FP names and the bitmod4 preset,
    run on torch and isa with equal checksums."""
    for name, extra in (("m", ["--wformat", "mixed", "--mixed-formats",
                               "fp4_er_p,fp4_er_n,fp4_ea_p,fp4_ea_n"]),
                        ("p", ["--wformat", "bitmod4"]),
                        ("s", ["--wformat", "bitmod3", "--sparsity", "2:4", "--no-bias"])):
        out = tmp_path / name
        text = cli_ok(capsys, ["compile", "--config", "test_decode", "--stream", "-o",
                               str(out), "--n", "13", "--k", "96", "--group", "32"] + extra)
        assert "streamed" in text and "weight MSE" in text
        sums = [cli_ok(capsys, ["run", "--backend", b, str(out)]).split("checksum ")[1]
                .split()[0] for b in ("torch", "isa")]
        assert sums[0] == sums[1], name
    cli_fails(capsys, ["compile", "--config", "test", "-o", str(tmp_path / "e"), "--wformat",
                       "bitmod4", "--no-bias"], "need the decode unit, which config")


# -- malformed STREAM programs -------------------------------------------------------------

GEOM = core_stream_geometry(CFG)
WB = CFG.word_bytes
STREAM_ADDR = 256


def _stream(rows=CFG.chains, k=64, group=32, seed=0, sparsity="dense"):
    w = _weights(seed, rows, k)
    q, s, tags = quantize_stream(w, group=group, rows=CFG.chains, formats="int4",
                                 sparsity=sparsity)
    return pack_tensor(GEOM, q, s, group=group, tags=tags, sparsity=sparsity), q, s


def _mv(**kw):
    f = dict(wfmt=WeightFormat.STREAM, sparsity=Sparsity.DENSE, group=32, rows=CFG.chains,
             k=64, m=1, abuf_addr=0, obuf_addr=0, k0=-20, req_m=1 << 15, req_s=20,
             out_fmt=OutFormat.INT32, acc_init=1, final=1, bias=0)
    f.update(kw)
    return f


def _ld_stream(nbytes, **kw):
    f = dict(buf=Buffer.WSTREAM, channel=0, buf_addr=0, dram_addr=STREAM_ADDR, nbytes=nbytes,
             count=1, dram_stride=nbytes)
    f.update(kw)
    return encode(Opcode.LD, release=[Unit.MATRIX], **f)


def _run(blob, words):
    image = bytearray(STREAM_ADDR + len(blob) + 256)
    image[STREAM_ADDR:STREAM_ADDR + len(blob)] = blob
    prog = [encode(Opcode.LD, buf=Buffer.ACT, channel=0, buf_addr=0, dram_addr=0, nbytes=64,
                   count=1, dram_stride=64)] + words + [encode(Opcode.SYS, op=SysOp.HALT)]
    sim = IsaSim(CFG, image)
    return sim, sim.run(prog)


def test_hand_program_runs_and_splits_the_stream():
    """Two MVs consume one LD's stream record by record (rows 0..3, then 4..7)."""
    blob, q, s = _stream(rows=2 * CFG.chains)
    _, kexp = fp16_fixed(s)
    k0 = int(kexp.min())
    sim, st = _run(blob, [
        _ld_stream(len(blob)),
        encode(Opcode.MV, wait=[Unit.LOAD], **_mv(k0=k0)),
        encode(Opcode.MV, **_mv(k0=k0, obuf_addr=16)),
    ])
    out = np.frombuffer(sim.buffers[Buffer.OUT], dtype="<i4", count=8)
    x = torch.zeros(64, dtype=torch.int64)          # the image's first 64 bytes are zero
    assert torch.equal(torch.from_numpy(out.astype(np.int64)),
                       linear_reference(q, s, x, 32, k0, 1 << 15, 20, 32))
    x = torch.arange(64) % 7 - 3
    sim2 = IsaSim(CFG, bytearray(STREAM_ADDR + len(blob) + 256))
    sim2.mem.image[:64] = x.numpy().astype(np.int8).tobytes()
    sim2.mem.image[STREAM_ADDR:STREAM_ADDR + len(blob)] = blob
    sim2.run([encode(Opcode.LD, buf=Buffer.ACT, channel=0, buf_addr=0, dram_addr=0, nbytes=64,
                     count=1, dram_stride=64), _ld_stream(len(blob)),
              encode(Opcode.MV, wait=[Unit.LOAD], **_mv(k0=k0, rows=2 * CFG.chains)),
              encode(Opcode.SYS, op=SysOp.HALT)])
    out2 = np.frombuffer(sim2.buffers[Buffer.OUT], dtype="<i4", count=8).astype(np.int64)
    assert torch.equal(torch.from_numpy(out2),
                       linear_reference(q, s, x, 32, k0, 1 << 15, 20, 32))
    # Only the padding of the last word is left in the stream FIFO.
    assert st["count_matrix"] == 2 and len(sim.streams[0]) == WB
    assert read_records(GEOM, bytes(sim.streams[0]), sim.stream_bits[0])[0] == []


def _refused(blob, words, index, *needles):
    with pytest.raises(ProgramError) as e:
        _run(blob, words)
    msg = str(e.value)
    assert e.value.code == ErrorCode.MALFORMED and e.value.index == index, msg
    assert "\n" not in msg and all(n in msg for n in needles), msg


def test_malformed_stream_programs():
    blob, _, _ = _stream()
    nb = len(blob)
    mv = encode(Opcode.MV, wait=[Unit.LOAD], **_mv())
    _refused(blob, [_ld_stream(nb, buf_addr=WB), mv], 1, "buf_addr", "WSTREAM")
    _refused(blob, [_ld_stream(nb, gather=1), mv], 1, "gather")
    _refused(blob, [encode(Opcode.ST, buf=Buffer.WSTREAM, channel=0, buf_addr=0, dram_addr=0,
                           nbytes=WB, count=1, dram_stride=WB)], 1, "WSTREAM")
    _refused(blob, [_ld_stream(nb), encode(Opcode.MV, wait=[Unit.LOAD], **_mv(bias=1))], 2,
             "bias=1")
    _refused(blob, [_ld_stream(nb), encode(Opcode.MV, wait=[Unit.LOAD],
                                           **_mv(group=64))], 2, "group 32", "group field")
    _refused(blob, [_ld_stream(nb), encode(Opcode.MV, wait=[Unit.LOAD], **_mv(k=128))], 2,
             "ran out", "needs 4 records", "2 were loaded")
    _refused(blob, [encode(Opcode.MV, **_mv())], 1, "ran out")
    _refused(bytes([0x10]) + bytes(WB - 1), [_ld_stream(WB), mv], 2, "bad record tag 16")
    _refused(blob, [encode(Opcode.SFU, func=SfuFunc.COPY, src=Buffer.WSTREAM, dst=Buffer.ACT,
                           n=16)], 1, "src=WSTREAM")
    # A sparsity code other than DENSE (raw bits: the enum has no other member yet).
    bits = encode(Opcode.MV, wait=[Unit.LOAD], **_mv())
    off = next(o for key, o, *_ in _TABLES["matrix"] if key == "sparsity")
    _refused(blob, [_ld_stream(nb), bits | 1 << off], 2, "Sparsity")


def test_mm_on_a_stream_reuses_each_record_for_every_vector():
    """MM (m=2) on streamed weights: each vector's result equals its own GEMV; the chains
    take the k-steps once per vector, the stream is read once."""
    blob, q, s = _stream(rows=CFG.chains + 1, k=96, seed=4)
    _, kexp = fp16_fixed(s)
    k0 = int(kexp.min())
    x = torch.randint(-128, 128, (2, 96), generator=torch.Generator().manual_seed(4))
    image = bytearray(STREAM_ADDR + len(blob))
    image[:192] = x.numpy().astype(np.int8).tobytes()
    image[STREAM_ADDR:] = blob
    sim = IsaSim(CFG, image)
    st = sim.run([encode(Opcode.LD, buf=Buffer.ACT, channel=0, buf_addr=0, dram_addr=0,
                         nbytes=192, count=1, dram_stride=192),
                  _ld_stream(len(blob)),
                  encode(Opcode.MM, wait=[Unit.LOAD], **_mv(k0=k0, rows=CFG.chains + 1, k=96,
                                                            m=2, ostride=2)),
                  encode(Opcode.SYS, op=SysOp.HALT)])
    for j in range(2):
        out = np.frombuffer(sim.buffers[Buffer.OUT], dtype="<i4", count=CFG.chains + 1,
                            offset=j * 2 * WB).astype(np.int64)
        assert torch.equal(torch.from_numpy(out),
                           linear_reference(q, s, x[j], 32, k0, 1 << 15, 20, 32)), j
    ksteps = 2 * 3 * 32 // CFG.lanes                 # 2 row batches x 3 groups x 4 steps
    words = len(blob) // WB
    assert st["busy_matrix"] == max(words, 2 * ksteps) + STREAM_LATENCY


def test_golden_refuses_a_damaged_stream(tmp_path):
    out = tmp_path / "d"
    m = compile_linear(_weights(0, 9, 64), None, CFG, out, wformat="int4", group=32,
                       stream=True)
    t0 = m["model"]["linears"]["linear"]["tiles"][0]
    raw = bytearray((out / "weights.bin").read_bytes())
    raw[t0["streams"][0]["addr"]] = 0x10                                  # record tag 16
    (out / "weights.bin").write_bytes(bytes(raw))
    with pytest.raises(CompileError, match="bad record tag 16 at stream bit 0"):
        run_golden(out)
    with pytest.raises(ProgramError, match="MALFORMED: weight stream: bad record tag 16"):
        run_isa(out, CFG)


# -- block skip ----------------------------------------------------------------------------

def _present_steps(q, group):
    """Present k-steps (a nonzero in any of the record's rows, at least one) per record."""
    R, L = CFG.chains, CFG.lanes
    qp = torch.zeros((-(-q.shape[0] // R) * R, q.shape[1]), dtype=torch.int64)
    qp[:q.shape[0]] = q
    nz = (qp.reshape(-1, R, q.shape[1] // group, group // L, L) != 0).any(dim=4).any(dim=1)
    return nz.sum(dim=2).clamp(min=1)


@pytest.mark.parametrize("wformat,density,seed", [
    ("int4", 0.5, 0), ("int2", 0.25, 1), ("int3", 1.0, 2), ("int8", 0.75, 3),
    ("int4", 1.0, 4)])
def test_block_skip_layers(tmp_path, wformat, density, seed):
    """Block-skip layers of odd shapes: golden == ISA; the image holds the quantizer's
    tensors with at most ceil(density * steps) k-steps per record; the stream is the
    present steps only, and each MV's cost counts them."""
    group = (32, 64, 128)[seed % 3]
    n, k = _shape(seed + 10, group)
    m, folder, stats = _check_backends(tmp_path, seed, n, k, wformat=wformat, group=group,
                                       sparsity="block", block_density=density)
    layer = m["model"]["linears"]["linear"]
    w = _weights(seed, n, k)
    q, s16, _ = quantize_stream(w, group=group, rows=CFG.chains, formats=[wformat],
                                sparsity="block", lanes=CFG.lanes, block_density=density)
    t = layer_tensors(folder)
    assert torch.equal(t["q"], q)
    assert torch.equal(t["scales"].view(torch.int16), s16.view(torch.int16))
    steps = group // CFG.lanes
    present = _present_steps(q, group)
    assert int(present.max()) <= math.ceil(density * steps)
    assert int(present.min()) >= 1
    bits = layer["stream_bits"]
    assert bits["values"] == int(present.sum()) * CFG.chains * CFG.lanes * int(wformat[3:])
    assert bits["headers"] == present.numel() * (16 * CFG.chains + 12 + steps)
    assert bits["indices"] == 0
    work = sum(stream_matrix_work(tl["streams"][0]["nbytes"] // CFG.word_bytes, int(_present_steps(
        q[tl["row0"]:tl["row0"] + tl["rows"]], group).sum())) for tl in layer["tiles"])
    assert stats["busy_matrix"] == work + len(layer["tiles"]) * STREAM_LATENCY


def test_block_skip_moves_fewer_bytes_and_cycles(tmp_path):
    n, k = 2 * CFG.chains + 3, 512
    res = {}
    for sp, kw in (("dense", {}), ("block", {"block_density": 0.5})):
        m, _, stats = _check_backends(tmp_path / sp, 5, n, k, wformat="int4", group=128,
                                      sparsity=sp, **kw)
        res[sp] = (m["model"]["linears"]["linear"]["stream_bytes"], stats["cycles"])
    assert res["block"][0] < 0.6 * res["dense"][0], res
    assert res["block"][1] < res["dense"][1], res


def test_block_density_one_skips_only_zero_steps():
    """Density 1 prunes nothing: the steps that quantize to zero are the skipped ones."""
    w = _weights(6, 8, 256)
    w[:4, 16:48] = 0                       # record 0: steps 2..5 of group 0 are zero
    q, _, _ = quantize_stream(w, group=128, rows=4, formats="int4", sparsity="block",
                              lanes=8)
    q0, _, _ = quantize_stream(w, group=128, rows=4, formats="int4")
    assert torch.equal(q, q0)
    assert int(_present_steps(q, 128)[0, 0]) == 16 - 4


def test_cli_block_options(tmp_path, capsys):
    out = tmp_path / "blk"
    text = cli_ok(capsys, ["compile", "--config", "test_decode", "-o", str(out), "--n", "13",
                           "--k", "256", "--group", "64", "--sparsity", "block",
                           "--block-density", "0.5", "--no-bias"])
    assert "streamed int4 block g64" in text
    sums = [cli_ok(capsys, ["run", "--backend", b, str(out)]).split("checksum ")[1].split()[0]
            for b in ("torch", "isa")]
    assert sums[0] == sums[1]
    cli_fails(capsys, ["compile", "--config", "test_decode", "-o", str(tmp_path / "e"),
                       "--sparsity", "block", "--block-density", "2", "--no-bias"],
              "density = 2.0 is not supported")
    cli_fails(capsys, ["compile", "--config", "test_decode", "-o", str(tmp_path / "e"),
                       "--sparsity", "2:4", "--block-density", "0.5", "--no-bias"],
              "density applies to sparsity block, not '2:4'")


def test_isa_refuses_a_record_format_the_config_does_not_decode():
    """An FP4 record on a config whose decode unit is built without the BitMoD formats:
    MALFORMED at the MV, as the unpacker refuses the header."""
    w = _weights(3, CFG.chains, 64)
    q, s, tags = quantize_stream(w, group=32, rows=CFG.chains, formats="fp4_ea_p")
    blob = pack_tensor(GEOM, q, s, group=32, tags=tags)
    narrow = dataclasses.replace(CFG, weight_formats=("int2", "int4", "int8"))
    image = bytearray(STREAM_ADDR + len(blob) + 256)
    image[STREAM_ADDR:STREAM_ADDR + len(blob)] = blob
    prog = [encode(Opcode.LD, buf=Buffer.ACT, channel=0, buf_addr=0, dram_addr=0, nbytes=64,
                   count=1, dram_stride=64), _ld_stream(len(blob)),
            encode(Opcode.MV, wait=[Unit.LOAD], **_mv()), encode(Opcode.SYS, op=SysOp.HALT)]
    with pytest.raises(ProgramError) as e:
        IsaSim(narrow, image).run(prog)
    assert e.value.code == ErrorCode.MALFORMED and e.value.index == 2, e.value
    assert "FP4_EA_P" in str(e.value) and "int8" in str(e.value)
    IsaSim(CFG, image).run(prog)                       # the full config decodes it


# -- calibrated methods on one layer --------------------------------------------------------

@pytest.mark.parametrize("method, sparsity", [("gptq", "dense"), ("sparsegpt", "2:4")])
def test_calibrated_method_on_one_layer(tmp_path, method, sparsity):
    """A recipe's calibrated method runs on one layer (the LLM's quantizer, on the Gram
    matrix of the calibration sample): on correlated inputs its output error is below
    round to nearest's (magnitude pruning's), and the folder runs bit-exactly."""
    gen = torch.Generator().manual_seed(3)
    n, k = 16, 128
    w = torch.randn(n, k, generator=gen)
    mix = torch.randn(k, k, generator=gen) / k ** 0.5 + torch.eye(k)
    calib = torch.randn(256, k, generator=gen) @ mix
    err = {}
    for m in ("rtn", method):
        g = compile_linear(w, None, CFG, tmp_path / m, wformat="int4", group=32,
                           sparsity=sparsity, stream=True, method=m, calib=calib,
                           stop_after="quantize")
        ql = g.qweights["linear"]
        deq = ql.q.double() * ql.scales.double().repeat_interleave(32, dim=1)
        err[m] = float(((calib.double() @ (deq - w.double()).T) ** 2).mean())
    assert err[method] < 0.9 * err["rtn"], err
    compile_linear(w, None, CFG, tmp_path / "f", wformat="int4", group=32, sparsity=sparsity,
                   stream=True, method=method, calib=calib)
    folder = load_folder(tmp_path / "f", CFG)
    assert torch.equal(run_isa(folder, CFG)[0], run_golden(folder))
    with pytest.raises(CompileError, match="method gptq takes one format"):
        compile_linear(w, None, CFG, tmp_path / "x", wformat="mixed", group=32, method="gptq")
