"""Parts of the core: the plan of each board config (what is built), the buffer fabric's
round robin between the LOAD unit's channels and the unit shell (amaranth.sim)."""

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
from hdl.core.load import capped_product
from hdl.core.matrix import MatrixUnit
from hdl.core.matrix_front import MatrixFront
from hdl.core.plan import CorePlan
from hdl.core.top import Core, Engine
from hdl.core.unit_shell import UnitShell

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


def test_capped_product_decides_range_checks_as_the_product():
    """Below ``2**bits`` the capped product is the product; at or above it both are (so
    any ``x + p > bound`` with ``bound < 2**bits`` decides alike), also with a zero
    factor beside a wide one."""
    bits = 4
    a, b = Signal(12), Signal(9)
    p = Signal(16)
    m = Module()
    m.d.comb += p.eq(capped_product(a, b, bits))
    values = [0, 1, 2, 3, 5, 7, 15, 16, 17, 31, 300, 511]
    got = {}

    async def testbench(ctx):
        for x in values:
            for y in values:
                ctx.set(a, x)
                ctx.set(b, y)
                got[x, y] = ctx.get(p)

    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()
    for (x, y), v in got.items():
        if x * y < 1 << bits:
            assert v == x * y, (x, y, v)
        else:
            assert v >= 1 << bits, (x, y, v)
    assert got[0, 511] == got[300, 0] == 0 and got[3, 5] == 15 and got[15, 15] == 225


