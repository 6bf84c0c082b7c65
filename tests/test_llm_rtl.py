"""Whole decoder LLMs on the RTL core in Verilator, against the golden, bit for bit.

The core is elaborated for ``sim_llm`` once (one shared Verilator build); each program run
is one simulation, with the KV cache read back between runs (``RtlLLM``).
"""

import pytest
import torch

from airfoil.cli.backend_rtl import RtlLLM, generate_rtl
from airfoil.config import load_config
from airfoil.folder import load_folder
from compiler.ir import build_llama_graph
from compiler.llm_recipe import parse_llm_recipe
from compiler.lower_llm import compile_llm
from compiler.passes import llm_pipeline, quantized_model
from llmtools import random_llama
from sim.golden_llm import GoldenLLM, generate_folder, golden_from_folder
from sim.isa_sim import generate_isa

pytestmark = pytest.mark.rtl

#: INT8 attention projections, INT4 MLP and head, groups of 32.
RECIPE = {"weights": [{"match": "*", "format": "int8", "group": 32},
                      {"match": "*.mlp.*", "format": "int4"},
                      {"match": "lm_head", "format": "int4"}]}
VOCAB = 37


def _layer_folder(tmp_path, cfg, seed=0):
    """One decoder layer of a random GQA LLaMA (4 query heads on 2 KV heads)."""
    m = random_llama(heads=4, kv=2, hd=16, vocab=VOCAB, inter=96, layers=1, max_pos=32,
                     seed=seed)
    g = llm_pipeline(parse_llm_recipe(RECIPE)).run(build_llama_graph(m.shape,
                                                                     m.hf_state_dict()))
    compile_llm(quantized_model(g), cfg, tmp_path / "out", max_prompt=5)
    return load_folder(tmp_path / "out", cfg)


def test_gqa_layer_prefill_and_decode_bit_exact_under_stalls(tmp_path):
    cfg = load_config("sim_llm")
    folder = _layer_folder(tmp_path, cfg)
    gold = GoldenLLM(golden_from_folder(folder))
    rtl = RtlLLM(folder, cfg, seed=3, stalls=True, build_dir="build")
    prompt = [5, 17, 2, 30, 11]
    want = gold.prefill(prompt)
    assert torch.equal(rtl.prefill(prompt), want)
    tok = int(torch.argmax(want[-1]))
    for _ in range(2):
        want = gold.decode(tok)
        assert torch.equal(rtl.decode(tok), want)
        tok = int(torch.argmax(want))
    # Every unit ran, and the queues overlapped.
    dec = rtl.runs[-1]
    assert dec["cycles"] > 0
    assert 0 < dec["overlap_cycles"] < dec["cycles"]


def test_tokens_chosen_on_chip_equal_on_three_backends(tmp_path):
    """The chip's TOPK_SAMPLE after the INT8 embedding's DEQUANT_ROW: greedy and top-k
    sampled tokens at a fixed seed, the same on the golden, the ISA simulator and the
    RTL core (a prompt longer than the prefill, so decode steps finish it)."""
    from airfoil.fixedpoint import Sampling
    cfg = load_config("sim_llm")
    folder = _layer_folder(tmp_path, cfg, seed=1)
    prompt = [5, 17, 2, 30, 11, 8, 1]
    for sampling in (Sampling(), Sampling(k=12, temperature=3.0, seed=5)):
        want = generate_folder(folder, prompt, 4, sampling=sampling)[0]
        assert generate_isa(folder, cfg, prompt, 4, sampling=sampling)[0] == want
        assert generate_rtl(folder, cfg, prompt, 4, seed=2, sampling=sampling,
                            build_dir="build")[0] == want
    assert generate_folder(folder, prompt, 4)[0] != want      # sampling changed the tokens


@pytest.mark.slow
def test_kv_banks_tokens_equal_on_three_backends(tmp_path):
    """A KV buffer of 4 banks (``sim_llm_kv_banks``): the banked ATT_QK and ATT_PV, the
    per-bank K and V loads on two channels and the key-group register give the golden's
    tokens on the ISA simulator and the RTL core (a prompt longer than the prefill, so
    decode steps at lengths that leave the last key group part full finish it). Slow (a
    core of its own to build); tests/test_kv_banks.py runs the ISA simulator's part."""
    cfg = load_config("sim_llm_kv_banks")
    folder = _layer_folder(tmp_path, cfg, seed=1)
    prompt = [5, 17, 2, 30, 11, 8, 1]
    want = generate_folder(folder, prompt, 6)[0]
    assert generate_isa(folder, cfg, prompt, 6)[0] == want
    assert generate_rtl(folder, cfg, prompt, 6, seed=2, build_dir="build")[0] == want


@pytest.mark.slow
def test_tiny_model_eight_tokens_equal_on_three_backends():
    from sim.measure.llm_accuracy import TINY_MODEL
    from compiler.importers.hf import import_hf
    from compiler.tokenizer import load_tokenizer

    cfg = load_config("sim_llm")
    out = "build/test_llm_rtl/tiny"
    g = llm_pipeline(None).run(import_hf(TINY_MODEL))
    compile_llm(quantized_model(g), cfg, out, max_prompt=8)
    folder = load_folder(out, cfg)
    prompt = load_tokenizer(TINY_MODEL).encode("The ")
    want = generate_folder(folder, prompt, 8)[0]
    assert generate_isa(folder, cfg, prompt, 8)[0] == want
    assert generate_rtl(folder, cfg, prompt, 8, seed=1)[0] == want


@pytest.mark.slow
def test_tiny_model_int4_embedding_tokens_equal_on_three_backends():
    """The tiny model with its embedding table INT4 (a scale per 32 values, DEQUANT_ROW's
    imm1): the golden model's, the ISA simulator's and the RTL core's greedy tokens."""
    from sim.measure.llm_accuracy import TINY_MODEL
    from sim.measure.quant_accuracy import recipe_path
    from compiler.importers.hf import import_hf
    from compiler.tokenizer import load_tokenizer

    cfg = load_config("sim_llm")
    out = "build/test_llm_rtl/tiny_embed4"
    g = llm_pipeline(recipe_path("w4_rtn_embed4")).run(import_hf(TINY_MODEL))
    compile_llm(quantized_model(g), cfg, out, max_prompt=8)
    folder = load_folder(out, cfg)
    assert folder.manifest["model"]["embed_group"] == 32
    prompt = load_tokenizer(TINY_MODEL).encode("The ")
    want = generate_folder(folder, prompt, 4)[0]
    assert generate_isa(folder, cfg, prompt, 4)[0] == want
    assert generate_rtl(folder, cfg, prompt, 4, seed=1)[0] == want
