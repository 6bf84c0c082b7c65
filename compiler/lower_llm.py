"""Lower a quantized decoder LLM (LLaMA family) into ISA programs and a memory image.

Input: the plain quantized model of :func:`compiler.passes.quantized_model`, read by the
lowering's passes over the quantized graph (:func:`lower_pipeline`, after the graph
pipeline in one :func:`compile_pipeline`) or given as data (:func:`compile_llm`). Output: an
output folder (``manifest.json`` of kind ``llm``, ``weights.bin``, ``prefill.afp``,
``decode.afp`` and their listings). Every backend reads the quantized tensors from that
folder (:func:`airfoil.folder.read_llm_model`), so no backend quantizes on its own.

Length-adaptive programs
------------------------
The host writes a parameter block at address 0 of the image (int32 ``pos``, ``T``,
``len = pos + T``) and ``T`` int32 token ids after it; each program starts with
``SYS LDREG`` of registers :data:`REG_POS`, :data:`REG_T`, :data:`REG_LEN`, and every
run-time length (matrix vectors ``m``, SFU rows, KV rows loaded and stored, attention
keys, the causal mask, the RoPE table rows) comes from those registers. So one decode
program serves every position and one prefill program every chunk of up to ``max_prompt``
tokens (the bucket the buffers are planned for) at any start position up to
``prefill_positions``: the chunk's attention loads the KV rows ``0 .. REG_LEN-1`` (the
chunks before it and its own) and masks causally from ``REG_POS``. The host runs a prompt
of any length as chunks of that program, and any tokens past ``prefill_positions`` (the
positions whose K and V of every head and a chunk's scores fit the buffers) as decode
steps.

Per phase (buffers: ACT, OUT, WGT, KV, AUX; memory: the image) the token ids' embedding
rows, INT8 records with a scale per row or the recipe's INT4 records with a scale per
group (:class:`airfoil.fixedpoint.QEmbedding`), are
gathered by ``LD`` and turned into the residual stream by ``SFU DEQUANT_ROW``; then, per
layer::

    LD gain -> AUX; SFU RMSNORM H -> X; SFU QUANT_TOKEN X -> XQ (+ scale pairs in AUX)
    LD weight tiles -> WGT slots; MV|MM q, k, v (per-token requant) -> OUT
    LD RoPE rows (row = REG_POS, count = REG_T) -> AUX; SFU ROPE q, k
    SFU QUANT_TOKEN q -> query records (ACT), k, v -> KV records (OUT)
    ST k, v records -> KV cache in memory at row REG_POS (count REG_T)
    LD the layer's K and V cache rows 0 .. REG_LEN-1 -> KV buffer
    SFU ATT_QK, SOFTMAX (causal from REG_POS, sliding window if any), ATT_PV -> context
    SFU QUANT_TOKEN; MV|MM o; SFU ADD into H
    RMSNORM, QUANT_TOKEN, MV|MM gate and up, SFU SILU, MUL, QUANT_TOKEN, MV|MM down, ADD
    final RMSNORM, QUANT_TOKEN, MV|MM lm_head; ST logits (REG_T rows) to memory
    LD the sampling block; SFU TOPK_SAMPLE logits -> next token ids; ST them to memory

GPT-2 / OPT forms (the shape's ``norm``, ``mlp``, ``positions``): ``LAYERNORM`` then the
LayerNorm bias added as a linear bias is; ``GELU`` or ``RELU`` of the up projection
instead of SILU and MUL; learned positions as ``LD`` of the table rows at ``REG_POS``
and ``ADD`` onto the embeddings, and no RoPE.

An encoder (the shape's ``encoder``, BERT) is post-norm: the embeddings' LayerNorm
(``norm``) writes X, the normalised stream; each sub-layer reads X and its ``ADD`` writes
``X + sub-layer`` into H, which the next LayerNorm brings back into X; the MLP's ``GELU``
runs in place on its up projection (X still holds the stream). ``SOFTMAX`` is
bidirectional (``imm1 = 1``: every token sees the whole sentence); there is no LM head:
``ST`` of the last X rows (the hidden states) to the output rows.

A linear layer with a bias (Qwen2's q, k, v) is followed by ``LD`` of its ACT bias row
into AUX and ``SFU ADD`` of that row onto every row of the layer's output (``imm0 = 1``):
the golden's ``add(linear(x), bias)``. (The MATRIX unit's bias
tiles hold the bias in accumulator units, which with per-token activation scales would
differ per token.)

The KV cache in memory is laid out ``[layer][K|V][position][kv_head]`` of records
(``head_dim`` INT8 padded to 8 bytes, then the scale pair int32 ``sm``, ``se``, padded
to the memory word), so the ``T`` new positions of all heads are one contiguous store.

Streamed layers
---------------
A layer in a format other than dense INT4/INT8 (a streamed format, a format per group or
a sparse pattern, :attr:`airfoil.fixedpoint.QLinear.streamed`) runs through the decode
unit: its row blocks (all of K each) are packed into record streams, one per memory
channel, as :mod:`compiler.linear` packs a streamed layer (:func:`compiler.streams.
place_stream_block`), and each block is ``LD WSTREAM`` (one per channel, right before its
matrix instruction) then ``MV`` (decode) or ``MM`` of ``REG_T`` vectors (prefill) with
``wfmt = STREAM`` and ``tok_scale = 1``. The stream is a FIFO, so these loads carry no
tokens. The streamed engine applies each record to at most ``limits.stream_tokens``
vectors, so a model with a streamed layer plans its prefill for at most that many tokens
(``max_prompt``): each prefill chunk reads each weight once for all its tokens.

Scheduling: instructions are emitted in program order through
:class:`compiler.schedule.Scheduler`, which derives the dependency tokens from the buffer
and memory ranges each instruction reads and writes. Weight tiles
(:func:`compiler.tiling.plan_wgt_tiles`) rotate through the WGT slots (as many as take the
fewest cycles in the cycle model's estimate: each tile pays the MATRIX unit's drain once,
and each slot more lets a load start earlier), so the LOAD unit fetches ahead
of MATRIX by as many tiles as the slots allow; a layer, tiled or streamed, is lowered by
the single-layer compiler's code (:func:`compiler.lower_linear.lower_linear`, with
per-token activation scales, INT32 rows and the bias in the SFU), its slices on the
channels round robin as every other transfer.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import torch

from airfoil import fixedpoint as fx
from airfoil.config import AccelConfig
from airfoil.errors import CompileError
from airfoil.folder import FOLDER_FORMAT, encoder, linear_roles, llm_phases, output_width
from airfoil.formats import FORMAT_BY_NAME, fp16_fixed
from airfoil.kv_banks import KvBanks
from airfoil.isa import ISA_VERSION, Buffer, Opcode, SfuFunc, SysOp, decode
from airfoil.packing import core_stream_geometry, format_spec, nm_code
from airfoil.program import Program
from airfoil.wgt_banks import WgtBanks

from .asm import listing
from .ir import Graph, Pass, Pipeline
from .llm_recipe import check_layer_config
from .output import write_folder
from .passes import quantized_model
from .streams import least_scale, pack_wgt_tile, place_stream_block, wgt_tile_layout
from .lower_linear import Arithmetic, Loading, OutRows, Vectors, lower_linear
from .schedule import Scheduler
from .tiling import TiledLayer, plan_layer_slots, stream_rows, tile_boxes

__all__ = ["compile_llm", "lower_pipeline", "compile_pipeline", "LowerOptions",
           "lowered_model", "LOWER_STEPS", "REG_POS", "REG_T", "REG_LEN", "REG_GROUPS", "PHASES",
           "LLM_KIND", "record_bytes", "embed_group", "DEFAULT_MAX_PROMPT"]

LLM_KIND = "llm"
PHASES = ("prefill", "decode")
#: Run-time registers loaded from the parameter block at address 0
#: (:func:`airfoil.folder.parameter_block`).
REG_POS, REG_T, REG_LEN = 1, 2, 3
#: On a banked KV buffer (``buffers.kv_banks``): the key groups ``ceil(REG_LEN / kv_banks)``,
#: the rows each bank's K and V loads take.
REG_GROUPS = 4
#: Prompt tokens the prefill program is planned for by default.
DEFAULT_MAX_PROMPT = 32
#: The SFU function of an ungated MLP's activation, by the shape's ``mlp`` (BERT's erf
#: GELU runs in the tanh form, see :data:`compiler.reference.MLPS`).
_MLP_ACT = {"gelu": SfuFunc.GELU, "gelu_erf": SfuFunc.GELU, "relu": SfuFunc.RELU}


def _roles(model) -> tuple[str, ...]:
    """The linear roles of the model's layers (:func:`airfoil.folder.linear_roles`)."""
    return linear_roles(model["shape"])


