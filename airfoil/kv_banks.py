"""The address map of a banked KV buffer (``buffers.kv_banks``), one definition for the
RTL core, the ISA simulator, the cycle formulas and the compiler.

``ATT_QK`` and ``ATT_PV`` read the key/value record of key ``l`` and KV head ``kv`` (of
``KV``, records ``stride`` bytes apart). With one bank it is at ``aux_addr + (l * KV + kv)
* stride`` of the buffer, as ever. With ``B`` banks of ``kv_bytes / B`` bytes, each one
contiguous range of the addresses LD and ST name (bank ``b`` from ``b * bank_bytes``),
key ``l`` lies in bank ``l % B``, at ``aux_addr + ((l // B) * KV + kv) * stride`` of that
bank: the keys of a *group* ``l // B`` sit at the same offset of every bank, so one read
of the same word in every bank (a *bank row*) gives a word of ``B`` records, and the LDs
of a pass, one per bank (the positions ``l % B == b`` of the KV cache, every ``B``-th row),
write at the same time. The buffer's word index ``a`` of LD/ST is word ``a % D`` of bank
``a // D`` (``D`` words a bank). ``aux_addr`` is an offset within each bank; the records
of a run must start on a buffer word (``aux_addr`` and ``stride`` multiples of it) and stay
in their bank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .wgt_banks import WgtBanks

__all__ = ["KvBanks"]


@dataclass(frozen=True)
class KvBanks:
    """The ``banks`` banks of ``bank_bytes`` each of a KV buffer of ``word_bytes`` words."""

    banks: int
    bank_bytes: int
    word_bytes: int

    @classmethod
    def of(cls, config) -> "KvBanks":
        """The KV buffer of an :class:`~airfoil.config.AccelConfig`."""
        b = config.buffers
        return cls(banks=b.kv_banks, bank_bytes=b.kv_bytes // b.kv_banks,
                   word_bytes=config.memory.word_bytes)

    @property
    def bank_depth(self) -> int:
        """Words of a bank (``D``): the rows of the buffer's RAM."""
        return self.bank_bytes // self.word_bytes

    @property
    def word_map(self) -> WgtBanks:
        """The map of LD/ST word indices to ``(bank, bank row)``: the bank-major map of a
        WGT buffer whose rows are one word a bank (:class:`~airfoil.wgt_banks.WgtBanks`,
        its ``row_major`` the index in the RAM of rows of ``banks`` words)."""
        return WgtBanks(banks=self.banks, depth=self.bank_depth, row_words=self.banks)

    def groups(self, keys: int) -> int:
        """Key groups (bank rows of records) ``keys`` keys take: ``ceil(keys / banks)``."""
        return -(-keys // self.banks)

    def record(self, aux_addr, key, kv, kv_heads: int, stride: int):
        """Byte address (LD/ST address space) of the record of ``key`` and KV head ``kv``
        (integers or NumPy arrays)."""
        bank, group = key % self.banks, key // self.banks
        return bank * self.bank_bytes + aux_addr + (group * kv_heads + kv) * stride

    def records(self, aux_addr: int, first: int, count: int, kv_heads: int,
                stride: int) -> np.ndarray:
        """Byte addresses of the records of keys ``first .. first + count - 1`` of every KV
        head, in ``(key, kv)`` order (``count * kv_heads`` of them)."""
        key = np.arange(first, first + count)[:, None]
        kv = np.arange(kv_heads)[None, :]
        return self.record(aux_addr, key, kv, kv_heads, stride).reshape(-1)

    def span(self, keys: int, kv_heads: int, stride: int, size: int) -> int:
        """Bytes from ``aux_addr`` of a bank that the records of ``keys`` keys (of ``size``
        bytes each, ``stride`` apart) reach in bank 0, the bank with the most."""
        return (self.groups(keys) * kv_heads - 1) * stride + size

    def misaligned(self, aux_addr: int, stride: int) -> bool:
        """Whether records at ``aux_addr``, ``stride`` apart, leave the buffer's words
        (refused on a banked buffer)."""
        return self.banks > 1 and bool((aux_addr | stride) % self.word_bytes)
