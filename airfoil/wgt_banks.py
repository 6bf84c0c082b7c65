"""The address map of a banked WGT buffer (``buffers.wgt_banks``), one definition for the
RTL core, the ISA simulator and the compilers.

The MATRIX unit reads the WGT buffer a row at a time (one INT4 step of the chains, ``R``
memory words); row ``r`` is at byte ``r * R * word_bytes`` of its ``wbuf_addr`` as ever.
The LOAD and STORE units move memory words. With one bank a word index ``a`` names word
``a % R`` of row ``a // R`` (row-major). With ``B`` banks of ``L = R / B`` words a row,
each bank written through its own write port, the word indices are bank-major: ``a``
names, in bank ``a // (D * L)`` (``D`` rows), word ``a % L`` of that bank's part of row
``(a // L) % D``. A bank is then one contiguous range of LD addresses: an LD into one
bank writes through that bank's port only, and the LDs of a weight tile on several
channels, one bank each, write at the same time. The map is a rearrangement of the
index's bits (``B``, ``L`` and ``D`` are powers of two), so it is wiring in the RTL; the
functions here take Python integers, NumPy arrays and Amaranth values alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["WgtBanks"]


def _lg(n: int) -> int:
    return n.bit_length() - 1


@dataclass(frozen=True)
class WgtBanks:
    """The banks of a WGT buffer of ``depth`` rows of ``row_words`` memory words."""

    banks: int
    depth: int
    row_words: int

    @classmethod
    def of(cls, config) -> "WgtBanks":
        """The WGT buffer of an :class:`~airfoil.config.AccelConfig`."""
        wb = config.memory.word_bytes
        row_words = max(1, config.chains * config.lanes * 4 // config.memory.word_bits)
        return cls(banks=config.buffers.wgt_banks,
                   depth=config.buffers.weight_bytes // wb // row_words, row_words=row_words)

    @property
    def bank_words(self) -> int:
        """Words of a row in one bank (``L``)."""
        return self.row_words // self.banks

    def bank(self, word):
        """The bank that LD/ST word index ``word`` falls in."""
        return word >> _lg(self.bank_words * self.depth)

    def bank_row(self, word):
        """The row within its bank of LD/ST word index ``word``."""
        return (word >> _lg(self.bank_words)) & (self.depth - 1)

    def bank_lane(self, word):
        """The word within its bank's part of the row of LD/ST word index ``word``."""
        return word & (self.bank_words - 1)

    def row_major(self, word):
        """The row-major word index (``row * row_words + word of the row``, as the MATRIX
        unit sees the buffer) of LD/ST word index ``word``."""
        if self.banks == 1:
            return word
        lg_l = _lg(self.bank_words)
        return ((self.bank_row(word) << _lg(self.row_words)) | (self.bank(word) << lg_l)
                | self.bank_lane(word))

    def word(self, bank: int, row: int) -> int:
        """The LD/ST word index of the first word of bank ``bank``'s part of row ``row``."""
        return (bank * self.depth + row) * self.bank_words

    # -- a weight tile in memory: each bank's part one after the other --------------------

    def tile_bytes(self, nbytes: int, word_bytes: int) -> int:
        """Bytes in memory of a WGT tile of ``nbytes`` (a whole number of words): as many,
        or whole rows on a banked buffer (each bank loads its part of every row)."""
        if self.banks == 1:
            return nbytes
        row = self.row_words * word_bytes
        return -(-nbytes // row) * row

    def tile_image(self, blob: bytes, word_bytes: int) -> bytes:
        """The memory image of a WGT tile whose rows (as the MATRIX unit reads them) are
        ``blob``: the same bytes with one bank, else padded to whole rows and bank-major
        (bank 0's part of every row, then bank 1's, ...), so that one LD of the part of
        bank ``b`` at its address in the buffer (:meth:`word`) puts every word in place."""
        if self.banks == 1:
            return bytes(blob)
        rows = np.zeros(self.tile_bytes(len(blob), word_bytes), dtype=np.uint8)
        rows[:len(blob)] = np.frombuffer(bytes(blob), dtype=np.uint8)
        parts = rows.reshape(-1, self.banks, self.bank_words * word_bytes)
        return parts.transpose(1, 0, 2).tobytes()

    def tile_rows(self, image: bytes, nbytes: int, word_bytes: int) -> bytes:
        """Inverse of :meth:`tile_image`: the ``nbytes`` of the tile's rows from its image."""
        if self.banks == 1:
            return bytes(image[:nbytes])
        size = self.tile_bytes(nbytes, word_bytes)
        parts = np.frombuffer(bytes(image[:size]), dtype=np.uint8).reshape(
            self.banks, -1, self.bank_words * word_bytes)
        return parts.transpose(1, 0, 2).tobytes()[:nbytes]

    def read_tile(self, image, addr: int, nbytes: int, word_bytes: int) -> bytes:
        """The ``nbytes`` of the rows of the WGT tile whose image (:meth:`tile_image`) is at
        ``addr`` of ``image``."""
        size = self.tile_bytes(nbytes, word_bytes)
        return self.tile_rows(image[addr:addr + size], nbytes, word_bytes)
