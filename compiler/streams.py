"""Weight layout pieces shared by the single-layer and the whole-LLM compilers.

* :func:`slices` -- a transfer cut into word-aligned slices, one per memory channel;
* :func:`wgt_tile_layout`, :func:`pack_wgt_tile` -- the layout of a WGT tile on a config,
  and a layer's tile packed in it;
* :func:`channel_layout` -- where each memory channel's region starts in an image;
* :func:`pack_stream_tile` -- one row block of a streamed layer packed into one record
  stream per memory channel (the core's decode-unit slices), padding rows included;
* :func:`stream_tile_bytes` -- the bytes of those streams from the records' tags alone;
* :func:`stream_block_bytes` -- a bound on a row block's stream on one channel, which the
  tile planner (:mod:`compiler.tiling`) keeps within one load;
* :func:`place_stream_block` -- a row block packed and its streams placed in memory;
* :func:`stream_bits` -- the bits of a layer's records by kind (values, indices,
  headers).
"""

from __future__ import annotations

import numpy as np
import torch

from airfoil.config import AccelConfig
from airfoil.errors import CompileError
from airfoil.formats import TileLayout, fp16_fixed, pack_tile, tile_layout
from airfoil.packing import (BLOCK_CODE, HEADER_FIXED_BITS, format_spec, nm_code,
                             nm_index_bits, pack_channels, record_starts, record_tag,
                             step_mask)

__all__ = ["MAX_STREAM_BYTES", "CHANNEL_ALIGN", "slices", "wgt_tile_layout",
           "pack_wgt_tile", "channel_layout",
           "pack_stream_tile", "stream_tile_bytes", "stream_block_bytes", "place_stream_block",
           "least_scale",
           "stream_bits"]

#: Largest stream one LD moves (its 24-bit ``nbytes`` field).
MAX_STREAM_BYTES = (1 << 24) - 1
#: Alignment of each channel's memory in a folder's image (a page).
CHANNEL_ALIGN = 4096


