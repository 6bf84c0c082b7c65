"""The network on chip as plain data: flit layout, routing tables, and the map from a config.

This module is the single source of truth that ``hdl.noc`` (the routers), ``sim`` (the
testbenches and the cycle model) and the compiler share. It holds no hardware.

Flits
-----
Every flit carries its full header (:func:`flit_layout`): ``payload`` (one memory word, so
that a memory channel's full rate is one flit per cycle on one link), ``dest`` (a bit mask of
destination *nodes*: one bit is unicast, several bits are multicast, all bits broadcast),
``src`` (the injecting node) and ``first``/``last`` packet framing.

Rules of the network (the routers rely on them; the testbenches check them):

* A packet is ``first`` ... ``last`` flits from one source, all with the same ``dest``.
* A packet with more than one destination is one flit (``first = last = 1``). Multicast
  messages longer than one flit are sent as a sequence of one-flit packets; each keeps
  the source's order on every branch. (Forking multi-flit packets in a wormhole network
  can deadlock; one-flit packets never hold an output, so the channel dependency graph
  of XY routing stays acyclic.)
* Unicast packets of any length travel wormhole: the head locks each output it takes
  until the tail has passed, so packets never interleave on an output.

Mesh routing is XY (dimension order, deadlock-free): a flit first travels along its row
(east or west) to the destination column, then along the column (north or south). A
multicast flit forks into a tree: at every router the destination mask is split by the
set of nodes each output port reaches (:func:`mesh_reach`), and each copy carries only
its share of the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth.lib import data

from .config import AccelConfig
from .errors import ConfigError

__all__ = [
    "TOPOLOGIES", "MESH_PORTS", "LOCAL", "NORTH", "EAST", "SOUTH", "WEST",
    "flit_layout", "field_slices", "mesh_reach", "crossbar_reach", "xy_route", "xy_hops",
    "mesh_shape", "NocPlan", "plan_for_config",
]

TOPOLOGIES = ("mesh", "crossbar")
#: Port order of a mesh router (index = port number).
MESH_PORTS = ("local", "north", "east", "south", "west")
LOCAL, NORTH, EAST, SOUTH, WEST = range(5)


def _check_int(what: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{what} must be an integer in {lo}..{hi}, not {value!r}")
    return value


def flit_layout(nodes: int, payload_bits: int) -> data.StructLayout:
    """Return the flit layout for a network of ``nodes`` nodes and ``payload_bits`` payload.

    Fields from the least significant bit: ``payload``, ``dest`` (``nodes``-bit mask),
    ``src`` (node index), ``first``, ``last``.
    """
    _check_int("NoC node count", nodes, 1, 1024)
    _check_int("NoC payload width", payload_bits, 1, 4096)
    return data.StructLayout({
        "payload": payload_bits,
        "dest": nodes,
        "src": max(1, math.ceil(math.log2(nodes))) if nodes > 1 else 1,
        "first": 1,
        "last": 1,
    })


def field_slices(layout: data.StructLayout) -> dict[str, tuple[int, int]]:
    """Return ``{field: (offset, width)}`` of a flit layout, for packing flits as integers."""
    return {name: (f.offset, f.width) for name, f in layout}


def mesh_reach(rows: int, cols: int, node: int) -> tuple[int, ...]:
    """Return, per output port of mesh router ``node``, the mask of nodes routed through it.

    The five masks (in :data:`MESH_PORTS` order) partition all ``rows x cols`` nodes under
    XY routing; a port on the mesh edge reaches none.
    """
    x, y = node % cols, node // cols
    reach = [0] * 5
    for d in range(rows * cols):
        reach[xy_route(rows, cols, node, d)] |= 1 << d
    assert reach[LOCAL] == 1 << node and (x > 0 or not reach[WEST]) and \
        (y > 0 or not reach[SOUTH])
    return tuple(reach)


def crossbar_reach(ports: int) -> tuple[int, ...]:
    """Return the reach masks of a crossbar: output ``o`` reaches node ``o`` only."""
    return tuple(1 << o for o in range(ports))


def xy_route(rows: int, cols: int, here: int, dest: int) -> int:
    """Return the output port (index into :data:`MESH_PORTS`) from ``here`` towards ``dest``."""
    x, y = here % cols, here // cols
    dx, dy = dest % cols, dest // cols
    if dx > x:
        return EAST
    if dx < x:
        return WEST
    if dy > y:
        return NORTH
    if dy < y:
        return SOUTH
    return LOCAL


def xy_hops(cols: int, src: int, dest: int) -> int:
    """Return the router-to-router hops from ``src`` to ``dest`` (Manhattan distance)."""
    return abs(src % cols - dest % cols) + abs(src // cols - dest // cols)


def mesh_shape(nodes: int) -> tuple[int, int]:
    """Return ``(rows, cols)`` of the smallest mesh holding ``nodes`` nodes (cols <= 2 rows)."""
    _check_int("NoC node count", nodes, 1, 1024)
    best = None
    for cols in range(1, nodes + 1):
        rows = math.ceil(nodes / cols)
        if cols < rows or cols > 2 * rows:
            continue
        key = (rows * cols, cols - rows)
        if best is None or key < best[0]:
            best = (key, (rows, cols))
    return best[1] if best else (1, nodes)


@dataclass(frozen=True)
class NocPlan:
    """Where every endpoint of an accelerator sits on its network.

    A *tile* is one node holding memory channels and the chains they feed (weights never
    leave their tile); one more node holds the special-function unit and the activation
    buffer, the source of activation broadcasts and the sink of partial sums.

    Members
    -------
    topology : str
        ``"mesh"`` or ``"crossbar"``.
    rows, cols : int
        Mesh shape (a crossbar is ``1 x nodes``).
    nodes : int
        Network nodes (terminals); mesh positions beyond the used ones are empty routers.
    payload_bits : int
        Flit payload: the config's memory word, so one channel fills one link.
    depth : int
        Input buffer depth of every router port, in flits.
    channel_node, chain_node : tuple of int
        Node of each memory channel and of each chain.
    channel_chains : tuple of tuple of int
        Chains each memory channel feeds.
    sfu_node : int
        Node of the special-function unit and activation buffer.
    """

    topology: str
    rows: int
    cols: int
    payload_bits: int
    depth: int
    channel_node: tuple
    chain_node: tuple
    channel_chains: tuple
    sfu_node: int

    @property
    def nodes(self) -> int:
        return self.rows * self.cols

    @property
    def used_nodes(self) -> int:
        """Nodes with an endpoint attached (tiles plus the SFU node)."""
        return len(set(self.channel_node) | set(self.chain_node) | {self.sfu_node})

    @property
    def routers(self) -> int:
        """Routers in the network: one per mesh node, or one crossbar."""
        return self.nodes if self.topology == "mesh" else 1

    @property
    def flit_bits(self) -> int:
        return flit_layout(self.nodes, self.payload_bits).size

    def broadcast_mask(self) -> int:
        """Destination mask reaching every tile that holds a chain."""
        return sum(1 << n for n in set(self.chain_node))

    def params(self) -> str:
        """One-line parameter string naming the network (for figures' evidence)."""
        return (f"{self.topology} {self.rows}x{self.cols} payload={self.payload_bits} "
                f"depth={self.depth}")


def plan_for_config(cfg: AccelConfig, *, topology: str = "mesh", depth: int = 4) -> NocPlan:
    """Map an :class:`AccelConfig` to a network.

    Tiles: ``T = min(channels, chains)``; channel ``c`` sits in tile ``c * T // channels`` and
    chain ``k`` in tile ``k * T // chains`` (contiguous blocks), so each channel feeds the
    chains of its own tile. The SFU node is the mesh node nearest the centre; tiles fill
    the other nodes in row-major order.
    """
    if topology not in TOPOLOGIES:
        raise ConfigError(f"NoC topology must be one of {', '.join(TOPOLOGIES)}, "
                          f"not {topology!r}")
    _check_int("NoC buffer depth", depth, 1, 1024)
    C, K = cfg.memory.channels, cfg.chains
    T = min(C, K)
    nodes = T + 1
    rows, cols = mesh_shape(nodes) if topology == "mesh" else (1, nodes)
    if topology == "mesh":
        cx, cy = (cols - 1) // 2, (rows - 1) // 2
        sfu = cy * cols + cx
    else:
        sfu = T
    tile_node = [n for n in range(rows * cols) if n != sfu][:T]
    channel_tile = [c * T // C for c in range(C)]
    chain_tile = [k * T // K for k in range(K)]
    return NocPlan(
        topology=topology, rows=rows, cols=cols, payload_bits=cfg.memory.word_bits,
        depth=depth,
        channel_node=tuple(tile_node[t] for t in channel_tile),
        chain_node=tuple(tile_node[t] for t in chain_tile),
        channel_chains=tuple(tuple(k for k in range(K) if chain_tile[k] == channel_tile[c])
                             for c in range(C)),
        sfu_node=sfu,
    )
