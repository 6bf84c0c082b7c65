"""The MATRIX unit's engine with a selectable PE kind behind one boundary.

:class:`PeArray` has exactly the external boundary that
:class:`~hdl.dsp_chain.dense.DenseChains` followed by
:class:`~hdl.decode_unit.rescaler.GroupRescaler` present to the matrix unit::

    operands (operand_layout) --> [ PE kind ] --> accs (acc_layout)
    scales   (scale_layout)   -->              <-- k0, use_init;  --> error
    init     (init_layout)    -->

and computes the same numbers bit for bit (:mod:`airfoil.formats`): per batch of
``chains`` rows, ``acc[c] = init[c] + sum_g psum[c, g] * m[c, g] << (k[c, g] - k0)``
wrapping at :data:`~airfoil.formats.ACC_BITS` bits (``init`` only when ``use_init``).

Kinds:

* ``"dsp"``: the two existing blocks, connected as the matrix unit connected them; one
  operand step per cycle.
* ``"bitserial"``: ``chains`` :class:`~hdl.pe.bitserial.BitSerialPE` (BitMoD). The
  operand stream carries sign-extended 8-bit weights, so every step runs as INT8 radix-4
  Booth digits: 4 cycles per step, which is also what INT4 on its own bit planes takes
  (:func:`airfoil.bitmod.cycles`), so nothing is lost for INT4 tiles.
* ``"lut"``: ``chains`` :class:`~hdl.pe.lut.LutChain` (T-MAC) sharing one
  :class:`~hdl.pe.lut.LutTableBuilder`; INT4 weights (the low 4 bits of each operand),
  4 bit-planes, 4 cycles per step. INT8 is not a LUT format: :attr:`weight_formats`
  leaves it out so that the matrix unit answers UNSUPPORTED for it.

For the serial kinds a step is broadcast to every chain; each chain takes it when it is
free (chains may drift apart by a step, since each rescales its own group scale, whose
shift sets its rescale time), and the operand stream moves once all chains have taken
it: nothing is lost or reordered, the stream simply waits. A step flagged
``group_last`` also needs the group's scales (taken with it, the shift range checked
there); a batch's accumulators leave when every chain has its row result and, with
``use_init``, the batch's starting accumulators are valid (added as the last step).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from airfoil import bitmod
from airfoil.bitmod import BitModFormat
from airfoil.config import PE_KINDS, TILE_FORMATS_OF_PE
from airfoil.formats import FORMAT_BITS, weight_format
from airfoil.formats import ACC_BITS, SCALE_SHIFT_MAX

from ..decode_unit.rescaler import GroupRescaler, acc_layout
from ..dsp_chain.dense import DenseChains
from ..streams import init_layout, operand_layout, scale_layout
from .bitserial import SCALE_M_BITS, SCALE_SHIFT_BITS, BitSerialPE
from .kinds import pe_kind
from .lut import LutChain, LutTableBuilder

__all__ = ["PE_KINDS", "PeArray"]

#: PE kinds a :class:`PeArray` builds are the values of ``AccelConfig.pe``; each computes
#: the tile formats of :data:`airfoil.config.TILE_FORMATS_OF_PE`.
_FORMATS = TILE_FORMATS_OF_PE


def _check_positive(what, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"{what} must be a positive integer, not {value!r}")


class PeArray(wiring.Component):
    """Compute a batch's rescaled row accumulators on ``chains`` PEs of one kind.

    Parameters
    ----------
    kind : str
        ``"dsp"``, ``"bitserial"`` or ``"lut"`` (``AccelConfig.pe``).
    chains : int
        Rows computed at once.
    lanes : int
        Weights per chain per operand step.
    group_max : int
        Largest group size (a multiple of ``lanes``; sizes the partial sums).
    group_min : int or None
        Smallest group size the array must keep up with (default ``group_max``); the
        serial kinds pick the fewest rescaler scale bits per cycle with which a group's
        rescale (:meth:`rescale_cycles`) fits in the group's operand cycles.
    lut_group : int
        Activations per table of the ``lut`` kind (``AccelConfig.lut_group``, 2..6,
        dividing ``lanes``); ignored by the other kinds.
    scale_bits_per_cycle : int or None
        Override the serial kinds' rescaler width (1..4); ``None`` chooses it as above.

    Members
    -------
    operands : In(stream.Signature(operand_layout(chains, lanes)))
    scales : In(stream.Signature(scale_layout(chains)))
        One per group, in order, taken with the group's ``group_last`` step.
    init : In(stream.Signature(init_layout(chains)))
        One per batch when ``use_init`` is set.
    accs : Out(stream.Signature(acc_layout(chains)))
        One per batch (the step flagged ``batch_last`` ends it).
    k0 : In(signed(7))
        The instruction's base exponent (held while its groups' scales are taken).
    use_init : In(1)
        Start each batch from ``init`` (else from zero); held for a whole instruction,
        until its last accumulators have left (the serial kinds read it then).
    error : Out(1)
        Sticky: a scale with ``bad`` set or a shift ``k - k0`` outside
        ``0..SCALE_SHIFT_MAX`` was taken.
    """

    def __init__(self, *, kind: str, chains: int, lanes: int, group_max: int,
                 group_min: int | None = None, lut_group: int = 4,
                 scale_bits_per_cycle: int | None = None):
        try:
            group_min, scale_bits_per_cycle = _validate(
                kind, chains, lanes, group_max, group_min, lut_group, scale_bits_per_cycle)
        except (TypeError, ValueError):
            self._MustUse__silence = True    # never built: no "unused" warning
            raise
        self._kind, self._chains, self._lanes = kind, chains, lanes
        self._group_max, self._group_min = group_max, group_min
        self._g, self._r = lut_group, scale_bits_per_cycle
        super().__init__({
            "operands": In(stream.Signature(operand_layout(chains, lanes))),
            "scales": In(stream.Signature(scale_layout(chains))),
            "init": In(stream.Signature(init_layout(chains))),
            "accs": Out(stream.Signature(acc_layout(chains))),
            "k0": In(signed(7)),
            "use_init": In(1),
            "error": Out(1),
        })

    kind = property(lambda self: self._kind)
    chains = property(lambda self: self._chains)
    lanes = property(lambda self: self._lanes)
    group_max = property(lambda self: self._group_max)

    @property
    def scale_bits_per_cycle(self) -> int:
        """Scale bits per cycle of the serial kinds' group rescalers (unused by ``dsp``)."""
        return self._r

    @property
    def weight_formats(self) -> tuple:
        """Weight formats of the core's tiles (``"int4"``, ``"int8"``) this kind computes."""
        return _FORMATS[self._kind]

    @staticmethod
    def formats_of(kind: str) -> tuple:
        """Return :attr:`weight_formats` of an array of ``kind`` without building one."""
        if kind not in PE_KINDS:
            raise ValueError(f"PE kind must be one of {', '.join(PE_KINDS)}, not {kind!r}")
        return _FORMATS[kind]

    @staticmethod
    def _cps(kind, fmt) -> int:
        return pe_kind(kind).tile_step_cycles(FORMAT_BITS[weight_format(fmt)])

    def cycles_per_step(self, fmt) -> int:
        """Return the cycles a chain spends on one operand step of weight format ``fmt``.

        ``fmt`` is a name (``"int4"``) or an :class:`airfoil.isa.WeightFormat`. Raise
        ``ValueError`` for a format this kind does not compute.
        """
        name = fmt if isinstance(fmt, str) else getattr(fmt, "name", str(fmt)).lower()
        if name not in self.weight_formats:
            raise ValueError(f"weight format {fmt!r} is not supported by the {self._kind} "
                             f"PE kind; supported: {', '.join(self.weight_formats)}")
        return self._cps(self._kind, name)

    def rescale_cycles(self, shift: int = SCALE_SHIFT_MAX) -> int:
        """Cycles a serial kind's rescaler spends on one group of shift ``k - k0``
        (0 for ``dsp``, whose rescaler takes a group per cycle)."""
        if self._kind == "dsp":
            return 0
        return _rescale_cycles(self._r, shift)

    @property
    def latency(self) -> int:
        """Cycles from the handshake of a batch's last operand step (steps back to back
        before it, ``accs`` ready) to its accumulators being valid, at the largest shift:
        :meth:`latency_at` ``(SCALE_SHIFT_MAX)``."""
        return self.latency_at(SCALE_SHIFT_MAX)

    def latency_at(self, shift: int) -> int:
        """:attr:`latency` when the batch's last group has shift ``k - k0 = shift`` in
        every chain (the serial kinds rescale bit by bit: ``dsp`` is 5 at any shift).

        ``dsp``: chains (:attr:`DenseChains.LATENCY`) + rescaler (2). ``bitserial``: the last step's digits, the
        PE's two stages, its rescale, the output register. ``lut``: as ``bitserial`` plus
        the table stage, which holds the next step while the chains finish theirs.
        """
        if not isinstance(shift, int) or not 0 <= shift <= SCALE_SHIFT_MAX:
            raise ValueError(f"shift must be an integer in 0..{SCALE_SHIFT_MAX}, not {shift!r}")
        if self._kind == "dsp":
            return DenseChains.LATENCY + 2     # and GroupRescaler.latency
        extra = 4 if self._kind == "bitserial" else 8
        return self._cps(self._kind, "int4") + extra + self.rescale_cycles(shift)

    def cycles_per_group(self, fmt, group: int, shift: int = SCALE_SHIFT_MAX) -> int:
        """Steady-state cycles per group of ``group`` weights per row, operands back to back:
        the steps' cycles, or the rescale of the group's scale when that is longer."""
        steps = group // self._lanes
        return max(steps * self.cycles_per_step(fmt), self.rescale_cycles(shift))

    def elaborate(self, platform):
        m = Module()
        if self._kind == "dsp":
            C, gm = self._chains, self._group_max
            m.submodules.chains = chains = DenseChains(chains=C, lanes=self._lanes,
                                                       group_max=gm)
            m.submodules.rescaler = resc = GroupRescaler(chains=C, group_max=gm)
            wiring.connect(m, outer=wiring.flipped(self.operands), inner=chains.operands)
            wiring.connect(m, producer=chains.psums, consumer=resc.psums)
            wiring.connect(m, outer=wiring.flipped(self.scales), inner=resc.scales)
            wiring.connect(m, outer=wiring.flipped(self.init), inner=resc.init)
            wiring.connect(m, outer=wiring.flipped(self.accs), inner=resc.accs)
            m.d.comb += [resc.k0.eq(self.k0), resc.use_init.eq(self.use_init),
                         self.error.eq(resc.error)]
            return m
        pes = self._serial(m)
        self._collect(m, pes)
        return m

    def _scale_check(self, m, take):
        """Set ``error`` when the scales taken this cycle are bad (for the serial
        rescalers, which multiply by a scale's magnitude, also when one is negative)."""
        sc = self.scales.payload
        bad = [sc.bad]
        for c in range(self._chains):
            sh = Signal(signed(8), name=f"sh{c}")
            m.d.comb += sh.eq(sc.k[c] - self.k0)
            bad.append((sh < 0) | (sh > SCALE_SHIFT_MAX) | (sc.m[c] < 0))
        with m.If(take & Cat(*bad).any()):
            m.d.sync += self.error.eq(1)

    def _serial(self, m):
        """Build the serial PEs and the step broadcast; return the PEs."""
        C, L = self._chains, self._lanes
        ops = self.operands
        gl = ops.payload.group_last
        sc = self.scales.payload
        # A step enters when its group's scales are there (group_last steps only).
        scale_ok = ~gl | self.scales.valid
        enter = Signal()          # the entry (PEs or table builder) takes the step now
        m.d.comb += [self.scales.ready.eq(ops.valid & gl & enter)]
        self._scale_check(m, self.scales.valid & self.scales.ready)
        shifts = [(sc.k[c] - self.k0)[:SCALE_SHIFT_BITS] for c in range(C)]

        if self._kind == "bitserial":
            pes = [BitSerialPE(lanes=L, sparse=False, max_group=self._group_max,
                               acc_bits=ACC_BITS, scale_bits_per_cycle=self._r)
                   for _ in range(C)]
            src_valid = ops.valid & scale_ok
            payloads = []
            for c, pe in enumerate(pes):
                m.submodules[f"pe{c}"] = pe
                p = pe.i.payload
                m.d.comb += [
                    p.w.eq(ops.payload.w[c].as_value()), p.x.eq(ops.payload.x),
                    p.fmt.eq(BitModFormat.INT8), p.group_end.eq(gl),
                    p.row_end.eq(ops.payload.batch_last),
                    p.m.eq(sc.m[c]), p.shift.eq(shifts[c]),
                ]
                payloads.append(p)
            all_taken = self._broadcast(m, src_valid, pes)
            m.d.comb += [enter.eq(all_taken), ops.ready.eq(scale_ok & all_taken)]
            return pes

        # lut: one table builder for all chains, the step's other fields beside it.
        g = self._g
        m.submodules.tables = tb = LutTableBuilder(lanes=L, g=g)
        pes = [LutChain(lanes=L, g=g, max_group=self._group_max, acc_bits=ACC_BITS,
                        scale_bits_per_cycle=self._r) for _ in range(C)]
        h_w = [Signal(4 * L, name=f"h_w{c}") for c in range(C)]
        h_m = [Signal(SCALE_M_BITS, name=f"h_m{c}") for c in range(C)]
        h_sh = [Signal(SCALE_SHIFT_BITS, name=f"h_sh{c}") for c in range(C)]
        h_ge, h_re = Signal(), Signal()
        m.d.comb += [tb.i.payload.eq(ops.payload.x), tb.i.valid.eq(ops.valid & scale_ok),
                     enter.eq(tb.i.ready), ops.ready.eq(scale_ok & tb.i.ready)]
        with m.If(tb.i.ready):        # the builder loads its register in these cycles
            m.d.sync += [h_ge.eq(gl), h_re.eq(ops.payload.batch_last)]
            for c in range(C):
                m.d.sync += [
                    h_w[c].eq(Cat(ops.payload.w[c][lane][:4] for lane in range(L))),
                    h_m[c].eq(sc.m[c]), h_sh[c].eq(shifts[c]),
                ]
        for c, pe in enumerate(pes):
            m.submodules[f"pe{c}"] = pe
            p = pe.i.payload
            m.d.comb += [p.w.eq(h_w[c]), p.tab.eq(tb.o.payload), p.bits.eq(4),
                         p.group_end.eq(h_ge), p.row_end.eq(h_re), p.m.eq(h_m[c]),
                         p.shift.eq(h_sh[c])]
        all_taken = self._broadcast(m, tb.o.valid, pes)
        m.d.comb += tb.o.ready.eq(all_taken)
        return pes

    def _broadcast(self, m, valid, pes):
        """Offer one beat to every PE until each has taken it; return "all have it"."""
        C = self._chains
        taken = Signal(C)
        done = Signal(C)
        all_taken = Signal()
        m.d.comb += [done.eq(Cat(taken[c] | pes[c].i.ready for c in range(C))),
                     all_taken.eq(done.all())]
        for c, pe in enumerate(pes):
            m.d.comb += pe.i.valid.eq(valid & ~taken[c])
        with m.If(valid & all_taken):
            m.d.sync += taken.eq(0)
        with m.Elif(valid):
            m.d.sync += taken.eq(Cat(taken[c] | pes[c].i.ready for c in range(C)))
        return all_taken

    def _collect(self, m, pes):
        """Gather the chains' row results into ``accs``, adding the batch's init."""
        C = self._chains
        all_valid = Cat(pe.o.valid for pe in pes).all()
        init_ok = ~self.use_init | self.init.valid
        adv = Signal()
        take = Signal()
        m.d.comb += [adv.eq(~self.accs.valid | self.accs.ready),
                     take.eq(all_valid & init_ok & adv),
                     self.init.ready.eq(take & self.use_init)]
        for pe in pes:
            m.d.comb += pe.o.ready.eq(take)
        with m.If(adv):
            m.d.sync += self.accs.valid.eq(take)
        with m.If(take):
            for c, pe in enumerate(pes):
                base = Mux(self.use_init, self.init.payload.init[c], 0)
                m.d.sync += self.accs.payload[c].eq((pe.o.payload.acc + base)[:ACC_BITS])


