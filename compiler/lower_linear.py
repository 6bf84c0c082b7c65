"""The one lowering of a linear node into matrix instructions, for the single-layer and
the LLM compilers alike.

A linear node's tiles (WGT tiles of :func:`compiler.tiling.plan_wgt_tiles`, or streamed
row blocks of :func:`compiler.streams.place_stream_block`) are loaded and computed by
:func:`lower_linear`; what differs between a single layer and an LLM's layer are options
of that one function, not code paths:

* :class:`Arithmetic` -- what the matrix instructions compute: activation scales static
  (one ``req_m``, ``req_s`` per layer, from calibration) or per token (the scale pairs an
  SFU ``QUANT_TOKEN`` wrote into AUX, ``tok_scale = 1``); the output width (INT8, INT16
  or INT32); the bias in the WGT tiles (a streamed block's in a bias tile before it), or
  added by the SFU after the layer (its caller's ``sfu_bias``), or none;
* :class:`Vectors` -- how many activation vectors one instruction takes (``MV`` of one,
  or ``MM`` of ``m``, ``m_reg`` at run time) and their strides;
* :class:`OutHalves` or :class:`OutRows` -- the OUT layout: results gathered in two
  halves stored to memory as each fills (a single layer), or rows of a buffer region the
  next operator reads (an LLM);
* :class:`Loading` -- the WGT slots, the memory channels and how far LOAD runs ahead.

Instructions are emitted in program order through :class:`compiler.schedule.Scheduler`
(the tokens follow from what each instruction reads and writes)::

    LD tiles 0 .. ahead-1
    for each tile t:
        [MV bias tile t]        a streamed block with its bias in a bias tile
        MV|MM t                 writes its outputs with the last chunk of K
        [ST OUT half]           OutHalves: when an OUT half is full
        LD tile t+ahead
    [sfu_bias()]                the bias added by the SFU
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from airfoil.errors import CompileError
from airfoil.isa import Buffer, Opcode, OutFormat

from .schedule import (Scheduler, load_stream_block, load_wgt_tile, mem, span,
                       stream_block_fields, wgt_tile_fields)

__all__ = ["Arithmetic", "Vectors", "OutHalves", "OutRows", "Loading", "lower_linear",
           "OUT_FORMAT", "BIAS_PLACES"]

#: Result width in bits -> the matrix instructions' output format.
OUT_FORMAT = {8: OutFormat.INT8, 16: OutFormat.INT16, 32: OutFormat.INT32}
#: Where a linear node's bias is added: ``tiles`` (int32 accumulator units in the WGT
#: tiles, or a streamed block's bias tile), ``sfu`` (an ACT row added by the SFU after
#: the layer, the per-token form), ``none``.
BIAS_PLACES = ("tiles", "sfu", "none")


def _up(n: int, a: int) -> int:
    return -(-n // a) * a


@dataclass(frozen=True)
class Arithmetic:
    """What a linear node's matrix instructions compute.

    Members
    -------
    group : int
        Weights per FP16 group scale.
    k0 : int
        The layer's least scale exponent (the accumulators' fixed point).
    out_bits : int
        Result width: 8, 16 or 32 (32: accumulator units, no requantization).
    per_token : bool
        Activation scales per token (the scale pairs at ``scales`` in AUX) rather than
        one static scale (``req_m``, ``req_s``).
    req_m, req_s : int
        The static requantization multiplier and shift.
    scales : int
        AUX address of the per-token scale pairs (8 bytes a token).
    bias : str
        One of :data:`BIAS_PLACES`. In the tiles only with static scales: the tiles hold
        the bias in accumulator units, which with per-token scales differ per token.
    """

    group: int
    k0: int
    out_bits: int = 32
    per_token: bool = False
    req_m: int = 0
    req_s: int = 0
    scales: int = 0
    bias: str = "none"

    def __post_init__(self):
        if self.out_bits not in OUT_FORMAT:
            raise CompileError(f"output width {self.out_bits} is not one of "
                               f"{', '.join(map(str, OUT_FORMAT))} bits")
        if self.bias not in BIAS_PLACES:
            raise CompileError(f"bias place {self.bias!r} is not one of "
                               f"{', '.join(BIAS_PLACES)}")
        if self.per_token and (self.bias == "tiles" or self.out_bits != 32):
            raise CompileError("per-token activation scales give INT32 results and take "
                               "the bias in the SFU (a tile's bias is in accumulator "
                               "units, which differ per token)")

    @property
    def out_bytes(self) -> int:
        return self.out_bits // 8

    def fields(self) -> dict:
        """The requantization fields every matrix instruction of the layer carries."""
        f = {"group": self.group, "k0": self.k0, "out_fmt": OUT_FORMAT[self.out_bits]}
        if self.per_token:
            return {**f, "req_m": 0, "req_s": 0, "tok_scale": 1, "sbuf_addr": self.scales}
        return {**f, "req_m": self.req_m, "req_s": self.req_s}

    def act_reads(self, act: int, tile: dict, k: int, vectors: "Vectors") -> list:
        """The ranges of activations (and scale pairs) a tile's instruction reads: its
        chunk of K of a static vector, or all the vectors of per-token ones and their
        scale pairs."""
        if self.per_token:
            return [span(Buffer.ACT, act, vectors.m * k),
                    span(Buffer.AUX, self.scales, 8 * vectors.m)]
        return [span(Buffer.ACT, act + tile["col0"], tile["cols"])]


@dataclass(frozen=True)
class Vectors:
    """The activation vectors one matrix instruction takes: ``MV`` of one, or ``MM`` of
    ``m`` (``m_reg``: the register holding the run-time count); ``astride`` and
    ``ostride`` (memory words between vectors) when given."""

    m: int = 1
    m_reg: int | None = None
    astride: int | None = None
    ostride: int | None = None

    @property
    def opcode(self) -> Opcode:
        return Opcode.MV if self.m_reg is None else Opcode.MM

    def fields(self) -> dict:
        f = {"m": self.m}
        for key in ("m_reg", "astride", "ostride"):
            if getattr(self, key) is not None:
                f[key] = getattr(self, key)
        return f


class OutHalves:
    """A single layer's OUT layout: the results of consecutive tiles gathered in one half
    of the OUT buffer (``group_rows`` rows each, word aligned in memory), the halves
    alternating, each stored to ``out_addr`` when full (on channel 0 when ``channel0``,
    else round robin by half)."""

    def __init__(self, config, tiles, *, group_rows: int, n: int, out_bytes: int,
                 out_addr: int, channel0: bool):
        self.config, self.gr, self.n, self.ob = config, group_rows, n, out_bytes
        self.out_addr, self.channel0 = out_addr, channel0
        self.half = config.buffers.out_bytes // 2
        self.group_of = [t["row0"] // group_rows for t in tiles]
        self.last_of_group = {g: i for i, g in enumerate(self.group_of)}

    @staticmethod
    def fit(config, out_bits: int) -> tuple:
        """``(accept, group_rows)``: whether an OUT half holds a word-aligned whole number
        of tiles of ``rows`` rows (``accept(rows)``, for :func:`compiler.tiling.
        row_block`), and the rows of one OUT half for such tiles (``group_rows(rows)``).
        Raises :class:`CompileError` when not even ``chains`` rows are accepted."""
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

        return (lambda rows: math.lcm(rows, wq) <= half_rows), group_rows

    def place(self, i: int, tile: dict) -> tuple[int, list]:
        """``(obuf_addr, writes)`` of tile ``i``."""
        g = self.group_of[i]
        obuf = (g % 2) * self.half + (tile["row0"] - g * self.gr) * self.ob
        return obuf, [span(Buffer.OUT, obuf, tile["rows"] * self.ob)]

    def done(self, sched: Scheduler, i: int) -> None:
        """ST the OUT half tile ``i`` completes."""
        g = self.group_of[i]
        if i != self.last_of_group[g]:
            return
        rows = min(self.gr, self.n - g * self.gr)
        nb = _up(rows * self.ob, self.config.word_bytes)
        base, dram = (g % 2) * self.half, self.out_addr + g * self.gr * self.ob
        sched.add(Opcode.ST, reads=[span(Buffer.OUT, base, nb)], writes=[mem(dram, nb)],
                  buf=Buffer.OUT,
                  channel=0 if self.channel0 else g % self.config.memory.channels,
                  buf_addr=base, dram_addr=dram, nbytes=nb, count=1, dram_stride=nb)


class OutRows:
    """An LLM layer's OUT layout: ``vectors`` rows of ``row_bytes`` from ``addr`` in the
    OUT buffer (INT32 results, a row per token), read there by the next operator."""

    def __init__(self, addr: int, row_bytes: int, vectors: int, out_bytes: int = 4):
        self.addr, self.row, self.vectors, self.ob = addr, row_bytes, vectors, out_bytes

    def place(self, i: int, tile: dict) -> tuple[int, list]:
        return (self.addr + tile["row0"] * self.ob,
                [span(Buffer.OUT, self.addr, self.vectors * self.row)])

    def done(self, sched: Scheduler, i: int) -> None:
        return None


@dataclass
class Loading:
    """How the tiles are loaded: ``slots`` WGT slots of ``slot_bytes`` (tile ``i`` in
    slot ``(first_slot + i) % slots``), a WGT tile's slice ``j`` on memory channel
    ``channel(j)``, LOAD ``ahead`` tiles ahead of MATRIX (1: each tile right before its
    instruction), streams in each channel's own memory when ``channel_memories``."""

    slots: int
    slot_bytes: int
    channel: object
    ahead: int = 1
    first_slot: int = 0
    channel_memories: bool = False

    def slot(self, i: int) -> int:
        return ((self.first_slot + i) % self.slots) * self.slot_bytes

    @staticmethod
    def streams_ahead(config, slots: int, bias_tiles: bool) -> int:
        """Streamed blocks whose loads may run ahead of the matrix instructions. A
        streamed load on a channel waits while the channel's previous stream is undrained
        (its slice's FIFO full until that block's MV runs), and the loads behind it wait
        in the LOAD queue: the MV must still find room to be dispatched, so the later
        blocks' loads queued ahead of it stay within ``instr_queue_depth - 1`` (a WGT
        tile's loads never wait for a consumer). One block ahead is always safe: each
        channel's reader takes its load of that block at once."""
        per_block = config.memory.channels + (1 if bias_tiles else 0)
        return max(1, min(slots, (config.instr_queue_depth - 1) // per_block))


def lower_linear(sched: Scheduler, config, tiles: list, *, k: int, streamed: bool, wfmt,
                 arith: Arithmetic, vectors: Vectors, out, loading: Loading, act: int,
                 sfu_bias=None) -> None:
    """Emit the loads and matrix instructions of one linear node (see the module
    docstring).

    ``tiles``: WGT tiles (``row0``, ``rows``, ``col0``, ``cols``, ``addr``, ``nbytes``) of
    weight format ``wfmt``, or streamed row blocks (``streams``; with ``bias_addr``,
    ``bias_nbytes``, ``bias_wfmt``, their bias tile's, when ``arith.bias`` is ``tiles``).
    With the bias in the tiles, a WGT tile of the first chunk of K holds its rows' bias.
    ``out``: an :class:`OutHalves` or :class:`OutRows`. ``act``: ACT address of the
    activations. ``sfu_bias()``: emits the bias's addition when ``arith.bias`` is ``sfu``.
    """
    assert arith.bias != "sfu" or sfu_bias is not None, "the SFU bias needs sfu_bias"
    in_tiles = arith.bias == "tiles"
    if streamed and vectors.m > config.limits.stream_tokens:
        raise CompileError(f"a streamed layer takes at most {config.limits.stream_tokens} "
                           f"tokens per matrix instruction (config limits.stream_tokens); "
                           f"the program plans {vectors.m}")
    op, requant = vectors.opcode, {**arith.fields(), **vectors.fields()}
    count = len(tiles)

    def load(i):
        t = tiles[i]
        if not streamed:
            load_wgt_tile(sched, config, loading.slot(i), t["addr"], t["nbytes"],
                          loading.channel)
            return
        if in_tiles:                        # a bias tile in a WGT slot (one LD from
            load_wgt_tile(sched, config, loading.slot(i), t["bias_addr"],   # channel 0)
                          t["bias_nbytes"], lambda j: 0, sliced=False)
        load_stream_block(sched, t, channel_memories=loading.channel_memories)

    for i in range(min(loading.ahead, count)):
        load(i)
    for i, t in enumerate(tiles):
        obuf, writes = out.place(i, t)
        slot = loading.slot(i)
        if streamed:
            mv = stream_block_fields(t, act=act, obuf_addr=obuf, writes=writes,
                                     acc_init=int(not in_tiles), **requant)
            if in_tiles:        # the accumulators start from the bias tile's bias
                box = {**t, "col0": 0, "cols": arith.group, "nbytes": t["bias_nbytes"]}
                bias_mv = wgt_tile_fields(box, k, slot=slot, act=act, obuf_addr=obuf,
                                          writes=(), wfmt=t["bias_wfmt"], bias=1, final=0,
                                          **requant)
                bias_mv["reads"].append(span(Buffer.ACT, act, arith.group))
                sched.add(Opcode.MV, **bias_mv)
                # The slot is refilled after the block's MV STREAM, which continues those
                # accumulators: a bias load on channel 0 then never races the streams
                # ahead of it (fewer cycles on several channels).
                mv["reads"].append(span(Buffer.WGT, slot, t["bias_nbytes"]))
        else:
            mv = wgt_tile_fields(t, k, slot=slot, act=act, obuf_addr=obuf, writes=writes,
                                 wfmt=wfmt, bias=int(in_tiles and t["col0"] == 0), **requant)
        mv["reads"] += arith.act_reads(act, t, k, vectors)
        sched.add(op, **mv)
        out.done(sched, i)
        if i + loading.ahead < count:
            load(i + loading.ahead)
    if arith.bias == "sfu":
        sfu_bias()
