"""Graph IR, passes, importers and the golden decoder on small random LLaMA models."""

import json

import pytest
import torch
from safetensors.torch import save_file

from airfoil.errors import CompileError
from compiler.backends import ExecState, execute, logits_float
from compiler.importers.hf import import_hf
from compiler.ir import Pipeline, build_llama_graph
from compiler.llm_recipe import load_llm_recipe, parse_llm_recipe
from compiler.passes import FoldAttentionScale, Quantize, llm_pipeline, quantized_model
from llmtools import random_llama
from compiler.reference import KVCache
from sim.golden_llm import GoldenLLM, generate

RECIPE16 = {"weights": [{"match": "*", "format": "int8", "group": 16},
                        {"match": "*.mlp.*", "format": "int4"}]}


def _model(heads=4, kv=2, hd=16, tie=False, seed=0, layers=2):
    return random_llama(heads=heads, kv=kv, hd=hd, vocab=53, inter=96, layers=layers,
                        max_pos=64, tie=tie, seed=seed)


def _tokens(n, seed=1, vocab=53):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def _save_hf(m, path, drop=None, reshape=None):
    sd = {k: v.clone().contiguous() for k, v in m.hf_state_dict().items()}
    if drop:
        sd.pop(drop)
    if reshape:
        sd[reshape] = sd[reshape][:-1].contiguous()
    path.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(m.shape.to_hf()))
    return path


def test_float_backend_matches_reference_prefill_and_decode():
    m = _model()
    g = build_llama_graph(m.shape, m.hf_state_dict())
    tok = _tokens(10)
    with torch.no_grad():
        ref = m(tok[None])[0]
        # Same float32 arithmetic in the same order: equal to rounding noise.
        assert float((execute(g, tok) - ref).abs().max()) < 1e-5
        st = ExecState()
        execute(g, tok[:7], state=st)
        for t in range(7, 10):
            step = execute(g, tok[t:t + 1], state=st)
            assert float((step[0] - ref[t]).abs().max()) < 1e-5


def test_pipeline_steps_are_pure_and_each_executable():
    m = _model()
    g = build_llama_graph(m.shape, m.hf_state_dict())
    before = g.summary()
    tok = _tokens(6)
    ref = execute(g, tok)
    errs = {}
    pipe = llm_pipeline(parse_llm_recipe(RECIPE16))
    assert pipe.names == ["validate", "fold_attention_scale", "quantize"]
    q = pipe.run(g, after_step=lambda n, gg: errs.__setitem__(
        n, float((execute(gg, tok) - ref).abs().max())))
    assert g.summary() == before and not g.qweights         # input graph untouched
    # Float steps keep the function (rounding noise only); quantize changes it a little.
    assert errs["validate"] == 0.0 and errs["fold_attention_scale"] < 1e-5
    assert 1e-4 < errs["quantize"] < 0.5 * float(ref.abs().max())
    # per layer: the two norms, the attention output and the SwiGLU product; then the head
    assert len(q.by_op("act_quant")) == 2 * 4 + 1
    assert q.meta["recipe"]["model.layers.0.mlp.up_proj"] == ("int4", 16)
    assert q.meta["recipe"]["model.layers.1.self_attn.k_proj"] == ("int8", 16)
    with pytest.raises(CompileError, match="pipeline has no step"):
        pipe.run(g, until="tile")
    with pytest.raises(TypeError, match="pipeline step"):
        Pipeline([("x", 3)])


@pytest.mark.parametrize("heads,kv,hd,tie", [(4, 2, 16, False), (4, 4, 16, True),
                                             (3, 1, 16, False), (5, 5, 16, True)])
def test_golden_decoder(heads, kv, hd, tie):
    m = _model(heads, kv, hd, tie)
    g = llm_pipeline(parse_llm_recipe(RECIPE16)).run(build_llama_graph(m.shape,
                                                                        m.hf_state_dict()))
    tok = _tokens(12)
    gl = execute(g, tok, backend="golden")
    assert gl.dtype == torch.int64
    # The plain golden decoder (sim) equals the IR's golden backend bit for bit.
    gd = GoldenLLM(quantized_model(g))
    assert torch.equal(gd.prefill(tok), gl)
    # Prefill then decode equals one long prefill bit for bit (KV cache).
    part = [gd.prefill(tok[:4])] + [gd.decode(int(t))[None] for t in tok[4:]]
    assert torch.equal(torch.cat(part), gl)
    st = ExecState()
    execute(g, tok[:9], backend="golden", state=st)
    assert torch.equal(execute(g, tok[9:10], backend="golden", state=st), gl[9:10])
    # Against the fake-quantized float graph (same quantized weights, float functions):
    # per-token INT8 rounding flips amplify the fixed-point functions' ~1e-4 errors to
    # a few per cent of the logit range on random models; a bug gives ~100 %.
    fq = execute(g, tok)
    rng = float(fq.abs().max())
    assert float((logits_float(gl) - fq).abs().max()) < 0.08 * rng
    # Against the float model: the weight quantization error (large for INT4 on these
    # random weights) plus at most the same few per cent.
    with torch.no_grad():
        ref = m(tok[None])[0]
    wq = float((fq - ref).abs().max())
    assert float((logits_float(gl) - ref).abs().max()) < wq + 0.08 * rng


