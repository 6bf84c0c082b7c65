"""Element-wise SFU kernels: ``COPY``, ``SILU``, ``GELU``, ``RELU``, ``MUL`` and ``ADD``.

One element per cycle: the read of element ``k`` is issued in one cycle and its result
written in the next (``COPY``, ``ADD``, ``RELU``) or, with the product's inputs
registered, the one after (``MUL``, ``SILU``, ``GELU``): :attr:`ElementwiseKernel.latency`.
``COPY`` moves one byte per element, the others one int32.

Functions that differ only in a table or a final select share one kernel
(:data:`DATAPATHS`), which reads the instruction's ``func``: ``SILU`` and ``GELU`` are
``x`` times a gate from one ROM holding both tables, ``RELU`` is the ``ADD`` kernel's
output select; so the GPT-2 / OPT functions add no multiplier to the SFU.
"""

from __future__ import annotations

from functools import partial

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring

from airfoil import fixedpoint as fx
from airfoil.isa import SfuFunc

from .arith import align4, clamp, rom, sat, sat_addr, shift_round
from .kernel import kernel_signature

__all__ = ["ElementwiseKernel", "cycles", "FUNCS", "KERNELS"]

#: The functions an :class:`ElementwiseKernel` can be built for.
FUNCS = (SfuFunc.COPY, SfuFunc.SILU, SfuFunc.MUL, SfuFunc.ADD, SfuFunc.GELU, SfuFunc.RELU)
#: Functions whose product's inputs are registered (latency 2).
_PRODUCTS = (SfuFunc.MUL, SfuFunc.SILU, SfuFunc.GELU)
#: The functions of each kernel: one datapath, the instruction's ``func`` selects.
DATAPATHS = ((SfuFunc.COPY,), (SfuFunc.MUL,), (SfuFunc.ADD, SfuFunc.RELU),
             (SfuFunc.SILU, SfuFunc.GELU))


def _count(args) -> int:
    return args["n"] if args["func"] == SfuFunc.COPY else args["rows"] * args["n"]


def cycles(args) -> int:
    """Cycles from ``start`` to ``done`` for resolved arguments ``args`` (a dict)."""
    n = _count(args)
    return n + (2 if SfuFunc(args["func"]) in _PRODUCTS else 1) if n else 1


def gate_table() -> list[int]:
    """ROM words ``T[i] | T[i + 1] << 16`` of the 513-entry gate tables, i = 0..511: the
    sigmoid's (:func:`airfoil.fixedpoint.sigmoid`) then GELU's
    (:func:`~airfoil.fixedpoint.gelu_gate`)."""
    words = []
    for table in (fx._SIG_T, fx._GELU_T):
        t = [int(v) for v in table]
        words += [t[i] | t[i + 1] << 16 for i in range(len(t) - 1)]
    return words


