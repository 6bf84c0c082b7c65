"""Synthetic full-size models (compiler/synthetic.py): reduced-size shapes compiled with
weights and in size-only mode, attention in passes of KV heads, the board's memory
capacity, the data-free cycle model. The full-size compiles are the slow tests at the end
(and `make bench`, area llama7b)."""

import dataclasses
import json
import resource
from pathlib import Path

import pytest
import torch
import yaml

from airfoil.config import load_config
from airfoil.errors import AirfoilError, CompileError
from airfoil.folder import load_folder
from airfoil.isa import Buffer, Opcode, decode
from airfoil.program import read_program
from compiler.lower_llm import compile_llm
from compiler.reference import LlamaShape
from compiler.synthetic import SHAPES, load_shape, synthetic_model
from sim.golden_llm import GoldenLLM, golden_from_folder
from sim.isa_sim import IsaLLM, decode_step_cycles
from sim.timing import llm_step_cycles
from tests.clitools import cli_fails, cli_ok

#: A reduced LLaMA shape: GQA, odd vocabulary, two layers.
SMALL = dict(vocab_size=301, hidden_size=256, intermediate_size=640, num_hidden_layers=2,
             num_attention_heads=8, num_key_value_heads=4, head_dim=32,
             max_position_embeddings=96)


def _shape(**kw):
    return LlamaShape(**{**SMALL, **kw})


def _write_shape(tmp_path, **kw):
    p = tmp_path / "shape.yaml"
    p.write_text(yaml.safe_dump({**SMALL, **kw}))
    return str(p)


def test_synthetic_model_is_seeded_per_tensor():
    a = synthetic_model(_shape(), seed=3)
    b = synthetic_model(_shape(), seed=3)
    c = synthetic_model(_shape(), seed=4)
    down_a = a["layers"][1]["down"].q.clone()
    up_a = a["layers"][0]["up"].q.clone()      # read in another order: the same tensors
    assert torch.equal(b["layers"][0]["up"].q, up_a)
    assert torch.equal(b["layers"][1]["down"].q, down_a)
    assert not torch.equal(c["layers"][1]["down"].q, down_a)
    ql = a["layers"][0]["q"]
    assert ql.shape == (8 * 32, 256) and (ql.bits, ql.group) == (4, 128)
    assert int(ql.q.abs().max()) <= 7 and ql.scales.dtype == torch.float16
    assert bool((ql.scales > 0).all())
    emb = a["embed"]
    assert torch.equal(emb[290:301], torch.cat([emb[0:301]])[290:301])
    assert emb[0:301].shape == (301, 256)


def test_load_shape(tmp_path):
    assert load_shape("llama3-8b").num_key_value_heads == 8
    assert load_shape("llama3-8b").vocab_size == 128256
    assert load_shape(_write_shape(tmp_path)).hidden_size == 256
    with pytest.raises(CompileError, match="neither a known shape"):
        load_shape("llama9-1t")
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({**SMALL, "hidden": 3}))
    with pytest.raises(CompileError, match="unknown field 'hidden'"):
        load_shape(str(p))


def test_size_only_and_full_compile_agree(tmp_path, capsys):
    """Both modes write the same programs, memory map and layout; size-only no image, and
    a run refuses its folder with one line."""
    spec = _write_shape(tmp_path)
    full, size = str(tmp_path / "full"), str(tmp_path / "size")
    common = ["compile", "--synthetic", spec, "--config", "sim_llm", "--seed", "5"]
    out = cli_ok(capsys, common + ["-o", full])
    assert "decode cycles/token" in out
    cli_ok(capsys, common + ["-o", size, "--size-only"])
    for name in ("prefill.afp", "decode.afp", "decode.s", "memory_map.txt"):
        assert (Path(full) / name).read_bytes() == (Path(size) / name).read_bytes(), name
    assert not (Path(size) / "weights.bin").exists()
    mf = json.loads((Path(full) / "manifest.json").read_text())
    ms = json.loads((Path(size) / "manifest.json").read_text())
    assert (mf["size_only"], ms["size_only"]) == (False, True)
    assert mf["model"] == ms["model"] and mf["image_bytes"] == ms["image_bytes"]
    assert (Path(full) / "weights.bin").stat().st_size == mf["image_bytes"]
    assert "l1.down weights" in (Path(size) / "memory_map.txt").read_text()
    cli_fails(capsys, ["run", size, "--tokens", "1,2"], "compiled with --size-only")
    cli_fails(capsys, ["compile", "--synthetic", "llama9-1t", "-o", str(tmp_path / "x")],
              "neither a known shape")
    cli_fails(capsys, ["compile", "--size-only", "-o", str(tmp_path / "x")],
              "apply to MODEL or --synthetic")


