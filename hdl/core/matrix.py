"""The MATRIX unit: ``MV`` on the dense chain engine with the group rescaler.

Data path of one ``MV`` (a weight tile of ``rows`` rows, see
:class:`airfoil.formats.TileLayout`)::

    WGT port 0 + ACT --operand stream--> DenseChains --psums--> GroupRescaler --accs-->
    WGT port 1 --scales, bias------------------------------------^          |
                                     OUT <-- Requantizer <-- serializer <---+

The memory side reads one INT4 step (one WGT row) per cycle, or one INT8 step in two
cycles, and the activations of the step; the chains take ``chains x lanes`` weights per
cycle. The scale/bias reader runs ahead through small queues. The serializer
requantizes the ``chains`` results of a batch one per cycle while the next batch runs.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, memory, wiring
from amaranth.lib.wiring import In
from amaranth.utils import ceil_log2, exact_log2

from airfoil import isa
from airfoil.formats import ACC_BITS, FORMAT_BY_NAME

from ..decode_unit.fp16 import fp16_fixed_hw
from ..decode_unit.rescaler import GroupRescaler, Requantizer
from ..dsp_chain.dense import DenseChains
from ..streams import init_layout, scale_layout
from .buffers import BufferGeometry
from .load import unit_ports
from .ram import Ram

__all__ = ["MatrixUnit"]


class MatrixUnit(wiring.Component):
    """Execute ``MV`` instructions.

    Errors: ``m != 1``, an undefined enum value, zero ``rows``/``k``/``group``, a group
    that is not a multiple of ``lanes`` or does not divide ``k`` are MALFORMED; a weight
    format or group size this instance was not built for, a K-split tile
    (``acc_init = 0`` or ``final = 0``) of more than :attr:`acc_depth` batches, and tiles
    or vectors not aligned as this data path
    needs (``wbuf_addr`` to a WGT row, ``abuf_addr`` to ``lanes``, ``obuf_addr`` to the
    output size, the bias section to ``chains * 4`` bytes) are UNSUPPORTED; a tile,
    vector or result beyond its buffer is BUFFER_RANGE; a bad group scale is SCALE_RANGE.

    Parameters
    ----------
    geometry : BufferGeometry
    chains, lanes : int
    weight_formats : tuple of str
    group_sizes : tuple of int
    """

    def __init__(self, *, geometry: BufferGeometry, chains: int, lanes: int,
                 weight_formats, group_sizes):
        self._geo = geo = geometry
        self._chains, self._lanes = chains, lanes
        self._formats = tuple(f for f in weight_formats if f in ("int4", "int8"))
        self._groups = tuple(sorted(group_sizes))
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
        })

    @property
    def acc_depth(self) -> int:
        """Batches of accumulators kept between K-chunks (the most a WGT buffer tile holds:
        batches of ``chains`` rows of the smallest group in INT4)."""
        per_batch = self._chains * min(self._groups) * 4 // 8
        return max(2, 1 << ceil_log2(self._geo.wgt_bytes // per_batch))

    def elaborate(self, platform):
        m = Module()
        geo = self._geo
        C, L = self._chains, self._lanes
        wb = geo.word_bytes
        lgw = geo.lg_word_bytes
        lgr = geo.lg_wgt_row_bytes
        lgl = exact_log2(L)
        gmax = max(self._groups)

        m.submodules.chains = chains = DenseChains(chains=C, lanes=L, group_max=gmax)
        m.submodules.rescaler = resc = GroupRescaler(chains=C, group_max=gmax)
        m.submodules.requant = req = Requantizer(tag_bits=24)
        m.submodules.scale_q = scale_q = fifo.SyncFIFOBuffered(
            width=scale_layout(C).size, depth=4)
        m.submodules.bias_q = bias_q = fifo.SyncFIFOBuffered(
            width=init_layout(C).size, depth=4)
        # Accumulators a K-chunk leaves for the next one (acc_init = 0 / final = 0).
        acc_depth = self.acc_depth
        m.submodules.accmem = accmem = Ram(width=C * ACC_BITS, depth=acc_depth)
        acc_rd, acc_wr = accmem.rd0, accmem.wr

        instr = Signal(isa.INSTR_LAYOUT)
        index = Signal(32)
        f = instr.body.matrix

        # -- decode and check -----------------------------------------------------------
        wfmt = f.wfmt.as_value()
        is8 = Signal()
        m.d.comb += is8.eq(wfmt == isa.WeightFormat.INT8.value)
        group = f.group
        lgg = Signal(range(16))
        group_known = Signal()
        for g in self._groups:
            with m.If(group == g):
                m.d.comb += [lgg.eq(exact_log2(g)), group_known.eq(1)]
        k = f.k
        rows = f.rows
        batches = Signal(17)
        padded = Signal(32)
        m.d.comb += [batches.eq((rows + (C - 1)) // C), padded.eq(batches * C)]
        groups = Signal(20)
        m.d.comb += groups.eq(k >> lgg)

        def up(v):
            return (v + (wb - 1)) & ~Const(wb - 1, 64)

        wbytes = Signal(48)
        m.d.comb += wbytes.eq(Mux(is8, padded * k, (padded * k) >> 1))
        scale_off = Signal(48)
        bias_off = Signal(48)
        nbytes = Signal(48)
        m.d.comb += [
            scale_off.eq(up(wbytes)),
            bias_off.eq(up(scale_off + padded * groups * 2)),
            nbytes.eq(up(bias_off + Mux(f.bias, padded * 4, 0))),
        ]
        lg_ob = Signal(2)
        with m.Switch(f.out_fmt.as_value()):
            with m.Case(isa.OutFormat.INT16.value):
                m.d.comb += lg_ob.eq(1)
            with m.Case(isa.OutFormat.INT32.value):
                m.d.comb += lg_ob.eq(2)

        fmt_ok = Signal()
        for name in self._formats:
            with m.If(wfmt == FORMAT_BY_NAME[name].value):
                m.d.comb += fmt_ok.eq(1)
        code = Signal(isa.ErrorCode)
        group_bad = (group == 0) | (group[:lgl] != 0)
        k_bad = (k == 0) | (group_known & ((k & ((Const(1, 20) << lgg) - 1)) != 0))
        bias_addr = f.wbuf_addr + bias_off
        with m.If((f.m != 1) | (f.sparsity.as_value() != isa.Sparsity.DENSE.value) |
                  (f.out_fmt.as_value() > isa.OutFormat.INT32.value) |
                  (wfmt > isa.WeightFormat.INT3.value) | (rows == 0) | group_bad | k_bad):
            m.d.comb += code.eq(isa.ErrorCode.MALFORMED)
        with m.Elif(~fmt_ok | ~group_known |
                    ((~f.acc_init | ~f.final) & (batches > acc_depth))):
            m.d.comb += code.eq(isa.ErrorCode.UNSUPPORTED)
        with m.Elif((f.wbuf_addr + nbytes > geo.wgt_bytes) |
                    (f.abuf_addr + k > geo.act_bytes) |
                    (f.final & (f.obuf_addr + (rows << lg_ob) > geo.out_bytes))):
            m.d.comb += code.eq(isa.ErrorCode.BUFFER_RANGE)
        with m.Elif((f.wbuf_addr[:lgr] != 0) | (f.abuf_addr[:lgl] != 0) |
                    ((f.obuf_addr & ((Const(1, 3) << lg_ob) - 1)) != 0) |
                    (f.bias & f.acc_init & (bias_addr[:exact_log2(C * 4)] != 0))):
            m.d.comb += code.eq(isa.ErrorCode.UNSUPPORTED)

        # -- control ----------------------------------------------------------------------
        start = Signal()
        failed = Signal()
        p_active = Signal()
        sb_active = Signal()
        w_done = Signal()
        m.d.comb += self.err.eq(failed)
        with m.If(resc.error & ~failed):
            m.d.sync += [failed.eq(1), self.err_code.eq(isa.ErrorCode.SCALE_RANGE),
                         self.err_pc.eq(index)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.q.ready.eq(~failed), self.idle.eq(~failed)]
                with m.If(self.q.valid & ~failed):
                    m.d.sync += [instr.eq(self.q.payload.instr),
                                 index.eq(self.q.payload.index)]
                    m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(code != isa.ErrorCode.NONE):
                    m.d.sync += [failed.eq(1), self.err_code.eq(code), self.err_pc.eq(index)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += start.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(w_done):
                    m.next = "REL"
            with m.State("REL"):
                m.d.comb += [self.rel.valid.eq(1), self.rel.payload.eq(instr.header.release)]
                with m.If(self.rel.ready):
                    m.next = "IDLE"

        m.d.comb += [resc.k0.eq(f.k0), resc.use_init.eq((f.bias & f.acc_init) | ~f.acc_init),
                     req.mult.eq(f.req_m), req.shift.eq(f.req_s), req.out_fmt.eq(f.out_fmt)]

        # -- operand side ----------------------------------------------------------------
        ops = chains.operands
        spg = Signal(range(max(self._groups) // L + 1))
        m.d.comb += spg.eq(group >> lgl)
        wptr = Signal(ceil_log2(geo.wgt_depth) + 1)
        aptr = Signal(25)
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
                    m.d.sync += [g_in_b.eq(0), aptr.eq(f.abuf_addr), p_row.eq(p_row + C)]
                    with m.If(p_row + C >= rows):
                        m.d.sync += p_active.eq(0)
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
        m.d.comb += [ops.payload.group_last.eq(s1_gl), ops.payload.batch_last.eq(s1_bl)]

        # -- scale / init side ----------------------------------------------------------
        # Per batch: its starting accumulators (the bias from the tile, or the accumulator
        # memory when acc_init = 0), then its groups' scales.
        sptr = Signal(25)
        bptr = Signal(25)
        sb_row = Signal(17)
        sb_batch = Signal(range(acc_depth))
        sb_g = Signal(20)
        need_init = Signal()
        use_init = (f.bias & f.acc_init) | ~f.acc_init
        phase = Signal()          # 0: issue a read, 1: its data is on the port
        is_init = Signal()
        m.d.comb += [self.sb_rd.addr.eq(Mux(need_init, bptr, sptr) >> lgr),
                     self.sb_rd.en.eq(~phase), acc_rd.addr.eq(sb_batch), acc_rd.en.eq(~phase)]
        with m.If(start):
            m.d.sync += [sb_active.eq(1), sptr.eq(f.wbuf_addr + scale_off),
                         bptr.eq(f.wbuf_addr + bias_off), sb_row.eq(0), sb_g.eq(0),
                         sb_batch.eq(0), need_init.eq(use_init), phase.eq(0)]
        with m.Elif(sb_active):
            with m.If(~phase):
                with m.If(Mux(need_init, bias_q.w_rdy, scale_q.w_rdy)):
                    m.d.sync += [phase.eq(1), is_init.eq(need_init)]
            with m.Else():
                m.d.sync += phase.eq(0)
                with m.If(is_init):
                    m.d.comb += bias_q.w_en.eq(1)
                    m.d.sync += [need_init.eq(0), bptr.eq(bptr + C * 4)]
                with m.Else():
                    m.d.comb += scale_q.w_en.eq(1)
                    m.d.sync += [sptr.eq(sptr + C * 2), sb_g.eq(sb_g + 1)]
                    with m.If(sb_g == groups - 1):
                        m.d.sync += [sb_g.eq(0), sb_row.eq(sb_row + C), need_init.eq(use_init),
                                     sb_batch.eq(sb_batch + 1)]
                        with m.If(sb_row + C >= rows):
                            m.d.sync += sb_active.eq(0)
        sbd = self.sb_rd.data
        lg_s = exact_log2(C * 2)
        lg_b = exact_log2(C * 4)
        sraw = Signal(C * 16)
        braw = Signal(C * 32)
        m.d.comb += [
            sraw.eq(sbd.word_select(sptr[lg_s:lgr], C * 16) if lgr > lg_s else sbd[:C * 16]),
            braw.eq(sbd.word_select(bptr[lg_b:lgr], C * 32) if lgr > lg_b else sbd[:C * 32]),
        ]
        sv = Signal(scale_layout(C))
        bad = Signal()
        mants, kexps, bads = [], [], []
        for c in range(C):
            mant, kexp, c_bad = fp16_fixed_hw(sraw[16 * c:16 * c + 16])
            mants.append(mant[:11])
            kexps.append(kexp[:6])
            bads.append(c_bad)
        m.d.comb += [sv.m.eq(Cat(*mants)), sv.k.eq(Cat(*kexps)), bad.eq(Cat(*bads).any())]
        init = Signal(init_layout(C))
        inits = [Mux(f.acc_init, braw[32 * c:32 * c + 32].as_signed(),
                     acc_rd.data[ACC_BITS * c:ACC_BITS * (c + 1)].as_signed())[:ACC_BITS]
                 for c in range(C)]
        m.d.comb += init.init.eq(Cat(*inits))
        m.d.comb += [sv.bad.eq(bad), scale_q.w_data.eq(sv), bias_q.w_data.eq(init)]

        wiring.connect(m, producer=chains.psums, consumer=resc.psums)
        m.d.comb += [
            resc.scales.payload.eq(scale_q.r_data), resc.scales.valid.eq(scale_q.r_rdy),
            scale_q.r_en.eq(resc.scales.ready),
            resc.init.payload.eq(bias_q.r_data), resc.init.valid.eq(bias_q.r_rdy),
            bias_q.r_en.eq(resc.init.ready),
        ]

        # -- serializer, requantizer, OUT writes ----------------------------------------------
        held = Signal.like(resc.accs.payload)
        w_busy = Signal()
        w_c = Signal(range(C))
        w_row = Signal(17)
        m.d.comb += resc.accs.ready.eq(~w_busy)
        with m.If(start):
            m.d.sync += [w_row.eq(0), w_done.eq(0)]
        w_batch = Signal(range(acc_depth))
        drain = Signal(range(req.latency + 2))
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
                    m.d.sync += drain.eq(1)
        row = w_row + w_c
        m.d.comb += [
            req.inp.valid.eq(w_busy & (row < rows)),
            req.inp.payload.acc.eq(held[w_c] if C > 1 else held[0]),
            req.inp.payload.tag.eq(f.obuf_addr + (row << lg_ob)),
        ]
        # The last result of the instruction is written ``req.latency`` cycles later.
        with m.If(w_busy):
            m.d.sync += w_c.eq(w_c + 1)
            with m.If(w_c == C - 1):
                m.d.sync += [w_busy.eq(0), w_row.eq(w_row + C)]
                with m.If(w_row + C >= rows):
                    m.d.sync += drain.eq(req.latency + 1)
        with m.If(drain != 0):
            m.d.sync += drain.eq(drain - 1)
            with m.If(drain == 1):
                m.d.sync += w_done.eq(1)
        with m.If(w_done):
            m.d.sync += w_done.eq(0)
        o = req.out.payload
        lane = o.tag[:lgw]
        val = o.value.as_unsigned()
        m.d.comb += [
            self.out_wr.addr.eq(o.tag >> lgw),
            self.out_wr.data.eq((val.replicate(max(wb // 4, 1)) if wb >= 4 else val)
                                << (lane * 8)),
        ]
        with m.If(req.out.valid):
            m.d.comb += self.out_wr.en.eq(((Const(1, 5) << (Const(1, 3) << lg_ob)) - 1)
                                          << lane)
        return m
