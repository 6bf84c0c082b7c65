"""Network on chip in amaranth.sim: mapping, routing tables, traffic, adder tree."""

import random

import pytest
from amaranth.sim import Simulator

from airfoil.config import load_config
from airfoil.errors import ConfigError
from airfoil.noc_map import (EAST, LOCAL, NORTH, SOUTH, WEST, crossbar_reach, field_slices,
                             flit_layout, mesh_reach, mesh_shape, plan_for_config, xy_hops,
                             xy_route)
from hdl.noc import Crossbar, FlatNetwork, Mesh, ReduceTree, Router, noc_for_plan
from sim.tb_noc.amsim import run_amaranth
from sim.tb_noc.traffic import Schedule, TrafficEngine


# -- plain data ----------------------------------------------------------------------------

def test_flit_layout_fields():
    lay = flit_layout(16, 256)
    f = field_slices(lay)
    assert f == {"payload": (0, 256), "dest": (256, 16), "src": (272, 4), "first": (276, 1),
                 "last": (277, 1)}
    assert lay.size == 278
    with pytest.raises(ConfigError, match="payload width"):
        flit_layout(4, 0)


@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 3), (4, 4), (5, 7)])
def test_mesh_reach_partitions_nodes(rows, cols):
    n = rows * cols
    for node in range(n):
        reach = mesh_reach(rows, cols, node)
        assert sum(reach) == (1 << n) - 1                       # disjoint and complete
        assert all(a & b == 0 for i, a in enumerate(reach) for b in reach[i + 1:])
        x, y = node % cols, node // cols
        assert (reach[EAST] == 0) == (x == cols - 1) or n == 1
        assert (reach[NORTH] == 0) == (y == rows - 1) or rows == 1
        assert reach[LOCAL] == 1 << node


def test_xy_route_walks_x_then_y():
    rows, cols = 3, 4
    for s in range(rows * cols):
        for d in range(rows * cols):
            here, hops, turned = s, 0, False
            while True:
                p = xy_route(rows, cols, here, d)
                if p == LOCAL:
                    break
                if p in (NORTH, SOUTH):
                    turned = True
                else:
                    assert not turned, "XY routing went back to X after Y"
                here += {NORTH: cols, SOUTH: -cols, EAST: 1, WEST: -1}[p]
                hops += 1
            assert here == d and hops == xy_hops(cols, s, d)


def test_plan_for_configs():
    u = plan_for_config(load_config("u280"))
    assert (u.rows, u.cols) == (5, 7) and u.nodes == 35 and u.used_nodes == 33
    assert u.payload_bits == 512 and u.routers == 35
    assert u.channel_chains[0] == (0, 1, 2, 3) and u.channel_chains[31] == (124, 125, 126, 127)
    assert all(u.chain_node[k] == u.channel_node[c]
               for c, ks in enumerate(u.channel_chains) for k in ks)
    assert u.sfu_node not in u.channel_node and u.sfu_node == 2 * 7 + 3
    t = plan_for_config(load_config("test"), topology="crossbar")
    assert t.nodes == 2 and t.channel_chains == ((0, 1, 2, 3),) and t.sfu_node == 1
    assert mesh_shape(33) == (5, 7) and mesh_shape(16) == (4, 4)
    with pytest.raises(ConfigError, match="topology must be one of mesh, crossbar, not 'ring'"):
        plan_for_config(load_config("test"), topology="ring")
    with pytest.raises(ConfigError, match="buffer depth"):
        plan_for_config(load_config("test"), depth=0)


def test_u280_plan_elaborates():
    net = noc_for_plan(plan_for_config(load_config("u280")))
    assert isinstance(net, Mesh) and net.nodes == 35 and net.layout.size == 512 + 35 + 6 + 2
    frag = net.elaborate(None)
    routers = [v[0] for k, v in frag._named_submodules.items() if k.startswith("r")]
    assert len(routers) == 35 and all(r.ports == 5 for r in routers)
    for obj in (net, frag, *routers):
        obj._MustUse__silence = True     # checked structurally, not converted (35 routers)


def test_parameter_errors():
    with pytest.raises(TypeError, match="Buffer depth must be a positive integer, not 0"):
        Router(reach=crossbar_reach(2), nodes=2, payload_bits=8, depth=0)
    with pytest.raises(ValueError, match="beyond the 2"):
        Router(reach=(1, 4), nodes=2, payload_bits=8)
    with pytest.raises(TypeError, match="Row count must be a positive integer, not 0"):
        Mesh(rows=0, cols=2, payload_bits=8)
    with pytest.raises(TypeError, match="Input count must be an integer >= 2, not 1"):
        ReduceTree(inputs=1, lanes=2, elem_bits=8)


# -- traffic in amaranth.sim ---------------------------------------------------------------

