"""Lowering whole decoder LLMs into ISA programs, run on the ISA simulator against the golden.

Every comparison is bit-exact: the ISA simulator's logits (ACT int32) for prefill and for
each decode step equal the golden's, which reads the same quantized tensors from the
compiled folder.
"""

from pathlib import Path

import pytest
import torch

from airfoil.config import load_config
from airfoil.errors import AirfoilError, CompileError
from airfoil.folder import load_folder, read_llm_model
from airfoil.isa import ISA_VERSION, Opcode, SfuFunc, decode, encode
from compiler.ir import build_llama_graph
from compiler.llm_recipe import parse_llm_recipe
from compiler.lower_llm import REG_LEN, REG_POS, REG_T, compile_llm
from compiler.passes import llm_pipeline, quantized_model
from llmtools import random_llama
from sim.golden_llm import GoldenLLM, generate, golden_from_folder
from sim.isa_sim import IsaLLM, generate_isa

#: Mixed formats: INT8 attention projections, INT4 MLP and head, groups of 32.
RECIPE = {"weights": [{"match": "*", "format": "int8", "group": 32},
                      {"match": "*.mlp.*", "format": "int4"},
                      {"match": "lm_head", "format": "int4"}]}
VOCAB = 53          # odd: the logit rows are padded to whole memory words


def _quantized(heads, kv, hd, tie=False, seed=0, layers=2, inter=96):
    m = random_llama(heads=heads, kv=kv, hd=hd, vocab=VOCAB, inter=inter, layers=layers,
                     max_pos=64, tie=tie, seed=seed)
    shape = m.shape
    g = llm_pipeline(parse_llm_recipe(RECIPE)).run(build_llama_graph(shape, m.hf_state_dict()))
    return quantized_model(g)


def _tokens(n, seed=1):
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _check_exact(folder, config, prompt, steps=8):
    """Prefill logits (every row) and ``steps`` decode steps equal the golden's."""
    gold = GoldenLLM(golden_from_folder(folder))
    isa = IsaLLM(folder, config)
    want, got = gold.prefill(prompt), isa.prefill(prompt)
    assert torch.equal(got, want)
    tok = int(torch.argmax(want[-1]))
    for _ in range(steps):
        want, got = gold.decode(tok), isa.decode(tok)
        assert torch.equal(got, want)
        tok = int(torch.argmax(want))
    return isa


@pytest.mark.parametrize("heads,kv,hd,tie", [(4, 2, 32, False),     # GQA
                                             (4, 4, 16, True),      # MHA, tied head
                                             (3, 1, 32, False),     # odd heads, one kv head
                                             (5, 5, 32, True)])     # odd heads, MHA
def test_random_models_bit_exact(tmp_path, heads, kv, hd, tie):
    qm = _quantized(heads, kv, hd, tie)
    cfg = load_config("sim_llm")
    compile_llm(qm, cfg, tmp_path / "out", max_prompt=8)
    folder = load_folder(tmp_path / "out", cfg)
    prompt = _tokens(5)
    isa = _check_exact(folder, cfg, prompt)
    # The folder's tensors are the compiler's input, bit for bit.
    back = read_llm_model(folder.manifest, folder.image, cfg)
    assert back["embed"] == qm["embed"]
    for a, b in zip(back["layers"], qm["layers"]):
        for key in ("q", "k", "down"):
            assert torch.equal(a[key].q, b[key].q) and torch.equal(a[key].scales,
                                                                   b[key].scales)
        assert torch.equal(a["attn_norm"], b["attn_norm"])
    # Greedy generation: the same tokens as the golden on the compiler's own input.
    want, _ = generate(qm, prompt, 9)
    got, runs = generate_isa(folder, cfg, prompt, 9)
    assert got == want
    assert [r["phase"] for r in runs] == ["prefill"] + ["decode"] * 8
    assert all(r["cycles"] > 0 for r in runs) and isa.position == 5 + 8