@pytest.mark.parametrize("kv_bytes,passes,slots", [(1 << 17, 1, 1),    # whole layer
                                                    (1 << 15, 4, 2),    # a head, two slots
                                                    (1 << 14, 4, 1)])   # a head, one slot
def test_synthetic_model_bit_exact_in_kv_passes(tmp_path, kv_bytes, passes, slots):
    """The ISA simulator's logits equal the golden's for a prefill and decode steps, with the
    decode step's attention in passes of KV heads when the KV buffer holds fewer; the
    data-free cycle model gives the ISA simulator's cycles."""
    base = load_config("sim_llm")
    cfg = dataclasses.replace(base, buffers=dataclasses.replace(base.buffers,
                                                                kv_bytes=kv_bytes))
    shape = _shape(max_position_embeddings=96)
    m = synthetic_model(shape, seed=1)
    man = compile_llm(m, cfg, tmp_path / "out", max_prompt=6)
    rec, kv = man["model"]["record_bytes"], shape.num_key_value_heads
    words = load_folder(tmp_path / "out", cfg).phase_program("decode").words
    kv_loads = [i for i in map(decode, words) if i.opcode == Opcode.LD and i.buf == Buffer.KV]
    assert len(kv_loads) == 2 * passes * shape.num_hidden_layers
    assert {i.nbytes for i in kv_loads} == {kv // passes * rec}
    assert len({i.buf_addr for i in kv_loads}) == 2 * slots
    folder = load_folder(tmp_path / "out", cfg)
    gold, isa = GoldenLLM(golden_from_folder(folder)), IsaLLM(folder, cfg)
    prompt = [5, 300, 17, 2]
    assert torch.equal(isa.prefill(prompt), gold.prefill(prompt))
    tok = 9
    for _ in range(4):
        assert torch.equal(isa.decode(tok), gold.decode(tok))
    for pos in (0, 30, 95):
        want = decode_step_cycles(folder, cfg, pos)
        got = llm_step_cycles(man, words, cfg, position=pos)
        assert (got["cycles"], got["bytes_read"]) == (want["cycles"], want["bytes_read"])


def test_image_over_the_board_memory_is_refused(tmp_path, capsys):
    base = load_config("sim_llm")
    small = dataclasses.replace(base, memory=dataclasses.replace(base.memory,
                                                                 channel_bytes=1 << 19))
    with pytest.raises(CompileError, match=r"needs \d+ bytes .* more than the 524288 bytes"):
        compile_llm(synthetic_model(_shape()), small, tmp_path / "out", size_only=True)
    assert not (tmp_path / "out").exists()
    cfg = tmp_path / "small.yaml"
    data = base.to_dict()
    data["memory"]["channel_bytes"] = 1 << 19
    cfg.write_text(yaml.safe_dump(data))
    cli_fails(capsys, ["compile", "--synthetic", _write_shape(tmp_path), "--config", str(cfg),
                       "-o", str(tmp_path / "out"), "--size-only"],
              "more than the 524288 bytes (0.00 GiB: 1 channels x 524288 bytes)")


def test_kv_buffer_too_small_for_one_head_is_refused(tmp_path):
    base = load_config("sim_llm")
    cfg = dataclasses.replace(base, buffers=dataclasses.replace(base.buffers, kv_bytes=256))
    with pytest.raises(CompileError, match="does not fit the KV buffer"):
        compile_llm(synthetic_model(_shape()), cfg, tmp_path / "out", size_only=True)


def test_one_7b_layer_on_u280(tmp_path):
    """One layer of LLaMA-2-7B's widths on the u280 config: 4096 KV positions, the decode
    step's attention in 32 passes of one KV head in two slots, each head's K and V loaded
    as one LD per KV bank (32, every 32nd position from the bank's first, each on its own
    channel), a prefill of tokens that fit ACT and OUT, the layer's 7B tensors in the
    memory map."""
    cfg = load_config("u280")
    shape = dataclasses.replace(SHAPES["llama2-7b"], num_hidden_layers=1, vocab_size=512)
    man = compile_llm(synthetic_model(shape), cfg, tmp_path / "out", size_only=True)
    mm = man["model"]
    assert mm["max_positions"] == 4096 and mm["max_prompt"] >= 16
    words = read_program(tmp_path / "out" / "decode.afp").words
    kv_loads = [i for i in map(decode, words) if i.opcode == Opcode.LD and i.buf == Buffer.KV]
    banks = cfg.buffers.kv_banks
    assert len(kv_loads) == 2 * 32 * banks
    assert {i.nbytes for i in kv_loads} == {mm["record_bytes"]}
    assert len({i.buf_addr for i in kv_loads}) == 4 * banks
    assert {i.count for i in kv_loads} == {4096 // banks}
    assert {i.dram_stride for i in kv_loads} == {banks * mm["layout"]["kv_row"]}
    for j in range(0, len(kv_loads), banks):          # a K or V load of one head
        assert len({i.channel for i in kv_loads[j:j + banks]}) == banks
    assert mm["linears"]["l0.down"]["k"] == 11008
    assert "l0.gate weights" in (tmp_path / "out" / "memory_map.txt").read_text()


# -- full size ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name,config", [("llama2-7b", "u280"), ("llama3-8b", "u280"),
                                         ("llama2-13b", "vhk158")])
