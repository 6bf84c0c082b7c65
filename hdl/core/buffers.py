"""Geometry of the on-chip buffers, derived from an :class:`~airfoil.config.AccelConfig`.

* ACT: one memory word per row; the matrix unit reads ``lanes`` activations per step.
* WGT: one row per INT4 step of the chains (``chains * lanes * 4`` bits), written a memory
  word at a time (word granularity), read a whole step per cycle by the operand side and
  once more by the scale/bias reader.
* OUT: one memory word per row with byte write enables (results of 1, 2 or 4 bytes).
* KV, AUX: one memory word per row (key/value records; tables, gains, scale pairs); a
  banked KV buffer (``buffers.kv_banks``) a word per bank, one write port a bank
  (:mod:`airfoil.kv_banks`).

ACT, OUT, KV and AUX take byte-granular writes (the SFU writes 32-bit words with byte
enables). A buffer with more readers than a RAM has read ports is built by
:class:`BufferRam` from copies that share the write port (as synthesis replicates a block
RAM for extra read ports). Units that may name any buffer reach them through a *buffer
read port* (:func:`buffer_read_signature`): the buffer, a word index and an enable, with
the word on ``data`` one cycle later.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Module
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from airfoil import isa
from airfoil.config import AccelConfig
from airfoil.errors import ConfigError
from airfoil.kv_banks import KvBanks
from airfoil.wgt_banks import WgtBanks

from .ram import Ram

__all__ = ["BufferGeometry", "BufferRam", "buffer_read_signature", "buffer_write_layout",
           "WORD_ADDR_BITS"]

#: Width of a word index into any on-chip buffer (buffers are below 16 MiB).
WORD_ADDR_BITS = 24


def buffer_read_signature(word_bits: int) -> wiring.Signature:
    """Reader side of a buffer read port: ``buf``, word ``addr``, ``en``; ``data`` a cycle
    after ``en`` (the word at ``addr`` of ``buf``; WGT words are slices of its rows)."""
    return wiring.Signature({"buf": Out(isa.Buffer), "addr": Out(WORD_ADDR_BITS),
                             "en": Out(1), "data": In(word_bits)})


def buffer_write_layout(word_bits: int) -> data.StructLayout:
    """Payload of a whole-word buffer write: ``buf``, word ``addr`` and ``data``."""
    return data.StructLayout({"buf": isa.Buffer, "addr": WORD_ADDR_BITS, "data": word_bits})


@dataclass(frozen=True)
class BufferGeometry:
    """Widths and depths of the ACT, WGT, OUT, KV and AUX buffers of one configuration."""

    word_bits: int
    act_bytes: int
    wgt_bytes: int
    out_bytes: int
    wgt_bits: int
    kv_bytes: int = 0
    aux_bytes: int = 0
    wgt_banks: int = 1
    kv_banks: int = 1

    @classmethod
    def of(cls, config: AccelConfig) -> "BufferGeometry":
        """Derive the geometry; raise :class:`ConfigError` if the core cannot be built."""
        wbits = config.memory.word_bits
        step = config.chains * config.lanes * 4
        where = f"config {config.name!r}: the RTL core needs "
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
        for name in ("act_bytes", "out_bytes", "kv_bytes", "aux_bytes"):
            v = getattr(config.buffers, name)
            if v < 2 * wbits // 8 or v & (v - 1):
                raise ConfigError(f"{where}buffers.{name} to be a power of two of at least "
                                  f"two memory words ({2 * wbits // 8} bytes), not {v}")
        if config.buffers.weight_bytes * 8 < 2 * step:
            raise ConfigError(f"{where}buffers.weight_bytes of at least two INT4 steps "
                              f"({2 * step // 8} bytes), not {config.buffers.weight_bytes}")
        return cls(word_bits=wbits, act_bytes=config.buffers.act_bytes,
                   wgt_bytes=config.buffers.weight_bytes, out_bytes=config.buffers.out_bytes,
                   wgt_bits=step, kv_bytes=config.buffers.kv_bytes,
                   aux_bytes=config.buffers.aux_bytes, wgt_banks=config.buffers.wgt_banks,
                   kv_banks=config.buffers.kv_banks)

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
    def wgt_map(self) -> WgtBanks:
        """The WGT buffer's banks and the address map of its words (:mod:`airfoil.wgt_banks`)."""
        return WgtBanks(banks=self.wgt_banks, depth=self.wgt_depth,
                        row_words=self.wgt_words_per_row)

    @property
    def kv_map(self) -> KvBanks:
        """The KV buffer's banks and the address map of its records (:mod:`airfoil.kv_banks`)."""
        return KvBanks(banks=self.kv_banks, bank_bytes=self.kv_bytes // self.kv_banks,
                       word_bytes=self.word_bytes)

    @property
    def lg_word_bytes(self) -> int:
        return exact_log2(self.word_bytes)

    @property
    def lg_wgt_row_bytes(self) -> int:
        return exact_log2(self.wgt_row_bytes)

    def nbytes(self, buf: isa.Buffer) -> int:
        """Size in bytes of an on-chip buffer (0 for WSTREAM, which is not one)."""
        return {isa.Buffer.ACT: self.act_bytes, isa.Buffer.WGT: self.wgt_bytes,
                isa.Buffer.OUT: self.out_bytes, isa.Buffer.KV: self.kv_bytes,
                isa.Buffer.AUX: self.aux_bytes}.get(isa.Buffer(buf), 0)


