"""The cycle model of a whole program without its data: timing of full-size compiles.

:class:`sim.isa_sim.IsaSim` charges every instruction the cost of
:class:`sim.cycle_model.CycleModel` while it computes the instruction's results. The costs
depend on the instructions' fields and the run-time length registers only, never on the
data (the KV cache's content does not change the timing), so :class:`TimingSim` runs the
same scheduler (unit queues, dependency tokens, memory channels) and skips the data: no
memory image is read beyond the parameter block, no buffer is written. That lets the cycle
model time a LLaMA-2-7B decode step from a ``--size-only`` folder, whose image is never
written.

The program is not checked as the ISA simulator checks it (buffer ranges, scale ranges):
that is what the ISA simulator's runs of the same compiler on small shapes do.
"""

from __future__ import annotations

import struct

from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError
from airfoil.isa import Buffer, Opcode, SfuFunc

from .isa_sim import IsaSim

__all__ = ["TimingSim", "llm_step_cycles"]


class TimingSim(IsaSim):
    """:class:`~sim.isa_sim.IsaSim`'s scheduler and costs without the data.

    Parameters
    ----------
    config : AccelConfig
    params : bytes
        The image's first bytes (the parameter block ``SYS LDREG`` reads).
    """

    def __init__(self, config: AccelConfig, params: bytes):
        super().__init__(config, bytearray(params))

    def _mem_op(self, i, ins, write: bool) -> int:
        if ins.buf == Buffer.WSTREAM:
            raise AirfoilError(f"instruction {i}: a streamed weight load is timed from its "
                               f"records: run the ISA simulator on a folder with its image")
        count = self.regs[ins.count_reg] if ins.count_reg else ins.count
        nbytes = count * ins.nbytes
        if write:
            self.mem.bytes_written += nbytes
        else:
            self.mem.bytes_read += nbytes
        return nbytes

    def _matrix(self, i, ins) -> int:
        f = ins.fields
        m = self.regs[f["m_reg"]] if ins.opcode == Opcode.MM and f["m_reg"] else f["m"]
        self.macs += m * f["rows"] * f["k"]
        return m

    def _sfu(self, i, ins):
        """No data; ``(elements, macs)`` as :meth:`IsaSim._sfu` counts them (the products of
        ATT_QK and ATT_PV), elements left 0."""
        if ins.func in (SfuFunc.ATT_QK, SfuFunc.ATT_PV):
            a = self._sfu_args(ins)
            return 0, a["rows"] * a["heads"] * a["length"] * a["n"]
        return 0, 0


def llm_step_cycles(manifest: dict, words, config: AccelConfig, *, position: int,
                    tokens: int = 1, trace: bool = False) -> dict:
    """Cycle-model timing of one run of an LLM folder's program ``words`` (a phase's
    instruction words) for ``tokens`` tokens at ``position``: the statistics of
    :meth:`~sim.isa_sim.IsaSim.run` (``cycles``, ``instructions``, ``bytes_read``, ...),
    with ``trace`` also its :class:`~sim.isa_sim.TraceEvent` list as ``trace``.
    """
    mm = manifest["model"]
    if not 0 <= position or position + tokens > mm["max_positions"]:
        raise AirfoilError(f"positions {position}..{position + tokens - 1} are outside "
                           f"0..{mm['max_positions'] - 1}, the positions the folder's KV cache "
                           f"holds")
    params = struct.pack("<3i", position, tokens, position + tokens)
    at = mm["layout"]["params"]
    sim = TimingSim(config, bytes(at) + params)
    if trace:
        sim.trace = []
    stats = sim.run(list(words))
    if trace:
        stats["trace"] = sim.trace
    return stats
