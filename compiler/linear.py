"""Compile one quantized linear layer (GEMV) into an output folder.

The layer is a one-node graph (:func:`compiler.ir.build_linear_graph`) run through named
passes (:data:`LINEAR_STEPS`, :func:`linear_pipeline`; ``airfoil compile --stop-after
STEP``): ``validate`` (the LLM compiler's), ``quantize`` the weights in groups
(:func:`compiler.passes.quantize_linear`, the LLM compiler's quantizer), ``calibrate``
static activation and output scales, ``plan`` the tiles (:mod:`compiler.tiling`, the LLM
lowering's planner), ``pack`` the memory image (streamed row blocks by
:func:`compiler.streams.place_stream_block`, as the LLM lowering packs them),
``schedule`` the instruction stream (:func:`compiler.lower_linear.lower_linear`, the LLM
lowering's lowering of a linear node, with static activation scales, OUT halves and the
bias in the tiles), and ``emit`` ``program.afp``,
``weights.bin``, ``manifest.json`` and ``program.s``.

Schedule (VTA style; the tokens follow from the buffer and memory ranges each instruction
reads and writes, :class:`compiler.schedule.Scheduler`)::

    LD ACT x                                   the whole input vector, once
    LD WGT tiles 0 .. S-1                      S = 4, 3 or 2 (double buffering) WGT slots
    for each tile t:
        MV t            wait LOAD (+ STORE before reusing an OUT half), release LOAD
                        (for the load of tile t+S) and STORE (at the end of an OUT half)
        ST OUT half     wait MATRIX, release MATRIX       (when an OUT half is full)
        LD WGT tile t+S wait MATRIX (MV t freed the slot), release MATRIX
    SYS HALT

Every tile fits a WGT slot; the slots are the LLM lowering's choice
(:func:`compiler.tiling.plan_wgt_slots`: the fewest cycles the cycle model estimates for
the tiles' loads and matrix instructions -- more slots let LOAD run further ahead, hiding
the memory latency of one tile behind the others; fewer, bigger slots cut the tiles, each
paying the MATRIX unit's drain -- then the fewest tiles, then the most slots). A tile
larger than ``max_burst`` words is loaded as one LD per memory channel (word-aligned
slices; only the last releases the MATRIX token, completions being in order).

A tile is a block of output rows (a multiple of ``chains``) times a chunk of K (all of K
when ``chains`` rows of it fit a slot, else several chunks accumulated with ``acc_init`` and
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
        [MV bias tile t]    acc_init=1, final=0, bias=1: wait LOAD
        MV STREAM t     wait LOAD (the activations, tile 0 without a bias tile) and
                        STORE (before reusing an OUT half); release LOAD (for the bias
                        tile t+4) and STORE (at the end of an OUT half)
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
from dataclasses import dataclass, replace

import numpy as np
import torch

from airfoil.config import AccelConfig
from airfoil.errors import CompileError
from airfoil.folder import FOLDER_FORMAT
from airfoil.formats import (act_scale, fp16_fixed, pack_tile, qmax, quantize_act,
                             requant_params, weight_format)
from airfoil.isa import ISA_VERSION, Buffer, Opcode, SysOp, WeightFormat
from airfoil.packing import (DEFAULT_MIXED, MIXED_PRESETS, core_stream_geometry,
                             format_spec, nm_code, record_tag)
from airfoil.program import Program
from airfoil.wgt_banks import WgtBanks

from .asm import listing
from .ir import Graph, Pass, Pipeline, build_linear_graph
from .output import write_folder
from .calibrate import CalibrationStats
from .llm_recipe import (LINEAR_DEFAULT_RECIPE, OUT_FORMATS, LayerQuant, LlmRecipe,
                         check_layer_config, layer_rule, load_llm_recipe)
from .passes import StreamShape, Validate, quantize_node
from .lower_linear import Arithmetic, Loading, OutHalves, Vectors, lower_linear
from .schedule import Scheduler, mem, span
from .tiling import (TiledLayer, plan_layer_slots, slot_bytes, stream_rows, tile_boxes)
from .streams import (MAX_STREAM_BYTES, channel_layout, least_scale, pack_wgt_tile,
                      place_stream_block, stream_bits, wgt_tile_layout)

__all__ = ["compile_linear", "linear_pipeline", "linear_options", "LinearOptions",
           "LINEAR_STEPS", "step_summary", "layer_quant", "LAYER", "plan_linear",
           "plan_stream", "LinearPlan", "MIN_TILES", "CALIB_ROWS", "STREAM_SLOTS"]

#: The planner makes tiles small enough for at least this many tiles (when N allows),
#: so loading the first tile is a small part of the run.
MIN_TILES = 8
#: Rows of the random calibration sample drawn when no calibration data is given.
CALIB_ROWS = 8

#: Tiles the LOAD unit streams ahead of MATRIX (streamed weights).
STREAM_SLOTS = 4

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
        Weight tiles the WGT buffer holds at once (:func:`compiler.tiling.plan_wgt_slots`);
        the LOAD unit runs ``slots - 1`` tiles ahead of MATRIX.
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
        Upper bound on a tile's bytes below a WGT slot (used to force K-splits).

    The LLM lowering's planner (:func:`compiler.tiling.plan_layer_slots`: of the slot
    counts whose slot holds ``chains`` rows x one group, the one whose tiles take the
    fewest cycles in the cycle model, then the fewest tiles, then the most slots; the
    tiles :meth:`compiler.tiling.TiledLayer.tiles`), with this program's constraints: the
    bias section and the OUT halves.
    """
    wf = weight_format(wformat)
    _check_act(k, config)
    # Tiles of at most a slot (and max_tile_bytes); an OUT half holds a word-aligned whole
    # number of them.
    limit, accept, group_rows_of = _out_halves(n, config, out_bits)
    layer = TiledLayer(n, k, group, wf, bias=bias, limit=limit, accept=accept,
                       cap=max_tile_bytes)
    slots, slot_bytes = plan_layer_slots(config, [layer])
    boxes, rows_per_tile, kc = layer.tiles(config, slot_bytes)
    assert rows_per_tile, "chains rows always fit (checked above)"
    tiles = []
    for row0, rows, c0, cols in boxes:
        has_bias = bias and c0 == 0
        lay = wgt_tile_layout(config, rows, cols, group=group, wfmt=wf, bias=has_bias)
        tiles.append({"row0": row0, "rows": rows, "col0": c0, "cols": cols,
                      "bias": has_bias, "layout": lay})
    chunks = [(c0, min(kc, k - c0)) for c0 in range(0, k, kc)]
    return LinearPlan(rows_per_tile, chunks, group_rows_of(rows_per_tile), tiles, slots,
                      slot_bytes)


