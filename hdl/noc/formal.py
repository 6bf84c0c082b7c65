"""Formal harness for routers and networks: no flit lost or duplicated, valid held.

:class:`FlitHarness` wraps a design with stream arrays of flits (a :class:`Router`'s
``i``/``o`` or a network's ``inject``/``eject``), leaves its inputs free (top-level ports
are unconstrained in a formal tool) and constrains them only by the stream and packet
rules of :mod:`airfoil.noc_map`. It asserts:

* on every output, ``valid`` once raised stays raised with a stable payload until
  ``ready`` (the stream rule);
* per output, never more flits leave than were accepted for it (``owed`` counts copies
  accepted on any input whose ``dest`` meets that output's reach minus copies sent), so
  no flit is duplicated or invented, and ``dest`` is narrowed to the output's reach;
* one *marked* flit (payload bit 0 set; at most one in a run, anywhere, at any time)
  appears on exactly the outputs its ``dest`` reaches, at most once each, with its
  payload and ``dest`` intact;
* no flit is lost: after ``drain`` quiet cycles (no input valid, no input mid-packet,
  every output ready) nothing is owed and the marked flit has reached all its outputs.

:func:`router_harness` and :func:`mesh_harness` build it around a crossbar router and a
mesh; :func:`hdl.formal.run_sby` checks it.
"""

from __future__ import annotations

from amaranth.hdl import Assert, Assume, Cat, Cover, Module, ResetSignal, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In

from ..formal.rules import hold_until_ready

__all__ = ["FlitHarness", "router_harness", "mesh_harness"]


class FlitHarness(wiring.Component):
    """Check a flit-switching design (see the module docstring).

    Parameters
    ----------
    dut : wiring.Component
        Design under test.
    inputs, outputs : str
        Names of its input and output stream arrays (``"i"``/``"o"`` for a router,
        ``"inject"``/``"eject"`` for a network).
    reach : tuple of int
        Destination-node mask of each output.
    layout : data.StructLayout
        The flit layout (``airfoil.noc_map.flit_layout``).
    drain : int
        Quiet cycles after which nothing may still be owed.
    flits : int, optional
        Flits the environment injects in a run at most (all inputs together; default no
        limit). A small limit keeps the drain bound, and so the proof depth, short.
    """

    def __init__(self, dut, *, inputs: str, outputs: str, reach, layout, drain: int,
                 flits: int | None = None):
        self._flits = flits
        self._dut, self._in, self._out = dut, inputs, outputs
        self._reach, self._layout, self._drain = tuple(reach), layout, drain
        n_in = len(getattr(dut, inputs))
        super().__init__({
            "src": In(stream.Signature(layout)).array(n_in),
            "snk_ready": In(len(reach)),
        })

    @property
    def drain(self) -> int:
        return self._drain

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self._dut
        ins, outs = getattr(dut, self._in), getattr(dut, self._out)
        P_in, P_out = len(ins), len(outs)
        m.d.comb += Assume(~ResetSignal())
        cap = 1 << max(3, (P_in * 8).bit_length())

        marked_seen = Signal()
        mdata = Signal(self._layout)
        fires, marks = [], []
        open_pkt = []
        for i in range(P_in):
            s, d = self.src[i], ins[i]
            m.d.comb += [d.valid.eq(s.valid), d.payload.eq(s.payload), s.ready.eq(d.ready)]
            fire = s.valid & d.ready
            fires.append(fire)
            mark = s.payload.payload[0]
            marks.append(s.valid & mark)
            hold_until_ready(m, valid=s.valid, ready=d.ready, payload=s.payload,
                             kind="assume", name=f"in{i}")
            # packet rules
            in_pkt = Signal(name=f"in_pkt{i}")
            pkt_dest = Signal(len(s.payload.dest), name=f"pkt_dest{i}")
            open_pkt.append(in_pkt)
            dest = s.payload.dest
            multi = (dest & (dest - 1)[:len(dest)]).any()
            with m.If(s.valid):
                m.d.comb += [
                    Assume(dest.any()),
                    Assume(s.payload.first == ~in_pkt),
                    Assume(~in_pkt | (dest == pkt_dest)),
                    Assume(~multi | (s.payload.first & s.payload.last)),
                    Assume(~mark | ~marked_seen),
                ]
            with m.If(fire):
                m.d.sync += [in_pkt.eq(~s.payload.last), pkt_dest.eq(dest)]
                with m.If(mark):
                    m.d.sync += [marked_seen.eq(1), mdata.eq(s.payload)]
        # at most one marked flit offered at a time
        mk = Cat(marks)
        m.d.comb += Assume(~(mk & (mk - 1)[:P_in]).any())
        if self._flits is not None:
            sent = Signal(range(self._flits + P_in + 1))
            m.d.sync += sent.eq(sent + sum(fires))
            m.d.comb += Assume(sent + sum(fires) <= self._flits)

        quiet = Signal(range(self._drain + 1))
        idle = ~Cat(s.valid for s in self.src).any() & ~Cat(open_pkt).any() & \
            self.snk_ready.all()
        with m.If(idle):
            with m.If(quiet != self._drain):
                m.d.sync += quiet.eq(quiet + 1)
        with m.Else():
            m.d.sync += quiet.eq(0)

        for o in range(P_out):
            q = outs[o]
            m.d.comb += q.ready.eq(self.snk_ready[o])
            ofire = q.valid & q.ready
            hold_until_ready(m, valid=q.valid, ready=q.ready, payload=q.payload,
                             kind="assert", name=f"out{o}")
            with m.If(q.valid):
                m.d.comb += Assert(q.payload.dest.any() &
                                   ((q.payload.dest & ~self._reach[o]) == 0))
            # conservation of copies
            owed = Signal(range(cap), name=f"owed{o}")
            inc = sum((fires[i] & (self.src[i].payload.dest & self._reach[o]).any())
                      for i in range(P_in))
            m.d.sync += owed.eq(owed + inc - ofire)
            m.d.comb += Assert(~ofire | (owed != 0))
            m.d.comb += Assert(owed < cap - P_in - 1)
            # the marked flit
            mout = Signal(name=f"mout{o}")
            mreach = (mdata.dest & self._reach[o]).any()
            with m.If(q.valid & q.payload.payload[0]):
                m.d.comb += Assert(marked_seen & ~mout & mreach &
                                   (q.payload.payload == mdata.payload) &
                                   (q.payload.dest == (mdata.dest & self._reach[o])) &
                                   (q.payload.src == mdata.src))
            with m.If(ofire & q.payload.payload[0]):
                m.d.sync += mout.eq(1)
            # nothing lost
            with m.If(quiet == self._drain):
                m.d.comb += Assert((owed == 0) & (mout == (marked_seen & mreach)))
            # not vacuous: the marked flit comes out here
            m.d.comb += Cover(ofire & q.payload.payload[0])
        return m


