"""Cycles of the MATRIX unit (:class:`hdl.core.matrix.MatrixUnit`) on WGT tiles.

The one statement of how long an ``MV``/``MM`` keeps the unit: the unit's own tests
measure it against the RTL (``tests/test_matrix_mm.py``) and the ISA simulator's cycle
model (:meth:`sim.cycle_model.CycleModel.matrix`) charges it, plus the token hand-off to
the waiting unit. Each constant names the part of the unit it stands for.

From the cycle the unit takes the instruction from its queue to the cycle its release is
offered::

    cycles = fixed + m * batches * P
    P      = max(steps * step_cycles, final * chains, groups + use_init)
    fixed  = final ? chains + MV_START_CYCLES + CHAIN_LATENCY + RESCALER_LATENCY +
                     ACC_HANDSHAKE + REQUANT_LATENCY + UNIT_RELEASE_CYCLES
                   : MV_START_CYCLES + CHAIN_LATENCY + RESCALER_LATENCY + ACC_HANDSHAKE +
                     ACC_WRITE_CYCLES + UNIT_RELEASE_CYCLES
             + step_cycles - 1 (the chains hold the last step that long)

with ``batches = ceil(rows / chains)``, ``steps = ceil(k / lanes)``, ``step_cycles``
(:func:`step_cycles`: the WGT rows of a step, or the PE kind's cycles when longer: ``dsp``
1 for INT4 and 2 for INT8, the serial kinds 4), ``groups = k / group`` (the scale reader
takes one WGT row a cycle, :data:`SCALE_READ_CYCLES`) and ``use_init`` 1 when a batch
starts from a bias or from an earlier K-chunk. The count is exact when the operands set
``P``; when the scale reader or the serializer does, it is an upper bound by less than
:data:`CHAIN_LATENCY` (the chains' fill overlaps the wait). On the serial PE kinds the
group rescale adds a tail that depends on the last group's shift
(``PeArray.rescale_cycles``), which the count leaves out.
"""

from __future__ import annotations

from airfoil.formats import FORMAT_BITS, weight_format

from ..dsp_chain.dense import DenseChains
from ..pe.kinds import pe_kind

__all__ = ["matrix_cycles", "step_cycles", "last_step_extra", "WGT_ROW_BITS",
           "MV_START_CYCLES", "CHAIN_LATENCY", "RESCALER_LATENCY", "ACC_HANDSHAKE",
           "REQUANT_LATENCY", "ACC_WRITE_CYCLES", "UNIT_RELEASE_CYCLES",
           "SCALE_READ_CYCLES", "FINAL_LATENCY"]

#: Bits per weight of one WGT buffer row: the unit reads an INT4 step in one cycle, an
#: INT8 step in two.
WGT_ROW_BITS = 4
#: The CHECK state, then the WGT/ACT read register in front of the chains.
MV_START_CYCLES = 2
#: ``DenseChains.LATENCY``: a group's last step to its partial sums.
CHAIN_LATENCY = DenseChains.LATENCY
#: ``GroupRescaler.latency`` (products and shifts, accumulate), counted from the psum
#: handshake.
RESCALER_LATENCY = 2
#: The psum and accumulator handshakes between chains, rescaler and serializer.
ACC_HANDSHAKE = 1
#: ``Requantizer.latency`` plus the drain counter's last cycle before the done flag.
REQUANT_LATENCY = 4
#: A K-chunk that is not final writes its accumulators to the accumulator memory: the
#: drain counter's one cycle.
ACC_WRITE_CYCLES = 1
#: The done flag (``w_done``) and the REL state's handshake.
UNIT_RELEASE_CYCLES = 2
#: Cycles of the scale/bias reader per read: one WGT row per group scale row and one for
#: a batch's starting accumulators.
SCALE_READ_CYCLES = 1
#: Fill and drain of an instruction on a final tile, without the serializer's ``chains``
#: cycles and the last step's extra cycles.
FINAL_LATENCY = (MV_START_CYCLES + CHAIN_LATENCY + RESCALER_LATENCY + ACC_HANDSHAKE +
                 REQUANT_LATENCY + UNIT_RELEASE_CYCLES)


def _bits(wfmt) -> int:
    return 4 if wfmt is None else FORMAT_BITS[weight_format(wfmt)]


def step_cycles(pe: str, wfmt=None) -> int:
    """Cycles of one ``chains x lanes`` step of weight format ``wfmt`` (a
    :class:`~airfoil.isa.WeightFormat` or its name; INT4 if None) on PE kind ``pe``: its
    WGT rows, or the kind's :meth:`~hdl.pe.kinds.PeKind.tile_step_cycles` when longer."""
    bits = _bits(wfmt)
    return max(-(-bits // WGT_ROW_BITS), pe_kind(pe).tile_step_cycles(bits))


def last_step_extra(pe: str, wfmt=None) -> int:
    """Cycles the PE array holds the last step of a batch beyond the cycle it arrives in."""
    return pe_kind(pe).tile_step_cycles(_bits(wfmt)) - 1


def matrix_cycles(*, chains: int, lanes: int, rows: int, k: int, m: int = 1, wfmt=None,
                  pe: str = "dsp", final: bool = True, group: int | None = None,
                  use_init: bool = False) -> int:
    """Cycles of one ``MV`` (``m == 1``) or ``MM`` over a ``rows x k`` WGT tile, queue
    handshake to release offered (the module docstring's formula).

    ``group`` (when given) and ``use_init`` bound a batch from below by the scale
    reader's ``SCALE_READ_CYCLES * (k / group + use_init)`` cycles.
    """
    for name, v in (("rows", rows), ("k", k), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, not {v!r}")
    per_batch = -(-k // lanes) * step_cycles(pe, wfmt)
    if group is not None:
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ValueError(f"group must be a positive integer or None, not {group!r}")
        per_batch = max(per_batch, SCALE_READ_CYCLES * (-(-k // group) + int(use_init)))
    if final:
        per_batch = max(per_batch, chains)
        fixed = chains + FINAL_LATENCY
    else:
        fixed = FINAL_LATENCY - REQUANT_LATENCY + ACC_WRITE_CYCLES
    return fixed + last_step_extra(pe, wfmt) + m * -(-rows // chains) * per_batch
