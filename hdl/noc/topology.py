"""Topologies built from :class:`~hdl.noc.router.Router`: a crossbar and a 2D XY mesh."""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from airfoil.noc_map import (EAST, LOCAL, NORTH, SOUTH, WEST, NocPlan, crossbar_reach,
                             flit_layout, mesh_reach)

from .router import Router

__all__ = ["Crossbar", "Mesh", "noc_for_plan"]


def _positive(what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError(f"{what} must be a positive integer, not {value!r}")
    return value


class _Network(wiring.Component):
    """Common ports of a network: ``inject[n]`` into and ``eject[n]`` out of every node."""

    def __init__(self, nodes: int, payload_bits: int, depth: int):
        self._nodes = nodes
        self._payload_bits = payload_bits
        self._depth = _positive("Buffer depth", depth)
        self._layout = flit_layout(nodes, payload_bits)
        super().__init__({
            "inject": In(stream.Signature(self._layout)).array(nodes),
            "eject": Out(stream.Signature(self._layout)).array(nodes),
        })

    @property
    def nodes(self) -> int:
        return self._nodes

    @property
    def layout(self):
        return self._layout

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def payload_bits(self) -> int:
        return self._payload_bits


class Crossbar(_Network):
    """A ``ports``-port input-buffered crossbar (one router; output ``o`` is node ``o``).

    Parameters
    ----------
    ports : int
        Nodes attached.
    payload_bits : int
        Flit payload width.
    depth : int
        Input buffer depth in flits.

    Members
    -------
    inject : In(stream.Signature(flit_layout)).array(ports)
    eject : Out(stream.Signature(flit_layout)).array(ports)
    """

    def __init__(self, *, ports: int, payload_bits: int, depth: int = 4):
        super().__init__(_positive("Port count", ports), payload_bits, depth)

    @property
    def latency(self) -> int:
        """Cycles from an inject handshake to the earliest eject handshake (no load)."""
        return 1

    def router(self) -> Router:
        """Return the single router this crossbar is made of (for resource estimates)."""
        return Router(reach=crossbar_reach(self.nodes), nodes=self.nodes,
                      payload_bits=self.payload_bits, depth=self.depth)

    def elaborate(self, platform):
        m = Module()
        m.submodules.router = r = self.router()
        for n in range(self.nodes):
            wiring.connect(m, wiring.flipped(self.inject[n]), r.i[n])
            wiring.connect(m, r.o[n], wiring.flipped(self.eject[n]))
        return m


class Mesh(_Network):
    """A ``rows x cols`` 2D mesh of 5-port routers with XY routing; node ``y * cols + x``.

    Ports of each router are :data:`airfoil.noc_map.MESH_PORTS` (local, north = y + 1,
    east = x + 1, south, west). Each hop costs one cycle (the next router's input buffer).

    Parameters
    ----------
    rows, cols : int
        Mesh shape.
    payload_bits : int
        Flit payload width.
    depth : int
        Input buffer depth of every router port, in flits.

    Members
    -------
    inject : In(stream.Signature(flit_layout)).array(rows * cols)
    eject : Out(stream.Signature(flit_layout)).array(rows * cols)
    """

    def __init__(self, *, rows: int, cols: int, payload_bits: int, depth: int = 4):
        self._rows = _positive("Row count", rows)
        self._cols = _positive("Column count", cols)
        super().__init__(rows * cols, payload_bits, depth)

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def cols(self) -> int:
        return self._cols

    def latency(self, src: int, dest: int) -> int:
        """Cycles from inject to eject handshake for one flit with no contention."""
        return 1 + abs(src % self.cols - dest % self.cols) + abs(src // self.cols -
                                                                dest // self.cols)

    def router(self, node: int = 0) -> Router:
        """Return the router of ``node`` (for resource estimates)."""
        return Router(reach=mesh_reach(self.rows, self.cols, node), nodes=self.nodes,
                      payload_bits=self.payload_bits, depth=self.depth)

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols
        routers = []
        for n in range(R * C):
            r = self.router(n)
            m.submodules[f"r{n % C}_{n // C}"] = r
            routers.append(r)
            wiring.connect(m, wiring.flipped(self.inject[n]), r.i[LOCAL])
            wiring.connect(m, r.o[LOCAL], wiring.flipped(self.eject[n]))
        for n, r in enumerate(routers):
            x, y = n % C, n // C
            if x + 1 < C:
                wiring.connect(m, r.o[EAST], routers[n + 1].i[WEST])
                wiring.connect(m, routers[n + 1].o[WEST], r.i[EAST])
            if y + 1 < R:
                wiring.connect(m, r.o[NORTH], routers[n + C].i[SOUTH])
                wiring.connect(m, routers[n + C].o[SOUTH], r.i[NORTH])
        return m


def noc_for_plan(plan: NocPlan) -> _Network:
    """Return the network a :class:`~airfoil.noc_map.NocPlan` describes."""
    if plan.topology == "mesh":
        return Mesh(rows=plan.rows, cols=plan.cols, payload_bits=plan.payload_bits,
                    depth=plan.depth)
    return Crossbar(ports=plan.nodes, payload_bits=plan.payload_bits, depth=plan.depth)