def test_prompt_lengths_share_one_program(tmp_path):
    """One prefill program serves every prompt length up to the bucket (registers)."""
    qm = _quantized(4, 2, 16, layers=1)
    cfg = load_config("sim_llm")
    m = compile_llm(qm, cfg, tmp_path / "out", max_prompt=6)
    folder = load_folder(tmp_path / "out", cfg)
    gold = GoldenLLM(golden_from_folder(folder))
    for T in (1, 2, 6):
        prompt = _tokens(T, seed=T)
        assert torch.equal(IsaLLM(folder, cfg).prefill(prompt), gold.prefill(prompt))
    # A longer prompt: chunks of 6 and 3 tokens of the same program; the same logits.
    prompt = _tokens(9, seed=9)
    assert torch.equal(IsaLLM(folder, cfg).prefill(prompt), gold.prefill(prompt))
    assert [(r["phase"], r["position"], r["tokens"]) for r in _runs(folder, cfg, prompt)] \
        == [("prefill", 0, 6), ("prefill", 6, 3)]
    with pytest.raises(AirfoilError, match="prompt is empty"):
        IsaLLM(folder, cfg).prefill([])
    # The programs read their lengths from registers loaded from the parameter block.
    words = folder.phase_program("prefill").words
    loads = [decode(w) for w in words[:3]]
    assert [(i.op.name, i.reg) for i in loads] == [("LDREG", REG_POS), ("LDREG", REG_T),
                                                   ("LDREG", REG_LEN)]
    mm = [decode(w) for w in words if w & 0xF == Opcode.MM.value]
    assert mm and all(i.m_reg == REG_T and i.tok_scale == 1 for i in mm)
    dec = [decode(w) for w in folder.phase_program("decode").words]
    assert not any(i.opcode == Opcode.MM for i in dec)
    funcs = {i.func for i in dec if i.opcode == Opcode.SFU}
    assert {SfuFunc.ATT_QK, SfuFunc.SOFTMAX, SfuFunc.ATT_PV, SfuFunc.ROPE,
            SfuFunc.RMSNORM, SfuFunc.QUANT_TOKEN, SfuFunc.SILU, SfuFunc.MUL,
            SfuFunc.ADD} <= funcs
    assert m["isa_version"] == ISA_VERSION == 4
    assert m["phases"]["decode"]["instructions"] == len(dec)


def _runs(folder, cfg, prompt):
    llm = IsaLLM(folder, cfg)
    llm.prefill(prompt)
    return llm.runs


