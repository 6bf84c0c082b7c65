"""The one scheduler of the compilers' instruction streams, and the instructions of a WGT
weight tile, for the single layer and the LLM lowering alike.

Instructions are emitted in program order into the four unit queues; every instruction
names the buffer and memory ranges it reads and writes, and a dependency on an earlier
instruction of another unit (read after write, write after read or write) becomes a
release bit on the producer and a wait bit on the consumer (:class:`Scheduler`). Tokens
between two units are released only when a consumer needs them, in program order, so
the k-th wait takes exactly the k-th release.

A WGT tile (:func:`compiler.tiling.plan_wgt_tiles`) is loaded into its slot of the WGT
buffer as word-aligned slices, one per memory channel, or one per bank of a banked WGT
buffer (:func:`load_wgt_tile`), and
computed by one matrix instruction (:func:`wgt_tile_fields`) that writes its outputs
only with the last chunk of K (the others accumulate). A streamed row block
(:func:`compiler.streams.place_stream_block`) is one ``LD WSTREAM`` per channel
(:func:`load_stream_block`) and one ``MV STREAM`` (:func:`stream_block_fields`).
"""

from __future__ import annotations

from airfoil.errors import CompileError
from airfoil.isa import Buffer, Opcode, Sparsity, Unit, WeightFormat, encode, unit_of
from airfoil.wgt_banks import WgtBanks

from .streams import slices

__all__ = ["Scheduler", "mem", "span", "load_wgt_tile", "wgt_tile_pieces", "wgt_tile_loads",
           "wgt_tile_fields",
           "load_stream_block", "stream_block_fields"]


def mem(addr: int, nbytes: int, memory: int = 0) -> tuple:
    """The memory range ``addr .. addr + nbytes`` (an access of :meth:`Scheduler.add`) of
    one image every channel sees whole, or of channel ``memory``'s own memory (an image
    of one region per channel; channel 0's is the whole image's space)."""
    return ("MEM" if memory == 0 else f"MEM{memory}", addr, addr + nbytes)


def span(buf: Buffer, addr: int, nbytes: int) -> tuple:
    """The range ``addr .. addr + nbytes`` of buffer ``buf``."""
    return (buf.name, addr, addr + nbytes)


class Scheduler:
    """Emit instructions in program order with dependency tokens from access ranges."""

    def __init__(self):
        self.items = []                     # [opcode, fields, unit, wait, release]
        #: per unit, per space (buffer name or MEM): [(index, lo, hi, is_write)] in order
        self.acc = {u: {} for u in Unit}
        self.covered = {}                   # (producer unit, consumer unit) -> index

    def _last_conflict(self, w, spaces, floor) -> int:
        """The latest instruction of unit ``w`` after ``floor`` that writes what the new
        instruction touches, or reads what it writes (``spaces``: space -> its ``(lo, hi,
        write)`` ranges); -1 if none. Only the spaces the new instruction touches are
        searched (a weight-tile LD is never compared with an SFU's activations)."""
        best = floor
        acc = self.acc[w]
        for sp, mine in spaces.items():
            for j, lo2, hi2, wrote in reversed(acc.get(sp, ())):
                if j <= best:
                    break
                if any(lo < hi2 and lo2 < hi and (wrote or write) for lo, hi, write in mine):
                    best = j
                    break
        return best if best > floor else -1

    def add(self, opcode, reads=(), writes=(), **fields) -> int:
        idx = len(self.items)
        unit = unit_of(opcode)
        item = [opcode, fields, unit, set(), set()]
        if unit is not None:
            spaces = {}
            for rngs, write in ((reads, False), (writes, True)):
                for sp, lo, hi in rngs:
                    spaces.setdefault(sp, []).append((lo, hi, write))
            for w in Unit:
                if w == unit:
                    continue
                floor = self.covered.get((w, unit), -1)
                j = self._last_conflict(w, spaces, floor)
                if j >= 0:
                    self.items[j][4].add(unit)
                    item[3].add(w)
                    self.covered[(w, unit)] = j
            mine = self.acc[unit]
            for sp, rngs in spaces.items():
                lst = mine.setdefault(sp, [])
                lst.extend((idx, lo, hi, write) for lo, hi, write in rngs)
        self.items.append(item)
        return idx

    def words(self) -> list[int]:
        return [encode(op, wait=sorted(wt, key=lambda u: u.value),
                       release=sorted(rl, key=lambda u: u.value), **f)
                for op, f, _, wt, rl in self.items]


def wgt_tile_pieces(config, nbytes: int, *, sliced: bool = True) -> list[tuple[int, int, int]]:
    """``(offset, bank, nbytes)`` of each LD of a WGT tile of ``nbytes``: one per
    word-aligned slice (:func:`compiler.streams.slices`; one when not ``sliced``) into the
    WGT buffer's one write port (bank 0), or on a banked WGT buffer (``buffers.wgt_banks``)
    one per bank of the tile's bank-major image
    (:meth:`~airfoil.wgt_banks.WgtBanks.tile_image`). ``offset`` is into the tile's image."""
    banks = WgtBanks.of(config)
    if banks.banks > 1:
        part = banks.tile_bytes(nbytes, config.word_bytes) // banks.banks
        return [(b * part, b, part) for b in range(banks.banks)]
    pieces = slices(nbytes, config) if sliced else [(0, nbytes)]
    return [(off, 0, nb) for off, nb in pieces]


