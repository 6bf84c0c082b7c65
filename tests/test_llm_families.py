"""Hugging Face families (LLaMA, Mistral, Qwen2, Phi-3, GPT-2, OPT) through import, golden,
ISA and RTL.

Each family's tiny model is built by the pinned ``transformers`` (random weights, fixed
seed, ``save_pretrained``; :mod:`sim.measure.hf_families`) and imported by airfoil.

Float tolerance: the float import and ``transformers`` both compute in float32 with
different operation orders (fused SDPA or eager attention, matmul blocking, Phi-3's
fused projections); on logits of magnitude ~3 the differences are a few 1e-6, so 1e-4
absolute holds for any order, while a dropped bias, a wrong split of a fused tensor or a
wrong head mapping moves the logits by more than 1e-2 on these models.
"""

import json
from pathlib import Path

import pytest
import torch

from airfoil.config import load_config
from airfoil.folder import load_folder
from clitools import cli_fails, cli_ok
from compiler.backends import ExecState, execute
from compiler.importers.hf import import_hf
from compiler.llm_recipe import parse_llm_recipe
from compiler.lower_llm import compile_llm
from compiler.passes import llm_pipeline, quantized_model
from sim.golden_llm import GoldenLLM, golden_from_folder
from sim.isa_sim import IsaLLM

transformers = pytest.importorskip("transformers")

from sim.measure.hf_families import (FAMILY_CLASSES, tiny_hf_model,  # noqa: E402
                                     write_word_tokenizer)

TOL = 1e-4
FAMILIES = list(FAMILY_CLASSES)
#: INT8 everywhere, groups of 32 (the tiny models' k is 64 or 96).
RECIPE = {"weights": [{"match": "*", "format": "int8", "group": 32}]}


def _tokens(n, vocab=37, seed=1):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def _quantized(path):
    return llm_pipeline(parse_llm_recipe(RECIPE)).run(import_hf(path))


@pytest.mark.parametrize("family", FAMILIES)
def test_float_import_matches_transformers(family, tmp_path):
    hf = tiny_hf_model(family, tmp_path)
    g = import_hf(tmp_path)
    tok = _tokens(12)
    with torch.no_grad():
        want = hf(tok[None]).logits[0]
        assert float((execute(g, tok) - want).abs().max()) < TOL
        state = ExecState()                 # a prefill then decode steps: the same logits
        got = torch.cat([execute(g, tok[:7], state=state)] +
                        [execute(g, tok[i:i + 1], state=state) for i in range(7, 12)])
        assert float((got - want).abs().max()) < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_golden_equals_isa_bit_exactly(family, tmp_path):
    tiny_hf_model(family, tmp_path / "hf")
    q = _quantized(tmp_path / "hf")
    qm = quantized_model(q)
    tok = _tokens(9)
    # The graph's golden backend and the plain golden are one arithmetic.
    assert torch.equal(GoldenLLM(qm).prefill(tok), execute(q, tok, backend="golden"))
    config = load_config("sim_llm")
    compile_llm(qm, config, tmp_path / "out", max_prompt=5)
    folder = load_folder(tmp_path / "out", config)
    gold, isa = GoldenLLM(golden_from_folder(folder)), IsaLLM(folder, config)
    assert torch.equal(gold.prefill(tok[:5]), GoldenLLM(qm).prefill(tok[:5]))
    assert torch.equal(isa.prefill(tok[:5].tolist()), gold.prefill(tok[:5].tolist()))
    for t in tok[5:].tolist():
        assert torch.equal(isa.decode(t), gold.decode(t))


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_streamed_layers_keep_their_biases(family, tmp_path):
    """INT3 layers streamed through the decode unit (sim_llm_decode) add their biases
    (and GPT-2's LayerNorm biases) as the tiled ones do: golden == ISA."""
    tiny_hf_model(family, tmp_path / "hf", num_hidden_layers=1)
    cfg = load_config("sim_llm_decode")
    recipe = parse_llm_recipe({"weights": [{"match": "*", "format": "int3", "group": 32}]})
    qm = quantized_model(llm_pipeline(recipe, cfg).run(import_hf(tmp_path / "hf")))
    man = compile_llm(qm, cfg, tmp_path / "out")
    assert all(v["streamed"] for v in man["model"]["linears"].values())
    folder = load_folder(tmp_path / "out", cfg)
    gold, isa = GoldenLLM(qm), IsaLLM(folder, cfg)
    tok = _tokens(4).tolist()
    assert torch.equal(isa.prefill(tok[:1]), gold.prefill(tok[:1]))
    for t in tok[1:]:
        assert torch.equal(isa.decode(t), gold.decode(t))


