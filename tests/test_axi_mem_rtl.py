"""The RTL memory of the core's harness (sim/tb/axi_mem.sv): timing, checks, stall patterns.

The ports alone run in a small harness with Python as the design (one short simulation);
the core runs a compiled layer under each stall pattern, bit-exact against the golden,
and (``slow``: a build with the core's signals visible) watches its queues.
"""

import numpy as np
import pytest
import torch

from airfoil.config import load_config
from airfoil.folder import OUT_DTYPES, load_folder
from sim.core_harness import HOLD_CYCLES, STALL_PATTERNS, stall_settings

PORTS = dict(latency=5, outstanding=2, paced_bytes_per_cycle=4, word_bytes=16,
             write_latency=3, mem_bytes=4096)


def test_stall_pattern_is_checked():
    from sim.rtl import RtlCase
    with pytest.raises(ValueError, match="none, random, bursts.*'wobbly'"):
        RtlCase(program=b"", image=b"", stall_pattern="wobbly")
    for pattern in STALL_PATTERNS:
        assert RtlCase(program=b"", image=b"", stall_pattern=pattern).stall_pattern == pattern


def test_stall_settings():
    assert stall_settings("none", 0.25) == {"tb_pattern": 0, "tb_stall_q32": 0,
                                            "tb_open_max": 0}
    assert stall_settings("random", 0.25)["tb_stall_q32"] == 1 << 30
    bursts = stall_settings("bursts", 0.25)
    # Open runs of 1..open_max (mean ~ open_max / 2) between withheld runs of mean 110.
    mean_hold = sum(HOLD_CYCLES) / 2
    assert bursts["tb_open_max"] / 2 == pytest.approx(3 * mean_hold, rel=0.01)
    assert stall_settings("bursts", 0.0)["tb_open_max"] == 0
    with pytest.raises(ValueError, match="probability"):
        stall_settings("random", 1.5)


def _runs(trace: str, bit: str) -> list[int]:
    """Lengths of the runs of ``bit`` that start and end inside ``trace``."""
    runs, n = [], 0
    for i, c in enumerate(trace):
        if c == bit:
            n += 1
        else:
            if n and i - n > 0:
                runs.append(n)
            n = 0
    return runs


@pytest.mark.rtl
def test_memory_ports_keep_the_timing_model(tmp_path):
    from pathlib import Path

    from sim.cocotb_runner import run_cocotb
    from sim.core_harness import BUILD_ARGS, MEMORY_SOURCES
    tb = Path(__file__).resolve().parents[1] / "sim" / "tb_axi_mem"
    r = run_cocotb(sources=[*MEMORY_SOURCES, tb / "axi_mem_ports_tb.sv"],
                   top="axi_mem_ports_tb", test_module="tb_axi_mem", test_dir=tb, seed=0,
                   build_root="build/sim", extra_args=BUILD_ARGS)
    p = PORTS
    # Write: the response WRITE_LATENCY cycles after the last data beat, OKAY.
    w_at, b_at, resp = r["write"]
    assert (b_at - w_at - 1, resp) == (p["write_latency"], 0)
    # Read back: first beat LATENCY cycles after the address, one beat a cycle, RLAST last.
    beats = r["read"]
    assert beats[0][0] - r["read_ar"] == p["latency"]
    assert [t for t, *_ in beats] == list(range(beats[0][0], beats[0][0] + 4))
    assert [d for _, d, _, _ in beats] == r["words"]
    assert [(resp, last) for _, _, resp, last in beats] == [(0, 0)] * 3 + [(0, 1)]
    # Strobes: the low 8 bytes written, the high 8 kept.
    old = int(r["words"][0], 16).to_bytes(16, "little")
    assert bytes.fromhex(r["after_strobe"]) == b"\xff" * 8 + old[8:]
    # Outstanding bursts: with RREADY low, at most OUTSTANDING accepted.
    assert r["outstanding"] == p["outstanding"]
    # Beyond the memory: SLVERR (zero data) for the beat outside, OKAY inside; a write
    # outside answers SLVERR.
    assert [(resp, d) for _, d, resp, _ in r["edge"]] == [(0, r["edge"][0][1]), (2, "0x0")]
    assert r["edge_write"][2] == 2
    # The paced reader: 4 of 16 bytes a cycle, one beat every 4 cycles once the beat's
    # worth the idle channel had kept (plus the first beat's cycle of rate) is spent.
    times = [t for t, *_ in r["paced"]]
    every = p["word_bytes"] // p["paced_bytes_per_cycle"]
    assert np.diff(times).tolist() == [every - 1] + [every] * 6
    # WLAST on the first of two beats: reported, and nothing before it.
    assert r["errors_before"] == []
    assert len(r["errors"]) == 2 and all("WLAST" in e for e in r["errors"])
    # ARVALID lowered before its handshake: reported.
    assert len(r["dropped"]) == 1 and "ARVALID dropped before ARREADY" in r["dropped"][0]
    # Stall patterns (ARREADY of an idle reader, after the first cycle of reset).
    tr = {k: [t[1:] for t in v] for k, v in r["traces"].items()}
    assert set(tr["none"][0]) == {"1"}
    for pattern in ("random", "bursts"):
        same, again, other = tr[pattern]
        assert same == again and same != other        # seeded: reproducible
        low = same.count("0") / len(same)
        # About a 0.25 fraction (bursts: about 13 withheld runs in the trace).
        assert (0.2 < low < 0.3) if pattern == "random" else (0.1 < low < 0.45), (pattern, low)
    held = _runs(tr["bursts"][0], "0") + _runs(tr["bursts"][2], "0")
    assert held and min(held) >= HOLD_CYCLES[0] and max(held) <= HOLD_CYCLES[1]
    assert max(_runs(tr["random"][0], "0")) < HOLD_CYCLES[0]


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    from compiler.linear import compile_linear
    config = load_config("test")
    gen = torch.Generator().manual_seed(3)
    out = tmp_path_factory.mktemp("patterns") / "f"
    compile_linear(torch.randn(21, 256, generator=gen), torch.randn(21, generator=gen),
                   config, out, wformat="int4", group=32)
    return config, load_folder(out, config)