@pytest.mark.parametrize("idle_after_error", [False, True])
def test_unit_shell_runs_and_releases(idle_after_error):
    """An instruction is taken, checked (held while ``go`` is low), run until ``done`` and
    released with its release tokens, then the next one is taken."""
    shell = UnitShell(idle_after_error=idle_after_error, leave_run_on_fault=False)
    word = isa.encode(isa.Opcode.ST, release=(isa.Unit.LOAD, isa.Unit.SFU))
    go = isa.ErrorCode.NONE
    steps = [
        {"q_valid": 0},
        {"q_valid": 1},
        {"q_valid": 0, "go": 0, "code": go},     # CHECK, held
        {"go": 1},                                # CHECK -> RUN
        {"go": 0, "done": 0},                     # RUN
        {"done": 1},                              # RUN -> REL
        {"done": 0, "rel_ready": 0},              # REL, waiting
        {"rel_ready": 1},                         # REL -> IDLE
        {"rel_ready": 0},
    ]
    seen = _run_steps(shell, word, 7, steps)
    assert [s["state"] for s in seen] == ["idle", "idle", "check", "check", "run", "run",
                                          "rel", "rel", "idle"]
    assert [s["take"] for s in seen] == [0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert [s["start"] for s in seen] == [0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert [s["idle"] for s in seen] == [1, 1, 0, 0, 0, 0, 0, 0, 1]
    release = (1 << isa.Unit.LOAD.value) | (1 << isa.Unit.SFU.value)
    assert seen[6]["rel"] == seen[7]["rel"] == release
    assert not any(s["err"] for s in seen)


@pytest.mark.parametrize("idle_after_error", [False, True])
def test_unit_shell_error_latch_is_sticky(idle_after_error):
    """A refused check latches its code and the instruction's index and returns to IDLE;
    a later fault changes nothing, and no instruction is taken any more."""
    shell = UnitShell(idle_after_error=idle_after_error, leave_run_on_fault=False)
    word = isa.encode(isa.Opcode.ST)
    steps = [
        {"q_valid": 1},
        {"q_valid": 1, "code": isa.ErrorCode.BUFFER_RANGE},    # CHECK: refused
        {"code": isa.ErrorCode.NONE, "fault": 1, "fault_code": isa.ErrorCode.AXI_ERROR},
        {"fault": 0},
        {},
    ]
    seen = _run_steps(shell, word, 41, steps)
    assert [s["state"] for s in seen] == ["idle", "check", "idle", "idle", "idle"]
    assert [s["err"] for s in seen] == [0, 0, 1, 1, 1]
    assert all(s["err_code"] == isa.ErrorCode.BUFFER_RANGE for s in seen[2:])
    assert all(s["err_pc"] == 41 for s in seen[2:])
    assert [s["q_ready"] for s in seen] == [1, 0, 0, 0, 0]
    assert [s["take"] for s in seen] == [1, 0, 0, 0, 0]
    assert [s["idle"] for s in seen[2:]] == [int(idle_after_error)] * 3


@pytest.mark.parametrize("leave", [False, True])
def test_unit_shell_fault_while_running(leave):
    """A fault in RUN is latched (SCALE_RANGE here); with ``leave_run_on_fault`` the run
    ends the next cycle without a release, else it goes on to its release."""
    shell = UnitShell(idle_after_error=False, leave_run_on_fault=leave)
    word = isa.encode(isa.Opcode.MV, release=(isa.Unit.STORE,))
    steps = [
        {"q_valid": 1, "go": 1},
        {"q_valid": 0},                                          # CHECK -> RUN
        {"fault": 1, "fault_code": isa.ErrorCode.SCALE_RANGE},   # RUN: fault
        {"fault": 0},
        {"done": 1},
        {"done": 0, "rel_ready": 1},
    ]
    seen = _run_steps(shell, word, 5, steps)
    assert [s["err"] for s in seen] == [0, 0, 0, 1, 1, 1]
    assert seen[-1]["err_code"] == isa.ErrorCode.SCALE_RANGE and seen[-1]["err_pc"] == 5
    if leave:
        assert [s["state"] for s in seen] == ["idle", "check", "run", "run", "idle", "idle"]
    else:
        assert [s["state"] for s in seen] == ["idle", "check", "run", "run", "run", "rel"]


@pytest.mark.parametrize("where", ["check", "run"])
def test_unit_shell_cancel(where):
    """``cancel`` in RUN returns to IDLE without a release or an error; in CHECK it does
    nothing."""
    shell = UnitShell(idle_after_error=True, leave_run_on_fault=False)
    word = isa.encode(isa.Opcode.ST, release=(isa.Unit.LOAD,))
    steps = [{"q_valid": 1}, {"q_valid": 0, "cancel": int(where == "check")},
             {"go": 1, "cancel": 0}, {"go": 0, "cancel": 1}, {"cancel": 0}]
    seen = _run_steps(shell, word, 3, steps)
    assert [s["state"] for s in seen] == ["idle", "check", "check", "run", "idle"]
    assert not any(s["err"] for s in seen) and all(s["rel"] is None for s in seen)


def _run_steps(shell, word, index, steps):
    """Offer ``word`` (at ``index``) on the shell's queue and run ``steps``
    (one cycle each: a step sets the inputs it names, the others keep their values, and
    the outputs are recorded before the clock edge); ``rel_ready`` drives ``rel.ready``."""
    seen = []

    async def testbench(ctx):
        ctx.set(shell.q.payload.instr.as_value(), word)
        ctx.set(shell.q.payload.index, index)
        for inputs in steps:
            for name, value in inputs.items():
                target = {"q_valid": shell.q.valid, "rel_ready": shell.rel.ready}.get(name)
                ctx.set(target if target is not None else getattr(shell, name), value)
            seen.append({
                "state": ("check" if ctx.get(shell.checking) else
                          "run" if ctx.get(shell.running) else
                          "rel" if ctx.get(shell.rel.valid) else "idle"),
                "take": ctx.get(shell.take), "start": ctx.get(shell.start),
                "q_ready": ctx.get(shell.q.ready), "idle": ctx.get(shell.idle),
                "rel": ctx.get(shell.rel.payload) if ctx.get(shell.rel.valid) else None,
                "err": ctx.get(shell.err), "err_code": ctx.get(shell.err_code),
                "err_pc": ctx.get(shell.err_pc)})
            await ctx.tick()

    sim = Simulator(shell)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return seen
