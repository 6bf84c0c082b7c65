"""The dense chain engine: ``chains`` dot-product chains of ``lanes`` lanes each."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..streams import psum_bits, psum_layout, operand_layout

__all__ = ["DenseChains"]


def _check_positive(what, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"{what} must be a positive integer, not {value!r}")


class DenseChains(wiring.Component):
    """Multiply one operand step per cycle and emit exact group partial sums.

    Every cycle in which the operand stream moves, chain ``c`` adds
    ``sum(w[c][l] * x[l] for l in lanes)`` to its group sum; the step flagged
    ``group_last`` closes the group: the group sums of all chains leave on ``psums``
    (with ``batch_last`` passed on) and the sums restart from zero. The pipeline (products,
    adder tree, group accumulator) stalls as a whole while ``psums`` is not ready.

    Parameters
    ----------
    chains : int
        Chains (output rows computed at once).
    lanes : int
        Products per chain per step.
    group_max : int
        Largest group in weights (sets the width of the partial sums).

    Members
    -------
    operands : In(stream.Signature(operand_layout(chains, lanes)))
    psums : Out(stream.Signature(psum_layout(chains, group_max)))
    """

    def __init__(self, *, chains: int, lanes: int, group_max: int):
        _check_positive("Chain count", chains)
        _check_positive("Lane count", lanes)
        _check_positive("Largest group size", group_max)
        if group_max % lanes:
            raise ValueError(f"Largest group size must be a multiple of lanes ({lanes}), "
                             f"not {group_max}")
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
        return 3

    def elaborate(self, platform):
        m = Module()
        C, L = self._chains, self._lanes
        pb = psum_bits(self._group_max)
        adv = Signal()
        m.d.comb += [adv.eq(~self.psums.valid | self.psums.ready),
                     self.operands.ready.eq(adv)]
        op = self.operands.payload

        # Stage 1: products.
        v1, gl1, bl1 = Signal(), Signal(), Signal()
        prod = [[Signal(signed(16), name=f"p{c}_{l}") for l in range(L)] for c in range(C)]
        # Stage 2: one dot product per chain.
        v2, gl2, bl2 = Signal(), Signal(), Signal()
        dot = [Signal(signed(16 + (L - 1).bit_length()), name=f"dot{c}") for c in range(C)]
        # Stage 3: group sums.
        acc = [Signal(signed(pb), name=f"gsum{c}") for c in range(C)]

        with m.If(adv):
            m.d.sync += [v1.eq(self.operands.valid), gl1.eq(op.group_last),
                         bl1.eq(op.batch_last)]
            for c in range(C):
                for lane in range(L):
                    m.d.sync += prod[c][lane].eq(op.w[c][lane] * op.x[lane])
            m.d.sync += [v2.eq(v1), gl2.eq(gl1), bl2.eq(bl1)]
            for c in range(C):
                m.d.sync += dot[c].eq(_tree(prod[c]))
            m.d.sync += [self.psums.valid.eq(v2 & gl2),
                         self.psums.payload.batch_last.eq(bl2)]
            with m.If(v2):
                totals = [(acc[c] + dot[c])[:pb] for c in range(C)]
                m.d.sync += self.psums.payload.psum.eq(Cat(*totals))
                for c in range(C):
                    with m.If(gl2):
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