def test_generate_api():
    m = _model()
    g = llm_pipeline(parse_llm_recipe(RECIPE16)).run(build_llama_graph(m.shape,
                                                                        m.hf_state_dict()))
    qm = quantized_model(g)
    prompt = _tokens(5).tolist()
    out, text = generate(qm, prompt, 8)
    assert len(out) == 8 and text == " ".join(map(str, out))
    # Greedy: each token is the argmax of the golden logits of prompt + previous tokens.
    full = GoldenLLM(qm).prefill(prompt + out[:-1])
    assert out == [int(torch.argmax(full[i])) for i in range(4, 12)]
    assert generate(qm, prompt, 3, decode_text=lambda t: "x" * len(t))[1] == "xxx"
    with pytest.raises(CompileError, match="prompt is empty"):
        generate(qm, [], 2)


def test_golden_needs_quantized_graph():
    m = _model()
    g = build_llama_graph(m.shape, m.hf_state_dict())
    with pytest.raises(CompileError, match="run the quantize step"):
        execute(FoldAttentionScale().apply(g), _tokens(3), backend="golden")
    with pytest.raises(CompileError, match="unknown backend"):
        execute(g, _tokens(3), backend="rtl")
    with pytest.raises(CompileError, match="outside the vocabulary"):
        execute(g, torch.tensor([53]))


