"""Whole decoder LLMs in every weight format and sparsity the decode unit reads.

The shipped tiny model (``models/tiny-llama``) is compiled for ``sim_llm_decode`` with
recipes of streamed formats (INT2, INT3, INT6, OVP4, BitMoD FP3), a per-group choice
(INT2/4/8), N:M sparse INT4 (2:4, 2:8) and block skip; the golden model of the folder
equals the golden of the quantized graph and the ISA simulator, bit for bit (tokens and
logits). In RTL, a few recipes give the same tokens as torch and the ISA simulator.
"""

import pytest
import torch

from airfoil.config import load_config
from airfoil.errors import CompileError
from airfoil.folder import load_folder
from airfoil.packing import format_spec
from compiler.importers.hf import import_hf
from compiler.ir import Pipeline, build_llama_graph
from compiler.llm_recipe import parse_llm_recipe
from airfoil.folder import weight_bits_per_weight
from compiler.lower_llm import compile_llm
from compiler.passes import (FoldAttentionScale, Quantize, StreamShape, Validate,
                             llm_pipeline, quantized_model)
from llmtools import random_llama
from sim.golden_llm import GoldenLLM, generate_folder, golden_from_folder
from sim.isa_sim import IsaLLM, generate_isa
from sim.measure.llm_accuracy import TINY_MODEL

CONFIG = "sim_llm_decode"
#: One rule for every layer, groups of 128.
RECIPES = {
    "int2": {"format": "int2"},
    "int3": {"format": "int3"},
    "int6": {"format": "int6"},
    "ovp": {"format": "ovp"},
    "bitmod3": {"format": "bitmod3"},
    "mixed_int2_4_8": {"mixed": ["int2", "int4", "int8"]},
    "w4_2of4": {"format": "int4", "sparsity": "2:4"},
    "w4_2of8": {"format": "int4", "sparsity": "2:8"},
    "w4_block": {"format": "int4", "sparsity": "block", "density": 0.75},
}
#: The recipes run in the default (fast) selection; the others are slow.
FAST = ("int3", "w4_2of4")
PROMPT = [84, 104, 101, 32]             # "The "
#: Each projection in another format, sparsity or per-group choice, WGT tiles beside.
EVERY_FORMAT = [
    {"match": "*", "format": "int4", "group": 128},
    {"match": "*.q_proj", "format": "int2"},
    {"match": "*.k_proj", "format": "int6", "group": 64},
    {"match": "*.v_proj", "format": "ovp", "group": 32},
    {"match": "*.o_proj", "mixed": "bitmod3"},
    {"match": "*.gate_proj", "mixed": ["int2", "int3", "int4"], "sparsity": "2:4"},
    {"match": "*.up_proj", "format": "int8", "sparsity": "block", "density": 0.5},
    {"match": "*.down_proj", "format": "int3", "sparsity": "2:8"},
    {"match": "model.layers.3.mlp.down_proj", "format": "int8", "sparsity": "dense"}]


def _recipe(name):
    return parse_llm_recipe({"weights": [{"match": "*", "group": 128, **RECIPES[name]}]})


@pytest.fixture(scope="module")
def tiny_graph():
    return import_hf(TINY_MODEL)


def _compile(graph, recipe, out, cfg):
    q = llm_pipeline(recipe, cfg).run(graph)
    model = quantized_model(q)
    manifest = compile_llm(model, cfg, out)
    return model, manifest, load_folder(out, cfg)


