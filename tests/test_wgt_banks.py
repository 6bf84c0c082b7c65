"""The banked WGT buffer's address map (airfoil/wgt_banks.py), its config field, and a
tile's bank-major image."""

import dataclasses

import numpy as np
import pytest

from airfoil.config import load_config
from airfoil.errors import ConfigError
from airfoil.wgt_banks import WgtBanks


@pytest.mark.parametrize("banks", [1, 2, 4, 8])
def test_map_puts_every_word_once_and_a_bank_is_one_range(banks):
    m = WgtBanks(banks=banks, depth=16, row_words=8)
    words = np.arange(16 * 8)
    rm = m.row_major(words)
    assert sorted(rm.tolist()) == words.tolist()
    # Bank b's LD addresses are one range, and land in its own words of every row.
    for b in range(banks):
        mine = words[m.bank(words) == b]
        assert mine.tolist() == list(range(mine[0], mine[0] + len(mine)))
        lanes = rm[mine] % 8
        assert set(lanes.tolist()) == set(range(b * m.bank_words, (b + 1) * m.bank_words))
        assert m.row_major(m.word(b, 5)) == 5 * 8 + b * m.bank_words
    if banks == 1:
        assert (rm == words).all()


def test_tile_image_round_trip():
    m = WgtBanks(banks=4, depth=64, row_words=8)
    wb = 16
    blob = bytes(np.random.default_rng(1).integers(0, 256, 3 * 8 * wb + 2 * wb,
                                                    dtype=np.uint8))
    image = m.tile_image(blob, wb)
    assert len(image) == m.tile_bytes(len(blob), wb) == 4 * 8 * wb
    assert m.tile_rows(image, len(blob), wb) == blob
    # Bank 1's part: word 2 and 3 of each row, one row after the other.
    part = len(image) // 4
    rows = np.frombuffer(blob + bytes(len(image) - len(blob)), np.uint8)
    assert image[part:2 * part] == rows.reshape(4, 8 * wb)[:, 2 * wb:4 * wb].tobytes()


def test_config_field_checked_and_hashed():
    u = load_config("u280_8ch_tiles")
    one = dataclasses.replace(u, buffers=dataclasses.replace(u.buffers, wgt_banks=1))
    assert u.buffers.wgt_banks == 8 and one.config_hash != u.config_hash
    for bad in (3, 16, 0):
        with pytest.raises(ConfigError, match="wgt_banks"):
            dataclasses.replace(u, buffers=dataclasses.replace(u.buffers, wgt_banks=bad))
