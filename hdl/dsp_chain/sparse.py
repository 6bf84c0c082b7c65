"""The configurable sparse DSP chain: dense, N:M and block-skip dot products on one datapath.

One operand beat per cycle carries ``lanes`` weights (the kept nonzeros in N:M mode), their
N:M indices, and an activation window of ``window`` INT8 values. In front of every lane a
sparse mux picks its activation::

    dense, block:  act[j]
    N:M:           act[(j // n) * m + idx[j]]         (lane j holds a kept value of window
                                                        j // n of this beat)

so a beat covers ``lanes * m / n`` activations: at 2:4 a dot product of length k takes
``k / (2 * lanes)`` beats instead of ``k / lanes``. In block-skip mode the operand stream
carries only the blocks the mask names (``airfoil.sparsity.block_schedule``), so zero
blocks are neither read nor computed; the datapath treats those beats as dense.

The lanes feed packed multipliers (:class:`hdl.pe.dsp.DspLaneArray`: two INT4 lanes per
DSP48E2), whose results are summed in ``groups`` groups of ``lanes / groups`` lanes (the
DSP cascades). Reduction nodes at the group boundaries form a binary tree: an operation
with ``split = s`` cuts the chain into ``2**s`` segments of ``groups / 2**s`` groups, each
accumulating its own dot product, so one physical chain serves several short ones.
A beat with ``group_end`` or ``last`` ends the accumulation: the segment sums (including
that beat) leave on the psum stream as ``psum[0 .. 2**s - 1]`` (other entries zero) and
the accumulators restart from zero.

The mode, split and flags are fields of every operand beat, chosen at run time. The whole
pipeline stalls while its output holds a result that is not taken; :attr:`delay` is the
latency from an operand handshake to its result without stalls.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from airfoil.sparsity import NM_PATTERNS, SparsityMode, mode_of

from ..pe.dsp import _lane_template

__all__ = ["SparseChain", "operand_layout", "psum_layout", "chain_window", "index_bits",
           "select_activation", "estimate_units"]


def chain_window(lanes: int, patterns) -> int:
    """Activations per beat: ``lanes`` times the largest ``m / n`` of the patterns."""
    ratio = max([1] + [NM_PATTERNS[p][1] // NM_PATTERNS[p][0] for p in patterns
                       if p in NM_PATTERNS])
    return lanes * ratio


def index_bits(patterns) -> int:
    """Width of a lane's N:M index for the patterns built in."""
    return max([1] + [NM_PATTERNS[p][1].bit_length() - 1 for p in patterns
                      if p in NM_PATTERNS])


def operand_layout(*, lanes: int, weight_bits: int, act_bits: int, window: int,
                   index_bits: int, split_bits: int) -> data.StructLayout:
    """Layout of one operand beat of :class:`SparseChain`."""
    return data.StructLayout({
        "mode": SparsityMode,
        "split": unsigned(split_bits),
        "group_end": 1,
        "last": 1,
        "w": data.ArrayLayout(signed(weight_bits), lanes),
        "idx": data.ArrayLayout(unsigned(index_bits), lanes),
        "act": data.ArrayLayout(signed(act_bits), window),
    })


def psum_layout(*, groups: int, acc_bits: int, split_bits: int) -> data.StructLayout:
    """Layout of one result beat: ``psum[groups]`` (segment sums first), split, last."""
    return data.StructLayout({
        "psum": data.ArrayLayout(signed(acc_bits), groups),
        "split": unsigned(split_bits),
        "last": 1,
    })


def _fields(layout: data.StructLayout) -> dict:
    """Field offsets and widths of a flat struct (arrays as element width and count), so
    that a testbench packs beats from the layout instead of copying offsets by hand."""
    out = {}
    for name, field in layout:
        shape = field.shape
        if isinstance(shape, data.ArrayLayout):
            elem = shape.elem_shape
            out[name] = {"offset": field.offset, "width": field.width,
                         "count": shape.length, "elem": elem.width,
                         "signed": elem.signed}
        else:
            out[name] = {"offset": field.offset, "width": field.width, "count": 0,
                         "elem": field.width, "signed": Shape.cast(shape).signed}
    return out