def gate_expr(m: Module, x, gelu=0):
    """Hardware :func:`airfoil.fixedpoint.sigmoid` (or, where ``gelu`` is 1,
    :func:`~airfoil.fixedpoint.gelu_gate`) of the signed 32-bit ``x`` (unsigned Q15, as a
    signed 18-bit signal): table pair from a ROM, linear interpolation."""
    sig_rom = rom(m, "sig_rom", gate_table())
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
    read int32 rows at ``src_addr`` (and ``aux_addr``) and write int32
    rows at ``dst_addr``.
    Takes :func:`cycles` cycles.

    Parameters
    ----------
    func : SfuFunc
        One of :data:`FUNCS`; the kernel computes every function of its datapath.
    """

    def __init__(self, *, func: SfuFunc):
        if func not in FUNCS:
            raise ValueError(f"Element-wise kernel function must be one of "
                             f"{', '.join(f.name for f in FUNCS)}, not {func!r}")
        self._func = func
        self._funcs = next(d for d in DATAPATHS if func in d)
        super().__init__(kernel_signature())

    @property
    def func(self) -> SfuFunc:
        """The function this kernel was built for (the first of :attr:`funcs`' datapath)."""
        return self._func

    @property
    def funcs(self) -> tuple:
        """Every function this kernel computes (its :data:`DATAPATHS` entry)."""
        return self._funcs

    @property
    def latency(self) -> int:
        """Cycles from an element's read to its write (2 where a product is registered)."""
        return 2 if self._func in _PRODUCTS else 1

    def elaborate(self, platform):
        m = Module()
        a = self.args
        func = self._func
        copy = func == SfuFunc.COPY
        lat = self.latency
        total = Signal(52)
        m.d.comb += total.eq(a.n if copy else a.rows * a.n)
        k = Signal(52)          # element whose read is issued
        col = Signal(len(a.n))  # its column (ADD's broadcast row)
        drain = Signal(range(lat + 1))
        # Element index and valid flag of the read, one cycle later, and at the write.
        wk = [Signal(52, name=f"wk{i}") for i in range(lat + 1)]
        pend = [Signal(name=f"pend{i}") for i in range(lat + 1)]
        for i in range(lat):
            m.d.sync += [wk[i + 1].eq(wk[i]), pend[i + 1].eq(pend[i])]

        # COPY moves bytes from the end down when dst lies above src, so an overlapping
        # copy reads every source byte before it is overwritten (memmove semantics).
        back = Signal()
        m.d.comb += [back.eq(copy and (a.dst_addr > a.src_addr)),
                     wk[0].eq(Mux(back, total - 1 - k, k))]
        if copy:
            saddr = a.src_addr + wk[0]
            daddr = a.dst_addr + wk[lat]
            lane = Signal(2)
            m.d.sync += lane.eq(saddr[:2])
            byte = self.src.data.word_select(lane, 8)
            m.d.comb += [
                self.src.addr.eq(align4(sat_addr(saddr))),
                self.dst.addr.eq(align4(sat_addr(daddr))),
                self.dst.data.eq(Cat(byte, byte, byte, byte)),
            ]
            wen = 1 << daddr[:2]
        else:
            # ADD with imm0 nonzero adds one aux row to every row: its element is the
            # column of k (counted beside k, wrapping at n).
            aux_k = k
            if SfuFunc.ADD in self._funcs:
                aux_k = Mux((a.func == SfuFunc.ADD) & (a.imm0 != 0), col, k)
            m.d.comb += [
                self.src.addr.eq(sat_addr(a.src_addr + (k << 2))),
                self.aux.addr.eq(sat_addr(a.aux_addr + (aux_k << 2))),
                self.dst.addr.eq(sat_addr(a.dst_addr + (wk[lat] << 2))),
            ]
            x = self.src.data.as_signed()
            b = self.aux.data.as_signed()
            funcs = self._funcs
            if SfuFunc.ADD in funcs:
                y = Mux(a.func == SfuFunc.RELU, Mux(x < 0, 0, x), sat(x + b, 32))
            elif SfuFunc.MUL in funcs:
                prod = Signal(signed(64))
                m.d.sync += prod.eq(x * b)
                y = sat(shift_round(prod, fx.ACT_FRAC), 32)
            else:
                x_r = Signal(signed(32))
                sig_r = Signal(signed(18))
                m.d.sync += [x_r.eq(x), sig_r.eq(gate_expr(m, x, a.func == SfuFunc.GELU))]
                y = sat(shift_round(x_r * sig_r, 15), 32)
            m.d.comb += self.dst.data.eq(y)
            wen = 0xF
        with m.If(pend[lat]):
            m.d.comb += self.dst.en.eq(wen)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [k.eq(0), col.eq(0), drain.eq(lat - 1)]
                    m.next = "RUN"
                    with m.If(total == 0):
                        m.d.sync += drain.eq(0)
                        m.next = "DRAIN"
            with m.State("RUN"):
                uses_aux = (a.func == SfuFunc.MUL) | (a.func == SfuFunc.ADD)
                m.d.comb += [self.busy.eq(1), self.src.en.eq(1), self.aux.en.eq(uses_aux),
                             pend[0].eq(1)]
                m.d.sync += [k.eq(k + 1), col.eq(Mux(col == a.n - 1, 0, col + 1))]
                with m.If(k == total - 1):
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
