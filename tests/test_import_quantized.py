"""Quantized checkpoints (GPTQ, AWQ, GGUF) imported exactly where the WGT formats allow.

The published layouts are pinned by literal words (fields written out by hand); the tiny
checkpoints of :mod:`sim.measure.quantckpt` are compiled, and the weights the compiled
folder holds (``read_llm_model``, what every backend runs) are compared with the file's own
dequantization: no weight may differ for GPTQ, AWQ, GGUF Q8_0, Q4_0, Q5_0 and Q4_1.
"""

import json

import pytest
import torch

from airfoil.config import load_config
from airfoil.errors import CompileError
from compiler.importers import import_model
from compiler.importers.awq import AWQ_ORDER
from compiler.importers.gguf import rope_rows
from compiler.importers.packed import unpack_words
from compiler.importers.prequant import (exact_layer, exact_or_why, offset_layer,
                                         positive_scales, zero_point_stream)
from sim.golden_llm import GoldenLLM, golden_from_folder
from sim.isa_sim import IsaLLM
from sim.measure.quantckpt import (AWQ_NIBBLE_COLUMNS, KQUANT, act_order_reference,
                                   conversion_error, folder_mismatches, pack_fields,
                                   tiny_model, write_awq, write_gguf, write_gptq)

CFG = load_config("sim_llm")
#: The same engine with the decode unit: 4-bit codes minus zero points stream as uint4z.
DECODE = load_config("sim_llm_decode")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# -- the published layouts, by literal words --------------------------------------------

def test_gptq_word_holds_eight_inputs_low_nibble_first():
    # 0x76543210: input 8j+i of the word is i; 0xFEDCBA98 as int32 is -0x01234568.
    words = torch.tensor([[0x76543210], [-0x01234568]], dtype=torch.int32)   # (k/8, n=1)
    assert unpack_words(words, 4, 0)[:, 0].tolist() == list(range(16))
    assert pack_fields(list(range(8))) == 0x76543210
    assert pack_fields(list(range(8, 16))) == -0x01234568