def test_qwen2_biases_reach_every_backend(tmp_path):
    """The q, k, v biases are in the graph, the folder and the programs; without them the
    golden logits differ (so the bit-exact comparison above would see one dropped)."""
    tiny_hf_model("qwen2", tmp_path / "hf")
    q = _quantized(tmp_path / "hf")
    assert q.shape.linear_biases == ("q", "k", "v")
    assert sorted(n.attrs["layer"].rsplit(".", 1)[1] for n in q.by_op("linear")
                  if "bias" in n.attrs) == ["k_proj", "k_proj", "q_proj", "q_proj",
                                            "v_proj", "v_proj"]
    qm = quantized_model(q)
    config = load_config("sim_llm")
    man = compile_llm(qm, config, tmp_path / "out", max_prompt=4)
    assert {"l0.q_bias", "l1.v_bias"} <= set(man["model"]["layout"])
    folder = load_folder(tmp_path / "out", config)
    back = golden_from_folder(folder)
    for L, M in zip(qm["layers"], back["layers"]):
        for r in ("q", "k", "v"):
            assert torch.equal(L[r + "_bias"], M[r + "_bias"])
            assert bool(L[r + "_bias"].abs().gt(0).any())
    tok = _tokens(4)
    zeroed = dict(qm, layers=[{k: (torch.zeros_like(v) if k.endswith("_bias") else v)
                               for k, v in L.items()} for L in qm["layers"]])
    assert not torch.equal(GoldenLLM(zeroed).prefill(tok), GoldenLLM(qm).prefill(tok))


def test_mistral_sliding_window(tmp_path, capsys):
    """The window (3 positions in the tiny model) masks keys: without it the logits
    differ; the compile output names it."""
    tiny_hf_model("mistral", tmp_path / "hf")
    g = import_hf(tmp_path / "hf")
    assert g.shape.sliding_window == 3 and g.shape.max_position_embeddings == 32
    assert {n.attrs["window"] for n in g.by_op("attention")} == {3}
    tok = _tokens(8)
    wide = g.copy()
    for n in wide.by_op("attention"):
        n.attrs["window"] = 0
    assert float((execute(g, tok) - execute(wide, tok)).abs().max()) > 1e-2
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(RECIPE))
    capsys.readouterr()
    out = cli_ok(capsys, ["compile", str(tmp_path / "hf"), "--recipe", str(recipe),
                          "--config", "sim_llm", "-o", str(tmp_path / "out"),
                          "--max-prompt", "4"])
    assert "attention window" in out and "3 positions" in out


def test_qwen2_window_of_some_layers_caps_the_positions(tmp_path):
    tiny_hf_model("qwen2", tmp_path / "hf", use_sliding_window=True, sliding_window=16,
                  max_window_layers=1)
    s = import_hf(tmp_path / "hf").shape
    assert s.sliding_window is None and s.max_position_embeddings == 16


def test_cli_compiles_and_runs_a_qwen2_folder_with_its_tokenizer(tmp_path, capsys):
    tiny_hf_model("qwen2", tmp_path / "hf")
    write_word_tokenizer(tmp_path / "hf", 37)
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(RECIPE))
    cli_ok(capsys, ["compile", str(tmp_path / "hf"), "--recipe", str(recipe),
                    "--config", "sim_llm", "-o", str(tmp_path / "out"), "--max-prompt", "4"])
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    runs = [cli_ok(capsys, ["run", "--backend", b, str(tmp_path / "out"),
                            "--prompt", "w3 w1 w4", "--max-new-tokens", "3"])
            for b in ("torch", "isa")]
    line = [next(x for x in r.splitlines() if x.startswith("tokens:")) for r in runs]
    assert line[0] == line[1]


def _edit_config(path: Path, **fields):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(fields)
    (path / "config.json").write_text(json.dumps(cfg))


def test_refusals_are_one_line(tmp_path, capsys):
    tiny_hf_model("phi3", tmp_path / "phi3", num_hidden_layers=1)
    capsys.readouterr()                         # what saving the checkpoint printed
    p = tmp_path / "phi3"
    cfg = json.loads((p / "config.json").read_text())
    _edit_config(p, rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                     "short_factor": [1.0] * 8, "long_factor": [2.0] * 8})
    cli_fails(capsys, ["compile", str(p), "-o", str(tmp_path / "o")],
              "unsupported rope_parameters")
    _edit_config(p, rope_parameters=dict(cfg["rope_parameters"], partial_rotary_factor=0.5))
    cli_fails(capsys, ["compile", str(p), "-o", str(tmp_path / "o")],
              "unsupported partial_rotary_factor 0.5")
    _edit_config(p, rope_parameters=cfg["rope_parameters"], attention_bias=True)
    cli_fails(capsys, ["compile", str(p), "-o", str(tmp_path / "o")],
              "unsupported attention_bias=true for Phi3ForCausalLM")
    _edit_config(p, attention_bias=False, hidden_act="gelu_new")
    cli_fails(capsys, ["compile", str(p), "-o", str(tmp_path / "o")],
              "unsupported hidden_act 'gelu_new'")
    # A fused tensor of another layout is named.
    _edit_config(p, hidden_act="silu", num_key_value_heads=4)
    cli_fails(capsys, ["compile", str(p), "-o", str(tmp_path / "o")],
              "tensor model.layers.0.self_attn.qkv_proj.weight has shape [128, 64], "
              "expected [192, 64]")
    tiny_hf_model("qwen2", tmp_path / "qwen2", num_hidden_layers=1)
    capsys.readouterr()
    _edit_config(tmp_path / "qwen2", layer_types=["chunked_attention"])
    cli_fails(capsys, ["compile", str(tmp_path / "qwen2"), "-o", str(tmp_path / "o")],
              "unsupported layer_types")
    _edit_config(tmp_path / "qwen2", architectures=["Qwen2ForCausalLM"], model_type="llama",
                 layer_types=None)
    cli_fails(capsys, ["compile", str(tmp_path / "qwen2"), "-o", str(tmp_path / "o")],
              "unsupported model_type 'llama' for Qwen2ForCausalLM")