def _up(n: int, a: int) -> int:
    return -(-n // a) * a


def slices(nbytes: int, config: AccelConfig) -> list[tuple[int, int]]:
    """Split a transfer into word-aligned slices, one per memory channel (up to all)."""
    wb, mem = config.word_bytes, config.memory
    count = max(1, min(mem.channels, -(-nbytes // (wb * mem.max_burst))))
    size = _up(-(-nbytes // count), wb)
    return [(off, min(size, nbytes - off)) for off in range(0, nbytes, size)]


def wgt_tile_layout(config: AccelConfig, rows: int, cols: int, *, group: int, wfmt,
                    bias: bool = False) -> TileLayout:
    """The layout of a WGT tile of ``rows`` x ``cols`` weights of format ``wfmt`` on
    ``config`` (its chains and lanes, whole memory words), with an int32 bias section
    when ``bias``."""
    return tile_layout(rows=rows, k=cols, group=group, wfmt=wfmt, chains=config.chains,
                       lanes=config.lanes, bias=bias, align=config.word_bytes)


def pack_wgt_tile(layout: TileLayout, q: torch.Tensor, scales: torch.Tensor, box,
                  group: int, bias: torch.Tensor | None = None) -> bytes:
    """The bytes of the tile ``box`` (``row0, rows, col0, cols``) of a layer's weight
    values ``q`` and FP16 group ``scales`` in ``layout``, with the rows' int32 ``bias``
    (of the whole layer) when given."""
    r0, rows, c0, cols = box
    return pack_tile(layout, q[r0:r0 + rows, c0:c0 + cols],
                     scales[r0:r0 + rows, c0 // group:(c0 + cols) // group],
                     None if bias is None else bias[r0:r0 + rows])


def channel_layout(used, config: AccelConfig) -> list:
    """Offsets of the channels' memories in one image, from the bytes each one uses
    (``used[c]``): one after the other, each from a multiple of :data:`CHANNEL_ALIGN`;
    :class:`CompileError` when a channel's memory exceeds the config's ``channel_bytes``."""
    cap = config.memory.channel_bytes
    for c, nb in enumerate(used):
        if nb > cap:
            raise CompileError(f"channel {c}'s memory would hold {nb} bytes, more than one "
                               f"channel's capacity in config {config.name!r} "
                               f"(memory.channel_bytes = {cap})")
    offsets = [0]
    for nb in used[:-1]:
        offsets.append(offsets[-1] + _up(max(nb, 1), CHANNEL_ALIGN))
    return offsets


def least_scale(scales: torch.Tensor) -> torch.Tensor:
    """The FP16 scale of least exponent of a layer: the scale of its padding rows (their
    rescale shift is 0 against the layer's ``k0``)."""
    _, kexp = fp16_fixed(scales)
    return scales.reshape(-1)[int(torch.argmin(kexp.reshape(-1)))]


def pack_stream_tile(geom, config: AccelConfig, q: torch.Tensor, scales: torch.Tensor,
                     tags, *, row0: int, rows: int, group: int, sparsity: str,
                     smin: torch.Tensor) -> list[bytes]:
    """Rows ``row0 .. row0 + rows`` of a streamed layer as one stream per memory channel.

    ``q`` (n, k) values, ``scales`` (n, k / group) FP16, ``tags`` the record tag of each
    (record-row batch, group column) of the whole layer (:attr:`geom.rows` rows a batch;
    ``row0`` a multiple of ``config.chains``). The block is padded with zero rows, of
    scale ``smin`` and the first record's tag, to a whole batch of the core's chains: row
    batch ``b`` goes to channel ``b % channels`` (one decode-unit slice each).
    """
    chains, rr = config.chains, geom.rows
    k = q.shape[1]
    rp = _up(rows, chains)
    tq = torch.zeros((rp, k), dtype=torch.int64)
    tq[:rows] = q[row0:row0 + rows]
    ts = smin.repeat(rp, k // group)
    ts[:rows] = scales[row0:row0 + rows]
    tt = _block_tags(geom, config, tags, row0, rows)
    return pack_channels(geom, tq, ts, group=group, sparsity=sparsity,
                         channels=config.memory.channels, tags=tt)


def _block_tags(geom, config: AccelConfig, tags, row0: int, rows: int) -> np.ndarray:
    """The record tags (record-row batch x group column) of rows ``row0 .. row0 + rows``
    padded to a whole batch of the core's chains: padding batches take the layer's first
    record's tag."""
    rr, rp = geom.rows, _up(rows, config.chains)
    tags = np.asarray(tags)
    tt = tags[row0 // rr:(row0 + rp) // rr]
    if tt.shape[0] < rp // rr:
        tt = np.concatenate([tt, np.full((rp // rr - tt.shape[0], tags.shape[1]),
                                         tags[0, 0])])
    return tt


def stream_tile_bytes(geom, config: AccelConfig, tags, *, row0: int, rows: int,
                      group: int, sparsity: str) -> list[int]:
    """The bytes of each channel's stream :func:`pack_stream_tile` makes of the same row
    block, from its record tags alone (no weights): a record's size is fixed by its tag,
    group and N:M pattern. Block skip is refused (a record's size follows its weights)."""
    nm = nm_code(sparsity)
    if nm == BLOCK_CODE:
        raise CompileError("a block-skip stream's size depends on its weights' zero k-steps; "
                           "it cannot be sized without them")
    tt = _block_tags(geom, config, tags, row0, rows)
    channels = config.memory.channels
    key = {int(t): (record_tag(int(t)), group, nm, None) for t in np.unique(tt)}
    out = []
    for c in range(channels):
        keys = [key[t] for t in tt[c::channels].reshape(-1).tolist()]
        out.append(record_starts(geom, keys)[1] // 8)
    return out


def stream_block_bytes(geom, config: AccelConfig, k: int, group: int, formats, nm: int):
    """``bytes(rows)``: at most the bytes of the stream a block of ``rows`` rows (all of
    ``k``) puts on one channel, every record in the widest of ``formats`` (record tags)
    with N:M code ``nm``, plus a header's fixed bits a record and a word."""
    wb = config.word_bytes
    worst = max(geom.record_bits(t, group, nm) for t in formats)

    def nbytes(rows: int) -> int:
        batches = -(-rows // config.chains)         # record rows of each slice
        return _up(-(-batches * (k // group) * (worst + HEADER_FIXED_BITS) // 8) + wb, wb)

    return nbytes


def place_stream_block(geom, config: AccelConfig, q: torch.Tensor | None,
                       scales: torch.Tensor, tags, *, row0: int, rows: int, group: int,
                       sparsity: str, smin: torch.Tensor, place, what: str = "",
                       pack: bool = True) -> tuple[dict, list[tuple[int, int, bytes]]]:
    """Pack one row block of a streamed layer (all of K) with :func:`pack_stream_tile`,
    each channel's stream placed at ``place(channel, nbytes)``; with ``pack`` false, only
    size and place its streams (:func:`stream_tile_bytes`: the same sizes, the values
    ``q`` not read).

    Returns its manifest entry (``row0``, ``rows``, ``col0``, ``cols``, ``streams``:
    ``channel``, ``addr``, ``nbytes`` each) and the packed ``(channel, addr, bytes)``
    (none when not packed). A stream longer than one load is a :class:`CompileError`
    (``what`` names the layer)."""
    if pack:
        streams = pack_stream_tile(geom, config, q, scales, tags, row0=row0, rows=rows,
                                   group=group, sparsity=sparsity, smin=smin)
        sizes = [len(blob) for blob in streams]
    else:
        streams = None
        sizes = stream_tile_bytes(geom, config, tags, row0=row0, rows=rows, group=group,
                                  sparsity=sparsity)
    entry = {"row0": row0, "rows": rows, "col0": 0, "cols": scales.shape[1] * group,
             "streams": []}
    blobs = []
    for c, nbytes in enumerate(sizes):
        if nbytes > MAX_STREAM_BYTES:
            raise CompileError(f"{what}the stream of rows {row0}..{row0 + rows - 1} on "
                               f"channel {c} is {nbytes} bytes, more than one load "
                               f"({MAX_STREAM_BYTES})")
        addr = place(c, nbytes)
        entry["streams"].append({"channel": c, "addr": addr, "nbytes": nbytes})
        if streams is not None:
            blobs.append((c, addr, streams[c]))
    return entry, blobs


def stream_bits(geom, tags, group: int, nm: int, groups: int, q=None) -> dict:
    """Bits of a layer's records by kind: weight ``values``, N:M ``indices`` and ``headers``
    (tag, group, sparsity, the FP16 ``scales`` and block-skip step masks); word padding is
    not counted. Block skip needs the quantized weights ``q`` (rows x k) for the present
    k-steps of each record."""
    out = {"values": 0, "indices": 0, "headers": 0}
    tags = np.asarray(tags).reshape(-1, groups)
    if nm == BLOCK_CODE:                     # present k-steps of each record
        R = geom.rows
        qn = np.asarray(q, dtype=np.int64)
        qp = np.zeros((tags.shape[0] * R, qn.shape[1]), dtype=np.int64)
        qp[:qn.shape[0]] = qn
        masks = [[step_mask(qp[b * R:(b + 1) * R, c * group:(c + 1) * group], geom.lanes)
                  for c in range(groups)] for b in range(tags.shape[0])]
    else:
        masks = [[None] * groups] * tags.shape[0]
    for b, row in enumerate(tags):
        for v, mask in zip(row, masks[b]):
            kept = geom.record_vectors(group, nm, mask) * geom.lanes
            out["values"] += kept * format_spec(int(v)).code_bits
            out["indices"] += kept * nm_index_bits(nm)
            out["headers"] += geom.header_bits + geom.mask_bits(group, nm)
    return out
