"""Memory model of the ISA simulator: a flat byte image and per-channel timing.

Addresses are byte offsets from a channel's base address, as in ``LD``/``ST``: channel
``c`` reaches image byte ``offsets[c] + addr`` (the folder's ``channel_offsets``, see
:mod:`airfoil.folder`). An instruction's ``channel`` names the AXI port that carries the
transfer and so its timing too: each channel streams one transfer at a time, at the rate
the :class:`sim.cycle_model.CycleModel` gives for that channel's read latency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from airfoil.config import AccelConfig

from .cycle_model import Cost, CycleModel, round_robin_ends

__all__ = ["Memory", "MemoryRangeError", "PortLoad"]


class MemoryRangeError(Exception):
    """An access beyond the end of the memory image (the simulator maps it to AXI_ERROR)."""


class Memory:
    """A flat byte image with one timing state per channel.

    Parameters
    ----------
    image : bytearray
        The memory contents from the data base address; modified in place by writes.
    config : AccelConfig
        Gives the channel count and, through the cycle model, the transfer costs.
    model : CycleModel, optional
        Cost model to use (default: ``CycleModel(config)``).
    offsets : list of int, optional
        Where each channel's memory starts in the image (default: all 0).
    """

    def __init__(self, image: bytearray, config: AccelConfig, model: CycleModel | None = None,
                 offsets=None):
        if not isinstance(image, bytearray):
            raise TypeError(f"image must be a bytearray, not {type(image).__name__}")
        self.image = image
        self.offsets = list(offsets) if offsets is not None else [0] * config.memory.channels
        if len(self.offsets) != config.memory.channels:
            raise ValueError(f"offsets must name {config.memory.channels} channels, not "
                             f"{self.offsets!r}")
        self.config = config
        self.model = model or CycleModel(config)
        #: Cycle at which each channel can start streaming its next transfer.
        self.channel_free = [0] * config.memory.channels
        #: Per buffer write port (a buffer, or a WGT bank), the LDs of its current busy
        #: period (:class:`PortLoad`, see :meth:`buffer_write`).
        self.port_loads = {}
        self.bytes_read = 0
        self.bytes_written = 0

    def __len__(self):
        return len(self.image)

    def _check(self, addr: int, nbytes: int) -> None:
        if addr < 0 or addr + nbytes > len(self.image):
            raise MemoryRangeError(f"memory access {addr:#x}..{addr + nbytes:#x} is outside the "
                                   f"image of {len(self.image)} bytes")

    def read(self, addr: int, nbytes: int, channel: int = 0) -> bytes:
        """Return ``nbytes`` bytes at ``addr`` of ``channel``."""
        addr += self.offsets[channel]
        self._check(addr, nbytes)
        self.bytes_read += nbytes
        return bytes(self.image[addr:addr + nbytes])

    def write(self, addr: int, data: bytes, channel: int = 0) -> None:
        """Write ``data`` at ``addr`` of ``channel``."""
        addr += self.offsets[channel]
        self._check(addr, len(data))
        self.bytes_written += len(data)
        self.image[addr:addr + len(data)] = data

    def transfer(self, channel: int, start: int, nbytes: int, *, write: bool) -> tuple[int, Cost]:
        """Schedule a transfer on ``channel`` no earlier than ``start``.

        Return ``(begin, cost)``: the cycle the transfer begins (after the channel is free)
        and its cost; the channel is then busy until ``begin + cost.busy``.
        """
        cost = self.model.store(nbytes) if write else self.model.load(nbytes, channel)
        begin = max(start, self.channel_free[channel])
        self.channel_free[channel] = begin + cost.busy
        return begin, cost

    def buffer_write(self, port, channel: int, begin: int, nbytes: int, owner=None) -> list:
        """Add an ``LD`` of ``nbytes`` through the buffer write port ``port`` (a buffer, or
        a WGT bank: ``(buffer, bank)``), begun at ``begin`` on ``channel``; the LDs of every
        channel into the port share it round robin
        (:func:`~sim.cycle_model.round_robin_ends`).

        Returns the new :class:`PortLoad` (its ``owner`` the caller's) first, then every
        earlier one whose delay the new one grew, with the growth: ``[(load, cycles)]``.
        A load's ``delay`` is the cycles the port holds it back beyond its channel's own
        pace (zero while one channel alone writes through the port); its channel stays
        busy as much longer, and the caller moves its completion as much later.
        """
        first, words, paced = self.model.load_write(nbytes, channel)
        new = PortLoad(begin + first, words, words / paced, paced, channel, owner)
        loads = self.port_loads.get(port, [])
        if not any(ld.end > new.arrive for ld in loads):
            loads = []                              # the port was idle: a new busy period
        loads.append(new)
        self.port_loads[port] = loads
        ends = round_robin_ends([(ld.arrive, ld.words, ld.rate) for ld in loads])
        out = []
        for ld, end in zip(loads, ends):
            grow = max(0, math.ceil(end - 1e-9) - ld.end)
            if grow:
                ld.delay += grow
                self.channel_free[ld.channel] += grow
                if ld is not new:
                    out.append((ld, grow))
        return [(new, new.delay)] + out


@dataclass(eq=False)
class PortLoad:
    """One ``LD`` through a buffer write port (:meth:`Memory.buffer_write`): the cycle
    its first word reaches the port, its words, the words per cycle its channel
    delivers and the cycles it takes them in, its channel, the caller's ``owner`` and the
    cycles the port holds it back (``delay``)."""

    arrive: int
    words: int
    rate: float
    paced: int
    channel: int
    owner: object = None
    delay: int = 0

    @property
    def end(self) -> int:
        """The cycle the port has taken its last word."""
        return self.arrive + self.paced + self.delay
