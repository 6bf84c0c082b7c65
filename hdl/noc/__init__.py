"""Network on chip: routers, crossbar and mesh topologies, and a partial-sum adder tree.

* :class:`Router`: input-buffered (configurable depth), round-robin per output, wormhole
  (an output is held from a packet's head to its tail), multicast by fanout splitting.
* :class:`Crossbar` (one router) and :class:`Mesh` (XY dimension-order routing, one cycle
  per hop), both with ``inject``/``eject`` stream arrays, one per node.
* :class:`ReduceTree`: pipelined adder tree over partial-sum streams.
* :class:`FlatNetwork`: wide-vector ports for testbenches; ``formal`` holds the
  SymbiYosys harness.

The flit layout, the routing tables, the network rules (multicast packets are one flit)
and the map from :class:`airfoil.config.AccelConfig` live in :mod:`airfoil.noc_map`,
shared with the simulators and the compiler.
"""

from .flat import FlatNetwork
from .reduce import ReduceTree
from .router import Router
from .topology import Crossbar, Mesh, noc_for_plan

__all__ = ["Router", "Crossbar", "Mesh", "ReduceTree", "FlatNetwork", "noc_for_plan"]
