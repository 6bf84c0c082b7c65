"""Element-wise SFU kernels: ``COPY``, ``SILU``, ``GELU``, ``RELU``, ``MUL`` and ``ADD``.

A chunk per cycle: the read of chunk ``k`` is issued in one cycle and its result written
in the next (``COPY``, ``ADD``, ``RELU``) or, with the product's inputs registered, the
one after (``MUL``, ``SILU``, ``GELU``): :attr:`ElementwiseKernel.latency`. With every
operand on a buffer word (:func:`on_words`, as the compiler places its records) a chunk
is ``lanes`` int32 (a whole word for ``ADD`` and ``RELU``, the SFU's ``sfu_lanes`` for
``MUL``, ``SILU`` and ``GELU``, each lane of the gates with its own table) or, for
``COPY``, a word of bytes; otherwise it is one int32 (``COPY``: one byte), in any lane.

Functions that differ only in a table or a final select share one kernel
(:data:`DATAPATHS`), which reads the instruction's ``func``: ``SILU`` and ``GELU`` are
``x`` times a gate from one ROM holding both tables, ``RELU`` is the ``ADD`` kernel's
output select; so the GPT-2 / OPT functions add no multiplier to the SFU.
"""

from __future__ import annotations

from functools import partial

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.utils import exact_log2

from airfoil import fixedpoint as fx
from airfoil.isa import SfuFunc

from .arith import clamp, rom, sat, sat_addr, shift_round
from .kernel import ADDR_BITS, kernel_signature, lane_count

__all__ = ["ElementwiseKernel", "cycles", "on_words", "FUNCS", "KERNELS"]

#: The functions an :class:`ElementwiseKernel` can be built for.
FUNCS = (SfuFunc.COPY, SfuFunc.SILU, SfuFunc.MUL, SfuFunc.ADD, SfuFunc.GELU, SfuFunc.RELU)
#: Functions whose product's inputs are registered (latency 2).
_PRODUCTS = (SfuFunc.MUL, SfuFunc.SILU, SfuFunc.GELU)
#: The functions of each kernel: one datapath, the instruction's ``func`` selects.
DATAPATHS = ((SfuFunc.COPY,), (SfuFunc.MUL,), (SfuFunc.ADD, SfuFunc.RELU),
             (SfuFunc.SILU, SfuFunc.GELU))


def _count(args) -> int:
    return args["n"] if args["func"] == SfuFunc.COPY else args["rows"] * args["n"]


def on_words(args, *, word_bytes: int, lanes: int):
    """Whether an instruction's operands go a chunk per cycle: ``src_addr``, ``dst_addr``
    and (``ADD``, ``MUL``) ``aux_addr`` on buffer words of ``word_bytes``, and for ``ADD``'s
    broadcast row (``imm0`` nonzero) ``n`` a multiple of the ``lanes`` of a chunk.

    ``args`` is the kernel's ``args`` (a hardware expression is returned) or a dict of
    resolved arguments (a bool): one rule for the kernel and its :func:`cycles`.
    """
    if isinstance(args, dict):
        get, func = args.__getitem__, SfuFunc(args["func"])
    else:
        get, func = lambda name: getattr(args, name), args.func
    mask = word_bytes - 1
    uses_aux = (func == SfuFunc.MUL) | (func == SfuFunc.ADD)
    broadcast = (func == SfuFunc.ADD) & (get("imm0") != 0)
    return ((((get("src_addr") | get("dst_addr")) & mask) == 0)
            & ((uses_aux == 0) | ((get("aux_addr") & mask) == 0))
            & ((broadcast == 0) | ((get("n") & (lanes - 1)) == 0)))


