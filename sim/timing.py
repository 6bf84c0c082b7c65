"""The cycle model of a whole program without its data: timing of full-size compiles.

:class:`sim.isa_sim.IsaSim` charges every instruction the cost of
:class:`sim.cycle_model.CycleModel` while it computes the instruction's results. The costs
depend on the instructions' fields and the run-time length registers only, never on the
data (the KV cache's content does not change the timing), so :class:`TimingSim` runs the
same scheduler (unit queues, dependency tokens, memory channels) and skips the data: no
memory image is read beyond the parameter block, no buffer is written. That lets the cycle
model time a LLaMA-2-7B decode step from a ``--size-only`` folder, whose image is never
written.

A streamed layer's records are not read either: the folder's manifest places each
channel's stream of each row block (:func:`stream_blocks`), and a record's size and the
chain cycles of its k-steps follow from its format, group and N:M pattern, so a layer whose
records all time alike (one format, or formats of one size and one value width: BitMoD's
variants) is timed from the manifest alone; block skip (its k-steps follow the weights) is
not.

The program is not checked as the ISA simulator checks it (buffer ranges, scale ranges):
that is what the ISA simulator's runs of the same compiler on small shapes do.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import lru_cache

from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError
from airfoil.folder import parameter_block
from airfoil.isa import Buffer, Opcode, SfuFunc, WeightFormat
from airfoil.packing import (BLOCK_CODE, core_stream_geometry, format_spec, nm_code,
                             nm_kept, record_starts, record_tag)
from hdl.pe.kinds import pe_kind, tag_value_bits

from .isa_sim import IsaSim

__all__ = ["TimingSim", "StreamBlock", "stream_blocks", "llm_step_cycles"]


@dataclass(frozen=True)
class StreamBlock:
    """One channel's stream of a streamed layer's row block: ``records`` records of one
    ``tag``, ``group`` and N:M code ``nm``, each taking ``ksteps`` chain cycles, in
    ``nbytes`` bytes."""

    records: int
    tag: int
    group: int
    nm: int
    ksteps: int
    nbytes: int


def _up(n: int, a: int) -> int:
    return -(-n // a) * a


def stream_blocks(manifest: dict, config: AccelConfig) -> dict:
    """``(channel, addr) -> StreamBlock`` of every streamed layer of an LLM folder, from its
    manifest: a block of ``rows`` rows is padded to whole batches of the core's chains,
    batch ``b`` on channel ``b % channels``, one record per batch and group column.
    :class:`AirfoilError` for a layer whose records time differently (block skip, formats
    of several sizes or value widths)."""
    geom, kind = core_stream_geometry(config), pe_kind(config.pe)
    channels, chains = config.memory.channels, config.chains
    out = {}
    for name, v in manifest["model"]["linears"].items():
        if not v.get("streamed"):
            continue
        nm = nm_code(v["sparsity"])
        timing = {(geom.record_bits(record_tag(f), v["group"], nm),
                   kind.step_cycles(tag_value_bits(f))) for f in v["records"]}
        if nm == BLOCK_CODE or len(timing) > 1:
            raise AirfoilError(f"layer {name}: its records ({v['label']}) take sizes or "
                               f"cycles that follow the weights: run the ISA simulator on a "
                               f"folder with its image")
        tag = format_spec(record_tag(next(iter(v["records"])))).tag
        ksteps = nm_kept(v["group"], nm) // geom.lanes * next(iter(timing))[1]
        cols = v["k"] // v["group"]
        for t in v["tiles"]:
            batches = _up(t["rows"], chains) // geom.rows
            for st in t["streams"]:
                c = st["channel"]
                n = len(range(c, batches, channels)) * cols
                out[(c, st["addr"])] = StreamBlock(n, tag, v["group"], nm, ksteps,
                                                   st["nbytes"])
    return out


@lru_cache(maxsize=256)
def _record_ends(geom, block: StreamBlock) -> tuple:
    """Where each record of a block's stream ends (bits from the block's start)."""
    key = (record_tag(block.tag), block.group, block.nm, None)
    starts, total = record_starts(geom, [key] * block.records)
    if total // 8 != block.nbytes:
        raise AirfoilError(f"a stream of {block.records} records is {total // 8} bytes, "
                           f"the folder's manifest says {block.nbytes}")
    size = geom.record_bits(*key)
    return tuple(s + size for s in starts)


class TimingSim(IsaSim):
    """:class:`~sim.isa_sim.IsaSim`'s scheduler and costs without the data.

    Parameters
    ----------
    config : AccelConfig
    params : bytes
        The image's first bytes (the parameter block ``SYS LDREG`` reads).
    """

    def __init__(self, config: AccelConfig, params: bytes, blocks: dict | None = None):
        super().__init__(config, bytearray(params))
        self._blocks = blocks or {}
        S = config.slices
        #: Per slice: the loaded records not yet read, ``(end bit, chain cycles)`` each
        #: (bits from the stream's start); the bits loaded; where the last read ended.
        self._queued = [deque() for _ in range(S)]
        self._loaded = [0] * S
        self._read_to = [0] * S

    def _load_blocks(self, i, ins, count) -> None:
        """LD WSTREAM: queue the records of the block the manifest places there."""
        base = ins.dram_addr + (self.regs[ins.row_reg] * ins.dram_stride if ins.row_reg else 0)
        c = ins.channel
        for r in range(count):
            block = self._blocks.get((c, base + r * ins.dram_stride))
            if block is None or block.nbytes != ins.nbytes:
                raise AirfoilError(f"instruction {i}: no streamed block of {ins.nbytes} bytes "
                                   f"at {base + r * ins.dram_stride:#x} on channel {c} in "
                                   f"the folder's manifest")
            if self._stream_geom is None:
                self._stream_geom = core_stream_geometry(self.config)
            at = self._loaded[c]
            self._queued[c].extend((at + end, block.ksteps)
                                   for end in _record_ends(self._stream_geom, block))
            self._loaded[c] += 8 * block.nbytes

    def _stream_holds(self, ins) -> bool:
        need = -(-ins.rows // self.config.chains) * (ins.k // ins.group)
        return all(len(q) >= need for q in self._queued)

    def _take_records(self, i, ins) -> None:
        """A STREAM instruction's records off every slice's queue: the words it first
        touches and its chains' cycles, as :meth:`IsaSim._stream_records` counts them."""
        need = -(-ins.rows // self.config.chains) * (ins.k // ins.group)
        W = self.config.memory.word_bits
        self._stream_cost = []
        for c, q in enumerate(self._queued):
            if len(q) < need:
                raise AirfoilError(f"instruction {i}: the weight stream of channel {c} ran "
                                   f"out ({need} records needed, {len(q)} loaded)")
            ksteps = end = 0
            for _ in range(need):
                end, k = q.popleft()
                ksteps += k
            self._stream_cost.append([-(-end // W) - -(-self._read_to[c] // W), ksteps])
            self._read_to[c] = end

    def _mem_op(self, i, ins, write: bool) -> int:
        count = self.regs[ins.count_reg] if ins.count_reg else ins.count
        if ins.buf == Buffer.WSTREAM:
            self._load_blocks(i, ins, count)
        nbytes = count * ins.nbytes
        if write:
            self.mem.bytes_written += nbytes
        else:
            self.mem.bytes_read += nbytes
        return nbytes

    def _matrix(self, i, ins) -> int:
        f = ins.fields
        m = self.regs[f["m_reg"]] if ins.opcode == Opcode.MM and f["m_reg"] else f["m"]
        if ins.wfmt == WeightFormat.STREAM:
            self._take_records(i, ins)
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
    params = parameter_block(position, tokens, config.buffers.kv_banks)
    at = mm["layout"]["params"]
    sim = TimingSim(config, bytes(at) + params, stream_blocks(manifest, config))
    if trace:
        sim.trace = []
    stats = sim.run(list(words))
    if trace:
        stats["trace"] = sim.trace
    return stats
