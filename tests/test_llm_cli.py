"""The CLI on decoder LLMs: compile MODEL, run --backend {torch,isa}, demo, bad input."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from clitools import cli_fails, cli_ok
from llmtools import random_llama

from airfoil.models import BUILTIN_MODELS

TINY = BUILTIN_MODELS["tiny-llama"]




def _random_hf(path, heads=3, kv=1, hd=32, seed=0):
    """A small random LLaMA checkpoint in HF layout (no tokenizer)."""
    m = random_llama(heads=heads, kv=kv, hd=hd, vocab=40, inter=64, layers=1, max_pos=32,
                     seed=seed)
    shape = m.shape
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.clone().contiguous() for k, v in m.hf_state_dict().items()},
              str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(shape.to_hf()))
    return path


def _recipe(path, rules):
    path.write_text(yaml.safe_dump({"weights": rules}))
    return str(path)


def _tokens_line(out):
    return next(line for line in out.splitlines() if line.startswith("tokens:"))


def test_compile_and_run_random_model(tmp_path, capsys):
    model = _random_hf(tmp_path / "m")
    recipe = _recipe(tmp_path / "r.yaml", [{"match": "*", "format": "int8", "group": 32}])
    out_dir = str(tmp_path / "out")
    out = cli_ok(capsys, ["compile", str(model), "--recipe", recipe, "--config", "sim_llm",
                       "-o", out_dir, "--max-prompt", "6"])
    for item in ("prefill program", "decode program", "weights int8", "decode cycles/token"):
        assert item in out
    man = json.loads((Path(out_dir) / "manifest.json").read_text())
    assert man["kind"] == "llm" and man["model"]["max_prompt"] == 6
    assert f"{man['phases']['decode']['instructions']} instr" in out
    runs = {}
    for b in ("torch", "isa"):
        runs[b] = cli_ok(capsys, ["run", "--backend", b, out_dir, "--tokens", "3,1,4,1,5",
                               "--max-new-tokens", "9"])
    assert _tokens_line(runs["torch"]) == _tokens_line(runs["isa"])
    assert len(_tokens_line(runs["isa"]).split()) == 1 + 9
    assert "decode" in runs["isa"] and "per token" in runs["isa"]
    # disasm reads an LLM folder's decode program, or every phase of the folder
    assert "LDREG" in cli_ok(capsys, ["disasm", str(Path(out_dir) / "decode.afp")]).upper()
    listing = cli_ok(capsys, ["disasm", out_dir])
    assert "prefill.afp" in listing and "decode.afp" in listing
    only = cli_ok(capsys, ["disasm", out_dir, "--phase", "decode"])
    assert "decode.afp" in only and "prefill.afp" not in only
    cli_fails(capsys, ["disasm", out_dir, "--phase", "train"], "no 'train' program")
    # Bad run input on an LLM folder.
    cli_fails(capsys, ["run", out_dir, "--tokens", "1,99"], "token 99 is outside the vocabulary")
    cli_fails(capsys, ["run", out_dir, "--prompt", "hi"], "no tokenizer.json in the folder")
    cli_fails(capsys, ["run", out_dir, "--tokens", "1", "--max-new-tokens", "40"],
           "exceed the 32 positions")


def test_run_samples_top_k_on_chip(tmp_path, capsys):
    """--top-k K --temperature T --seed S: the same tokens on the golden and the ISA
    simulator (the chip's TOPK_SAMPLE), other tokens than greedy, other tokens for
    another seed; out-of-range sampling arguments refused in one line."""
    model = _random_hf(tmp_path / "m")
    recipe = _recipe(tmp_path / "r.yaml", [{"match": "*", "format": "int8", "group": 32}])
    out_dir = str(tmp_path / "out")
    cli_ok(capsys, ["compile", str(model), "--recipe", recipe, "--config", "sim_llm",
                    "-o", out_dir, "--max-prompt", "6"])
    base = ["run", out_dir, "--tokens", "3,1,4,1,5,9,2,6", "--max-new-tokens", "10"]
    lines = {}
    for b in ("torch", "isa"):
        for seed in ("7", "8"):
            lines[b, seed] = _tokens_line(cli_ok(capsys, base + [
                "--backend", b, "--top-k", "20", "--temperature", "2.5", "--seed", seed]))
    greedy = _tokens_line(cli_ok(capsys, base + ["--backend", "isa"]))
    assert lines["torch", "7"] == lines["isa", "7"] and lines["torch", "8"] == lines["isa", "8"]
    assert lines["isa", "7"] != greedy and lines["isa", "7"] != lines["isa", "8"]
    cli_fails(capsys, base + ["--top-k", "0"], "0 is outside 1 .. 64")
    cli_fails(capsys, base + ["--top-k", "65"], "65 is outside 1 .. 64")
    cli_fails(capsys, base + ["--temperature", "0"], "temperature must be a positive number")
    cli_fails(capsys, base + ["--temperature", "1e-9"], "temperature 1e-09 is outside")
    cli_fails(capsys, base + ["--temperature", "hot"], "'hot' is not a number")
    # A config with a smaller sampler (limits.topk_max) refuses a larger --top-k.
    small = tmp_path / "sim_llm_k8.yaml"
    small.write_text("base: sim_llm\nname: sim_llm_k8\nlimits: {topk_max: 8}\n")
    out8 = str(tmp_path / "out8")
    cli_ok(capsys, ["compile", str(model), "--recipe", recipe, "--config", str(small),
                    "-o", out8, "--max-prompt", "6"])
    run8 = ["run", out8, "--config", str(small), "--backend", "isa", "--tokens", "3,1",
            "--max-new-tokens", "2"]
    assert _tokens_line(cli_ok(capsys, run8 + ["--top-k", "8"]))
    cli_fails(capsys, run8 + ["--top-k", "20"], "top-k 20 is beyond the sampler of config "
              "'sim_llm_k8' (accepted: 1..8, its limits.topk_max)")


def test_compile_errors(tmp_path, capsys):
    model = _random_hf(tmp_path / "m")
    out = str(tmp_path / "out")
    # Bad recipe values: one line naming what is accepted.
    for rule, message in [({"format": "fp5"}, "format = 'fp5' is not supported (accepted: "),
                          ({"format": "int8", "sparsity": 124},
                           "sparsity = 124 is not supported (accepted: dense, 1:4, 2:4, 2:8, "
                           "4:16, 8:16, block)"),
                          ({"mixed": ["int2", "int9"]},
                           "mixed = ['int2', 'int9'] is not supported (accepted: a list of "),
                          ({"mixed": ["int2", "int8"], "mixed_max_error": -0.01},
                           "mixed_max_error = -0.01 is not supported (accepted: a number in "
                           "[0, 1]"),
                          ({"format": "int8", "sparsity": "2:4"},
                           "streamed weights (int8/2:4) need the decode unit")]:
        bad = _recipe(tmp_path / "bad.yaml", [{"match": "*", "group": 32, **rule}])
        cli_fails(capsys, ["compile", str(model), "--recipe", bad, "--config", "sim_llm",
                           "-o", out], message)
    bad = _recipe(tmp_path / "bad.yaml", [{"match": "*", "format": "int8", "group": 32},
                                          {"match": "model.layers.3.*", "format": "int4"}])
    cli_fails(capsys, ["compile", str(model), "--recipe", bad, "-o", out],
           "match 'model.layers.3.*' names no layer")
    raw = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(raw[:len(raw) // 2])
    cli_fails(capsys, ["compile", str(model), "-o", out], "model.safetensors: corrupted")
    cli_fails(capsys, ["compile", str(tmp_path / "nope"), "-o", out], "model folder")
    assert not Path(out).exists()


@pytest.mark.parametrize("field,value,message", [
    ("rms_norm_eps", "abc", "rms_norm_eps must be 0 .. 1, not 'abc'"),
    ("rms_norm_eps", float("nan"), "rms_norm_eps must be 0 .. 1, not nan"),
    ("rms_norm_eps", 1e308, "rms_norm_eps must be 0 .. 1"),
    ("rope_theta", 0, "rope_theta must be a positive finite number, not 0"),
    ("rope_theta", -5.0, "rope_theta must be a positive finite number"),
    ("architectures", 5, "architectures must be a list of names, not 5"),
    ("head_dim", 0, "head_dim must be a positive integer, not 0"),
    ("num_attention_heads", 0, "num_attention_heads must be a positive integer"),
    ("tie_word_embeddings", "yes", "tie_word_embeddings must be true or false"),
    # Found by the CLI fuzzer: sizing 18 M layers before reading the checkpoint ran out
    # of memory.
    ("num_hidden_layers", 17961751, "num_hidden_layers=17961751, the checkpoint holds"),
])
def test_compile_refuses_bad_config_values(tmp_path, capsys, field, value, message):
    model = _random_hf(tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    cfg[field] = value
    (model / "config.json").write_text(json.dumps(cfg))
    out = str(tmp_path / "out")
    cli_fails(capsys, ["compile", str(model), "-o", out], message)
    assert not Path(out).exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_compile_refuses_non_finite_weights(tmp_path, capsys, bad):
    model = _random_hf(tmp_path / "m")
    from safetensors.torch import load_file
    tensors = load_file(str(model / "model.safetensors"))
    name = next(n for n in sorted(tensors) if n.endswith("q_proj.weight"))
    tensors[name][1, 2] = bad
    save_file(tensors, str(model / "model.safetensors"))
    cli_fails(capsys, ["compile", str(model), "-o", str(tmp_path / "out")],
              f"tensor {name} holds NaN or infinite values")


def test_tiny_model_prompt_text(tmp_path, capsys):
    out_dir = str(tmp_path / "tiny")
    cli_ok(capsys, ["compile", str(TINY), "-o", out_dir, "--max-prompt", "8"])
    texts = {}
    for b in ("torch", "isa"):
        out = cli_ok(capsys, ["run", "--backend", b, out_dir, "--prompt", "def ",
                           "--max-new-tokens", "4"])
        texts[b] = [line for line in out.splitlines()
                    if line.startswith(("tokens:", "prompt:", "text:"))]
    assert texts["torch"] == texts["isa"] and texts["isa"][1] == "prompt: def "
    new = [int(t) for t in texts["isa"][0].split()[1:]]
    assert texts["isa"][2] == "text: " + bytes(new).decode("utf-8", errors="replace")


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m["model"].pop("max_prompt"), "lacks key 'model.max_prompt'"),
    (lambda m: m["model"]["shape"].pop("vocab_size"), "model.shape.vocab_size is None"),
    (lambda m: m["model"]["layout"].pop("params"), "model.layout.params is None"),
    (lambda m: m["model"].update(max_prompt=10 ** 6), "max_prompt 1000000 and max_positions"),
    (lambda m: m["model"].update(prefill_positions=m["model"]["max_positions"] + 1),
     "prefill_positions"),
    (lambda m: m["model"].update(max_positions=m["model"]["max_positions"] * 2),
     "layout.rope holds"),
    (lambda m: m["model"]["layout"].update(kv_row=m["model"]["layout"]["kv_row"] * 2),
     "layout.l0.kcache holds"),
    (lambda m: m["model"].update(linears=[]), "model.linears is not a non-empty object"),
    # A folder of the int32 embedding table (format 3) is refused, naming the format.
    (lambda m: m.update(format="airfoil-folder/3"),
     "manifest format 'airfoil-folder/3' is not 'airfoil-folder/5'"),
    (lambda m: m["model"]["layout"].update(embed_row=8), "layout.embed_row is 8, less than"),
])
def test_run_refuses_a_tampered_llm_manifest(tmp_path, capsys, mutate, message):
    model = _random_hf(tmp_path / "m")
    recipe = _recipe(tmp_path / "r.yaml", [{"match": "*", "format": "int8", "group": 32}])
    out = tmp_path / "out"
    cli_ok(capsys, ["compile", str(model), "--recipe", recipe, "--config", "sim_llm",
                    "-o", str(out), "--max-prompt", "6"])
    man = json.loads((out / "manifest.json").read_text())
    mutate(man)
    (out / "manifest.json").write_text(json.dumps(man))
    cli_fails(capsys, ["run", "--backend", "isa", str(out), "--tokens", "1,2"], message)


def _word_tokenizer(path, words):
    """A Hugging Face tokenizer.json (word level, whitespace split) of ``words``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tok.save(str(path / "tokenizer.json"))
    return Tokenizer.from_file(str(path / "tokenizer.json"))


def test_hugging_face_tokenizer(tmp_path, capsys):
    """A folder with a standard tokenizer.json compiles and runs from text; the printed
    text is the decoded continuation, the same on torch and isa."""
    model = _random_hf(tmp_path / "m")
    words = ["[UNK]"] + [f"w{i}" for i in range(1, 40)]
    tok = _word_tokenizer(model, words)
    recipe = _recipe(tmp_path / "r.yaml", [{"match": "*", "format": "int8", "group": 32}])
    out_dir = str(tmp_path / "out")
    cli_ok(capsys, ["compile", str(model), "--recipe", recipe, "--config", "sim_llm",
                    "-o", out_dir, "--max-prompt", "6"])
    lines = {}
    for b in ("torch", "isa"):
        out = cli_ok(capsys, ["run", "--backend", b, out_dir, "--prompt", "w3 w1  w4",
                              "--max-new-tokens", "5"])
        lines[b] = {line.split(":")[0]: line for line in out.splitlines()
                    if line.startswith(("tokens:", "prompt:", "text:"))}
    assert lines["torch"] == lines["isa"]
    new = [int(t) for t in lines["isa"]["tokens"].split()[1:]]
    assert len(new) == 5
    assert lines["isa"]["prompt"] == "prompt: w3 w1 w4"
    assert lines["isa"]["text"] == "text: " + tok.decode(new)
    # The same prompt as ids gives the same tokens.
    ids = ",".join(map(str, tok.encode("w3 w1 w4").ids))
    out = cli_ok(capsys, ["run", "--backend", "isa", out_dir, "--tokens", ids,
                          "--max-new-tokens", "5"])
    assert lines["isa"]["tokens"] in out
    (Path(out_dir) / "tokenizer.json").write_text('{"model": {"type": "Nonsense"}}')
    cli_fails(capsys, ["run", out_dir, "--prompt", "w1"], "the tokenizers package cannot read")