def _pos_int(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise TypeError(f"{name} must be a positive integer, not {v!r}")
    return v


class SparseChain(wiring.Component):
    """A chain of ``lanes`` packed MAC lanes with sparse muxes and split reduction.

    Parameters
    ----------
    lanes : int
        Weights consumed per beat (products per cycle); a multiple of ``groups`` and of
        every enabled pattern's ``n``.
    weight_bits : int
        Signed weight width (INT4 weights pack two lanes per DSP; INT8 one).
    patterns : tuple of str
        Sparsity patterns built in (``AccelConfig.sparsity``): ``"dense"`` and any of
        ``"1:4"``, ``"2:4"``, ``"2:8"``, ``"4:16"``, ``"8:16"``, ``"block"``.
    groups : int
        Groups of lanes (reduction nodes at their boundaries); a power of two.
    act_bits : int
        Signed activation width (default 8).
    acc_bits : int
        Accumulator and psum width (default 32, wraps).

    Members
    -------
    i : In(stream.Signature(operand_layout(...)))
        Operand beats.
    o : Out(stream.Signature(psum_layout(...)))
        One beat per ``group_end`` or ``last`` operand beat.
    bad_mode : Out(1)
        Sticky: a beat named a mode this instance was not built for (computed as dense).
    """

    def __init__(self, *, lanes: int, weight_bits: int, patterns=("dense",), groups: int = 1,
                 act_bits: int = 8, acc_bits: int = 32):
        _pos_int("Lane count", lanes)
        _pos_int("Group count", groups)
        if groups & (groups - 1) or lanes % groups:
            raise ValueError(f"Group count must be a power of two dividing lanes ({lanes}), "
                             f"not {groups}")
        if not isinstance(acc_bits, int) or not 16 <= acc_bits <= 64:
            raise TypeError(f"Accumulator width must be an integer in 16..64, not {acc_bits!r}")
        patterns = tuple(patterns)
        for p in patterns:
            mode_of(p)          # raises for an unknown name
        if "dense" not in patterns:
            raise ValueError(f"Patterns must include 'dense', not {patterns!r}")
        for p in patterns:
            if p in NM_PATTERNS and lanes % NM_PATTERNS[p][0]:
                raise ValueError(f"Lane count {lanes} is not a multiple of n for pattern {p}")
        self._arr = _lane_template(lanes=lanes, weight_bits=weight_bits, act_bits=act_bits)
        if (lanes // groups) % self._arr.per_mul:
            raise ValueError(f"A group of {lanes // groups} lanes cannot hold whole packed "
                             f"lane pairs; use fewer groups than {groups}")
        self._lanes, self._wb, self._ab, self._acc = lanes, weight_bits, act_bits, acc_bits
        self._groups, self._patterns = groups, patterns
        self._window = chain_window(lanes, patterns)
        self._ib = index_bits(patterns)
        self._sb = max(1, (groups.bit_length() - 1).bit_length())   # split 0..log2(groups)
        super().__init__({
            "i": In(stream.Signature(self.operand_layout)),
            "o": Out(stream.Signature(self.psum_layout)),
            "bad_mode": Out(1),
        })

    # -- parameters ------------------------------------------------------------------

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def weight_bits(self) -> int:
        return self._wb

    @property
    def groups(self) -> int:
        return self._groups

    @property
    def patterns(self) -> tuple:
        return self._patterns

    @property
    def window(self) -> int:
        """Activations per operand beat."""
        return self._window

    @property
    def index_bits(self) -> int:
        return self._ib

    @property
    def acc_bits(self) -> int:
        return self._acc

    @property
    def multipliers(self) -> int:
        """Multipliers in the chain (DSP48E2 slices expected)."""
        return self._arr.multipliers

    @property
    def macs_per_cycle(self) -> int:
        """Peak products per cycle (dense)."""
        return self._lanes

    @property
    def operand_layout(self) -> data.StructLayout:
        return operand_layout(lanes=self._lanes, weight_bits=self._wb, act_bits=self._ab,
                              window=self._window, index_bits=self._ib,
                              split_bits=self._sb)

    @property
    def psum_layout(self) -> data.StructLayout:
        return psum_layout(groups=self._groups, acc_bits=self._acc, split_bits=self._sb)

    @property
    def delay(self) -> int:
        """Cycles from the handshake of a ``last``/``group_end`` beat to its result."""
        return 2 + self._arr.delay + 2

    def params(self) -> dict:
        """Design parameters for the metadata JSON of :func:`hdl.build.write_verilog`."""
        return {"lanes": self._lanes, "weight_bits": self._wb, "act_bits": self._ab,
                "acc_bits": self._acc, "groups": self._groups,
                "patterns": list(self._patterns), "window": self._window,
                "index_bits": self._ib, "split_bits": self._sb, "delay": self.delay,
                "multipliers": self.multipliers,
                "modes": {m.name: m.value for m in SparsityMode},
                "operand_fields": _fields(self.operand_layout),
                "psum_fields": _fields(self.psum_layout)}

    # -- hardware --------------------------------------------------------------------

    def _mux(self, m, op, j):
        """Activation of lane ``j`` for the beat ``op`` (combinational)."""
        return select_activation(m, op, j, self._patterns, self._ab)

    def elaborate(self, platform):
        m = Module()
        m.submodules.lanes = arr = self._arr.clone()
        L, G = self._lanes, self._groups
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en),
                     arr.en.eq(en)]

        ctl = data.StructLayout({"valid": 1, "emit": 1, "last": 1, "split": self._sb})
        depth = 2 + arr.delay + 1           # control stages before the accumulator
        stages = [Signal(ctl, name=f"ctl{s}") for s in range(depth)]

        # Stage 1: operand register. Stage 2: sparse muxes.
        op = Signal(self.operand_layout)
        w2 = Signal.like(self.i.payload.w)
        a2 = Signal(data.ArrayLayout(signed(self._ab), L))
        enabled = [mode_of(p) for p in self._patterns]
        sels = [self._mux(m, op, j) for j in range(L)]
        known = Signal()
        with m.Switch(op.mode):
            with m.Case(*enabled):
                m.d.comb += known.eq(1)
        with m.If(en):
            m.d.sync += [op.eq(self.i.payload),
                         stages[0].valid.eq(self.i.valid),
                         stages[0].emit.eq(self.i.payload.group_end | self.i.payload.last),
                         stages[0].last.eq(self.i.payload.last),
                         stages[0].split.eq(self.i.payload.split)]
            m.d.sync += [stages[s].eq(stages[s - 1]) for s in range(1, depth)]
            m.d.sync += w2.eq(op.w)
            m.d.sync += [a2[j].eq(sels[j]) for j in range(L)]
            with m.If(stages[0].valid & ~known):
                m.d.sync += self.bad_mode.eq(1)
        m.d.comb += [arr.w.eq(w2), arr.a.eq(a2)]

        # Group sums (the DSP cascades), registered with the last control stage.
        per_group = arr.multipliers // G
        gsum = [Signal(signed(self._acc), name=f"gsum{g}") for g in range(G)]
        with m.If(en):
            for g in range(G):
                m.d.sync += gsum[g].eq(sum(arr.y[g * per_group + t]
                                           for t in range(per_group)))

        # Reduction tree at group boundaries: level l has G / 2**l nodes.
        levels = [gsum]
        while len(levels[-1]) > 1:
            prev = levels[-1]
            levels.append([prev[2 * t] + prev[2 * t + 1] for t in range(len(prev) // 2)])
        nlev = len(levels)
        ctl_last = stages[-1]
        seg = [Signal(signed(self._acc), name=f"seg{t}") for t in range(G)]
        with m.Switch(ctl_last.split):
            for s in range(nlev):
                # split s: 2**s segments, each a node of level log2(G) - s.
                lev = levels[nlev - 1 - s]
                with m.Case(s):
                    m.d.comb += [seg[t].eq(lev[t]) for t in range(len(lev))]
            with m.Default():
                m.d.comb += seg[0].eq(levels[-1][0])

        acc = [Signal(signed(self._acc), name=f"acc{t}") for t in range(G)]
        with m.If(en):
            m.d.sync += self.o.valid.eq(0)
            with m.If(ctl_last.valid):
                with m.If(ctl_last.emit):
                    m.d.sync += [self.o.valid.eq(1), self.o.payload.last.eq(ctl_last.last),
                                 self.o.payload.split.eq(ctl_last.split)]
                    m.d.sync += [self.o.payload.psum[t].eq(acc[t] + seg[t]) for t in range(G)]
                    m.d.sync += [a.eq(0) for a in acc]
                with m.Else():
                    m.d.sync += [acc[t].eq(acc[t] + seg[t]) for t in range(G)]
        return m



def select_activation(m, op, j: int, patterns, act_bits: int = 8):
    """The sparse mux of lane ``j``: its activation in beat ``op`` (a view with ``mode``,
    ``idx`` and ``act``), ``act[j]`` for dense and block beats, else the activation its
    N:M index picks in its window (combinational)."""
    sel = Signal(signed(act_bits), name=f"sel{j}")
    m.d.comb += sel.eq(op.act[j])
    with m.Switch(op.mode):
        for p in patterns:
            if p not in NM_PATTERNS:
                continue
            n, mm = NM_PATTERNS[p]
            base = (j // n) * mm
            cands = Array(op.act[base + t] for t in range(mm))
            with m.Case(mode_of(p)):
                m.d.comb += sel.eq(cands[op.idx[j][:mm.bit_length() - 1]])
    return sel

def estimate_units(config) -> dict:
    """Units for ``airfoil estimate``: the config's chain at INT4 and at INT8 weights."""
    groups = max(1, min(4, config.lanes // 2))
    units = {}
    for wf, bits in (("int4", 4), ("int8", 8)):
        if wf in config.weight_formats:
            units[f"sparse_chain_{wf}"] = SparseChain(
                lanes=config.lanes, weight_bits=bits, patterns=config.sparsity, groups=groups)
    return units