def _validate(kind, chains, lanes, group_max, group_min, lut_group, scale_bits_per_cycle):
    """Check :class:`PeArray`'s parameters; return ``(group_min, scale_bits_per_cycle)``."""
    if kind not in PE_KINDS:
        raise ValueError(f"PE kind must be one of {', '.join(PE_KINDS)}, not {kind!r}")
    _check_positive("Chain count", chains)
    _check_positive("Lane count", lanes)
    _check_positive("Largest group size", group_max)
    if group_max % lanes:
        raise ValueError(f"Largest group size must be a multiple of lanes ({lanes}), "
                         f"not {group_max}")
    if group_min is None:
        group_min = group_max
    _check_positive("Smallest group size", group_min)
    if group_min % lanes or group_min > group_max:
        raise ValueError(f"Smallest group size must be a multiple of lanes ({lanes}) "
                         f"and at most {group_max}, not {group_min}")
    if kind == "bitserial" and (lanes % 2 or lanes > 128):
        raise ValueError(f"Lane count of a bitserial array must be even and at most "
                         f"128, not {lanes}")
    if kind == "lut":
        if lut_group not in (2, 3, 4, 5, 6) or lanes % lut_group:
            raise ValueError(f"LUT group must be 2..6 and divide lanes ({lanes}), "
                             f"not {lut_group!r}")
    if scale_bits_per_cycle is None:
        scale_bits_per_cycle = 4
        steps = group_min // lanes
        for r in (1, 2, 3, 4):
            if _rescale_cycles(r, SCALE_SHIFT_MAX) <= steps * PeArray._cps(kind, "int4"):
                scale_bits_per_cycle = r
                break
    elif scale_bits_per_cycle not in (1, 2, 3, 4):
        raise ValueError(f"scale_bits_per_cycle must be 1..4, not "
                         f"{scale_bits_per_cycle!r}")
    return group_min, scale_bits_per_cycle


def _rescale_cycles(r: int, shift: int) -> int:
    """Cycles of a :class:`~hdl.pe.bitserial.SerialRescaler` (``r`` scale bits per cycle)
    on one group of shift ``shift``."""
    return -(-SCALE_M_BITS // r) + -(-shift // r) + 1