def router_harness(*, ports: int, depth: int, payload_bits: int = 2,
                   drain: int | None = None) -> FlitHarness:
    """Return the harness for a ``ports``-port crossbar router (tiny payload: bit 0 marks).

    The default ``drain`` is ``ports * depth + 3`` quiet cycles, enough for the buffered
    flits to leave when every output is ready.
    """
    from airfoil.noc_map import crossbar_reach

    from .router import Router
    reach = crossbar_reach(ports)
    r = Router(reach=reach, nodes=ports, payload_bits=payload_bits, depth=depth)
    return FlitHarness(r, inputs="i", outputs="o", reach=reach, layout=r.layout,
                       drain=ports * depth + 3 if drain is None else drain)


def mesh_harness(*, rows: int = 2, cols: int = 2, depth: int = 1, payload_bits: int = 1,
                 drain: int | None = None, flits: int | None = None) -> FlitHarness:
    """Return the harness for a ``rows x cols`` XY mesh (tiny payload: bit 0 marks).

    The default ``drain`` is ``(rows + cols) * (depth + 1) + 3`` quiet cycles: a buffered
    flit crosses at most ``rows + cols - 1`` routers, one cycle per hop, and waits behind
    at most ``depth`` flits at each.
    """
    from .topology import Mesh
    net = Mesh(rows=rows, cols=cols, payload_bits=payload_bits, depth=depth)
    reach = tuple(1 << n for n in range(net.nodes))
    return FlitHarness(net, inputs="inject", outputs="eject", reach=reach, layout=net.layout,
                       drain=(rows + cols) * (depth + 1) + 3 if drain is None else drain,
                       flits=flits)
