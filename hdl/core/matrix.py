"""The MATRIX unit: ``MV``/``MM`` on the dense chain engine with the group rescaler.

Data path of one vector of an ``MV``/``MM`` (a weight tile of ``rows`` rows, see
:class:`airfoil.formats.TileLayout`)::

    WGT port 0 + ACT --operand stream--> PeArray (chains + group rescale) ---accs----->
    WGT port 1 --scales, bias------------------------------------^          |
    AUX --(M, S) per vector--------------------------------------------+    |
                                     OUT <-- Requantizer <-- serializer <---+

The compute back end is a :class:`~hdl.pe.array.PeArray` of the config's PE kind:
``dsp`` (the dense chains and the group rescaler, one step per cycle), ``bitserial``
(BitMoD lanes, 4 cycles per step) or ``lut`` (T-MAC tables, 4 cycles per step, INT4
only); the operand stream waits for it. The memory side reads one INT4 step (one WGT row) per cycle, or one INT8 step in two
cycles, and the activations of the step; the chains take ``chains x lanes`` weights per
cycle. The scale/bias reader (one WGT row per cycle) runs ahead through small queues, as
does the reader of the per-vector requantization parameters. The serializer requantizes
the ``chains`` results of a batch one per cycle while the next batch runs. The ``m``
vectors of an ``MM`` run one after the other through the same path.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import fifo, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from airfoil import isa
from airfoil.config import TILE_FORMATS_OF_PE, k_split_batches
from airfoil.formats import ACC_BITS, FORMAT_BY_NAME, REQ_M_BITS

from ..decode_unit.fp16 import fp16_fixed_hw
from ..decode_unit.rescaler import TOKEN_REQUANT_STAGES, Requantizer, token_requant_params
from ..pe.array import PeArray
from ..streams import init_layout, scale_layout
from .buffers import BufferGeometry
from .load import capped_product, unit_ports
from .matrix_timing import matrix_cycles
from .ram import Ram
from .unit_shell import UnitShell

__all__ = ["MatrixUnit", "acc_depth", "acc_read_signature", "write_results", "MS_QUEUE_DEPTH"]

#: Entries of the queue of the vectors' requantization ``(M, S)``: two ahead of the
#: serializer and every pair in token_requant_params' pipeline, so that the pairs are
#: read one a cycle.
MS_QUEUE_DEPTH = 2 + TOKEN_REQUANT_STAGES + 1


def write_results(m: Module, results, out_wr, *, lgw: int, wb: int, lg_ob) -> None:
    """Write each result leaving a :class:`Requantizer` (``results``, always taken) into
    the OUT port: its ``tag`` is the byte address, ``lg_ob`` the log2 of the result size
    (1, 2 or 4 bytes), ``wb`` the word bytes and ``lgw`` their log2."""
    o = results.payload
    lane = o.tag[:lgw]
    val = o.value.as_unsigned()
    m.d.comb += [
        out_wr.addr.eq(o.tag >> lgw),
        out_wr.data.eq((val.replicate(max(wb // 4, 1)) if wb >= 4 else val) << (lane * 8)),
    ]
    with m.If(results.valid):
        m.d.comb += out_wr.en.eq(((Const(1, 5) << (Const(1, 3) << lg_ob)) - 1) << lane)


def acc_read_signature(depth: int, chains: int) -> wiring.Signature:
    """Reads of a :class:`MatrixUnit`'s accumulator memory, from the memory's side: a
    batch index ``addr`` and ``en`` (0 unless driven) in, the batch's ``chains``
    accumulators on ``data`` a cycle after ``en``."""
    return wiring.Signature({"addr": In(ceil_log2(depth)), "en": In(1),
                             "data": Out(chains * ACC_BITS)})


def acc_depth(geometry: BufferGeometry, chains: int, group_min: int) -> int:
    """Batches of K-split accumulators a :class:`MatrixUnit` keeps (see its ``acc_depth``):
    :func:`airfoil.config.k_split_batches`, the limit the ISA simulator checks too."""
    return k_split_batches(geometry.wgt_bytes, chains, group_min)


class MatrixUnit(wiring.Component):
    """Execute ``MV`` and ``MM`` instructions on weight tiles in the WGT buffer.

    ``m`` vectors (``MM``: ``rv[0]``, the dispatcher's ``regs[m_reg]``, when ``m_reg`` is
    not 0, else the ``m`` field; ``MV``: ``m`` must be 1) run one after the other: vector
    ``j`` reads its activations at ``abuf_addr + j * astride`` (``astride`` in memory
    words; 0: ``k`` bytes), accumulates across K-chunks at accumulator row
    ``j * batches + b`` and writes its results at ``obuf_addr + j * ostride`` (0:
    ``rows`` results) in OUT, as :class:`sim.isa_sim.IsaSim` does. The weights (and
    scales) of the tile are read again for every vector: there is no weight reuse across
    vectors yet (re-reading the on-chip tile costs no cycle while the operands set the
    pace, since the chains take one step per cycle either way; reuse pays only with
    several vectors per step, i.e. more multipliers). ``tok_scale``: vector ``j`` is
    requantized with ``(M, S) = linear_out_params(sm, se, k0)``
    (:mod:`airfoil.fixedpoint`) of its scale pair at ``sbuf_addr + 8 j`` in AUX, read on
    :attr:`aux_rd` (one read per vector, ahead of the results); else with
    ``req_m``/``req_s``. Rounding is that of ``requantize_rows``.

    Errors, in the ISA simulator's order: an undefined enum value, ``MV`` with
    ``m_reg != 0`` or ``m != 1``, ``m``, ``rows`` or ``k`` of 0 are MALFORMED; a weight
    format (``STREAM`` included) or group size this instance was not built for is
    UNSUPPORTED; a ``k`` that is not a multiple of the group is MALFORMED; a tile, the
    ``m`` activation vectors, the ``m`` result vectors (``final``) or the ``m`` scale
    pairs (``final`` and ``tok_scale``) beyond their buffer are BUFFER_RANGE (all before
    the run; the ISA simulator checks the scale pairs after the group scales). Then this
    data path's own limits, UNSUPPORTED: a K-split instruction (``acc_init = 0`` or
    ``final = 0``) of more than :attr:`acc_depth` batches over all vectors, and tiles or
    vectors not aligned as it needs (``wbuf_addr`` to a WGT row, ``abuf_addr`` to
    ``lanes``, ``obuf_addr`` to the output size, ``sbuf_addr`` to 8 bytes, the bias
    section to ``chains * 4`` bytes). A bad group scale, and a scale pair whose ``sm`` is
    outside ``0 .. 2**16 - 1`` (``linear_out_params`` assumes a 16-bit ``M``; the ISA
    simulator does not check it), are SCALE_RANGE.

    Cycle cost, from the cycle the queue entry is taken to the cycle its release is
    offered: :func:`hdl.core.matrix_timing.matrix_cycles` (:meth:`cycles`; measured in
    ``tests/test_matrix_mm.py``, exact when the operands set the pace, an upper bound by
    less than the chains' latency when the scale reader or the serializer does).

    Parameters
    ----------
    geometry : BufferGeometry
    chains, lanes : int
    weight_formats : tuple of str
        Formats listed; those the PE kind computes in WGT tiles are built
        (:data:`airfoil.config.TILE_FORMATS_OF_PE`), the others are ignored.
    group_sizes : tuple of int
        Group sizes built (those that are multiples of ``lanes`` and below 512).
    acc_memory : str
        ``"ram"``: the K-split accumulators are an :class:`~hdl.core.ram.Ram` (a Verilog
        instance, for the emitted core); ``"amaranth"``: an Amaranth memory, so that the
        unit runs in ``amaranth.sim``.
    pe : str
        PE kind of the compute back end (``dsp``, ``bitserial``, ``lut``).
    lut_group : int
        Activations per table of the ``lut`` kind.

    Members
    -------
    q : In(stream.Signature(ENTRY_LAYOUT))
    rel, err, err_code, err_pc, idle
        As every unit (:func:`~hdl.core.load.unit_ports`).
    wgt_rd, sb_rd : In(memory.ReadPort.Signature(...))
        WGT rows: operands; scales and bias.
    act_rd : In(memory.ReadPort.Signature(...))
        ACT words: activations.
    out_wr : In(memory.WritePort.Signature(..., granularity=8))
        OUT words: results.
    aux_rd : In(memory.ReadPort.Signature(...))
        AUX words: per-vector scale pairs (``tok_scale``).
    acc_peek : Out(acc_read_signature(acc_depth, chains))
        Reads of the accumulator memory by another engine (a batch of ``chains``
        accumulators per word), served while this unit does not read it (it reads only
        while running): how a streamed ``MV`` continues what a bias tile's ``MV`` left.
    """

    def __init__(self, *, geometry: BufferGeometry, chains: int, lanes: int,
                 weight_formats, group_sizes, acc_memory: str = "ram", pe: str = "dsp",
                 lut_group: int = 4):
        if not isinstance(geometry, BufferGeometry):
            raise TypeError(f"geometry must be a BufferGeometry, not {geometry!r}")
        for what, v in (("Chain count", chains), ("Lane count", lanes)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TypeError(f"{what} must be a positive integer, not {v!r}")
        if acc_memory not in ("ram", "amaranth"):
            raise ValueError(f"acc_memory must be 'ram' or 'amaranth', not {acc_memory!r}")
        self._geo = geo = geometry
        self._chains, self._lanes = chains, lanes
        self._pe, self._lut_group = pe, lut_group
        self._formats = tuple(f for f in weight_formats if f in TILE_FORMATS_OF_PE[pe])
        # Groups this data path runs: whole operand steps, within the 9-bit field.
        self._groups = tuple(sorted(g for g in group_sizes if g % lanes == 0 and g < 512))
        if not self._groups:
            raise ValueError(f"MatrixUnit needs a group size that is a multiple of lanes "
                             f"({lanes}), not only {tuple(group_sizes)!r}")
        self._acc_memory = acc_memory
        super().__init__({
            **unit_ports(),
            "wgt_rd": In(memory.ReadPort.Signature(addr_width=ceil_log2(geo.wgt_depth),
                                                   shape=geo.wgt_bits)),
            "sb_rd": In(memory.ReadPort.Signature(addr_width=ceil_log2(geo.wgt_depth),
                                                  shape=geo.wgt_bits)),
            "act_rd": In(memory.ReadPort.Signature(addr_width=ceil_log2(geo.act_depth),
                                                   shape=geo.word_bits)),
            "out_wr": In(memory.WritePort.Signature(addr_width=ceil_log2(geo.out_depth),
                                                    shape=geo.word_bits, granularity=8)),
            "aux_rd": In(memory.ReadPort.Signature(addr_width=ceil_log2(geo.aux_depth),
                                                   shape=geo.word_bits)),
            "acc_peek": Out(acc_read_signature(self.acc_depth, chains)),
        })

    @property
    def acc_depth(self) -> int:
        """Batches of accumulators kept between K-chunks (the most a WGT buffer tile holds:
        batches of ``chains`` rows of the smallest group in INT4)."""
        return acc_depth(self._geo, self._chains, min(self._groups))

    @staticmethod
    def cycles(*, chains: int, lanes: int, rows: int, k: int, group: int, wfmt, m: int = 1,
               final: bool = True, use_init: bool = False, pe: str = "dsp") -> int:
        """Return the cycle cost of one ``MV``/``MM`` on ``chains x lanes`` of PE kind
        ``pe``: :func:`hdl.core.matrix_timing.matrix_cycles`."""
        return matrix_cycles(chains=chains, lanes=lanes, rows=rows, k=k, m=m, wfmt=wfmt,
                             pe=pe, final=final, group=group, use_init=use_init)

    def elaborate(self, platform):
        m = Module()
        geo = self._geo
        C, L = self._chains, self._lanes
        wb = geo.word_bytes
        lgw = geo.lg_word_bytes
        lgr = geo.lg_wgt_row_bytes
        lgl = exact_log2(L)
        gmax = max(self._groups)

        m.submodules.pe = resc = PeArray(kind=self._pe, chains=C, lanes=L, group_max=gmax,
                                         group_min=min(self._groups),
                                         lut_group=self._lut_group)
        m.submodules.requant = req = Requantizer(tag_bits=24, per_item=True)
        m.submodules.scale_q = scale_q = fifo.SyncFIFOBuffered(
            width=scale_layout(C).size, depth=4)
        m.submodules.bias_q = bias_q = fifo.SyncFIFOBuffered(
            width=init_layout(C).size, depth=4)
        # Requantization (M, S) of each vector, in vector order (REQ_M_BITS + 7 bits).
        m.submodules.ms_q = ms_q = fifo.SyncFIFOBuffered(width=REQ_M_BITS + 7,
                                                         depth=MS_QUEUE_DEPTH)
        # Accumulators a K-chunk leaves for the next one (acc_init = 0 / final = 0), at
        # index ``j * batches + b`` for vector ``j`` and batch ``b``.
        acc_depth = self.acc_depth
        if self._acc_memory == "ram":
            m.submodules.accmem = accmem = Ram(width=C * ACC_BITS, depth=acc_depth)
            acc_rd, acc_wr = accmem.rd0, accmem.wr
        else:
            m.submodules.accmem = accmem = memory.Memory(shape=C * ACC_BITS, depth=acc_depth,
                                                         init=[])
            acc_rd, acc_wr = accmem.read_port(transparent_for=()), accmem.write_port()

        # Idle, check, run, release and the error latch (stopped for good by an error).
        m.submodules.shell = shell = UnitShell(idle_after_error=False,
                                               leave_run_on_fault=False)
        shell.serve(m, self)
        instr = shell.entry.instr
        rv0 = shell.entry.rv[0]
        f = instr.body.matrix

        # -- decode and check -----------------------------------------------------------
        wfmt = f.wfmt.as_value()
        is8 = Signal()
        m.d.comb += is8.eq(wfmt == isa.WeightFormat.INT8.value)
        is_mv = instr.header.opcode.as_value() == isa.Opcode.MV.value
        group = f.group
        lgg = Signal(range(16))
        group_known = Signal()
        for g in self._groups:
            with m.If(group == g):
                m.d.comb += [lgg.eq(exact_log2(g)), group_known.eq(1)]
        k = f.k
        rows = f.rows
        mcount = Signal(32)       # vectors
        last_vec = Signal(32)     # mcount - 1
        m.d.comb += [mcount.eq(Mux(f.m_reg != 0, rv0, f.m)), last_vec.eq(mcount - 1)]
        batches = Signal(17)
        padded = Signal(32)
        m.d.comb += [batches.eq((rows + (C - 1)) // C), padded.eq(batches * C)]
        groups = Signal(20)
        m.d.comb += groups.eq(k >> lgg)

        def up(v, a=wb):
            return (v + (a - 1)) & ~Const(a - 1, 64)

        # The tile's layout, as airfoil.formats.TileLayout (the bias at a multiple of
        # 4 * chains too): computed from the entry, registered in PREP (below) so that
        # its products and sums are not on the path of the check or of the run's start.
        layout_scale = Signal(48)
        layout_bias = Signal(48)
        layout_end = Signal(48)
        wbytes = Mux(is8, padded * k, (padded * k) >> 1)
        m.d.comb += [
            layout_scale.eq(up(wbytes)),
            layout_bias.eq(up(layout_scale + padded * groups * 2, max(wb, 4 * C))),
            layout_end.eq(up(layout_bias + Mux(f.bias, padded * 4, 0))),
        ]
        scale_off = Signal(48)
        bias_off = Signal(48)
        nbytes = Signal(48)
        lg_ob = Signal(2)
        with m.Switch(f.out_fmt.as_value()):
            with m.Case(isa.OutFormat.INT16.value):
                m.d.comb += lg_ob.eq(1)
            with m.Case(isa.OutFormat.INT32.value):
                m.d.comb += lg_ob.eq(2)
        # Bytes between consecutive activation / result vectors.
        astr = Signal(24)
        ostr = Signal(24)
        m.d.comb += [astr.eq(Mux(f.astride != 0, f.astride << lgw, k)),
                     ostr.eq(Mux(f.ostride != 0, f.ostride << lgw, rows << lg_ob))]
        # Extents over all vectors, registered in PREP; each is only compared with its
        # buffer's size or the accumulators' depth, so its product is capped just past it.
        act_bits = geo.act_bytes.bit_length()
        out_bits = geo.out_bytes.bit_length()
        acc_bits = acc_depth.bit_length()
        act_end = Signal(64)
        out_end = Signal(64)
        aux_end = Signal(64)
        vec_batches = Signal(64)

        fmt_ok = Signal()
        for name in self._formats:
            with m.If(wfmt == FORMAT_BY_NAME[name].value):
                m.d.comb += fmt_ok.eq(1)
        code = Signal(isa.ErrorCode)
        k_bad = group_known & ((k & ((Const(1, 20) << lgg) - 1)) != 0)
        bias_addr = f.wbuf_addr + bias_off
        ksplit = ~f.acc_init | ~f.final
        # Checked in the ISA simulator's order; this data path's own limits come last.
        with m.If((f.sparsity.as_value() != isa.Sparsity.DENSE.value) |
                  (f.out_fmt.as_value() > isa.OutFormat.INT32.value) |
                  (wfmt > isa.WeightFormat.STREAM.value) |
                  (is_mv & ((f.m_reg != 0) | (f.m != 1))) |
                  (mcount == 0) | (rows == 0) | (k == 0)):
            m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
        with m.Elif(~fmt_ok | ~group_known):
            m.d.comb += code.eq(isa.ErrorCode.UNSUPPORTED)
        with m.Elif(k_bad):
            m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
        with m.Elif((f.wbuf_addr + nbytes > geo.wgt_bytes) | (act_end > geo.act_bytes) |
                    (f.final & (out_end > geo.out_bytes)) |
                    (f.final & f.tok_scale & (aux_end > geo.aux_bytes))):
            m.d.comb += code.eq(isa.ErrorCode.BUFFER_RANGE)
        with m.Elif((ksplit & (vec_batches > acc_depth)) |
                    (f.wbuf_addr[:lgr] != 0) | (f.abuf_addr[:lgl] != 0) |
                    ((f.obuf_addr & ((Const(1, 3) << lg_ob) - 1)) != 0) |
                    (f.final & f.tok_scale & (f.sbuf_addr[:3] != 0)) |
                    (f.bias & f.acc_init & (bias_addr[:exact_log2(C * 4)] != 0))):
            m.d.comb += code.eq(isa.ErrorCode.UNSUPPORTED)

        # -- control ----------------------------------------------------------------------
        start = shell.start
        p_active = Signal()
        sb_active = Signal()
        w_done = Signal()
        ms_bad = Signal()
        m.d.comb += [shell.fault.eq(resc.error | ms_bad),
                     shell.fault_code.eq(isa.ErrorCode.SCALE_RANGE)]
        # The first cycle of CHECK prepares what the check and the run need.
        prep = Signal()
        m.d.sync += prep.eq(shell.take)
        with m.If(prep):
            m.d.sync += [
                act_end.eq(f.abuf_addr + capped_product(last_vec, astr, act_bits) + k),
                out_end.eq(f.obuf_addr + capped_product(last_vec, ostr, out_bits) +
                           (rows << lg_ob)),
                aux_end.eq(f.sbuf_addr + (mcount << 3)),
                vec_batches.eq(capped_product(mcount, batches, acc_bits)),
                scale_off.eq(layout_scale), bias_off.eq(layout_bias), nbytes.eq(layout_end),
            ]
        m.d.comb += [shell.code.eq(Mux(prep, isa.ErrorCode.NONE, code)), shell.go.eq(~prep),
                     shell.done.eq(w_done)]

        m.d.comb += [resc.k0.eq(f.k0), resc.use_init.eq((f.bias & f.acc_init) | ~f.acc_init),
                     req.out_fmt.eq(f.out_fmt)]

        # -- operand side ----------------------------------------------------------------
        # Vector by vector; per vector the tile's batches in order, per batch its steps.
        ops = resc.operands
        spg = Signal(range(max(self._groups) // L + 1))
        m.d.comb += spg.eq(group >> lgl)
        wptr = Signal(ceil_log2(geo.wgt_depth) + 1)
        aptr = Signal(25)
        abase = Signal(25)
        p_vec = Signal(32)
        sub = Signal()
        s_in_g = Signal(range(gmax // L + 1))
        g_in_b = Signal(20)
        p_row = Signal(17)
        gl = Signal()
        bl = Signal()
        m.d.comb += [gl.eq(s_in_g == spg - 1), bl.eq(gl & (g_in_b == groups - 1))]
        s1_valid, s1_sub, s1_gl, s1_bl = Signal(), Signal(), Signal(), Signal()
        s1_sel = Signal(max(lgw - lgl, 1))
        low = Signal(geo.wgt_bits)
        adv = Signal()
        m.d.comb += [
            ops.valid.eq(s1_valid & (~is8 | s1_sub)),
            adv.eq(~ops.valid | ops.ready),
            self.wgt_rd.en.eq(adv), self.act_rd.en.eq(adv),
            self.wgt_rd.addr.eq(wptr), self.act_rd.addr.eq(aptr >> lgw),
        ]
        issue = p_active & adv
        with m.If(adv):
            m.d.sync += [s1_valid.eq(issue), s1_sub.eq(sub), s1_gl.eq(gl), s1_bl.eq(bl),
                         s1_sel.eq(aptr[lgl:lgw] if lgw > lgl else 0)]
            with m.If(s1_valid & ~s1_sub):
                m.d.sync += low.eq(self.wgt_rd.data)
        with m.If(start):
            m.d.sync += [p_active.eq(1), wptr.eq(f.wbuf_addr >> lgr), aptr.eq(f.abuf_addr),
                         abase.eq(f.abuf_addr), p_vec.eq(0),
                         sub.eq(0), s_in_g.eq(0), g_in_b.eq(0), p_row.eq(0)]
        with m.Elif(issue):
            m.d.sync += wptr.eq(wptr + 1)
            with m.If(is8 & ~sub):
                m.d.sync += sub.eq(1)
            with m.Else():
                m.d.sync += [sub.eq(0), aptr.eq(aptr + L), s_in_g.eq(s_in_g + 1)]
                with m.If(gl):
                    m.d.sync += [s_in_g.eq(0), g_in_b.eq(g_in_b + 1)]
                with m.If(bl):
                    m.d.sync += [g_in_b.eq(0), aptr.eq(abase), p_row.eq(p_row + C)]
                    with m.If(p_row + C >= rows):
                        # The vector's last batch: the next vector re-reads the tile.
                        m.d.sync += [p_row.eq(0), wptr.eq(f.wbuf_addr >> lgr)]
                        with m.If(p_vec == last_vec):
                            m.d.sync += p_active.eq(0)
                        with m.Else():
                            m.d.sync += [p_vec.eq(p_vec + 1), abase.eq(abase + astr),
                                         aptr.eq(abase + astr)]
        # Unpack one step: INT4 from one WGT row, INT8 from two (low half first).
        # Expressions sliced many times are materialized as signals (elaboration time).
        raw8 = Signal(2 * geo.wgt_bits)
        m.d.comb += raw8.eq(Cat(low, self.wgt_rd.data))
        raw4 = self.wgt_rd.data
        act = self.act_rd.data
        # One assignment per payload field: Amaranth's netlist checks cost grows with the
        # number of partial assignments to a wide signal.
        weights = []
        for j in range(C * L):
            weights.append(Mux(is8, raw8[8 * j:8 * j + 8].as_signed(),
                               raw4[4 * j:4 * j + 4].as_signed())[:8])
        m.d.comb += ops.payload.w.eq(Cat(*weights))
        if lgw > lgl:
            m.d.comb += ops.payload.x.eq(act.word_select(s1_sel, 8 * L))
        else:
            m.d.comb += ops.payload.x.eq(act[:8 * L])
        m.d.comb += [ops.payload.group_last.eq(s1_gl), ops.payload.batch_last.eq(s1_bl),
                     ops.payload.wide.eq(is8)]

        # -- scale / init side ----------------------------------------------------------
        # Per batch (of every vector): its starting accumulators (the bias from the tile,
        # or the accumulator memory when acc_init = 0), then its groups' scales.
        sptr = Signal(25)
        bptr = Signal(25)
        sb_row = Signal(17)
        sb_vec = Signal(32)
        sb_batch = Signal(range(acc_depth))
        sb_g = Signal(20)
        need_init = Signal()
        use_init = (f.bias & f.acc_init) | ~f.acc_init
        lg_s = exact_log2(C * 2)
        lg_b = exact_log2(C * 4)
        # A read is issued (stage 0) every cycle in which stage 1 is free or hands its item
        # to its queue; stage 1 holds the item whose word is on the ports (the ports keep
        # it while no new read is issued).
        s1 = Signal()
        s1_init = Signal()
        s1_ssel = Signal(max(lgr - lg_s, 1))
        s1_bsel = Signal(max(lgr - lg_b, 1))
        push = Signal()
        sb_issue = Signal()
        m.d.comb += [
            push.eq(s1 & Mux(s1_init, bias_q.w_rdy, scale_q.w_rdy)),
            bias_q.w_en.eq(push & s1_init), scale_q.w_en.eq(push & ~s1_init),
            sb_issue.eq(sb_active & (~s1 | push)),
            self.sb_rd.addr.eq(Mux(need_init, bptr, sptr) >> lgr),
            self.sb_rd.en.eq(sb_issue), acc_rd.addr.eq(Mux(sb_issue, sb_batch,
                                                           self.acc_peek.addr)),
            acc_rd.en.eq(sb_issue | self.acc_peek.en), self.acc_peek.data.eq(acc_rd.data),
        ]
        with m.If(~s1 | push):
            m.d.sync += [s1.eq(sb_issue), s1_init.eq(need_init),
                         s1_ssel.eq(sptr[lg_s:lgr] if lgr > lg_s else 0),
                         s1_bsel.eq(bptr[lg_b:lgr] if lgr > lg_b else 0)]
        with m.If(start):
            m.d.sync += [sb_active.eq(1), sptr.eq(f.wbuf_addr + scale_off),
                         bptr.eq(f.wbuf_addr + bias_off), sb_row.eq(0), sb_g.eq(0),
                         sb_vec.eq(0), sb_batch.eq(0), need_init.eq(use_init), s1.eq(0)]
        with m.Elif(sb_issue):
            with m.If(need_init):
                m.d.sync += [need_init.eq(0), bptr.eq(bptr + C * 4)]
            with m.Else():
                m.d.sync += [sptr.eq(sptr + C * 2), sb_g.eq(sb_g + 1)]
                with m.If(sb_g == groups - 1):
                    m.d.sync += [sb_g.eq(0), sb_row.eq(sb_row + C), need_init.eq(use_init),
                                 sb_batch.eq(sb_batch + 1)]
                    with m.If(sb_row + C >= rows):
                        m.d.sync += [sb_row.eq(0), sptr.eq(f.wbuf_addr + scale_off),
                                     bptr.eq(f.wbuf_addr + bias_off)]
                        with m.If(sb_vec == last_vec):
                            m.d.sync += sb_active.eq(0)
                        with m.Else():
                            m.d.sync += sb_vec.eq(sb_vec + 1)
        sbd = self.sb_rd.data
        sraw = Signal(C * 16)
        braw = Signal(C * 32)
        m.d.comb += [
            sraw.eq(sbd.word_select(s1_ssel, C * 16) if lgr > lg_s else sbd[:C * 16]),
            braw.eq(sbd.word_select(s1_bsel, C * 32) if lgr > lg_b else sbd[:C * 32]),
        ]
        sv = Signal(scale_layout(C))
        bad = Signal()
        mants, kexps, bads = [], [], []
        for c in range(C):
            mant, kexp, c_bad = fp16_fixed_hw(sraw[16 * c:16 * c + 16])
            mants.append(mant)
            kexps.append(kexp[:6])
            bads.append(c_bad)
        m.d.comb += [sv.m.eq(Cat(*mants)), sv.k.eq(Cat(*kexps)), bad.eq(Cat(*bads).any())]
        init = Signal(init_layout(C))
        inits = [Mux(f.acc_init, braw[32 * c:32 * c + 32].as_signed(),
                     acc_rd.data[ACC_BITS * c:ACC_BITS * (c + 1)].as_signed())[:ACC_BITS]
                 for c in range(C)]
        m.d.comb += init.init.eq(Cat(*inits))
        m.d.comb += [sv.bad.eq(bad), scale_q.w_data.eq(sv), bias_q.w_data.eq(init)]

        m.d.comb += [
            resc.scales.payload.eq(scale_q.r_data), resc.scales.valid.eq(scale_q.r_rdy),
            scale_q.r_en.eq(resc.scales.ready),
            resc.init.payload.eq(bias_q.r_data), resc.init.valid.eq(bias_q.r_rdy),
            bias_q.r_en.eq(resc.init.ready),
        ]

        # -- per-vector requantization parameters (final instructions only) --------------
        # tok_scale: (M, S) = linear_out_params(sm_j, se_j, k0) from the scale pair at
        # sbuf_addr + 8 j in AUX (one read per vector, up to one a cycle, as long as ms_q
        # has room for every pair in flight), through token_requant_params' pipeline;
        # else (req_m, req_s) per vector.
        ms_active = Signal()
        ms_vec = Signal(32)
        ms_ptr = Signal(25)
        rd_ptr = Signal(25)             # the byte address of the pair being read
        flight = [Signal(name=f"ms_flight{i}") for i in range(TOKEN_REQUANT_STAGES + 1)]
        in_flight = Signal(range(TOKEN_REQUANT_STAGES + 2))
        m.d.comb += self.aux_rd.addr.eq(ms_ptr >> lgw)
        tok_m, tok_s, tok_bad = token_requant_params(m, self.aux_rd.data, rd_ptr, f.k0,
                                                     pipelined=True)
        ms_issue = Signal()             # a pair's AUX read (tok_scale) or (req_m, req_s)
        tok_push = flight[-1]
        m.d.sync += [flight[0].eq(ms_issue & f.tok_scale)] + [
            flight[i].eq(flight[i - 1]) for i in range(1, len(flight))]
        m.d.sync += in_flight.eq(in_flight + (ms_issue & f.tok_scale) - tok_push)
        with m.If(start):
            m.d.sync += [ms_active.eq(f.final), ms_vec.eq(0), ms_ptr.eq(f.sbuf_addr)]
        with m.Elif(ms_active):
            with m.If(f.tok_scale):
                m.d.comb += [ms_issue.eq(ms_q.level + in_flight < MS_QUEUE_DEPTH),
                             self.aux_rd.en.eq(ms_issue)]
            with m.Else():
                m.d.comb += [ms_issue.eq(ms_q.w_rdy), ms_q.w_data.eq(Cat(f.req_m, f.req_s))]
        with m.If(tok_push):
            m.d.comb += [ms_q.w_data.eq(Cat(tok_m, tok_s)), ms_bad.eq(tok_bad)]
        m.d.comb += ms_q.w_en.eq(tok_push | (ms_issue & ~f.tok_scale))
        with m.If(ms_issue):
            m.d.sync += [ms_vec.eq(ms_vec + 1), ms_ptr.eq(ms_ptr + 8), rd_ptr.eq(ms_ptr)]
            with m.If(ms_vec == last_vec):
                m.d.sync += ms_active.eq(0)

        # -- serializer, requantizer, OUT writes ----------------------------------------------
        held = Signal.like(resc.accs.payload)
        w_busy = Signal()
        w_c = Signal(range(C))
        w_row = Signal(17)
        w_vec = Signal(32)
        obase = Signal(24)
        drain = Signal(range(req.latency + 2))
        row = w_row + w_c
        ms = ms_q.r_data
        w_go = w_busy & ms_q.r_rdy      # a vector's (M, S) is known before its rows leave
        m.d.comb += [
            req.inp.valid.eq(w_go & (row < rows)),
            req.inp.payload.acc.eq(held[w_c] if C > 1 else held[0]),
            req.inp.payload.tag.eq(obase + (row << lg_ob)),
            req.inp.payload.mult.eq(ms[:REQ_M_BITS]),
            req.inp.payload.shift.eq(ms[REQ_M_BITS:]),
        ]
        # The last result of the instruction is written ``req.latency`` cycles later.
        w_end = Signal()        # the held batch's last row leaves this cycle
        m.d.comb += w_end.eq(w_go & (w_c == C - 1))
        with m.If(w_go):
            m.d.sync += w_c.eq(w_c + 1)
            with m.If(w_c == C - 1):
                m.d.sync += [w_busy.eq(0), w_row.eq(w_row + C)]
                with m.If(w_row + C >= rows):
                    m.d.comb += ms_q.r_en.eq(1)
                    m.d.sync += [w_row.eq(0), obase.eq(obase + ostr)]
                    with m.If(w_vec == last_vec):
                        m.d.sync += drain.eq(req.latency + 1)
                    with m.Else():
                        m.d.sync += w_vec.eq(w_vec + 1)
        # The next batch is taken in the cycle the held one's last row leaves (after the
        # block above, so that its ``w_busy``/``w_c`` win).
        m.d.comb += resc.accs.ready.eq(~w_busy | w_end)
        with m.If(start):
            m.d.sync += [w_row.eq(0), w_vec.eq(0), obase.eq(f.obuf_addr), w_done.eq(0)]
        w_batch = Signal(range(acc_depth))
        m.d.comb += [acc_wr.addr.eq(w_batch), acc_wr.data.eq(resc.accs.payload)]
        with m.If(start):
            m.d.sync += w_batch.eq(0)
        with m.If(resc.accs.valid & resc.accs.ready):
            m.d.comb += acc_wr.en.eq(~f.final)
            m.d.sync += w_batch.eq(w_batch + 1)
            with m.If(f.final):
                m.d.sync += [held.eq(resc.accs.payload), w_busy.eq(1), w_c.eq(0)]
            with m.Else():
                m.d.sync += w_row.eq(w_row + C)
                with m.If(w_row + C >= rows):
                    m.d.sync += w_row.eq(0)
                    with m.If(w_vec == last_vec):
                        m.d.sync += drain.eq(1)
                    with m.Else():
                        m.d.sync += w_vec.eq(w_vec + 1)
        with m.If(drain != 0):
            m.d.sync += drain.eq(drain - 1)
            with m.If(drain == 1):
                m.d.sync += w_done.eq(1)
        with m.If(w_done):
            m.d.sync += w_done.eq(0)
        write_results(m, req.out, self.out_wr, lgw=lgw, wb=wb, lg_ob=lg_ob)
        return m
