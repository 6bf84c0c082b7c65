"""The one planner of a linear layer's weight tiles, for the single-layer and the LLM
compilers alike.

A WGT tile is a block of output rows (a multiple of the core's ``chains``) times a chunk
of K (all of K when ``chains`` rows of it fit a slot of the WGT buffer, else whole groups
accumulated over several tiles); a streamed layer's tile is a block of rows times all of
K. The planner takes a tile's size as a function, so each compiler states only what its
own programs add (the single layer its bias section and its OUT halves, the LLM
compiler nothing):

* :func:`slot_bytes`, :func:`plan_wgt_slots` -- the slots the WGT buffer is split into
  (one policy: the fewest estimated cycles, :func:`wgt_tiles_cycles`; then the fewest
  tiles, then the most slots);
* :func:`k_chunk` -- the K chunk of a layer's tiles;
* :func:`row_block` -- the rows of a layer's tiles;
* :func:`tile_boxes` -- the ``(row0, rows, col0, cols)`` of every tile, in execution
  order;
* :func:`plan_wgt_tiles` -- the three above for a layer of WGT tiles;
* :class:`TiledLayer`, :func:`plan_layer_slots` -- the slots of a program's layers of WGT
  tiles, and each layer's tiles in them (the LLM lowering plans a model's layers, the
  single-layer compiler one);
* :func:`stream_rows` -- the rows of a streamed layer's blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Callable

from amaranth.hdl import Shape

from airfoil.errors import CompileError
from airfoil.isa import MATRIX_LAYOUT, Buffer
from airfoil.packing import core_stream_geometry
from airfoil.wgt_banks import WgtBanks
from sim.cycle_model import DISPATCH_CYCLES, ISSUE_CYCLES, CycleModel
from sim.memory import Memory

from .schedule import wgt_tile_loads
from .streams import MAX_STREAM_BYTES, stream_block_bytes, wgt_tile_layout

__all__ = ["WGT_SLOTS", "slot_bytes", "plan_wgt_slots", "wgt_tiles_cycles", "k_chunk",
           "row_block", "tile_boxes", "plan_wgt_tiles", "TiledLayer", "plan_layer_slots",
           "stream_rows", "MATRIX_MAX_ROWS"]

#: Weight-tile slots the WGT buffer may be split into, most first: LOAD runs up to
#: ``slots - 1`` tiles ahead of MATRIX (at least two: double buffering).
WGT_SLOTS = (4, 3, 2)


def _up(n: int, a: int) -> int:
    return -(-n // a) * a


def slot_bytes(config, slots: int) -> int:
    """Bytes of one of ``slots`` equal slots of the WGT buffer (whole memory words; whole
    WGT rows on a banked WGT buffer, whose tiles load a bank's part of each row)."""
    banks = WgtBanks.of(config)
    unit = config.word_bytes * (banks.row_words if banks.banks > 1 else 1)
    return config.buffers.weight_bytes // slots // unit * unit


def plan_wgt_slots(config, need: int, estimate, candidates=WGT_SLOTS) -> tuple[int, int]:
    """``(slots, slot_bytes)``: of the slot counts of ``candidates`` whose slot holds
    ``need`` bytes (the smallest tile of every layer: ``chains`` rows x one group), the one
    whose ``estimate(slots, slot_bytes)`` -- ``(cycles, tiles)``, the layers' estimated
    cycles (:func:`wgt_tiles_cycles`) and tiles in that many slots of that size -- is the
    least: the fewest cycles, then the fewest tiles; on a tie the most slots (the LOAD
    unit runs further ahead). :class:`CompileError` when no slot holds ``need`` bytes.

    Neither more slots nor fewer tiles win alone: each tile is one matrix instruction and
    pays the MATRIX unit's fill and drain (the serializer's ``chains`` cycles after its
    last batch, the pipelines' latency) once, so bigger slots cut that cost, while more
    slots let the next tiles load while the current one computes."""
    best = None
    for slots in candidates:
        slot = slot_bytes(config, slots)
        if need > slot:
            continue
        key = (*estimate(slots, slot), -slots)
        if best is None or key < best[0]:
            best = (key, slots, slot)
    if best is None:
        raise CompileError(f"a weight tile of {config.chains} rows x one group ({need} "
                           f"bytes) does not fit half the WGT buffer "
                           f"({config.buffers.weight_bytes} bytes in config {config.name!r})")
    return best[1], best[2]


def wgt_tiles_cycles(config, boxes, tile_bytes, slots: int, *, k: int, wfmt, group: int,
                     bias: bool = False, m: int = 1, ahead: int | None = None) -> int:
    """Estimated cycles from the dispatch of a layer's first WGT tile load to the end of
    its last matrix instruction: the tiles ``boxes`` (``(row0, rows, col0, cols)`` in
    execution order, of a layer of reduction ``k``, each of ``tile_bytes(rows, cols)``
    bytes) in ``slots`` WGT slots, the loads of ``ahead`` tiles (default ``slots``) ahead
    of the matrix instructions in program order (``m`` vectors of weight format ``wfmt``,
    ``group`` values per scale; the accumulators start from the bias in a first chunk of
    K when ``bias``).

    The costs are the ISA simulator's (:class:`sim.cycle_model.CycleModel`; the memory
    channels and the WGT write ports of :class:`sim.memory.Memory`), the dependencies
    those of the schedule, in program order: the dispatcher hands one instruction per
    :data:`~sim.cycle_model.DISPATCH_CYCLES` to a unit queue of ``instr_queue_depth``
    (the tiles' loads run ahead only as far as the LOAD queue lets the next matrix
    instruction through); the LOAD unit starts a tile's LDs
    (:func:`compiler.schedule.wgt_tile_loads`) in order, each once the matrix instruction
    of the tile ``slots`` earlier (the slot's last reader) has finished; a matrix
    instruction starts when its tile has arrived and the previous one has finished."""
    model = CycleModel(config)
    memory = Memory(bytearray(), config, model)
    depth, ahead = config.instr_queue_depth, slots if ahead is None else ahead

    @cache
    def tile(rows, cols, first, last):
        return (wgt_tile_loads(config, tile_bytes(rows, cols)),
                model.matrix(rows, cols, m, wfmt=wfmt, final=last, group=group,
                             use_init=bias or not first).latency)

    tiles = [tile(rows, cols, c0 == 0, c0 + cols == k) for _, rows, c0, cols in boxes]
    dispatch = issue = end = 0
    loaded = []                             # when each tile's loads have all completed
    load_starts, matrix_starts, ends = [], [], []

    def dispatched(unit_starts):
        """Dispatch the next instruction of a unit whose queue holds ``depth``."""
        nonlocal dispatch
        at = max(dispatch, unit_starts[-depth] if len(unit_starts) >= depth else 0)
        dispatch = at + DISPATCH_CYCLES
        return dispatch

    def load(j):
        nonlocal issue
        free = ends[j - slots] if j >= slots else 0
        finish = {}                            # this tile's LDs: index -> completion
        for i, (channel, bank, nbytes) in enumerate(tiles[j][0]):
            ready = max(dispatched(load_starts), issue, free)
            begin, cost = memory.transfer(channel, ready, nbytes, write=False)
            finish[i] = begin + cost.latency
            # The port's round robin holds this LD back, and may hold earlier ones longer.
            for ld, cycles in memory.buffer_write((Buffer.WGT, bank), channel, begin, nbytes,
                                                  owner=(j, i)):
                if ld.owner[0] == j:
                    finish[ld.owner[1]] += cycles
            load_starts.append(begin)
            issue = begin + ISSUE_CYCLES
        loaded.append(max([loaded[-1] if loaded else 0, *finish.values()]))

    for j in range(min(ahead, len(tiles))):
        load(j)
    for i, (_, matrix) in enumerate(tiles):
        start = max(dispatched(matrix_starts), end, loaded[i])
        matrix_starts.append(start)
        end = start + matrix
        ends.append(end)
        if i + ahead < len(tiles):
            load(i + ahead)
    return end


def k_chunk(k: int, group: int, fits) -> int:
    """The K chunk of a layer's tiles: ``k`` when ``fits(k)``, else the largest multiple of
    ``group`` below ``k`` that fits (``fits(cols)`` grows false with ``cols``); 0 when not
    even one group fits."""
    if fits(k):
        return k
    best = 0
    for cols in range(group, k, group):
        if not fits(cols):
            break
        best = cols
    return best


def row_block(n: int, chains: int, fits, *, limit: int | None = None,
              accept=None) -> int:
    """Rows of a layer's tiles: the largest multiple of ``chains``, at most ``n`` rounded up
    to ``chains`` and ``limit``, below the first count for which ``fits(rows)`` is false,
    for which ``accept(rows)`` holds (default: any); 0 when none."""
    top = _up(n, chains) if limit is None else min(_up(n, chains), limit)
    best = 0
    for rows in range(chains, top + 1, chains):
        if not fits(rows):
            break
        if accept is None or accept(rows):
            best = rows
    return best


def tile_boxes(n: int, k: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """``(row0, rows, col0, cols)`` of the tiles of an ``n x k`` layer in execution order:
    row blocks of ``rows``, each as chunks of ``cols`` of K (the last ones may be
    smaller)."""
    return [(r0, min(rows, n - r0), c0, min(cols, k - c0))
            for r0 in range(0, n, rows) for c0 in range(0, k, cols)]


def plan_wgt_tiles(n: int, k: int, chains: int, group: int, tile_bytes, slot: int, *,
                   limit: int | None = None, accept=None,
                   ) -> tuple[list[tuple[int, int, int, int]], int, int]:
    """The WGT tiles of an ``n x k`` layer, each at most ``slot`` bytes
    (``tile_bytes(rows, cols)``): K whole when ``chains`` rows of it fit, else chunks of
    whole groups; then as many rows as fit (:func:`row_block` with ``limit`` and
    ``accept``). Returns ``(boxes, rows, cols)``; :class:`CompileError` when no tile
    fits."""
    cols = k_chunk(k, group, lambda c: tile_bytes(chains, c) <= slot)
    if cols == 0:
        raise CompileError(f"a tile of {chains} rows x {group} weights "
                           f"({tile_bytes(chains, group)} bytes) does not fit a WGT slot "
                           f"({slot} bytes)")
    rows = row_block(n, chains, lambda r: tile_bytes(r, cols) <= slot, limit=limit,
                     accept=accept)
    if rows == 0:
        return [], 0, cols
    return tile_boxes(n, k, rows, cols), rows, cols


#: The most rows a matrix instruction's ``rows`` field holds.
MATRIX_MAX_ROWS = (1 << Shape.cast(MATRIX_LAYOUT.members["rows"]).width) - 1


@dataclass(frozen=True)
class TiledLayer:
    """A layer of WGT tiles as the planner sees it.

    Members
    -------
    n, k : int
        Output rows and reduction length.
    group : int
        Values per scale.
    wfmt : WeightFormat
        The tiles' format.
    bias : bool
        Whether a first chunk of K carries an int32 bias section (one layer's program).
    count : int
        Layers of this shape in the program (a model's layers of one shape, format and
        group are tiled alike).
    limit, accept
        :func:`row_block`'s constraints on the rows of a tile (one layer's OUT halves).
    cap : int, optional
        The most bytes of a tile below a slot.
    """

    n: int
    k: int
    group: int
    wfmt: object
    bias: bool = False
    count: int = 1
    limit: int | None = None
    accept: Callable | None = None
    cap: int | None = None

    def tile_bytes(self, config) -> Callable:
        """``tile_bytes(rows, cols)``: the bytes of one of its tiles."""
        return lambda rows, cols: wgt_tile_layout(config, rows, cols, group=self.group,
                                                  wfmt=self.wfmt, bias=self.bias).nbytes

    def tiles(self, config, slot: int) -> tuple[list, int, int]:
        """:func:`plan_wgt_tiles` in slots of ``slot`` bytes: ``(boxes, rows, cols)``."""
        cap = slot if self.cap is None else min(slot, int(self.cap))
        return plan_wgt_tiles(self.n, self.k, config.chains, self.group,
                              self.tile_bytes(config), cap, limit=self.limit,
                              accept=self.accept)


def plan_layer_slots(config, layers, *, ahead: int | None = None) -> tuple[int, int]:
    """``(slots, slot_bytes)`` of a program's layers of WGT tiles (:class:`TiledLayer`):
    :func:`plan_wgt_slots` with every layer estimated on its own by
    :func:`wgt_tiles_cycles` (``ahead`` tiles loaded ahead of the matrix instructions;
    default the slots) and its tiles counted ``count`` times."""
    layers = list(layers)
    need = max([layer.tile_bytes(config)(config.chains, layer.group) for layer in layers],
               default=0)

    def estimate(slots, slot):
        cycles = tiles = 0
        for layer in layers:
            boxes = layer.tiles(config, slot)[0]
            cycles += layer.count * wgt_tiles_cycles(
                config, boxes, layer.tile_bytes(config), slots, k=layer.k, wfmt=layer.wfmt,
                group=layer.group, bias=layer.bias, ahead=ahead)
            tiles += layer.count * len(boxes)
        return cycles, tiles

    return plan_wgt_slots(config, need, estimate)


def stream_rows(config, n: int, k: int, *, group: int, formats, nm: int, what: str = "",
                cap: int = MAX_STREAM_BYTES, limit: int | None = None, accept=None,
                fits=None) -> int:
    """Rows of a streamed layer's blocks (:func:`row_block`): whole batches of the core's
    chains whose stream on one channel (:func:`compiler.streams.stream_block_bytes` of the
    record tags ``formats`` and N:M code ``nm``) stays within one load and ``cap``, at most
    the matrix instruction's ``rows`` field (:data:`MATRIX_MAX_ROWS`) and ``limit``, for
    which ``fits(rows)`` and ``accept(rows)`` hold (default: any). :class:`CompileError`
    (``what`` names the layer) when not even ``chains`` rows fit."""
    C = config.chains
    size = stream_block_bytes(core_stream_geometry(config), config, k, group, formats, nm)
    cap = min(cap, MAX_STREAM_BYTES)
    most = MATRIX_MAX_ROWS // C * C
    rows = row_block(n, C, lambda r: size(r) <= cap and (fits is None or fits(r)),
                     limit=most if limit is None else min(limit, most), accept=accept)
    if rows == 0:
        raise CompileError(f"{what}the stream of {C} rows x {k} weights ({size(C)} bytes) "
                           f"exceeds one load ({cap} bytes)")
    return rows