@pytest.mark.parametrize("tie", [False, True])
def test_hf_import_roundtrip(tmp_path, tie):
    m = _model(tie=tie)
    g = import_hf(_save_hf(m, tmp_path / "m"))
    tok = _tokens(7)
    with torch.no_grad():
        assert float((execute(g, tok) - m(tok[None])[0]).abs().max()) < 1e-5


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])
def test_hf_import_llama3_rope(tmp_path, key):
    """A config with LLaMA 3.1's RoPE scaling (either HF spelling) imports; the float graph
    follows the reference with that scaling, and the golden and the ISA simulator run the
    compiled folder bit-exactly with the scaled table (which differs from the plain one)."""
    import dataclasses

    from airfoil.config import load_config
    from airfoil.folder import load_folder
    from compiler.lower_llm import compile_llm
    from compiler.reference import LlamaReference
    from sim.isa_sim import IsaLLM

    m = _model(hd=16, layers=1)
    path = _save_hf(m, tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    rope = dict(LLAMA3_ROPE, **({"rope_theta": cfg.pop("rope_theta")}
                                if key == "rope_parameters" else {}))
    (path / "config.json").write_text(json.dumps(dict(cfg, **{key: rope})))
    g = import_hf(path)
    assert g.shape.rope_scaling == LLAMA3_ROPE
    scaled = LlamaReference(dataclasses.replace(m.shape, rope_scaling=LLAMA3_ROPE)).eval()
    scaled.load_state_dict(m.state_dict())
    tok = _tokens(40)
    with torch.no_grad():
        want = scaled(tok[None])[0]
        assert float((execute(g, tok) - want).abs().max()) < 1e-5
        assert float((m(tok[None])[0] - want).abs().max()) > 1e-3     # the scaling matters
    qm = quantized_model(llm_pipeline(parse_llm_recipe(
        {"weights": [{"match": "*", "format": "int8", "group": 32}]})).run(g))
    config = load_config("sim_llm")
    compile_llm(qm, config, tmp_path / "out", max_prompt=8)
    folder = load_folder(tmp_path / "out", config)
    golden, isa = GoldenLLM(qm), IsaLLM(folder, config)
    prompt = tok[:8].tolist()
    assert torch.equal(golden.prefill(prompt), isa.prefill(prompt))
    for t in tok[8:12].tolist():
        assert torch.equal(golden.decode(t), isa.decode(t))


def test_hf_import_errors(tmp_path):
    m = _model()
    p = _save_hf(m, tmp_path / "missing", drop="model.layers.1.mlp.up_proj.weight")
    with pytest.raises(CompileError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj"):
        import_hf(p)
    p = _save_hf(m, tmp_path / "shape", reshape="model.layers.0.self_attn.k_proj.weight")
    with pytest.raises(CompileError, match=r"k_proj\.weight has shape \[31, 64\], expected"):
        import_hf(p)
    p = _save_hf(m, tmp_path / "corrupt")
    raw = (p / "model.safetensors").read_bytes()
    (p / "model.safetensors").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(CompileError, match="corrupted or unreadable safetensors"):
        import_hf(p)
    p = _save_hf(m, tmp_path / "arch")
    cfg = json.loads((p / "config.json").read_text())
    (p / "config.json").write_text(json.dumps(dict(cfg, architectures=["FalconForCausalLM"])))
    with pytest.raises(CompileError, match="unsupported architecture 'FalconForCausalLM'"):
        import_hf(p)
    (p / "config.json").write_text(json.dumps(dict(cfg, hidden_act="gelu")))
    with pytest.raises(CompileError, match="unsupported hidden_act 'gelu'"):
        import_hf(p)
    (p / "config.json").write_text(json.dumps(dict(cfg, rope_scaling={"rope_type": "yarn",
                                                                      "factor": 4.0})))
    with pytest.raises(CompileError, match="unsupported rope_scaling"):
        import_hf(p)
    (p / "config.json").write_text(json.dumps(dict(cfg, rope_scaling={"rope_type": "llama3"})))
    with pytest.raises(CompileError, match="rope_scaling must be null or"):
        import_hf(p)
    with pytest.raises(CompileError, match="config.json: not found"):
        import_hf(tmp_path / "nothing")


def test_recipe_errors(tmp_path):
    m = _model()
    g = build_llama_graph(m.shape, m.hf_state_dict())
    bad = parse_llm_recipe({"weights": [{"match": "*", "format": "int4", "group": 16},
                                        {"match": "model.layers.7.*", "format": "int8"}]})
    with pytest.raises(CompileError, match=r"weights\[1\] match 'model.layers.7.\*' names no "
                                           r"layer"):
        Quantize(bad).apply(g)
    for data, msg in [({"weights": [{"match": "*", "format": "fp4", "group": 16}]},
                       r"format = 'fp4' is not supported \(accepted: int4, int8, int2, "),
                      ({"weights": [{"match": "*", "mixed": ["int4", "fp5"], "group": 32}]},
                       r"mixed = \['int4', 'fp5'\] is not supported \(accepted: a list of "),
                      ({"weights": [{"match": "*", "format": "int4", "mixed": ["int2"]}]},
                       "sets both format and mixed"),
                      ({"weights": [{"match": "*", "format": "int4",
                                     "mixed_max_error": 0.1}]},
                       r"sets mixed_max_error with format \(accepted: with mixed\)"),
                      ({"weights": [{"match": "*", "mixed": ["int2", "int4"],
                                     "mixed_max_error": 1.5}]},
                       r"weights\[0\]\.mixed_max_error = 1\.5 is not supported \(accepted: a "
                       r"number in \[0, 1\]"),
                      ({"weights": [{"match": "*", "mixed": ["int2", "int4"],
                                     "mixed_max_error": "1%"}]},
                       r"mixed_max_error = '1%' is not supported"),
                      ({"weights": [{"match": "*", "format": "int4", "sparsity": 124}]},
                       r"sparsity = 124 is not supported \(accepted: dense, 1:4, .*quote"),
                      ({"weights": [{"match": "*", "format": "int4", "sparsity": "block",
                                     "density": 0}]}, r"density = 0 is not supported"),
                      ({"weights": [{"match": "*", "group": 0}]}, "positive integer"),
                      ({"weights": [{"match": "*", "bits": 4}]}, "bits is not a known key"),
                      ({"weights": []}, "non-empty list"),
                      ({"weights": [{"match": "*"}], "kv_cache": {"format": "int4"}},
                       r"kv_cache.format = 'int4' is not supported"),
                      ({"weights": [{"match": "*"}], "extra": 1}, "unknown section")]:
        with pytest.raises(CompileError, match=msg):
            parse_llm_recipe(data)
    for data, msg in [([{"match": "*", "format": "int4", "group": 16, "density": 0.5}],
                       "density applies to sparsity block, not 'dense'"),
                      ([{"match": "*", "format": "ovp", "group": 32, "sparsity": "2:4"}],
                       "ovp weights are dense"),
                      ([{"match": "*", "mixed": "bitmod4", "group": 32,
                         "mixed_max_error": 0.1}],
                       r"mixed_max_error applies to a mixed layer of several widths, not "
                       r"mixed\(fp4_er_p")]:
        with pytest.raises(CompileError, match=msg):
            Quantize(parse_llm_recipe({"weights": data})).apply(g)
    (tmp_path / "r.yaml").write_text("weights: [\n")
    with pytest.raises(CompileError, match="not valid YAML"):
        load_llm_recipe(tmp_path / "r.yaml")
    assert load_llm_recipe().rules[0] == {"match": "*", "format": "int4", "group": 128}


def test_group_not_dividing_k_pads_with_zero_columns():
    m = _model()
    g = build_llama_graph(m.shape, m.hf_state_dict())
    q = llm_pipeline(load_llm_recipe()).run(g)      # the default g128 on a 64-wide model
    ql = next(iter(q.qweights.values()))
    assert ql.shape[1] == 128 and ql.in_features == 64
    assert not ql.q[:, 64:].any()
    assert ql.dequantize().shape[1] == 64
    tok = _tokens(5)
    assert execute(q, tok, backend="golden").shape == execute(q, tok, backend="float").shape


def test_later_rules_override_format_and_mixed():
    r = parse_llm_recipe({"weights": [{"match": "*", "mixed": "bitmod4", "group": 32},
                                      {"match": "lm_head", "format": "int8"},
                                      {"match": "*.mlp.*", "sparsity": "2:4"}]})
    plan = r.resolve(["lm_head", "model.layers.0.mlp.up_proj"])
    assert plan["lm_head"].formats == ("int8",) and not plan["lm_head"].streamed
    up = plan["model.layers.0.mlp.up_proj"]
    assert up.formats == ("fp4_er_p", "fp4_er_n", "fp4_ea_p", "fp4_ea_n")
    assert up.sparsity == "2:4" and up.streamed and up.format == "mixed"


def test_mixed_max_error_is_a_layer_key_recorded_with_the_recipe():
    """``mixed_max_error`` bounds a layer's choice across widths (default 1.25 %); a later
    ``format`` rule drops it with ``mixed``; the bound reaches the quantizer (0: only
    exact records narrower, so every record of random weights INT8; 1: every record
    INT2) and the recipe entry of ``meta["recipe"]`` (the manifest's) records it."""
    from airfoil.packing import MIXED_MAX_REL_ERROR, RecordTag
    rules = [{"match": "*", "mixed": ["int2", "int4", "int8"], "group": 32},
             {"match": "*.mlp.*", "mixed_max_error": 0.0},
             {"match": "*.self_attn.q_proj", "mixed_max_error": 1},
             {"match": "lm_head", "format": "int8"}]
    plan = parse_llm_recipe({"weights": rules}).resolve(
        ["lm_head", "model.layers.0.mlp.up_proj", "model.layers.0.self_attn.q_proj",
         "model.layers.0.self_attn.k_proj"])
    assert plan["model.layers.0.self_attn.k_proj"].mixed_max_error == MIXED_MAX_REL_ERROR
    assert plan["model.layers.0.mlp.up_proj"].mixed_max_error == 0.0
    assert plan["model.layers.0.self_attn.q_proj"].mixed_max_error == 1.0
    assert plan["lm_head"].formats == ("int8",)
    m = _model()
    q = llm_pipeline(parse_llm_recipe({"weights": rules})).run(
        build_llama_graph(m.shape, m.hf_state_dict()))
    by_layer = {n.attrs["layer"]: q.qweights[n.name] for n in q.by_op("linear")}
    assert set(by_layer["model.layers.0.mlp.up_proj"].formats.unique().tolist()) == {
        RecordTag.INT8.value}
    assert set(by_layer["model.layers.0.self_attn.q_proj"].formats.unique().tolist()) == {
        RecordTag.INT2.value}
    assert q.meta["recipe"]["model.layers.0.mlp.up_proj"] == (
        "mixed(int2,int4,int8)", 32, 0.0)
    assert q.meta["recipe"]["model.layers.1.self_attn.k_proj"] == (
        "mixed(int2,int4,int8)", 32, MIXED_MAX_REL_ERROR)
    assert q.meta["recipe"]["lm_head"] == ("int8", 32)


def test_torch_module_import():
    from compiler.importers.torch_module import import_module
    m = _model(heads=4, kv=2, layers=1)
    g = import_module(m)
    assert [n.op for n in g.nodes][:6] == ["embedding", "rmsnorm", "linear", "linear",
                                           "linear", "rope"]
    tok = _tokens(9)
    with torch.no_grad():
        assert float((execute(g, tok) - m(tok[None])[0]).abs().max()) < 1e-5
    q = llm_pipeline(parse_llm_recipe(RECIPE16)).run(g)
    assert torch.equal(GoldenLLM(quantized_model(q)).prefill(tok),
                       execute(q, tok, backend="golden"))

    class Gelu(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.shape = m, m.shape

        def forward(self, t):
            return torch.nn.functional.gelu(self.inner(t))
    with pytest.raises(CompileError, match="unsupported op aten.gelu"):
        import_module(Gelu())


def test_reference_cache_equals_full():
    m = _model()
    tok = _tokens(9)[None]
    with torch.no_grad():
        full = m(tok)
        c = KVCache(2)
        parts = torch.cat([m(tok[:, :5], c), m(tok[:, 5:7], c), m(tok[:, 7:], c)], dim=1)
    assert float((parts - full).abs().max()) < 1e-5