def test_gptq_8_and_2_bit_words():
    words = torch.tensor([[0x03020100]], dtype=torch.int32)
    assert unpack_words(words, 8, 0)[:, 0].tolist() == [0, 1, 2, 3]
    assert unpack_words(torch.tensor([[0x0000E4E4]], dtype=torch.int32), 2, 0)[:8, 0] \
        .tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_awq_word_holds_columns_in_gemm_order():
    # Nibble i holds column ORDER[i]: nibbles 0..7 = 0..7 put column c at ORDER.index(c).
    assert AWQ_ORDER == AWQ_NIBBLE_COLUMNS == (0, 2, 4, 6, 1, 3, 5, 7)
    cols = unpack_words(torch.tensor([[0x76543210]], dtype=torch.int32), 4, 1, AWQ_ORDER)
    assert cols[0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert pack_fields([0, 4, 1, 5, 2, 6, 3, 7], AWQ_NIBBLE_COLUMNS) == 0x76543210


def test_llama_cpp_rope_row_order():
    # One head of 8 rows: HF halves (0..3 | 4..7) interleaved into pairs.
    assert rope_rows(8, 1).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


# -- exact imports: the folder's weights are the file's --------------------------------

@pytest.mark.parametrize("kind,kw,bits", [
    ("gptq", {}, 4),                              # symmetric, stored zero 7 (+1 = 8)
    ("gptq", {"sym": False}, 8),                  # asymmetric: q - z in -14..14
    ("gptq", {"sym": False, "v2": True}, 8),      # gptq_v2: zero stored as is
    ("awq", {}, 8),
])
def test_gptq_awq_folder_equals_published_dequantization(tmp_path, model, kind, kw, bits):
    write = write_gptq if kind == "gptq" else write_awq
    ref = write(tmp_path / "m", model, **kw)
    g = import_model(tmp_path / "m")
    assert not g.meta["import"]["converted"] and len(g.meta["import"]["exact"]) == 7
    r = folder_mismatches(g, ref, tmp_path / "out", CFG)
    assert r["weights"] == 2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64       # q o, k v, mlp
    assert r["mismatches"] == 0
    assert set(r["formats"].values()) == {f"int{bits}"}


def test_gptq_one_scale_per_row_splits_into_hardware_groups(tmp_path, model):
    ref = write_gptq(tmp_path / "m", model, group=-1)
    g = import_model(tmp_path / "m")
    assert g.prequantized["model.layers.0.mlp.down_proj"].group == 128
    assert g.prequantized["model.layers.0.mlp.up_proj"].group == 64
    assert folder_mismatches(g, ref, tmp_path / "out", CFG)["mismatches"] == 0


def test_gguf_float_layers_are_left_to_the_recipe(tmp_path, model):
    write_gguf(tmp_path / "m.gguf", model, "F16")
    g = import_model(tmp_path / "m.gguf")
    imp = g.meta["import"]
    assert not g.prequantized and imp["format"] == "gguf"
    assert not (imp["exact"] or imp["converted"] or imp["rounded"] or imp["reordered"])


@pytest.mark.parametrize("qtype,bits", [("Q8_0", 8), ("Q4_0", 4), ("Q5_0", 8)])
def test_gguf_exact_types_folder_equals_gguf_dequantize(tmp_path, model, qtype, bits):
    ref = write_gguf(tmp_path / "m.gguf", model, qtype)
    g = import_model(tmp_path / "m.gguf")
    assert g.shape.tie_word_embeddings and g.shape.num_key_value_heads == 2
    r = folder_mismatches(g, ref, tmp_path / "out", CFG)
    assert r["mismatches"] == 0 and set(r["formats"].values()) == {f"int{bits}"}


def test_offset_layer_reads_its_input_twice():
    """``d q + m`` as codes ``[q | 1]`` and scales ``[d | m]`` on ``[x | x]``: the golden's
    linear equals a plain layer of twice the columns on the doubled input, and its
    weights are ``d q + m``."""
    from airfoil import fixedpoint as fx
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(0, 16, (8, 64), generator=gen)
    d = (torch.rand(8, 2, generator=gen) * 0.1 + 0.01).to(torch.float16)
    m = (-torch.rand(8, 2, generator=gen) * 0.8).to(torch.float16)
    ql = offset_layer(q, d, m, 32, "l")
    assert ql.input_copies == 2 and ql.in_features == 64 and ql.shape == (8, 128)
    want = (d.double().repeat_interleave(32, dim=1) * q + m.double().repeat_interleave(32, dim=1))
    assert torch.equal(ql.dequantize(torch.float64), want)
    x = torch.randint(-127, 128, (3, 64), generator=gen)
    sm, se = torch.full((3,), 40000), torch.full((3,), 30)
    plain = type(ql)(ql.q, ql.scales, ql.group, ql.bits)
    y = fx.linear(ql, x, sm, se)
    assert torch.equal(y, fx.linear(plain, torch.cat([x, x], dim=1), sm, se))
    assert not torch.equal(y, fx.linear(plain, x, sm, se))      # the copy is read
    with pytest.raises(ValueError, match="input copies"):
        type(ql)(ql.q[:, :127], ql.scales, 32, 8, input_copies=2)


def test_gguf_q4_1_folder_equals_gguf_dequantize(tmp_path, model):
    """Q4_1 (``w = d q + m``) exact: INT8 tiles (codes 0..15) without the decode unit,
    uint4z records with it; every layer reads two copies of its input."""
    ref = write_gguf(tmp_path / "m.gguf", model, "Q4_1")
    g = import_model(tmp_path / "m.gguf")
    assert not g.meta["import"]["converted"] and len(g.meta["import"]["exact"]) == 7
    assert {ql.input_copies for ql in g.prequantized.values()} == {2}
    for cfg, fmt in ((CFG, "int8"), (DECODE, "uint4z")):
        r = folder_mismatches(g, ref, tmp_path / cfg.name, cfg)
        assert r["mismatches"] == 0 and r["weights"] == 36864
        assert set(r["formats"].values()) == {fmt}
        assert r["folder"].manifest["model"]["linears"]["l0.q"]["copies"] == 2
    # Without the offsets' copy the folder would not hold the file's weights.
    g.prequantized = {n: type(ql)(ql.q[:, :ql.in_features], ql.scales[:, :ql.in_features // 32],
                                  ql.group, ql.bits) for n, ql in g.prequantized.items()}
    assert folder_mismatches(g, ref, tmp_path / "no_offsets", CFG)["mismatches"] > 30000


def test_a_wrong_layout_reading_would_mismatch(tmp_path, model):
    """The comparison can fail: the same file read with the AWQ order as plain order."""
    ref = write_awq(tmp_path / "m", model)
    g = import_model(tmp_path / "m")
    layer = "model.layers.0.mlp.up_proj"
    ql = g.prequantized[layer]
    swapped = ql.q.reshape(ql.q.shape[0] // 8, 8, -1)[:, list(AWQ_ORDER)].reshape(ql.q.shape)
    g.prequantized[layer] = type(ql)(swapped, ql.scales, ql.group, ql.bits)
    assert folder_mismatches(g, ref, tmp_path / "out", CFG)["mismatches"] > 0


def test_q4_0_scales_of_either_sign_stay_int4():
    codes = torch.arange(-8, 8).repeat(2).reshape(1, 32)
    ql = exact_layer(codes, torch.tensor([[0.5]], dtype=torch.float16), 32, "l")
    assert ql.bits == 4
    neg = exact_layer(codes, torch.tensor([[-0.5]], dtype=torch.float16), 32, "l")
    assert neg.bits == 4 and torch.equal(neg.dequantize(), ql.dequantize() * -1)
    # For a rescaler of magnitudes the block is negated: code -8 becomes 8, INT8.
    mag = positive_scales(neg, "l")
    assert mag.bits == 8 and float(mag.scales.min()) == 0.5
    assert torch.equal(mag.dequantize(), neg.dequantize())
    assert positive_scales(ql, "l") is ql


def test_q4_0_file_has_negative_scales_kept_as_int4(tmp_path, model):
    """The tiny Q4_0 file has blocks of negative ``d``: the folder keeps them negative in
    INT4 tiles (with or without the decode unit) and equals the file's dequantization."""
    ref = write_gguf(tmp_path / "q.gguf", model, "Q4_0")
    g = import_model(tmp_path / "q.gguf")
    assert set(g.meta["import"]["exact"].values()) == {"int4"}
    assert all(bool((ql.scales < 0).any()) for ql in g.prequantized.values())
    for cfg in (CFG, DECODE):
        r = folder_mismatches(g, ref, tmp_path / cfg.name, cfg)
        assert r["mismatches"] == 0 and set(r["formats"].values()) == {"int4"}
        assert r["folder"].manifest["model"]["linears"]["l0.down"]["bits"] == 4


def test_q4_0_negative_blocks_negated_for_a_pe_of_magnitude_rescalers(tmp_path, model):
    """On the bit-serial PE (its rescaler takes scale magnitudes) the quantize pass negates
    the negative blocks: INT8 tiles of positive scales, still the file's weights."""
    import dataclasses

    from compiler.passes import llm_pipeline
    from sim.measure.quantckpt import exact_recipe
    serial = dataclasses.replace(CFG, pe="bitserial")
    assert CFG.signed_tile_scales and not serial.signed_tile_scales
    write_gguf(tmp_path / "q.gguf", model, "Q4_0")
    g = llm_pipeline(exact_recipe(), serial).run(import_model(tmp_path / "q.gguf"))
    qs = [g.qweights[n.name] for layer, n in g.linear_layers().items() if layer in
          g.prequantized]
    assert len(qs) == 7 and all(q.bits == 8 and bool((q.scales > 0).all()) for q in qs)
    assert set(g.meta["import"]["exact"].values()) == {"int8"}
    for layer, n in g.linear_layers().items():
        if layer in g.prequantized:
            assert torch.equal(g.qweights[n.name].dequantize(),
                               g.prequantized[layer].dequantize())


def test_zero_groups_take_the_largest_scale_and_wide_spreads_are_refused():
    codes = torch.ones((1, 64), dtype=torch.int64)
    codes[0, 32:] = 0
    s = torch.tensor([[2.0, 0.0]], dtype=torch.float16)
    ql = exact_layer(codes, s, 32, "l")
    assert ql.scales.tolist() == [[2.0, 2.0]]
    with pytest.raises(CompileError, match=r"^layer l: group scales .* span more than the "
                                           r"2\*\*15"):
        exact_layer(torch.ones((1, 64), dtype=torch.int64),
                    torch.tensor([[32.0, 2.0 ** -24]], dtype=torch.float16), 32, "l")


def test_scales_beyond_the_rescaler_make_the_layer_requantized(tmp_path, model):
    ql, why = exact_or_why(torch.ones((1, 64), dtype=torch.int64),
                           torch.tensor([[32.0, 2.0 ** -24]], dtype=torch.float16), 32, "l")
    assert ql is None and "span more than the 2**15" in why
    ql, why = exact_or_why(torch.full((1, 32), 200), torch.ones((1, 1), dtype=torch.float16),
                           32, "l")
    assert ql is None and why.startswith("codes 200..200 do not fit INT8")


def test_attention_scale_of_head_dim_32_rounds_the_query_scales(tmp_path):
    from compiler.passes import llm_pipeline
    from sim.measure.quantckpt import exact_recipe
    write_gptq(tmp_path / "m", tiny_model(hd=32, heads=2, kv=1))
    g = llm_pipeline(exact_recipe()).run(import_model(tmp_path / "m"))
    rounded = g.meta["import"]["rounded"]
    assert list(rounded) == ["model.layers.0.self_attn.q_proj"]
    assert 0 < rounded["model.layers.0.self_attn.q_proj"] <= 2.0 ** -11


# -- converted imports: reported, with their error --------------------------------------

def test_gptq_act_order_exact_on_every_projection(tmp_path, model):
    """Act-order: the down projection's inputs go in g_idx order (exact), the gate and up
    rows follow; the projections of the residual stream and the context (q, k, v share an
    input, each its own g_idx) are regrouped: exact, their input read twice (two groups
    of 32 mixed in every run of the tiny model's 64 inputs)."""
    from safetensors.torch import load_file

    from compiler.backends import execute
    from compiler.ir import build_llama_graph
    ref = write_gptq(tmp_path / "m", model, act_order=True)
    g = import_model(tmp_path / "m")
    p = "model.layers.0."
    down, gate = p + "mlp.down_proj", p + "mlp.gate_proj"
    imp = g.meta["import"]
    assert imp["exact"] == {layer: "int4" for layer in ref} and not imp["converted"]
    assert {n: ql.input_copies for n, ql in g.prequantized.items()} == {
        layer: 1 if layer == down else 2 for layer in ref}
    assert all("regrouped, read 2 times" in imp["reordered"][layer]
               for layer in ref if layer != down)
    assert conversion_error(g) == 0
    g_idx = load_file(str(tmp_path / "m" / "model.safetensors"))
    order = torch.sort(g_idx[down + ".g_idx"].to(torch.int64), stable=True).indices
    assert not torch.equal(order, torch.arange(order.numel()))
    assert not torch.equal(g_idx[p + "self_attn.q_proj.g_idx"],
                           g_idx[p + "self_attn.k_proj.g_idx"])
    want = act_order_reference(ref, tmp_path / "m")
    assert torch.equal(want[gate], ref[gate][order])
    r = folder_mismatches(g, want, tmp_path / "out", CFG)
    assert r["mismatches"] == 0 and r["weights"] == 36864
    _check_golden_equals_isa(r["folder"], [3, 17, 40, 8], steps=2)
    # The same function as the file's own dequantization in the file's order.
    sd = {k: v for k, v in model.hf_state_dict().items()}
    sd.update({layer + ".weight": w.to(torch.float32) for layer, w in ref.items()})
    plain = build_llama_graph(model.shape, sd)
    tokens = [3, 9, 27, 50]
    assert torch.allclose(execute(g, tokens), execute(plain, tokens), rtol=1e-5, atol=1e-5)


def test_gptq_act_order_mixing_more_groups_than_allowed_is_requantized(tmp_path, model,
                                                                        monkeypatch):
    """A layer whose runs mix more groups than MAX_REGROUP_COPIES (as act-order on real
    data does: every group in every run) is requantized by the recipe, the reason and the
    error reported, not regrouped into that many input copies (here the limit lowered to
    1 under the tiny model's two groups a run)."""
    from compiler.importers import gptq
    monkeypatch.setattr(gptq, "MAX_REGROUP_COPIES", 1)
    ref = write_gptq(tmp_path / "m", model, act_order=True)
    g = import_model(tmp_path / "m")
    conv = g.meta["import"]["converted"]
    down = "model.layers.0.mlp.down_proj"
    assert set(conv) == set(ref) - {down}                # down keeps its exact g_idx order
    assert all("mixes 2 groups" in why and "at most 1 are imported exactly" in why
               for why in conv.values())
    assert all(ql.input_copies == 1 for ql in g.prequantized.values())
    assert conversion_error(g) > 0


def test_regroup_puts_one_group_in_each_block_of_a_run():
    from compiler.importers.gptq import regroup
    g_idx = torch.tensor([0, 1, 1, 0, 2, 2, 2, 2])
    codes = torch.arange(1, 17).reshape(2, 8)
    scales = torch.tensor([[1.0, 2.0, 4.0], [0.5, 0.25, 8.0]], dtype=torch.float16)
    q, s, copies = regroup(codes, scales, g_idx, 4)
    assert copies == 2
    assert q[0].tolist() == [1, 0, 0, 4, 5, 6, 7, 8, 0, 2, 3, 0, 0, 0, 0, 0]
    assert s[0].tolist() == [1.0, 4.0, 2.0, 0.0]
    w = (q.double() * s.double().repeat_interleave(4, dim=1)).reshape(2, 2, 8).sum(dim=1)
    assert torch.equal(w, codes.double() * scales.double()[:, g_idx])


@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K", "Q6_K"])
def test_gguf_other_types_are_requantized_with_the_error_reported(tmp_path, qtype):
    m = tiny_model(**KQUANT) if qtype.endswith("_K") else tiny_model()
    write_gguf(tmp_path / "m.gguf", m, qtype)
    g = import_model(tmp_path / "m.gguf")
    conv = g.meta["import"]["converted"]
    assert len(conv) == 7 and all(w.startswith(qtype) for w in conv.values())
    assert 0 < conversion_error(g) < 0.02


# -- bit-exact backends on an imported model ---------------------------------------------

def _check_golden_equals_isa(folder, prompt, steps=3, cfg=CFG):
    gold = GoldenLLM(golden_from_folder(folder))
    isa = IsaLLM(folder, cfg)
    want = gold.prefill(prompt)
    assert torch.equal(isa.prefill(prompt), want)
    tok = int(torch.argmax(want[-1]))
    for _ in range(steps):
        want = gold.decode(tok)
        assert torch.equal(isa.decode(tok), want)
        tok = int(torch.argmax(want))


def test_golden_equals_isa_on_gptq_int4_and_gguf_q4_0_signed_scales(tmp_path, model):
    ref = write_gptq(tmp_path / "g", model)
    r = folder_mismatches(import_model(tmp_path / "g"), ref, tmp_path / "g_out", CFG)
    _check_golden_equals_isa(r["folder"], [3, 17, 40, 8])
    ref = write_gguf(tmp_path / "q.gguf", model, "Q4_0")
    r = folder_mismatches(import_model(tmp_path / "q.gguf"), ref, tmp_path / "q_out", CFG)
    _check_golden_equals_isa(r["folder"], [1, 2, 52])


@pytest.mark.parametrize("cfg", [CFG, DECODE], ids=["int8", "uint4z"])
def test_golden_equals_isa_on_gguf_q4_1_offsets(tmp_path, model, cfg):
    ref = write_gguf(tmp_path / "q.gguf", model, "Q4_1")
    r = folder_mismatches(import_model(tmp_path / "q.gguf"), ref, tmp_path / "out", cfg)
    assert r["mismatches"] == 0
    _check_golden_equals_isa(r["folder"], [3, 17, 40, 8], cfg=cfg)


# -- 4-bit codes minus zero points streamed as uint4z records ------------------------------

@pytest.mark.parametrize("name, write, kw", [
    ("gptq_asym", write_gptq, {"sym": False}), ("awq", write_awq, {})])
def test_zero_point_layers_stream_as_uint4z_exactly(tmp_path, model, name, write, kw):
    """With a decode unit the layers that INT8 tiles would hold stay 4-bit (uint4z), and
    the folder's weights still equal the file's dequantization; without one, INT8."""
    ref = write(tmp_path / name, model, **kw)
    g = import_model(tmp_path / name)
    assert set(g.meta["import"]["exact"].values()) == {"int8"}
    r = folder_mismatches(g, ref, tmp_path / "out", DECODE)
    assert r["mismatches"] == 0 and r["weights"] == 36864
    assert set(r["formats"].values()) == {"uint4z"}
    wb = r["folder"].manifest["weight_bytes"]
    tiles = folder_mismatches(g, ref, tmp_path / "out8", CFG)
    assert set(tiles["formats"].values()) == {"int8"}
    # the lm_head (a float layer, INT8 by the recipe) is in both
    assert wb["uint4z"] * 1.75 < tiles["folder"].manifest["weight_bytes"]["int8"] - wb["int8"]


def test_zero_point_stream_only_where_it_holds_the_layer():
    codes = torch.arange(32).reshape(1, 32) % 16 - 9          # -9..6: INT8 tiles
    ql = exact_layer(codes.repeat(4, 4), torch.full((4, 4), 0.5, dtype=torch.float16), 32,
                     "l")
    assert ql.bits == 8
    st = zero_point_stream(ql, DECODE)
    assert st.streamed and torch.equal(st.q, ql.q) and torch.equal(st.scales, ql.scales)
    assert zero_point_stream(ql, CFG) is None and zero_point_stream(ql, None) is None
    wide = ql.q.clone()
    wide[0, 0] = 7                                           # row 0 spans -9..7 = 16
    assert zero_point_stream(type(ql)(wide, ql.scales, 32, 8), DECODE) is None
    four = exact_layer(codes.clamp(-8, 7), torch.tensor([[0.5]], dtype=torch.float16), 32,
                       "l")
    assert four.bits == 4 and zero_point_stream(four, DECODE) is None


def test_golden_equals_isa_on_uint4z_gptq_and_negated_q4_0(tmp_path, model):
    ref = write_gptq(tmp_path / "g", model, sym=False)
    r = folder_mismatches(import_model(tmp_path / "g"), ref, tmp_path / "g_out", DECODE)
    assert set(r["formats"].values()) == {"uint4z"}
    _check_golden_equals_isa(r["folder"], [3, 17, 40, 8], cfg=DECODE)
    # Q4_0 with its negative blocks negated (a rescaler of magnitudes): 8 - nibble, uint4z.
    ref = write_gguf(tmp_path / "q.gguf", model, "Q4_0")
    g = import_model(tmp_path / "q.gguf")
    g.prequantized = {n: positive_scales(ql, n) for n, ql in g.prequantized.items()}
    r = folder_mismatches(g, ref, tmp_path / "q_out", DECODE)
    assert r["mismatches"] == 0 and set(r["formats"].values()) == {"uint4z"}
    _check_golden_equals_isa(r["folder"], [1, 2, 52], cfg=DECODE)


def test_shipped_model_as_gguf_q4_0_generates_the_same_on_golden_and_isa(tmp_path):
    """The shipped tiny-llama's trained weights through GGUF Q4_0 (28 layers exact, the
    tied head by the default recipe): greedy tokens equal on the golden and the ISA."""
    import shutil

    from airfoil.folder import load_folder
    from airfoil.models import BUILTIN_MODELS
    from compiler.lower_llm import compile_llm
    from compiler.passes import llm_pipeline, quantized_model
    from compiler.tokenizer import load_tokenizer
    from sim.golden_llm import generate_folder
    from sim.isa_sim import generate_isa
    from sim.measure.quantckpt import FolderModel
    root = BUILTIN_MODELS["tiny-llama"]
    write_gguf(tmp_path / "tiny.gguf", FolderModel(root), "Q4_0")
    shutil.copyfile(root / "tokenizer.json", tmp_path / "tokenizer.json")
    g = import_model(tmp_path / "tiny.gguf")
    assert len(g.meta["import"]["exact"]) == 28 and g.shape.tie_word_embeddings
    compile_llm(quantized_model(llm_pipeline().run(g)), CFG, tmp_path / "out", max_prompt=8)
    folder = load_folder(tmp_path / "out", CFG)
    prompt = load_tokenizer(tmp_path).encode("The ")
    want = generate_folder(folder, prompt, 6)[0]
    assert generate_isa(folder, CFG, prompt, 6)[0] == want


@pytest.mark.rtl
@pytest.mark.parametrize("name, write, kw, cfg", [
    ("g", write_gptq, {"sym": True}, CFG),              # INT4 with code -8
    ("g", write_gptq, {"sym": False}, CFG),             # INT8
    ("q.gguf", write_gguf, {"qtype": "Q4_0"}, CFG),     # INT4, negative scales
    ("q.gguf", write_gguf, {"qtype": "Q4_1"}, CFG),     # INT8, the input read twice
    ("g", write_gptq, {"act_order": True}, CFG),        # INT4, six layers regrouped
    pytest.param("g", write_gptq, {"sym": False}, DECODE,
                 marks=pytest.mark.slow),               # uint4z streamed
    pytest.param("q.gguf", write_gguf, {"qtype": "Q4_1"}, DECODE,
                 marks=pytest.mark.slow)],              # uint4z, the input read twice
    ids=["gptq-int4", "gptq-int8", "q4_0-signed-scales", "q4_1-offsets",
         "gptq-act-order-regrouped", "gptq-uint4z", "q4_1-uint4z"])
def test_rtl_equals_golden_on_an_imported_model(tmp_path, model, name, write, kw, cfg):
    from airfoil.cli.backend_rtl import RtlLLM
    ref = write(tmp_path / name, model, **kw)
    folder = folder_mismatches(import_model(tmp_path / name), ref, tmp_path / "out",
                               cfg)["folder"]
    gold = GoldenLLM(golden_from_folder(folder))
    rtl = RtlLLM(folder, cfg, seed=1, build_dir="build")
    prompt = [5, 17, 2]
    want = gold.prefill(prompt)
    assert torch.equal(rtl.prefill(prompt), want)
    tok = int(torch.argmax(want[-1]))
    assert torch.equal(rtl.decode(tok), gold.decode(tok))


# -- refusals: one line each ---------------------------------------------------------------

def _edit_config(folder, **qc):
    p = folder / "config.json"
    cfg = json.loads(p.read_text())
    cfg["quantization_config"].update(qc)
    p.write_text(json.dumps(cfg))


@pytest.mark.parametrize("edit,match", [
    ({"quant_method": "bitsandbytes"}, r"quant_method 'bitsandbytes' is not imported "
                                       r"\(accepted: gptq, awq\)"),
    ({"bits": 3}, r"bits=3 \(accepted: 2, 4, 8\)"),
    ({"checkpoint_format": "marlin"}, r"checkpoint_format='marlin'"),
    ({"pack_dtype": "int16"}, r"pack_dtype='int16' \(accepted: int32\)"),
    ({"surprise": 1}, r"quantization_config key 'surprise' is not understood"),
])
def test_quantization_config_honoured_or_refused(tmp_path, model, edit, match):
    write_gptq(tmp_path / "m", model)
    _edit_config(tmp_path / "m", **edit)
    with pytest.raises(CompileError, match=match) as e:
        import_model(tmp_path / "m")
    assert "\n" not in str(e.value)


def test_gptq_config_on_float_weights_is_refused(tmp_path, model):
    from safetensors.torch import save_file
    d = tmp_path / "m"
    d.mkdir()
    save_file({k: v.clone().contiguous() for k, v in model.hf_state_dict().items()},
              str(d / "model.safetensors"))
    cfg = model.shape.to_hf()
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CompileError, match=r"names gptq but no layer is stored quantized"):
        import_model(d)


def test_gptq_v1_stored_zero_fifteen_is_refused(tmp_path, model):
    from safetensors.torch import load_file, save_file
    write_gptq(tmp_path / "m", model)
    f = tmp_path / "m" / "model.safetensors"
    t = load_file(str(f))
    t["model.layers.0.mlp.up_proj.qzeros"][0, 0] = 0x7777777F
    save_file(t, str(f))
    with pytest.raises(CompileError, match=r"qzeros stores 15 .* ambiguous"):
        import_model(tmp_path / "m")


def test_gguf_refusals(tmp_path, model):
    with pytest.raises(CompileError, match=r"nothing.gguf: not found"):
        import_model(tmp_path / "nothing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(20))
    with pytest.raises(CompileError, match=r"bad.gguf: corrupted or unreadable GGUF"):
        import_model(bad)


def test_cli_compiles_a_gguf_and_refuses_a_bad_config(tmp_path, model, capsys):
    from clitools import cli_fails, cli_ok
    write_gguf(tmp_path / "m.gguf", model, "Q8_0")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("weights:\n  - {match: '*', format: int8, group: 32}\n")
    out = cli_ok(capsys, ["compile", str(tmp_path / "m.gguf"), "--recipe", str(recipe),
                          "--max-prompt", "4", "-o", str(tmp_path / "out")])
    assert "import gguf" in out and "7 exact" in out
    # No tokenizer.json beside the file: text prompts are refused, token ids run.
    cli_fails(capsys, ["run", str(tmp_path / "out"), "--prompt", "hi"],
              "no tokenizer.json in the folder; give the prompt as --tokens")
    cli_ok(capsys, ["run", str(tmp_path / "out"), "--tokens", "1,2", "--max-new-tokens", "1"])
    write_gptq(tmp_path / "g", model)
    _edit_config(tmp_path / "g", quant_method="hqq")
    cli_fails(capsys, ["compile", str(tmp_path / "g"), "-o", str(tmp_path / "out2")],
              "quant_method 'hqq' is not imported")


def test_tokenizer_json_beside_a_gguf_goes_into_the_folder(tmp_path, model, capsys):
    import shutil

    from airfoil.models import BUILTIN_MODELS
    from clitools import cli_ok
    write_gguf(tmp_path / "m.gguf", model, "Q8_0")
    shutil.copyfile(BUILTIN_MODELS["tiny-llama"] / "tokenizer.json", tmp_path / "tokenizer.json")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("weights:\n  - {match: '*', format: int8, group: 32}\n")
    cli_ok(capsys, ["compile", str(tmp_path / "m.gguf"), "--recipe", str(recipe),
                    "--max-prompt", "4", "-o", str(tmp_path / "out")])
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == \
        (tmp_path / "tokenizer.json").read_bytes()
