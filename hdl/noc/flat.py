"""A flat-port wrapper of a network, for testbenches that drive all nodes at once."""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["FlatNetwork"]


class FlatNetwork(wiring.Component):
    """Expose a network's ``inject``/``eject`` stream arrays as wide vectors.

    Node ``n`` owns bit ``n`` of each ``*_valid``/``*_ready`` vector and bits
    ``[n * F, (n + 1) * F)`` of each ``*_data`` vector, ``F`` being the flit width. A
    simulator then reads and writes six signals per cycle instead of six per node.

    Parameters
    ----------
    network : Crossbar or Mesh
        The network to wrap (it becomes the submodule ``net``).

    Members
    -------
    inj_valid, inj_data, ej_ready : In
    inj_ready, ej_valid, ej_data : Out
    """

    def __init__(self, network):
        if not hasattr(network, "inject") or not hasattr(network, "eject"):
            raise TypeError(f"Network must have inject and eject ports, not {network!r}")
        self._net = network
        n, f = network.nodes, network.layout.size
        super().__init__({
            "inj_valid": In(n), "inj_data": In(n * f), "inj_ready": Out(n),
            "ej_valid": Out(n), "ej_data": Out(n * f), "ej_ready": In(n),
        })

    @property
    def network(self):
        return self._net

    def elaborate(self, platform):
        m = Module()
        m.submodules.net = net = self._net
        f = net.layout.size
        for k in range(net.nodes):
            m.d.comb += [
                net.inject[k].valid.eq(self.inj_valid[k]),
                net.inject[k].payload.eq(self.inj_data[k * f:(k + 1) * f]),
                self.inj_ready[k].eq(net.inject[k].ready),
                self.ej_valid[k].eq(net.eject[k].valid),
                self.ej_data[k * f:(k + 1) * f].eq(net.eject[k].payload),
                net.eject[k].ready.eq(self.ej_ready[k]),
            ]
        return m
