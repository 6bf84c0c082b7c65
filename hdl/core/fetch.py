"""Instruction fetch: program words from memory, assembled into ISA instructions."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from airfoil import isa
from airfoil.program import HEADER_SIZE

from .axi_read import read_cmd_layout

__all__ = ["ENTRY_LAYOUT", "Fetch"]

#: An instruction on its way to a unit: the ISA layout, its index in the program and
#: ``rv``, the values of the run-time registers it names, read by the dispatcher when it
#: queues the instruction (0 for a register field of 0; Fetch leaves them 0):
#:
#: * ``LD``/``ST``: ``rv[0] = regs[count_reg]``, ``rv[1] = regs[row_reg]``;
#: * ``MV``/``MM``: ``rv[0] = regs[m_reg]``;
#: * ``SFU``: ``rv[0] = regs[rows_reg]``, ``rv[1] = regs[pos_reg]``,
#:   ``rv[2] = regs[len_reg]``.
ENTRY_LAYOUT = data.StructLayout({"instr": isa.INSTR_LAYOUT, "index": 32,
                                  "rv": data.ArrayLayout(32, 3)})


class Fetch(wiring.Component):
    """Fetch ``count`` instructions from ``prog_base + HEADER_SIZE`` in program order.

    On ``start`` one read command covering the whole program goes to an
    :class:`~hdl.core.axi_read.AxiReader`; its beats (``word_bits`` each, at most one
    instruction wide) are assembled into instructions, which leave through a small
    queue on ``instr`` with their index. ``exhausted`` is high once all ``count``
    instructions have left.

    Parameters
    ----------
    word_bits : int
        Memory word width (divides :data:`airfoil.isa.INSTR_BITS`).
    depth : int
        Instructions the fetch queue holds.
    """

    def __init__(self, *, word_bits: int, depth: int = 4):
        if word_bits > isa.INSTR_BITS or isa.INSTR_BITS % word_bits:
            raise ValueError(f"Instruction fetch needs a memory word that divides "
                             f"{isa.INSTR_BITS} bits, not {word_bits!r}")
        self._word_bits = word_bits
        self._depth = depth
        super().__init__({
            "start": In(1), "prog_base": In(64), "count": In(32),
            "cmd": Out(stream.Signature(read_cmd_layout())),
            "beats": In(stream.Signature(word_bits)),
            "instr": Out(stream.Signature(ENTRY_LAYOUT)),
            "exhausted": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n = isa.INSTR_BITS // self._word_bits
        wb = self._word_bits // 8

        # Issue the single read command.
        pending = Signal()
        with m.If(self.start):
            m.d.sync += pending.eq(self.count != 0)
        m.d.comb += [
            self.cmd.valid.eq(pending),
            self.cmd.payload.addr.eq(self.prog_base + HEADER_SIZE),
            self.cmd.payload.beats.eq(self.count * n),
            self.cmd.payload.rows.eq(1),
            self.cmd.payload.stride.eq(0),
        ]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += pending.eq(0)
        assert HEADER_SIZE % wb == 0 or wb > HEADER_SIZE, "header must be word aligned"

        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=ENTRY_LAYOUT.size,
                                                            depth=self._depth)
        held = [Signal(self._word_bits, name=f"held{i}") for i in range(n - 1)]
        cnt = Signal(range(max(n, 2)))
        next_index = Signal(32)
        m.d.comb += self.beats.ready.eq((cnt != n - 1) | queue.w_rdy)
        entry = Signal(ENTRY_LAYOUT)
        m.d.comb += [
            entry.instr.eq(Cat(*held, self.beats.payload)),
            entry.index.eq(next_index),
            queue.w_data.eq(entry),
            queue.w_en.eq(self.beats.valid & (cnt == n - 1)),
        ]
        with m.If(self.beats.valid & self.beats.ready):
            if n > 1:
                m.d.sync += held[-1].eq(self.beats.payload)
                for i in range(n - 2):
                    m.d.sync += held[i].eq(held[i + 1])
            with m.If(cnt == n - 1):
                m.d.sync += [cnt.eq(0), next_index.eq(next_index + 1)]
            with m.Else():
                m.d.sync += cnt.eq(cnt + 1)

        delivered = Signal(32)
        m.d.comb += [
            self.instr.payload.eq(queue.r_data),
            self.instr.valid.eq(queue.r_rdy),
            queue.r_en.eq(self.instr.ready),
            self.exhausted.eq(delivered == self.count),
        ]
        with m.If(self.instr.valid & self.instr.ready):
            m.d.sync += delivered.eq(delivered + 1)
        return m