def _check_act(k: int, config: AccelConfig) -> None:
    """Refuse a K the ACT buffer does not hold (the input vector loads once)."""
    if _up(k, config.word_bytes) > config.buffers.act_bytes:
        raise CompileError(f"K={k} does not fit the ACT buffer ({config.buffers.act_bytes} "
                           f"bytes in config {config.name!r})")


def _out_halves(n: int, config: AccelConfig, out_bits: int):
    """The single layer's OUT halves as constraints of the tile planner
    (:func:`compiler.tiling.row_block`): ``(limit, accept, group_rows)`` -- at most the
    rows of :data:`MIN_TILES` tiles, and :meth:`compiler.lower_linear.OutHalves.fit`'s
    rows an OUT half holds a word-aligned whole number of and rows of one OUT half."""
    accept, group_rows = OutHalves.fit(config, out_bits)
    chains = config.chains
    return max(chains, _up(-(-n // MIN_TILES), chains)), accept, group_rows


def plan_stream(n: int, k: int, config: AccelConfig, *, out_bits: int, group: int,
                formats, nm: int, max_tile_bytes: int | None = None,
                bias_layout=None) -> LinearPlan:
    """Tiles of an ``n x k`` layer of streamed weights: row blocks times all of K, as the
    LLM lowering's (:func:`compiler.tiling.stream_rows`: a block's stream on one channel
    within one LD and ``max_tile_bytes``), an OUT half holding a whole number of them.

    ``bias_layout(rows)``: the :class:`airfoil.formats.TileLayout` of a bias tile (layers
    with a bias), which must fit one of :data:`STREAM_SLOTS` WGT slots.
    """
    _check_act(k, config)
    slot = slot_bytes(config, STREAM_SLOTS)
    bsize = (lambda r: bias_layout(r).nbytes) if bias_layout else (lambda r: 0)
    if bsize(config.chains) > slot:
        raise CompileError(f"the bias tile of {config.chains} rows ({bsize(config.chains)} "
                           f"bytes) does not fit a quarter of the WGT buffer ({slot} bytes)")
    limit, accept, group_rows = _out_halves(n, config, out_bits)
    rows_per_tile = stream_rows(config, n, k, group=group, formats=formats, nm=nm,
                                cap=max_tile_bytes or MAX_STREAM_BYTES, limit=limit,
                                accept=accept, fits=lambda r: bsize(r) <= slot)
    tiles = [{"row0": r0, "rows": rows, "col0": 0, "cols": k,
              "bias": bias_layout is not None,
              "layout": bias_layout(rows) if bias_layout else None}
             for r0, rows, _, _ in tile_boxes(n, k, rows_per_tile, k)]
    return LinearPlan(rows_per_tile, [(0, k)], group_rows(rows_per_tile), tiles,
                      STREAM_SLOTS, slot)


def _check_args(weight, bias):
    """The layer's tensors (the recipe's check, :func:`compiler.llm_recipe.
    check_layer_config`, does its quantization)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or \
            not weight.is_floating_point():
        raise CompileError(f"weight must be a 2-D float tensor (N x K), not "
                           f"{getattr(weight, 'shape', type(weight).__name__)}")
    n, k = weight.shape
    if n < 1 or k < 1:
        raise CompileError(f"weight shape {n} x {k} is empty")
    if not bool(torch.isfinite(weight).all()):
        raise CompileError("weight holds infinite or NaN values")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (n,):
            raise CompileError(f"bias must be a tensor of shape ({n},), not "
                               f"{tuple(getattr(bias, 'shape', ()))}")
        if not bool(torch.isfinite(bias).all()):
            raise CompileError("bias holds infinite or NaN values")


def _calib_rows(calib, seed, k) -> torch.Tensor:
    """The calibration sample as ``M x K`` float64 rows: ``calib``, or :data:`CALIB_ROWS`
    standard-normal rows drawn with ``seed``."""
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
    return calib


def _calibrate(weight, bias, calib, seed, k, out_bits, k0):
    calib = _calib_rows(calib, seed, k)
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


#: The steps of a single layer's compile, in order (:func:`linear_pipeline`): each a
#: :class:`compiler.ir.Pass` on the one-node graph (:func:`compiler.ir.build_linear_graph`)
#: whose result the later steps read from the graph (``qweights``, ``meta``); ``airfoil
#: compile --stop-after STEP`` stops after one and prints what it made.
LINEAR_STEPS = ("validate", "quantize", "calibrate", "plan", "pack", "schedule", "emit")


@dataclass(frozen=True)
class LinearOptions:
    """The options of one layer's compile, checked against its config
    (:func:`linear_options`).

    Members
    -------
    config : AccelConfig
    quant : LayerQuant
        The layer's quantization, resolved from the recipe's rules (:data:`LAYER` is the
        layer's name) and checked against the config.
    wformat : str
        The WGT tiles' format, or the streamed layer's label (``int2``, ``bitmod3``,
        ``mixed``, ...).
    out_bits : int
        Result width (the recipe's ``output`` or ``out_format``; default 8).
    calib, seed, max_tile_bytes
        As :func:`compile_linear` takes them.
    """

    config: AccelConfig
    quant: LayerQuant
    wformat: str
    out_bits: int
    calib: object
    seed: int
    max_tile_bytes: int | None

    @property
    def stream(self) -> bool:
        """Streamed weights (``LD WSTREAM`` + ``MV STREAM``) rather than WGT tiles."""
        return self.quant.streamed

    @property
    def group(self) -> int:
        return self.quant.group

    @property
    def sparsity(self) -> str:
        return self.quant.sparsity

    @property
    def formats(self) -> tuple:
        """A streamed layer's record tags (the candidates of a per-record choice); empty
        for WGT tiles."""
        return tuple(record_tag(f) for f in self.quant.formats) if self.stream else ()

    @property
    def nm(self) -> int:
        """A streamed layer's N:M code (:func:`airfoil.packing.nm_code`)."""
        return nm_code(self.quant.sparsity)

    @property
    def bias_wformat(self) -> WeightFormat:
        """A streamed layer's bias tiles' format: INT4 when built, else the config's first
        tile format."""
        tiles = self.config.tile_formats
        return weight_format("int4" if "int4" in tiles or not tiles else tiles[0])


#: The name of the one-node graph's layer (:func:`compiler.ir.build_linear_graph`), which
#: a recipe's rules match.
LAYER = "linear"


def layer_quant(config: AccelConfig, recipe=None, **options) -> LayerQuant:
    """The quantization of one layer on ``config``: the recipe's rules (default
    :data:`compiler.llm_recipe.LINEAR_DEFAULT_RECIPE`) and then a rule of ``options``
    (:func:`compiler.llm_recipe.layer_rule`; ``wformat``, ``group``, ``sparsity``,
    ``mixed_formats``, ``block_density``, ``mixed_max_error``, ``stream``, ``method``),
    resolved for :data:`LAYER` as an LLM's layers are and checked against the config
    (:func:`compiler.llm_recipe.check_layer_config`)."""
    recipe = _recipe(recipe)
    built = config.stream_formats
    rule = layer_rule(default_mixed=DEFAULT_MIXED if all(c in built for c in DEFAULT_MIXED)
                      else built, **options)
    if len(rule) > 1:
        recipe = replace(recipe, rules=recipe.rules + (rule,),
                         source=f"{recipe.source} and the options")
    lq = recipe.resolve([LAYER])[LAYER]
    check_layer_config("", config, formats=lq.formats, group=lq.group, sparsity=lq.sparsity,
                       streamed=lq.streamed)
    return lq


def _recipe(recipe) -> LlmRecipe:
    if isinstance(recipe, LlmRecipe):
        return recipe
    return load_llm_recipe(LINEAR_DEFAULT_RECIPE if recipe is None else recipe)


def _label(lq: LayerQuant) -> str:
    """The manifest's ``wformat``: the one format, the preset a choice is, or ``mixed``."""
    if len(lq.formats) == 1:
        return lq.formats[0]
    return next((p for p, fs in MIXED_PRESETS.items() if tuple(fs) == lq.formats), "mixed")


def linear_options(weight, bias, config, *, recipe=None, out_format=None, calib=None, seed=0,
                   max_tile_bytes=None, **quant) -> LinearOptions:
    """Check :func:`compile_linear`'s arguments (one-line :class:`CompileError` naming what
    is accepted) and resolve them: the layer's :class:`LayerQuant` (:func:`layer_quant`
    of ``recipe`` and the options ``quant``), its result width."""
    if not isinstance(config, AccelConfig):
        raise TypeError(f"config must be an AccelConfig, not {config!r}")
    recipe = _recipe(recipe)
    lq = layer_quant(config, recipe, **quant)
    out = out_format if out_format is not None else recipe.output or "int8"
    if out not in OUT_FORMATS:
        raise CompileError(f"output format {out!r} is not accepted (accepted: "
                           f"{', '.join(OUT_FORMATS)})")
    _check_args(weight, bias)
    return LinearOptions(config, lq, _label(lq), OUT_FORMATS[out], calib, seed,
                         max_tile_bytes)


class _LayerStep(Pass):
    """A step of :func:`linear_pipeline`: reads the options and the one-node graph's
    linear node."""

    def __init__(self, opts: LinearOptions):
        self.opts = opts

    @staticmethod
    def reduction(graph: Graph) -> int:
        """The quantized layer's reduction length: K padded with zero columns to a whole
        group (:func:`compiler.passes.quantize_linear`); the input's K values are followed
        by zeros up to it."""
        (node,) = graph.by_op("linear")
        return int(graph.qweights[node.name].q.shape[1])

    @staticmethod
    def layer(graph: Graph):
        """``(node, float weight, float bias or None)`` of the graph's linear node."""
        (node,) = graph.by_op("linear")
        bias = graph.params[node.attrs["bias"]] if "bias" in node.attrs else None
        return node, graph.params[node.attrs["weight"]], bias


class QuantizeLayer(_LayerStep):
    """Quantize the layer's weights by the LLM compiler's quantizer
    (:func:`compiler.passes.quantize_node`: the recipe's method, a calibrated one on the
    Gram matrix of the calibration sample): ``qweights[node]``."""

    name = "quantize"

    def apply(self, graph: Graph) -> Graph:
        g, o = graph.copy(), self.opts
        node, weight, _ = self.layer(g)
        if o.quant.method != "rtn":
            g.meta["calibration"] = CalibrationStats.of_rows(
                {node.inputs[0]: _calib_rows(o.calib, o.seed, weight.shape[1])})
        g.qweights[node.name] = quantize_node(g, node, o.quant, StreamShape.of(o.config))
        g.meta.pop("calibration", None)
        return g


class CalibrateScales(_LayerStep):
    """Static scales from the calibration sample: ``meta["scales"]`` (``k0``, ``x_scale``,
    ``y_scale``, ``req_m``, ``req_s``), the folder's default ``meta["input"]`` (the
    sample's first row, quantized) and ``meta["bias_units"]`` (int32 accumulator units)."""

    name = "calibrate"

    def apply(self, graph: Graph) -> Graph:
        g, o = graph.copy(), self.opts
        node, weight, bias = self.layer(g)
        ql = g.qweights[node.name]
        _, kexp = fp16_fixed(ql.scales)
        k0 = int(kexp.min())
        # The weights stored before rounding: the float ones where pruning kept.
        kept = weight if ql.mask is None else \
            torch.where(ql.mask, weight.detach().to(torch.float64), 0.0)
        x_scale, y_scale, req_m, req_s, x_q = _calibrate(kept, bias, o.calib, o.seed,
                                                          weight.shape[1], o.out_bits, k0)
        g.meta["scales"] = {"k0": k0, "x_scale": x_scale, "y_scale": y_scale,
                            "req_m": req_m, "req_s": req_s}
        g.meta["input"] = x_q
        g.meta["bias_units"] = _bias_units(bias, k0, x_scale)
        return g


class PlanTiles(_LayerStep):
    """Tile the layer for the config (:func:`plan_linear` or :func:`plan_stream`, both on
    :mod:`compiler.tiling`): ``meta["plan"]``, a :class:`LinearPlan`."""

    name = "plan"

    def apply(self, graph: Graph) -> Graph:
        g, o = graph.copy(), self.opts
        _, weight, bias = self.layer(g)
        n, k = weight.shape[0], self.reduction(g)
        cfg = o.config
        if not o.stream:
            g.meta["plan"] = plan_linear(n, k, cfg, wformat=o.wformat, group=o.group,
                                         out_bits=o.out_bits, bias=bias is not None,
                                         max_tile_bytes=o.max_tile_bytes)
            return g

        def bias_layout(rows):
            return wgt_tile_layout(cfg, rows, o.group, group=o.group, wfmt=o.bias_wformat,
                                   bias=True)

        g.meta["plan"] = plan_stream(
            n, k, cfg, out_bits=o.out_bits, group=o.group, formats=o.formats, nm=o.nm,
            max_tile_bytes=o.max_tile_bytes,
            bias_layout=bias_layout if bias is not None else None)
        return g


class PackImage(_LayerStep):
    """The memory image: the input at 0, the output after it, then the tiles (WGT tiles
    packed, or each row block's streams, one per channel, and its bias tile):
    ``meta["image"]``, ``meta["layout"]`` (``in_addr``, ``out_addr``, ``channel_offsets``,
    ``tiles``: the manifest's entries); the plan's tiles get their addresses."""

    name = "pack"

    def apply(self, graph: Graph) -> Graph:
        g, o = graph.copy(), self.opts
        node, weight, _ = self.layer(g)
        ql, plan, bias_q = g.qweights[node.name], g.meta["plan"], g.meta["bias_units"]
        n, k = weight.shape
        wb = o.config.word_bytes
        in_addr, out_addr = 0, _up(self.reduction(g), wb)    # the padding columns' zeros
        top = out_addr + _up(n * o.out_bits // 8, wb)
        pack = self._streams if o.stream else self._tiles
        tiles, blobs, offsets, size = pack(ql, plan, bias_q, top)
        image = bytearray(size)
        x_q = g.meta["input"]
        image[in_addr:in_addr + k] = x_q.numpy().astype(np.int8).tobytes()
        for c, a, blob in blobs:
            image[offsets[c] + a:offsets[c] + a + len(blob)] = blob
        g.meta["image"] = bytes(image)
        g.meta["layout"] = {"in_addr": in_addr, "out_addr": out_addr,
                            "channel_offsets": offsets, "tiles": tiles}
        return g

    def _tiles(self, ql, plan, bias_q, addr):
        """WGT tiles one after the other in one image every channel sees whole."""
        o, group = self.opts, self.opts.group
        tiles, blobs = [], []
        for t in plan.tiles:
            r0, c0 = t["row0"], t["col0"]
            blob = pack_wgt_tile(t["layout"], ql.q, ql.scales, (r0, t["rows"], c0, t["cols"]),
                                 group, bias_q if t["bias"] else None)
            nbytes = len(blob)
            assert nbytes == t["layout"].nbytes and nbytes % o.config.word_bytes == 0
            blob = WgtBanks.of(o.config).tile_image(blob, o.config.word_bytes)
            t["addr"] = addr
            tiles.append({"row0": r0, "rows": t["rows"], "addr": addr, "nbytes": nbytes,
                          "col0": c0, "cols": t["cols"]})
            blobs.append((0, addr, blob))
            addr += len(blob)
        channel_layout([addr], o.config)
        return tiles, blobs, [0] * o.config.memory.channels, addr

    def _streams(self, ql, plan, bias_q, top):
        """Channel ``c``'s memory holds slice ``c``'s stream of every row block; channel
        0's also the input, the output and the bias tiles."""
        o, group = self.opts, self.opts.group
        geom = core_stream_geometry(o.config)
        tags = _record_tags(ql, geom, o.config)
        smin = least_scale(ql.scales)
        addr = [top] + [0] * (o.config.slices - 1)     # next free byte per channel

        def place(c, nbytes):
            at = addr[c]
            addr[c] += nbytes
            return at

        tiles, blobs = [], []
        for t in plan.tiles:
            r0, rows = t["row0"], t["rows"]
            entry, packed = place_stream_block(geom, o.config, ql.q, ql.scales, tags,
                                               row0=r0, rows=rows, group=group,
                                               sparsity=o.sparsity, smin=smin, place=place)
            blobs += packed
            t["streams"] = entry["streams"]
            if t["bias"]:                       # the block's bias tile after its streams
                bblob = pack_tile(t["layout"], torch.zeros((rows, group), dtype=torch.int64),
                                  smin.repeat(rows, 1), bias_q[r0:r0 + rows])
                image = WgtBanks.of(o.config).tile_image(bblob, o.config.word_bytes)
                t["bias_addr"] = entry["bias_addr"] = place(0, len(image))
                entry["bias_nbytes"] = len(bblob)
                blobs.append((0, t["bias_addr"], image))
            tiles.append(entry)
        offsets = channel_layout(addr, o.config)
        return tiles, blobs, offsets, offsets[-1] + addr[-1]


def _record_tags(ql, geom, config) -> np.ndarray:
    """A streamed layer's record tags, one per (record rows, group), with the records of
    the padding rows up to a whole batch of the core (the first format)."""
    tags = ql.formats[::geom.rows].numpy()
    pad = _up(ql.shape[0], config.chains) // geom.rows - tags.shape[0]
    return np.concatenate([tags, np.full((pad, tags.shape[1]), tags[0, 0])]) if pad else tags


class ScheduleProgram(_LayerStep):
    """The instruction stream (:func:`_schedule`, on :class:`compiler.schedule.
    Scheduler`): ``meta["words"]``."""

    name = "schedule"

    def apply(self, graph: Graph) -> Graph:
        g, o = graph.copy(), self.opts
        node, weight, _ = self.layer(g)
        n, k = weight.shape[0], self.reduction(g)
        sc, lay = g.meta["scales"], g.meta["layout"]
        g.meta["words"] = _schedule(
            g.meta["plan"], o.config,
            wf=WeightFormat.STREAM if o.stream else weight_format(o.wformat),
            group=o.group, k=k, n=n, k0=sc["k0"], req_m=sc["req_m"], req_s=sc["req_s"],
            out_bits=o.out_bits, in_addr=lay["in_addr"], out_addr=lay["out_addr"],
            bias="bias" in node.attrs, stream=o.stream)
        return g


class EmitFolder(_LayerStep):
    """Write ``program.afp``, ``program.s``, ``weights.bin`` and ``manifest.json`` into
    ``out_dir`` (atomically): ``meta["manifest"]``."""

    name = "emit"

    def __init__(self, opts: LinearOptions, out_dir):
        super().__init__(opts)
        self.out_dir = out_dir

    def apply(self, graph: Graph) -> Graph:
        g, o = graph.copy(), self.opts
        node, weight, bias = self.layer(g)
        n, k = weight.shape
        cfg, sc, lay, words = o.config, g.meta["scales"], g.meta["layout"], g.meta["words"]
        kp = self.reduction(g)
        layer = {"n": n, "k": kp, "k_in": k, "wformat": o.wformat, "streamed": o.stream,
                 "group": o.group, "k0": sc["k0"], "req_m": sc["req_m"], "req_s": sc["req_s"],
                 "out_bits": o.out_bits, "bias": bias is not None, "tiles": lay["tiles"]}
        kind = f"{o.wformat} g{o.group}"
        if o.stream:
            layer = {"n": n, "k": kp, "k_in": k, "wformat": o.wformat, "streamed": True,
                     **self._stream_facts(g.qweights[node.name], weight, lay["tiles"]),
                     **{key: v for key, v in layer.items()
                        if key not in ("n", "k", "k_in", "wformat", "streamed")},
                     "bias_wformat": o.bias_wformat.name.lower()}
            layer["tiles"] = layer.pop("tiles")
            kind = f"stream {o.wformat} {o.sparsity} g{o.group}"
        image = g.meta["image"]
        manifest = {
            "format": FOLDER_FORMAT, "isa_version": ISA_VERSION, "config": cfg.name,
            "config_hash": cfg.config_hash, "program": "program.afp", "image": "weights.bin",
            "image_bytes": len(image), "channel_offsets": lay["channel_offsets"],
            "input": {"addr": lay["in_addr"], "shape": [k], "scale": sc["x_scale"]},
            "output": {"addr": lay["out_addr"], "shape": [n], "bits": o.out_bits,
                       "scale": sc["y_scale"]},
            "model": {"linears": {node.name: layer}},
        }
        title = (f"linear {n} x {k} {kind} -> int{o.out_bits}, config {cfg.name} "
                 f"({cfg.config_hash}), {len(words)} instructions")
        write_folder(self.out_dir, {
            "weights.bin": image,
            "program.afp": Program(words, cfg.config_hash_bytes).to_bytes(),
            "program.s": listing(words, title).encode(),
            "manifest.json": (json.dumps(manifest, indent=1) + "\n").encode(),
        })
        g.meta["manifest"] = manifest
        return g

    def _stream_facts(self, ql, weight, tiles) -> dict:
        """A streamed layer's manifest facts: records per format, candidates, the stored
        weights' mean squared error (pruning included), its stream bits and bytes."""
        o = self.opts
        geom = core_stream_geometry(o.config)
        tags = _record_tags(ql, geom, o.config)
        k = ql.q.shape[1]
        deq = ql.q.to(torch.float64) * \
            ql.scales.to(torch.float64).repeat_interleave(o.group, dim=1)
        deq = deq[:, :weight.shape[1]]                  # the padding columns left out
        return {"sparsity": o.sparsity,
                "formats": {format_spec(int(v)).enum_name.lower(): int(c)
                            for v, c in zip(*np.unique(tags, return_counts=True))},
                "candidates": [t.name.lower() for t in o.formats],
                "weight_mse": float(((deq - weight.detach().to(torch.float64)) ** 2).mean()),
                "stream_bits": stream_bits(geom, tags, o.group, o.nm, k // o.group, ql.q),
                "stream_bytes": sum(st["nbytes"] for t in tiles for st in t["streams"])}


def linear_pipeline(opts: LinearOptions, out_dir=None) -> Pipeline:
    """The steps of :data:`LINEAR_STEPS` (``emit`` writes ``out_dir``)."""
    return Pipeline([("validate", Validate()), ("quantize", QuantizeLayer(opts)),
                     ("calibrate", CalibrateScales(opts)), ("plan", PlanTiles(opts)),
                     ("pack", PackImage(opts)), ("schedule", ScheduleProgram(opts)),
                     ("emit", EmitFolder(opts, out_dir))])


def step_summary(graph: Graph, step: str) -> str:
    """What step ``step`` of :data:`LINEAR_STEPS` made, as text: the layer, its quantized
    weights, its static scales, its tiles, its image, or the program's listing."""
    (node,) = graph.by_op("linear")
    n, k = graph.params[node.attrs["weight"]].shape
    bias = "with a bias" if "bias" in node.attrs else "without a bias"
    if step == "validate":
        return f"validate: one linear node, {n} x {k}, {bias}"
    if step == "quantize":
        ql = graph.qweights[node.name]
        kind = "stream records" if ql.streamed else f"int{ql.bits}"
        return (f"quantize: {n} x {k} weights as {kind}, {ql.scales.numel()} FP16 scales "
                f"(groups of {ql.group})")
    if step == "calibrate":
        return "calibrate: " + ", ".join(f"{key}={v}" for key, v in
                                         graph.meta["scales"].items())
    if step == "plan":
        plan = graph.meta["plan"]
        return (f"plan: {len(plan.tiles)} tiles of up to {plan.rows_per_tile} rows x "
                f"{', '.join(str(c) for _, c in plan.chunks)} of K, {plan.slots} WGT slots "
                f"of {plan.slot_bytes} bytes, OUT halves of {plan.group_rows} rows")
    if step == "pack":
        lay = graph.meta["layout"]
        return (f"pack: an image of {len(graph.meta['image'])} bytes, input at "
                f"{lay['in_addr']:#x}, output at {lay['out_addr']:#x}, channel offsets "
                f"{lay['channel_offsets']}")
    if step == "schedule":
        words = graph.meta["words"]
        return listing(words, f"schedule: {len(words)} instructions").rstrip("\n")
    return f"emit: {graph.meta['manifest']['image_bytes']} image bytes written"


def compile_linear(weight: torch.Tensor, bias: torch.Tensor | None, config: AccelConfig,
                   out_dir, *, stop_after: str | None = None, **options):
    """Quantize and compile one linear layer ``y = W x + b`` into ``out_dir``: the one-node
    graph (:func:`compiler.ir.build_linear_graph`) through :func:`linear_pipeline`.

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
    stop_after : str, optional
        A step of :data:`LINEAR_STEPS`: stop after it and return the graph (nothing is
        written before ``emit``).
    recipe : LlmRecipe or path, optional
        The quantization recipe (default :data:`compiler.llm_recipe.LINEAR_DEFAULT_RECIPE`:
        INT4, group 128, INT8 results): an LLM recipe whose rules match :data:`LAYER`,
        and its ``output`` section. The options below override it, as one more rule
        (:func:`layer_quant`).
    wformat : str
        Weight format: a WGT-tile format of the config (``int4``, ``int8``), a streamed
        one (``int2``, ``int3``, ``int6``, ``ovp``, a BitMoD FP format), ``bitmod4`` /
        ``bitmod3`` (BitMoD's per-record choice among its FP4 / FP3 variants) or ``mixed``
        (a per-record choice among ``mixed_formats``). Formats other than the WGT-tile ones
        are streamed through the decode unit (``LD WSTREAM`` + ``MV STREAM``); the BitMoD
        and INT6 formats must be in the config's ``weight_formats``.
    group : int
        Weights per FP16 group scale (one of the config's ``group_sizes``). A K it does
        not divide is padded with zero columns to a whole group (the manifest's layer
        ``k``; ``k_in`` and the input keep the layer's K, the input region's padding
        bytes are zeros).
    out_format : str
        ``int8``, ``int16`` or ``int32`` result (default: the recipe's ``output``, else
        ``int8``).
    calib : torch.Tensor, optional
        ``M x K`` float activations for static calibration (and the Gram matrix of a
        calibrated ``method``); default: ``CALIB_ROWS`` standard-normal rows drawn with
        ``seed``. Its first row, quantized, is the folder's default input.
    seed : int
        Seed of the random calibration sample.
    max_tile_bytes : int, optional
        Cap on a weight tile's bytes (forces K-splits in tests; with streamed weights,
        smaller row blocks).
    stream : bool, optional
        True streams a WGT-tile format through the decode unit; False asks for WGT tiles
        (refusing a layer that needs the decode unit).
    sparsity : str
        ``dense``, an N:M pattern (``1:4``, ``2:4``, ``2:8``, ``4:16``, ``8:16``) or
        ``block`` (k-steps of ``chains`` rows x ``lanes`` weights that are all zero are
        neither streamed nor computed); streamed.
    block_density : float
        ``sparsity="block"``: fraction of each record's k-steps kept, those of largest L2
        norm (``0 < d <= 1``; the default 1 skips only the k-steps already zero).
    mixed_formats : str or sequence of str, optional
        Candidates of ``wformat="mixed"`` (default :data:`airfoil.packing.DEFAULT_MIXED`,
        or every record format the config decodes if it lacks one of those), e.g.
        ``"int2,int4,int8"`` or ``"fp4_er_p,fp4_ea_n"``: each record (``chains`` rows x
        one group) takes the one :func:`airfoil.packing.mixed_choice` picks.
    mixed_max_error : float
        Candidates of several widths: a record takes the narrowest whose squared error is
        at most this fraction of its squared weights (0 to 1; default
        :data:`airfoil.packing.MIXED_MAX_REL_ERROR`).
    method : str
        ``rtn`` (default), ``gptq``, ``sparsegpt`` or ``awq`` (here round to nearest: AWQ's
        scaling folds into a model's producers), as a recipe's rules name them
        (:mod:`compiler.quant_algorithms`); a calibrated method reads the calibration
        sample's Gram matrix.

    Returns
    -------
    dict or Graph
        The manifest written to ``manifest.json``; the graph after ``stop_after`` when
        given.
    """
    opts = linear_options(weight, bias, config, **options)
    graph = linear_pipeline(opts, out_dir).run(build_linear_graph(weight, bias),
                                               until=stop_after)
    return graph if stop_after is not None else graph.meta["manifest"]


def _schedule(plan: LinearPlan, config: AccelConfig, *, wf, group, k, n, k0, req_m, req_s,
              out_bits, in_addr, out_addr, bias: bool, stream: bool = False) -> list[int]:
    """The instruction words of the tiled GEMV (see the module docstring): ``LD ACT`` of
    the input, the layer's one lowering (:func:`compiler.lower_linear.lower_linear`: static
    activation scales, ``out_bits`` results in OUT halves, the bias in the tiles), ``SYS
    HALT``."""
    wb = config.word_bytes
    tiles = plan.tiles
    if stream:
        tiles = [{**t, "bias_nbytes": t["layout"].nbytes, "bias_wfmt": t["layout"].wfmt}
                 if t["bias"] else t for t in tiles]
    else:
        tiles = [{**t, "nbytes": t["layout"].nbytes} for t in tiles]
    ahead = Loading.streams_ahead(config, plan.slots, bias) if stream else plan.slots
    sched = Scheduler()
    act = _up(k, wb)
    sched.add(Opcode.LD, reads=[mem(in_addr, act)], writes=[span(Buffer.ACT, 0, act)],
              buf=Buffer.ACT, channel=0, buf_addr=0, dram_addr=in_addr, nbytes=act, count=1,
              dram_stride=act)
    lower_linear(
        sched, config, tiles, k=k, streamed=stream, wfmt=wf, act=0,
        arith=Arithmetic(group, k0, out_bits, req_m=req_m, req_s=req_s,
                         bias="tiles" if bias else "none"),
        vectors=Vectors(),
        out=OutHalves(config, tiles, group_rows=plan.group_rows, n=n,
                      out_bytes=out_bits // 8, out_addr=out_addr, channel0=stream),
        loading=Loading(plan.slots, plan.slot_bytes,
                        lambda j: j % config.memory.channels, ahead=ahead,
                        channel_memories=True))
    sched.add(Opcode.SYS, op=SysOp.HALT)
    return sched.words()
