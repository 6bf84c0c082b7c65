"""The streamed MATRIX unit: ``MV`` and ``MM`` on weights streamed through the decode unit
(ISA v3).

Data path of one ``MV`` with ``wfmt = STREAM`` (records of :mod:`airfoil.packing`, one
record per batch of ``Cs`` rows and group column, the format, N:M sparsity and FP16
scales named by each record), in each of the unit's ``slices`` slices (one per memory
channel, ``Cs = chains / slices`` chains each)::

    words[c] --> Unpacker --beats--> StepAdapter --steps--+--> StreamChain x Cs --psums--+
                                                          |                              |
    ACT --> group prefetch --group activations (every slice)                             |
                                  record scales --> FIFO --> GroupRescaler <-------------+
                                                                  |
              OUT <-- Requantizer <-- serializer <-- accs of every slice, in row order

The :class:`StepAdapter` turns the unpacker's beats (a run of lane-vectors of one
record, lane-vector ``i`` for row ``i % Cs``) into *steps*: one lane-vector per chain,
the chains' next ``lanes`` kept weights, each with its k-step index ``s`` (the lowest
step of the record's step mask not yet taken: ``0, 1, 2, ..`` for dense and N:M records,
the present steps only for block skip, whose skipped steps cost neither stream bits nor
chain cycles). A slice's chains take the same step and the same activation window in
lockstep; the window of step ``s`` of a record is the group's activations from
``s * lanes * M / N`` on (``M / N = 1`` when dense or block skip, which the chains run in
BLOCK mode), sliced from the group's activations, which a prefetcher reads from ACT
ahead of the weights (the instruction fixes the order of group columns) and pushes to
every slice's activation queue. Slices advance independently, each on its own stream.
Each chain emits one exact group partial sum per record; the rescaler scales it with
the record's exact scale (padding rows get scale 0) into 56-bit accumulators; the
batches' accumulators of the slices are requantized one per cycle in row order and
written to OUT.

An ``MM`` of ``m`` activation vectors (tokens, at most :attr:`StreamMatrix.tokens`) reads
each record once and applies it to all ``m`` vectors before the next record: the steps of
the record's first vector come from the adapter and are kept in a small *replay* memory
(one record's steps), from which the record runs again for vectors ``1 .. m - 1``; the
prefetcher pushes the group's activations of each vector in turn, the rescaler keeps an
accumulator set per vector, and each batch's ``m`` result vectors go to OUT ``ostride``
apart. The weight stream is thus read once per ``m`` tokens, and the chains take
``m`` times a record's k-steps for it.

:class:`StreamGemvHarness` is a simulation top around the unit: one AXI4 read port
(:class:`~hdl.core.axi_read.AxiReader`) per slice feeding ``words``, ACT and OUT memories
with test ports, and cycle counters.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from airfoil import isa
from airfoil.formats import ACC_BITS, REQ_M_BITS
from airfoil.packing import (BLOCK_CODE, GROUP_CODES, NM_PATTERNS, SCALE_K_SHAPE,
                             SCALE_M_SHAPE, TAG_BITS, StreamGeometry, beat_layout, record_tag)
from airfoil.sparsity import NM_PATTERNS as SPARSE_BY_NAME

from ..decode_unit.rescaler import GroupRescaler, Requantizer, token_requant_params
from ..decode_unit.unpacker import Unpacker
from ..dsp_chain.stream_chain import StreamChain
from ..pe.kinds import pe_kind, tag_value_bits
from ..streams import scale_layout
from .axi import axi4_signature
from .axi_read import AxiReader
from .fetch import ENTRY_LAYOUT
from .load import unit_ports
from .matrix import acc_read_signature, write_results
from .unit_shell import UnitShell

__all__ = ["StepAdapter", "step_layout", "replay_layout", "StreamMatrix",
           "StreamGemvHarness", "NM_NAMES"]

#: Header sparsity code of :mod:`airfoil.packing` -> pattern name (``"2:4"``); the
#: codes equal :class:`airfoil.sparsity.SparsityMode` values, the chain's run-time mode.
NM_NAMES = {**{code: name for name, nm in SPARSE_BY_NAME.items()
               for code, nm2 in NM_PATTERNS.items() if nm == nm2}, BLOCK_CODE: "block"}


def _pos_int(what, v, lo=1):
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise TypeError(f"{what} must be an integer >= {lo}, not {v!r}")
    return v


def step_layout(geometry: StreamGeometry) -> data.StructLayout:
    """Payload of one step of :class:`StepAdapter`: one lane-vector per row (chain).

    ``w``/``idx``: per row ``lanes`` signed 8-bit weights and their N:M indices; ``step``:
    the step's k-step index in its record (its bit in the record's step mask);
    ``first``/``last``: record boundaries; ``tag``,
    ``nm``, ``m``, ``k``, ``bad``, ``group``: the record's format, sparsity code, scales
    and group code as the unpacker's beat carries them.
    """
    g = geometry
    steps = max(1, g.max_record_vectors // g.rows)
    return data.StructLayout({
        "w": data.ArrayLayout(data.ArrayLayout(signed(8), g.lanes), g.rows),
        "idx": data.ArrayLayout(data.ArrayLayout(unsigned(4), g.lanes), g.rows),
        "step": unsigned(max(1, (steps - 1).bit_length())),
        "first": unsigned(1),
        "last": unsigned(1),
        "tag": unsigned(4),
        "nm": unsigned(3),
        "m": data.ArrayLayout(SCALE_M_SHAPE, g.rows),
        "k": data.ArrayLayout(SCALE_K_SHAPE, g.rows),
        "bad": unsigned(1),
        "group": unsigned(2),
    })


def replay_layout(geometry: StreamGeometry) -> data.StructLayout:
    """What the chains take of a step (of :func:`step_layout`): a record's steps are kept
    in this layout while its first token runs, and replayed for its other tokens."""
    full = step_layout(geometry).members
    return data.StructLayout({name: full[name] for name in ("w", "idx", "step", "last",
                                                             "nm", "tag")})


class StepAdapter(wiring.Component):
    """Regroup unpacker beats into steps of one lane-vector per row.

    Lane-vector ``i`` of a record belongs to row ``i % rows``; a record holds a multiple of
    ``rows`` lane-vectors, so steps never straddle records. Each cycle the adapter moves
    ``min(vectors left in the beat, rows - filled)`` lane-vectors into the step being
    built; a beat of more than ``rows`` lane-vectors is spread over several cycles, a step
    of more lane-vectors than a beat holds is gathered from several beats. A completed
    step goes to a register on ``steps`` with its k-step index: the lowest set bit of the
    record's step mask (the beat's ``mask``, taken at the record's first beat) not yet
    used by an earlier step. With ``rows >= beat_vectors`` a step or beat moves every
    cycle.

    Parameters
    ----------
    geometry : StreamGeometry

    Members
    -------
    beats : In(stream.Signature(beat_layout(geometry)))
    steps : Out(stream.Signature(step_layout(geometry)))
    """

    def __init__(self, *, geometry: StreamGeometry):
        if not isinstance(geometry, StreamGeometry):
            self._MustUse__silence = True
            raise TypeError(f"geometry must be a StreamGeometry, not {geometry!r}")
        self._geom = geometry
        super().__init__({
            "beats": In(stream.Signature(beat_layout(geometry))),
            "steps": Out(stream.Signature(step_layout(geometry))),
        })

    @property
    def geometry(self) -> StreamGeometry:
        return self._geom

    @property
    def latency(self) -> int:
        """Cycles from the handshake of a step's last beat to the step being valid."""
        return 1

    def elaborate(self, platform):
        m = Module()
        g = self._geom
        R, L, V = g.rows, g.lanes, g.beat_vectors
        b = self.beats.payload
        o = self.steps.payload
        fill = Signal(range(R + 1))
        off = Signal(range(V + 1))
        count = Signal(range(g.max_record_steps + 1))       # steps done in the record
        rem_mask = Signal(g.max_record_steps)                # present steps not yet taken
        slot_w = Signal(data.ArrayLayout(data.ArrayLayout(signed(8), L), R))
        slot_x = Signal(data.ArrayLayout(data.ArrayLayout(unsigned(4), L), R))

        vec_w = Array(Cat(*[b.w[v * L + j] for j in range(L)]) for v in range(V))
        vec_x = Array(Cat(*[b.idx[v * L + j] for j in range(L)]) for v in range(V))
        left = Signal(range(V + 1))
        room = Signal(range(R + 1))
        take = Signal(range(V + 1))
        m.d.comb += [left.eq(b.n - off), room.eq(R - fill),
                     take.eq(Mux(left < room, left, room))]
        out_free = ~self.steps.valid | self.steps.ready
        go = Signal()
        m.d.comb += go.eq(self.beats.valid & out_free & (b.n != 0))
        beat_done = Signal()
        complete = Signal()
        m.d.comb += [beat_done.eq(off + take >= b.n),
                     complete.eq((fill + take == R) | (beat_done & b.last))]
        new_w, new_x = [], []
        for s in range(R):
            inside = (s >= fill) & (s < fill + take)
            src = (off + s - fill)[:max(1, (V - 1).bit_length())] if V > 1 else 0
            nw = Signal(8 * L, name=f"new_w{s}")
            nx = Signal(4 * L, name=f"new_x{s}")
            m.d.comb += [nw.eq(Mux(inside, vec_w[src], slot_w[s].as_value())),
                         nx.eq(Mux(inside, vec_x[src], slot_x[s].as_value()))]
            new_w.append(nw)
            new_x.append(nx)
        # The record's remaining step mask: the beat's at the record's first cycle.
        msk = Signal.like(rem_mask)
        m.d.comb += msk.eq(Mux(b.first & (off == 0), b.mask, rem_mask))
        low = Signal.like(o.step)                            # lowest set bit of msk
        for i in reversed(range(g.max_record_steps)):
            with m.If(msk[i]):
                m.d.comb += low.eq(i)
        m.d.comb += self.beats.ready.eq(go & beat_done | self.beats.valid & (b.n == 0))
        with m.If(go):
            m.d.sync += [slot_w.eq(Cat(*new_w)), slot_x.eq(Cat(*new_x)),
                         off.eq(Mux(beat_done, 0, off + take)),
                         fill.eq(Mux(complete, 0, fill + take)),
                         rem_mask.eq(Mux(complete, msk & (msk - 1), msk))]
        with m.If(go & complete):
            m.d.sync += [self.steps.valid.eq(1), o.w.eq(Cat(*new_w)), o.idx.eq(Cat(*new_x)),
                         o.step.eq(low), o.first.eq(count == 0),
                         o.last.eq(beat_done & b.last), o.tag.eq(b.tag.as_value()),
                         o.nm.eq(b.nm), o.m.eq(b.m), o.k.eq(b.k), o.bad.eq(b.bad),
                         o.group.eq(b.group),
                         count.eq(Mux(beat_done & b.last, 0, count + 1))]
        with m.Elif(self.steps.ready):
            m.d.sync += self.steps.valid.eq(0)
        return m


