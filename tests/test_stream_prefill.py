"""Prefill on the streamed engine: one MM per row block reads each weight once for all the
prompt's tokens.

The shipped tiny model (``models/tiny-llama``) in 2:4 sparse W4 (every layer streamed
through the decode unit) is compiled for ``sim_llm_decode`` twice: with the prefill the
compiler plans (``MM`` of up to ``limits.stream_tokens`` tokens on streamed weights) and,
as before the streamed ``MM``, with ``max_prompt = 1`` (the prompt runs as one-token
prefill chunks, a full weight pass per token). A multi-token prompt gives the
same logits on torch, the ISA simulator and the RTL core, bit for bit, and the prefill
takes fewer cycles than the token-by-token one.
"""

import pytest
import torch

from airfoil.config import load_config
from airfoil.errors import CompileError
from airfoil.folder import load_folder
from airfoil.isa import Opcode, WeightFormat, decode
from compiler.importers.hf import import_hf
from compiler.llm_recipe import parse_llm_recipe
from compiler.lower_llm import compile_llm
from compiler.passes import llm_pipeline, quantized_model
from sim.golden_llm import GoldenLLM, golden_from_folder
from sim.isa_sim import IsaLLM
from sim.measure.llm_accuracy import TINY_MODEL

CONFIG = "sim_llm_decode"
RECIPE = {"weights": [{"match": "*", "group": 128, "format": "int4", "sparsity": "2:4"}]}
#: Six tokens: "The cat" (one prefill MM pass of 6 vectors per row block).
PROMPT = [84, 104, 101, 32, 99, 97]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(config, model, folder with the planned prefill, folder with max_prompt = 1)."""
    cfg = load_config(CONFIG)
    model = quantized_model(llm_pipeline(parse_llm_recipe(RECIPE), cfg).run(
        import_hf(TINY_MODEL)))
    root = tmp_path_factory.mktemp("stream_prefill")
    compile_llm(model, cfg, root / "mm")
    compile_llm(model, cfg, root / "one", max_prompt=1)
    return cfg, model, load_folder(root / "mm", cfg), load_folder(root / "one", cfg)


def _prefill_cycles(llm, prompt) -> tuple[torch.Tensor, int]:
    logits = llm.prefill(prompt)
    return logits, sum(r["cycles"] for r in llm.runs)


def test_prefill_plans_stream_tokens_and_runs_mm_on_streamed_weights(folders):
    cfg, _, mm, one = folders
    assert mm.manifest["model"]["max_prompt"] == cfg.limits.stream_tokens >= len(PROMPT)
    assert one.manifest["model"]["max_prompt"] == 1
    words = [decode(w) for w in mm.phase_program("prefill").words]
    streamed = [i for i in words if i.opcode in (Opcode.MM, Opcode.MV) and
                i.wfmt == WeightFormat.STREAM]
    assert streamed and all(i.opcode == Opcode.MM and i.m_reg and i.tok_scale
                            for i in streamed)
    dec = [decode(w) for w in mm.phase_program("decode").words]
    assert all(i.opcode == Opcode.MV for i in dec if i.opcode in (Opcode.MM, Opcode.MV))


def test_prefill_golden_equals_isa_and_costs_fewer_cycles(folders):
    """Both folders give the golden's logits for the prompt (and the next token); the MM
    prefill takes fewer cycles than the token-by-token one."""
    cfg, model, mm, one = folders
    want = GoldenLLM(golden_from_folder(mm)).prefill(PROMPT)
    assert torch.equal(GoldenLLM(model).prefill(PROMPT), want)
    got = {}
    for name, folder in (("mm", mm), ("one", one)):
        llm = IsaLLM(folder, cfg)
        logits, cycles = _prefill_cycles(llm, PROMPT)
        assert torch.equal(logits, want), name
        nxt = int(torch.argmax(want[-1]))
        assert torch.equal(llm.decode(nxt), GoldenLLM(golden_from_folder(folder)).prefill(
            PROMPT + [nxt])[-1]), name
        got[name] = cycles
    assert got["mm"] < got["one"], got


def test_prompt_beyond_the_stream_tokens_is_refused(folders, tmp_path):
    cfg, model, _, _ = folders
    t = cfg.limits.stream_tokens
    with pytest.raises(CompileError, match=rf"max_prompt must be an integer in 1\.\.{t} .*"
                                           rf"tokens the streamed engine applies a record"):
        compile_llm(model, cfg, tmp_path / "x", max_prompt=t + 1)


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_prefill_equals_torch_and_isa_and_costs_fewer_cycles(folders):
    """The RTL core's prefill of the prompt: the golden's logits from both folders, and
    fewer core cycles with the MM prefill than token by token."""
    from airfoil.cli.backend_rtl import RtlLLM

    cfg, _, mm, one = folders
    want = GoldenLLM(golden_from_folder(mm)).prefill(PROMPT)
    cycles = {}
    for name, folder in (("mm", mm), ("one", one)):
        logits, cycles[name] = _prefill_cycles(RtlLLM(folder, cfg, seed=3), PROMPT)
        assert torch.equal(logits, want), name
    assert cycles["mm"] < cycles["one"], cycles


@pytest.mark.slow
def test_bench_figures_are_cycles_over_tokens(tmp_path):
    """The prefill bench's code on the ISA simulator at a six-token prompt: each figure is
    its runs' cycles over the tokens, the MM scheme one run and fewer cycles."""
    from bench.prefill import tiny_figures, tiny_prefill

    cfg = load_config(CONFIG)
    runs = tiny_prefill(tmp_path, tokens=6, backend="isa")
    figs = tiny_figures(runs, 6, cfg.config_hash, backend="isa")
    for scheme, r in runs.items():
        name = f"tiny_w4_2of4_prefill_cycles_per_token_isa_{scheme}"
        assert figs[name] == r["cycles"] / 6 and figs[name + "_cycles"] == r["cycles"]
        assert figs[name + "_config_hash"] == cfg.config_hash
    assert runs["mm"]["runs"] == 1 and runs["token"]["runs"] == 6
    assert figs["tiny_w4_2of4_prefill_mm_speedup_isa"] == \
        runs["token"]["cycles"] / runs["mm"]["cycles"] > 1


def test_decode_positions_cover_the_prompt_after_the_prefill():
    from bench.prefill import decode_positions

    assert decode_positions(22, 22) == []
    assert decode_positions(22, 128) == [22, 127]
    assert decode_positions(22, 1024) == [22, 128, 256, 384, 512, 640, 768, 896, 1023]
    assert decode_positions(0, 3, stride=1) == [0, 1, 2]