def cycles(args, *, word_bytes: int = 4, lanes: int | None = None) -> int:
    """Cycles from ``start`` to ``done`` for resolved arguments ``args`` (a dict), on
    buffer words of ``word_bytes`` with chunks of ``lanes`` int32 (default: a word)."""
    func = SfuFunc(args["func"])
    n = _count(args)
    if not n:
        return 1
    lanes = word_bytes // 4 if lanes is None or func == SfuFunc.COPY else lanes
    if on_words(args, word_bytes=word_bytes, lanes=lanes):
        per = word_bytes if func == SfuFunc.COPY else lanes
        n = -(-n // per)
    return n + (2 if func in _PRODUCTS else 1)


def gate_table() -> list[int]:
    """ROM words ``T[i] | T[i + 1] << 16`` of the 513-entry gate tables, i = 0..511: the
    sigmoid's (:func:`airfoil.fixedpoint.sigmoid`) then GELU's
    (:func:`~airfoil.fixedpoint.gelu_gate`)."""
    words = []
    for table in (fx._SIG_T, fx._GELU_T):
        t = [int(v) for v in table]
        words += [t[i] | t[i + 1] << 16 for i in range(len(t) - 1)]
    return words


def gate_expr(m: Module, x, gelu=0, *, name: str = "sig_rom"):
    """Hardware :func:`airfoil.fixedpoint.sigmoid` (or, where ``gelu`` is 1,
    :func:`~airfoil.fixedpoint.gelu_gate`) of the signed 32-bit ``x`` (unsigned Q15, as a
    signed 18-bit signal): table pair from a ROM (``name``, one per lane), linear
    interpolation."""
    sig_rom = rom(m, name, gate_table())
    xc = Signal(22)
    m.d.comb += xc.eq(clamp(x, -(16 << 16), (16 << 16) - 1) + (16 << 16))
    m.d.comb += sig_rom.addr.eq(Cat(xc[12:21], gelu))
    lo = Cat(sig_rom.data[:16], 0).as_signed()
    hi = Cat(sig_rom.data[16:32], 0).as_signed()
    sig = Signal(signed(18))
    m.d.comb += sig.eq(lo + shift_round((hi - lo) * xc[:12], 12))
    return sig


class ElementwiseKernel(wiring.Component):
    """Compute the element-wise functions of one datapath (:data:`DATAPATHS`) over
    ``rows x n`` elements; ``args.func`` picks among them.

    ``COPY`` moves ``n`` bytes (any alignment, overlapping like ``memmove``); the others
    read int32 rows at ``src_addr`` (and ``aux_addr``) and write int32 rows at
    ``dst_addr``. Operands all on buffer words (:func:`on_words`; how the compiler places
    records) are taken a chunk of ``lanes`` elements (``COPY``: a word) per cycle, the
    last chunk's write enabled in its valid lanes only; other operands an element (a
    byte) per cycle through lane ``0``. Takes :func:`cycles` cycles.

    Parameters
    ----------
    func : SfuFunc
        One of :data:`FUNCS`; the kernel computes every function of its datapath.
    word_bits : int
        Width of the buffer word its ports read and write (a power of two, at least 32).
    lanes : int or None
        int32 elements of a chunk, each with its own datapath (a power of two dividing
        ``word_bits / 32``); default: a whole word. ``COPY`` always moves a word.
    funcs : tuple of SfuFunc or None
        The functions of the datapath built (default: all of them): ``SILU`` or ``GELU``
        alone fixes the gate table's select (the ROM holds both tables), ``ADD`` or
        ``RELU`` alone leaves out the other's path.
    """

    def __init__(self, *, func: SfuFunc, word_bits: int = 32, lanes: int | None = None,
                 funcs: tuple | None = None):
        if func not in FUNCS:
            raise ValueError(f"Element-wise kernel function must be one of "
                             f"{', '.join(f.name for f in FUNCS)}, not {func!r}")
        datapath = next(d for d in DATAPATHS if func in d)
        funcs = datapath if funcs is None else tuple(f for f in datapath if f in funcs)
        if not funcs:
            raise ValueError(f"Element-wise kernel of {func.name} builds some of "
                             f"{', '.join(f.name for f in datapath)}")
        lanes = lane_count(None if func == SfuFunc.COPY else lanes, word_bits, "Element-wise")
        self._func = func
        self._datapath = datapath
        self._funcs = funcs
        self._word_bits = word_bits
        self._lanes = lanes
        super().__init__(kernel_signature(word_bits, word_bits))

    @property
    def func(self) -> SfuFunc:
        """The function this kernel was built for (the first of :attr:`funcs`' datapath)."""
        return self._func

    @property
    def funcs(self) -> tuple:
        """Every function this kernel computes (of its :data:`DATAPATHS` entry)."""
        return self._funcs

    @property
    def lanes(self) -> int:
        """int32 elements of a chunk (``COPY``: a word's int32 count)."""
        return self._lanes

    @property
    def latency(self) -> int:
        """Cycles from a chunk's read to its write (2 where a product is registered)."""
        return 2 if self._func in _PRODUCTS else 1

    def cycles(self, args) -> int:
        """See :func:`cycles`."""
        return cycles(args, word_bytes=self._word_bits // 8, lanes=self._lanes)

    def _lane_datapath(self, m: Module, i: int, x, b):
        """The function of lane ``i``'s int32 ``x`` (and ``b``), ``latency`` cycles after
        they arrive."""
        a = self.args
        funcs = self._funcs

        def pick(one):                  # 1 where ``one`` alone is built, 0 where the other
            return a.func == one if len(funcs) > 1 else Const(int(funcs == (one,)), 1)

        if SfuFunc.ADD in self._datapath:
            return Mux(pick(SfuFunc.RELU), Mux(x < 0, 0, x), sat(x + b, 32))
        if SfuFunc.MUL in funcs:
            prod = Signal(signed(64), name=f"prod{i}")
            m.d.sync += prod.eq(x * b)
            return sat(shift_round(prod, fx.ACT_FRAC), 32)
        x_r = Signal(signed(32), name=f"x_r{i}")
        sig_r = Signal(signed(18), name=f"sig_r{i}")
        m.d.sync += [x_r.eq(x), sig_r.eq(gate_expr(m, x, pick(SfuFunc.GELU),
                                                   name=f"sig_rom{i}"))]
        return sat(shift_round(x_r * sig_r, 15), 32)

    def elaborate(self, platform):
        m = Module()
        a = self.args
        func = self._func
        copy = func == SfuFunc.COPY
        lat = self.latency
        wb = self._word_bits // 8
        lg = exact_log2(wb)
        P = self._lanes
        chunk_lg = exact_log2(4 * P)            # bytes of a chunk (COPY: the word)
        groups_lg = lg - chunk_lg               # chunks in a word
        unit_lg = 0 if copy else 2              # bytes of an item (byte or int32)
        items_lg = chunk_lg - unit_lg           # items of a chunk

        total = Signal(52)      # items: bytes (COPY) or int32
        m.d.comb += total.eq(a.n if copy else a.rows * a.n)
        broadcast = Signal()
        if SfuFunc.ADD in self._funcs:
            m.d.comb += broadcast.eq((a.func == SfuFunc.ADD) & (a.imm0 != 0))
        wide = Signal()         # the operands go a chunk per cycle (args are stable)
        uses_aux = 0 if copy else (a.func == SfuFunc.MUL) | (a.func == SfuFunc.ADD)
        m.d.comb += wide.eq(on_words(a, word_bytes=wb, lanes=P))
        chunks = Signal(52)
        m.d.comb += chunks.eq(Mux(wide, (total + (1 << items_lg) - 1) >> items_lg, total))
        rem = total[:items_lg] if items_lg else Const(0, 1)   # items of a partial last chunk
        row_chunks = Mux(wide, a.n >> max(items_lg, 0), a.n)  # ADD's broadcast row

        k = Signal(52)          # chunk whose read is issued
        col = Signal(len(a.n))  # its chunk in the row (ADD's broadcast row)
        drain = Signal(range(lat + 1))
        wk = [Signal(52, name=f"wk{i}") for i in range(lat + 1)]
        pend = [Signal(name=f"pend{i}") for i in range(lat + 1)]
        for i in range(lat):
            m.d.sync += [wk[i + 1].eq(wk[i]), pend[i + 1].eq(pend[i])]

        # COPY moves from the end down when dst lies above src, so an overlapping copy
        # reads every source byte before it is overwritten (memmove semantics).
        back = Signal()
        m.d.comb += [back.eq(copy and (a.dst_addr > a.src_addr)),
                     wk[0].eq(Mux(back, chunks - 1 - k, k))]

        def byte_addr(base, index):
            step = Mux(wide, index << chunk_lg, index << unit_lg)
            return sat_addr(base + step)

        def word_of(addr):
            return Cat(Const(0, lg), addr[lg:]) if lg else addr

        aux_k = Mux(broadcast, col, k) if SfuFunc.ADD in self._funcs else k
        saddr, aaddr, daddr = (Signal(ADDR_BITS, name=f"{p}_byte")
                               for p in ("src", "aux", "dst"))
        m.d.comb += [saddr.eq(byte_addr(a.src_addr, wk[0])),
                     aaddr.eq(byte_addr(a.aux_addr, aux_k)),
                     daddr.eq(byte_addr(a.dst_addr, wk[lat])),
                     self.src.addr.eq(word_of(saddr)), self.aux.addr.eq(word_of(aaddr)),
                     self.dst.addr.eq(word_of(daddr))]
        # Byte offset in its word of what was read a cycle ago (its lane or chunk).
        s_off, a_off = Signal(max(lg, 1)), Signal(max(lg, 1))
        if lg:
            m.d.sync += [s_off.eq(saddr[:lg]), a_off.eq(aaddr[:lg])]
        d_off = daddr[:lg] if lg else Const(0, 1)
        last = wk[lat] == chunks - 1
        valid = Signal(1 << items_lg)      # the items of a partial last chunk: rem of them
        m.d.comb += valid.eq((Const(1, (1 << items_lg) + 1) << rem) - 1)
        partial_en = Cat(*[valid[i].replicate(1 << unit_lg) for i in range(1 << items_lg)])
        chunk_en = Mux(last & (rem != 0), partial_en, (1 << 4 * P) - 1)

        if copy:
            byte = self.src.data.word_select(s_off, 8) if lg else self.src.data[:8]
            narrow_data = Cat(*[byte] * wb)
            narrow_en = Const(1, wb) << d_off
            wide_data = self.src.data
            wide_en = chunk_en
        else:
            def chunk_of(data, off):
                if groups_lg <= 0:
                    return data
                return data.word_select(off[chunk_lg:lg], 32 * P)
            x_chunk, b_chunk = chunk_of(self.src.data, s_off), chunk_of(self.aux.data, a_off)
            x_elem = self.src.data.word_select(s_off[2:lg], 32) if lg > 2 else self.src.data
            b_elem = self.aux.data.word_select(a_off[2:lg], 32) if lg > 2 else self.aux.data
            ys = []
            for i in range(P):
                x = Mux(wide, x_chunk[32 * i:32 * i + 32], x_elem) if i == 0 else \
                    x_chunk[32 * i:32 * i + 32]
                b = Mux(wide, b_chunk[32 * i:32 * i + 32], b_elem) if i == 0 else \
                    b_chunk[32 * i:32 * i + 32]
                y = Signal(signed(32), name=f"y{i}")
                m.d.comb += y.eq(self._lane_datapath(m, i, x.as_signed(), b.as_signed()))
                ys.append(y)
            narrow_data = Cat(*[ys[0]] * (wb // 4))
            narrow_en = Const(0xF, wb) << (d_off[2:lg] * 4 if lg > 2 else 0)
            wide_data = Cat(*ys * (wb // (4 * P)))
            wide_en = (chunk_en << (d_off[chunk_lg:lg] * 4 * P) if groups_lg > 0
                       else chunk_en)
        m.d.comb += self.dst.data.eq(Mux(wide, wide_data, narrow_data))
        with m.If(pend[lat]):
            m.d.comb += self.dst.en.eq(Mux(wide, wide_en, narrow_en))

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [k.eq(0), col.eq(0), drain.eq(lat - 1)]
                    m.next = "RUN"
                    with m.If(total == 0):
                        m.d.sync += drain.eq(0)
                        m.next = "DRAIN"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), self.src.en.eq(1), self.aux.en.eq(uses_aux),
                             pend[0].eq(1)]
                m.d.sync += [k.eq(k + 1), col.eq(Mux(col == row_chunks - 1, 0, col + 1))]
                with m.If(k == chunks - 1):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += drain.eq(drain - 1)
                with m.If(drain == 0):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        return m


#: Kernel factories by function, for :class:`hdl.sfu.unit.SfuUnit`: the functions of one
#: datapath share one factory object, so the unit builds one kernel for them.
KERNELS = {f: factory for d in DATAPATHS
           for factory in [partial(ElementwiseKernel, func=d[0])] for f in d}
