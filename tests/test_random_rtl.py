"""Randomized regression of the core (:mod:`sim.random_regression`): random linear layers
over weight format x sparsity x group size x output width x bias x shape x memory stall
pattern, on one and several memory channels, RTL == ISA simulator == golden, bit for bit.

The default run draws every (format, sparsity) pair the ``test_decode`` config takes once
(each under the next stall pattern) and a few free draws on one channel, and free draws
on two channels, and every pair once on the ``bitserial`` and ``lut`` PE kinds; the slow run draws 1,200 cases over 1, 2 and 4 channels. A failure
lists each failing case as a :class:`~sim.random_regression.LayerCase` (its seed and
every drawn axis), which :func:`~sim.random_regression.run_cases` reruns alone.
"""

import pytest

from airfoil.config import load_config
from sim.random_regression import channel_variant, draw_cases, legal_pairs, run_cases

pytestmark = pytest.mark.rtl(group="random_rtl")


def _run(tmp_path, channels, seed, count, base="test_decode"):
    cfg = channel_variant(base, channels)
    records = run_cases(draw_cases(cfg, seed, count), cfg, tmp_path)
    refused = [f"{r['case']!r}: {r['refused']}" for r in records if r["refused"]]
    bad = [f"{r['case']!r}: {r['detail']}" for r in records
           if not r["ok"] and not r["refused"]]
    assert not refused, "draws the compiler refuses:\n" + "\n".join(refused)
    assert not bad, f"{len(bad)} of {len(records)} cases differ:\n" + "\n".join(bad)
    return cfg, records


def test_every_format_and_sparsity_pair_bit_exact_on_one_channel(tmp_path):
    cfg = channel_variant("test_decode", 1)
    pairs = legal_pairs(cfg)
    _, records = _run(tmp_path, 1, 10_000, len(pairs) + 10)
    seen = {(r["case"].format_bin, r["case"].sparsity) for r in records}
    assert seen >= set(pairs)
    assert {r["case"].stall_pattern for r in records} == {"none", "random", "bursts"}


@pytest.mark.parametrize("base", ["test_bitserial", "test_lut"])
def test_every_pair_bit_exact_on_the_other_pe_kinds(tmp_path, base):
    """The streamed engine and the MATRIX unit on the ``bitserial`` and ``lut`` PEs."""
    cfg = load_config(base)
    pairs = legal_pairs(cfg)
    _, records = _run(tmp_path, 1, 30_000, len(pairs) + 4, base)
    assert {(r["case"].format_bin, r["case"].sparsity) for r in records} >= set(pairs)


def test_random_layers_bit_exact_on_two_channels(tmp_path):
    _run(tmp_path, 2, 20_000, 20)


@pytest.mark.slow
@pytest.mark.parametrize("channels, count", [(1, 500), (2, 400), (4, 300)])
def test_random_layer_sweep(tmp_path, channels, count):
    _run(tmp_path, channels, 100_000 * channels, count)
