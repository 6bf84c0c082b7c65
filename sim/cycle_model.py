"""First cycle cost model: what each instruction costs on a configuration.

Every per-instruction cost the ISA simulator charges is computed here and nowhere else,
so that calibrating against RTL cycle counts later means changing this one module.

Costs (in core clock cycles)
----------------------------
* ``LD``/``ST``: a transfer of ``beats = bytes / word_bytes`` words on one memory channel.
  The channel streams at ``rate = min(1, outstanding * max_burst / (latency + max_burst))``
  words per cycle (a port keeps at most ``outstanding`` bursts of ``max_burst`` beats in
  flight and delivers at most one word per cycle). The channel is busy for
  ``ceil(beats / rate)`` cycles and the data is complete ``latency`` cycles after that
  (``read_latency`` for LD, ``write_latency`` for ST), so back-to-back transfers on one
  channel overlap their latency with the previous data, as outstanding requests allow.
* ``MV``/``MM``: ``m x ceil(rows / chains) x ceil(k / lanes)`` cycles of chain work plus
  :data:`MATRIX_LATENCY` cycles of pipeline (unpacker, chain, rescaler, requantizer).
* ``SFU`` (``COPY``): one word per cycle plus :data:`SFU_LATENCY`.
* ``SFU`` functions of ISA version 2 (:meth:`CycleModel.sfu_func`): one memory word of
  int32 elements (``word_bytes / 4``) per cycle, plus the attention products (``ATT_QK``,
  ``ATT_PV``) at the engine's ``chains x lanes`` MACs per cycle, plus
  :data:`SFU_LATENCY`.
* ``SYS`` and the dispatch of any instruction: :data:`DISPATCH_CYCLES` per instruction.

A unit executes its queue in order; LOAD and STORE may start the next transfer on
another channel one cycle after the previous one started (their completions, and so the
tokens they release, stay in program order); MATRIX and SFU run one instruction at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from airfoil.config import AccelConfig

__all__ = ["Cost", "CycleModel", "MATRIX_LATENCY", "SFU_LATENCY", "DISPATCH_CYCLES",
           "ISSUE_CYCLES"]

#: Pipeline latency of one matrix instruction (fill and drain of the chain datapath).
MATRIX_LATENCY = 8
#: Pipeline latency of one special-function instruction.
SFU_LATENCY = 4
#: Cycles the dispatcher spends on one instruction (and a SYS NOP/SETREG takes).
DISPATCH_CYCLES = 1
#: Cycles between the starts of two transfers of the LOAD or STORE unit (address issue).
ISSUE_CYCLES = 1


@dataclass(frozen=True)
class Cost:
    """Cost of one instruction.

    Members
    -------
    busy : int
        Cycles the resource (channel or unit) is occupied; the next instruction on the
        same resource starts no earlier than ``start + busy``.
    latency : int
        Cycles from start to completion (when its tokens are released), ``>= busy``.
    """

    busy: int
    latency: int


class CycleModel:
    """Per-instruction costs of one configuration.

    Parameters
    ----------
    config : AccelConfig
        The accelerator whose memory and engine shape set the costs.
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, not {config!r}")
        self._config = config

    @property
    def config(self) -> AccelConfig:
        return self._config

    def words_per_cycle(self, latency: int) -> float:
        """Sustained words per cycle of one channel whose requests see ``latency``."""
        mem = self._config.memory
        return min(1.0, mem.outstanding * mem.max_burst / (latency + mem.max_burst))

    def _transfer(self, nbytes: int, latency: int) -> Cost:
        beats = -(-nbytes // self._config.word_bytes)
        busy = max(1, math.ceil(beats / self.words_per_cycle(latency)))
        return Cost(busy=busy, latency=latency + busy)

    def load(self, nbytes: int) -> Cost:
        """Cost of reading ``nbytes`` from memory on one channel (``LD``)."""
        return self._transfer(nbytes, self._config.memory.read_latency)

    def store(self, nbytes: int) -> Cost:
        """Cost of writing ``nbytes`` to memory on one channel (``ST``)."""
        return self._transfer(nbytes, self._config.memory.write_latency)

    def matrix(self, rows: int, k: int, m: int = 1) -> Cost:
        """Cost of one ``MV`` (``m == 1``) or ``MM`` over a ``rows x k`` weight tile."""
        c = self._config
        work = m * -(-rows // c.chains) * -(-k // c.lanes)
        return Cost(busy=work + MATRIX_LATENCY, latency=work + MATRIX_LATENCY)

    def sfu(self, nbytes: int) -> Cost:
        """Cost of one special-function instruction over ``nbytes`` bytes."""
        work = max(1, -(-nbytes // self._config.word_bytes))
        return Cost(busy=work + SFU_LATENCY, latency=work + SFU_LATENCY)

    def sfu_func(self, elements: int, macs: int = 0) -> Cost:
        """Cost of a version-2 SFU function over ``elements`` values with ``macs`` products."""
        c = self._config
        work = max(1, -(-elements // max(1, c.word_bytes // 4)))
        work += -(-macs // (c.chains * c.lanes))
        return Cost(busy=work + SFU_LATENCY, latency=work + SFU_LATENCY)

    def sys(self) -> Cost:
        """Cost of a ``SYS`` NOP or SETREG in the dispatcher."""
        return Cost(busy=DISPATCH_CYCLES, latency=DISPATCH_CYCLES)
