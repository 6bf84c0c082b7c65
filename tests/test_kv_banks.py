"""The banked KV buffer's record map (airfoil/kv_banks.py), its config field and the
compiler's per-bank loads."""

import dataclasses

import numpy as np
import pytest

from airfoil.config import load_config
from airfoil.errors import ConfigError
from airfoil.folder import parameter_block
from airfoil.kv_banks import KvBanks


@pytest.mark.parametrize("banks", [1, 2, 4])
def test_records_of_a_group_share_an_offset_and_never_overlap(banks):
    m = KvBanks(banks=banks, bank_bytes=4096 // banks, word_bytes=16)
    keys, kv, stride = 11, 3, 48
    addr = m.records(32, 0, keys, kv, stride).reshape(keys, kv)
    assert len(set(addr.ravel().tolist())) == keys * kv
    assert (np.diff(np.sort(addr.ravel())) >= stride).all()
    for key in range(keys):
        bank = key % banks
        assert ((addr[key] // m.bank_bytes) == bank).all()
        # Key group g: the same offset in every bank.
        assert (addr[key] % m.bank_bytes == addr[key - bank] % m.bank_bytes).all()
    assert (addr.max() % m.bank_bytes) + stride <= 32 + m.span(keys, kv, stride, stride)
    if banks == 1:
        assert (addr.ravel() == 32 + np.arange(keys * kv) * stride).all()
    assert m.word_map.bank(m.bank_depth * (banks - 1)) == banks - 1


def test_config_field_checked_and_hashed():
    u = load_config("u280_8ch_tiles")
    one = dataclasses.replace(u, buffers=dataclasses.replace(u.buffers, kv_banks=1))
    assert u.buffers.kv_banks == 8 and one.config_hash != u.config_hash
    # One bank (the default) leaves the hash of a config that never set the key.
    t = load_config("test")
    assert dataclasses.replace(t, buffers=dataclasses.replace(t.buffers, kv_banks=1)
                               ).config_hash == t.config_hash
    for bad in (3, 0, True):
        with pytest.raises(ConfigError, match="kv_banks"):
            dataclasses.replace(u, buffers=dataclasses.replace(u.buffers, kv_banks=bad))
    with pytest.raises(ConfigError, match="kv_banks"):     # banks of under two words
        dataclasses.replace(u, buffers=dataclasses.replace(u.buffers, kv_banks=1 << 20))


def test_parameter_block():
    assert parameter_block(5, 3) == np.array([5, 3, 8, 8], "<i4").tobytes()
    assert parameter_block(5, 3, 4)[12:] == np.array([2], "<i4").tobytes()
    assert parameter_block(6, 3, 4)[12:] == np.array([3], "<i4").tobytes()


def test_tiny_model_on_banked_kv_equals_golden(tmp_path):
    """The compiled tiny model on ``sim_llm_kv_banks`` (4 KV banks: per-bank loads of key
    groups, banked ATT_QK/ATT_PV records) chooses the golden's tokens in the ISA simulator
    (the RTL core too: tests/test_llm_rtl.py, slow)."""
    from compiler.ir import build_llama_graph
    from compiler.llm_recipe import parse_llm_recipe
    from compiler.lower_llm import compile_llm
    from compiler.passes import llm_pipeline, quantized_model
    from llmtools import random_llama
    from sim.golden_llm import generate_folder
    from sim.isa_sim import generate_isa

    from airfoil.folder import load_folder
    cfg = load_config("sim_llm_kv_banks")
    m = random_llama(heads=4, kv=2, hd=16, vocab=37, inter=96, layers=1, max_pos=32, seed=1)
    recipe = {"weights": [{"match": "*", "format": "int8", "group": 32}]}
    g = llm_pipeline(parse_llm_recipe(recipe)).run(build_llama_graph(m.shape,
                                                                     m.hf_state_dict()))
    compile_llm(quantized_model(g), cfg, tmp_path / "out", max_prompt=5)
    folder = load_folder(tmp_path / "out", cfg)
    prompt = [5, 17, 2, 30, 11, 8, 1]
    assert generate_isa(folder, cfg, prompt, 6)[0] == generate_folder(folder, prompt, 6)[0]
