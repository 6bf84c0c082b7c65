"""Parts of the core: the plan of each board config (what is built) and the buffer fabric's
round robin between the LOAD unit's channels (amaranth.sim)."""

from __future__ import annotations

from pathlib import Path

import pytest
from amaranth.hdl import Fragment, Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from airfoil import isa
from airfoil.config import load_config
from airfoil.errors import ConfigError
from hdl.core.buffers import BufferGeometry
from hdl.core.fabric import grant, round_robin
from hdl.core.matrix import MatrixUnit
from hdl.core.matrix_front import MatrixFront
from hdl.core.plan import CorePlan
from hdl.core.top import Core, Engine

BOARDS = sorted(p.stem for p in (Path(__file__).parent.parent / "fpga" / "boards").glob("*.yaml"))


def _config(board):
    return load_config(Path(__file__).parent.parent / "fpga" / "boards" / f"{board}.yaml")


def _buildable(cfg) -> bool:
    try:
        BufferGeometry.of(cfg)
    except ConfigError:
        return False
    return True


def test_boards_found():
    assert {"test", "test_decode", "u280"} <= set(BOARDS)


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("sfu", [True, False])
def test_plan_of_board(board, sfu):
    """The units, the streamed engine and the accumulator memory follow the config and the
    ``sfu`` choice; a config the core cannot be built of is refused as Core refuses it."""
    cfg = _config(board)
    if not _buildable(cfg):
        with pytest.raises(ConfigError):
            CorePlan.of(cfg, sfu=sfu)
        with pytest.raises(ConfigError):
            Core(cfg, sfu=sfu)
        return
    plan = CorePlan.of(cfg, sfu=sfu)
    expected = [isa.Unit.LOAD, isa.Unit.MATRIX] + ([isa.Unit.SFU] if sfu else []) + [
        isa.Unit.STORE]
    assert list(plan.units) == sorted(expected, key=lambda u: u.value)
    assert plan.has_sfu is sfu
    assert plan.streamed is cfg.decode_unit
    assert plan.weight_streams == (cfg.memory.channels if cfg.decode_unit else 0)
    assert plan.acc_memory == ("amaranth" if sfu else "ram")
    assert plan.channels == cfg.memory.channels
    assert plan.pe == cfg.pe
    assert plan.geometry == BufferGeometry.of(cfg)


@pytest.mark.parametrize("board", ["test", "test_lut"])
def test_plan_acc_depth_is_the_matrix_units(board):
    """The plan's accumulator depth is the one the MATRIX unit it plans is built with."""
    cfg = _config(board)
    plan = CorePlan.of(cfg)
    unit = MatrixUnit(geometry=plan.geometry, chains=cfg.chains, lanes=cfg.lanes,
                      weight_formats=cfg.weight_formats, group_sizes=cfg.group_sizes,
                      pe=plan.pe, lut_group=cfg.lut_group, acc_memory=plan.acc_memory)
    Fragment.get(unit, None)
    assert plan.acc_depth == unit.acc_depth


@pytest.mark.parametrize("board,sfu", [("test", True), ("test", False), ("test_decode", True)])
def test_engine_builds_what_the_plan_says(board, sfu):
    """The elaborated engine has an SFU and a streamed engine exactly when its plan does,
    and one queue per planned unit."""
    cfg = _config(board)
    engine = Engine(cfg, sfu=sfu)
    frag = Fragment.get(engine, None)
    assert engine.plan == CorePlan.of(cfg, sfu=sfu)
    names = {name for _, name, _ in frag.subfragments}
    assert ("sfu" in names) is engine.plan.has_sfu
    assert {n for n in names if n.startswith("queue_")} == {
        f"queue_{u.name.lower()}" for u in engine.plan.units}
    matrix = next(sub for sub, name, _ in frag.subfragments if name == "matrix")
    streamed = [name for _, name, _ in matrix.subfragments]
    assert ("streamed" in streamed) is engine.plan.streamed


class _Arbiter(wiring.Component):
    """:func:`round_robin` and :func:`grant` over ``n`` requests, always served."""

    def __init__(self, n):
        self._n = n
        super().__init__({"req": wiring.In(n), "taken": wiring.Out(n)})

    def elaborate(self, platform):
        m = Module()
        taken = [Signal(name=f"t{c}") for c in range(self._n)]
        hit, sel, last = round_robin(m, [self.req[c] for c in range(self._n)], "rr")
        grant(m, hit, sel, last, taken)
        for c in range(self._n):
            m.d.comb += self.taken[c].eq(taken[c])
        return m


@pytest.mark.parametrize("n", [2, 3])
def test_round_robin_takes_turns(n):
    """With every channel asking, the grants go round in order, one a cycle; a lone
    request is served at once; nothing is granted without a request."""
    dut = _Arbiter(n)
    seen = []

    async def testbench(ctx):
        for req in [0] + [(1 << n) - 1] * (2 * n) + [0b1, 1 << (n - 1)]:
            ctx.set(dut.req, req)
            seen.append((req, ctx.get(dut.taken)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert seen[0] == (0, 0)
    everyone = [t for _, t in seen[1:1 + 2 * n]]
    # After reset channel 0 counts as the last one served: channel 1 goes first.
    assert everyone == [1 << ((i + 1) % n) for i in range(2 * n)]
    assert [t for _, t in seen[-2:]] == [0b1, 1 << (n - 1)]