def _rotary(model) -> bool:
    return model["shape"].get("positions", "rope") == "rope"


def _norm_biases(model) -> dict:
    """``{gain}_bias`` -> ACT bias of every LayerNorm (empty for RMSNorm)."""
    if model["shape"].get("norm", "rms") != "layer":
        return {}
    out = {"norm_bias": model["norm_bias"]}
    for i, L in enumerate(model["layers"]):
        for g in ("attn_norm", "mlp_norm"):
            out[f"l{i}.{g}_bias"] = L[g + "_bias"]
    return out


def _up(n: int, a: int) -> int:
    return -(-n // a) * a


def record_bytes(n: int, word: int, group: int = 0) -> int:
    """Bytes of one record of ``n`` values with its scale pairs, word aligned: INT8 with a
    pair (``group`` 0), or INT4 with a pair per ``group`` values
    (:func:`airfoil.fixedpoint.dequant_record_bytes`)."""
    return _up(fx.dequant_record_bytes(n, group), word)


def embed_group(model) -> int:
    """The embedding's values per scale pair (0: INT8 rows, a scale pair each)."""
    return getattr(model["embed"], "group", 0)


# -- tiling -------------------------------------------------------------------------------

def _tiled(config, ql, count: int = 1) -> TiledLayer:
    """A layer of WGT tiles as the planner sees it (:class:`compiler.tiling.TiledLayer`)."""
    n, k = ql.shape
    return TiledLayer(n, k, ql.group, FORMAT_BY_NAME[f"int{ql.bits}"], count=count)


def _wgt_slots(config, qls) -> tuple[int, int]:
    """``(slots, slot_bytes)`` of a model's tiled layers
    (:func:`compiler.tiling.plan_layer_slots`: the fewest cycles of the tiles of a decode
    step's layers, each layer estimated on its own, each tile loaded right before its
    matrix instruction in program order; then the fewest tiles, then the most slots)."""
    # Layers of one shape, group and width are tiled alike: plan one of each.
    kinds = Counter((tuple(ql.shape), ql.group, ql.bits) for ql in qls if not ql.streamed)
    example = {(tuple(ql.shape), ql.group, ql.bits): ql for ql in qls if not ql.streamed}
    return plan_layer_slots(config, [_tiled(config, example[kind], count)
                                     for kind, count in kinds.items()], ahead=1)


def _plan_tiles(config, ql, slot) -> list[tuple[int, int, int, int]]:
    """Tiles ``(row0, rows, col0, cols)`` of one layer, each at most ``slot`` bytes
    (:meth:`compiler.tiling.TiledLayer.tiles`)."""
    return _tiled(config, ql).tiles(config, slot)[0]


def _k_split_tokens(config, plans) -> int | None:
    """The most tokens an ``MM`` may take on every K-split tile of ``plans`` (layer name ->
    :func:`_plan_tiles`): its ``tokens x ceil(rows / chains)`` accumulator batches stay
    within the MATRIX unit's :attr:`~airfoil.config.AccelConfig.k_split_batches`; None
    when no layer is split along K."""
    caps = [config.k_split_batches // -(-rows // config.chains)
            for tiles in plans.values() if any(c0 for _, _, c0, _ in tiles)
            for _, rows, _, _ in tiles]
    return min(caps) if caps else None


# -- memory planning ----------------------------------------------------------------------

class _Bump:
    def __init__(self, name, size, align):
        self.name, self.size, self.align, self.top = name, size, align, 0

    def take(self, nbytes, what):
        a = self.top
        self.top = _up(a + max(int(nbytes), 1), self.align)
        if self.top > self.size:
            raise CompileError(f"{what} does not fit the {self.name} buffer ({self.top} of "
                               f"{self.size} bytes needed)")
        return a


def _shape(model):
    s = model["shape"]
    d, heads, kv = s["hidden_size"], s["num_attention_heads"], s["num_key_value_heads"]
    return d, heads, kv, s["head_dim"], s["intermediate_size"], s["vocab_size"]


def _check_model(model, config):
    d, heads, kv, hd, inter, vocab = _shape(model)
    if heads % kv:
        raise CompileError(f"num_attention_heads={heads} is not a multiple of "
                           f"num_key_value_heads={kv}")
    if hd % 8:
        raise CompileError(f"head_dim={hd} is not a multiple of 8 (RoPE table rows must be "
                           f"whole memory words)")
    if hd > config.limits.att_pv_max_head_dim:
        raise CompileError(f"head_dim={hd} is over the {config.limits.att_pv_max_head_dim} "
                           f"the SFU's context accumulator holds (config {config.name!r}, "
                           f"limits.att_pv_max_head_dim)")
    if encoder(model["shape"]) and (4 * d) % config.word_bytes:
        raise CompileError(f"hidden_size={d}: an encoder's hidden-state rows ({4 * d} "
                           f"bytes) must be whole {config.word_bytes}-byte memory words")
    names = _named_linears(model)
    for name, ql in names:
        _check_linear(name, ql, config)
    return names


def _named_linears(model) -> list:
    """``(name, QLinear)`` of every linear layer of a quantized model."""
    names = [] if encoder(model["shape"]) else [("lm_head", model["lm_head"])]
    return names + [(f"layers.{i}.{r}", L[r]) for i, L in enumerate(model["layers"])
                    for r in _roles(model)]


def _check_linear(name, ql, config):
    """A linear layer's format, group, sparsity and widths against the config."""
    n, k = ql.shape
    if ql.in_features % config.word_bytes:
        raise CompileError(f"layer {name}: k={ql.in_features} is not a multiple of the "
                           f"{config.word_bytes}-byte memory word")
    formats = (f"int{ql.bits}",) if not ql.streamed else tuple(
        format_spec(tag).name for tag in sorted(set(ql.formats.reshape(-1).tolist())))
    check_layer_config(f"layer {name}: ", config, formats=formats, group=ql.group,
                       sparsity=ql.sparsity, streamed=ql.streamed)
    if not ql.streamed:
        return
    geom = core_stream_geometry(config)
    rr = geom.rows
    for r0 in range(0, n, rr):
        block = ql.formats[r0:r0 + rr]
        if not bool((block == block[0]).all()):
            raise CompileError(f"layer {name}: rows {r0}..{min(n, r0 + rr) - 1} (one "
                               f"{rr}-row stream record of config {config.name!r}) hold "
                               f"more than one format in a group; quantize for this "
                               f"config's records")


def _stream_label(ql) -> str:
    """``int2``, ``mixed`` (groups of several formats), with ``/2:4`` when sparse: a
    streamed layer's name in the manifest's ``weight_bytes``."""
    tags = set(ql.formats.reshape(-1).tolist())
    names = format_spec(tags.pop()).name if len(tags) == 1 else "mixed"
    return names if ql.sparsity == "dense" else f"{names}/{ql.sparsity}"


def _biases(model) -> dict:
    """``l{i}.{role}_bias`` -> ACT bias of every linear layer that has one."""
    roles = model["shape"].get("linear_biases", ())
    return {f"l{i}.{r}_bias": L[r + "_bias"] for i, L in enumerate(model["layers"])
            for r in roles}


def _plan_image(model, config, max_prompt, max_pos):
    """Addresses of everything in the memory image; returns (layout dict, size)."""
    d, heads, kv, hd, inter, vocab = _shape(model)
    wb = config.word_bytes
    rec = record_bytes(hd, wb)
    lay, top = {}, 0

    def put(name, nbytes):
        nonlocal top
        lay[name] = top
        top = _up(top + nbytes, wb)

    put("params", 16)
    put("ids", 4 * max_prompt)
    put("sampling", fx.SAMPLING_BLOCK_BYTES)
    put("next", 4 * max_prompt)
    lay["logits_row"] = _up(4 * output_width(model["shape"]), wb)
    put("logits", lay["logits_row"] * max_prompt)
    lay["embed_row"] = record_bytes(d, wb, embed_group(model))
    put("embed", lay["embed_row"] * vocab)
    lay["rope_row"] = _up(2 * hd, wb)
    if _rotary(model):
        put("rope", lay["rope_row"] * max_pos)
    else:
        put("positions", 4 * d * max_pos)
    put("norm", 4 * d)
    for i in range(len(model["layers"])):
        put(f"l{i}.attn_norm", 4 * d)
        put(f"l{i}.mlp_norm", 4 * d)
    for name, b in {**_biases(model), **_norm_biases(model)}.items():
        put(name, 4 * b.numel())
    lay["kv_row"] = kv * rec
    # On a banked KV buffer the loads take whole key groups: rows up to a multiple of it.
    rows = _up(max_pos, config.buffers.kv_banks)
    for i in range(len(model["layers"])):
        put(f"l{i}.kcache", kv * rec * rows)
        put(f"l{i}.vcache", kv * rec * rows)
    lay["tiles"] = top
    return lay, top


def _place_linears(flat, plans, config, top, streamed, size_only=False):
    """Place every linear layer from ``top`` on: WGT tiles (``plans``, layer name ->
    :func:`_plan_tiles`) by their layout's size, reading each layer's scales (for the
    ``k0`` of its instructions) and not its values; streamed layers packed, or with
    ``size_only`` sized from their record tags without reading their values (but a
    block-skip layer's, whose records' sizes follow its weights). Returns ``(linears,
    streams, image size)``, ``streams`` the packed ``(addr, bytes)`` of the streamed
    layers (none sized only)."""
    wb = config.word_bytes
    linears, streams, addr = {}, [], top
    geom = core_stream_geometry(config) if streamed else None
    for name, ql in flat.items():
        if ql.streamed:
            pack = not size_only or ql.sparsity == "block"
            linears[name], layer_blobs, end = _pack_streamed(name, ql, config, geom, addr,
                                                             pack)
            streams += layer_blobs
            addr = max(addr, end)
            continue
        n, k = ql.shape
        # The least exponent is the least magnitude's (the exponent grows with it); the
        # largest is checked with it (infinite or NaN scales).
        sc = ql.scales.abs()
        _, kexp = fp16_fixed(torch.stack([sc.min(), sc.max()]))
        tiles, tile_bytes = [], _tiled(config, ql).tile_bytes(config)
        for r0, rows, c0, cols in plans[name]:
            nbytes = tile_bytes(rows, cols)
            tiles.append({"row0": r0, "rows": rows, "col0": c0, "cols": cols,
                          "addr": addr, "nbytes": nbytes})
            addr += WgtBanks.of(config).tile_bytes(nbytes, config.word_bytes)
        linears[name] = {"n": n, "k": k, "k_in": ql.in_features,
                         "copies": ql.input_copies, "bits": ql.bits,
                         "group": ql.group, "k0": int(kexp.min()), "streamed": False,
                         "label": f"int{ql.bits}", "tiles": tiles}
    return linears, streams, addr


def _check_capacity(size: int, config) -> None:
    """Refuse an image larger than the board's memory (channels x channel_bytes)."""
    mem = config.memory
    cap = mem.channels * mem.channel_bytes
    if size > cap:
        raise CompileError(f"the memory image needs {size} bytes ({size / 2 ** 30:.2f} GiB), "
                           f"more than the {cap} bytes ({cap / 2 ** 30:.2f} GiB: "
                           f"{mem.channels} channels x {mem.channel_bytes} bytes) of config "
                           f"{config.name!r}")


#: The memory map a compile writes beside the manifest (a text listing of the image).
MEMORY_MAP = "memory_map.txt"


def memory_map(manifest: dict, config) -> str:
    """The image's regions, one line each: start address, bytes, name (from the manifest's
    layout and tiles), and the board memory they take."""
    mm = manifest["model"]
    lay = mm["layout"]
    starts = sorted((a, name) for name, a in lay.items()
                    if not name.endswith("_row") and name != "tiles")
    regions = []
    for (a, name), nxt in zip(starts, starts[1:] + [(lay["tiles"], None)]):
        regions.append((a, nxt[0] - a, name))
    for name, v in mm["linears"].items():
        t = [st for tile in v["tiles"] for st in tile.get("streams", [tile])]
        start = min(x["addr"] for x in t)
        end = max(x["addr"] + x["nbytes"] for x in t)
        kind = "streams" if v.get("streamed") else "tiles"
        regions.append((start, end - start,
                        f"{name} weights: {len(t)} {kind} of {v['label']} g{v['group']}, "
                        f"{v['n']} x {v['k']}"))
    mem = config.memory
    cap = mem.channels * mem.channel_bytes
    size = manifest["image_bytes"]
    head = [f"# memory image of {manifest['source'] or 'model'} for config {config.name} "
            f"({config.config_hash})",
            f"# {size} bytes of the {cap} the board holds ({mem.channels} channels x "
            f"{mem.channel_bytes} bytes): {100 * size / cap:.1f} %",
            f"# {mm['max_positions']} KV positions; prefill up to {mm['max_prompt']} tokens",
            "#    address         bytes  region"]
    return "\n".join(head + [f"{a:#14x} {n:13d}  {what}" for a, n, what in regions]) + "\n"


#: Embedding rows converted and written at a time (bounds the memory of a large table).
_EMBED_ROWS = 4096


def _write_image(path, model, config, flat, linears, streams, lay, size, max_pos) -> None:
    """Write the memory image to ``path`` region by region (never all of it in memory):
    the embedding table, the RoPE (or learned position) table, the norm gains and the
    biases, every weight tile (packed a
    layer at a time) and the packed ``streams``; the rest (parameter block, token ids,
    logits, KV cache, padding) is zero."""
    d, heads, kv, hd, inter, vocab = _shape(model)
    with open(path, "wb") as f:
        f.truncate(size)

        def put(addr, data: bytes):
            f.seek(addr)
            f.write(data)

        erow = lay["embed_row"]
        for r0 in range(0, vocab, _EMBED_ROWS):
            q, sm, se = model["embed"].records(r0, min(vocab, r0 + _EMBED_ROWS))
            recs = fx.encode_records(q, sm, se, embed_group(model), erow)
            put(lay["embed"] + erow * r0, recs.tobytes())
        if _rotary(model):
            cos, sin = fx.rope_table(hd, model["shape"]["rope_theta"], max_pos,
                                     model["shape"].get("rope_scaling"))
            rope = np.zeros((max_pos, lay["rope_row"]), dtype=np.uint8)
            rope[:, :2 * hd] = np.concatenate([cos.numpy().astype("<i2"),
                                               sin.numpy().astype("<i2")],
                                              axis=1).view(np.uint8)
            put(lay["rope"], rope.tobytes())
        else:                                       # learned positions: their ACT table
            put(lay["positions"], model["positions"][:max_pos].numpy().astype("<i4").tobytes())
        gains = {"norm": model["norm"]}
        for i, L in enumerate(model["layers"]):
            gains[f"l{i}.attn_norm"], gains[f"l{i}.mlp_norm"] = L["attn_norm"], L["mlp_norm"]
        for name, g in gains.items():
            put(lay[name], g.numpy().astype("<i4").tobytes())
        for name, b in {**_biases(model), **_norm_biases(model)}.items():
            put(lay[name], b.numpy().astype("<i4").tobytes())
        for addr, blob in streams:
            put(addr, blob)
        for name, ql in flat.items():
            if ql.streamed:
                continue
            q, scales = ql.q, ql.scales         # read once per layer, packed tile by tile
            banks = WgtBanks.of(config)
            for t in linears[name]["tiles"]:
                box = t["row0"], t["rows"], t["col0"], t["cols"]
                lay_t = wgt_tile_layout(config, t["rows"], t["cols"], group=ql.group,
                                        wfmt=FORMAT_BY_NAME[f"int{ql.bits}"])
                put(t["addr"], banks.tile_image(pack_wgt_tile(lay_t, q, scales, box, ql.group),
                                                config.word_bytes))


# -- emission of one phase ----------------------------------------------------------------

class _Phase:
    """Emit the program of one phase (``prefill`` or ``decode``)."""

    def __init__(self, model, config, lay, linears, phase, tmax, max_pos, slots, slot_bytes,
                 keys):
        self.model, self.config, self.lay, self.lin = model, config, lay, linears
        self.phase, self.tmax, self.max_pos = phase, tmax, max_pos
        self.sched = Scheduler()
        self.slot_i = 0
        self.slots, self.slot_bytes = slots, slot_bytes
        self.chan = -1
        self.wb = config.word_bytes
        d, heads, kv, hd, inter, vocab = _shape(model)
        self.d, self.heads, self.kv, self.hd, self.inter, self.vocab = \
            d, heads, kv, hd, inter, vocab
        self.rec = record_bytes(hd, self.wb)
        self.lmax = keys          # positions attention sees (the KV rows one run loads)
        T, b = tmax, config.buffers
        act = _Bump("ACT", b.act_bytes, self.wb)
        self.wide = wide = max(d, inter, heads * hd)
        self.H = act.take(T * d * 4, "residual stream")
        self.X = act.take(T * wide * 4, "normalised / product activations")
        copies = max(ql.input_copies for _, ql in _named_linears(model))
        self.XQ = act.take(T * wide * copies, "INT8 activations")
        self.xq_row = wide          # bytes from one token's INT8 row in XQ to the next
        self.QR = act.take(T * heads * self.rec, "query records")
        self.C = act.take(T * heads * hd * 4, "attention context")
        out = _Bump("OUT", b.out_bytes, self.wb)
        self.Q = out.take(T * heads * hd * 4, "queries")
        self.K = out.take(T * kv * hd * 4, "keys")
        self.V = out.take(T * kv * hd * 4, "values")
        self.KR = out.take(T * kv * self.rec, "key records")
        self.VR = out.take(T * kv * self.rec, "value records")
        self.S = out.take(T * heads * self.lmax * 4, "attention scores")
        attn_top = out.top
        out.top = 0
        self.G = out.take(T * inter * 4, "gate outputs")
        self.U = out.take(T * inter * 4, "up outputs")
        out.top = max(out.top, attn_top)
        self.O = out.take(T * d * 4, "projection outputs")
        self.LOG = out.take(T * lay["logits_row"], "logits")
        # KV slots: offsets in each bank of the key groups' records (airfoil.kv_banks).
        self.kv_map = KvBanks.of(config)
        self.kv_groups = self.kv_map.groups(self.lmax)
        kvb = _Bump("KV" if self.kv_map.banks == 1 else "KV bank", self.kv_map.bank_bytes,
                    self.wb)
        self.kv_pass, slots = _kv_passes(kv, self.kv_groups, self.rec, kvb.size,
                                         whole=phase == "prefill")
        self.KB, self.VB = [], []
        for _ in range(slots):
            what = (f"of {self.kv_pass} of {kv} KV heads" if self.kv_pass < kv else "")
            self.KB.append(kvb.take(self.kv_groups * self.kv_pass * self.rec,
                                    f"K cache {what} at {self.lmax} positions"))
            self.VB.append(kvb.take(self.kv_groups * self.kv_pass * self.rec,
                                    f"V cache {what} at {self.lmax} positions"))
        aux = _Bump("AUX", b.aux_bytes, self.wb)
        self.IDS = aux.take(4 * T, "token ids")
        self.SAMP = aux.take(fx.SAMPLING_BLOCK_BYTES, "sampling block")
        self.NEXT = aux.take(4 * T, "next token ids")
        self.SC = aux.take(8 * T, "per-token scales")
        self.GAIN = aux.take(4 * d, "RMSNorm gain")
        if _rotary(model):
            self.ROPE = aux.take(lay["rope_row"] * T, "RoPE table rows")
        biases = {**_biases(model), **_norm_biases(model)}
        widest = max((b.numel() for b in biases.values()), default=0)
        if widest:
            self.BIAS = aux.take(_up(4 * widest, self.wb), "linear bias row")

    # ranges
    def r(self, buf, addr, nbytes):
        return (buf.name, addr, addr + nbytes)

    def mem(self, addr, nbytes):
        return ("MEM", addr, addr + nbytes)

    @property
    def tregs(self):
        return {"count_reg": REG_T} if self.phase == "prefill" else {}

    def channel(self) -> int:
        """The next memory channel, round robin (transfers overlap across channels)."""
        self.chan = (self.chan + 1) % self.config.memory.channels
        return self.chan

    def ld(self, buf, buf_addr, dram, nbytes, count=1, stride=None, reads=None, **kw):
        stride = nbytes if stride is None else stride
        return self.sched.add(
            Opcode.LD, reads=reads or [self.mem(dram, stride * max(count, 1))],
            writes=[self.r(buf, buf_addr, nbytes * count)], buf=buf, channel=self.channel(),
            buf_addr=buf_addr, dram_addr=dram, nbytes=nbytes, count=count,
            dram_stride=stride, **kw)

    def sfu(self, func, src, src_addr, dst, dst_addr, n, reads, writes, **kw):
        rows = {"rows_reg": REG_T, "rows": self.tmax} if self.phase == "prefill" else \
            {"rows": 1}
        kw = {**rows, **kw}
        return self.sched.add(Opcode.SFU, reads=reads, writes=writes, func=func, src=src,
                              dst=dst, src_addr=src_addr, dst_addr=dst_addr, n=n, **kw)

    def rows_act(self, buf, addr, n):
        return self.r(buf, addr, self.tmax * n * 4)

    # operators
    def rmsnorm(self, gain_name):
        """The norm of H into X: RMSNORM, or LAYERNORM and the ADD of its bias."""
        d, T = self.d, self.tmax
        self.ld(Buffer.AUX, self.GAIN, self.lay[gain_name], 4 * d)
        eps = round(self.model["shape"]["rms_norm_eps"] * 2.0 ** 60)
        layer = self.model["shape"].get("norm", "rms") == "layer"
        x = self.rows_act(Buffer.ACT, self.X, d)
        self.sfu(SfuFunc.LAYERNORM if layer else SfuFunc.RMSNORM, Buffer.ACT, self.H,
                 Buffer.ACT, self.X, d,
                 reads=[self.rows_act(Buffer.ACT, self.H, d), self.r(Buffer.AUX, self.GAIN,
                                                                       4 * d)],
                 writes=[x], aux=Buffer.AUX,
                 aux_addr=self.GAIN, imm0=eps & 0xFFFFFFFF, imm1=eps >> 32)
        if layer:
            self.add_bias(gain_name + "_bias", Buffer.ACT, self.X, d)

    def add_bias(self, name, buf, addr, n):
        """LD the ACT bias ``name`` (one row) into AUX; ADD it onto every row of ``n`` at
        ``addr`` in ``buf`` (``imm0 = 1``: one aux row for all)."""
        self.ld(Buffer.AUX, self.BIAS, self.lay[name], 4 * n)
        rows = self.rows_act(buf, addr, n)
        self.sfu(SfuFunc.ADD, buf, addr, buf, addr, n,
                 reads=[rows, self.r(Buffer.AUX, self.BIAS, 4 * n)], writes=[rows],
                 aux=Buffer.AUX, aux_addr=self.BIAS, imm0=1)

    def quant(self, src, src_addr, n, *readers):
        """QUANT_TOKEN rows of ``n`` into XQ (k-contiguous) and scale pairs in AUX, once
        per input copy the linear layers ``readers`` take (:attr:`~airfoil.fixedpoint.
        QLinear.input_copies`): copy ``c`` of a token's row at ``c n`` in a row of ``copies
        n`` bytes (the same values and scale pair each time; one more SFU pass a copy)."""
        T = self.tmax
        copies = max((ql.input_copies for ql in readers), default=1)
        self.xq_row = copies * n
        for c in range(copies):
            self.sfu(SfuFunc.QUANT_TOKEN, src, src_addr, Buffer.ACT, self.XQ + c * n, n,
                     reads=[self.rows_act(src, src_addr, n)],
                     writes=[self.r(Buffer.ACT, self.XQ, T * copies * n),
                             self.r(Buffer.AUX, self.SC, 8 * T)],
                     aux=Buffer.AUX, aux_addr=self.SC, imm0=copies * n, imm1=8)

    def records(self, src, src_addr, heads, dst, dst_addr):
        """QUANT_TOKEN per head into records (INT8 + scale pair)."""
        T, hd, rec = self.tmax, self.hd, self.rec
        self.sfu(SfuFunc.QUANT_TOKEN, src, src_addr, dst, dst_addr, heads * hd,
                 reads=[self.rows_act(src, src_addr, heads * hd)],
                 writes=[self.r(dst, dst_addr, T * heads * rec)], aux=dst,
                 aux_addr=dst_addr + _up(hd, 8), imm0=rec, imm1=rec, heads=heads)

    def linear(self, name, ql, out_addr):
        """One linear layer, tiled or streamed, by the one lowering of a linear node
        (:func:`compiler.lower_linear.lower_linear`): per-token activation scales (the
        pairs :meth:`quant` wrote), INT32 rows at ``out_addr``, the bias (if it has one)
        added by the SFU; each tile loaded right before its matrix instruction, the WGT
        slots in turn across layers, the slices on the channels round robin."""
        info, T, wb = self.lin[name], self.tmax, self.wb
        n, k = ql.shape
        orow = _up(n * 4, wb)
        has_bias = name + "_bias" in self.lay
        prefill = self.phase == "prefill"
        lower_linear(
            self.sched, self.config, info["tiles"], k=k, streamed=info["streamed"],
            wfmt=None if info["streamed"] else FORMAT_BY_NAME[f"int{info['bits']}"],
            arith=Arithmetic(info["group"], info["k0"], per_token=True, scales=self.SC,
                             bias="sfu" if has_bias else "none"),
            vectors=Vectors(T, REG_T if prefill else None, astride=self.xq_row // wb,
                            ostride=orow // wb),
            out=OutRows(out_addr, orow, T),
            loading=Loading(self.slots, self.slot_bytes, lambda j: self.channel(),
                            first_slot=self.slot_i),
            act=self.XQ,
            sfu_bias=lambda: self.add_bias(name + "_bias", Buffer.OUT, out_addr, n))
        if not info["streamed"]:
            self.slot_i += len(info["tiles"])

    def emit(self):
        s, lay, T = self.sched, self.lay, self.tmax
        d, heads, kv, hd, inter, vocab = \
            self.d, self.heads, self.kv, self.hd, self.inter, self.vocab
        rec, m = self.rec, self.model
        regs = ((REG_POS, 0), (REG_T, 4), (REG_LEN, 8))
        if self.kv_map.banks > 1:
            regs += ((REG_GROUPS, 12),)
        for reg, off in regs:
            s.add(Opcode.SYS, op=SysOp.LDREG, reg=reg, value=lay["params"] + off)
        self.ld(Buffer.AUX, self.IDS, lay["ids"], _up(4 * T, self.wb))
        self.embed()
        if not _rotary(m):          # learned positions: table rows REG_POS.. onto H
            self.ld(Buffer.OUT, self.O, lay["positions"], 4 * d, count=T, stride=4 * d,
                    reads=[self.mem(lay["positions"], 4 * d * self.max_pos)],
                    row_reg=REG_POS, **self.tregs)
            self.residual()
        if encoder(m["shape"]):
            return self.encoder_layers()
        for i, L in enumerate(m["layers"]):
            p = f"l{i}."
            self.rmsnorm(p + "attn_norm")
            self.quant(Buffer.ACT, self.X, d, L["q"], L["k"], L["v"])
            self.linear(p + "q", L["q"], self.Q)
            self.linear(p + "k", L["k"], self.K)
            self.linear(p + "v", L["v"], self.V)
            rotations = ((self.Q, heads), (self.K, kv)) if _rotary(m) else ()
            if rotations:
                self.ld(Buffer.AUX, self.ROPE, lay["rope"], lay["rope_row"], count=T,
                        reads=[self.mem(lay["rope"], lay["rope_row"] * self.max_pos)],
                        row_reg=REG_POS, **self.tregs)
            for buf_addr, hh in rotations:
                self.sfu(SfuFunc.ROPE, Buffer.OUT, buf_addr, Buffer.OUT, buf_addr, hh * hd,
                         reads=[self.rows_act(Buffer.OUT, buf_addr, hh * hd),
                                self.r(Buffer.AUX, self.ROPE, lay["rope_row"] * T)],
                         writes=[self.rows_act(Buffer.OUT, buf_addr, hh * hd)],
                         aux=Buffer.AUX, aux_addr=self.ROPE, heads=hh, imm1=lay["rope_row"])
            self.records(Buffer.OUT, self.Q, heads, Buffer.ACT, self.QR)
            self.records(Buffer.OUT, self.K, kv, Buffer.OUT, self.KR)
            self.records(Buffer.OUT, self.V, kv, Buffer.OUT, self.VR)
            self.store_kv(p)
            self.attention(p)
            self.quant(Buffer.ACT, self.C, heads * hd, L["o"])
            self.linear(p + "o", L["o"], self.O)
            self.residual()
            self.rmsnorm(p + "mlp_norm")
            self.quant(Buffer.ACT, self.X, d, *(L[r] for r in ("gate", "up") if r in L))
            x_rng = self.rows_act(Buffer.ACT, self.X, inter)
            u_rng = self.rows_act(Buffer.OUT, self.U, inter)
            if "gate" in L:
                self.linear(p + "gate", L["gate"], self.G)
                self.linear(p + "up", L["up"], self.U)
                g_rng = self.rows_act(Buffer.OUT, self.G, inter)
                self.sfu(SfuFunc.SILU, Buffer.OUT, self.G, Buffer.OUT, self.G, inter,
                         reads=[g_rng], writes=[g_rng])
                self.sfu(SfuFunc.MUL, Buffer.OUT, self.G, Buffer.ACT, self.X, inter,
                         reads=[g_rng, u_rng], writes=[x_rng], aux=Buffer.OUT,
                         aux_addr=self.U)
            else:
                self.linear(p + "up", L["up"], self.U)
                self.sfu(_MLP_ACT[m["shape"]["mlp"]], Buffer.OUT, self.U, Buffer.ACT, self.X,
                         inter, reads=[u_rng], writes=[x_rng])
            self.quant(Buffer.ACT, self.X, inter, L["down"])
            self.linear(p + "down", L["down"], self.O)
            self.residual()
        self.rmsnorm("norm")
        self.quant(Buffer.ACT, self.X, d, m["lm_head"])
        self.linear("lm_head", m["lm_head"], self.LOG)
        return self.store_output(Buffer.OUT, self.LOG)

    def store_output(self, buf, addr):
        """ST the T output rows (logits, or an encoder's hidden states) at ``addr`` in
        ``buf`` to the output area; a decoder's next tokens (:meth:`next_tokens`); HALT;
        the program's words."""
        s, lay, T = self.sched, self.lay, self.tmax
        row = lay["logits_row"]
        s.add(Opcode.ST, reads=[self.r(buf, addr, T * row)],
              writes=[self.mem(lay["logits"], row * T)], buf=buf,
              channel=self.channel(),
              buf_addr=addr, dram_addr=lay["logits"], nbytes=row, count=T,
              dram_stride=row, **self.tregs)
        if not encoder(self.model["shape"]):
            self.next_tokens()
        s.add(Opcode.SYS, op=SysOp.HALT)
        return s.words()

    def store_kv(self, p):
        """ST the T new K and V records of layer ``p`` to its caches at row REG_POS."""
        lay, T, kvrow = self.lay, self.tmax, self.lay["kv_row"]
        for src, cache in ((self.KR, p + "kcache"), (self.VR, p + "vcache")):
            base = lay[cache]
            full = self.mem(base, kvrow * self.max_pos)
            self.sched.add(Opcode.ST, reads=[self.r(Buffer.OUT, src, T * kvrow)],
                           writes=[full], buf=Buffer.OUT, channel=self.channel(),
                           buf_addr=src, dram_addr=base, nbytes=kvrow, count=T,
                           dram_stride=kvrow, row_reg=REG_POS, **self.tregs)

    def encoder_layers(self):
        """An encoder after its embeddings (in H): the embeddings' LayerNorm into X, then
        per layer (post-norm, X the normalised stream) q, k, v of X, K and V stored and
        loaded back as a decoder's (the bidirectional SOFTMAX sees every key of the
        sentence), ``H = X + o(context)``, LayerNorm H -> X, GELU of up(X) in place,
        ``H = X + down``, LayerNorm H -> X; the last X rows are the output."""
        d, heads, kv, inter = self.d, self.heads, self.kv, self.inter
        self.rmsnorm("norm")
        for i, L in enumerate(self.model["layers"]):
            p = f"l{i}."
            self.quant(Buffer.ACT, self.X, d, L["q"], L["k"], L["v"])
            for role, addr in (("q", self.Q), ("k", self.K), ("v", self.V)):
                self.linear(p + role, L[role], addr)
            self.records(Buffer.OUT, self.Q, heads, Buffer.ACT, self.QR)
            self.records(Buffer.OUT, self.K, kv, Buffer.OUT, self.KR)
            self.records(Buffer.OUT, self.V, kv, Buffer.OUT, self.VR)
            self.store_kv(p)
            self.attention(p)
            self.quant(Buffer.ACT, self.C, heads * self.hd, L["o"])
            self.linear(p + "o", L["o"], self.O)
            self.residual(src=self.X)
            self.rmsnorm(p + "attn_norm")
            self.quant(Buffer.ACT, self.X, d, L["up"])
            self.linear(p + "up", L["up"], self.U)
            u_rng = self.rows_act(Buffer.OUT, self.U, inter)
            self.sfu(_MLP_ACT[self.model["shape"]["mlp"]], Buffer.OUT, self.U, Buffer.OUT,
                     self.U, inter, reads=[u_rng], writes=[u_rng])
            self.quant(Buffer.OUT, self.U, inter, L["down"])
            self.linear(p + "down", L["down"], self.O)
            self.residual(src=self.X)
            self.rmsnorm(p + "mlp_norm")
        return self.store_output(Buffer.ACT, self.X)

    def next_tokens(self):
        """The next token of every row of logits chosen on chip: LD the sampling block the
        host wrote, SFU TOPK_SAMPLE (row ``t`` draws for position ``REG_POS + t``) into
        AUX, ST the token ids to the image's ``next``."""
        lay, T, wb = self.lay, self.tmax, self.wb
        blk = _up(fx.SAMPLING_BLOCK_BYTES, wb)
        self.ld(Buffer.AUX, self.SAMP, lay["sampling"], blk)
        row = lay["logits_row"]
        ids = self.r(Buffer.AUX, self.NEXT, 4 * T)
        self.sfu(SfuFunc.TOPK_SAMPLE, Buffer.OUT, self.LOG, Buffer.AUX, self.NEXT,
                 self.vocab, reads=[self.r(Buffer.OUT, self.LOG, T * row),
                                    self.r(Buffer.AUX, self.SAMP, blk)],
                 writes=[ids], aux=Buffer.AUX, aux_addr=self.SAMP, imm0=row,
                 pos_reg=REG_POS)
        nbytes = _up(4 * T, wb)
        self.sched.add(Opcode.ST, reads=[ids], writes=[self.mem(lay["next"], nbytes)],
                       buf=Buffer.AUX, channel=self.channel(), buf_addr=self.NEXT,
                       dram_addr=lay["next"], nbytes=nbytes, count=1, dram_stride=nbytes)

    def embed(self):
        """The token ids' embedding records gathered into X (by id, one row of
        ``embed_row`` bytes each), then ``DEQUANT_ROW`` of them into the residual H (its
        ``imm1`` the INT4 table's group, 0 for INT8 rows)."""
        lay, d, T = self.lay, self.d, self.tmax
        erow = lay["embed_row"]
        if erow > 4 * self.wide:
            raise CompileError(f"an embedding record of {erow} bytes is wider than a row of "
                               f"the activations it is gathered into")
        recs = self.r(Buffer.ACT, self.X, T * erow)
        self.ld(Buffer.ACT, self.X, lay["embed"], erow, count=T, stride=erow,
                reads=[self.mem(lay["embed"], erow * self.vocab),
                       self.r(Buffer.AUX, self.IDS, 4 * T)],
                gather=1, idx_addr=self.IDS, **self.tregs)
        self.sfu(SfuFunc.DEQUANT_ROW, Buffer.ACT, self.X, Buffer.ACT, self.H, d,
                 reads=[recs], writes=[self.rows_act(Buffer.ACT, self.H, d)], imm0=erow,
                 imm1=embed_group(self.model))

    def attention(self, p):
        """Attention of one layer over the KV cache rows ``0 .. REG_LEN-1``, in passes of
        :attr:`kv_pass` KV heads (all of them when the layer's K and V fit the KV buffer;
        a decode step at a long context takes a few heads at a time, and the passes
        alternate between two buffer slots so the next pass's loads overlap this one's
        products): per pass, LD its heads' K and V rows, ATT_QK, SOFTMAX, ATT_PV into its
        heads' context. A pass's scores have a region of their own, so no offset depends
        on the run-time length."""
        lay, T, rec, hd = self.lay, self.tmax, self.rec, self.hd
        kvrow, g, kvh = lay["kv_row"], self.heads // self.kv, self.kv_pass
        slots = len(self.KB)
        banks, groups = self.kv_map.banks, self.kv_groups
        rows = _up(self.max_pos, banks)

        def kv_slot(addr):      # the slot's records in every bank
            return [self.r(Buffer.KV, b * self.kv_map.bank_bytes + addr, groups * kvh * rec)
                    for b in range(banks)]
        for j, h0 in enumerate(range(0, self.kv, kvh)):
            kb, vb = self.KB[j % slots], self.VB[j % slots]
            for cache, buf_addr in ((p + "kcache", kb), (p + "vcache", vb)):
                base = lay[cache]
                # One LD a bank (the positions l % banks == b, every banks-th row): on
                # different channels they write at once.
                for b in range(banks):
                    self.ld(Buffer.KV, b * self.kv_map.bank_bytes + buf_addr,
                            base + b * kvrow + h0 * rec, kvh * rec, count=groups,
                            stride=banks * kvrow, reads=[self.mem(base, kvrow * rows)],
                            count_reg=REG_LEN if banks == 1 else REG_GROUPS)
            hq = kvh * g
            att = {"heads": hq, "kv_heads": kvh, "len_reg": REG_LEN}
            S0, Q0, C0 = (self.S + h0 * g * self.lmax * 4, self.QR + h0 * g * rec,
                          self.C + h0 * g * hd * 4)
            S_rng = self.r(Buffer.OUT, S0, T * hq * self.lmax * 4)
            self.sfu(SfuFunc.ATT_QK, Buffer.ACT, Q0, Buffer.OUT, S0, hd,
                     reads=[self.r(Buffer.ACT, Q0, T * hq * rec), *kv_slot(kb)],
                     writes=[S_rng], aux=Buffer.KV, aux_addr=kb, imm0=rec, imm1=rec, **att)
            self.sfu(SfuFunc.SOFTMAX, Buffer.OUT, S0, Buffer.OUT, S0, hd,
                     reads=[S_rng], writes=[S_rng], pos_reg=REG_POS,
                     imm0=self.model["shape"].get("sliding_window") or 0,
                     imm1=int(encoder(self.model["shape"])), **att)
            self.sfu(SfuFunc.ATT_PV, Buffer.OUT, S0, Buffer.ACT, C0, hd,
                     reads=[S_rng, *kv_slot(vb)],
                     writes=[self.r(Buffer.ACT, C0, T * hq * hd * 4)], aux=Buffer.KV,
                     aux_addr=vb, imm1=rec, **att)

    def residual(self, src=None):
        """``H = src + O`` (``src`` H itself by default: a decoder's residual stream)."""
        d, src = self.d, self.H if src is None else src
        h = self.rows_act(Buffer.ACT, self.H, d)
        self.sfu(SfuFunc.ADD, Buffer.ACT, src, Buffer.ACT, self.H, d,
                 reads=[self.rows_act(Buffer.ACT, src, d),
                        self.rows_act(Buffer.OUT, self.O, d)], writes=[h],
                 aux=Buffer.OUT, aux_addr=self.O)


def _pack_streamed(name, ql, config, geom, addr, pack=True):
    """Pack a streamed layer's row blocks from ``addr`` on (each channel's stream of a
    block contiguous, word aligned), or with ``pack`` false only place them (their sizes
    from the records' tags); return its manifest entry, the packed ``(addr, bytes)`` and
    the end of its last stream."""
    n, k = ql.shape
    rr, wb = geom.rows, config.word_bytes
    sc = ql.scales.abs()            # the least exponent is the least magnitude's
    _, kexp = fp16_fixed(torch.stack([sc.min(), sc.max()]))
    tags = ql.formats[::rr].numpy()              # one tag per record (checked uniform)
    smin = least_scale(ql.scales) if pack else None
    top = end = addr

    def place(channel, nbytes):
        nonlocal top
        at, top = top, _up(top + nbytes, wb)
        return at

    tiles, blobs = [], []
    rows_per_block = stream_rows(config, n, k, group=ql.group, nm=nm_code(ql.sparsity),
                                 formats=sorted(set(ql.formats.reshape(-1).tolist())),
                                 what=f"layer {name}: ")
    for r0, rows, _, _ in tile_boxes(n, k, rows_per_block, k):
        entry, packed = place_stream_block(geom, config, ql.q if pack else None, ql.scales,
                                           tags, row0=r0, rows=rows, group=ql.group,
                                           sparsity=ql.sparsity, smin=smin, place=place,
                                           what=f"layer {name}: ", pack=pack)
        end = max([end] + [st["addr"] + st["nbytes"] for st in entry["streams"]])
        tiles.append(entry)
        blobs += [(a, blob) for _, a, blob in packed]
    counts = {}
    for t, c in zip(*(a.tolist() for a in np.unique(tags, return_counts=True))):
        f = format_spec(t).name
        counts[f] = counts.get(f, 0) + c
    return ({"n": n, "k": k, "k_in": ql.in_features, "copies": ql.input_copies,
             "bits": ql.bits, "group": ql.group,
             "k0": int(kexp.min()), "streamed": True, "sparsity": ql.sparsity,
             "label": _stream_label(ql), "records": counts, "tiles": tiles}, blobs, end)


def _kv_passes(kv: int, rows: int, rec: int, kv_bytes: int, whole: bool
               ) -> tuple[int, int]:
    """``(kv heads per attention pass, buffer slots)``: all heads in one slot when a
    layer's K and V cache of ``rows`` positions fit ``kv_bytes`` (or ``whole``: a prefill,
    whose scores interleave the heads of every token); else the most heads (a divisor of
    ``kv``) whose K and V fit twice (two slots), or once."""
    need = lambda h: 2 * rows * h * rec            # noqa: E731
    if whole or need(kv) <= kv_bytes:
        return kv, 1
    fewer = [h for h in range(kv - 1, 0, -1) if kv % h == 0]
    for slots in (2, 1):
        for h in fewer:
            if slots * need(h) <= kv_bytes:
                return h, slots
    return 1, 1


def _fit_error(model, config, phase, tmax, max_pos, keys=None) -> CompileError | None:
    """The buffer-planning error of a phase for ``tmax`` tokens, ``max_pos`` positions and
    attention over ``keys`` positions (default: ``max_pos``)."""
    d, heads, kv, hd, inter, vocab = _shape(model)
    wb = config.word_bytes
    rows = {"rope_row": _up(2 * hd, wb),
            "logits_row": _up(4 * output_width(model["shape"]), wb)}
    try:
        _Phase(model, config, rows, {}, phase, tmax, max_pos, 1, 0,
               max_pos if keys is None else keys)
    except CompileError as e:
        return e
    return None


def _prefill_positions(model, config, tmax, max_pos) -> int:
    """Positions a prefill chunk of up to ``tmax`` tokens may reach: the most (up to
    ``max_pos``) whose K and V rows of every head and ``tmax`` rows of scores over them fit
    the buffers beside the chunk's activations. A decoder's prompt runs as chunks of the
    prefill program up to these positions and as decode steps after them; an encoder's
    sentence is one prefill from position 0 (``tmax``)."""
    if encoder(model["shape"]):
        return tmax
    return _largest(lambda p: _fit_error(model, config, "prefill", tmax, max_pos, p),
                    max_pos)


def _largest(error_of, hi: int) -> int:
    """The largest ``v`` in ``1..hi`` with ``error_of(v) is None`` (monotone), or 0."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if error_of(mid) is None:
            lo = mid
        else:
            hi = mid - 1
    return lo


# -- top level ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LowerOptions:
    """What the lowering passes are told besides the graph (:func:`compile_llm`'s
    parameters of the same names)."""

    config: AccelConfig
    out_dir: object = None
    max_prompt: int | None = None
    source: str = ""
    recipe: dict | None = None          # default: the quantized graph's meta["recipe"]
    progress: object = None
    max_positions: int | None = None
    size_only: bool = False

    def tick(self, name: str) -> None:
        if self.progress is not None:
            self.progress(name)


class _LowerStep(Pass):
    """A step of the lowering. It reads the quantized model (:func:`lowered_model`) and
    what the steps before it made, and records what it made in ``graph.meta``:
    ``lowered`` (what ``compile_llm(..., stop_after=step)`` returns) and ``lowering``
    (its working state: the linear layers by name, their streams, the files)."""

    def __init__(self, opts: LowerOptions):
        self.opts = opts

    @staticmethod
    def made(graph: Graph) -> tuple[dict, dict]:
        return dict(graph.meta["lowered"]), dict(graph.meta["lowering"])

    @staticmethod
    def record(graph: Graph, made: dict, work: dict) -> Graph:
        """A graph sharing ``graph``'s nodes and tensors whose meta adds ``made`` and
        ``work`` (no copy of the model: a made model's layers stay on demand)."""
        return replace(graph, meta={**graph.meta, "lowered": made, "lowering": work})


def lowered_model(graph: Graph) -> dict:
    """The quantized model the lowering reads: ``graph.meta["model"]`` (a model given as
    data, :func:`compile_llm`) or the quantized graph's export
    (:func:`compiler.passes.quantized_model`)."""
    return graph.meta["model"] if "model" in graph.meta else quantized_model(graph)


class PlanLowering(_LowerStep):
    """``plan``: the WGT slots and every tiled layer's tiles
    (:func:`compiler.tiling.plan_layer_slots`, the single layer's planner), the streamed
    layers, the prompt and position bounds."""

    name = "plan"

    def apply(self, graph: Graph) -> Graph:
        o, config = self.opts, self.opts.config
        max_positions, max_prompt = o.max_positions, o.max_prompt
        model = lowered_model(graph)
        _check_model(model, config)
        # Positions: the model's, capped by what the KV buffer and the decode scores hold.
        model_pos = int(model["shape"]["max_position_embeddings"])
        if max_positions is not None:
            if isinstance(max_positions, bool) or not isinstance(max_positions, int) or \
                    max_positions < 1:
                raise CompileError(f"max_positions must be a positive integer, not "
                                   f"{max_positions!r}")
            model_pos = min(model_pos, max_positions)
        max_pos = _largest(lambda p: _fit_error(model, config, "decode", 1, p), model_pos)
        if max_pos == 0:
            raise _fit_error(model, config, "decode", 1, 1)
        flat = {} if encoder(model["shape"]) else {"lm_head": model["lm_head"]}
        for i, L in enumerate(model["layers"]):
            for r in _roles(model):
                flat[f"l{i}.{r}"] = L[r]
        slots, slot_bytes = _wgt_slots(config, flat.values())
        plans = {name: _plan_tiles(config, ql, slot_bytes) for name, ql in flat.items()
                 if not ql.streamed}
        # Tokens an MM may take: a K-split tile keeps tokens x batches accumulators.
        k_tokens = _k_split_tokens(config, plans)
        if k_tokens == 0:
            raise CompileError(f"a K-split weight tile needs more accumulator batches than "
                               f"the {config.k_split_batches} the MATRIX unit of config "
                               f"{config.name!r} keeps (k_split_batches)")
        most = max_pos if k_tokens is None else min(max_pos, k_tokens)
        streamed = [name for name, ql in flat.items() if ql.streamed]
        if streamed:            # the streamed engine's MM takes limits.stream_tokens vectors
            most = min(most, config.limits.stream_tokens)
        if max_prompt is None:
            max_prompt = _largest(
                lambda t: _fit_error(model, config, "prefill", t, max_pos, t),
                min(DEFAULT_MAX_PROMPT, most))
            if max_prompt == 0:
                raise _fit_error(model, config, "prefill", 1, max_pos, 1)
        if isinstance(max_prompt, bool) or not isinstance(max_prompt, int) or \
                not 1 <= max_prompt <= most:
            raise CompileError(f"max_prompt must be an integer in 1..{most} (positions that "
                               f"fit config {config.name!r}, tokens whose K-split "
                               f"accumulators the MATRIX unit keeps, tokens the streamed "
                               f"engine applies a record to), not {max_prompt!r}")
        err = _fit_error(model, config, "prefill", max_prompt, max_pos, max_prompt)
        if err is not None:
            raise CompileError(f"a prefill of max_prompt={max_prompt} tokens: {err}")
        prefill_keys = _prefill_positions(model, config, max_prompt, max_pos)
        made = {"step": "plan", "max_positions": max_pos, "max_prompt": max_prompt,
                "prefill_positions": prefill_keys, "wgt_slots": slots,
                "wgt_slot_bytes": slot_bytes, "tiles": plans, "streamed": streamed}
        return self.record(graph, made, {"model": model, "flat": flat})


class PackLowering(_LowerStep):
    """``pack``: the memory image's layout and every linear layer's place in it (the
    manifest's ``model.linears``); an image over the board's memory is refused."""

    name = "pack"

    def apply(self, graph: Graph) -> Graph:
        o, config = self.opts, self.opts.config
        made, work = self.made(graph)
        model, flat, plans = work["model"], work["flat"], made["tiles"]
        lay, top = _plan_image(model, config, made["max_prompt"], made["max_positions"])
        linears, streams, size = _place_linears(flat, plans, config, top, made["streamed"],
                                                o.size_only)
        _check_capacity(size, config)
        made.update(step="pack", layout=lay, linears=linears, image_bytes=size)
        work["streams"] = streams
        o.tick("tile and pack weights")
        o.tick("plan the memory image")
        return self.record(graph, made, work)


def _check_sfu_funcs(words, config: AccelConfig) -> None:
    """Refuse a program with SFU functions ``config`` does not build (``sfu_funcs``)."""
    used = {decode(w).func for w in words if w & 0xF == Opcode.SFU.value}
    missing = sorted(used - config.sfu_functions, key=lambda f: f.value)
    if missing:
        raise CompileError(f"the model needs the SFU function(s) "
                           f"{', '.join(f.name for f in missing)}, which config "
                           f"{config.name!r} does not build (its sfu_funcs: "
                           f"{', '.join(config.sfu_funcs)}; add them, or leave the field "
                           f"out for every function)")


class ScheduleLowering(_LowerStep):
    """``schedule``: each phase's instruction stream (:class:`_Phase`), its program file,
    listing and opcode counts."""

    name = "schedule"

    def apply(self, graph: Graph) -> Graph:
        o, config = self.opts, self.opts.config
        made, work = self.made(graph)
        model = work["model"]
        programs, files, phases, words_of = {}, {}, {}, {}
        for phase in llm_phases(model["shape"]):
            tmax, keys = ((made["max_prompt"], made["prefill_positions"]) if phase == "prefill"
                          else (1, made["max_positions"]))
            words = _Phase(model, config, made["layout"], made["linears"], phase, tmax,
                           made["max_positions"], made["wgt_slots"], made["wgt_slot_bytes"],
                           keys).emit()
            _check_sfu_funcs(words, config)
            words_of[phase] = words
            prog = Program(words, config.config_hash_bytes)
            title = (f"{phase} of {o.source or 'model'}: {len(words)} instructions, config "
                     f"{config.name} ({config.config_hash})")
            files[f"{phase}.afp"] = prog.to_bytes()
            files[f"{phase}.s"] = listing(words, title).encode()
            programs[phase] = f"{phase}.afp"
            counts = Counter(Opcode(w & 0xF).name for w in words)
            phases[phase] = {"instructions": len(words), "bytes": len(prog.to_bytes()),
                             "opcodes": dict(counts), "max_tokens": tmax}
            o.tick(f"schedule {phase}")
        made.update(step="schedule", words=words_of)
        work.update(programs=programs, files=files, phases=phases)
        return self.record(graph, made, work)


class EmitLowering(_LowerStep):
    """``emit``: write the folder (programs, listings, ``memory_map.txt``,
    ``manifest.json`` and, unless ``size_only``, ``weights.bin``, region by region);
    ``meta["lowered"]`` is the manifest."""

    name = "emit"

    def apply(self, graph: Graph) -> Graph:
        o, config = self.opts, self.opts.config
        made, work = self.made(graph)
        model, flat, linears = work["model"], work["flat"], made["linears"]
        lay, size, max_pos = made["layout"], made["image_bytes"], made["max_positions"]
        files, programs = dict(work["files"]), work["programs"]
        recipe = o.recipe if o.recipe is not None else graph.meta.get("recipe") or {}
        wbytes = {}
        for v in linears.values():
            nb = sum(st["nbytes"] for t in v["tiles"] for st in t.get("streams", [t]))
            wbytes[v["label"]] = wbytes.get(v["label"], 0) + nb
        shape = dict(model["shape"])
        manifest = {
            "format": FOLDER_FORMAT, "kind": LLM_KIND, "isa_version": ISA_VERSION,
            "config": config.name, "config_hash": config.config_hash, "programs": programs,
            "program": programs[llm_phases(model["shape"])[-1]], "image": "weights.bin",
            "image_bytes": size,
            "size_only": bool(o.size_only), "source": str(o.source),
            "model": {"shape": shape, "max_positions": max_pos,
                      "max_prompt": made["max_prompt"],
                      "prefill_positions": made["prefill_positions"],
                      "record_bytes": record_bytes(_shape(model)[3], config.word_bytes),
                      "embed_group": embed_group(model),
                      "layout": lay, "linears": linears,
                      "wgt_slots": made["wgt_slots"], "wgt_slot_bytes": made["wgt_slot_bytes"],
                      "recipe": {k: list(v) for k, v in recipe.items()}},
            "registers": {"pos": REG_POS, "tokens": REG_T, "length": REG_LEN},
            "phases": work["phases"], "weight_bytes": wbytes,
            "linear_weights": sum(v["n"] * v["k_in"] for v in linears.values()),
        }
        if encoder(shape):
            manifest["model"]["sentence_embedding"] = dict(model["sentence_embedding"])
        files[MEMORY_MAP] = memory_map(manifest, config).encode()
        if not o.size_only:
            streams = work["streams"]
            files["weights.bin"] = lambda path: _write_image(path, model, config, flat,
                                                             linears, streams, lay, size,
                                                             max_pos)
        files["manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode()
        write_folder(o.out_dir, files)
        o.tick("write the folder")
        return self.record(graph, manifest, work)


#: The lowering's passes in order, named as the single layer's steps
#: (:data:`compiler.linear.LINEAR_STEPS`): ``plan`` the tiles, the WGT slots and the prompt
#: and position bounds; ``pack`` the memory image's layout and the weights' places;
#: ``schedule`` each phase's instruction stream; ``emit`` the folder.
_LOWER_PASSES = (PlanLowering, PackLowering, ScheduleLowering, EmitLowering)
#: The names of the lowering's steps (:func:`compile_llm`'s ``stop_after``).
LOWER_STEPS = tuple(step.name for step in _LOWER_PASSES)


def lower_pipeline(opts: LowerOptions) -> Pipeline:
    """The lowering's passes, :data:`LOWER_STEPS` (``emit`` writes ``opts.out_dir``); after
    a graph pipeline that quantizes (:func:`compiler.passes.llm_pipeline`) they make one
    pipeline from import to emit (:func:`compile_pipeline`)."""
    return Pipeline([(step.name, step(opts)) for step in _LOWER_PASSES])


def compile_pipeline(graph_pipeline: Pipeline, opts: LowerOptions) -> Pipeline:
    """One pipeline from an imported graph to the folder: ``graph_pipeline``'s steps, then
    the lowering's (:func:`lower_pipeline`)."""
    return Pipeline(graph_pipeline.steps + lower_pipeline(opts).steps)


def compile_llm(model: dict, config: AccelConfig, out_dir, *, max_prompt: int | None = None,
                source: str = "", recipe: dict | None = None, progress=None,
                max_positions: int | None = None, size_only: bool = False,
                stop_after: str | None = None) -> dict:
    """Lower a quantized model (``compiler.passes.quantized_model``) into ``out_dir``.

    Parameters
    ----------
    model : dict
        The quantized model.
    config : AccelConfig
        The accelerator to compile for.
    out_dir : str or Path
        Output folder (written atomically).
    max_prompt : int, optional
        Longest prompt the prefill program takes (default: :data:`DEFAULT_MAX_PROMPT` or
        the most tokens whose activations fit the buffers). Longer prompts run as chunks of
        ``max_prompt`` tokens (bit-identical).
    source : str
        Where the model came from (for the manifest).
    recipe : dict, optional
        Layer name -> (format, group), recorded in the manifest.
    progress : callable, optional
        ``progress(step_name)`` after each step (for a progress bar).
    max_positions : int, optional
        At most this many KV positions (default: the model's, capped by what the KV
        buffer and the decode scores hold).
    size_only : bool
        Write the programs, listings, memory map and manifest but not ``weights.bin`` (the
        manifest says ``size_only``; no backend runs such a folder). The weights' values
        are never read, only their scales.
    stop_after : str, optional
        A step of :data:`LOWER_STEPS`: stop after it (nothing is written before ``emit``)
        and return what the steps made, a dict: ``step``; the plan's ``max_positions``,
        ``max_prompt``, ``wgt_slots``, ``wgt_slot_bytes``, ``tiles`` (layer -> WGT tile
        boxes), ``streamed`` (the streamed layers); the pack's ``layout``, ``linears``
        (the manifest's entries) and ``image_bytes``; the schedule's ``words`` per phase.

    The image is written region by region and a layer's tiles are packed one layer at a
    time, so a model whose layers are made on demand (:mod:`compiler.synthetic`) compiles
    in the memory of one layer. An image over the board's memory is refused.

    The model given as data is lowered as a graph of that data alone (``meta["model"]``)
    through :func:`lower_pipeline`.

    Returns
    -------
    dict
        The manifest; with ``stop_after``, what the steps made.
    """
    if not isinstance(config, AccelConfig):
        raise TypeError(f"config must be an AccelConfig, not {config!r}")
    if stop_after is not None and stop_after not in LOWER_STEPS:
        raise CompileError(f"the lowering has no step {stop_after!r} (steps: "
                           f"{', '.join(LOWER_STEPS)})")
    opts = LowerOptions(config, out_dir, max_prompt, source, recipe, progress, max_positions,
                        size_only)
    graph = Graph(nodes=[], params={}, shape=None, output="", meta={"model": model})
    return lower_pipeline(opts).run(graph, until=stop_after).meta["lowered"]
