"""The LLM that fits the ULX3S config (``sim.measure.board_llm``): it compiles for
``ulx3s`` within its memory, and generates the same tokens on the golden model and the
ISA simulator; on the RTL core (slow) every step's logits equal the golden model's."""

import pytest

from airfoil.config import load_config
from sim.measure import board_llm


def test_board_llm_fits_and_isa_equals_golden(tmp_path):
    from sim.golden_llm import generate_folder
    from sim.isa_sim import generate_isa

    config = load_config("ulx3s")
    folder = board_llm.compile_board_llm(config, tmp_path / "out")
    assert len(folder.image) <= config.memory.channels * config.memory.channel_bytes
    want = generate_folder(folder, board_llm.PROMPT, 4)[0]
    assert generate_isa(folder, config, board_llm.PROMPT, 4)[0] == want
    assert len(want) == 4


def test_a_model_needing_an_sfu_function_left_out_is_refused(tmp_path):
    """``ulx3s`` builds the SFU functions a LLaMA needs; without SILU its compile stops
    before writing anything, naming the function and the config's list."""
    import dataclasses

    from airfoil.errors import CompileError

    config = load_config("ulx3s")
    funcs = tuple(f for f in config.sfu_funcs if f != "SILU")
    no_silu = dataclasses.replace(config, name="no_silu", sfu_funcs=funcs)
    with pytest.raises(CompileError, match=r"the model needs the SFU function\(s\) SILU, "
                                           r"which config 'no_silu' does not build"):
        board_llm.compile_board_llm(no_silu, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.rtl(group="ulx3s_core")
@pytest.mark.slow
def test_board_llm_decode_on_the_rtl_core(tmp_path):
    r = board_llm.board_llm_decode(load_config("ulx3s"), tmp_path / "out",
                                   build_dir="build")
    assert r["decode_cycles"] > 0 and len(r["tokens"]) == 4
    assert r["decode_position"] == len(board_llm.PROMPT) + 3
