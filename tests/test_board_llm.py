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


@pytest.mark.rtl(group="ulx3s_core")
@pytest.mark.slow
def test_board_llm_decode_on_the_rtl_core(tmp_path):
    r = board_llm.board_llm_decode(load_config("ulx3s"), tmp_path / "out",
                                   build_dir="build")
    assert r["decode_cycles"] > 0 and len(r["tokens"]) == 4
    assert r["decode_position"] == len(board_llm.PROMPT) + 3
