"""Calibrated quantization: the methods against round to nearest, the AWQ fold, the bits
budget, the compiled calibrated model against the ISA simulator, and bad input."""

from pathlib import Path

import pytest
import torch

from airfoil.config import load_config
from airfoil.errors import CompileError
from airfoil.folder import load_folder
from airfoil.formats import quantize_weights
from clitools import cli_fails, cli_ok
from compiler.backends import execute
from compiler.bits_budget import budget_bits, choose, layer_weight_bits
from compiler.calibrate import WINDOW, calibration_tokens
from compiler.ir import build_llama_graph
from compiler.llm_recipe import LayerQuant, parse_llm_recipe
from compiler.lower_llm import compile_llm
from compiler.passes import FoldAttentionScale, llm_pipeline, quantized_model
from compiler.quant_algorithms import (awq_scales, format_spec, gptq, output_error, rtn,
                                       sparsegpt)
from compiler.tokenizer import ByteTokenizer
from llmtools import random_llama, write_hf_folder
from sim.golden_llm import GoldenLLM, golden_from_folder
from sim.isa_sim import IsaLLM

VOCAB = 64


def _layer(n=48, k=256, tokens=1024, seed=0):
    """A random layer and the Gram matrix of correlated inputs whose channels differ in
    scale by up to e**2 (as an LLM's do)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(k, dtype=torch.float64) + 2 * torch.randn(k, k, generator=g,
                                                              dtype=torch.float64) / k ** 0.5
    scale = torch.exp(torch.randn(k, generator=g, dtype=torch.float64))
    x = (torch.randn(tokens, k, generator=g, dtype=torch.float64) @ mix) * scale
    w = torch.randn(n, k, generator=g, dtype=torch.float64) * 0.1
    return w, x.T @ x


@pytest.mark.parametrize("fmt", ["int4", "int3", "fp3_er_p"])
def test_methods_lower_the_output_error(fmt):
    w, H = _layer()
    spec = format_spec(fmt)
    err = lambda r: output_error(w, r.dequantize(128), H)
    base = err(rtn(w, H, spec, 128))
    assert err(gptq(w, H, spec, 128)) < 0.5 * base
    s = awq_scales([w], H, spec, 128)
    assert output_error(w, rtn(w * s, H, spec, 128).dequantize(128) / s, H) < 0.9 * base
    pruned = err(rtn(w, H, spec, 128, (2, 4)))
    sp = sparsegpt(w, H, spec, 128, (2, 4))
    assert err(sp) < 0.5 * pruned
    keep = sp.keep.reshape(w.shape[0], -1, 4)
    assert bool((keep.sum(-1) == 2).all()) and bool((sp.values[~sp.keep] == 0).all())


def test_rtn_is_the_quantizer_and_keeps_its_scales():
    w, H = _layer()
    q, s = quantize_weights(w, 4, 128)
    r = rtn(w, H, format_spec("int4"), 128)
    assert torch.equal(r.values, q) and torch.equal(r.scales, s)
    for f in (gptq, sparsegpt):                 # static groups: the RTN scales
        assert torch.equal(f(w, H, format_spec("int4"), 128).scales, s)
    with pytest.raises(CompileError, match="weight pairs"):
        format_spec("ovp")


def _model(seed=0, layers=2):
    m = random_llama(heads=4, kv=2, hd=16, vocab=VOCAB, inter=128, layers=layers,
                     max_pos=64, seed=seed)
    return build_llama_graph(m.shape, m.hf_state_dict())


def _windows(n=256, seed=3):
    toks = torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))
    return [toks[i:i + 32] for i in range(0, n, 32)]


def _recipe(method, fmt="int4", group=32, sparsity="dense", **extra):
    return parse_llm_recipe({"weights": [{"match": "*", "format": fmt, "group": group,
                                          "method": method, "sparsity": sparsity}], **extra})


def test_awq_fold_keeps_the_float_model():
    """Scaling the inputs and folding 1/s into norms, up and v changes no float output."""
    from compiler.calibrate import ActivationAwareScale, Calibrate
    g = FoldAttentionScale().apply(_model())
    c = Calibrate(_windows()).apply(g)
    a = ActivationAwareScale(_recipe("awq")).apply(c)
    assert len(a.meta["awq_scaled"]) == 4 * 2 + 1          # qkv, o, gate/up, down; head
    moved = [n for n in a.by_op("linear") if n.attrs["weight"] != c.node(n.name).attrs["weight"]]
    assert len(moved) == len(a.by_op("linear"))
    x = _windows()[0]
    want, got = execute(g, x), execute(a, x)
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())
    assert not torch.equal(a.params["model.layers.0.input_layernorm.weight"],
                           g.params["model.layers.0.input_layernorm.weight"])


@pytest.mark.parametrize("method,fmt,sparsity,config", [
    ("gptq", "int4", "dense", "sim_llm"), ("awq", "int4", "dense", "sim_llm"),
    ("sparsegpt", "int4", "2:4", "sim_llm_decode"),          # streamed through the decode unit
    ("gptq", "int3", "dense", "sim_llm_decode")])
def test_calibrated_model_compiles_bit_exact(tmp_path, method, fmt, sparsity, config):
    recipe = parse_llm_recipe({"weights": [{"match": "*", "format": fmt, "group": 32,
                                            "method": method, "sparsity": sparsity}]})
    q = llm_pipeline(recipe, calibration=_windows()).run(_model())
    base = llm_pipeline(_recipe("rtn", fmt, sparsity=sparsity)).run(_model())
    qm = quantized_model(q)
    assert not torch.equal(qm["layers"][0]["q"].q, quantized_model(base)["layers"][0]["q"].q)
    cfg = load_config(config)
    compile_llm(qm, cfg, tmp_path / "m")
    folder = load_folder(tmp_path / "m", cfg)
    gold, isa = GoldenLLM(golden_from_folder(folder)), IsaLLM(folder, cfg)
    prompt = _windows()[1][:folder.manifest["model"]["max_prompt"]].tolist()
    want, got = gold.prefill(prompt), isa.prefill(prompt)
    assert torch.equal(got, want)
    tok = int(torch.argmax(want[-1]))
    for _ in range(3):
        want, got = gold.decode(tok), isa.decode(tok)
        assert torch.equal(got, want)
        tok = int(torch.argmax(want))


def test_bits_budget_meets_the_budget(tmp_path):
    lines = []
    q = llm_pipeline(_recipe("gptq"), calibration=_windows(), bits_budget=5.0,
                     log=lines.append).run(_model())
    b = q.meta["budget"]
    plan = {L["layer"]: L["format"] for L in b["layers"]}
    assert set(plan.values()) == {"int4", "int8"}          # the budget mixes both
    assert b["reached"] <= 5.0 and b["reached"] == pytest.approx(
        budget_bits(q, {n: _lq(f) for n, f in plan.items()}))
    assert len(lines) == len(plan) + 1 and "bits budget 5" in lines[-1]
    # The image holds what the budget counted (tiles of whole rows, no padding here).
    cfg = load_config("sim_llm")
    man = compile_llm(quantized_model(q), cfg, tmp_path / "m", max_prompt=8)
    lin = man["model"]["linears"]
    image_bits = sum(8 * t["nbytes"] for name, v in lin.items() if name != "lm_head"
                     for t in v["tiles"])
    weights = sum(v["n"] * v["k"] for name, v in lin.items() if name != "lm_head")
    assert image_bits / weights <= 5.0
    with pytest.raises(CompileError, match="over the budget"):
        llm_pipeline(_recipe("gptq"), calibration=_windows(), bits_budget=4.0).run(_model())


def test_bits_budget_counts_the_widths_mixed_records_took_and_calibrates_once():
    """A ``mixed`` budget candidate costs the widths its records chose (what the image
    holds, word padding aside), not its widest; the chosen calibrated weights go to
    ``quantize`` as made, so the calibration statistics are computed once: a pass per
    decoder layer and the head, as without a budget."""
    from compiler.bits_budget import quantized_code_bits
    from compiler.passes import StreamShape, quantize_linear
    from compiler.streams import stream_bits
    from airfoil.packing import StreamGeometry
    lq = LayerQuant(("int2", "int4", "int8"), 32, mixed_max_error=0.01)
    w = torch.randn(8, 256, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ql = quantize_linear(w, lq, StreamShape(4, 8))
    widths = quantized_code_bits(ql)
    assert set(widths.unique().tolist()) == {4, 8}
    geom = StreamGeometry(word_bits=128, lanes=8, rows=4)
    records = stream_bits(geom, ql.formats[::4].numpy(), 32, 0, 8)
    assert layer_weight_bits(lq, 8, 256, 4, widths) == sum(records.values())
    assert layer_weight_bits(lq, 8, 256, 4, widths) < layer_weight_bits(lq, 8, 256, 4)

    mixed = {"mixed": ["int2", "int4", "int8"], "mixed_max_error": 0.01}
    recipe = _recipe("gptq", budget={"bits": 8.0, "candidates": [{"format": "int8"}, mixed]})
    stats = {}
    q = llm_pipeline(recipe, calibration=_windows()).run(
        _model(), after_step=lambda step, g: stats.setdefault(step, g.meta.get("calibration")))
    b = q.meta["budget"]
    layers = {n.attrs["layer"]: n for n in q.by_op("linear")}
    assert {r["format"] for r in b["layers"]} == {"int8", "mixed(int2,int4,int8)"}
    for r in b["layers"]:
        n, k = q.params[layers[r["layer"]].attrs["weight"]].shape
        got = q.qweights[layers[r["layer"]].name]
        assert r["bits"] == layer_weight_bits(q.meta["plan"][r["layer"]], n, k, 4,
                                              quantized_code_bits(got))
    assert b["reached"] == pytest.approx(budget_bits(q, q.meta["plan"])) and b["reached"] <= 8
    assert stats["calibrate"].runs == q.shape.num_hidden_layers + 1
    with pytest.raises(CompileError, match=r"budget.candidates\[0\].mixed_max_error applies "
                                           r"to a mixed candidate of several widths"):
        _recipe("rtn", budget={"bits": 4, "candidates": [{"mixed": "bitmod4",
                                                          "mixed_max_error": 0.1}]})


def _lq(fmt):
    from compiler.llm_recipe import LayerQuant
    return LayerQuant((fmt,), 32)


def test_greedy_choice_spends_on_the_most_loss_per_bit():
    costs = {"a": {"lo": 4, "hi": 8}, "b": {"lo": 4, "hi": 8}}
    losses = {"a": {"lo": 1.0, "hi": 0.0}, "b": {"lo": 3.0, "hi": 0.5}}
    assert choose(costs, losses, 12) == {"a": "lo", "b": "hi"}
    assert choose(costs, losses, 16) == {"a": "hi", "b": "hi"}
    # kept values, 2-bit indices, FP16 scales, a 12-bit header per record (2 groups)
    assert layer_weight_bits(LayerQuant(("int4",), 128, "2:4"), 2, 256) == \
        256 * 4 + 256 * 2 + 2 * 2 * 16 + 2 * 12
    assert layer_weight_bits(LayerQuant(("int4",), 128), 2, 256) == 512 * 4 + 2 * 2 * 16


def test_calibration_tokens_and_recipe_errors(tmp_path):
    tok = ByteTokenizer()
    w = calibration_tokens(tok, default=b"x" * 300, count=200)
    assert [len(t) for t in w] == [WINDOW, 200 - WINDOW]
    with pytest.raises(CompileError, match="--calibration FILE"):
        calibration_tokens(tok)
    with pytest.raises(CompileError, match="needs calibration text"):
        llm_pipeline(_recipe("gptq"))
    with pytest.raises(CompileError, match="method = 'best'"):
        _recipe("best")
    with pytest.raises(CompileError, match="sparsity = '3:5'"):
        parse_llm_recipe({"weights": [{"match": "*", "format": "int4", "group": 32,
                                       "sparsity": "3:5"}]})


def _hf(path):
    path.mkdir()
    return write_hf_folder(path, random_llama(heads=2, kv=1, hd=32, vocab=256, inter=64,
                                              layers=1, max_pos=32))


def test_cli_calibration_file(tmp_path, capsys):
    model = _hf(tmp_path / "m")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("weights:\n  - {match: '*', format: int4, group: 32, method: gptq}\n")
    out = str(tmp_path / "out")
    base = ["compile", str(model), "--recipe", str(recipe), "-o", out, "--max-prompt", "4"]
    cli_fails(capsys, base, "--calibration FILE")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe calibration")
    cli_fails(capsys, base + ["--calibration", str(bad)], "is not UTF-8 text")
    cli_fails(capsys, base + ["--calibration", str(tmp_path / "none.txt")],
              "is missing or unreadable")
    one = tmp_path / "one.txt"
    one.write_text("x")
    cli_fails(capsys, base + ["--calibration", str(one)], "calibration needs at least 2")
    cli_fails(capsys, base + ["--bits-budget", "nan?"], "not a number")
    good = tmp_path / "good.txt"
    good.write_text("def f(x):\n    return x + 1\n" * 20)
    printed = cli_ok(capsys, base + ["--calibration", str(good), "--calibration-tokens",
                                     "300", "--bits-budget", "6"])
    assert "bits budget 6" in printed and "model.layers.0.mlp.down_proj" in printed
    assert Path(out, "manifest.json").is_file()


def test_quant_bench_small(tmp_path):
    """The bench's measurement at a small size: GPTQ beats round to nearest on held-out
    text; all three compiled (a 2:4 layer streamed); the plot is written."""
    from sim.measure.quant_accuracy import TinyEval, plot_ppl_vs_bits
    ev = TinyEval(positions=128, calibration_count=512)
    r = {n: ev.measure(n, build_dir=tmp_path) for n in ("w4_rtn", "w4_calibrated",
                                                       "2of4_w4_calibrated")}
    assert all(v["compiled"] for v in r.values())
    assert r["w4_calibrated"]["ppl_ratio"] < r["w4_rtn"]["ppl_ratio"]
    assert r["w4_rtn"]["bits_per_weight"] == 4.125                  # 4 + 16 / 128
    # 2 + 1 (indices) + 1/8 (scales), and the stream records' headers
    assert 3.125 <= r["2of4_w4_calibrated"]["bits_per_weight"] < 3.2
    png = plot_ppl_vs_bits(r, tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_calibration_in_bounded_memory_equals_all_at_once():
    """GPTQ on the tiny model with the statistics computed and freed a decoder layer at a
    time gives the weights of the statistics all held at once (every linear input's Gram
    accumulated in one run of the windows), holding at most one decoder layer's."""
    from compiler.calibrate import (CalibrationStats, Calibrate, _GramStore, collect_grams,
                                    input_layers)
    from compiler.passes import Quantize
    from sim.measure.quant_accuracy import TinyEval, recipe_path
    ev = TinyEval(positions=128, calibration_count=1024)
    recipe = recipe_path("w4_calibrated")
    g = FoldAttentionScale().apply(ev.graph)
    lazy = Calibrate(ev.windows).apply(g)
    got = Quantize(recipe).apply(lazy)
    stats = lazy.meta["calibration"]

    whole = Calibrate(ev.windows).apply(g)
    store = _GramStore(g.copy(), stats.windows)
    store.held = collect_grams(g, list(input_layers(g)), stats.windows)
    whole.meta["calibration"] = CalibrationStats(store)
    total = sum(H.numel() * 8 for H in store.held.values())
    want = Quantize(recipe).apply(whole)

    assert got.qweights.keys() == want.qweights.keys()
    for name, ql in want.qweights.items():
        assert torch.equal(got.qweights[name].q, ql.q), name
        assert torch.equal(got.qweights[name].scales, ql.scales), name
    d, inter = g.shape.hidden_size, g.shape.intermediate_size
    layer_bytes = (3 * d * d + inter * inter) * 8          # q/k/v, o, gate/up, down inputs
    assert stats.peak_bytes == layer_bytes < total
    assert stats.runs == g.shape.num_hidden_layers + 1     # a pass per layer, and the head