def test_gpt2_and_opt_forms(tmp_path):
    """GPT-2's Conv1D weights are transposed and its c_attn split at import; OPT's position
    table drops its two offset rows; both have LayerNorm, an ungated MLP and tied heads."""
    for family, act in (("gpt2", "gelu"), ("opt", "relu")):
        hf = tiny_hf_model(family, tmp_path / family)
        g = import_hf(tmp_path / family)
        s = g.shape
        assert (s.norm, s.mlp, s.positions) == ("layer", act, "learned")
        assert s.tie_word_embeddings and not g.by_op("rope") and g.by_op(act)
        sd = hf.state_dict()
        if family == "gpt2":
            w = sd["transformer.h.0.attn.c_attn.weight"]
            assert torch.equal(g.params["model.layers.0.self_attn.k_proj.weight"],
                               w[:, 64:128].t())
        else:
            assert torch.equal(g.params["model.embed_positions.weight"],
                               sd["model.decoder.embed_positions.weight"][2:])


def test_learned_family_refusals(tmp_path, capsys):
    tiny_hf_model("gpt2", tmp_path / "gpt2", num_hidden_layers=1)
    tiny_hf_model("opt", tmp_path / "opt", num_hidden_layers=1)
    capsys.readouterr()
    for family, fields, msg in [
            ("gpt2", {"activation_function": "gelu"}, "unsupported activation_function 'gelu'"),
            ("gpt2", {"scale_attn_by_inverse_layer_idx": True},
             "unsupported scale_attn_by_inverse_layer_idx=true"),
            ("opt", {"do_layer_norm_before": False}, "unsupported do_layer_norm_before=false"),
            ("opt", {"word_embed_proj_dim": 32}, "unsupported word_embed_proj_dim=32")]:
        p = tmp_path / family
        cfg = json.loads((p / "config.json").read_text())
        _edit_config(p, **fields)
        cli_fails(capsys, ["compile", str(p), "-o", str(tmp_path / "o")], msg)
        (p / "config.json").write_text(json.dumps(cfg))
    # A GPT-2 tensor of another shape is named by its own (checkpoint) name.
    from safetensors.torch import load_file, save_file
    f = tmp_path / "gpt2" / "model.safetensors"
    sd = load_file(str(f))
    sd["transformer.h.0.mlp.c_fc.weight"] = sd["transformer.h.0.mlp.c_fc.weight"].t().contiguous()
    save_file(sd, str(f), metadata={"format": "pt"})
    cli_fails(capsys, ["compile", str(tmp_path / "gpt2"), "-o", str(tmp_path / "o")],
              "tensor transformer.h.0.mlp.c_fc.weight has shape [96, 64], expected [64, 96]")


@pytest.mark.rtl
@pytest.mark.parametrize("family", FAMILIES)
def test_one_layer_on_the_rtl_core_bit_exact(family, tmp_path):
    """One layer per family (a few seconds each after the shared core build): Qwen2's
    biases, GPT-2's LAYERNORM, GELU and learned positions, OPT's RELU, Mistral's SOFTMAX
    window (the decode at position 3 masks key 0)."""
    from airfoil.cli.backend_rtl import RtlLLM
    tiny_hf_model(family, tmp_path / "hf", num_hidden_layers=1)
    config = load_config("sim_llm")
    compile_llm(quantized_model(_quantized(tmp_path / "hf")), config, tmp_path / "out",
                max_prompt=3)
    folder = load_folder(tmp_path / "out", config)
    gold = GoldenLLM(golden_from_folder(folder))
    rtl = RtlLLM(folder, config, seed=5, stalls=True, build_dir="build")
    prompt = [4, 20, 9]
    want = gold.prefill(prompt)
    assert torch.equal(rtl.prefill(prompt), want)
    tok = int(torch.argmax(want[-1]))
    assert torch.equal(rtl.decode(tok), gold.decode(tok))
