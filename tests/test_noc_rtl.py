"""Network on chip in Verilator via cocotb: random traffic with backpressure, bench path."""

import pytest

from sim.measure import noc as noc_measure

pytestmark = pytest.mark.rtl(group="noc")

MESH = dict(topology="mesh", rows=3, cols=3, payload_bits=32, depth=2)
XBAR = dict(topology="crossbar", rows=2, cols=3, payload_bits=32, depth=2)


def _verilog(p):
    p = dict(p)
    return noc_measure.network_verilog(p.pop("topology"), p.pop("rows"), p.pop("cols"), **p)


@pytest.mark.parametrize("pattern,seed", [("uniform", 11), ("hotspot", 12),
                                          ("all_to_one", 13), ("broadcast", 14)])
def test_mesh3x3_random_traffic(pattern, seed):
    """Every packet once, in order per pair, intact, contiguous; drained within bound."""
    res = noc_measure.run_rtl(_verilog(MESH), seed, pattern=pattern, packets=40, max_len=5,
                            idle=0.3, stall=0.4, hotspot=4)
    assert res["errors"] == [] and res["left"] == 0
    assert res["ejected"] >= res["injected"] >= 40 * (8 if pattern == "all_to_one" else 9)
    assert res["drain_cycles"] <= res["drain_bound"]


@pytest.mark.parametrize("pattern,seed", [("uniform", 21), ("broadcast", 22)])
def test_crossbar6_random_traffic(pattern, seed):
    res = noc_measure.run_rtl(_verilog(XBAR), seed, pattern=pattern, packets=40, max_len=5,
                            idle=0.2, stall=0.4)
    assert res["errors"] == [] and res["left"] == 0


def test_saturation_figure_is_accepted_over_nodes_times_cycles():
    """The bench path at a small size: figure == accepted flits / (nodes x window)."""
    p = dict(MESH)
    s = noc_measure.saturation(p.pop("topology"), p.pop("rows"), p.pop("cols"), cycles=400,
                             warmup=100, seed=3, **p)
    res = s["result"]
    assert res["errors"] == [] and res["left"] == 0
    assert s["nodes"] == 9 and s["window"] == 300
    assert s["value"] == res["window_ejected"] / (9 * 300)
    assert 0 < s["value"] <= 1


def test_broadcast_vector_counts_every_copy():
    p = dict(MESH)
    b = noc_measure.broadcast_vector(p.pop("topology"), p.pop("rows"), p.pop("cols"),
                                   elements=256, **p)
    assert b["flits"] == 64 and b["copies"] == 64 * 9
    assert b["value"] >= b["flits"]