def test_full_size_compile(tmp_path, name, config):
    """A published shape compiles size-only for its board in under 10 minutes of CPU and
    8 GiB, with KV positions for a 4096-token context and the whole image on the board."""
    cfg = load_config(config)
    before = resource.getrusage(resource.RUSAGE_SELF)
    man = compile_llm(synthetic_model(SHAPES[name]), cfg, tmp_path / "out", size_only=True)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert cpu < 600, f"{name}: {cpu:.0f} s of CPU"
    assert man["model"]["max_positions"] >= 4096
    assert man["image_bytes"] <= cfg.memory.channels * cfg.memory.channel_bytes
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 8 << 20     # KiB


# -- length-adaptive programs against fixed-length ones -------------------------------------

def test_fixed_length_programs_compute_what_the_adaptive_ones_do(tmp_path):
    """A program with its lengths fixed (compiler.fixed_length) gives the adaptive program's
    logits at its lengths, and other logits at other lengths (it reads no register load)."""
    from compiler.fixed_length import fixed_length_words
    from sim.isa_sim import IsaSim
    cfg = load_config("sim_llm")
    compile_llm(synthetic_model(_shape(), seed=2), cfg, tmp_path / "out", max_prompt=6)
    folder = load_folder(tmp_path / "out", cfg)
    adaptive, fixed, wrong = (IsaLLM(folder, cfg) for _ in range(3))
    for llm, pos in ((fixed, 4), (wrong, 3)):
        for phase, p, t in (("prefill", 0, 4), ("decode", pos, 1)):
            w = fixed_length_words(llm.programs[phase].words, pos=p, tokens=t)
            llm._decoded[phase] = (w, IsaSim.prepare(w))
    prompt = [7, 1, 250, 33]
    want = adaptive.prefill(prompt)
    assert torch.equal(fixed.prefill(prompt), want) and torch.equal(wrong.prefill(prompt), want)
    want = adaptive.decode(12)
    assert torch.equal(fixed.decode(12), want)
    assert not torch.equal(wrong.decode(12), want)
    with pytest.raises(CompileError, match="not a length-adaptive LLM program"):
        fixed_length_words(fixed_length_words(folder.phase_program("decode").words, pos=0,
                                              tokens=1), pos=0, tokens=1)


