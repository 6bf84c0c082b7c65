"""The dense chain engine of the MATRIX unit: ``chains`` dot-product chains of ``lanes``
lanes each, on the packed multipliers of the ``dsp`` PE kind."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..pe.dsp import DspDual
from ..streams import psum_bits, psum_layout, operand_layout

__all__ = ["DenseChains"]


def _check_positive(what, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"{what} must be a positive integer, not {value!r}")


class DenseChains(wiring.Component):
    """Multiply one operand step per cycle and emit exact group partial sums.

    Every operand step adds ``sum(w[c][l] * x[l] for l in lanes)`` to chain ``c``'s group
    sum; the step flagged ``group_last`` closes the group: the group sums of all chains
    leave on ``psums`` (with ``batch_last`` passed on) and the sums restart from zero.

    The lanes of each chain are pairs on the packed multipliers of the ``dsp`` PE kind
    (:class:`~hdl.pe.dsp.DspDual`, one DSP48E2 each): a step of INT4 weights takes one
    cycle, two products per DSP; a step flagged ``wide`` (INT8 weights) takes two, one
    product per DSP per cycle -- the MATRIX unit reads an INT8 step from two WGT rows, one
    a cycle, so the chains keep pace with the buffer either way. The pipeline (step
    register, multipliers, lane sums, group accumulator) stalls as a whole while ``psums``
    is not ready.

    Parameters
    ----------
    chains : int
        Chains (output rows computed at once).
    lanes : int
        Products per chain per step (even).
    group_max : int
        Largest group in weights (sets the width of the partial sums).

    Members
    -------
    operands : In(stream.Signature(operand_layout(chains, lanes)))
    psums : Out(stream.Signature(psum_layout(chains, group_max)))
    """

    #: Cycles from accepting a one-cycle ``group_last`` step to its partial sums being
    #: valid: step register, the multipliers, the lane sums, the group accumulator.
    LATENCY = 1 + DspDual.DELAY + 2

    def __init__(self, *, chains: int, lanes: int, group_max: int):
        _check_positive("Chain count", chains)
        _check_positive("Lane count", lanes)
        _check_positive("Largest group size", group_max)
        if group_max % lanes or lanes % 2:
            raise ValueError(f"Largest group size must be a multiple of lanes ({lanes}), "
                             f"and lanes even, not {group_max} and {lanes}")
        self._chains, self._lanes, self._group_max = chains, lanes, group_max
        super().__init__({
            "operands": In(stream.Signature(operand_layout(chains, lanes))),
            "psums": Out(stream.Signature(psum_layout(chains, group_max))),
        })

    @property
    def chains(self) -> int:
        return self._chains

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def latency(self) -> int:
        """Cycles from accepting a ``group_last`` step to its partial sums being valid."""
        return self.LATENCY

    @property
    def multipliers(self) -> int:
        """DSP48E2 multipliers expected: one per lane pair of every chain."""
        return self._chains * self._lanes // 2

    def elaborate(self, platform):
        m = Module()
        C, L = self._chains, self._lanes
        pb = psum_bits(self._group_max)
        en = Signal()
        m.d.comb += en.eq(~self.psums.valid | self.psums.ready)
        op = self.operands.payload

        # Step register: an INT4 step is held one cycle, an INT8 (wide) step two.
        cur = Signal.like(op)
        busy, phase = Signal(), Signal()
        last_ph = Signal()
        m.d.comb += [last_ph.eq(~cur.wide | phase),
                     self.operands.ready.eq(en & (~busy | last_ph))]
        with m.If(en):
            with m.If(self.operands.valid & self.operands.ready):
                m.d.sync += [cur.eq(op), busy.eq(1), phase.eq(0)]
            with m.Elif(busy):
                m.d.sync += [busy.eq(~last_ph), phase.eq(~last_ph)]

        # Multipliers: one DspDual per lane pair of each chain.
        ys = [[] for _ in range(C)]
        for c in range(C):
            for j in range(L // 2):
                mul = m.submodules[f"mul{c}_{j}"] = DspDual()
                m.d.comb += [mul.en.eq(en), mul.pair.eq(~cur.wide), mul.sel.eq(phase),
                             mul.w[0].eq(cur.w[c][2 * j]), mul.w[1].eq(cur.w[c][2 * j + 1]),
                             mul.a[0].eq(cur.x[2 * j]), mul.a[1].eq(cur.x[2 * j + 1])]
                ys[c].append(mul.y)

        # Control beside the multipliers, then the lane sums and the group sums.
        depth = DspDual.DELAY + 1
        vld = Signal(depth)
        gl = Signal(depth)
        bl = Signal(depth)
        dot = [Signal(signed(16 + L.bit_length()), name=f"dot{c}") for c in range(C)]
        acc = [Signal(signed(pb), name=f"gsum{c}") for c in range(C)]
        with m.If(en):
            m.d.sync += [vld.eq(Cat(busy, vld[:-1])),
                         gl.eq(Cat(busy & last_ph & cur.group_last, gl[:-1])),
                         bl.eq(Cat(cur.batch_last, bl[:-1]))]
            m.d.sync += [dot[c].eq(_tree(ys[c])) for c in range(C)]
            m.d.sync += [self.psums.valid.eq(vld[-1] & gl[-1]),
                         self.psums.payload.batch_last.eq(bl[-1])]
            with m.If(vld[-1]):
                totals = [(acc[c] + dot[c])[:pb] for c in range(C)]
                m.d.sync += self.psums.payload.psum.eq(Cat(*totals))
                for c in range(C):
                    with m.If(gl[-1]):
                        m.d.sync += acc[c].eq(0)
                    with m.Else():
                        m.d.sync += acc[c].eq(totals[c])
        return m


def _tree(values):
    """Balanced adder tree."""
    values = list(values)
    while len(values) > 1:
        nxt = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0]