def _golden_equals_isa(model, folder, cfg, prompt, steps):
    """The folder's golden equals the graph's golden and the ISA simulator: logits of the
    prompt and of ``steps`` greedy decode steps, bit for bit."""
    graph_gold, gold = GoldenLLM(model), GoldenLLM(golden_from_folder(folder))
    isa = IsaLLM(folder, cfg)
    want = gold.prefill(prompt)
    assert torch.equal(graph_gold.prefill(prompt), want)
    assert torch.equal(isa.prefill(prompt), want)
    for _ in range(steps):
        tok = int(torch.argmax(want[-1] if want.dim() == 2 else want))
        want = gold.decode(tok)
        assert torch.equal(graph_gold.decode(tok), want)
        assert torch.equal(isa.decode(tok), want)
    return isa


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in RECIPES])
def test_tiny_model_recipe_golden_equals_isa(tmp_path, tiny_graph, name):
    cfg = load_config(CONFIG)
    model, man, folder = _compile(tiny_graph, _recipe(name), tmp_path / "out", cfg)
    lin = man["model"]["linears"]
    assert all(v["streamed"] for v in lin.values())
    # The prefill's MMs apply each streamed record to up to stream_tokens tokens.
    assert man["model"]["max_prompt"] == cfg.limits.stream_tokens
    assert man["phases"]["prefill"]["opcodes"].get("MV", 0) == 0
    # Every weight byte is in the image once, scales and sparsity metadata included.
    assert 1 < weight_bits_per_weight(man) < 10
    _golden_equals_isa(model, folder, cfg, PROMPT, 2)


def test_every_format_in_one_model_golden_equals_isa(tmp_path, tiny_graph):
    """A recipe giving each projection another format, sparsity or per-group choice
    (and INT4/INT8 WGT tiles beside them): one compile covers every path."""
    rules = EVERY_FORMAT
    cfg = load_config(CONFIG)
    model, man, folder = _compile(tiny_graph, parse_llm_recipe({"weights": rules}),
                                  tmp_path / "out", cfg)
    lin = man["model"]["linears"]
    assert not lin["lm_head"]["streamed"] and not lin["l3.down"]["streamed"]
    assert lin["l0.up"]["sparsity"] == "block" and lin["l0.gate"]["sparsity"] == "2:4"
    assert set(lin["l0.o"]["records"]) <= {"fp3_er_p", "fp3_er_n", "fp3_ea_p", "fp3_ea_n"}
    assert lin["l0.k"]["group"] == 64 and lin["l0.v"]["label"] == "ovp"
    assert man["model"]["max_prompt"] == cfg.limits.stream_tokens
    # The QLinear record: a format per group, the keep mask of the pruned layers.
    gate = model["layers"][0]["gate"]
    assert gate.streamed and gate.sparsity == "2:4"
    assert gate.mask.reshape(-1, 4).sum(dim=1).max() <= 2
    assert not gate.q[~gate.mask].any()
    assert {format_spec(t).name for t in gate.formats.unique().tolist()} <= \
        {"int2", "int3", "int4"}
    # The folder reads the same values back.
    back = golden_from_folder(folder)["layers"][0]["gate"]
    assert torch.equal(back.q, gate.q) and torch.equal(back.formats, gate.formats)
    assert torch.equal(back.scales, gate.scales)
    _golden_equals_isa(model, folder, cfg, PROMPT[:2], 2)


def _small_graph():
    m = random_llama(heads=4, kv=2, hd=16, vocab=37, inter=96, layers=1, max_pos=32, seed=0)
    return build_llama_graph(m.shape, m.hf_state_dict())


def test_padded_groups_golden_equals_isa(tmp_path):
    """Groups of 128 on a model of k = 64 and 96: every layer is padded with zero columns,
    on WGT tiles (INT4) and streams (INT3, 2:4) alike."""
    rules = [{"match": "*", "format": "int4", "group": 128},
             {"match": "*.mlp.*", "format": "int3", "sparsity": "2:4"}]
    cfg = load_config(CONFIG)
    model, man, folder = _compile(_small_graph(), parse_llm_recipe({"weights": rules}),
                                  tmp_path / "out", cfg)
    down = man["model"]["linears"]["l0.down"]
    assert (down["k"], down["k_in"], down["streamed"]) == (128, 96, True)
    assert (man["model"]["linears"]["l0.q"]["k"], man["model"]["linears"]["l0.q"]["k_in"]) \
        == (128, 64)
    assert man["linear_weights"] == sum(v["n"] * v["k_in"]
                                        for v in man["model"]["linears"].values())
    _golden_equals_isa(model, folder, cfg, [3, 1, 4], 2)


