"""The SFU unit: runs ``SFU`` instructions from its queue on the function kernels.

The unit takes the head of the SFU queue, resolves the instruction's run-time registers
into the kernel arguments (:data:`hdl.sfu.kernel.ARGS_LAYOUT`), checks them as the ISA
simulator does, starts the kernel of the function and serves the kernels' ports from
the on-chip buffers' word ports (lane select on 32-bit reads, byte-enable shift on writes),
checking every access against the size of the buffer it names. The record streams of
``ATT_QK`` and ``ATT_PV`` and the first passes of ``QUANT_TOKEN`` and ``RMSNORM`` take a
whole word per cycle; the element passes of the functions with products in each lane
(``MUL``, ``SILU``, ``GELU``, ``ROPE``, ``SOFTMAX``, ``RMSNORM``'s output) ``sfu_lanes``
elements.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from amaranth.hdl import Array, Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from airfoil import isa
from airfoil.config import LimitsConfig
from airfoil.isa import TOPK_MAX, Buffer, ErrorCode, SfuFunc

from ..core.load import unit_ports
from ..core.unit_shell import UnitShell
from . import attention, banked_attention, dequant, elementwise, quant, rmsnorm, rope, sample
from .arith import Divider, divider_latency
from .kernel import ADDR_BITS, ARGS_LAYOUT, word_bytes_of

__all__ = ["SfuUnit", "default_kernels", "config_kernels", "kernel_cycles", "unit_cycles",
           "ROWWISE", "buffer_read_signature", "buffer_write_signature"]

#: Functions on rows of ``n`` int32 split in ``heads`` segments (``n % heads == 0``).
ROWWISE = (SfuFunc.QUANT_TOKEN, SfuFunc.RMSNORM, SfuFunc.ROPE, SfuFunc.SILU, SfuFunc.MUL,
           SfuFunc.ADD, SfuFunc.GELU, SfuFunc.RELU, SfuFunc.LAYERNORM)
_ATT_KV = (SfuFunc.ATT_QK, SfuFunc.ATT_PV)
_USES_AUX = (SfuFunc.QUANT_TOKEN, SfuFunc.RMSNORM, SfuFunc.ROPE, SfuFunc.MUL, SfuFunc.ADD,
             SfuFunc.ATT_QK, SfuFunc.ATT_PV, SfuFunc.LAYERNORM, SfuFunc.TOPK_SAMPLE)
#: Functions whose kernels have products in each of ``sfu_lanes`` lanes.
_LANED = (SfuFunc.MUL, SfuFunc.SILU, SfuFunc.GELU, SfuFunc.ROPE, SfuFunc.SOFTMAX,
          SfuFunc.RMSNORM, SfuFunc.LAYERNORM)
#: Width of the unit's ``n / heads`` (``heads / kv_heads``) check division.
_CHECK_BITS = 20


def default_kernels(limits: LimitsConfig | None = None, *, word_bits: int = 32,
                    sfu_lanes: int | None = None, kv_banks: int = 1,
                    funcs=None) -> dict:
    """Kernel factories of every function with a kernel in :mod:`hdl.sfu`, sized by the
    config's ``limits`` (:class:`airfoil.config.LimitsConfig`; default: its defaults);
    the record streams of ``ATT_QK`` and ``ATT_PV``, the ``amax`` pass of ``QUANT_TOKEN``
    and the ``amax`` and sum-of-squares passes of ``RMSNORM`` and ``LAYERNORM`` take a
    buffer word of ``word_bits`` per cycle, as do ``COPY``, ``ADD`` and ``RELU`` on
    word-aligned operands; ``MUL``, ``SILU`` and ``GELU`` take ``sfu_lanes`` int32
    (default: a word's), ``ROPE`` ``sfu_lanes`` pairs per two cycles, ``SOFTMAX``'s exp and
    output passes ``sfu_lanes`` scores, the output pass of ``RMSNORM`` and ``LAYERNORM``
    ``sfu_lanes`` elements, ``ATT_PV``'s output pass a word of ``word_bits / 32`` int32;
    on a KV buffer of several ``kv_banks`` ``ATT_QK`` and ``ATT_PV`` take a key group per
    record word (:mod:`hdl.sfu.banked_attention`); ``TOPK_SAMPLE`` holds
    ``limits.topk_max`` candidates. ``funcs`` (default: every function) are the functions
    built; the kernels shared by several build only their part."""
    limits = LimitsConfig() if limits is None else limits
    funcs = frozenset(SfuFunc) if funcs is None else frozenset(funcs)
    kernels = {}
    for mod in (elementwise, quant, rmsnorm, rope, attention, dequant, sample):
        kernels.update(mod.KERNELS)
    for path in elementwise.DATAPATHS:                  # one kernel per datapath
        wide = functools.partial(elementwise.ElementwiseKernel, func=path[0],
                                 word_bits=word_bits,
                                 lanes=_lanes_of(path[0], word_bits, sfu_lanes),
                                 funcs=tuple(f for f in path if f in funcs))
        kernels.update({f: wide for f in path})
    kernels[SfuFunc.ROPE] = functools.partial(rope.RopeKernel, word_bits=word_bits,
                                              lanes=_lanes_of(SfuFunc.ROPE, word_bits,
                                                              sfu_lanes))
    kernels[SfuFunc.QUANT_TOKEN] = functools.partial(quant.QuantTokenKernel,
                                                     word_bits=word_bits)
    norms = functools.partial(rmsnorm.RmsNormKernel, word_bits=word_bits,   # one kernel
                              lanes=_lanes_of(SfuFunc.RMSNORM, word_bits, sfu_lanes),
                              funcs=tuple(f for f in rmsnorm.KERNELS if f in funcs))
    kernels[SfuFunc.RMSNORM] = kernels[SfuFunc.LAYERNORM] = norms
    kernels[SfuFunc.ATT_QK] = functools.partial(attention.AttentionScores,
                                                word_bits=word_bits)
    kernels[SfuFunc.SOFTMAX] = functools.partial(attention.Softmax, word_bits=word_bits,
                                                 lanes=_lanes_of(SfuFunc.SOFTMAX, word_bits,
                                                                 sfu_lanes))
    kernels[SfuFunc.TOPK_SAMPLE] = functools.partial(sample.TopkSampleKernel,
                                                     topk_max=limits.topk_max)
    kernels[SfuFunc.ATT_PV] = functools.partial(attention.AttentionContext,
                                                max_head_dim=limits.att_pv_max_head_dim,
                                                word_bits=word_bits)
    if kv_banks > 1:
        kernels[SfuFunc.ATT_QK] = functools.partial(
            banked_attention.BankedAttentionScores, word_bits=word_bits, banks=kv_banks)
        kernels[SfuFunc.ATT_PV] = functools.partial(
            banked_attention.BankedAttentionContext, word_bits=word_bits, banks=kv_banks,
            max_head_dim=limits.att_pv_max_head_dim)
    return {f: k for f, k in kernels.items() if f in funcs}


def config_kernels(config, geometry) -> dict:
    """:func:`default_kernels` of the core of ``config`` on the buffers of ``geometry``
    (:class:`hdl.core.buffers.BufferGeometry`): the config's limits, SFU lanes, SFU word
    (``sfu_word_width``, at most the buffers' word, which the unit serves) and SFU
    functions (``sfu_functions``), the buffers' KV banks."""
    return default_kernels(config.limits, word_bits=config.sfu_word_width,
                           sfu_lanes=config.sfu_lane_count, kv_banks=geometry.kv_banks,
                           funcs=config.sfu_functions)


def _lanes_of(func: SfuFunc, word_bits: int, sfu_lanes: int | None) -> int:
    """int32 lanes of the kernel of ``func``: ``sfu_lanes`` (default: a word's) for the
    functions with products in each lane (``MUL``, ``SILU``, ``GELU``, ``ROPE``,
    ``SOFTMAX``, ``RMSNORM`` and ``LAYERNORM``), a word's for the others."""
    if func in _LANED and sfu_lanes is not None:
        return sfu_lanes
    return word_bits // 32


def kernel_cycles(args, *, word_bits: int, sfu_lanes: int | None = None,
                  kv_banks: int = 1, topk_max: int = TOPK_MAX) -> int:
    """Cycles of the kernel of ``args["func"]`` from ``start`` to ``done`` (a dict of args)
    in a unit of :func:`default_kernels` on buffer words of ``word_bits`` (the functions
    with products in each lane on ``sfu_lanes``; ``ATT_QK`` and ``ATT_PV`` on
    ``kv_banks``; ``TOPK_SAMPLE`` with ``topk_max`` candidates)."""
    func = SfuFunc(args["func"])
    if func in attention.KERNELS:
        return attention.cycles(args, word_bytes=word_bits // 8,
                                lanes=_lanes_of(func, word_bits, sfu_lanes), kv_banks=kv_banks)
    if func in quant.KERNELS:
        return quant.cycles(args, word_bytes=word_bits // 8)
    if func in rmsnorm.KERNELS:
        return rmsnorm.cycles(args, word_bytes=word_bits // 8,
                              lanes=_lanes_of(func, word_bits, sfu_lanes))
    if func in elementwise.KERNELS:
        return elementwise.cycles(args, word_bytes=word_bits // 8,
                                  lanes=_lanes_of(func, word_bits, sfu_lanes))
    if func in rope.KERNELS:
        return rope.cycles(args, word_bytes=word_bits // 8,
                           lanes=_lanes_of(func, word_bits, sfu_lanes))
    if func in sample.KERNELS:
        return sample.cycles(args, topk_max=topk_max)
    if func in dequant.KERNELS:
        return dequant.cycles(args)
    raise ValueError(f"No SFU kernel computes {func!r}")


def unit_cycles(args, *, word_bits: int, sfu_lanes: int | None = None,
                kv_banks: int = 1, topk_max: int = TOPK_MAX) -> int:
    """Cycles the unit spends on a well-formed instruction, queue handshake to release,
    on buffer words of ``word_bits`` (the functions with products in each lane on
    ``sfu_lanes``; ``ATT_QK`` and ``ATT_PV`` on a KV buffer of ``kv_banks`` banks;
    ``TOPK_SAMPLE`` with ``topk_max`` candidates).

    Accept (1), check (1; plus the divider's latency for row-wise and ``ATT_QK``/
    ``ATT_PV`` functions), kernel start (1), the kernel's :func:`kernel_cycles` and the
    release handshake (1).
    """
    func = SfuFunc(args["func"])
    div = divider_latency(_CHECK_BITS) if func in ROWWISE + _ATT_KV else 0
    return 4 + div + kernel_cycles(args, word_bits=word_bits, sfu_lanes=sfu_lanes,
                                   kv_banks=kv_banks, topk_max=topk_max)


def buffer_read_signature(word_bits: int) -> wiring.Signature:
    """Unit-side read port of a buffer: ``buf``, word ``addr``, ``en``; ``data`` a cycle later."""
    lg = exact_log2(word_bits // 8)
    return wiring.Signature({"buf": Out(Buffer), "addr": Out(ADDR_BITS - lg), "en": Out(1),
                             "data": In(word_bits)})


def buffer_write_signature(word_bits: int) -> wiring.Signature:
    """Unit-side write port of a buffer: ``buf``, word ``addr``, ``data``, byte enables."""
    lg = exact_log2(word_bits // 8)
    return wiring.Signature({"buf": Out(Buffer), "addr": Out(ADDR_BITS - lg),
                             "data": Out(word_bits), "en": Out(word_bits // 8)})


class SfuUnit(wiring.Component):
    """Execute ``SFU`` instructions one at a time on the function kernels.

    Errors (sticky, like the other units; ``err_pc`` is the instruction's index): an
    undefined function or buffer, ``n < 1``, ``rows < 1``, ``n`` not a multiple of
    ``heads`` (row-wise functions), ``kv_heads < 1``, ``heads`` not a multiple of
    ``kv_heads``, no keys, or on a banked KV buffer records outside it or off its words
    (attention), an int32 operand address not a multiple of 4
    (int16 tables: of 2) is MALFORMED, as is what a kernel refuses; a function without a
    kernel in ``kernels`` is UNSUPPORTED; an access at or beyond the end of its buffer is
    BUFFER_RANGE: the unit stops the kernel in that cycle, so no write out of range
    happens (earlier writes of the instruction stay done, where the ISA simulator checks
    the whole span first and writes nothing).

    Kernels stream rows, so a destination must either equal its source (in place) or not
    overlap it; ``COPY`` alone handles any overlap (like ``memmove``).

    Parameters
    ----------
    word_bits : int
        Width of a buffer word (a power of two, at least 32).
    buffer_bytes : Mapping[Buffer, int]
        Size of each buffer in bytes (a multiple of the word); a buffer not named has
        size 0.
    kernels : Mapping[SfuFunc, Callable] or None
        Kernel factory of each function built in (default: :func:`default_kernels`);
        functions mapped to one factory object share one kernel.

    Members
    -------
    q, rel, err, err_code, err_pc, idle
        :func:`hdl.core.load.unit_ports`.
    src_rd, aux_rd : :func:`buffer_read_signature`
        Reads of the instruction's ``src`` and ``aux`` buffers (latency 1).
    dst_wr : :func:`buffer_write_signature`
        Writes into its ``dst`` buffer (``aux`` for QUANT_TOKEN's scale pairs), from
        registers: a cycle after the kernel's.
    kv_rd : In(memory.ReadPort.Signature(...)), when ``kv_banks > 1``
        A bank row of the banked KV buffer (``kv_banks`` words; :mod:`airfoil.kv_banks`):
        the records ``ATT_QK`` and ``ATT_PV`` read (``aux`` must name KV), the address an
        offset in every bank.
    """

    def __init__(self, *, word_bits: int, buffer_bytes: Mapping,
                 kernels: Mapping[SfuFunc, Callable] | None = None, kv_banks: int = 1):
        wb = word_bytes_of(word_bits)
        sizes = {}
        for buf, size in dict(buffer_bytes).items():
            if not isinstance(buf, Buffer):
                raise TypeError(f"Buffer sizes are keyed by airfoil.isa.Buffer, not {buf!r}")
            if not isinstance(size, int) or size < 0 or size % wb or size >= 1 << ADDR_BITS:
                raise ValueError(f"Size of buffer {buf.name} must be a multiple of {wb} "
                                 f"bytes below 2**{ADDR_BITS}, not {size!r}")
            sizes[buf] = size
        kernels = default_kernels(word_bits=word_bits) if kernels is None else dict(kernels)
        for func, factory in kernels.items():
            if not isinstance(func, SfuFunc) or not callable(factory):
                raise TypeError(f"Kernels map SfuFunc to a kernel factory, not "
                                f"{func!r}: {factory!r}")
        self._word_bits = word_bits
        self._sizes = sizes
        self._factories = kernels
        self._kv_banks = kv_banks
        members = {
            **unit_ports(),
            "src_rd": Out(buffer_read_signature(word_bits)),
            "aux_rd": Out(buffer_read_signature(word_bits)),
            "dst_wr": Out(buffer_write_signature(word_bits)),
        }
        if kv_banks > 1:
            depth = sizes.get(Buffer.KV, 0) // kv_banks // wb
            members["kv_rd"] = In(memory.ReadPort.Signature(
                addr_width=max(1, (depth - 1).bit_length()), shape=kv_banks * word_bits))
        super().__init__(members)
        #: The kernel instances, by function (read only after construction); functions
        #: given one factory object share one instance (one datapath, ``args.func``
        #: selects).
        built = {}
        self.kernels = {}
        for func, factory in sorted(kernels.items(), key=lambda kv: kv[0].value):
            if id(factory) not in built:
                built[id(factory)] = factory()
            self.kernels[func] = built[id(factory)]
        for func, k in self.kernels.items():
            for port in (k.src, k.aux, k.dst):
                banked = port is k.aux and func in _ATT_KV and kv_banks > 1
                if len(port.data) not in ((kv_banks * word_bits,) if banked
                                          else (32, word_bits)):
                    raise ValueError(f"Kernel of {func.name} has a port of {len(port.data)} "
                                     f"bits; the unit serves 32 or a word of {word_bits}"
                                     f"{' (a KV bank row when banked)' * banked}")

    @classmethod
    def of(cls, config, geometry) -> "SfuUnit":
        """The SFU of the core of ``config`` on the buffers of ``geometry``
        (:class:`hdl.core.buffers.BufferGeometry`), with :func:`config_kernels`."""
        return cls(word_bits=geometry.word_bits, kv_banks=geometry.kv_banks,
                   buffer_bytes={b: geometry.nbytes(b) for b in isa.SFU_BUFFERS},
                   kernels=config_kernels(config, geometry))

    @property
    def word_bits(self) -> int:
        """Width of a buffer word."""
        return self._word_bits

    @property
    def buffer_bytes(self) -> dict:
        """Size of each buffer in bytes."""
        return dict(self._sizes)

    def elaborate(self, platform):
        m = Module()
        lg = exact_log2(self._word_bits // 8)
        lanes = self._word_bits // 32

        # Idle, check, run, release and the error latch.
        m.submodules.shell = shell = UnitShell(idle_after_error=True,
                                               leave_run_on_fault=False)
        shell.serve(m, self)
        instr = shell.entry.instr
        rv = shell.entry.rv
        sfu = instr.body.sfu
        func = sfu.func.as_value()
        args = Signal(ARGS_LAYOUT)
        m.d.comb += [
            args.func.eq(sfu.func), args.n.eq(sfu.n),
            args.rows.eq(Mux(sfu.rows_reg != 0, rv[0], sfu.rows)),
            args.heads.eq(Mux(sfu.heads == 0, 1, sfu.heads)),
            args.kv_heads.eq(sfu.kv_heads),
            args.pos.eq(Mux(sfu.pos_reg != 0, rv[1], 0)),
            args.length.eq(Mux(sfu.len_reg != 0, rv[2], 0)),
            args.src_addr.eq(sfu.src_addr), args.dst_addr.eq(sfu.dst_addr),
            args.aux_addr.eq(sfu.aux_addr), args.imm0.eq(sfu.imm0), args.imm1.eq(sfu.imm1),
        ]

        # The kernels' arguments: a register of ``args``, taken every cycle. The entry and
        # its register values are fixed from CHECK on, and a kernel starts at least a
        # cycle into CHECK, so it sees this instruction's; its paths start at flip-flops
        # instead of the queue entry's field muxes.
        k_args = Signal(ARGS_LAYOUT)
        m.d.sync += k_args.eq(args)

        def is_any(funcs):
            return Cat(*[func == f.value for f in funcs]).any()

        # -- static checks ---------------------------------------------------------------
        src_b, dst_b, aux_b = (sfu.src.as_value(), sfu.dst.as_value(), sfu.aux.as_value())
        rowwise, att_kv = is_any(ROWWISE), is_any(_ATT_KV)
        uses_aux = is_any(_USES_AUX)
        bad_buf = ((src_b > Buffer.AUX.value) | (dst_b > Buffer.AUX.value) |
                   (uses_aux & (aux_b > Buffer.AUX.value)) | (aux_b > Buffer.WSTREAM.value))

        # Operand alignment, field by field, as isa.SFU_ALIGN states it.
        misaligned = Signal()
        with m.Switch(func):
            for f, fields in isa.SFU_ALIGN.items():
                with m.Case(f):
                    bad = 0
                    for name, align in fields.items():
                        bad = bad | (getattr(sfu, name)[:exact_log2(align)] != 0)
                    m.d.comb += misaligned.eq(bad)
        malformed = Signal()
        m.d.comb += malformed.eq(
            (func > max(f.value for f in SfuFunc)) | bad_buf | misaligned | (sfu.n == 0) |
            ((func != SfuFunc.COPY.value) & (args.rows == 0)) |
            (att_kv & (sfu.kv_heads == 0)) |
            (att_kv & (aux_b != Buffer.KV.value) if self._kv_banks > 1 else Const(0)) |
            (is_any(_ATT_KV + (SfuFunc.SOFTMAX,)) & (args.length == 0)))
        built = is_any(self._factories)

        m.submodules.div = div = Divider(width=_CHECK_BITS, divisor_width=10)
        m.d.comb += [div.dividend.eq(Mux(att_kv, args.heads, sfu.n)),
                     div.divisor.eq(Mux(att_kv, sfu.kv_heads, args.heads))]

        # -- kernels ---------------------------------------------------------------------
        # A range violation resets the kernels from the next cycle (a register: its
        # thousands of flip-flops are not loads of the violation's comparisons); in the
        # violating cycle the port enables are masked, and from the next the unit has
        # left RUN (the error is sticky), so no access of the kernel goes out.
        kreset = Signal()
        m.d.sync += kreset.eq(0)
        k_src_addr, k_aux_addr, k_dst_addr = (Signal(ADDR_BITS, name=f"k_{p}_addr")
                                               for p in ("src", "aux", "dst"))
        k_src_en, k_aux_en, k_dst_aux, k_done, k_err = (Signal(name=f"k_{p}") for p in
                                                        ("src_en", "aux_en", "dst_aux",
                                                         "done", "err"))
        k_dst_en = Signal(self._word_bits // 8)      # byte enables in the word
        k_dst_data = Signal(self._word_bits)
        k_code = Signal(ErrorCode)
        src_lane = Signal(range(lanes))
        aux_lane = Signal(range(lanes))
        m.d.sync += [src_lane.eq(k_src_addr[2:lg]), aux_lane.eq(k_aux_addr[2:lg])]
        start = shell.start
        running = shell.running
        shared = {}
        for f, k in self.kernels.items():
            shared.setdefault(id(k), (k, []))[1].append(f)
        for k, fs in shared.values():
            m.submodules[f"k_{fs[0].name.lower()}"] = ResetInserter(kreset)(k)
            m.d.comb += [
                k.args.eq(k_args),
                k.start.eq(start & is_any(fs)),
            ]
            # A kernel of 32-bit ports gets the lane of its address; a wide one the word;
            # a banked ATT_QK/ATT_PV the KV bank row.
            for port, rd, lane in ((k.src, self.src_rd, src_lane),
                                   (k.aux, self.aux_rd, aux_lane)):
                if self._kv_banks > 1 and port is k.aux and set(fs) <= set(_ATT_KV):
                    m.d.comb += port.data.eq(self.kv_rd.data)
                elif len(port.data) == self._word_bits:
                    m.d.comb += port.data.eq(rd.data)
                else:
                    m.d.comb += port.data.eq(rd.data.word_select(lane, 32))
        with m.If(running):
            with m.Switch(func):
                for f, k in self.kernels.items():
                    with m.Case(f):
                        m.d.comb += [
                            k_src_addr.eq(k.src.addr), k_src_en.eq(k.src.en),
                            k_aux_addr.eq(k.aux.addr), k_aux_en.eq(k.aux.en),
                            k_dst_addr.eq(k.dst.addr), k_dst_aux.eq(k.dst.aux),
                            k_done.eq(k.done), k_err.eq(k.err), k_code.eq(k.err_code),
                        ]
                        # A 32-bit write goes to every lane, enabled in its own.
                        if len(k.dst.data) == self._word_bits:
                            m.d.comb += [k_dst_data.eq(k.dst.data), k_dst_en.eq(k.dst.en)]
                        else:
                            m.d.comb += [k_dst_data.eq(Cat(*[k.dst.data] * lanes)),
                                         k_dst_en.eq(k.dst.en << (k.dst.addr[2:lg] * 4))]

        # -- buffer ports and range checks -------------------------------------------------
        size = Array(Const(self._sizes.get(b, 0), ADDR_BITS + 1) for b in
                     [next((x for x in Buffer if x.value == v), None) for v in range(8)])
        wbuf = Mux(k_dst_aux, aux_b, dst_b)
        # On a banked KV buffer ATT_QK and ATT_PV read bank rows: an offset in a bank.
        banked = att_kv if self._kv_banks > 1 else Const(0)
        aux_size = Mux(banked, self._sizes.get(Buffer.KV, 0) // self._kv_banks, size[aux_b])
        viol = Signal()
        m.d.comb += viol.eq((k_src_en & (k_src_addr >= size[src_b])) |
                            (k_aux_en & (k_aux_addr >= aux_size)) |
                            ((k_dst_en != 0) & (k_dst_addr >= size[wbuf])))
        if self._kv_banks > 1:
            m.d.comb += [self.kv_rd.addr.eq(k_aux_addr[lg:]),
                         self.kv_rd.en.eq(k_aux_en & banked & ~viol)]
        m.d.comb += [
            self.src_rd.buf.eq(sfu.src), self.src_rd.addr.eq(k_src_addr[lg:]),
            self.src_rd.en.eq(k_src_en & ~viol),
            self.aux_rd.buf.eq(sfu.aux), self.aux_rd.addr.eq(k_aux_addr[lg:]),
            self.aux_rd.en.eq(k_aux_en & ~banked & ~viol),
        ]
        # A write leaves from registers, the cycle after the kernel's: the kernels' result
        # paths end here, not across the buffer fabric at a block RAM. Nothing reads a
        # word the cycle after it is written (a pass reads before it writes), and the
        # next instruction's accesses are cycles away (release, accept, check, start).
        m.d.sync += [
            self.dst_wr.buf.as_value().eq(wbuf), self.dst_wr.addr.eq(k_dst_addr[lg:]),
            self.dst_wr.data.eq(k_dst_data),
            self.dst_wr.en.eq(Mux(viol, 0, k_dst_en)),
        ]

        # -- control ---------------------------------------------------------------------
        # CHECK: the static checks, then (rowwise and attention functions) the divisions
        # whose remainders must be 0, then a cycle that starts the kernel.
        def refuse(code):
            m.d.comb += shell.code.eq(code)
            m.next = "FIRST"

        with m.FSM(name="check"):
            with m.State("FIRST"):
                with m.If(shell.checking):
                    with m.If(malformed):
                        refuse(ErrorCode.MALFORMED)
                    with m.Elif(rowwise | att_kv):
                        m.d.comb += div.start.eq(1)
                        m.next = "DIVIDE"
                    with m.Elif(~built):
                        refuse(ErrorCode.UNSUPPORTED)
                    with m.Else():
                        m.next = "START"
            with m.State("DIVIDE"):
                with m.If(div.done):
                    with m.If(div.remainder != 0):
                        refuse(ErrorCode.MALFORMED)
                    with m.Elif(~built):
                        refuse(ErrorCode.UNSUPPORTED)
                    with m.Else():
                        m.next = "START"
            with m.State("START"):
                m.d.comb += shell.go.eq(1)
                m.next = "FIRST"

        # RUN: until the kernel is done; a range violation or a kernel's error ends it.
        def fail(code):
            m.d.comb += [shell.fault.eq(1), shell.fault_code.eq(code), shell.cancel.eq(1)]

        with m.If(running):
            with m.If(viol):
                m.d.sync += kreset.eq(1)
                fail(ErrorCode.BUFFER_RANGE)
            with m.Elif(k_done & k_err):
                fail(k_code)
            with m.Elif(k_done):
                m.d.comb += shell.done.eq(1)
        return m