class BufferRam(wiring.Component):
    """A buffer RAM with ``read_ports`` synchronous read ports and a write port per bank.

    Built from ``ceil(read_ports / 2)`` :class:`~hdl.core.ram.Ram` copies that all take
    every write, so every read port sees the same contents (read latency 1, read before
    write). With ``banks`` above 1 each copy is that many RAMs side by side, bank ``b``
    holding the ``b``-th of ``banks`` equal parts of every row (its low bits first) with
    a write port of its own (``wr0`` ... ``wr<banks-1>``: address, part of the row and
    its enables), and a read port reads the row from all of them at once.

    Parameters
    ----------
    width : int
        Row width in bits.
    depth : int
        Rows (a power of two).
    granularity : int, optional
        Bits per write enable (default: the whole row).
    read_ports : int
        Number of read ports (at least 1).
    banks : int
        Write ports, each for its own part of the row (a power of two dividing the
        row's write enables; default 1).

    Members
    -------
    wr : Out(memory.WritePort.Signature(...))
        The write port of the one bank (``banks == 1``); else ``wr0`` ... (:meth:`write_port`).
    rd0 ... rd<n-1> : Out(memory.ReadPort.Signature(...))
    """

    def __init__(self, *, width: int, depth: int, granularity: int | None = None,
                 read_ports: int = 1, banks: int = 1):
        if not isinstance(read_ports, int) or read_ports < 1:
            raise ValueError(f"Buffer read ports must be a positive integer, not "
                             f"{read_ports!r}")
        self._args = dict(width=width, depth=depth, granularity=granularity)
        self._nread = read_ports
        if width < 1 or depth < 2 or depth & (depth - 1):
            raise ValueError(f"Buffer RAM needs a positive width and a power-of-two depth "
                             f">= 2, not width={width!r}, depth={depth!r}")
        if granularity is not None and (granularity < 1 or width % granularity):
            raise ValueError(f"Buffer RAM write granularity must divide the width {width}, "
                             f"not {granularity!r}")
        if banks < 1 or banks & (banks - 1) or width % banks or (
                granularity is not None and (width // banks) % granularity):
            raise ValueError(f"Buffer RAM banks must be a power of two dividing the row "
                             f"into whole write enables, not {banks!r}")
        self._banks = banks
        part = width // banks
        members = {}
        for b in range(banks):
            members["wr" if banks == 1 else f"wr{b}"] = Out(memory.WritePort.Signature(
                addr_width=ceil_log2(depth), shape=part,
                granularity=granularity if granularity != part else None))
        for i in range(read_ports):
            members[f"rd{i}"] = Out(memory.ReadPort.Signature(addr_width=ceil_log2(depth),
                                                              shape=width))
        super().__init__(members)

    @property
    def read_ports(self) -> int:
        return self._nread

    @property
    def banks(self) -> int:
        return self._banks

    def write_port(self, bank: int = 0):
        """The write port of bank ``bank``."""
        return getattr(self, "wr" if self._banks == 1 else f"wr{bank}")

    @property
    def latency(self) -> int:
        """Cycles from a read address (with its enable) to its data."""
        return 1

    def elaborate(self, platform):
        m = Module()
        if self._banks == 1:
            for c in range((self._nread + 1) // 2):
                n = min(2, self._nread - 2 * c)
                ram = Ram(**self._args, read_ports=n)
                m.submodules[f"copy{c}"] = ram
                m.d.comb += [ram.wr.addr.eq(self.wr.addr), ram.wr.data.eq(self.wr.data),
                             ram.wr.en.eq(self.wr.en)]
                for j in range(n):
                    wiring.connect(m, getattr(ram, f"rd{j}"),
                                   wiring.flipped(getattr(self, f"rd{2 * c + j}")))
            return m
        args = dict(self._args, width=self._args["width"] // self._banks)
        for c in range((self._nread + 1) // 2):
            n = min(2, self._nread - 2 * c)
            parts = []
            for b in range(self._banks):
                ram = Ram(**args, read_ports=n)
                m.submodules[f"copy{c}_bank{b}"] = ram
                wr = self.write_port(b)
                m.d.comb += [ram.wr.addr.eq(wr.addr), ram.wr.data.eq(wr.data),
                             ram.wr.en.eq(wr.en)]
                parts.append(ram)
            for j in range(n):
                rd = getattr(self, f"rd{2 * c + j}")
                for ram in parts:
                    rp = getattr(ram, f"rd{j}")
                    m.d.comb += [rp.addr.eq(rd.addr), rp.en.eq(rd.en)]
                m.d.comb += rd.data.eq(Cat(*(getattr(ram, f"rd{j}").data for ram in parts)))
        return m