@pytest.mark.parametrize("group", [32, 128])
def test_int4_embedding_golden_equals_isa(tmp_path, group):
    """The embedding table INT4 with a scale per ``group`` values (128 > hidden 64: one
    short group a row): the folder's records read back to the graph's table, the float
    backend's quantized graph looks its tokens up in the same table, and the golden
    equals the ISA simulator; the records are smaller than the INT8 ones."""
    from compiler.backends import execute
    rules = [{"match": "*", "format": "int4", "group": 32}]
    cfg = load_config("sim_llm")
    graph = _small_graph()
    model, man, folder = _compile(graph, parse_llm_recipe(
        {"weights": rules, "embedding": {"format": "int4", "group": group}}),
        tmp_path / "out", cfg)
    emb = model["embed"]
    assert emb.group == group and man["model"]["embed_group"] == group
    assert golden_from_folder(folder)["embed"] == emb
    assert int(emb.q.abs().max()) == 7
    _, int8_man, _ = _compile(graph, parse_llm_recipe({"weights": rules}), tmp_path / "b", cfg)
    assert man["model"]["layout"]["embed_row"] < int8_man["model"]["layout"]["embed_row"]
    q = llm_pipeline(parse_llm_recipe({"weights": rules, "embedding": {
        "format": "int4", "group": group}}), cfg).run(graph)
    assert q.meta["embedding_group"] == group
    seen, toks = {}, torch.tensor([3, 1, 4])
    execute(q, toks, observe=lambda name, v: seen.setdefault(name, v))
    from airfoil.fixedpoint import from_fixed
    looked = seen[q.by_op("embedding")[0].name]
    assert torch.equal(looked, from_fixed(emb.lookup(toks)).to(looked.dtype))
    _golden_equals_isa(model, folder, cfg, [3, 1, 4], 2)


@pytest.mark.parametrize("bad", [{"format": "int4"}, {"format": "int4", "group": 64},
                                 {"format": "int2", "group": 32}, "int4"])
def test_embedding_section_errors(bad):
    with pytest.raises(CompileError, match=r"embedding = .* is not supported \(accepted: "
                                           r"\{format: int8\} or \{format: int4, group: "
                                           r"128 or 32\}\)"):
        parse_llm_recipe({"weights": [{"match": "*", "format": "int4", "group": 32}],
                          "embedding": bad})


def test_row_blocks_of_a_streamed_layer(tmp_path, monkeypatch):
    """With loads of at most 512 bytes each streamed layer is several row blocks (one LD
    WSTREAM and one MV each, writing their rows of the output)."""
    import compiler.tiling as tiling
    monkeypatch.setattr(tiling, "MAX_STREAM_BYTES", 512)
    rules = [{"match": "*", "format": "int4", "group": 32, "sparsity": "2:8"}]
    cfg = load_config(CONFIG)
    model, man, folder = _compile(_small_graph(), parse_llm_recipe({"weights": rules}),
                                  tmp_path / "out", cfg)
    tiles = man["model"]["linears"]["l0.up"]["tiles"]
    assert len(tiles) > 2 and all(st["nbytes"] <= 512 for t in tiles for st in t["streams"])
    assert [t["row0"] for t in tiles] == sorted({t["row0"] for t in tiles})
    _golden_equals_isa(model, folder, cfg, [3, 1, 4], 2)


def test_streamed_layers_need_the_decode_unit_and_a_prefill_of_stream_tokens(tmp_path):
    g = llm_pipeline(parse_llm_recipe({"weights": [
        {"match": "*", "format": "int4", "group": 32},
        {"match": "*.mlp.*", "sparsity": "2:4"}]})).run(_small_graph())
    model = quantized_model(g)
    with pytest.raises(CompileError, match=r"layer layers.0.gate: streamed weights "
                                           r"\(int4/2:4\) need the decode unit, which config "
                                           r"'sim_llm' lacks"):
        compile_llm(model, load_config("sim_llm"), tmp_path / "a")
    cfg = load_config(CONFIG)
    t = cfg.limits.stream_tokens
    with pytest.raises(CompileError, match=rf"max_prompt must be an integer in 1\.\.{t} "):
        compile_llm(model, cfg, tmp_path / "b", max_prompt=t + 1)