def _traffic(net, diameter, pattern, seed, packets=12, idle=0.3, stall=0.3):
    eng = TrafficEngine(nodes=net.nodes, fields=field_slices(net.layout), pattern=pattern,
                        seed=seed, packets=packets, max_len=4, idle=idle, stall=stall,
                        hotspot=net.nodes - 1)
    res = run_amaranth(FlatNetwork(net), Schedule(eng, diameter=diameter, max_cycles=4000))
    assert not res["errors"], f"seed {seed}: {res['errors'][:3]}"
    assert res["left"] == 0 and res["drain_cycles"] <= res["drain_bound"]
    return res


@pytest.mark.parametrize("pattern", ["uniform", "hotspot", "all_to_one", "broadcast"])
@pytest.mark.parametrize("seed", [1])
def test_mesh2x2_traffic(pattern, seed):
    res = _traffic(Mesh(rows=2, cols=2, payload_bits=12, depth=2), 2, pattern, seed)
    assert res["ejected"] >= res["injected"] > 0


@pytest.mark.parametrize("pattern,seed", [("uniform", 2), ("broadcast", 3)])
def test_crossbar3_traffic(pattern, seed):
    _traffic(Crossbar(ports=3, payload_bits=12, depth=2), 0, pattern, seed)


def test_mesh_zero_load_latency_is_hops_plus_one():
    """Lone flits take exactly Mesh.latency(src, dst) cycles, inject to eject."""
    net = Mesh(rows=2, cols=3, payload_bits=8, depth=2)
    eng = TrafficEngine(nodes=6, fields=field_slices(net.layout), pattern="zero_load",
                        seed=5, packets=3)
    lat = []
    orig = eng._receive

    def receive(d, word):
        src = eng.unpack(word)["src"]
        n = len(eng.latencies)
        orig(d, word)
        lat.append((src, d, eng.latencies[n]))
    eng._receive = receive
    res = run_amaranth(FlatNetwork(net), Schedule(eng, diameter=3))
    assert not res["errors"] and len(lat) == 18
    for s, d, cycles in lat:
        assert cycles == net.latency(s, d), (s, d, cycles)


def test_router_multicast_copies_once_per_output():
    """A broadcast through a 4-port crossbar arrives once at each port with its own dest."""
    net = Crossbar(ports=4, payload_bits=8, depth=2)
    eng = TrafficEngine(nodes=4, fields=field_slices(net.layout), pattern="bcast_vector",
                        seed=3, packets=10, stall=0.5, hotspot=2)
    res = run_amaranth(FlatNetwork(net), Schedule(eng, diameter=0))
    assert not res["errors"] and res["injected"] == 10 and res["ejected"] == 40


# -- reduction -----------------------------------------------------------------------------

@pytest.mark.parametrize("inputs", [2, 3, 5])
def test_reduce_tree(inputs):
    lanes, bits = 3, 6
    dut = ReduceTree(inputs=inputs, lanes=lanes, elem_bits=bits)
    assert dut.latency == {2: 1, 3: 2, 5: 3}[inputs] and dut.out_bits == bits + dut.latency
    rng = random.Random(inputs)
    vecs = [[[rng.randrange(-32, 32) for _ in range(lanes)] for _ in range(inputs)]
            for _ in range(20)]
    want = [[sum(v[i][j] for i in range(inputs)) for j in range(lanes)] for v in vecs]
    got, first_out = [], []
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def tb(ctx):
        pos = [0] * inputs
        cycle = 0
        while len(got) < len(vecs):
            for i in range(inputs):
                offer = pos[i] < len(vecs) and rng.random() < 0.7
                ctx.set(dut.i[i].valid, offer)
                if pos[i] < len(vecs):
                    ctx.set(dut.i[i].payload, vecs[pos[i]][i])
            ready = rng.random() < 0.7
            ctx.set(dut.o.ready, ready)
            took = [ctx.get(dut.i[i].valid) and ctx.get(dut.i[i].ready) for i in range(inputs)]
            if ctx.get(dut.o.valid) and ready:
                got.append(list(ctx.get(dut.o.payload)))
            if any(took) and not first_out:
                first_out.append(cycle)
            for i in range(inputs):
                pos[i] += took[i]
            await ctx.tick()
            cycle += 1
            assert cycle < 2000

    sim.add_testbench(tb)
    sim.run()
    assert got == want


def test_cli_noc(capsys):
    from airfoil.cli import main
    assert main(["noc", "--config", "u280"]) == 0
    out = capsys.readouterr().out
    assert "mesh 5x7 payload=512 depth=4, 35 router(s), 33 of 35 nodes used" in out
    assert "channel 31 at node 32 feeds chains 124, 125, 126, 127" in out
    assert main(["noc", "--config", "nope"]) == 2
    assert "config file 'nope' not found" in capsys.readouterr().err
