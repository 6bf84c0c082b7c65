"""An input-buffered wormhole router with multicast, the building block of every topology.

A router has ``P`` input and ``P`` output ports. Output port ``o`` *reaches* a constant set
of destination nodes (``reach[o]``, a bit mask); a flit at the head of an input requests
every output whose reach meets its ``dest`` mask and leaves on each with ``dest`` narrowed
to that output's share. A crossbar is one router whose output ``o`` reaches node ``o``; a
mesh router's reach masks come from XY routing (:func:`airfoil.noc_map.mesh_reach`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from airfoil.noc_map import flit_layout

__all__ = ["Router"]


def _lowest(m: Module, x, width: int, name: str) -> Signal:
    """Return a one-hot signal marking the lowest set bit of ``x`` (0 if none)."""
    s = Signal(width, name=name)
    m.d.comb += s.eq((x & (~x + 1))[:width])
    return s


class Router(wiring.Component):
    """Route flits from ``P`` buffered inputs to ``P`` outputs.

    Per output, a round-robin arbiter picks one requesting input. An output stays with its
    input from a packet's head to its tail (wormhole: packets never interleave on an
    output) and while it presents a flit that was not yet taken (so ``valid`` is held and
    the payload stays stable until ``ready``). A multicast flit is copied to each of its
    outputs as each becomes free (fanout splitting) and leaves its input buffer when every
    copy has gone.

    Latency: a flit accepted on an input at cycle ``t`` can leave on an output at ``t + 1``
    (one buffer stage; outputs are combinational from the buffer heads).

    Parameters
    ----------
    reach : tuple of int
        Destination-node mask of each output port; its length is the port count ``P``.
    nodes : int
        Nodes in the network (width of ``dest``).
    payload_bits : int
        Flit payload width.
    depth : int
        Input buffer depth in flits (2 or more sustains one flit per cycle per port).

    Members
    -------
    i : In(stream.Signature(flit_layout)).array(P)
        Input ports.
    o : Out(stream.Signature(flit_layout)).array(P)
        Output ports.
    """

    def __init__(self, *, reach, nodes: int, payload_bits: int, depth: int = 4):
        if not isinstance(reach, (tuple, list)) or not reach or not all(
                isinstance(r, int) and r >= 0 for r in reach):
            raise TypeError(f"Reach must be a non-empty sequence of node masks, not {reach!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise TypeError(f"Buffer depth must be a positive integer, not {depth!r}")
        self._layout = flit_layout(nodes, payload_bits)
        if any(r >> nodes for r in reach):
            raise ValueError(f"Reach masks {reach!r} name nodes beyond the {nodes} of the "
                             f"network")
        self._reach = tuple(reach)
        self._nodes = nodes
        self._depth = depth
        ports = len(reach)
        super().__init__({
            "i": In(stream.Signature(self._layout)).array(ports),
            "o": Out(stream.Signature(self._layout)).array(ports),
        })

    @property
    def layout(self):
        return self._layout

    @property
    def ports(self) -> int:
        return len(self._reach)

    @property
    def reach(self) -> tuple:
        return self._reach

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def latency(self) -> int:
        """Cycles from an input handshake to the earliest output handshake of that flit."""
        return 1

    def elaborate(self, platform):
        m = Module()
        P = self.ports
        heads, hvalid, need, pop = [], [], [], []
        for i in range(P):
            q = fifo.SyncFIFO(width=self._layout.size, depth=self._depth)
            m.submodules[f"q{i}"] = q
            m.d.comb += [
                q.w_data.eq(self.i[i].payload.as_value()),
                q.w_en.eq(self.i[i].valid),
                self.i[i].ready.eq(q.w_rdy),
            ]
            head = self._layout(q.r_data)
            heads.append(head)
            hvalid.append(q.r_rdy)
            need.append([Signal(name=f"need{i}_{o}") for o in range(P)])
            for o in range(P):
                m.d.comb += need[i][o].eq((head.dest & self._reach[o]).any())
            p = Signal(name=f"pop{i}")
            m.d.comb += q.r_en.eq(p)
            pop.append(p)

        done = [Signal(P, name=f"done{i}") for i in range(P)]    # copies already sent
        sent = [Signal(P, name=f"sent{i}") for i in range(P)]    # copies sent this cycle

        for o in range(P):
            req = Signal(P, name=f"req{o}")
            m.d.comb += req.eq(Cat(hvalid[i] & need[i][o] & ~done[i][o] for i in range(P)))
            busy = Signal(name=f"busy{o}")       # held for a packet or an untaken flit
            owner = Signal(P, name=f"owner{o}")
            last = Signal(range(P), name=f"last{o}")
            above = Signal(P, name=f"above{o}")
            with m.Switch(last):
                for v in range(P):
                    with m.Case(v):
                        m.d.comb += above.eq(((1 << P) - 1) & ~((2 << v) - 1))
            hi = _lowest(m, req & above, P, f"hi{o}")
            lo = _lowest(m, req, P, f"lo{o}")
            gnt = Signal(P, name=f"gnt{o}")
            with m.If(busy):
                m.d.comb += gnt.eq(owner & req)
            with m.Elif((req & above).any()):
                m.d.comb += gnt.eq(hi)
            with m.Else():
                m.d.comb += gnt.eq(lo)
            out = self.o[o]
            m.d.comb += out.valid.eq(gnt.any())
            flit = Signal(self._layout.size, name=f"mux{o}")
            acc = Const(0, self._layout.size)            # one-hot AND-OR multiplexer
            for i in range(P):
                acc = acc | (heads[i].as_value() & gnt[i].replicate(self._layout.size))
            m.d.comb += flit.eq(acc)
            view = self._layout(flit)
            m.d.comb += [
                out.payload.eq(flit),
                out.payload.dest.eq(view.dest & self._reach[o]),
            ]
            take = out.valid & out.ready
            for i in range(P):
                m.d.comb += sent[i][o].eq(take & gnt[i])
            with m.If(take):
                m.d.sync += busy.eq(~view.last)
                for v in range(P):
                    with m.If(gnt[v]):
                        m.d.sync += last.eq(v)
            with m.Elif(out.valid):
                m.d.sync += busy.eq(1)
            with m.If(out.valid):
                m.d.sync += owner.eq(gnt)

        for i in range(P):
            needed = Cat(need[i])
            m.d.comb += pop[i].eq(hvalid[i] & ((~needed | done[i] | sent[i]).all()))
            with m.If(pop[i]):
                m.d.sync += done[i].eq(0)
            with m.Else():
                m.d.sync += done[i].eq(done[i] | sent[i])
        return m
