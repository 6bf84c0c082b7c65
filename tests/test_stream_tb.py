"""The stream testbench parts of sim/stream_tb.py: the scoreboard names what went wrong
(loss, duplication, reordering, corruption, extra items) and the pause patterns draw as
documented."""

import itertools
import random

import pytest

from sim.stream_tb import Scoreboard, never, random_pauses


def _run(expected, delivered):
    board = Scoreboard(expected)
    for item in delivered:
        board.receive(item)
    return board.report()


def test_in_order_delivery_is_clean():
    r = _run([1, 2, 3], [1, 2, 3])
    assert r["errors"] == [] and r["mismatches"] == 0 and r["lost"] == 0 and r["received"] == 3


def test_loss_is_counted():
    r = _run([1, 2, 3, 4], [1, 2])
    assert r["lost"] == 2 and r["mismatches"] == 0
    assert r["errors"] == ["2 of 4 expected items not delivered"]


def test_duplicate_is_named():
    r = _run([1, 2, 3], [1, 2, 2, 3])
    assert r["duplicate"] == 1 and r["lost"] == 0 and r["corrupt"] == 0
    assert "duplicates an earlier item" in r["errors"][0]


def test_reordering_is_named_and_not_a_loss():
    r = _run([1, 2, 3, 4], [1, 3, 2, 4])
    assert r["reordered"] == 1 and r["lost"] == 0 and r["corrupt"] == 0
    assert "is expected item #2, delivered before #1" in r["errors"][0]


def test_corrupt_and_extra_items():
    r = _run([1, 2], [1, 9, 2, 7])
    assert r["corrupt"] == 1 and r["lost"] == 0
    r = _run([1, 2], [1, 2, 5])
    assert r["extra"] == 1 and r["errors"] == ["extra item #2: 5"]


def test_custom_comparison_masks_bits():
    board = Scoreboard([0x1F], same=lambda g, w: (g ^ w) & 0xF == 0, show=hex)
    assert board.receive(0x3F) and board.report()["mismatches"] == 0


def test_pause_patterns():
    assert not any(itertools.islice(never(), 100))
    rng = random.Random(3)
    assert list(itertools.islice(random_pauses(rng, 0.0), 5)) == [False] * 5
    assert rng.random() == random.Random(3).random()      # p = 0 draws nothing
    draws = list(itertools.islice(random_pauses(random.Random(1), 0.5), 2000))
    assert 800 < sum(draws) < 1200
    with pytest.raises(ValueError, match="pause probability must be in 0..1, not 1.0"):
        random_pauses(rng, 1.0)