def test_buffers_bound_positions_and_prompt(tmp_path):
    """Without max_prompt the compiler takes the most tokens and positions that fit."""
    text = (Path(__file__).parent.parent / "fpga/boards/sim_llm.yaml").read_text()
    text = text.replace("name: sim_llm", "name: small_act").replace(
        "act_bytes: 262144", "act_bytes: 8192").replace("kv_bytes: 131072", "kv_bytes: 2048")
    (tmp_path / "small.yaml").write_text(text)
    cfg = load_config(tmp_path / "small.yaml")
    qm = _quantized(4, 2, 16, layers=1)
    m = compile_llm(qm, cfg, tmp_path / "out")
    # KV: a decode step's attention in passes of one of the 2 kv heads, K and V 32-byte
    # records per position -> 32 positions in 2 KiB (16 with both heads at once).
    assert m["model"]["max_positions"] == 2048 // (2 * 1 * 32)
    T = m["model"]["max_prompt"]
    assert 1 <= T < 32
    # A prefill chunk's attention takes both heads at once: 16 positions.
    assert m["model"]["prefill_positions"] == 2048 // (2 * 2 * 32)
    with pytest.raises(CompileError, match="does not fit the ACT buffer"):
        compile_llm(qm, cfg, tmp_path / "o2", max_prompt=T + 1)
    folder = load_folder(tmp_path / "out", cfg)
    prompt = _tokens(20, seed=3)        # chunks up to position 16, then decode steps
    want, _ = generate(qm, prompt, 4)
    got, runs = generate_isa(folder, cfg, prompt, 4)
    assert got == want
    assert [r["phase"] for r in runs[:-3]] == ["prefill"] * -(-16 // T) + ["decode"] * 4


def test_k_split_tiles_bit_exact(tmp_path):
    """A small WGT buffer splits K into chunks accumulated across MV/MM instructions."""
    text = (Path(__file__).parent.parent / "fpga/boards/sim_llm.yaml").read_text()
    text = text.replace("name: sim_llm", "name: small_wgt").replace(
        "weight_bytes: 65536", "weight_bytes: 512")
    (tmp_path / "small.yaml").write_text(text)
    cfg = load_config(tmp_path / "small.yaml")
    qm = _quantized(4, 2, 16, layers=1)
    m = compile_llm(qm, cfg, tmp_path / "out", max_prompt=4)
    assert any(t["col0"] > 0 for v in m["model"]["linears"].values() for t in v["tiles"])
    _check_exact(load_folder(tmp_path / "out", cfg), cfg, _tokens(3), steps=3)


def test_k_split_tokens_bounded_by_the_accumulators(tmp_path):
    """A K-split tile keeps tokens x batches accumulators: the compiler takes no more tokens
    per prefill than the MATRIX unit keeps (config k_split_batches), and refuses more."""
    import dataclasses
    base = load_config("sim_llm")
    # 512 bytes of WGT buffer: tiles of 4 rows (one batch) x 32 INT8 weights, 8 batches.
    cfg = dataclasses.replace(base, name="small_wgt", buffers=dataclasses.replace(
        base.buffers, weight_bytes=512))
    assert cfg.k_split_batches == 8
    qm = _quantized(4, 2, 16, layers=1)
    m = compile_llm(qm, cfg, tmp_path / "out")
    tiles = [t for v in m["model"]["linears"].values() for t in v["tiles"]]
    assert any(t["col0"] > 0 for t in tiles)
    most = cfg.k_split_batches // max(-(-t["rows"] // cfg.chains) for t in tiles)
    assert m["model"]["max_prompt"] == most
    with pytest.raises(CompileError, match="K-split accumulators"):
        compile_llm(qm, cfg, tmp_path / "o2", max_prompt=most + 1)


def test_head_dim_over_the_context_accumulator_refused(tmp_path):
    """ATT_PV's head dimension is bounded by the config's limits.att_pv_max_head_dim."""
    import dataclasses
    base = load_config("sim_llm")
    qm = _quantized(4, 2, 32, layers=1)
    small = dataclasses.replace(base, limits=dataclasses.replace(base.limits,
                                                                 att_pv_max_head_dim=16))
    with pytest.raises(CompileError, match="head_dim=32 is over the 16"):
        compile_llm(qm, small, tmp_path / "out", max_prompt=2)
    at = dataclasses.replace(base, limits=dataclasses.replace(base.limits,
                                                              att_pv_max_head_dim=32))
    compile_llm(qm, at, tmp_path / "ok", max_prompt=2)


def test_multichannel_slices_bit_exact(tmp_path):
    """Weight tiles load as slices on 4 channels; tokens still order every hazard."""
    text = (Path(__file__).parent.parent / "fpga/boards/sim_llm.yaml").read_text()
    text = text.replace("name: sim_llm", "name: four_ch").replace("channels: 1", "channels: 4")
    (tmp_path / "four.yaml").write_text(text)
    cfg = load_config(tmp_path / "four.yaml")
    qm = _quantized(4, 2, 32, layers=1)
    compile_llm(qm, cfg, tmp_path / "out", max_prompt=4)
    folder = load_folder(tmp_path / "out", cfg)
    chans = {decode(w).channel for w in folder.phase_program("decode").words
             if w & 0xF == Opcode.LD.value}
    assert chans == {0, 1, 2, 3}
    _check_exact(folder, cfg, _tokens(4), steps=3)


def test_tiny_model_eight_decode_steps(tmp_path):
    from compiler.importers.hf import import_hf
    from compiler.tokenizer import load_tokenizer
    from airfoil.models import BUILTIN_MODELS
    root = BUILTIN_MODELS["tiny-llama"]
    qm = quantized_model(llm_pipeline().run(import_hf(root)))
    cfg = load_config("sim_llm")
    compile_llm(qm, cfg, tmp_path / "tiny", max_prompt=16)
    folder = load_folder(tmp_path / "tiny", cfg)
    prompt = load_tokenizer(root).encode("The ")
    want, _ = generate(qm, prompt, 9)
    got, runs = generate_isa(folder, cfg, prompt, 9)
    assert got == want and len(runs) == 9


def test_compile_errors(tmp_path):
    qm = _quantized(4, 2, 16, layers=1)
    with pytest.raises(CompileError, match=r"logits does not fit the OUT buffer \(1248 of "
                                           r"1024 bytes"):
        compile_llm(qm, load_config("test"), tmp_path / "a")
    with pytest.raises(CompileError, match="max_prompt must be an integer in 1..64"):
        compile_llm(qm, load_config("sim_llm"), tmp_path / "b", max_prompt=65)
    qm["layers"][0]["up"].group = 16
    with pytest.raises(CompileError, match=r"layer layers\.0\.up: group size 16 is not built"):
        compile_llm(qm, load_config("sim_llm"), tmp_path / "c")


def test_isa_v2_fields_are_appended():
    """Version-2 fields sit after every version-1 field, so v1 encodings keep their bits."""
    from airfoil import isa
    v2 = {"MEM_LAYOUT": ("count_reg", "row_reg", "gather", "idx_addr"),
          "MATRIX_LAYOUT": ("tok_scale", "sbuf_addr", "m_reg", "astride", "ostride"),
          "SFU_LAYOUT": ("aux", "rows", "rows_reg", "pos_reg", "len_reg", "heads",
                         "kv_heads")}
    for name, new in v2.items():
        fields = dict(iter(getattr(isa, name)))
        old_end = max(f.offset + f.width for k, f in fields.items() if k not in new)
        assert min(fields[k].offset for k in new) == old_end, name
        assert fields[new[-1]].offset + fields[new[-1]].width <= isa.BODY_BITS
    w = encode(Opcode.MM, m=3, rows=4, k=32, group=32, tok_scale=1, m_reg=REG_T,
               astride=2, ostride=1, sbuf_addr=0x40)
    ins = decode(w)
    assert (ins.m, ins.tok_scale, ins.m_reg, ins.astride, ins.sbuf_addr) == (3, 1, REG_T, 2,
                                                                             0x40)
    assert decode(encode(Opcode.SFU, func=SfuFunc.ATT_PV, heads=5, kv_heads=5,
                         len_reg=REG_LEN)).func == SfuFunc.ATT_PV


def test_sim_faults_on_bad_v2_fields():
    from airfoil.errors import ProgramError
    from airfoil.isa import Buffer, SysOp
    from sim.isa_sim import IsaSim
    cfg = load_config("sim_llm")
    halt = encode(Opcode.SYS, op=SysOp.HALT)
    # SOFTMAX whose first query row would see no key (position register beyond the keys)
    prog = [encode(Opcode.SYS, op=SysOp.SETREG, reg=REG_LEN, value=0), halt]
    bad = encode(Opcode.SFU, func=SfuFunc.SOFTMAX, src=Buffer.OUT, dst=Buffer.OUT, n=16,
                 rows=1, heads=1, len_reg=REG_LEN)
    with pytest.raises(ProgramError, match="instruction 1 .*keys=0 must be at least 1"):
        IsaSim(cfg, bytearray(64)).run([prog[0], bad, halt])
    # MV cannot take its vector count from a register
    mv = encode(Opcode.MV, m=1, m_reg=REG_T, rows=4, k=32, group=32)
    with pytest.raises(ProgramError, match="MALFORMED: MV takes no m_reg"):
        IsaSim(cfg, bytearray(64)).run([mv, halt])
    # LDREG beyond the image
    with pytest.raises(ProgramError, match="AXI_ERROR"):
        IsaSim(cfg, bytearray(64)).run([encode(Opcode.SYS, op=SysOp.LDREG, reg=1, value=64),
                                        halt])