class StreamMatrix(wiring.Component):
    """Execute ``MV`` with ``wfmt = STREAM`` on weights from the LD ``WSTREAM`` word streams.

    The unit interface is :class:`~hdl.core.matrix.MatrixUnit`'s (:func:`hdl.core.load.
    unit_ports`, ``act_rd``, ``out_wr``) plus ``words``, one stream of memory words per
    *slice*. The unit has ``slices`` slices of ``chains / slices`` chains each, one per
    memory channel: ``words[c]`` is the weight stream of slice ``c`` (LD ``WSTREAM`` on
    memory channel ``c``), which feeds that slice's own unpacker, step adapter, chains,
    scale queue and rescaler; the slices run at the same time, each at up to one word
    per cycle, and advance independently (a block-skip record takes as many steps as it
    has present k-steps). Shared by the slices: the instruction decode and checks, the
    activation prefetch (each group's activations are read once from ACT and pushed to
    every slice's activation queue, when every queue has room) and the result path
    (serializer, requantizer, OUT writes), which takes the slices' accumulator vectors
    in row order.

    An ``MM`` (``m``, or ``regs[m_reg]`` from the queue entry) applies each record to its
    ``m`` vectors in turn, vector ``j`` at ``abuf_addr + j * astride`` and its results at
    ``obuf_addr + j * ostride`` (strides in memory words; 0: ``k`` bytes and ``rows``
    results), with vector ``j``'s token scale pair at ``sbuf_addr + 8 j``.

    Rows of an ``MV`` of ``rows = R``: ``B = ceil(R / chains)`` super-batches; in
    super-batch ``j`` slice ``c`` computes rows ``j * chains + c * Cs + i`` (``i < Cs``,
    ``Cs = chains / slices``), the ``j``-th batch of its stream (a batch is ``k / group``
    records of ``Cs`` rows, group columns in k order). Rows ``>= R`` are padding: their
    records are read and computed (the packer gives them zero weights and a valid scale),
    their results are not written. This is the packing rule "row batch ``b`` of ``Cs`` rows
    goes to channel ``b % slices``" (:mod:`airfoil.packing`) for ``R`` padded to a
    multiple of ``chains``.

    Every record format the unpacker decodes (INT2, INT3, INT4, INT6, INT8, OVP4, the BitMoD
    FP4/FP3 variants) and every N:M
    pattern (and block skip) among ``patterns`` run on the same chains (signed 8-bit
    weights, one DSP per lane). ``starved`` is high while an instruction still owes records
    and some slice that owes records has neither a step nor a stream word available;
    ``starved_pc`` is its index (the core turns a starvation that nothing else can end into
    a MALFORMED error there).

    Errors: an undefined enum value, an ``MV`` with ``m != 1`` or ``m_reg``, ``m = 0``,
    ``sparsity != DENSE``, ``bias = 1``, zero
    ``rows``/``k``/``group``, a group that does not divide ``k``, a malformed record
    header (any slice's unpacker error) and a record whose group differs from the
    instruction's (the group code its beats carry) are MALFORMED; ``m`` over ``tokens``,
    ``acc_init = 0`` with ``m > 1``, a weight
    format other than ``STREAM``, a group size not built, a record whose sparsity is not
    built, ``final = 0`` (the unit leaves no accumulators behind), ``tok_scale = 1``
    without an AUX port or with ``sbuf_addr`` not 8-byte aligned, ``acc_init = 0``
    without an accumulator port or over more than ``acc_depth`` batches of ``chains``
    rows, and unaligned ``abuf_addr`` (to a word) or ``obuf_addr`` (to the output size)
    are UNSUPPORTED; activations, results or the scale pair beyond their buffer are
    BUFFER_RANGE; a record scale outside the rescaler window (or not a finite FP16
    value), or a token scale ``sm`` outside ``0 .. 2**16 - 1``, is SCALE_RANGE.

    ``tok_scale = 1`` requantizes vector ``j`` with ``(M, S) = linear_out_params(sm, se,
    k0)`` (:mod:`airfoil.fixedpoint`) of the scale pair at ``sbuf_addr + 8 j`` in AUX
    (read on ``aux_rd`` in CHECK, one pair a cycle; :func:`~hdl.decode_unit.rescaler.
    token_requant_params`), as the tile engine does. ``acc_init = 0`` continues the
    accumulators another engine left (a bias tile's ``MV`` with ``final = 0``): row ``r``
    starts from lane ``r % chains`` of accumulator batch ``r // chains``, read on
    ``acc_rd`` once per batch of ``chains`` rows as the serializer reaches it. As every
    accumulation wraps at :data:`~airfoil.formats.ACC_BITS` bits, adding the start value
    after the groups gives the same sum as starting from it.

    Parameters
    ----------
    chains : int
        Chains of the unit (all slices).
    lanes : int
        Lanes per chain (weights per lane-vector).
    word_bits : int
        Memory word width (the stream's words and the ACT/OUT rows): at most 256, or 512
        when every group size is at least the word's bytes (the activation prefetch reads
        whole words of a group).
    act_bytes, out_bytes : int
        Sizes of the ACT and OUT buffers.
    group_sizes : tuple of int
        Group sizes built (subset of 32, 64, 128).
    patterns : tuple of str
        Sparsity patterns built (``"dense"``, N:M names and ``"block"``).
    formats : sequence of str, optional
        Record formats the unpacker decodes (default: all; see :class:`~hdl.decode_unit.
        unpacker.Unpacker`); a record of another format is MALFORMED.
    scale_depth : int
        Records whose scales may wait for their partial sums (covers the chain latency).
    tokens : int
        Most activation vectors of an ``MM`` (``limits.stream_tokens`` of a config): the
        rescaler's accumulator sets and the per-token requantization table.
    slices : int
        Slices (weight streams); must divide ``chains``. The stream geometry's ``rows``
        is ``chains / slices``.
    aux_bytes : int, optional
        Size of the AUX buffer: builds ``aux_rd`` and ``tok_scale``.
    acc_depth : int, optional
        Batches of the accumulator memory the unit may read (the tile engine's,
        :attr:`~hdl.core.matrix.MatrixUnit.acc_depth`): builds ``acc_rd`` and
        ``acc_init = 0``.

    Members
    -------
    words : In(stream.Signature(unsigned(word_bits))).array(slices)
    starved : Out(1)
    starved_pc : Out(32)
    aux_rd : In(memory.ReadPort.Signature(...))
        AUX words (with ``aux_bytes``).
    acc_rd : In(acc_read_signature(...))
        Batches of ``chains`` accumulators (with ``acc_depth``).
    """

    def __init__(self, *, chains: int, lanes: int, word_bits: int, act_bytes: int,
                 out_bytes: int, group_sizes=(32, 64, 128), patterns=("dense",),
                 formats=None, scale_depth: int = 16, slices: int = 1,
                 aux_bytes: int | None = None, acc_depth: int | None = None,
                 pe: str = "dsp", tokens: int = 1):
        self._MustUse__silence = True       # until validated: a refused unit is not unused
        self._kind = pe_kind(pe)
        _pos_int("Chain count", chains)
        _pos_int("Lane count", lanes, 2)
        _pos_int("Slice count", slices)
        if chains % slices:
            raise ValueError(f"Chain count ({chains}) must be a multiple of the slice count "
                             f"({slices})")
        groups = tuple(sorted(set(group_sizes)))
        if not groups or any(gs not in (32, 64, 128) or gs % lanes for gs in groups):
            raise ValueError(f"Group sizes must be among 32, 64, 128 and multiples of lanes "
                             f"({lanes}), not {group_sizes!r}")
        if isinstance(word_bits, int) and word_bits > 256 and not (
                word_bits == 512 and min(groups) >= word_bits // 8):
            raise ValueError(f"Word width must be at most 256 bits (or 512 with every group "
                             f"size at least 64: a group's activations span whole words), "
                             f"not {word_bits}")
        self._geom = StreamGeometry(word_bits=word_bits, lanes=lanes, rows=chains // slices)
        for name, v in (("ACT", act_bytes), ("OUT", out_bytes)):
            if not isinstance(v, int) or v < word_bits // 8 or v & (v - 1):
                raise ValueError(f"{name} buffer size must be a power of two of at least one "
                                 f"word, not {v!r}")
        patterns = tuple(p for p in patterns
                         if p in ("dense", "block") or p in SPARSE_BY_NAME)
        if "dense" not in patterns:
            patterns = ("dense",) + patterns
        self._chains, self._lanes, self._wbits = chains, lanes, word_bits
        self._slices = slices
        self._act_bytes, self._out_bytes = act_bytes, out_bytes
        self._groups, self._patterns = groups, patterns
        tags = TAG_BITS if formats is None else [record_tag(f) for f in formats]
        #: Record tag -> value width of its decoded weights (the chains' cycles per step).
        self._value_bits = {record_tag(t): tag_value_bits(t) for t in tags}
        wide = [t.name for t, b in self._value_bits.items()
                if b > self._kind.stream_value_bits]
        if wide and formats is not None:
            raise ValueError(f"The {self._kind.name} PE takes weights of at most "
                             f"{self._kind.stream_value_bits} bits, not {', '.join(wide)}")
        for t in wide:
            del self._value_bits[record_tag(t)]
        self._formats = tuple(self._value_bits)
        self._scale_depth = _pos_int("Scale queue depth", scale_depth, 2)
        self._tokens = _pos_int("Token count", tokens)
        wb = word_bits // 8
        members = {
            **unit_ports(),
            "words": In(stream.Signature(unsigned(word_bits))).array(slices),
            "starved": Out(1), "starved_pc": Out(32),
            "act_rd": In(memory.ReadPort.Signature(addr_width=ceil_log2(act_bytes // wb),
                                                   shape=word_bits)),
            "out_wr": In(memory.WritePort.Signature(addr_width=ceil_log2(out_bytes // wb),
                                                    shape=word_bits, granularity=8)),
        }
        if aux_bytes is not None:
            if not isinstance(aux_bytes, int) or aux_bytes < 2 * wb or aux_bytes & (aux_bytes - 1):
                raise ValueError(f"AUX buffer size must be a power of two of at least two "
                                 f"words, not {aux_bytes!r}")
            members["aux_rd"] = In(memory.ReadPort.Signature(
                addr_width=ceil_log2(aux_bytes // wb), shape=word_bits))
        if acc_depth is not None:
            _pos_int("Accumulator depth", acc_depth, 2)
            members["acc_rd"] = In(acc_read_signature(acc_depth, chains))
        self._aux_bytes, self._acc_depth = aux_bytes, acc_depth
        super().__init__(members)
        self._MustUse__silence = False

    @staticmethod
    def config_kw(cfg) -> dict:
        """Parameters of the unit of an :class:`~airfoil.config.AccelConfig`: one slice per
        memory channel (:attr:`~airfoil.config.AccelConfig.slices`)."""
        return dict(chains=cfg.chains, lanes=cfg.lanes, word_bits=cfg.memory.word_bits,
                    act_bytes=cfg.buffers.act_bytes, out_bytes=cfg.buffers.out_bytes,
                    group_sizes=cfg.group_sizes, patterns=cfg.sparsity,
                    formats=cfg.stream_formats, slices=cfg.slices, pe=cfg.pe,
                    tokens=cfg.limits.stream_tokens)

    @classmethod
    def from_config(cls, cfg, **kw) -> "StreamMatrix":
        """The unit of an :class:`~airfoil.config.AccelConfig` (one slice per channel)."""
        return cls(**cls.config_kw(cfg), **kw)

    @staticmethod
    def geometry_of(cfg) -> StreamGeometry:
        """The stream geometry :meth:`from_config` builds for ``cfg`` (without a unit)."""
        return StreamGeometry(word_bits=cfg.memory.word_bits, lanes=cfg.lanes,
                              rows=cfg.slice_chains)

    @property
    def geometry(self) -> StreamGeometry:
        """The stream geometry of each slice: ``StreamGeometry(word_bits, lanes,
        rows=chains / slices)``."""
        return self._geom

    @property
    def slices(self) -> int:
        return self._slices

    @property
    def chains(self) -> int:
        """Chains of all slices."""
        return self._chains

    @property
    def patterns(self) -> tuple:
        return self._patterns

    @property
    def tokens(self) -> int:
        """Activation vectors (tokens) one instruction may apply each record to: the
        largest ``m`` of an ``MM`` (the rescaler's accumulator sets per chain)."""
        return self._tokens

    @property
    def group_sizes(self) -> tuple:
        return self._groups

    def elaborate(self, platform):
        m = Module()
        g = self._geom
        C, L, W, S, T = self._chains, self._lanes, self._wbits, self._slices, self._tokens
        Cs = g.rows
        wb = W // 8
        lgw = exact_log2(wb)
        lgl = exact_log2(L)
        gmax = max(self._groups)
        nm_built = [0] + [c for c, n in NM_NAMES.items() if n in self._patterns]

        def sub(name, s):
            return name if S == 1 else f"{name}{s}"

        # Per slice: unpacker, step adapter, chains, rescaler, scale and activation queues.
        slc = []
        for s in range(S):
            sl = {}
            m.submodules[sub("unpacker", s)] = sl["unp"] = Unpacker(geometry=g,
                                                                    tags=self._formats)
            m.submodules[sub("adapter", s)] = sl["adp"] = StepAdapter(geometry=g)
            wiring.connect(m, producer=sl["unp"].beats, consumer=sl["adp"].beats)
            wiring.connect(m, wiring.flipped(self.words[s]), sl["unp"].words)
            sl["chains"] = []
            for c in range(Cs):
                ch = StreamChain(kind=self._kind.name, lanes=L, patterns=self._patterns)
                m.submodules[f"chain{c}" if S == 1 else f"chain{s}_{c}"] = ch
                sl["chains"].append(ch)
            m.submodules[sub("rescaler", s)] = sl["resc"] = GroupRescaler(chains=Cs,
                                                                          group_max=gmax,
                                                                          tokens=T)
            if T > 1:
                # A record's steps, kept while its first token runs for the other tokens.
                m.submodules[sub("replay", s)] = sl["replay"] = memory.Memory(
                    shape=replay_layout(g), depth=g.max_record_steps,
                    init=[])
            m.submodules[sub("scale_q", s)] = sl["scale_q"] = fifo.SyncFIFOBuffered(
                width=scale_layout(Cs).size, depth=self._scale_depth)
            m.submodules[sub("act_q", s)] = sl["act_q"] = fifo.SyncFIFOBuffered(
                width=gmax * 8, depth=4)
            slc.append(sl)
        m.submodules.requant = req = Requantizer(tag_bits=24, per_item=True)

        # Idle, check, run, release and the error latch (an error ends the run and stops
        # the unit for good).
        m.submodules.shell = shell = UnitShell(idle_after_error=False,
                                               leave_run_on_fault=True)
        shell.serve(m, self)
        instr = shell.entry.instr
        index = shell.entry.index
        f = instr.body.matrix

        # -- decode and check ---------------------------------------------------------------
        group = f.group
        lgg = Signal(range(16))
        group_known = Signal()
        gcode = Signal(2)                   # the instruction's group as a header code
        for gs in self._groups:
            with m.If(group == gs):
                m.d.comb += [lgg.eq(exact_log2(gs)), group_known.eq(1),
                             gcode.eq(GROUP_CODES[gs])]
        k, rows = f.k, f.rows
        is_mv = instr.header.opcode.as_value() == isa.Opcode.MV.value
        mcount = Signal(32)                 # activation vectors (tokens)
        m.d.comb += mcount.eq(Mux(f.m_reg != 0, shell.entry.rv[0], f.m))
        batches = Signal(17)                # super-batches: every slice computes as many
        m.d.comb += batches.eq((rows + (C - 1)) // C)
        groups = Signal(20)
        m.d.comb += groups.eq(k >> lgg)
        lg_ob = Signal(2)
        with m.Switch(f.out_fmt.as_value()):
            with m.Case(isa.OutFormat.INT16.value):
                m.d.comb += lg_ob.eq(1)
            with m.Case(isa.OutFormat.INT32.value):
                m.d.comb += lg_ob.eq(2)
        wfmt = f.wfmt.as_value()
        code = Signal(isa.ErrorCode)
        group_pow2 = (group & (group - 1)) == 0
        k_bad = (k == 0) | ((k & (group - 1)) != 0)
        # Bytes between consecutive activation / result vectors, and the extents of all
        # vectors.
        astr = Signal(24)
        ostr = Signal(24)
        m.d.comb += [astr.eq(Mux(f.astride != 0, f.astride << lgw, k)),
                     ostr.eq(Mux(f.ostride != 0, f.ostride << lgw, rows << lg_ob))]
        act_end, out_end, aux_end = Signal(64), Signal(64), Signal(64)
        m.d.comb += [act_end.eq(f.abuf_addr + (mcount - 1) * astr + k),
                     out_end.eq(f.obuf_addr + (mcount - 1) * ostr + (rows << lg_ob)),
                     aux_end.eq(f.sbuf_addr + (mcount << 3))]
        with m.If((is_mv & ((f.m_reg != 0) | (f.m != 1))) | (mcount == 0) |
                  (f.sparsity.as_value() != isa.Sparsity.DENSE.value) |
                  (f.out_fmt.as_value() > isa.OutFormat.INT32.value) |
                  (wfmt > isa.WeightFormat.STREAM.value) | f.bias | (rows == 0) |
                  (group == 0) | ~group_pow2 | k_bad):
            m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
        has_aux, has_acc = self._aux_bytes is not None, self._acc_depth is not None
        with m.Elif((wfmt != isa.WeightFormat.STREAM.value) | ~group_known | ~f.final |
                    (mcount > T) | (~f.acc_init & (mcount != 1)) |
                    (f.tok_scale if not has_aux else 0) | (~f.acc_init if not has_acc else 0)):
            m.d.comb += code.eq(isa.ErrorCode.UNSUPPORTED)
        with m.Elif((act_end > self._act_bytes) | (out_end > self._out_bytes) |
                    ((f.tok_scale & (aux_end > self._aux_bytes)) if has_aux else 0)):
            m.d.comb += code.eq(isa.ErrorCode.BUFFER_RANGE)
        with m.Elif((f.abuf_addr[:lgw] != 0) |
                    ((f.obuf_addr & ((Const(1, 3) << lg_ob) - 1)) != 0) |
                    ((f.tok_scale & (f.sbuf_addr[:3] != 0)) if has_aux else 0) |
                    ((~f.acc_init & ((rows + (C - 1)) // C > self._acc_depth))
                     if has_acc else 0)):
            m.d.comb += code.eq(isa.ErrorCode.UNSUPPORTED)

        # -- control -----------------------------------------------------------------------
        start = shell.start
        failed = shell.err
        w_done = Signal()
        run_fail = Signal()                 # a slice's error while it runs
        run_code = Signal(isa.ErrorCode)
        resc_error = Signal()
        m.d.comb += [resc_error.eq(Cat(*[sl["resc"].error for sl in slc]).any()),
                     shell.fault.eq(run_fail | resc_error),
                     shell.fault_code.eq(Mux(run_fail, run_code, isa.ErrorCode.SCALE_RANGE)),
                     shell.done.eq(w_done)]
        # The per-token requantization (M, S) of each vector, read in CHECK.
        tok_table = Array(Signal(REQ_M_BITS + 7, name=f"tok_ms{t}") for t in range(T))
        if has_aux:
            # With a token scale, CHECK reads the vectors' scale pairs from AUX one per
            # cycle (from its first cycle on, once the instruction checks out; the run
            # starts as the last pair arrives); each gives its token's (M, S), refused as
            # SCALE_RANGE if out of range.
            tk = Signal(range(T + 2))               # pairs read
            pend = Signal()                         # a pair arrives this cycle
            pend_i = Signal(range(T))
            pend_addr = Signal(24)
            pair_addr = Signal(24)
            m.d.comb += pair_addr.eq(f.sbuf_addr + (tk << 3))
            tok_m, tok_s, tok_bad = token_requant_params(m, self.aux_rd.data, pend_addr,
                                                         f.k0)
            read_token = Signal()
            m.d.comb += read_token.eq(shell.checking & (code == isa.ErrorCode.NONE) &
                                      f.tok_scale & (tk != mcount) & ~(pend & tok_bad))
            m.d.sync += [pend.eq(read_token), pend_i.eq(tk), pend_addr.eq(pair_addr)]
            with m.If(shell.take):
                m.d.sync += tk.eq(0)
            with m.Elif(read_token):
                m.d.sync += tk.eq(tk + 1)
                m.d.comb += [self.aux_rd.en.eq(1), self.aux_rd.addr.eq(pair_addr >> lgw)]
            with m.If(pend & ~tok_bad):
                m.d.sync += tok_table[pend_i].eq(Cat(tok_m, tok_s))
            m.d.comb += [shell.code.eq(Mux(pend & tok_bad, isa.ErrorCode.SCALE_RANGE, code)),
                         shell.go.eq(~f.tok_scale | ((tk == mcount) & pend))]
        else:
            m.d.comb += [shell.code.eq(code), shell.go.eq(1)]
        m.d.comb += req.out_fmt.eq(f.out_fmt)
        for sl in slc:
            resc = sl["resc"]
            m.d.comb += [resc.k0.eq(f.k0), resc.use_init.eq(0), resc.init.valid.eq(0)]

        # -- activation prefetch: each (super-batch, group column) group's activations,
        #    read once and pushed to every slice's queue ------------------------------------
        a_active = Signal()
        a_word = Signal(range(gmax // wb + 1))
        a_grp = Signal(20)
        a_batch = Signal(17)
        a_tok = Signal(range(T + 1))
        aw = range(self._act_bytes // wb + 1)
        a_addr = Signal(aw)
        a_gbase = Signal(aw)                # the group's first word in vector 0
        a_tbase = Signal(aw)                # ... in vector a_tok
        a_astr = Signal(24)                 # words between vectors
        m.d.comb += a_astr.eq(astr >> lgw)
        wpg = Signal(range(gmax // wb + 1))
        m.d.comb += wpg.eq(group >> lgw)
        a_issue = Signal()
        r_valid, r_word, r_last = Signal(), Signal.like(a_word), Signal()
        # The last word of a group is read only if every queue has room for the group once
        # the group pushed in this cycle (if any) is counted.
        room = Cat(*[sl["act_q"].w_level + (r_valid & r_last) < sl["act_q"].depth
                     for sl in slc]).all()
        m.d.comb += [a_issue.eq(a_active & ~failed & ((a_word != wpg - 1) | room)),
                     self.act_rd.en.eq(a_issue), self.act_rd.addr.eq(a_addr)]
        m.d.sync += [r_valid.eq(a_issue), r_word.eq(a_word), r_last.eq(a_word == wpg - 1)]
        # Order: per super-batch, per group column, per vector (token) the group's words.
        with m.If(start):
            m.d.sync += [a_active.eq(1), a_word.eq(0), a_grp.eq(0), a_batch.eq(0),
                         a_tok.eq(0), a_addr.eq(f.abuf_addr >> lgw),
                         a_gbase.eq(f.abuf_addr >> lgw), a_tbase.eq(f.abuf_addr >> lgw)]
        with m.Elif(a_issue):
            m.d.sync += [a_word.eq(a_word + 1), a_addr.eq(a_addr + 1)]
            with m.If(a_word == wpg - 1):
                m.d.sync += a_word.eq(0)
                with m.If(a_tok != mcount - 1):
                    m.d.sync += [a_tok.eq(a_tok + 1), a_tbase.eq(a_tbase + a_astr),
                                 a_addr.eq(a_tbase + a_astr)]
                with m.Else():
                    m.d.sync += [a_tok.eq(0), a_grp.eq(a_grp + 1),
                                 a_gbase.eq(a_gbase + wpg), a_tbase.eq(a_gbase + wpg),
                                 a_addr.eq(a_gbase + wpg)]
                    with m.If(a_grp == groups - 1):
                        m.d.sync += [a_grp.eq(0), a_batch.eq(a_batch + 1),
                                     a_gbase.eq(f.abuf_addr >> lgw),
                                     a_tbase.eq(f.abuf_addr >> lgw),
                                     a_addr.eq(f.abuf_addr >> lgw)]
                        with m.If(a_batch + 1 == batches):
                            m.d.sync += a_active.eq(0)
        gact = Signal(gmax * 8)
        words_of = [Mux(r_word == i, self.act_rd.data, gact.word_select(i, W))
                    for i in range(gmax // wb)]
        with m.If(r_valid):
            m.d.sync += gact.eq(Cat(*words_of))
        for sl in slc:
            m.d.comb += [sl["act_q"].w_data.eq(Cat(*words_of)),
                         sl["act_q"].w_en.eq(r_valid & r_last)]

        # -- per slice: issue steps to the chains ------------------------------------------
        total_recs = Signal(32)            # records of each slice in this instruction
        m.d.comb += total_recs.eq(batches * groups)
        k_pad = Signal(SCALE_K_SHAPE)
        m.d.comb += k_pad.eq(Mux(f.k0 < -24, -24, Mux(f.k0 > 5, 5, f.k0)))
        errs = []                          # (condition, code) per slice, in priority order
        starving = []
        for s, sl in enumerate(slc):
            unp, adp, chains = sl["unp"], sl["adp"], sl["chains"]
            act_q, scale_q, resc = sl["act_q"], sl["scale_q"], sl["resc"]
            st = adp.steps.payload
            # The step the chains take: the adapter's for a record's first token, the
            # replayed one (kept while the first token ran) for the record's other tokens.
            i_tok = Signal(range(T), name=sub("i_tok", s))        # token of the record
            i_step = Signal(range(g.max_record_steps), name=sub("i_step", s))
            tok0 = Signal(name=sub("tok0", s))
            last_tok = Signal(name=sub("last_tok", s))
            m.d.comb += [tok0.eq(i_tok == 0), last_tok.eq(i_tok == mcount - 1)]
            fresh = Signal(replay_layout(g), name=sub("fresh", s))
            m.d.comb += [fresh.w.eq(st.w), fresh.idx.eq(st.idx), fresh.step.eq(st.step),
                         fresh.last.eq(st.last), fresh.nm.eq(st.nm), fresh.tag.eq(st.tag)]
            cur = Signal(replay_layout(g), name=sub("cur", s))
            if T > 1:
                replay = sl["replay"]
                rp_w, rp_r = replay.write_port(), replay.read_port(domain="comb")
                m.d.comb += [rp_w.addr.eq(i_step), rp_w.data.eq(fresh), rp_r.addr.eq(i_step),
                             cur.eq(Mux(tok0, fresh.as_value(), rp_r.data.as_value()))]
                m.d.comb += resc.m.eq(mcount)
            else:
                m.d.comb += cur.eq(fresh)
            active = Signal(name=sub("active", s))
            i_recs = Signal(32, name=sub("i_recs", s))         # records issued
            lg_ratio = Signal(2, name=sub("lg_ratio", s))      # log2(M / N) of the record
            exp_steps = Signal(range(gmax // L + 1), name=sub("exp_steps", s))
            nm_ok = Signal(name=sub("nm_ok", s))
            with m.Switch(cur.nm):
                for code_ in nm_built:
                    n_, mm_ = NM_PATTERNS.get(code_, (1, 1))
                    lr = exact_log2(mm_ // n_)
                    with m.Case(code_):
                        m.d.comb += [lg_ratio.eq(lr), nm_ok.eq(1),
                                     exp_steps.eq((group >> lgl) >> lr)]
            # A record of another group than the instruction's, or a step count that does
            # not fit it (a block-skip record may end before its last k-step).
            shape_bad = (st.group != gcode) | (st.step >= exp_steps) | (
                st.last & (st.nm != BLOCK_CODE) & (st.step != exp_steps - 1))
            i_batch_row = Signal(17, name=sub("i_batch_row", s))   # first row of the batch
            i_grp = Signal(20, name=sub("i_grp", s))
            ready_all = Signal(name=sub("ready_all", s))
            m.d.comb += ready_all.eq(Cat(*[ch.i.ready for ch in chains]).all())
            want = Signal(name=sub("want", s))
            m.d.comb += want.eq(active & ~failed & (~tok0 | adp.steps.valid) &
                                (i_recs != total_recs))
            fresh_ok = Signal(name=sub("fresh_ok", s))       # the adapter's step may go
            m.d.comb += fresh_ok.eq(~unp.error & nm_ok & ~shape_bad &
                                    (~st.first | scale_q.w_rdy))
            # Waiting for stream words that only a later LD WSTREAM can bring: records are
            # still owed, no step is ready and no word is offered. The core counts this as
            # a blocked unit, so a program whose loads fall short stops with an error.
            starving.append(active & (i_recs != total_recs) & tok0 & ~adp.steps.valid &
                            ~self.words[s].valid)
            errs += [(want & tok0 & unp.error, isa.ErrorCode.MALFORMED),
                     (want & tok0 & ~nm_ok, isa.ErrorCode.UNSUPPORTED),
                     (want & tok0 & shape_bad, isa.ErrorCode.MALFORMED)]
            issue = Signal(name=sub("issue", s))
            m.d.comb += issue.eq(want & (~tok0 | fresh_ok) & act_q.r_rdy & ready_all)
            m.d.comb += [adp.steps.ready.eq(issue & tok0), act_q.r_en.eq(issue & cur.last),
                         scale_q.w_en.eq(issue & tok0 & st.first)]
            if T > 1:
                m.d.comb += rp_w.en.eq(issue & tok0)
            with m.If(start):
                m.d.sync += [active.eq(1), i_recs.eq(0), i_batch_row.eq(s * Cs),
                             i_grp.eq(0), i_tok.eq(0), i_step.eq(0)]
            with m.Elif(issue):
                m.d.sync += i_step.eq(Mux(cur.last, 0, i_step + 1))
                with m.If(cur.last & ~last_tok):
                    m.d.sync += i_tok.eq(i_tok + 1)
                with m.If(cur.last & last_tok):
                    m.d.sync += [i_tok.eq(0), i_recs.eq(i_recs + 1), i_grp.eq(i_grp + 1)]
                    with m.If(i_grp == groups - 1):
                        m.d.sync += [i_grp.eq(0), i_batch_row.eq(i_batch_row + C)]
                    with m.If(i_recs + 1 == total_recs):
                        m.d.sync += active.eq(0)
            with m.If(failed):
                m.d.sync += active.eq(0)
            # Scales of the record (padding rows: m = 0, k = k0).
            sv = Signal(scale_layout(Cs), name=sub("sv", s))
            for c in range(Cs):
                pad = i_batch_row + c >= rows
                m.d.comb += [sv.m[c].eq(Mux(pad, 0, st.m[c])),
                             sv.k[c].eq(Mux(pad, k_pad, st.k[c]))]
            m.d.comb += [sv.bad.eq(st.bad), scale_q.w_data.eq(sv)]
            # The activation window of the step: lanes * M / N activations from the group.
            win_bits = chains[0].window * 8
            padded = Signal(gmax * 8 + win_bits, name=sub("padded", s))
            m.d.comb += padded.eq(act_q.r_data)
            window = Signal(win_bits, name=sub("window", s))
            m.d.comb += window.eq(padded.bit_select((cur.step << lg_ratio) * (L * 8),
                                                    win_bits))
            ib = chains[0].index_bits
            vbits = Signal(4, name=sub("vbits", s))          # value width of the record
            with m.Switch(cur.tag):
                for tag, bits in self._value_bits.items():
                    with m.Case(tag.value):
                        m.d.comb += vbits.eq(bits)
            for c, ch in enumerate(chains):
                p = ch.i.payload
                m.d.comb += [ch.i.valid.eq(issue), p.mode.as_value().eq(cur.nm),
                             p.vbits.eq(vbits), p.group_end.eq(cur.last),
                             p.last.eq(cur.last), p.w.eq(cur.w[c]), p.act.eq(window),
                             p.idx.eq(Cat(*[cur.idx[c][j][:ib] for j in range(L)]))]

            # psums -> rescaler: ``mcount`` per record, in token order
            o_grp = Signal(20, name=sub("o_grp", s))
            o_tok = Signal(range(T), name=sub("o_tok", s))
            rp = resc.psums
            m.d.comb += [rp.valid.eq(chains[0].o.valid),
                         rp.payload.batch_last.eq(o_grp == groups - 1)]
            for c, ch in enumerate(chains):
                m.d.comb += [ch.o.ready.eq(rp.ready),
                             rp.payload.psum[c].eq(ch.o.payload.psum)]
            with m.If(start):
                m.d.sync += [o_grp.eq(0), o_tok.eq(0)]
            with m.Elif(rp.valid & rp.ready):
                with m.If(o_tok == mcount - 1):
                    m.d.sync += [o_tok.eq(0),
                                 o_grp.eq(Mux(o_grp == groups - 1, 0, o_grp + 1))]
                with m.Else():
                    m.d.sync += o_tok.eq(o_tok + 1)
            m.d.comb += [resc.scales.payload.eq(scale_q.r_data),
                         resc.scales.valid.eq(scale_q.r_rdy),
                         scale_q.r_en.eq(resc.scales.ready)]
            # With several slices, a batch's accumulators wait for the serializer in a
            # short queue, so a slice goes on with its next batch meanwhile. It holds two
            # batches of results of every token: a slice that waits for the serializer has
            # then finished the batch the serializer takes next, so it never holds back
            # the activations (pushed to every slice at once) another slice needs for it.
            if S == 1:
                sl["accs"] = resc.accs
            else:
                acc_w = resc.accs.payload.shape().size
                m.submodules[f"acc_q{s}"] = acc_q = fifo.SyncFIFOBuffered(width=acc_w,
                                                                         depth=2 * T)
                m.d.comb += [acc_q.w_data.eq(resc.accs.payload),
                             acc_q.w_en.eq(resc.accs.valid),
                             resc.accs.ready.eq(acc_q.w_rdy)]
                sl["accs"] = acc_q
        # The first error of the lowest slice wins.
        for cond, ecode in reversed(errs):
            with m.If(cond):
                m.d.comb += [run_fail.eq(1), run_code.eq(ecode)]
        m.d.comb += [self.starved.eq(~failed & Cat(*starving).any()),
                     self.starved_pc.eq(index)]
        with m.If(failed):
            m.d.sync += a_active.eq(0)

        # -- serializer, requantizer, OUT writes: per super-batch, per slice its vectors
        #    (tokens) of ``Cs`` rows, in token order ----------------------------------------
        acc_shape = slc[0]["resc"].accs.payload.shape()
        held = Signal(acc_shape)
        w_busy = Signal()
        w_c = Signal(range(Cs))
        w_row = Signal(17)                  # first row of the vector being written
        w_sl = Signal(range(S))             # the slice whose vector comes next
        w_tok = Signal(range(T))            # the token of that vector
        w_obase = Signal(24)                # obuf_addr + w_tok * (bytes between vectors)
        drain = Signal(range(req.latency + 2))
        if S == 1:
            accs = slc[0]["accs"]
            m.d.comb += accs.ready.eq(~w_busy)
            take = accs.valid & accs.ready
            take_data = accs.payload
        else:
            sel_rdy = Array(sl["accs"].r_rdy for sl in slc)[w_sl]
            take = Signal()
            m.d.comb += take.eq(~w_busy & sel_rdy)
            for s, sl in enumerate(slc):
                m.d.comb += sl["accs"].r_en.eq(take & (w_sl == s))
            take_data = Array(sl["accs"].r_data for sl in slc)[w_sl]
        with m.If(start):
            m.d.sync += [w_row.eq(0), w_done.eq(0), w_sl.eq(0), w_tok.eq(0),
                         w_obase.eq(f.obuf_addr)]
        with m.If(take):
            m.d.sync += [held.eq(take_data), w_busy.eq(1), w_c.eq(0)]
        row = w_row + w_c
        acc = held[w_c] if Cs > 1 else held[0]
        if has_acc:
            # acc_init = 0 (one vector): the start value of each row, from the accumulator
            # batch of its ``chains`` rows. The read is held on that batch, so its data is
            # there from the cycle after the address moves on (before the batch's first
            # row leaves).
            w_batch = Signal(range(self._acc_depth + 1))
            init = self.acc_rd.data.word_select(w_sl * Cs + w_c, ACC_BITS).as_signed()
            m.d.comb += [self.acc_rd.addr.eq(w_batch), self.acc_rd.en.eq(~f.acc_init)]
            with m.If(start):
                m.d.sync += w_batch.eq(0)
            with m.If(w_busy & (w_c == Cs - 1) & (w_sl == S - 1)):
                m.d.sync += w_batch.eq(w_batch + 1)
            acc = Mux(f.acc_init, acc, (acc + init)[:ACC_BITS].as_signed())
        ms = Mux(f.tok_scale, tok_table[w_tok], Cat(f.req_m, f.req_s))
        m.d.comb += [
            req.inp.valid.eq(w_busy & (row < rows)),
            req.inp.payload.acc.eq(acc),
            req.inp.payload.tag.eq(w_obase + (row << lg_ob)),
            req.inp.payload.mult.eq(ms[:REQ_M_BITS]),
            req.inp.payload.shift.eq(ms[REQ_M_BITS:]),
        ]
        w_last_tok = w_tok == mcount - 1
        with m.If(w_busy):
            m.d.sync += w_c.eq(w_c + 1)
            with m.If(w_c == Cs - 1):
                m.d.sync += w_busy.eq(0)
                with m.If(w_last_tok):
                    m.d.sync += [w_tok.eq(0), w_obase.eq(f.obuf_addr), w_row.eq(w_row + Cs),
                                 w_sl.eq(Mux(w_sl == S - 1, 0, w_sl + 1))]
                    with m.If((w_sl == S - 1) & (w_row + Cs >= rows)):
                        m.d.sync += drain.eq(req.latency + 1)
                with m.Else():
                    m.d.sync += [w_tok.eq(w_tok + 1), w_obase.eq(w_obase + ostr)]
        with m.If(drain != 0):
            m.d.sync += drain.eq(drain - 1)
            with m.If(drain == 1):
                m.d.sync += w_done.eq(1)
        with m.If(w_done):
            m.d.sync += w_done.eq(0)
        write_results(m, req.out, self.out_wr, lgw=lgw, wb=wb, lg_ob=lg_ob)
        return m


class StreamGemvHarness(wiring.Component):
    """Simulation top: AXI4 reads of packed weight streams into a :class:`StreamMatrix`.

    One AXI4 read port and :class:`~hdl.core.axi_read.AxiReader` per slice: ``axi[c]``
    feeds the unit's ``words[c]``. A pulse on ``start`` sends to each reader ``c`` one read
    command (``nwords[c]`` words at byte ``addr[c]``; none when ``nwords[c]`` is 0: the
    stream already being read goes on) and starts the counters; the testbench puts the
    ``MV`` entry on ``q``. The counters run until the unit releases its tokens (``busy``
    falls): ``cycles`` (all cycles), ``beats`` (words handed to the unit, summed over the
    slices) and ``useful`` (of those, words that are not all-zero padding). ACT is written
    and OUT read through the test ports.

    Parameters
    ----------
    unit_kw : dict
        Keyword arguments of :class:`StreamMatrix` (``slices`` among them, default 1).
    max_burst, outstanding : int
        Of each AXI reader.

    Members
    -------
    axi : Out(axi4_signature(read_only=True)).array(slices)
        Verilog ports ``axi__<c>__<signal>``.
    start : In(1)
    addr : In(64).array(slices)
    nwords : In(32).array(slices)
    q : In(stream.Signature(ENTRY_LAYOUT))
    act_w : Out(memory.WritePort.Signature(...))
        ACT write port (driven by the testbench, as a memory presents it).
    out_r : Out(memory.ReadPort.Signature(...))
        OUT read port.
    busy, err : Out(1)
    err_code : Out(isa.ErrorCode)
    cycles, beats, useful : Out(32)
    """

    def __init__(self, *, unit_kw: dict, max_burst: int, outstanding: int):
        self._unit = StreamMatrix(**unit_kw)
        S = self._unit.slices
        self._readers = [AxiReader(data_width=unit_kw["word_bits"], max_burst=max_burst,
                                   outstanding=outstanding) for _ in range(S)]
        W = unit_kw["word_bits"]
        wb = W // 8
        self._act_depth = unit_kw["act_bytes"] // wb
        self._out_depth = unit_kw["out_bytes"] // wb
        super().__init__({
            "axi": Out(axi4_signature(data_width=W, read_only=True)).array(S),
            "start": In(1), "addr": In(64).array(S), "nwords": In(32).array(S),
            "q": In(stream.Signature(ENTRY_LAYOUT)),
            "act_w": Out(memory.WritePort.Signature(addr_width=ceil_log2(self._act_depth),
                                                   shape=W)),
            "out_r": Out(memory.ReadPort.Signature(addr_width=ceil_log2(self._out_depth),
                                                  shape=W)),
            "busy": Out(1), "err": Out(1), "err_code": Out(isa.ErrorCode),
            "cycles": Out(32), "beats": Out(32), "useful": Out(32),
        })

    @classmethod
    def from_config(cls, cfg) -> "StreamGemvHarness":
        """The harness of a configuration: one port per slice (memory channel)."""
        return cls(unit_kw=StreamMatrix.config_kw(cfg), max_burst=cfg.memory.max_burst,
                   outstanding=cfg.memory.outstanding)

    @property
    def unit(self) -> StreamMatrix:
        return self._unit

    def params(self) -> dict:
        """Design parameters for the metadata JSON (:func:`hdl.build.write_verilog`): word
        width, slices, ACT/OUT depths, and the bit offsets of the ``q`` entry's fields."""
        g = self._unit.geometry
        fields = {name: fld.offset for name, fld in ENTRY_LAYOUT}
        return {"word_bits": g.word_bits, "lanes": g.lanes, "chains": self._unit.chains,
                "slices": self._unit.slices, "slice_chains": g.rows,
                "act_depth": self._act_depth, "out_depth": self._out_depth,
                "patterns": list(self._unit.patterns),
                "group_sizes": list(self._unit.group_sizes),
                "entry_instr": fields["instr"], "entry_index": fields["index"]}

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = unit = self._unit
        W = unit.geometry.word_bits
        m.submodules.act = act = memory.Memory(shape=W, depth=self._act_depth, init=[])
        m.submodules.out = out = memory.Memory(shape=W, depth=self._out_depth, init=[])
        aw, orp = act.write_port(), out.read_port()
        m.d.comb += [aw.addr.eq(self.act_w.addr), aw.data.eq(self.act_w.data),
                     aw.en.eq(self.act_w.en), orp.addr.eq(self.out_r.addr),
                     orp.en.eq(self.out_r.en), self.out_r.data.eq(orp.data)]
        wiring.connect(m, unit.act_rd, act.read_port())
        wiring.connect(m, unit.out_wr, out.write_port(granularity=8))
        wiring.connect(m, wiring.flipped(self.q), unit.q)
        words, useful = [], []
        for c, rd in enumerate(self._readers):
            m.submodules[f"reader{c}" if len(self._readers) > 1 else "reader"] = rd
            axi = self.axi[c]
            for name in ("araddr", "arlen", "arsize", "arburst", "arvalid", "rready"):
                m.d.comb += getattr(axi, name).eq(getattr(rd, name))
            for name in ("arready", "rdata", "rresp", "rlast", "rvalid"):
                m.d.comb += getattr(rd, name).eq(getattr(axi, name))
            m.d.comb += [rd.cmd.valid.eq(self.start & (self.nwords[c] != 0)),
                         rd.cmd.payload.addr.eq(self.addr[c]),
                         rd.cmd.payload.beats.eq(self.nwords[c]), rd.cmd.payload.rows.eq(1),
                         rd.cmd.payload.stride.eq(0), rd.abort.eq(0)]
            wiring.connect(m, producer=rd.data, consumer=unit.words[c])
            word = rd.data.valid & rd.data.ready
            words.append(word)
            useful.append(word & rd.data.payload.any())
        m.d.comb += [unit.rel.ready.eq(1), self.err.eq(unit.err),
                     self.err_code.eq(unit.err_code)]

        def count(bits):
            return sum(bits[1:], bits[0])

        with m.If(self.start):
            m.d.sync += [self.busy.eq(1), self.cycles.eq(0), self.beats.eq(0),
                         self.useful.eq(0)]
        with m.Elif(self.busy):
            m.d.sync += [self.cycles.eq(self.cycles + 1),
                         self.beats.eq(self.beats + count(words)),
                         self.useful.eq(self.useful + count(useful))]
            with m.If((unit.rel.valid & unit.rel.ready) | unit.err):
                m.d.sync += self.busy.eq(0)
        return m
