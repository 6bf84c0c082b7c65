"""Geometry of the on-chip buffers, derived from an :class:`~airfoil.config.AccelConfig`.

* ACT: one memory word per row; the matrix unit reads ``lanes`` activations per step.
* WGT: one row per INT4 step of the chains (``chains * lanes * 4`` bits), written a memory
  word at a time (word granularity), read a whole step per cycle by the operand side and
  once more by the scale/bias reader.
* OUT: one memory word per row with byte write enables (results of 1, 2 or 4 bytes).
* KV, AUX: one memory word per row (key/value records; tables, gains, scale pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.utils import exact_log2

from airfoil.config import AccelConfig
from airfoil.errors import ConfigError

__all__ = ["BufferGeometry"]


@dataclass(frozen=True)
class BufferGeometry:
    """Widths and depths of the ACT, WGT and OUT buffers of one configuration."""

    word_bits: int
    act_bytes: int
    wgt_bytes: int
    out_bytes: int
    wgt_bits: int
    kv_bytes: int = 0
    aux_bytes: int = 0

    @classmethod
    def of(cls, config: AccelConfig) -> "BufferGeometry":
        """Derive the geometry; raise :class:`ConfigError` if the core cannot be built."""
        wbits = config.memory.word_bits
        step = config.chains * config.lanes * 4
        where = f"config {config.name!r}: the RTL core needs "
        if wbits > 256:
            raise ConfigError(f"{where}memory.word_bits <= 256 (an instruction spans whole "
                              f"words), not {wbits}")
        if step & (step - 1):
            raise ConfigError(f"{where}chains x lanes x 4 bits to be a power of two, "
                              f"not {step}")
        if step % wbits:
            raise ConfigError(f"{where}chains x lanes x 4 bits ({step}) to be a multiple of "
                              f"memory.word_bits ({wbits})")
        if config.lanes < 8:
            raise ConfigError(f"{where}lanes >= 8 (bias of a batch fits in one WGT row), "
                              f"not {config.lanes}")
        if config.lanes * 8 > wbits:
            raise ConfigError(f"{where}lanes x 8 bits ({config.lanes * 8}) to fit in one "
                              f"memory word ({wbits} bits)")
        if config.buffers.weight_bytes * 8 < 2 * step:
            raise ConfigError(f"{where}buffers.weight_bytes of at least two INT4 steps "
                              f"({2 * step // 8} bytes), not {config.buffers.weight_bytes}")
        return cls(word_bits=wbits, act_bytes=config.buffers.act_bytes,
                   wgt_bytes=config.buffers.weight_bytes, out_bytes=config.buffers.out_bytes,
                   wgt_bits=step, kv_bytes=config.buffers.kv_bytes,
                   aux_bytes=config.buffers.aux_bytes)

    @property
    def word_bytes(self) -> int:
        return self.word_bits // 8

    @property
    def wgt_row_bytes(self) -> int:
        return self.wgt_bits // 8

    @property
    def act_depth(self) -> int:
        return self.act_bytes // self.word_bytes

    @property
    def out_depth(self) -> int:
        return self.out_bytes // self.word_bytes

    @property
    def kv_depth(self) -> int:
        return self.kv_bytes // self.word_bytes

    @property
    def aux_depth(self) -> int:
        return self.aux_bytes // self.word_bytes

    @property
    def wgt_depth(self) -> int:
        return self.wgt_bytes // self.wgt_row_bytes

    @property
    def wgt_words_per_row(self) -> int:
        return self.wgt_bits // self.word_bits

    @property
    def lg_word_bytes(self) -> int:
        return exact_log2(self.word_bytes)

    @property
    def lg_wgt_row_bytes(self) -> int:
        return exact_log2(self.wgt_row_bytes)