def wgt_tile_loads(config, nbytes: int) -> list[tuple[int, int, int]]:
    """``(channel, bank, nbytes)`` of the LDs :func:`load_wgt_tile` makes of a tile of
    ``nbytes`` whose LD ``j`` goes on channel ``j % channels``."""
    channels = config.memory.channels
    return [(j % channels, bank, nb)
            for j, (_, bank, nb) in enumerate(wgt_tile_pieces(config, nbytes))]


def load_wgt_tile(sched: Scheduler, config, slot: int, dram_addr: int, nbytes: int,
                  channel, *, sliced: bool = True, **fields) -> None:
    """LD a WGT tile of ``nbytes`` at ``dram_addr`` into the slot at ``slot``, one LD per
    piece of :func:`wgt_tile_pieces`, LD ``j`` on memory channel ``channel(j)``.

    On a banked WGT buffer each bank's part is one LD into that bank, bank ``b`` on
    channel ``b % channels`` (``channel(0)`` for all when not ``sliced``): the banks take
    their words in the same cycle, and a bank's LDs stay on one channel, which streams
    them one after the other. The slot is then a whole number of WGT rows."""
    banks = WgtBanks.of(config)
    wb = config.word_bytes
    pieces = wgt_tile_pieces(config, nbytes, sliced=sliced)
    if banks.banks > 1:
        row = banks.row_words * wb
        if slot % row:
            raise CompileError(f"a WGT slot at byte {slot} is not on a WGT row ({row} bytes) "
                               f"of the banked WGT buffer of config {config.name!r}")
        size = banks.tile_bytes(nbytes, wb)
        for off, b, part in pieces:
            at = dram_addr + off
            sched.add(Opcode.LD, reads=[mem(at, part)], writes=[span(Buffer.WGT, slot, size)],
                      buf=Buffer.WGT,
                      channel=b % config.memory.channels if sliced else channel(0),
                      buf_addr=banks.word(b, slot // row) * wb, dram_addr=at, nbytes=part,
                      count=1, dram_stride=part, **fields)
        return
    for j, (off, _, nb) in enumerate(pieces):
        sched.add(Opcode.LD, reads=[mem(dram_addr + off, nb)],
                  writes=[span(Buffer.WGT, slot + off, nb)], buf=Buffer.WGT,
                  channel=channel(j), buf_addr=slot + off, dram_addr=dram_addr + off,
                  nbytes=nb, count=1, dram_stride=nb, **fields)


def wgt_tile_fields(tile: dict, k: int, *, slot: int, act: int, obuf_addr: int, writes,
                    **fields) -> dict:
    """The matrix instruction of one WGT tile (``row0``, ``rows``, ``col0``, ``cols``,
    ``nbytes``) of a layer of reduction ``k``: the weights in its slot at ``slot`` times
    its chunk of K of the activations from ``act`` (at ``act + col0``), into
    ``obuf_addr``; the accumulators start at the first chunk of K and are written (the
    ranges ``writes``) at the last. Returns the keywords of :meth:`Scheduler.add` but
    the opcode; ``fields`` add the caller's (``wfmt``, ``group``, ``m``, scales, ...)."""
    last = tile["col0"] + tile["cols"] == k
    return {"reads": [span(Buffer.WGT, slot, tile["nbytes"])],
            "writes": list(writes) if last else [], "sparsity": Sparsity.DENSE,
            "rows": tile["rows"], "k": tile["cols"], "wbuf_addr": slot,
            "abuf_addr": act + tile["col0"], "obuf_addr": obuf_addr,
            "acc_init": int(tile["col0"] == 0), "final": int(last), **fields}


def load_stream_block(sched: Scheduler, tile: dict, *, channel_memories: bool = False
                      ) -> None:
    """LD WSTREAM each channel's stream of a row block (``tile["streams"]``; addresses in
    the channel's own memory when ``channel_memories``, else in the one image). The stream
    is a FIFO to the decode unit: its loads touch no buffer range, so they neither wait
    for nor release tokens (the MV takes the words as they come)."""
    for st in tile["streams"]:
        at = mem(st["addr"], st["nbytes"], st["channel"] if channel_memories else 0)
        sched.add(Opcode.LD, reads=[at], buf=Buffer.WSTREAM,
                  channel=st["channel"], buf_addr=0, dram_addr=st["addr"],
                  nbytes=st["nbytes"], count=1, dram_stride=st["nbytes"])


def stream_block_fields(tile: dict, *, act: int, obuf_addr: int, writes,
                        **fields) -> dict:
    """The ``MV STREAM`` of a row block (``rows``, ``cols``: all of K): the activations
    from ``act`` into ``obuf_addr`` (the ranges ``writes``). Returns the keywords of
    :meth:`Scheduler.add` but the opcode; ``fields`` add the caller's (``group``, scales,
    ``acc_init``, ...; ``acc_init`` defaults to 1)."""
    return {"reads": [span(Buffer.ACT, act, tile["cols"])], "writes": list(writes),
            "wfmt": WeightFormat.STREAM, "sparsity": Sparsity.DENSE, "rows": tile["rows"],
            "k": tile["cols"], "m": 1, "wbuf_addr": 0, "abuf_addr": act,
            "obuf_addr": obuf_addr, "final": 1, "bias": 0, **{"acc_init": 1, **fields}}
