"""What a core of a configuration is built of, decided from the config alone.

:class:`CorePlan` is derived from an :class:`~airfoil.config.AccelConfig` (and the
``sfu`` choice of :class:`~hdl.core.top.Engine`): the units, whether the MATRIX unit has
the streamed engine beside it, the PE kind, the memory channels and the buffer geometry,
with the parameters other code asks about (the accumulator depth, the accumulator memory
kind). The core reads its plan to decide what it builds, and code that needs one of these
facts reads the plan instead of building a component to ask it.
"""

from __future__ import annotations

from dataclasses import dataclass

from airfoil import isa
from airfoil.config import AccelConfig

from .buffers import BufferGeometry
from .matrix import acc_depth

__all__ = ["CorePlan", "BUFFERS", "BYTE_BUFFERS"]

#: Buffers of the core, each a RAM with one write port.
BUFFERS = (isa.Buffer.ACT, isa.Buffer.WGT, isa.Buffer.OUT, isa.Buffer.KV, isa.Buffer.AUX)

#: Buffers with byte-granular writes: those the SFU reaches (:data:`airfoil.isa.SFU_BUFFERS`).
BYTE_BUFFERS = (isa.Buffer.ACT, isa.Buffer.OUT, isa.Buffer.KV, isa.Buffer.AUX)


@dataclass(frozen=True)
class CorePlan:
    """The parts of a core and their parameters.

    Attributes
    ----------
    config : AccelConfig
    geometry : BufferGeometry
        Widths and depths of the buffers.
    has_sfu : bool
        The SFU queue and unit are built (else ``SFU`` is UNSUPPORTED).
    streamed : bool
        The streamed MATRIX engine (decode unit, sparse chains) is built beside the
        WGT-tile engine: ``LD WSTREAM`` feeds it, one weight stream per memory channel.
    """

    config: AccelConfig
    geometry: BufferGeometry
    has_sfu: bool
    streamed: bool

    @classmethod
    def of(cls, config: AccelConfig, *, sfu: bool = True) -> "CorePlan":
        """The plan of ``config``; raise :class:`~airfoil.config.ConfigError` if the core
        cannot be built (see :meth:`BufferGeometry.of`)."""
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, not {config!r}")
        return cls(config=config, geometry=BufferGeometry.of(config), has_sfu=bool(sfu),
                   streamed=config.decode_unit)

    @property
    def units(self) -> tuple:
        """The units built, in :class:`~airfoil.isa.Unit` order (each with a queue)."""
        return tuple(u for u in isa.Unit if u != isa.Unit.SFU or self.has_sfu)

    @property
    def channels(self) -> int:
        """Memory channels: one AXI4 data port and one reader each."""
        return self.config.memory.channels

    @property
    def word_bits(self) -> int:
        return self.config.memory.word_bits

    @property
    def pe(self) -> str:
        """PE kind of the MATRIX unit (``dsp``, ``bitserial``, ``lut``)."""
        return self.config.pe

    @property
    def acc_memory(self) -> str:
        """Kind of the MATRIX unit's accumulator memory: ``amaranth`` with the SFU, whose
        writes to OUT may stall the MATRIX unit (an Amaranth memory stands still under
        the clock enable), else ``ram``."""
        return "amaranth" if self.has_sfu else "ram"

    @property
    def acc_depth(self) -> int:
        """Batches of K-split accumulators the MATRIX unit keeps (:func:`~hdl.core.matrix.
        acc_depth`), shared with the streamed engine."""
        return acc_depth(self.geometry, self.config.chains, min(self.config.group_sizes))

    @property
    def weight_streams(self) -> int:
        """Weight streams from the LOAD unit to the streamed engine (0 without it)."""
        return self.channels if self.streamed else 0