def test_fixed_length_programs_on_kv_banks(tmp_path):
    """On a banked KV buffer the fixed program sets the key-group register too and gives
    the adaptive program's logits; fixed as for one bank (the register left to load) it
    is refused."""
    from compiler.fixed_length import fixed_length_words
    from sim.isa_sim import IsaSim
    cfg = load_config("sim_llm_kv_banks")
    banks = cfg.buffers.kv_banks
    compile_llm(synthetic_model(_shape(), seed=2), cfg, tmp_path / "out", max_prompt=6)
    folder = load_folder(tmp_path / "out", cfg)
    adaptive, fixed = IsaLLM(folder, cfg), IsaLLM(folder, cfg)
    for phase, p, t in (("prefill", 0, 4), ("decode", 4, 1)):
        w = fixed_length_words(fixed.programs[phase].words, pos=p, tokens=t, kv_banks=banks)
        fixed._decoded[phase] = (w, IsaSim.prepare(w))
    prompt = [7, 1, 250, 33]
    assert torch.equal(fixed.prefill(prompt), adaptive.prefill(prompt))
    assert torch.equal(fixed.decode(12), adaptive.decode(12))
    with pytest.raises(CompileError, match="of a KV buffer of 1 bank"):
        fixed_length_words(folder.phase_program("decode").words, pos=0, tokens=1)


def test_scheme_bytes_on_a_small_shape(tmp_path):
    """Adaptive, bucket and per-length program bytes for lengths 1..64, every fixed-length
    program built and measured."""
    from bench.length_adaptive import scheme_bytes
    from compiler.fixed_length import program_bytes
    cfg = load_config("sim_llm")
    man = compile_llm(synthetic_model(_shape()), cfg, tmp_path / "out", size_only=True,
                      max_positions=64)
    s = scheme_bytes(tmp_path / "out", max_length=64, sample="all")
    pre = (tmp_path / "out" / "prefill.afp").stat().st_size
    dec = (tmp_path / "out" / "decode.afp").stat().st_size
    assert pre == program_bytes(man["phases"]["prefill"]["instructions"])
    assert s["adaptive"] == pre + dec
    assert s["buckets"] == 1 * pre + 4 * dec          # one prefill bucket of 128, 4 of 16
    assert s["per_length"] == 64 * (pre + dec)
    assert s["programs"]["decode"]["checked_lengths"] == 64
    with pytest.raises(ValueError, match="holds 64 positions"):
        scheme_bytes(tmp_path / "out", max_length=65)


def test_decode_figures_on_a_small_shape(tmp_path):
    """bench.llama7b's per-context figures: the bytes a step must read grow by the K and V
    rows of the extra keys, exactly as the cycle model's bytes read do; tokens/s are the
    clock over the cycles, the roofline the bandwidth over the bytes."""
    from bench.llama7b import bytes_per_token, decode_figures
    cfg = load_config("sim_llm")
    man = compile_llm(synthetic_model(_shape()), cfg, tmp_path / "out", size_only=True)
    f = decode_figures("m", tmp_path / "out", man, cfg, lambda msg: None, contexts=(8, 40))
    extra = {c: f[f"m_decode_cycles_model_ctx{c}_bytes_read"] - f[f"m_bytes_per_token_ctx{c}"]
             for c in (8, 40)}
    assert extra[8] == extra[40] > 0          # gains, RoPE rows, parameters: not per key
    assert f["m_bytes_per_token_ctx40"] - f["m_bytes_per_token_ctx8"] == \
        2 * 2 * 32 * man["model"]["layout"]["kv_row"]
    assert f["m_bytes_per_token_ctx8"] == bytes_per_token(man, 8)
    for c in (8, 40):
        cyc = f[f"m_decode_cycles_model_ctx{c}"]
        assert f[f"m_decode_tok_s_model_ctx{c}"] == cfg.clock_mhz * 1e6 / cyc
        assert f[f"m_roofline_tok_s_ctx{c}"] == pytest.approx(
            cfg.channel_bytes_per_cycle * cfg.clock_mhz * 1e6 / f[f"m_bytes_per_token_ctx{c}"])
    assert f["m_decode_cycles_model_ctx40"] > f["m_decode_cycles_model_ctx8"]
    # The SFU's stalls: a share of the step that grows with the keys attention reads.
    for c in (8, 40):
        frac, stall = (f[f"m_attention_stall_fraction_ctx{c}"],
                       f[f"m_attention_stall_fraction_ctx{c}_cycles"])
        assert 0 < frac < 1
        assert stall == round(frac * f[f"m_decode_cycles_model_ctx{c}"])
    assert f["m_attention_stall_fraction_ctx40_cycles"] > \
        f["m_attention_stall_fraction_ctx8_cycles"]


