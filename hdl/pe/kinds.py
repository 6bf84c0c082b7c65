"""PE kinds: one registry that the config, the MATRIX unit, the streamed engine and the
cycle model all read.

A kind (``AccelConfig.pe``) names

* the WGT-tile formats the MATRIX unit computes with it (:class:`hdl.pe.array.PeArray`)
  and the cycles one step of such a tile takes there (:meth:`PeKind.tile_step_cycles`);
* the lane engine of the streamed engine's chains (:mod:`hdl.pe.stream_lanes`): the
  cycles of one streamed step of a record, by the width of the record's decoded values
  (:meth:`PeKind.step_cycles`, :func:`tag_value_bits`), the widest value it takes and
  whether it runs N:M records compressed.

Adding a kind is one entry here plus its lane engine (and, for WGT tiles, its
:class:`~hdl.pe.array.PeArray` back end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from airfoil import bitmod, format_registry, packing
from airfoil.bitmod import BitModFormat

from .lut import LutChain
from .stream_lanes import BitSerialLanes, DspLanes, LaneEngine, LutLanes

__all__ = ["PeKind", "KINDS", "PE_KINDS", "pe_kind", "kinds_running", "tag_value_bits",
           "value_bits"]


@dataclass(frozen=True)
class PeKind:
    """One PE kind.

    Attributes
    ----------
    name : str
        The ``pe`` value of a configuration.
    summary : str
        One line for users.
    tile_formats : tuple of str
        Formats of WGT tiles the MATRIX unit computes on this kind exactly.
    tile_cycles : callable
        ``bits -> cycles`` the MATRIX unit's PE array spends on one operand step of a
        ``bits``-bit tile format.
    lanes : type
        The :class:`~hdl.pe.stream_lanes.LaneEngine` of the streamed chains.
    signed_tile_scales : bool
        Whether the MATRIX unit's rescaler takes a negative group scale of a WGT tile (the
        :class:`~hdl.decode_unit.rescaler.GroupRescaler` multiplies by the signed
        significand; the serial rescalers of the bit-serial and LUT PEs take magnitudes
        and flag a negative scale). Streamed records always may.
    """

    name: str
    summary: str
    tile_formats: tuple
    tile_cycles: Callable[[int], int]
    lanes: type
    signed_tile_scales: bool = True

    def __post_init__(self):
        if not issubclass(self.lanes, LaneEngine):
            raise TypeError(f"PE kind {self.name}: lanes must be a LaneEngine subclass")

    def tile_step_cycles(self, bits: int) -> int:
        """Cycles the MATRIX unit's PE array spends on one step of a ``bits``-bit tile."""
        return self.tile_cycles(bits)

    def step_cycles(self, value_bits: int) -> int:
        """Cycles of one streamed step whose weights are ``value_bits``-bit values."""
        return self.lanes.cycles(value_bits)

    @property
    def stream_value_bits(self) -> int:
        """Widest decoded weight value the streamed chain takes."""
        return self.lanes.max_value_bits

    @property
    def nm_sparsity(self) -> bool:
        """Whether the streamed chain runs N:M records (compressed)."""
        return self.lanes.sparse


def _tile_formats(kind: str) -> tuple:
    """WGT-tile formats of a kind: those of :mod:`airfoil.format_registry` naming it."""
    return tuple(f.name for f in format_registry.tile_formats() if kind in f.tile_pe_kinds)


KINDS = {k.name: k for k in (
    # The MATRIX unit's dense chains pack lane pairs like the streamed ones (DenseChains).
    PeKind("dsp", "packed DSP48E2 multipliers: two narrow (<= 4-bit) weights per DSP",
           _tile_formats("dsp"), DspLanes.cycles, DspLanes),
    # BitSerialPE on sign-extended 8-bit operands: radix-4 Booth, INT8's digits.
    PeKind("bitserial", "BitMoD-style bit-serial lanes: shifts and adds, one weight digit "
           "per cycle", _tile_formats("bitserial"), lambda bits: bitmod.cycles(BitModFormat.INT8),
           BitSerialLanes, signed_tile_scales=False),
    # LutChain on the low 4 bits: INT4's planes.
    PeKind("lut", "T-MAC table lookup on weight bit-planes (weights up to 4 bits, dense)",
           _tile_formats("lut"), lambda bits: LutChain.cycles_per_beat(4), LutLanes,
           signed_tile_scales=False),
)}
#: Names of the kinds, in registry order.
PE_KINDS = tuple(KINDS)


def pe_kind(name) -> PeKind:
    """The :class:`PeKind` of a name (or a kind)."""
    if isinstance(name, PeKind):
        return name
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"PE kind must be one of {', '.join(PE_KINDS)}, not {name!r}") \
            from None


def kinds_running(fmt) -> tuple:
    """Names of the kinds that compute a format (a name or registry spec): those whose
    MATRIX unit takes its WGT tiles, and for a streamed format those whose chains take
    its decoded values (:attr:`PeKind.stream_value_bits`)."""
    spec = fmt if isinstance(fmt, format_registry.FormatSpec) else format_registry.by_name(fmt)
    return tuple(k.name for k in KINDS.values() if k.name in spec.tile_pe_kinds or
                 (spec.streamed and spec.value_bits <= k.stream_value_bits))


def value_bits(values) -> int:
    """Smallest signed width that holds every value of ``values``."""
    v = np.asarray(values, dtype=np.int64)
    lo, hi = int(v.min(initial=0)), int(v.max(initial=0))
    b = 1
    while not -(1 << (b - 1)) <= lo or not hi <= (1 << (b - 1)) - 1:
        b += 1
    return b


def tag_value_bits(tag) -> int:
    """Signed width of the decoded weight values of a record format (tag or name)."""
    return packing.format_spec(packing.record_tag(tag)).value_bits