def _cases(folder, watch=()):
    from sim.rtl import RtlCase
    nbytes = folder.n * folder.out_bits // 8
    return [RtlCase(program=folder.program.to_bytes(), image=bytes(folder.image), seed=seed,
                    stall=0.0 if pattern == "none" else 0.3, stall_pattern=pattern,
                    read_back={"out": (folder.manifest["output"]["addr"], nbytes)},
                    max_cycles=400_000, watch=list(watch))
            for seed, pattern in enumerate(STALL_PATTERNS)]


def _run(config, folder, watch=()):
    from airfoil.cli.backend_rtl import emit_core
    from sim.golden import run_golden
    from sim.rtl import run_core
    core = emit_core(config, "build")
    out = run_core(verilog=core["sources"], meta=core["meta"], config=config,
                   cases=_cases(folder, watch), build_root="build/sim")
    want = run_golden(folder)
    dt = np.dtype(OUT_DTYPES[folder.out_bits])
    for r, pattern in zip(out, STALL_PATTERNS):
        assert r["stall_pattern"] == pattern
        assert r["done"] and not r["error"] and r["protocol_errors"] == []
        got = torch.from_numpy(np.frombuffer(r["reads"]["out"], dtype=dt).astype(np.int64))
        assert torch.equal(got, want), pattern
    return out


@pytest.mark.rtl(group="rtl_core")
def test_core_bit_exact_under_every_stall_pattern(layer):
    config, folder = layer
    none, rand, bursts = _run(config, folder)
    # Withholding only slows the core down; long withheld runs more than scattered ones.
    assert none["cycles"] < rand["cycles"] and none["cycles"] < bursts["cycles"]
    assert none["watched"] == {}


@pytest.mark.rtl
@pytest.mark.slow
def test_watch_counts_queue_full_cycles(layer):
    config, folder = layer
    watch = ["engine.queue_load.w_rdy", "!engine.queue_load.w_rdy", "engine.fetch.pending"]
    for r in _run(config, folder, watch):
        high, low = r["watched"]["engine.queue_load.w_rdy"], \
            r["watched"]["!engine.queue_load.w_rdy"]
        # Every cycle of the watched window is one or the other; the window covers the run.
        assert high + low >= r["cycles"]
        assert r["watched_rises"]["!engine.queue_load.w_rdy"] <= low
        assert set(r["watched"]) == set(watch)