@pytest.mark.parametrize("recipe", ["2of4_w4_magnitude", "bitmod3", "mix3"])
def test_size_only_streamed_recipe_matches_the_seeded_compile(tmp_path, capsys, recipe):
    """A streamed recipe's size-only folder (streams sized from their record tags, no
    weight packed) has the programs, memory map and layout of the compile that packs the
    same seeded weights; those weights run bit-exactly with the golden model, and the
    data-free cycle model times the size-only folder as the ISA simulator the full one."""
    spec = _write_shape(tmp_path)
    full, size = tmp_path / "full", tmp_path / "size"
    common = ["compile", "--synthetic", spec, "--config", "sim_llm_decode", "--seed", "5",
              "--recipe", f"compiler/recipes/{recipe}.yaml", "--max-prompt", "4"]
    cli_ok(capsys, common + ["-o", str(full)])
    cli_ok(capsys, common + ["-o", str(size), "--size-only"])
    for name in ("prefill.afp", "decode.afp", "decode.s", "memory_map.txt"):
        assert (full / name).read_bytes() == (size / name).read_bytes(), name
    mf = json.loads((full / "manifest.json").read_text())
    ms = json.loads((size / "manifest.json").read_text())
    assert mf["model"] == ms["model"] and mf["weight_bytes"] == ms["weight_bytes"]
    assert any(v["streamed"] for v in ms["model"]["linears"].values())
    cfg = load_config("sim_llm_decode")
    folder = load_folder(full, cfg)
    gold, isa = GoldenLLM(golden_from_folder(folder)), IsaLLM(folder, cfg)
    assert torch.equal(isa.prefill([5, 300, 17]), gold.prefill([5, 300, 17]))
    assert torch.equal(isa.decode(9), gold.decode(9))
    # The data-free cycle model times the streams from the size-only manifest as the ISA
    # simulator does from the records.
    words = read_program(size / "decode.afp", cfg.config_hash_bytes).words
    for pos in (0, 40):
        want = decode_step_cycles(folder, cfg, pos)
        got = llm_step_cycles(ms, words, cfg, position=pos)
        assert (got["cycles"], got["bytes_read"]) == (want["cycles"], want["bytes_read"])


def test_synthetic_streamed_layers_hold_their_recipe():
    """bitmod3: one FP3 variant per record (slice rows x group), values of that variant;
    2:4: two kept weights in each window of four."""
    from airfoil import format_registry
    m = synthetic_model(_shape(), recipe="compiler/recipes/bitmod3.yaml", record_rows=4)
    ql = m["layers"][0]["up"]
    tags = ql.formats
    assert ql.streamed and tags.shape == (640, 2)
    assert torch.equal(tags, tags[::4].repeat_interleave(4, dim=0))
    assert len(set(tags.reshape(-1).tolist())) == 4
    for t in set(tags.reshape(-1).tolist()):
        vals = set(format_registry.by_tag(t).values())
        cols = torch.repeat_interleave(tags == t, 128, dim=1)
        assert set(ql.q[cols].tolist()) <= vals
    s = synthetic_model(_shape(), recipe="compiler/recipes/2of4_w4_magnitude.yaml")
    ql = s["layers"][1]["down"]
    assert ql.sparsity == "2:4" and ql.mask.reshape(256, -1, 4).sum(-1).eq(2).all()
    assert not ql.q[~ql.mask].any() and int(ql.q.abs().max()) <= 7


@pytest.mark.parametrize("weights,what", [
    ({"format": "int4", "sparsity": "block", "density": 0.5}, "block skip keeps"),
    ({"mixed": ["int2", "int4"]}, "formats of different widths")])
def test_synthetic_recipe_of_weight_dependent_sizes_is_refused(tmp_path, capsys, weights,
                                                               what):
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump({"weights": [{"match": "*", "format": "int4",
                                                "group": 128},
                                               {"match": "*.up_proj", **weights}]}))
    """Block skip and a choice among formats of different widths size their records by
    the weights: one error line naming what a synthetic model accepts."""
    cli_fails(capsys, ["compile", "--synthetic", _write_shape(tmp_path), "--config",
                       "sim_llm_decode", "--recipe", str(rec), "--size-only", "-o",
                       str(tmp_path / "x")], what)
    with pytest.raises(CompileError, match="accepted: one format per layer"):
        synthetic_model(_shape(), recipe=str(rec))