def test_mixed_choice_is_per_record_of_the_config(tmp_path):
    """A per-group choice made for 1-row records does not fit the 4-row records of
    sim_llm_decode: the compiler refuses it instead of packing other formats."""
    quant = Quantize(parse_llm_recipe({"weights": [
        {"match": "*", "mixed": "bitmod3", "group": 32}]}))
    quant.shape = StreamShape(rows=1, lanes=8)
    pipe = Pipeline([("validate", Validate()), ("fold_attention_scale", FoldAttentionScale()),
                     ("quantize", quant)])
    model = quantized_model(pipe.run(_small_graph()))
    assert len(model["layers"][0]["up"].formats[:4, 0].unique()) > 1
    with pytest.raises(CompileError, match=r"hold more than one format in a group; "
                                           r"quantize for this config's records"):
        compile_llm(model, load_config(CONFIG), tmp_path / "a")


def test_two_channels_stream_one_slice_each(tmp_path):
    """With two memory channels each streamed row block is two streams (row batches of
    2-chain records to each decode-unit slice), loaded on channels 0 and 1."""
    from pathlib import Path

    from airfoil.isa import Buffer, Opcode, decode
    text = (Path(__file__).parent.parent / f"fpga/boards/{CONFIG}.yaml").read_text()
    text = text.replace(f"name: {CONFIG}", "name: two_ch").replace("channels: 1",
                                                                   "channels: 2")
    (tmp_path / "two.yaml").write_text(text)
    cfg = load_config(tmp_path / "two.yaml")
    rules = [{"match": "*", "mixed": ["int3", "int4"], "group": 32, "sparsity": "2:4"},
             {"match": "lm_head", "format": "ovp", "sparsity": "dense"}]
    model, man, folder = _compile(_small_graph(), parse_llm_recipe({"weights": rules}),
                                  tmp_path / "out", cfg)
    assert {st["channel"] for t in man["model"]["linears"]["l0.q"]["tiles"]
            for st in t["streams"]} == {0, 1}
    lds = [decode(w) for w in folder.phase_program("decode").words
           if w & 0xF == Opcode.LD.value]
    assert {i.channel for i in lds if i.buf == Buffer.WSTREAM} == {0, 1}
    _golden_equals_isa(model, folder, cfg, [3, 1, 4], 3)


RTL_RECIPES = ("w4_2of4", "mixed_int2_4_8", "bitmod3")


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.parametrize("name", RTL_RECIPES)
def test_tiny_model_rtl_tokens_equal_torch_and_isa(tmp_path, tiny_graph, name):
    from airfoil.cli.backend_rtl import generate_rtl
    cfg = load_config(CONFIG)
    _, _, folder = _compile(tiny_graph, _recipe(name), tmp_path / "out", cfg)
    want = generate_folder(folder, PROMPT[:2], 2)[0]
    assert generate_isa(folder, cfg, PROMPT[:2], 2)[0] == want
    assert generate_rtl(folder, cfg, PROMPT[:2], 2, seed=1)[0] == want


@pytest.mark.rtl
@pytest.mark.slow
def test_every_format_in_one_model_rtl_tokens(tmp_path, tiny_graph):
    """Tiles and streams of every format interleaved in one program on the RTL core."""
    from airfoil.cli.backend_rtl import generate_rtl
    cfg = load_config(CONFIG)
    _, _, folder = _compile(tiny_graph, parse_llm_recipe({"weights": EVERY_FORMAT}),
                            tmp_path / "out", cfg)
    want = generate_folder(folder, PROMPT[:2], 2)[0]
    assert generate_rtl(folder, cfg, PROMPT[:2], 2, seed=2)[0] == want
