"""The banked WGT buffer (``buffers.wgt_banks``) on the RTL core, in Verilator and cocotb.

The ``test`` config with two memory channels of different latencies and 64-bit memory
words, so a WGT row (4 chains x 8 lanes x 4 bits) is two words and the buffer two banks,
each with its own write port. All cases run in one simulation:

* compiled linear layers (a tile's image bank-major, one LD per bank on its channel),
  RTL == ISA simulator == golden, bit for bit;
* LDs into either bank and STs out of both (the STORE unit's routed read maps the
  addresses as the LOAD unit's writes do): the final image equals the ISA simulator's;
* a load-bound program into WGT: the two channels into their own banks load at once,
  into one bank they take turns at its write port; the ISA simulator counts both.
"""

import dataclasses

import numpy as np
import pytest
import torch

from airfoil.isa import Buffer, ErrorCode
from airfoil.program import Program
from airfoil.wgt_banks import WgtBanks
from sim.random_regression import channel_variant

from tests.test_rtl_multichannel import HALT, _layer_cases, _ld, _out, _st

pytestmark = pytest.mark.rtl(group="rtl_wgt_banks")

LAYERS = ("slices", "ksplit")
REGION = 0x4000


def banked_config():
    """Two channels, 64-bit words, the WGT buffer in two banks."""
    cfg = channel_variant("test", 2)
    return dataclasses.replace(
        cfg, name="test_ch2_wgt_banks",
        memory=dataclasses.replace(cfg.memory, word_bits=64),
        buffers=dataclasses.replace(cfg.buffers, wgt_banks=2))


def _bank_addr(cfg, bank: int, row: int) -> int:
    return WgtBanks.of(cfg).word(bank, row) * cfg.word_bytes


def _round_trip(cfg):
    """LD a few rows into each bank (bank 1 on channel 0, bank 0 on channel 1), ST them
    back from both on the other channel, and a range across the banks' boundary."""
    from airfoil.isa import Unit
    S, L = Unit.STORE, Unit.LOAD
    b0, b1 = _bank_addr(cfg, 0, 3), _bank_addr(cfg, 1, 5)
    end0 = _bank_addr(cfg, 1, 0) - 16
    return [_ld(Buffer.WGT, b1, 0x000, 48, 0, release=[S]),
            _ld(Buffer.WGT, b0, 0x100, 40, 1, release=[S]),
            _ld(Buffer.WGT, end0, 0x200, 32, 0, release=[S]),
            _st(Buffer.WGT, b1, 0x1000, 48, 1, wait=[L]),
            _st(Buffer.WGT, b0, 0x1100, 40, 0, wait=[L]),
            _st(Buffer.WGT, end0, 0x1200, 32, 1, wait=[L]), HALT]


def _load_bound(cfg, own_banks: bool):
    """Loads of half the WGT buffer on each channel: into its own bank, or both into
    bank 0."""
    half = cfg.buffers.weight_bytes // 2
    words = []
    for _ in range(4):
        words.append(_ld(Buffer.WGT, 0, 0, half, 0))
        words.append(_ld(Buffer.WGT, half if own_banks else 0, 0, half, 1))
    return words + [HALT]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from airfoil.cli.backend_rtl import emit_core
    from sim.rtl import RtlCase, run_core
    tmp = tmp_path_factory.mktemp("wgt_banks")
    cfg = banked_config()
    core = emit_core(cfg, "build")
    keys, cases, extra = _layer_cases(tmp, cfg, 20, LAYERS)
    img = bytearray(np.random.default_rng(5).integers(0, 256, REGION, dtype=np.uint8))
    img[0x1000:] = bytes(REGION - 0x1000)
    extra["round_trip"] = img
    keys.append("round_trip")
    cases.append(RtlCase(program=Program(_round_trip(cfg), cfg.config_hash_bytes).to_bytes(),
                         image=bytes(img), seed=7, stall=0.3,
                         read_back={"image": (0, len(img))}, max_cycles=50_000, poll=16))
    for own in (True, False):
        keys.append(("load_bound", own))
        cases.append(RtlCase(program=Program(_load_bound(cfg, own),
                                             cfg.config_hash_bytes).to_bytes(),
                             image=bytes(cfg.buffers.weight_bytes), stall=0.0,
                             max_cycles=200_000, poll=16))
    out = run_core(verilog=core["sources"], meta=core["meta"], config=cfg, cases=cases,
                   build_root="build/sim", work_dir=tmp / "run")
    return cfg, dict(zip(keys, out)), extra


@pytest.mark.parametrize("name", LAYERS)
def test_linear_layer_bit_exact(run, name):
    from sim.golden import run_golden
    from sim.isa_sim import run_isa
    cfg, res, extra = run
    r, folder = res[name], extra[name]
    assert r["done"] and not r["error"], \
        f"core error {ErrorCode(r['err_code']).name} at instruction {r['err_pc']}"
    want = run_golden(folder)
    isa_out, _ = run_isa(folder, cfg)
    assert torch.equal(isa_out, want)
    assert torch.equal(_out(r, folder), want)


def test_loads_and_stores_through_both_banks_match_the_isa_simulator(run):
    from sim.isa_sim import IsaSim
    cfg, res, extra = run
    r = res["round_trip"]
    assert r["done"] and not r["error"], ErrorCode(r["err_code"]).name
    img = bytearray(extra["round_trip"])
    IsaSim(cfg, img).run(_round_trip(cfg))
    assert r["reads"]["image"] == bytes(img)
    assert img[0x1000:0x1030] == extra["round_trip"][0x000:0x030]


def test_channels_into_their_own_banks_load_at_once(run):
    """Into their own banks two channels take about half the cycles they take into one
    bank; the ISA simulator's counts follow the core's within 5 %."""
    from sim.isa_sim import IsaSim
    cfg, res, _ = run
    cycles = {}
    for own in (True, False):
        r = res[("load_bound", own)]
        assert r["done"] and not r["error"], ErrorCode(r["err_code"]).name
        isa_cycles = IsaSim(cfg, bytearray(cfg.buffers.weight_bytes)).run(
            _load_bound(cfg, own))["cycles"]
        assert abs(isa_cycles - r["cycles"]) <= 0.05 * r["cycles"], (own, isa_cycles,
                                                                     r["cycles"])
        cycles[own] = r["cycles"]
    assert cycles[True] < 0.6 * cycles[False], cycles
