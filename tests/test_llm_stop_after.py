"""``airfoil compile MODEL --stop-after STEP``: every step of an LLM's compile (the graph
pipeline's, then the lowering's, named as a single layer's) prints what it made and
writes nothing before ``emit``; what the lowering's steps made is what the folder holds."""


import pytest

from airfoil.config import load_config
from airfoil.folder import load_folder
from clitools import cli_fails, cli_ok
from compiler.ir import build_llama_graph
from compiler.llm_recipe import parse_llm_recipe
from compiler.lower_llm import LOWER_STEPS, LowerOptions, compile_llm, compile_pipeline
from compiler.passes import llm_pipeline, quantized_model
from llmtools import random_llama, write_hf_folder

#: The default pipeline's steps and the lowering's, with the start of what each prints.
STEPS = {"validate": "validate: 19 nodes (",
         "fold_attention_scale": "fold_attention_scale: the attention scale folded into 1 "
                                 "query projections",
         "quantize": "quantize: 8 linear layers (7 int4 g32, 1 int8 g32), 5 per-token",
         "plan": "plan: ",
         "pack": "pack: an image of ",
         "schedule": "; schedule: prefill, ",
         "emit": "emit: "}
RULES = "weights:\n  - {match: '*', format: int4, group: 32%s}\n" \
        "  - {match: lm_head, format: int8}\n"


def _model():
    return random_llama(heads=2, kv=1, hd=32, vocab=256, inter=64, layers=1, max_pos=32)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A one-layer random LLaMA in HF layout with a byte tokenizer."""
    return write_hf_folder(tmp_path_factory.mktemp("model"), _model())


def _args(tmp_path, model, method=""):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RULES % method)
    return ["compile", str(model), "--recipe", str(recipe), "-o", str(tmp_path / "out"),
            "--max-prompt", "4"]


@pytest.mark.parametrize("step", STEPS)
def test_each_step_prints_what_it_made(tmp_path, capsys, hf_model, step):
    text = cli_ok(capsys, _args(tmp_path, hf_model) + ["--stop-after", step])
    assert text.startswith(STEPS[step]), text[:200]
    assert (tmp_path / "out").exists() == (step == "emit")
    if step == "schedule":      # both phases' listings
        assert "; schedule: decode, " in text and text.count("SYS") >= 8


@pytest.mark.parametrize("step, printed", [
    ("calibrate", "calibrate: statistics of 5 linear inputs over 300 tokens"),
    ("awq", "awq: activation-aware scales of "),
    ("bits_budget", "bits_budget: ")])
def test_calibrated_steps(tmp_path, capsys, hf_model, step, printed):
    """A calibrated recipe with a bits budget adds its graph steps before ``quantize``."""
    text_file = tmp_path / "calib.txt"
    text_file.write_text("def f(x):\n    return x + 1\n" * 20)
    argv = _args(tmp_path, hf_model, ", method: awq") + [
        "--calibration", str(text_file), "--calibration-tokens", "300", "--bits-budget", "6",
        "--stop-after", step]
    text = cli_ok(capsys, argv)
    assert printed in text.splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_unknown_steps_refused(tmp_path, capsys, hf_model):
    cli_fails(capsys, _args(tmp_path, hf_model) + ["--stop-after", "lower"],
              "--stop-after 'lower' is not a step of this model's compile (accepted: "
              "validate, fold_attention_scale, quantize, plan, pack, schedule, emit)")
    cli_fails(capsys, ["compile", "--synthetic", "llama2-7b", "--stop-after", "quantize",
                       "-o", str(tmp_path / "out")],
              "--stop-after 'quantize' is not a step of a synthetic model's lowering "
              "(accepted: plan, pack, schedule, emit)")


def test_synthetic_model_lowering_steps(tmp_path, capsys):
    """A synthetic model (made, not imported) stops after a lowering step: the 7B shape's
    plan without its weights' values, nothing written."""
    out = tmp_path / "out"
    text = cli_ok(capsys, ["compile", "--synthetic", "llama2-7b", "--config", "u280",
                           "--size-only", "--stop-after", "plan", "-o", str(out)])
    assert text.startswith("plan: ") and "of 225 layers" in text, text
    assert not out.exists()


def test_lowering_steps_are_what_the_folder_holds(tmp_path):
    """One pipeline from the imported graph to the folder (the graph steps, then the
    lowering's passes): the plan's tiles, the pack's placement and the schedule's programs
    are the folder's, and the folder is the one ``compile_llm`` writes from the quantized
    model given as data."""
    cfg = load_config("sim_llm")
    recipe = parse_llm_recipe({"weights": [{"match": "*", "format": "int4", "group": 32}]})
    m = _model()
    pipe = llm_pipeline(recipe, cfg)
    out = tmp_path / "out"
    full = compile_pipeline(pipe, LowerOptions(cfg, out, max_prompt=4))
    assert full.names == pipe.names + list(LOWER_STEPS) == list(STEPS)
    graph = build_llama_graph(m.shape, m.hf_state_dict())
    made = {s: full.run(graph, until=s).meta["lowered"] for s in LOWER_STEPS[:-1]}
    assert not out.exists()
    manifest = full.run(graph).meta["lowered"]
    folder = load_folder(out, cfg)
    linears = manifest["model"]["linears"]
    assert {name: [(t["row0"], t["rows"], t["col0"], t["cols"]) for t in v["tiles"]]
            for name, v in linears.items()} == {
        name: [tuple(b) for b in boxes] for name, boxes in made["plan"]["tiles"].items()}
    assert made["pack"]["linears"] == linears
    assert made["pack"]["image_bytes"] == manifest["image_bytes"] == len(folder.image)
    for phase, words in made["schedule"]["words"].items():
        assert words == folder.phase_program(phase).words
    q = pipe.run(graph)
    assert compile_llm(quantized_model(q), cfg, tmp_path / "data", max_prompt=4,
                       recipe=q.meta["recipe"]) == manifest
    for name in ("weights.bin", "prefill.afp", "decode.afp"):
        assert (tmp_path / "data" / name).read_bytes() == (out / name).read_bytes()
