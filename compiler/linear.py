"""Compile one quantized linear layer (GEMV) into an output folder.

Steps: quantize the weights in groups (:func:`compiler.passes.quantize_linear`, as the
LLM compiler does),
calibrate static activation and output scales, plan tiles and the memory image for the
configuration, schedule the instruction stream with dependency tokens, and write
``program.afp``, ``weights.bin``, ``manifest.json`` and ``program.s``.

Schedule (VTA style; the tokens follow from the buffer and memory ranges each instruction
reads and writes, :class:`compiler.schedule.Scheduler`)::

    LD ACT x                                   the whole input vector, once
    LD WGT tiles 0 .. S-1                      S = 2 (double buffering) or 4 WGT slots
    for each tile t:
        MV t            wait LOAD (+ STORE before reusing an OUT half), release LOAD
                        (for the load of tile t+S) and STORE (at the end of an OUT half)
        ST OUT half     wait MATRIX, release MATRIX       (when an OUT half is full)
        LD WGT tile t+S wait MATRIX (MV t freed the slot), release MATRIX
    SYS HALT

Every tile is at most half the WGT buffer; when tiles fit a quarter, four slots let LOAD
run three tiles ahead, hiding the memory latency of one tile behind the others. A tile
larger than ``max_burst`` words is loaded as one LD per memory channel (word-aligned
slices; only the last releases the MATRIX token, completions being in order).

A tile is a block of output rows (a multiple of ``chains``) times a chunk of K (all of K
when it fits half the WGT buffer, else several chunks accumulated with ``acc_init`` and
``final``). Each OUT half collects the results of consecutive tiles whose first row is
word-aligned in memory, so every ST is a whole number of memory words.

Streamed weights (ISA version 3, ``stream=True``; implied by a stream-only ``wformat``
-- ``ovp``, ``int6``, a BitMoD FP format, ``mixed``, ``bitmod4``, ``bitmod3`` -- or by a
sparsity other than ``dense``): the weights are pruned to N:M
(:func:`airfoil.sparsity.prune_nm`) or, for block skip, to a density of k-steps per
record (:func:`airfoil.sparsity.prune_blocks`; the packer skips the all-zero k-steps),
quantized per record with a format per layer or a per-record choice
(:func:`airfoil.packing.quantize_stream`) and packed into one stream per tile and memory
channel (:func:`airfoil.packing.pack_channels`, records of one slice's chains,
:func:`airfoil.packing.core_stream_geometry`): the core has one decode-unit slice per
channel, and row batch ``b`` of a tile goes to slice ``b % channels``. Each channel's
memory is a region of ``weights.bin`` (the manifest's ``channel_offsets``, each region
checked against ``channel_bytes``): channel ``c``'s holds slice ``c``'s stream of every
tile, each contiguous; channel 0's also the input, the output and the bias tiles, which
its loads and stores move. A tile is a block of output rows (a multiple of ``chains``)
times all of K, with no WGT buffer to fit::

    LD ACT x
    [LD WGT bias tile t] LD WSTREAM tile t      t = 0 .. 3; one LD WSTREAM per channel
    for each tile t:
        [MV bias tile t]    acc_init=1, final=0, bias=1: wait LOAD, release LOAD (for
                            the bias tile t+4: it has read its slot)
        MV STREAM t     wait LOAD (the activations, tile 0 without a bias tile) and
                        STORE (before reusing an OUT half); release STORE (at the end of
                        an OUT half)
        ST OUT half     wait MATRIX, release MATRIX       (when an OUT half is full)
        [LD WGT bias tile t+4] LD WSTREAM t+4   (the bias tile: wait MATRIX, release
                                                MATRIX; the streams carry no tokens)
    SYS HALT

LOAD runs up to three tiles ahead (a streamed layer fewer, so that the loads queued ahead
of an MV never exceed ``instr_queue_depth - 1``: a load blocked on a full stream FIFO waits
for that MV, which must still find room to be dispatched); a load only ever waits for a
matrix instruction that consumes an earlier part of the stream, so a full stream FIFO
cannot deadlock it.
A STREAM instruction carries no bias, so a layer's bias rides in a *bias tile* per row
block (the bracketed steps): a WGT tile of one group of zero weights (``int4``, or the
config's first format) whose scales are the layer's smallest, holding the int32 bias; its
MV starts the accumulators from the bias and the MV STREAM continues them (``acc_init=0``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from airfoil.config import AccelConfig
from airfoil.errors import CompileError
from airfoil.folder import FOLDER_FORMAT
from airfoil.formats import (FORMAT_BITS, act_scale, fp16_fixed, pack_tile, qmax,
                             quantize_act, requant_params, tile_layout,
                             weight_format)
from airfoil.isa import ISA_VERSION, Buffer, Opcode, OutFormat, Sparsity, SysOp, WeightFormat
from airfoil.packing import (DEFAULT_MIXED, MIXED_PRESETS,
                             NM_BY_NAME, format_spec, record_formats, stream_formats,
                             core_stream_geometry, nm_code,
                             record_tag)
from airfoil.program import Program

from .asm import listing
from .output import write_folder
from .llm_recipe import OUT_FORMATS, LayerQuant
from .passes import StreamShape, quantize_linear
from .schedule import Scheduler, load_wgt_tile, mem, span, wgt_tile_fields
from .tiling import plan_wgt_tiles, row_block, tile_boxes, wgt_slots
from .streams import (MAX_STREAM_BYTES, channel_layout, least_scale, place_stream_block,
                      stream_bits, stream_block_bytes)

__all__ = ["compile_linear", "check_stream_args", "plan_linear", "plan_stream", "LinearPlan",
           "MIN_TILES", "CALIB_ROWS", "STREAM_SLOTS"]

#: The planner makes tiles small enough for at least this many tiles (when N allows),
#: so loading the first tile is a small part of the run.
MIN_TILES = 8
#: Rows of the random calibration sample drawn when no calibration data is given.
CALIB_ROWS = 8

#: Tiles the LOAD unit streams ahead of MATRIX (streamed weights).
STREAM_SLOTS = 4

_OUT_FMT = {8: OutFormat.INT8, 16: OutFormat.INT16, 32: OutFormat.INT32}


def _up(n: int, a: int) -> int:
    return -(-n // a) * a


class LinearPlan:
    """Tiling of an ``n x k`` layer on a configuration.

    Members
    -------
    rows_per_tile : int
        Output rows per tile (a multiple of ``chains``; the last tile may have fewer).
    chunks : list of (int, int)
        ``(col0, cols)`` chunks of K, one per tile of a row block (one chunk: K whole).
    group_rows : int
        Output rows per OUT half (a multiple of ``rows_per_tile`` and word-aligned).
    slots : int
        Weight tiles the WGT buffer holds at once (:data:`compiler.tiling.WGT_SLOTS`); the LOAD
        unit runs ``slots - 1`` tiles ahead of MATRIX.
    slot_bytes : int
        Size of one WGT slot (a multiple of the memory word).
    tiles : list of dict
        In execution order: ``row0``, ``rows``, ``col0``, ``cols``, ``bias``, ``layout``.
    """

    def __init__(self, rows_per_tile, chunks, group_rows, tiles, slots, slot_bytes):
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.rows_per_tile = rows_per_tile
        self.chunks = chunks
        self.group_rows = group_rows
        self.tiles = tiles


def plan_linear(n: int, k: int, config: AccelConfig, *, wformat, group: int, out_bits: int,
                bias: bool, max_tile_bytes: int | None = None) -> LinearPlan:
    """Choose tile shapes for an ``n x k`` layer; raise :class:`CompileError` if none fit.

    Parameters
    ----------
    n, k : int
        Output rows and reduction length of the layer.
    config : AccelConfig
        Engine shape, buffer sizes and memory word of the target.
    wformat : str or WeightFormat
        Weight format of the tiles.
    group : int
        Weights per group scale.
    out_bits : int
        Result width (8, 16 or 32).
    bias : bool
        Whether the first K chunk of every row block carries an int32 bias section.
    max_tile_bytes : int, optional
        Upper bound on a tile's bytes below half the WGT buffer (used to force K-splits).
    """
    wf = weight_format(wformat)
    wb = config.word_bytes
    chains = config.chains
    half_w = config.buffers.weight_bytes // 2
    if max_tile_bytes is not None:
        half_w = min(half_w, int(max_tile_bytes))

    def nbytes(rows, cols):
        return tile_layout(rows=rows, k=cols, group=group, wfmt=wf, chains=chains,
                           lanes=config.lanes, bias=bias, align=wb).nbytes

    if _up(k, wb) > config.buffers.act_bytes:
        raise CompileError(f"K={k} does not fit the ACT buffer ({config.buffers.act_bytes} "
                           f"bytes in config {config.name!r})")
    # Tiles of at most half the WGT buffer; an OUT half holds a word-aligned whole number
    # of them.
    limit, accept, group_rows_of = _out_halves(n, config, out_bits)
    boxes, rows_per_tile, kc = plan_wgt_tiles(n, k, chains, group, nbytes, half_w,
                                              limit=limit, accept=accept)
    assert rows_per_tile, "chains rows always fit (checked above)"
    tiles = []
    for row0, rows, c0, cols in boxes:
        has_bias = bias and c0 == 0
        lay = tile_layout(rows=rows, k=cols, group=group, wfmt=wf, chains=chains,
                          lanes=config.lanes, bias=has_bias, align=wb)
        tiles.append({"row0": row0, "rows": rows, "col0": c0, "cols": cols,
                      "bias": has_bias, "layout": lay})
    slots, slot_bytes = wgt_slots(config, max(t["layout"].nbytes for t in tiles))
    chunks = [(c0, min(kc, k - c0)) for c0 in range(0, k, kc)]
    return LinearPlan(rows_per_tile, chunks, group_rows_of(rows_per_tile), tiles, slots,
                      slot_bytes)


def _out_halves(n: int, config: AccelConfig, out_bits: int):
    """The single layer's OUT halves as constraints of the tile planner
    (:func:`compiler.tiling.row_block`): ``(limit, accept, group_rows)`` -- at most the
    rows of :data:`MIN_TILES` tiles, rows of which an OUT half holds a word-aligned whole
    number, and ``group_rows(rows)`` the rows of one OUT half. Raises
    :class:`CompileError` when not even ``chains`` rows are accepted."""
    chains, wb = config.chains, config.word_bytes
    ob = out_bits // 8
    half_rows = (config.buffers.out_bytes // 2) // ob
    wq = wb // math.gcd(wb, ob)         # rows whose outputs fill whole memory words
    if math.lcm(chains, wq) > half_rows:
        raise CompileError(f"no tile of {chains} rows fits: the OUT buffer half "
                           f"({half_rows} outputs of {out_bits} bits) cannot hold "
                           f"{math.lcm(chains, wq)} rows")

    def group_rows(rows):
        step = math.lcm(rows, wq)
        return (half_rows // step) * step

    limit = max(chains, _up(-(-n // MIN_TILES), chains))
    return limit, lambda r: math.lcm(r, wq) <= half_rows, group_rows


def plan_stream(n: int, k: int, config: AccelConfig, *, out_bits: int,
                max_tile_bytes: int | None = None, tile_bytes=None,
                bias_layout=None) -> LinearPlan:
    """Tiles of an ``n x k`` layer of streamed weights: row blocks times all of K.

    ``tile_bytes(rows)`` bounds a tile's stream bytes (default: none); a tile's stream
    must fit one LD (:data:`MAX_STREAM_BYTES`) and ``max_tile_bytes`` when given.
    ``bias_layout(rows)``: the :class:`airfoil.formats.TileLayout` of a bias tile (layers
    with a bias), which must fit one of :data:`STREAM_SLOTS` WGT slots.
    """
    if _up(k, config.word_bytes) > config.buffers.act_bytes:
        raise CompileError(f"K={k} does not fit the ACT buffer ({config.buffers.act_bytes} "
                           f"bytes in config {config.name!r})")
    cap = min(MAX_STREAM_BYTES, int(max_tile_bytes) if max_tile_bytes else MAX_STREAM_BYTES)
    size = tile_bytes or (lambda r: 0)
    if size(config.chains) > cap:
        raise CompileError(f"the stream of {config.chains} rows x {k} weights "
                           f"({size(config.chains)} bytes) exceeds one load ({cap} bytes)")
    slot = (config.buffers.weight_bytes // STREAM_SLOTS) // config.word_bytes * \
        config.word_bytes
    bsize = (lambda r: bias_layout(r).nbytes) if bias_layout else (lambda r: 0)
    if bsize(config.chains) > slot:
        raise CompileError(f"the bias tile of {config.chains} rows ({bsize(config.chains)} "
                           f"bytes) does not fit a quarter of the WGT buffer ({slot} bytes)")
    limit, accept, group_rows = _out_halves(n, config, out_bits)
    rows_per_tile = row_block(n, config.chains, lambda r: size(r) <= cap and bsize(r) <= slot,
                              limit=limit, accept=accept)
    assert rows_per_tile, "chains rows always fit (checked above)"
    tiles = [{"row0": r0, "rows": rows, "col0": 0, "cols": k,
              "bias": bias_layout is not None,
              "layout": bias_layout(rows) if bias_layout else None}
             for r0, rows, _, _ in tile_boxes(n, k, rows_per_tile, k)]
    return LinearPlan(rows_per_tile, [(0, k)], group_rows(rows_per_tile), tiles,
                      STREAM_SLOTS, slot)


def check_stream_args(config, wformat, sparsity, mixed_formats, group):
    """Check the options of streamed weights (raise :class:`CompileError` naming what is
    accepted); return ``(formats, nm code, label)``."""
    if not config.decode_unit:
        raise CompileError(f"config {config.name!r} has no decode unit for streamed weights "
                           f"(it is built when weight_formats lists int2, int3, int6 or a "
                           f"BitMoD FP format or sparsity an N:M pattern or block; e.g. "
                           f"config test_decode)")
    if sparsity in NM_BY_NAME and sparsity != "dense" and sparsity not in config.sparsity:
        raise CompileError(f"sparsity {sparsity!r} is not built in config {config.name!r} "
                           f"(accepted: {', '.join(config.sparsity)})")
    name = str(wformat).lower()
    if name not in stream_formats() and name != "ovp4":
        raise CompileError(f"streamed weight format {wformat!r} is not accepted (accepted: "
                           f"{', '.join(stream_formats())})")
    if not isinstance(sparsity, str) or sparsity not in NM_BY_NAME:
        raise CompileError(f"sparsity {sparsity!r} is not accepted (accepted: "
                           f"{', '.join(NM_BY_NAME)})")
    nm = nm_code(sparsity)
    built = config.stream_formats
    if name == "mixed":
        cands = mixed_formats
        if cands is None:       # the default pair, or every format the config decodes
            cands = DEFAULT_MIXED if all(c in built for c in DEFAULT_MIXED) else built
        if isinstance(cands, str):
            cands = [c.strip() for c in cands.split(",") if c.strip()]
        cands = list(cands)
        if not cands:
            raise CompileError(f"mixed formats: the candidate list is empty (accepted: "
                               f"{', '.join(built)})")
        for c in cands:
            if str(c).lower() not in record_formats() and str(c).lower() != "ovp4":
                raise CompileError(f"mixed formats: {c!r} is not a record format (accepted: "
                                   f"{', '.join(record_formats())})")
        names = [str(c).lower() for c in cands]
    else:
        if mixed_formats is not None:
            raise CompileError(f"mixed formats apply to wformat 'mixed', not {wformat!r}")
        names = list(MIXED_PRESETS.get(name, [name]))
    for c in names:
        if ("ovp" if c == "ovp4" else c) not in built:
            raise CompileError(f"streamed weight format {c!r} is not built in config "
                               f"{config.name!r} (accepted: {', '.join(built)})")
    formats = [record_tag(c) for c in names]
    if nm and any(format_spec(t).kind == "ovp" for t in formats):
        raise CompileError(f"ovp weights are dense; sparsity {sparsity!r} needs the other "
                           f"formats (a list without ovp)")
    geom = core_stream_geometry(config)
    geom.check_group(group, nm)
    return formats, nm, name


def _check_args(weight, bias, config, wformat, group, out_format):
    if not isinstance(config, AccelConfig):
        raise TypeError(f"config must be an AccelConfig, not {config!r}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or \
            not weight.is_floating_point():
        raise CompileError(f"weight must be a 2-D float tensor (N x K), not "
                           f"{getattr(weight, 'shape', type(weight).__name__)}")
    n, k = weight.shape
    if n < 1 or k < 1:
        raise CompileError(f"weight shape {n} x {k} is empty")
    if not bool(torch.isfinite(weight).all()):
        raise CompileError("weight holds infinite or NaN values")
    wf = None if wformat is None else weight_format(wformat)
    if wf is not None and wf.name.lower() not in config.tile_formats:
        raise CompileError(f"weight format {wformat!r} is not a WGT-tile format of config "
                           f"{config.name!r} (accepted: {', '.join(config.tile_formats)}; "
                           f"other formats are streamed)")
    if isinstance(group, bool) or not isinstance(group, int) or group not in config.group_sizes:
        raise CompileError(f"group size {group!r} is not supported by config {config.name!r} "
                           f"(accepted: {', '.join(map(str, config.group_sizes))})")
    if out_format not in OUT_FORMATS:
        raise CompileError(f"output format {out_format!r} is not accepted (accepted: "
                           f"{', '.join(OUT_FORMATS)})")
    if k % group:
        raise CompileError(f"K={k} is not a multiple of the group size {group}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (n,):
            raise CompileError(f"bias must be a tensor of shape ({n},), not "
                               f"{tuple(getattr(bias, 'shape', ()))}")
        if not bool(torch.isfinite(bias).all()):
            raise CompileError("bias holds infinite or NaN values")
    return wf


def _calibrate(weight, bias, calib, seed, k, out_bits, k0):
    if calib is None:
        gen = torch.Generator().manual_seed(int(seed))
        calib = torch.randn(CALIB_ROWS, k, generator=gen, dtype=torch.float64)
    calib = torch.as_tensor(calib).detach().to(torch.float64)
    if calib.dim() == 1:
        calib = calib.reshape(1, -1)
    if calib.dim() != 2 or calib.shape[1] != k or calib.shape[0] < 1:
        raise CompileError(f"calibration data must be M x K={k}, not {tuple(calib.shape)}")
    if not bool(torch.isfinite(calib).all()):
        raise CompileError("calibration data holds infinite or NaN values")
    x_scale = act_scale(calib)
    y = calib @ weight.detach().to(torch.float64).T
    if bias is not None:
        y = y + bias.detach().to(torch.float64)
    acc_unit = 2.0 ** k0 * x_scale
    if out_bits == 32:
        y_scale = acc_unit                  # results in accumulator units
    else:
        amax = float(y.abs().max())
        y_scale = float(np.float32(amax / qmax(out_bits))) if amax > 0 else 1.0
    req_m, req_s = requant_params(acc_unit / y_scale)
    x_q = quantize_act(calib[0], x_scale)
    return x_scale, y_scale, req_m, req_s, x_q


def _bias_units(bias, k0: int, x_scale: float):
    """The bias in int32 accumulator units (``None`` without a bias)."""
    if bias is None:
        return None
    bias_q = torch.round(bias.detach().to(torch.float64) / (2.0 ** k0 * x_scale))
    if float(bias_q.abs().max()) >= 2 ** 31:
        raise CompileError("bias does not fit in int32 accumulator units; its magnitude "
                           "is too large against the input and weight scales")
    return bias_q.to(torch.int64)


def compile_linear(weight: torch.Tensor, bias: torch.Tensor | None, config: AccelConfig,
                   out_dir, *, wformat="int4", group=128, out_format="int8",
                   calib: torch.Tensor | None = None, seed: int = 0,
                   max_tile_bytes: int | None = None, stream: bool | None = None,
                   sparsity: str = "dense", mixed_formats=None,
                   block_density: float = 1.0) -> dict:
    """Quantize and compile one linear layer ``y = W x + b`` into ``out_dir``.

    Parameters
    ----------
    weight : torch.Tensor
        ``N x K`` float weights.
    bias : torch.Tensor or None
        ``N`` float bias.
    config : AccelConfig
        The accelerator to compile for.
    out_dir : str or Path
        Output folder; written atomically (all files or none).
    wformat : str
        Weight format (one of the config's ``weight_formats``).
    group : int
        Weights per FP16 group scale (one of the config's ``group_sizes``; divides K).
    out_format : str
        ``int8``, ``int16`` or ``int32`` result.
    calib : torch.Tensor, optional
        ``M x K`` float activations for static calibration; default: ``CALIB_ROWS``
        standard-normal rows drawn with ``seed``. Its first row, quantized, is the
        folder's default input.
    seed : int
        Seed of the random calibration sample.
    max_tile_bytes : int, optional
        Cap on a weight tile's bytes (forces K-splits in tests; with streamed weights,
        smaller row blocks).
    stream : bool, optional
        Stream the weights through the decode unit (``LD WSTREAM`` + ``MV STREAM``)
        instead of WGT tiles. Default: when ``wformat`` is not one of the config's WGT-tile
        formats (:attr:`~airfoil.config.AccelConfig.tile_formats`: INT4 and INT8, as the
        PE kind computes them), ``sparsity`` is not ``dense`` or ``mixed_formats`` is given.
    sparsity : str
        Streamed weights: ``dense``, an N:M pattern (``1:4``, ``2:4``, ``2:8``, ``4:16``,
        ``8:16``): magnitude pruning before quantization, or ``block``: block-skip records
        (k-steps of ``chains`` rows x ``lanes`` weights that are all zero are neither
        streamed nor computed).
    block_density : float
        ``sparsity="block"``: fraction of each record's k-steps kept, those of largest L2
        norm (``0 < d <= 1``; the default 1 skips only the k-steps already zero).
    mixed_formats : str or sequence of str, optional
        Candidates of ``wformat="mixed"`` (default :data:`airfoil.packing.DEFAULT_MIXED`,
        or every record format the config decodes if it lacks one of those), e.g. ``"int2,int4,int8"`` or
        ``"fp4_er_p,fp4_ea_n"``: each record (``chains`` rows x one group) takes the one
        of least squared error. ``wformat`` ``bitmod4`` / ``bitmod3`` are the presets of
        :data:`airfoil.packing.MIXED_PRESETS` (BitMoD's FP4 / FP3 variants). Streamed
        formats other than INT2/3/4/8 and OVP must be in the config's ``weight_formats``.

    Returns
    -------
    dict
        The manifest written to ``manifest.json``.
    """
    if stream is None:
        name = str(wformat).lower()
        stream = (name not in config.tile_formats and name in stream_formats() + ("ovp4",)
                  or sparsity != "dense" or mixed_formats is not None)
    if stream:
        return _compile_stream(weight, bias, config, out_dir, wformat=wformat, group=group,
                               out_format=out_format, calib=calib, seed=seed,
                               max_tile_bytes=max_tile_bytes, sparsity=sparsity,
                               mixed_formats=mixed_formats, block_density=block_density)
    if block_density != 1.0:
        raise CompileError(f"block density {block_density!r} applies to sparsity 'block' "
                           f"(streamed weights), not {sparsity!r}")
    if sparsity != "dense":
        raise CompileError(f"sparsity {sparsity!r} needs streamed weights (stream=True); WGT "
                           f"tiles are dense")
    wf = _check_args(weight, bias, config, wformat, group, out_format)
    n, k = weight.shape
    bits = FORMAT_BITS[wf]
    out_bits = OUT_FORMATS[out_format]
    ob = out_bits // 8
    wb = config.word_bytes

    ql = quantize_linear(weight, LayerQuant((wf.name.lower(),), group),
                         StreamShape.of(config), streamed=False)
    q, s16 = ql.q, ql.scales
    _, kexp = fp16_fixed(s16)
    k0 = int(kexp.min())
    x_scale, y_scale, req_m, req_s, x_q = _calibrate(weight, bias, calib, seed, k, out_bits, k0)
    bias_q = _bias_units(bias, k0, x_scale)

    plan = plan_linear(n, k, config, wformat=wf, group=group, out_bits=out_bits,
                       bias=bias is not None, max_tile_bytes=max_tile_bytes)

    # -- memory image: input, output, tiles ------------------------------------------
    in_addr = 0
    out_addr = _up(k, wb)
    addr = out_addr + _up(n * ob, wb)
    blobs = []
    tiles = []
    for t in plan.tiles:
        r0, r1, c0, c1 = t["row0"], t["row0"] + t["rows"], t["col0"], t["col0"] + t["cols"]
        blob = pack_tile(t["layout"], q[r0:r1, c0:c1], s16[r0:r1, c0 // group:c1 // group],
                         bias_q[r0:r1] if t["bias"] else None)
        assert len(blob) == t["layout"].nbytes and len(blob) % wb == 0
        t["addr"] = addr
        tiles.append({"row0": r0, "rows": t["rows"], "addr": addr, "nbytes": len(blob),
                      "col0": c0, "cols": t["cols"]})
        blobs.append(blob)
        addr += len(blob)
    channel_layout([addr], config)          # one image every channel sees whole
    offsets = [0] * config.memory.channels
    image = bytearray(addr)
    image[in_addr:in_addr + k] = x_q.numpy().astype(np.int8).tobytes()
    for t, blob in zip(plan.tiles, blobs):
        image[t["addr"]:t["addr"] + len(blob)] = blob

    words = _schedule(plan, config, wf=wf, group=group, k=k, n=n, k0=k0, req_m=req_m,
                      req_s=req_s, out_bits=out_bits, in_addr=in_addr, out_addr=out_addr)
    program = Program(words, config.config_hash_bytes)

    manifest = {
        "format": FOLDER_FORMAT, "isa_version": ISA_VERSION, "config": config.name,
        "config_hash": config.config_hash, "program": "program.afp", "image": "weights.bin",
        "image_bytes": len(image), "channel_offsets": offsets,
        "input": {"addr": in_addr, "shape": [k], "scale": x_scale},
        "output": {"addr": out_addr, "shape": [n], "bits": out_bits, "scale": y_scale},
        "layers": [{"name": "linear", "n": n, "k": k, "wformat": wf.name.lower(),
                    "group": group, "k0": k0, "req_m": req_m, "req_s": req_s,
                    "out_bits": out_bits, "bias": bias is not None, "tiles": tiles}],
    }
    title = (f"linear {n} x {k} {wf.name.lower()} g{group} -> int{out_bits}, config "
             f"{config.name} ({config.config_hash}), {len(words)} instructions")
    write_folder(out_dir, {
        "weights.bin": bytes(image),
        "program.afp": program.to_bytes(),
        "program.s": listing(words, title).encode(),
        "manifest.json": (json.dumps(manifest, indent=1) + "\n").encode(),
    })
    return manifest


def _compile_stream(weight, bias, config, out_dir, *, wformat, group, out_format, calib, seed,
                    max_tile_bytes, sparsity, mixed_formats, block_density=1.0) -> dict:
    """:func:`compile_linear` with streamed weights (see the module docstring)."""
    if not isinstance(config, AccelConfig):
        raise TypeError(f"config must be an AccelConfig, not {config!r}")
    formats, nm, label = check_stream_args(config, wformat, sparsity, mixed_formats, group)
    _check_args(weight, bias, config, None, group, out_format)
    # The bias rides in a WGT tile: INT4 when built, else the config's first tile format.
    tiles = config.tile_formats
    bias_wf = weight_format("int4" if "int4" in tiles or not tiles else tiles[0])
    n, k = weight.shape
    out_bits = OUT_FORMATS[out_format]
    ob = out_bits // 8
    wb = config.word_bytes
    chains, S = config.chains, config.slices
    geom = core_stream_geometry(config)
    rr = geom.rows                  # rows of a record: the chains of one slice

    ql = quantize_linear(weight, LayerQuant(tuple(format_spec(t).name for t in formats), group,
                                            sparsity, block_density),
                         StreamShape(rr, config.lanes), streamed=True)
    q, s16, tags = ql.q, ql.scales, ql.formats[::rr].numpy()
    # Records of the padding rows up to a whole batch of the core: the first format.
    pad = _up(n, chains) // rr - tags.shape[0]
    tags = np.concatenate([tags, np.full((pad, tags.shape[1]), tags[0, 0])]) if pad else tags
    # Mean squared error of the stored weights against the float ones (pruning included).
    deq = q.to(torch.float64) * s16.to(torch.float64).repeat_interleave(group, dim=1)
    weight_mse = float(((deq - weight.detach().to(torch.float64)) ** 2).mean())
    _, kexp = fp16_fixed(s16)
    k0 = int(kexp.min())
    smin = least_scale(s16)
    # The weights the stream holds before rounding: the float ones where pruning kept.
    pruned = weight if ql.mask is None else \
        torch.where(ql.mask, weight.detach().to(torch.float64), 0.0)
    x_scale, y_scale, req_m, req_s, x_q = _calibrate(pruned, bias, calib, seed, k, out_bits,
                                                      k0)
    bias_q = _bias_units(bias, k0, x_scale)

    stream_bytes = stream_block_bytes(geom, config, k, group, formats, nm)

    def bias_layout(rows):
        return tile_layout(rows=rows, k=group, group=group, wfmt=bias_wf, chains=chains,
                           lanes=config.lanes, bias=True, align=wb)

    plan = plan_stream(n, k, config, out_bits=out_bits, max_tile_bytes=max_tile_bytes,
                       tile_bytes=stream_bytes,
                       bias_layout=bias_layout if bias is not None else None)
    # Channel c's memory holds slice c's stream of every tile; channel 0's also the input,
    # the output and the bias tiles.
    in_addr = 0
    out_addr = _up(k, wb)
    addr = [out_addr + _up(n * ob, wb)] + [0] * (S - 1)    # next free byte per channel

    def place(c, nbytes):
        at = addr[c]
        addr[c] += nbytes
        return at

    tiles, blobs = [], []                       # blobs: (channel, addr, bytes)
    for t in plan.tiles:
        r0, rows = t["row0"], t["rows"]
        entry, packed = place_stream_block(geom, config, q, s16, tags, row0=r0, rows=rows,
                                           group=group, sparsity=sparsity, smin=smin,
                                           place=place)
        blobs += packed
        t["streams"] = entry["streams"]
        if t["bias"]:                           # the block's bias tile after its streams
            bblob = pack_tile(t["layout"], torch.zeros((rows, group), dtype=torch.int64),
                              smin.repeat(rows, 1), bias_q[r0:r0 + rows])
            t["bias_addr"] = entry["bias_addr"] = place(0, len(bblob))
            entry["bias_nbytes"] = len(bblob)
            blobs.append((0, t["bias_addr"], bblob))
        tiles.append(entry)
    offsets = channel_layout(addr, config)
    image = bytearray(offsets[-1] + addr[-1])
    image[in_addr:in_addr + k] = x_q.numpy().astype(np.int8).tobytes()
    for c, a, blob in blobs:
        image[offsets[c] + a:offsets[c] + a + len(blob)] = blob

    words = _schedule(plan, config, wf=WeightFormat.STREAM, group=group, k=k, n=n, k0=k0,
                      req_m=req_m, req_s=req_s, out_bits=out_bits, in_addr=in_addr,
                      out_addr=out_addr, stream=True)
    program = Program(words, config.config_hash_bytes)
    counts = {format_spec(int(v)).enum_name.lower(): int(c)
              for v, c in zip(*np.unique(tags, return_counts=True))}
    stream_bytes_total = sum(st["nbytes"] for t in tiles for st in t["streams"])
    manifest = {
        "format": FOLDER_FORMAT, "isa_version": ISA_VERSION, "config": config.name,
        "config_hash": config.config_hash, "program": "program.afp", "image": "weights.bin",
        "image_bytes": len(image), "channel_offsets": offsets,
        "input": {"addr": in_addr, "shape": [k], "scale": x_scale},
        "output": {"addr": out_addr, "shape": [n], "bits": out_bits, "scale": y_scale},
        "layers": [{"name": "linear", "n": n, "k": k, "wformat": label, "stream": True,
                    "sparsity": sparsity, "formats": counts,
                    "candidates": [t.name.lower() for t in formats],
                    "weight_mse": weight_mse,
                    "stream_bits": stream_bits(geom, tags, group, nm, k // group, q),
                    "stream_bytes": stream_bytes_total, "group": group, "k0": k0,
                    "req_m": req_m, "req_s": req_s, "out_bits": out_bits,
                    "bias": bias is not None, "bias_wformat": bias_wf.name.lower(),
                    "tiles": tiles}],
    }
    title = (f"linear {n} x {k} stream {label} {sparsity} g{group} -> int{out_bits}, config "
             f"{config.name} ({config.config_hash}), {len(words)} instructions")
    write_folder(out_dir, {
        "weights.bin": bytes(image),
        "program.afp": program.to_bytes(),
        "program.s": listing(words, title).encode(),
        "manifest.json": (json.dumps(manifest, indent=1) + "\n").encode(),
    })
    return manifest


def _schedule(plan: LinearPlan, config: AccelConfig, *, wf, group, k, n, k0, req_m, req_s,
              out_bits, in_addr, out_addr, stream: bool = False) -> list[int]:
    """Emit the instruction words of the tiled GEMV (see the module docstring) in program
    order through :class:`compiler.schedule.Scheduler`, whose tokens follow from what each
    instruction reads and writes."""
    wb = config.word_bytes
    ob = out_bits // 8
    slots, slot_w = plan.slots, plan.slot_bytes
    half_o = config.buffers.out_bytes // 2
    tiles = plan.tiles
    T = len(tiles)
    gr = plan.group_rows
    group_of = [t["row0"] // gr for t in tiles]
    last_of_group = {g: i for i, g in enumerate(group_of)}
    sched = Scheduler()
    requant = {"group": group, "m": 1, "k0": k0, "req_m": req_m, "req_s": req_s,
               "out_fmt": _OUT_FMT[out_bits]}

    def load_tile(i):
        t = tiles[i]
        slot = (i % slots) * slot_w
        if not stream:
            load_wgt_tile(sched, config, slot, t["addr"], t["layout"].nbytes,
                          lambda j: j % config.memory.channels)
            return
        # The stream is a FIFO to the decode unit: its loads touch no buffer range (the MV
        # takes the words as they come); only a bias tile in a WGT slot does.
        if t["bias"]:
            load_wgt_tile(sched, config, slot, t["bias_addr"], t["layout"].nbytes,
                          lambda j: 0)
        for st in t["streams"]:             # each slice's share from its channel
            sched.add(Opcode.LD, reads=[mem(st["addr"], st["nbytes"])], buf=Buffer.WSTREAM,
                      channel=st["channel"], buf_addr=0, dram_addr=st["addr"],
                      nbytes=st["nbytes"], count=1, dram_stride=st["nbytes"])

    # Tiles whose loads run ahead of the MVs. A streamed load on a channel waits while the
    # channel's previous stream is undrained (its slice's FIFO full until that tile's MV
    # runs), and the loads behind it wait in the LOAD queue: the MV must still find room
    # to be dispatched, so the later tiles' loads queued ahead of it stay within
    # `instr_queue_depth - 1` (a WGT tile's loads never wait for a consumer). One tile
    # ahead is always safe: each channel's reader takes its load of that tile at once.
    ahead = slots
    if stream:
        per_tile = config.memory.channels + (1 if any(t["bias"] for t in tiles) else 0)
        ahead = max(1, min(slots, (config.instr_queue_depth - 1) // per_tile))
    act = _up(k, wb)
    sched.add(Opcode.LD, reads=[mem(in_addr, act)], writes=[span(Buffer.ACT, 0, act)],
              buf=Buffer.ACT, channel=0, buf_addr=0, dram_addr=in_addr, nbytes=act, count=1,
              dram_stride=act)
    for i in range(min(ahead, T)):
        load_tile(i)
    for i, t in enumerate(tiles):
        g = group_of[i]
        obuf = (g % 2) * half_o + (t["row0"] - g * gr) * ob
        out = [span(Buffer.OUT, obuf, t["rows"] * ob)]
        slot = (i % slots) * slot_w
        if stream:
            if t["bias"]:       # the accumulators start from the bias tile's bias
                box = {**t, "cols": group, "nbytes": t["layout"].nbytes}
                mv = wgt_tile_fields(box, k, slot=slot, act=0, obuf_addr=obuf, writes=out,
                                     wfmt=t["layout"].wfmt, bias=1, **requant)
                mv["reads"].append(span(Buffer.ACT, 0, group))
                sched.add(Opcode.MV, **mv)
            sched.add(Opcode.MV, reads=[span(Buffer.ACT, 0, k)], writes=out,
                      wfmt=WeightFormat.STREAM, sparsity=Sparsity.DENSE, rows=t["rows"], k=k,
                      wbuf_addr=0, abuf_addr=0, obuf_addr=obuf, acc_init=int(not t["bias"]),
                      final=1, bias=0, **requant)
        else:
            mv = wgt_tile_fields({**t, "nbytes": t["layout"].nbytes}, k, slot=slot, act=0,
                                 obuf_addr=obuf, writes=out, wfmt=wf, bias=int(t["bias"]),
                                 **requant)
            mv["reads"].append(span(Buffer.ACT, t["col0"], t["cols"]))
            sched.add(Opcode.MV, **mv)
        if i == last_of_group[g]:
            rows = min(gr, n - g * gr)
            nb = _up(rows * ob, wb)
            sched.add(Opcode.ST, reads=[span(Buffer.OUT, (g % 2) * half_o, nb)],
                      writes=[mem(out_addr + g * gr * ob, nb)], buf=Buffer.OUT,
                      channel=0 if stream else g % config.memory.channels,
                      buf_addr=(g % 2) * half_o, dram_addr=out_addr + g * gr * ob, nbytes=nb,
                      count=1, dram_stride=nb)
        if i + ahead < T:
            load_tile(i + ahead)
    sched.add(Opcode.SYS, op=SysOp.HALT)
    return sched.words()
