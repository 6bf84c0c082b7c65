"""The RTL special-function unit: kernels and SfuUnit bit-exact to airfoil.fixedpoint and
the ISA simulator, cycle formulas, and the unit's error reports (amaranth.sim)."""

from __future__ import annotations

import dataclasses
import gc
import warnings

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from airfoil import fixedpoint as fx
from airfoil import isa
from airfoil.config import load_config
from airfoil.errors import ProgramError
from airfoil.isa import Buffer, ErrorCode, Opcode, SfuFunc, Unit
from hdl.sfu import elementwise, quant, rmsnorm, rope
from hdl.sfu.arith import Divider
from hdl.sfu.elementwise import ElementwiseKernel
from hdl.sfu.kernel import ARGS_LAYOUT
from hdl.sfu.quant import QuantTokenKernel
from hdl.sfu.rmsnorm import RmsNormKernel
from hdl.sfu.rope import RopeKernel
from hdl.sfu.unit import ROWWISE, SfuUnit, default_kernels, unit_cycles
from sim.isa_sim import IsaSim

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


# -- amaranth.sim drivers -----------------------------------------------------------------

def kernel_args(**kw) -> dict:
    """Resolved kernel arguments with defaults (every ARGS_LAYOUT field present)."""
    args = {name: 0 for name in ARGS_LAYOUT.members}
    args.update(heads=1, rows=1)
    args.update(kw)
    return args


def _word(buf: bytearray, addr: int, nbytes: int = 4) -> int:
    return int.from_bytes(buf[addr:addr + nbytes].ljust(nbytes, b"\0"), "little")


def run_kernel(kernel, args: dict, src: bytearray, aux: bytearray, dst: bytearray,
               *, max_cycles: int = 200_000) -> dict:
    """Run ``kernel`` once on byte arrays standing for its three buffers.

    Every port access is checked to lie inside its array (an assertion; a read of a
    kernel with word-wide read ports must start inside it, at a multiple of the word, and
    reads zeros past its end). Returns
    ``{"cycles": start-to-done, "err": bool, "err_code": ErrorCode}``; ``dst`` and
    ``aux`` (scale pairs of QUANT_TOKEN) are modified in place.
    """
    res = {}

    async def bench(ctx):
        assert not ctx.get(kernel.busy) and not ctx.get(kernel.done)
        ctx.set(kernel.args, ARGS_LAYOUT.const(args))
        ctx.set(kernel.start, 1)
        await ctx.tick()
        ctx.set(kernel.start, 0)
        cyc = 1
        while True:
            reads = []
            for port, buf in ((kernel.src, src), (kernel.aux, aux)):
                if ctx.get(port.en):
                    addr = ctx.get(port.addr)
                    nbytes = len(port.data) // 8
                    inside = addr + 4 <= len(buf) if nbytes == 4 else addr < len(buf)
                    assert addr % nbytes == 0 and inside, f"read at {addr:#x}"
                    reads.append((port, _word(buf, addr, nbytes)))
            en = ctx.get(kernel.dst.en)
            if en:
                addr = ctx.get(kernel.dst.addr)
                buf = aux if ctx.get(kernel.dst.aux) else dst
                nbytes = len(kernel.dst.en)
                assert addr % nbytes == 0, f"write at {addr:#x}"
                data = ctx.get(kernel.dst.data)
                for i in range(nbytes):
                    if en >> i & 1:
                        assert addr + i < len(buf), f"write at {addr + i:#x}"
                        buf[addr + i] = data >> (8 * i) & 0xFF
            assert ctx.get(kernel.busy), f"busy low in cycle {cyc} before done"
            if ctx.get(kernel.done):
                res.update(cycles=cyc, err=bool(ctx.get(kernel.err)),
                           err_code=ctx.get(kernel.err_code))
                return
            assert cyc < max_cycles, "kernel did not finish"
            await ctx.tick()
            cyc += 1
            for port, word in reads:
                ctx.set(port.data, word)

    sim = Simulator(kernel)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return res


def entry_bits(instr: int, index: int = 0, rv=(0, 0, 0)) -> int:
    """The raw value of a queue entry (:data:`hdl.core.fetch.ENTRY_LAYOUT`)."""
    from hdl.core.fetch import ENTRY_LAYOUT
    f = {name: ENTRY_LAYOUT[name].offset for name in ("instr", "index", "rv")}
    bits = instr << f["instr"] | index << f["index"]
    for i, v in enumerate(rv):
        bits |= (v & 0xFFFFFFFF) << (f["rv"] + 32 * i)
    return bits


def run_unit(unit, entries, bufs: dict, *, max_cycles: int = 200_000) -> dict:
    """Run queue ``entries`` (raw values, :func:`entry_bits`) through an ``SfuUnit``.

    ``bufs`` maps :class:`airfoil.isa.Buffer` to byte arrays (the buffers, modified in
    place); every port access must lie inside its array (an assertion). Stops when every
    entry released its tokens, or a few cycles after the unit reports an error (checking
    that the error stays and nothing more is accepted, written or released). Returns ``{"accepted":
    [cycle...], "released": [(cycle, mask)...], "err", "err_code", "err_pc"}``.
    """
    wb = unit.word_bits // 8
    res = {"accepted": [], "released": []}

    def word(buf, addr):
        b = bufs[buf]
        assert (addr + 1) * wb <= len(b), f"read of {buf.name} word {addr}"
        return int.from_bytes(b[addr * wb:(addr + 1) * wb], "little")

    async def bench(ctx):
        pending = list(entries)
        ctx.set(unit.rel.ready, 1)
        cyc = 0
        while True:
            ctx.set(unit.q.valid, bool(pending))
            if pending:
                ctx.set(unit.q.payload.as_value(), pending[0])
            reads = []
            for port in (unit.src_rd, unit.aux_rd):
                if ctx.get(port.en):
                    reads.append((port, word(ctx.get(port.buf), ctx.get(port.addr))))
            en = ctx.get(unit.dst_wr.en)
            if en:
                buf, addr = ctx.get(unit.dst_wr.buf), ctx.get(unit.dst_wr.addr)
                b = bufs[buf]
                assert (addr + 1) * wb <= len(b), f"write of {buf.name} word {addr}"
                d = ctx.get(unit.dst_wr.data)
                for i in range(wb):
                    if en >> i & 1:
                        b[addr * wb + i] = d >> (8 * i) & 0xFF
            if pending and ctx.get(unit.q.ready):
                pending.pop(0)
                res["accepted"].append(cyc)
            if ctx.get(unit.rel.valid):
                res["released"].append((cyc, ctx.get(unit.rel.payload)))
            if ctx.get(unit.err):
                res.update(err=True, err_code=ctx.get(unit.err_code),
                           err_pc=ctx.get(unit.err_pc))
                for _ in range(4):              # the error is sticky and the unit stopped
                    await ctx.tick()
                    assert ctx.get(unit.err) and not ctx.get(unit.q.ready)
                    assert not ctx.get(unit.dst_wr.en) and not ctx.get(unit.rel.valid)
                return
            if not pending and len(res["released"]) == len(entries) and ctx.get(unit.idle):
                res.update(err=False, err_code=ctx.get(unit.err_code),
                           err_pc=ctx.get(unit.err_pc))
                return
            assert cyc < max_cycles, "unit did not finish"
            await ctx.tick()
            cyc += 1
            for port, w in reads:
                ctx.set(port.data, w)

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return res


def _i32(rng, size, shift_max=31):
    """Random int32 with random magnitudes, the extremes first."""
    x = rng.integers(I32_MIN, I32_MAX + 1, size=size, dtype=np.int64)
    x = x >> rng.integers(0, shift_max + 1, size=size)
    x[:2] = [I32_MIN, I32_MAX][:size]
    return x


def _b(a, dt="<i4") -> bytearray:
    return bytearray(np.asarray(a).astype(dt).tobytes())


def _ints(b, dt="<i4"):
    return np.frombuffer(bytes(b), dtype=dt).astype(np.int64)


# -- kernels against airfoil.fixedpoint --------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("func", [SfuFunc.ADD, SfuFunc.MUL, SfuFunc.SILU, SfuFunc.GELU,
                                  SfuFunc.RELU])
def test_elementwise_kernel(func, seed):
    """An element per cycle on operands off the word (any int32 lane)."""
    rng = np.random.default_rng(seed)
    rows, n = 3, 5
    x = _i32(rng, rows * n)
    b = _i32(rng, rows * n)
    if func in (SfuFunc.SILU, SfuFunc.GELU, SfuFunc.RELU):
        x[2:] = rng.integers(-20 << 16, 20 << 16, size=rows * n - 2)
    args = kernel_args(func=func, n=n, rows=rows, src_addr=8, aux_addr=4, dst_addr=12)
    src, aux, dst = _b([0, 0] + list(x)), _b([0] + list(b)), bytearray(12 + 4 * rows * n)
    res = run_kernel(ElementwiseKernel(func=func), args, src, aux, dst)
    assert _ints(dst[12:]).tolist() == _elementwise_ref(func, x, b).tolist(), f"seed {seed}"
    assert res["cycles"] == elementwise.cycles(args) == rows * n + (
        2 if func in (SfuFunc.MUL, SfuFunc.SILU, SfuFunc.GELU) else 1) and not res["err"]


def _elementwise_ref(func, x, b):
    X, B = torch.tensor(x), torch.tensor(b)
    return {SfuFunc.ADD: lambda: fx.add(X, B), SfuFunc.MUL: lambda: fx.mul(X, B),
            SfuFunc.SILU: lambda: fx.silu(X), SfuFunc.GELU: lambda: fx.gelu(X),
            SfuFunc.RELU: lambda: fx.relu(X)}[func]()


@pytest.mark.parametrize("func", [SfuFunc.ADD, SfuFunc.MUL, SfuFunc.SILU, SfuFunc.GELU,
                                  SfuFunc.RELU])
@pytest.mark.parametrize("word_bits,lanes,rows,n,aligned", [
    (128, None, 3, 5, True), (128, None, 2, 8, True), (512, None, 3, 7, True),
    (512, 4, 2, 9, True), (128, 2, 1, 3, True), (128, None, 3, 5, False),
    (64, None, 1, 1, True)])
def test_elementwise_kernel_on_words(func, word_bits, lanes, rows, n, aligned):
    """A chunk of ``lanes`` int32 per cycle on word-aligned operands, the last chunk of an
    odd count written in its valid lanes only; off the word, an element per cycle."""
    rng = np.random.default_rng(word_bits + rows * n)
    wb = word_bits // 8
    x, b = _i32(rng, rows * n), _i32(rng, rows * n)
    if func in (SfuFunc.SILU, SfuFunc.GELU, SfuFunc.RELU):
        x[2:] = rng.integers(-20 << 16, 20 << 16, size=x[2:].size)
    sa, aa, da = (wb, 2 * wb, 3 * wb) if aligned else (wb + 4, 2 * wb, 3 * wb)
    size = 4 * wb + 4 * rows * n + wb
    src, aux = bytearray(size), bytearray(size)
    src[sa:sa + 4 * rows * n], aux[aa:aa + 4 * rows * n] = _b(x), _b(b)
    dst = bytearray(b"\xa5" * size)
    want = bytearray(dst)
    want[da:da + 4 * rows * n] = _b(_elementwise_ref(func, x, b))
    args = kernel_args(func=func, n=n, rows=rows, src_addr=sa, aux_addr=aa, dst_addr=da)
    kernel = ElementwiseKernel(func=func, word_bits=word_bits, lanes=lanes)
    res = run_kernel(kernel, args, src, aux, dst)
    assert dst == want
    per = kernel.lanes if aligned else 1
    assert res["cycles"] == kernel.cycles(args) == -(-rows * n // per) + kernel.latency
    assert not res["err"]


@pytest.mark.parametrize("word_bits,rows,n", [(32, 3, 5), (32, 4, 1), (128, 3, 4),
                                              (128, 2, 6), (512, 3, 16), (512, 2, 24)])
def test_add_kernel_one_row_onto_every_row(word_bits, rows, n):
    """``ADD`` with ``imm0`` nonzero: the one aux row (a bias) onto every row, a word per
    cycle where the row is whole words, else an element per cycle; RELU on the same
    kernel ignores it."""
    rng = np.random.default_rng(rows * n)
    wb = word_bits // 8
    x, b = _i32(rng, rows * n), _i32(rng, n)
    args = kernel_args(func=SfuFunc.ADD, n=n, rows=rows, src_addr=wb, aux_addr=0,
                       dst_addr=2 * wb, imm0=1)
    aux = _b(list(b) + list(_i32(rng, rows * n)))      # rows past the first differ
    src = _b([0] * (wb // 4) + list(x))
    dst = bytearray(2 * wb + 4 * rows * n + wb)
    kernel = ElementwiseKernel(func=SfuFunc.ADD, word_bits=word_bits)
    res = run_kernel(kernel, args, src, aux, dst)
    want = fx.add(torch.tensor(x).reshape(rows, n), torch.tensor(b).reshape(1, n))
    assert _ints(dst[2 * wb:2 * wb + 4 * rows * n]).tolist() == want.reshape(-1).tolist()
    per = kernel.lanes if n % kernel.lanes == 0 else 1
    assert res["cycles"] == kernel.cycles(args) == rows * n // per + 1 and not res["err"]


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("word_bits,sa,da,n", [
    (32, 3, 6, 11), (32, 5, 2, 1), (32, 7, 1, 13), (32, 0, 0, 9), (32, 4, 12, 13),
    (32, 12, 4, 13), (128, 16, 48, 37), (128, 48, 16, 37), (128, 16, 32, 16),
    (128, 3, 40, 21), (512, 0, 64, 70)])
def test_copy_kernel(word_bits, sa, da, n, overlap):
    """``COPY`` of bytes, overlapping like ``memmove``: a word per cycle with both
    addresses on words, the last word's valid bytes only; otherwise a byte per cycle."""
    rng = np.random.default_rng(n)
    size = max(sa, da) + n + word_bits // 8
    src = bytearray(rng.integers(0, 256, size=size, dtype=np.uint8).tobytes())
    dst = src if overlap else bytearray(b"\xa5" * size)
    want = bytearray(dst)
    want[da:da + n] = bytes(src[sa:sa + n])
    args = kernel_args(func=SfuFunc.COPY, n=n, src_addr=sa, dst_addr=da)
    kernel = ElementwiseKernel(func=SfuFunc.COPY, word_bits=word_bits)
    res = run_kernel(kernel, args, src, bytearray(4), dst)
    assert dst == want
    wb = word_bits // 8
    per = wb if (sa | da) % wb == 0 else 1
    assert res["cycles"] == kernel.cycles(args) == -(-n // per) + 1


@pytest.mark.parametrize("word_bits", [32, 128, 512])
@pytest.mark.parametrize("n,heads,rows,imm0,imm1,xa,seed", [
    (12, 2, 2, 0, 0, 0, 1),       # contiguous values, packed scale pairs
    (10, 1, 3, 16, 12, 8, 2),     # strided values and scale pairs, segments at odd lanes
    (8, 4, 1, 0, 0, 4, 3),        # all-zero segment (amax clamps to 1)
    (40, 2, 1, 0, 0, 12, 4),      # segments of 20 over several words
])
def test_quant_token_kernel(n, heads, rows, imm0, imm1, xa, seed, word_bits):
    """Bit-exact to fixedpoint, with both passes a read-port word (``word_bits``) per
    cycle over segments at any 4-byte offset in the word, the INT8 values written into
    output words at any byte offset."""
    rng = np.random.default_rng(seed)
    x = _i32(rng, rows * n)
    if seed == 3:
        x[:] = 0
        x[5] = -1
    if seed == 4:
        x[-1] = I32_MIN              # the largest magnitude in the last lane of the last word
    seg, nseg = n // heads, rows * heads
    ds, ss = imm0 or seg, imm1 or 8
    dst, aux = bytearray(nseg * ds + 8), bytearray(nseg * ss + 8)
    args = kernel_args(func=SfuFunc.QUANT_TOKEN, n=n, rows=rows, heads=heads, dst_addr=3,
                       aux_addr=4, imm0=imm0, imm1=imm1, src_addr=xa)
    kernel = QuantTokenKernel(word_bits=word_bits)
    res = run_kernel(kernel, args, bytearray(xa) + _b(x), aux, dst)
    q, sm, se = fx.quant_per_token(torch.tensor(x).reshape(nseg, seg))
    for s in range(nseg):
        assert _ints(dst[3 + s * ds:3 + s * ds + seg], np.int8).tolist() == q[s].tolist()
        assert _ints(aux[4 + s * ss:12 + s * ss]).tolist() == [int(sm[s]), int(se[s])]
    assert res["cycles"] == kernel.cycles(args) and not res["err"]
    assert quant.cycles(args, word_bytes=4) == quant.DIV_LATENCY + nseg * (2 * seg + 8)
    # A word of e = word_bytes / 4 lanes per cycle in both passes, and a flush.
    e = word_bits // 32
    if e > 1:
        words = (seg + 2 * e - 2) // e
        assert kernel.cycles(args) == quant.DIV_LATENCY + nseg * (2 * words + 9)


@pytest.mark.parametrize("word_bits", [32, 128, 512])
@pytest.mark.parametrize("n,rows,eps,shift,seed", [
    (8, 2, 1e-5, 20, 1),      # typical activations
    (5, 3, 1e-6, 0, 2),       # full-range int32 (rows with amax = 2**31), rows at odd lanes
    (7, 1, 1e-5, None, 3),    # an all-zero row: eps alone
    (6, 3, 2 ** 64 - 1, 20, 4),   # the largest constant the immediate holds
    (6, 2, 2 ** 63 + 12345, None, 5),
    (37, 2, 1e-5, 8, 6),      # rows over several words
])
def test_rmsnorm_kernel(n, rows, eps, shift, seed, word_bits):
    """Bit-exact to fixedpoint, with the amax and sum-of-squares passes a read-port word
    (``word_bits``) per cycle."""
    rng = np.random.default_rng(seed)
    x = _i32(rng, rows * n) >> shift if shift is not None else np.zeros(rows * n, np.int64)
    g = rng.integers(-2 ** 18, 2 ** 18, size=n, dtype=np.int64)
    c = eps if isinstance(eps, int) else fx._eps_const(eps)   # an int is the constant
    args = kernel_args(func=SfuFunc.RMSNORM, n=n, rows=rows, imm0=c & 0xFFFFFFFF,
                       imm1=c >> 32)
    dst = bytearray(4 * rows * n)
    kernel = RmsNormKernel(word_bits=word_bits)
    res = run_kernel(kernel, args, _b(x), _b(g), dst)
    ref = fx.rmsnorm(torch.tensor(x).reshape(rows, n), torch.tensor(g), 0.0, eps_q60=c)
    assert _ints(dst).tolist() == ref.reshape(-1).tolist(), f"seed {seed}"
    assert res["cycles"] == kernel.cycles(args) and not res["err"]
    assert rmsnorm.cycles(args, word_bytes=4) == rmsnorm.DIV_LATENCY + rows * (3 * n + 9)


@pytest.mark.parametrize("word_bits", [32, 128])
@pytest.mark.parametrize("n,rows,eps,shift,offset,seed", [
    (8, 2, 1e-5, 20, 0, 1),           # typical activations
    (6, 3, 1e-5, 16, 2 ** 29, 2),     # rows far from zero: the mean dominates
    (5, 3, 1e-6, 0, 0, 3),            # full-range int32: x - mean saturates
    (7, 1, 1e-5, None, 0, 4),         # an all-zero row: eps alone
    (9, 2, 1e-5, 31, 12345, 5),       # a constant row: centred to zero
    (37, 2, 1e-5, 8, -(2 ** 20), 6),  # rows over several words
])
def test_layernorm_kernel(n, rows, eps, shift, offset, seed, word_bits):
    """LAYERNORM on the RMSNORM kernel: its sum pass a read-port word per cycle too."""
    rng = np.random.default_rng(seed)
    x = _i32(rng, rows * n) >> shift if shift is not None else np.zeros(rows * n, np.int64)
    x = x + offset
    g = rng.integers(-2 ** 18, 2 ** 18, size=n, dtype=np.int64)
    c = fx._eps_const(eps)
    args = kernel_args(func=SfuFunc.LAYERNORM, n=n, rows=rows, imm0=c & 0xFFFFFFFF,
                       imm1=c >> 32)
    dst = bytearray(4 * rows * n)
    kernel = RmsNormKernel(word_bits=word_bits)
    res = run_kernel(kernel, args, _b(x), _b(g), dst)
    ref = fx.layernorm_centred(torch.tensor(x).reshape(rows, n), torch.tensor(g), 0.0,
                               eps_q60=c)
    assert _ints(dst).tolist() == ref.reshape(-1).tolist(), f"seed {seed}"
    assert res["cycles"] == kernel.cycles(args) and not res["err"]


@pytest.mark.parametrize("word_bits,lanes,func,n,rows,xa,da,ga,wide", [
    (128, None, SfuFunc.RMSNORM, 16, 3, 0, 0, 0, True),      # 4 lanes, several rows
    (128, 2, SfuFunc.LAYERNORM, 12, 2, 8, 24, 40, True),     # 2 lanes, chunks mid-word
    (512, None, SfuFunc.RMSNORM, 48, 2, 0, 64, 128, True),   # 16 lanes
    (512, 4, SfuFunc.LAYERNORM, 20, 3, 16, 48, 0, True),     # 4 lanes, 4 chunks a word
    (128, 1, SfuFunc.RMSNORM, 13, 2, 4, 8, 12, True),        # one lane: a chunk is an int32
    (128, None, SfuFunc.RMSNORM, 18, 2, 0, 0, 0, False),     # n not a multiple of lanes
    (128, 2, SfuFunc.LAYERNORM, 8, 2, 4, 0, 0, False),       # rows off their chunks
    (128, None, SfuFunc.RMSNORM, 8, 2, 0, 0, 4, False),      # gain off its chunk
    (512, None, SfuFunc.LAYERNORM, 16, 2, 0, 36, 0, False),  # output off its chunk
])
def test_norm_output_lanes(word_bits, lanes, func, n, rows, xa, da, ga, wide):
    """The output pass a chunk of ``lanes`` elements per cycle where the rows, the gain
    and the output lie on chunks and ``n`` is a multiple of ``lanes`` (:func:`on_chunks`),
    else an element per cycle in any lane; bit-exact either way, in the formula's
    cycles."""
    rng = np.random.default_rng(n + rows)
    x = _i32(rng, rows * n) >> 12
    g = rng.integers(-2 ** 18, 2 ** 18, size=n, dtype=np.int64)
    c = fx._eps_const(1e-5)
    args = kernel_args(func=func, n=n, rows=rows, src_addr=xa, dst_addr=da, aux_addr=ga,
                       imm0=c & 0xFFFFFFFF, imm1=c >> 32)
    dst = bytearray(da + 4 * rows * n + 64)
    kernel = RmsNormKernel(word_bits=word_bits, lanes=lanes)
    res = run_kernel(kernel, args, bytearray(xa) + _b(x) + bytearray(64),
                     bytearray(ga) + _b(g) + bytearray(64), dst)
    norm = fx.layernorm_centred if func == SfuFunc.LAYERNORM else fx.rmsnorm
    ref = norm(torch.tensor(x).reshape(rows, n), torch.tensor(g), 0.0, eps_q60=c)
    assert _ints(dst[da:da + 4 * rows * n]).tolist() == ref.reshape(-1).tolist()
    assert not any(dst[:da]) and not any(dst[da + 4 * rows * n:])
    assert rmsnorm.on_chunks(args, lanes=kernel.lanes) == wide
    assert res["cycles"] == kernel.cycles(args) and not res["err"]
    per_row = (rmsnorm.cycles(args, word_bytes=word_bits // 8, lanes=1)
               - kernel.cycles(args)) // rows
    assert per_row == (n - n // kernel.lanes if wide else 0)


def test_layernorm_and_gelu_specs_against_torch():
    """The fixed-point LayerNorm (with its bias added) and GELU are torch's to stated
    tolerances: LayerNorm 1e-3 (Q16 rounding of the input and the 16-bit 1/n, rsqrt
    mantissas), GELU 2e-4 (the gate table's interpolation)."""
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(4, 96, generator=gen, dtype=torch.float64) * 3 + 1.5
    gam = torch.rand(96, generator=gen, dtype=torch.float64) + 0.5
    bet = torch.randn(96, generator=gen, dtype=torch.float64) * 0.2
    y = fx.layernorm(fx.to_fixed(xs), fx.rmsnorm_weight(gam), fx.linear_bias(bet), 1e-5)
    want = torch.nn.functional.layer_norm(xs, (96,), gam, bet, 1e-5)
    assert float((fx.from_fixed(y) - want).abs().max()) < 1e-3
    x = torch.linspace(-20, 20, 20001, dtype=torch.float64)
    got = fx.from_fixed(fx.gelu(fx.to_fixed(x)))
    want = torch.nn.functional.gelu(fx.from_fixed(fx.to_fixed(x)), approximate="tanh")
    assert float((got - want).abs().max()) < 2e-4


@pytest.mark.parametrize("word_bits,lanes,n,heads,rows,imm1,xa,sa,wide", [
    (32, None, 8, 2, 3, 0, 0, 0, False),      # two heads, packed table rows
    (32, None, 12, 3, 2, 20, 2, 0, False),    # table rows strided, halfword-aligned table
    (128, None, 16, 2, 2, 0, 0, 0, True),     # 4 pairs a chunk
    (128, None, 8, 2, 3, 0, 0, 0, False),     # half head of 2: not whole chunks
    (128, 2, 8, 2, 3, 0, 4, 0, True),         # 2 pairs a chunk, two chunks a word
    (128, None, 16, 2, 2, 0, 0, 4, False),    # rows off the word
    (128, None, 16, 2, 2, 0, 2, 0, False),    # table off the chunk
    (512, None, 64, 2, 2, 96, 32, 0, True),   # 16 pairs a chunk, strided table
    (512, 4, 16, 1, 2, 40, 8, 0, True),       # 4 pairs a chunk, four chunks a word
])
def test_rope_kernel(word_bits, lanes, n, heads, rows, imm1, xa, sa, wide):
    """A chunk of ``lanes`` pairs per two cycles on rows and a table on words (and whole
    chunks in a half head), else a pair per two cycles in any lane."""
    rng = np.random.default_rng(n + rows)
    hd = n // heads
    x = _i32(rng, rows * n)
    stride = imm1 or 2 * hd
    tab = rng.integers(-2 ** 15, 2 ** 15, size=(rows, hd), dtype=np.int64)
    tab[0, 0] = -2 ** 15
    aux = bytearray(xa + rows * stride + 8)
    for r in range(rows):
        aux[xa + r * stride:xa + r * stride + 2 * hd] = _b(tab[r], "<i2")
    src = bytearray(sa) + _b(x)
    dst = bytearray(b"\xa5" * (sa + 4 * rows * n + word_bits // 8))
    args = kernel_args(func=SfuFunc.ROPE, n=n, rows=rows, heads=heads, aux_addr=xa,
                       imm1=imm1, src_addr=sa, dst_addr=sa)
    kernel = RopeKernel(word_bits=word_bits, lanes=lanes)
    res = run_kernel(kernel, args, src, aux, dst)
    t = torch.tensor(tab)
    ref = fx.rope(torch.tensor(x).reshape(rows, heads, hd).transpose(0, 1),
                  t[:, :hd // 2], t[:, hd // 2:]).transpose(0, 1).reshape(-1)
    assert _ints(dst[sa:sa + 4 * rows * n]).tolist() == ref.tolist()
    assert dst[sa + 4 * rows * n:] == b"\xa5" * (word_bits // 8)
    per = kernel.lanes if wide else 1
    assert res["cycles"] == kernel.cycles(args) == rope.DIV_LATENCY + rows * n // per + 2
    assert not res["err"]


@pytest.mark.parametrize("kernel,args", [
    (RopeKernel, kernel_args(func=SfuFunc.ROPE, n=6, heads=2)),          # odd head dim
    (RopeKernel, kernel_args(func=SfuFunc.ROPE, n=8, heads=3)),          # n % heads
    (QuantTokenKernel, kernel_args(func=SfuFunc.QUANT_TOKEN, n=8, heads=3)),
])
def test_kernel_refuses(kernel, args):
    res = run_kernel(kernel(), args, bytearray(64), bytearray(64), bytearray(64))
    assert res["err"] and res["err_code"] == ErrorCode.MALFORMED
    want = rope.cycles(args) if kernel is RopeKernel else quant.cycles(args, word_bytes=4)
    assert res["cycles"] == want


def test_divider():
    div = Divider(width=20, divisor_width=10)
    cases = [(0, 1), (1, 1), (999_999, 7), ((1 << 20) - 1, 1023), (5, 9)]

    async def bench(ctx):
        for a, b in cases:
            ctx.set(div.dividend, a)
            ctx.set(div.divisor, b)
            ctx.set(div.start, 1)
            await ctx.tick()
            ctx.set(div.start, 0)
            for _ in range(div.latency - 1):
                assert not ctx.get(div.done)
                await ctx.tick()
            assert ctx.get(div.done)
            assert (ctx.get(div.quotient), ctx.get(div.remainder)) == divmod(a, b)
            await ctx.tick()

    sim = Simulator(div)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


# -- the unit against the ISA simulator ----------------------------------------------------

SIZES = {Buffer.ACT: 512, Buffer.WGT: 0, Buffer.OUT: 512, Buffer.KV: 256, Buffer.AUX: 256}


def _sfu(func, *, src=Buffer.ACT, dst=Buffer.OUT, aux=Buffer.AUX, release=(), **f) -> int:
    return isa.encode(Opcode.SFU, release=release, func=func, src=src, dst=dst, aux=aux, **f)


def _reference(instrs, bufs, regs, config=None):
    """Run SFU instructions on the ISA simulator's ``_sfu`` (of ``config``, default
    ``test``); return (buffers, error)."""
    sim = IsaSim(config or load_config("test"), bytearray(64))
    sim.buffers = {b: bytearray(v) for b, v in bufs.items()}
    sim.regs[:len(regs)] = regs
    try:
        for i, bits in enumerate(instrs):
            sim._sfu(i, isa.decode(bits))
    except ProgramError as e:
        return sim.buffers, (e.code, e.index)
    return sim.buffers, None


def _run_both(instrs, bufs, regs, *, kernels=None, word_bits=128, config=None):
    """Run ``instrs`` on the unit and on the ISA simulator from the same buffers."""
    ref_bufs, ref_err = _reference(instrs, bufs, regs, config)
    rtl_bufs = {b: bytearray(v) for b, v in bufs.items()}
    rvs = []
    for bits in instrs:
        f = isa.decode(bits).fields
        rvs.append(tuple(regs[f[k]] for k in ("rows_reg", "pos_reg", "len_reg")))
    unit = SfuUnit(word_bits=word_bits, buffer_bytes=SIZES, kernels=kernels)
    res = run_unit(unit, [entry_bits(b, i, rv) for i, (b, rv) in enumerate(zip(instrs, rvs))],
                   rtl_bufs)
    return res, rtl_bufs, ref_bufs, ref_err


def _random_bufs(rng):
    bufs = {b: bytearray(s) for b, s in SIZES.items()}
    for b in (Buffer.ACT, Buffer.AUX):
        bufs[b][:] = _b(_i32(rng, SIZES[b] // 4) >> 4)
    return bufs


@pytest.mark.parametrize("word_bits,sfu_lanes,kernel_bits",
                         [(128, None, 128), (64, None, 64), (128, 2, 128), (64, 1, 32)])
def test_unit_program_matches_isa(word_bits, sfu_lanes, kernel_bits):
    """One instruction of each function, rows from a register, through the unit (SILU
    and GELU on ``sfu_lanes``), each in the cycles of the formula; kernels of
    ``kernel_bits`` (a config's ``sfu_word_bits``) on buffer words of ``word_bits``."""
    rng = np.random.default_rng(word_bits)
    bufs = _random_bufs(rng)
    # RoPE table rows (int16 Q14) at AUX 192: 2 rows of 4 cos/sin pairs... as 8 int16.
    bufs[Buffer.AUX][192:224] = _b(rng.integers(-2 ** 14, 2 ** 14, size=16), "<i2")
    c = fx._eps_const(1e-5)
    regs = [0, 2, 0, 0]
    instrs = [
        _sfu(SfuFunc.RMSNORM, dst=Buffer.OUT, n=8, rows_reg=1, src_addr=0, dst_addr=0,
             aux_addr=0, imm0=c & 0xFFFFFFFF, imm1=c >> 32),
        _sfu(SfuFunc.ROPE, src=Buffer.OUT, dst=Buffer.OUT, n=8, heads=2, rows_reg=1,
             src_addr=0, dst_addr=0, aux_addr=192, imm1=16),
        _sfu(SfuFunc.QUANT_TOKEN, src=Buffer.OUT, dst=Buffer.KV, aux=Buffer.KV, n=8,
             heads=2, rows=2, src_addr=0, dst_addr=0, aux_addr=8, imm0=16, imm1=16),
        _sfu(SfuFunc.SILU, src=Buffer.ACT, dst=Buffer.OUT, n=5, rows=2, src_addr=64,
             dst_addr=64),
        _sfu(SfuFunc.MUL, src=Buffer.OUT, dst=Buffer.OUT, n=5, rows=2, src_addr=64,
             dst_addr=128, aux_addr=32),
        _sfu(SfuFunc.ADD, src=Buffer.OUT, dst=Buffer.ACT, n=10, rows=1, src_addr=128,
             dst_addr=256, aux_addr=64, release=(Unit.STORE,)),
        _sfu(SfuFunc.COPY, src=Buffer.ACT, dst=Buffer.OUT, n=13, src_addr=257,
             dst_addr=301),
        # The GPT-2 / OPT functions, on the kernels they share with RMSNORM, SILU and ADD.
        _sfu(SfuFunc.LAYERNORM, src=Buffer.ACT, dst=Buffer.OUT, n=8, rows_reg=1,
             src_addr=32, dst_addr=352, aux_addr=0, imm0=c & 0xFFFFFFFF, imm1=c >> 32),
        _sfu(SfuFunc.GELU, src=Buffer.ACT, dst=Buffer.OUT, n=5, rows=2, src_addr=64,
             dst_addr=416),
        _sfu(SfuFunc.RELU, src=Buffer.ACT, dst=Buffer.OUT, n=6, rows=2, src_addr=96,
             dst_addr=456, aux_addr=SIZES[Buffer.AUX]),    # no aux read: out of range
        # A bias row onto every row, its end at the end of AUX (no second row read).
        _sfu(SfuFunc.ADD, src=Buffer.ACT, dst=Buffer.ACT, aux=Buffer.AUX, n=6, rows_reg=1,
             src_addr=96, dst_addr=96, aux_addr=SIZES[Buffer.AUX] - 24, imm0=1),
    ]
    kernels = default_kernels(word_bits=kernel_bits, sfu_lanes=sfu_lanes)
    res, rtl, ref, ref_err = _run_both(instrs, bufs, regs, word_bits=word_bits,
                                       kernels=kernels)
    assert ref_err is None and not res["err"]
    for b in SIZES:
        assert rtl[b] == ref[b], f"buffer {b.name} differs"
    assert [mask for _, mask in res["released"]] == [0] * 5 + [1 << Unit.STORE.value] + \
        [0] * 5
    # Cycle formula: accept to release, per instruction.
    for i, bits in enumerate(instrs):
        f = isa.decode(bits).fields
        rows = regs[f["rows_reg"]] if f["rows_reg"] else f["rows"]
        args = kernel_args(func=f["func"], n=f["n"], rows=rows, heads=f["heads"] or 1,
                           src_addr=f["src_addr"], aux_addr=f["aux_addr"],
                           dst_addr=f["dst_addr"], imm0=f["imm0"], imm1=f["imm1"])
        assert (res["released"][i][0] - res["accepted"][i] + 1
                == unit_cycles(args, word_bits=kernel_bits, sfu_lanes=sfu_lanes))


@pytest.mark.skipif(SfuFunc.ATT_PV not in default_kernels(),
                    reason="the attention kernels (hdl/sfu/attention.py) are not in this tree")
@pytest.mark.parametrize("word_bits,sfu_lanes,kernel_bits",
                         [(128, None, 128), (64, None, 64), (128, 1, 128), (64, 1, 32)])
def test_unit_attention_chain_matches_isa(word_bits, sfu_lanes, kernel_bits):
    """Decode attention through the unit: quantize q/k/v into records, ATT_QK, SOFTMAX (causal,
    position from a register), ATT_PV with two query heads on one kv head; ATT_QK and ATT_PV
    take a kernel word (``kernel_bits``, on buffer words of ``word_bits``) per cycle,
    SOFTMAX ``sfu_lanes`` scores, in the cycles of the formula."""
    rng = np.random.default_rng(7)
    bufs = _random_bufs(rng)
    rec = dict(imm0=16, imm1=16)           # records of 8 values + scale pair: 16 bytes
    regs = [0, 0, 2, 3]                    # r2: position of the query, r3: keys
    att = dict(n=8, rows=1, heads=2, kv_heads=1, len_reg=3)
    instrs = [
        _sfu(SfuFunc.QUANT_TOKEN, src=Buffer.ACT, dst=Buffer.ACT, aux=Buffer.ACT, n=16,
             heads=2, rows=1, src_addr=0, dst_addr=256, aux_addr=264, **rec),
        _sfu(SfuFunc.QUANT_TOKEN, src=Buffer.ACT, dst=Buffer.KV, aux=Buffer.KV, n=8, rows=3,
             src_addr=64, dst_addr=0, aux_addr=8, **rec),
        _sfu(SfuFunc.QUANT_TOKEN, src=Buffer.ACT, dst=Buffer.KV, aux=Buffer.KV, n=8, rows=3,
             src_addr=160, dst_addr=128, aux_addr=136, **rec),
        _sfu(SfuFunc.ATT_QK, src=Buffer.ACT, dst=Buffer.OUT, aux=Buffer.KV, src_addr=256,
             dst_addr=0, aux_addr=0, **rec, **att),
        _sfu(SfuFunc.SOFTMAX, src=Buffer.OUT, dst=Buffer.OUT, n=1, rows=1, heads=2,
             len_reg=3, pos_reg=2),
        _sfu(SfuFunc.ATT_PV, src=Buffer.OUT, dst=Buffer.ACT, aux=Buffer.KV, src_addr=0,
             dst_addr=384, aux_addr=128, **rec, **att),
    ]
    res, rtl, ref, ref_err = _run_both(instrs, bufs, regs, word_bits=word_bits,
                                       kernels=default_kernels(word_bits=kernel_bits,
                                                               sfu_lanes=sfu_lanes))
    assert ref_err is None and not res["err"], res
    for b in SIZES:
        assert rtl[b] == ref[b], f"buffer {b.name} differs"
    assert _ints(ref[Buffer.ACT][384:448]).any()
    for i, bits in enumerate(instrs):
        f = isa.decode(bits).fields
        args = kernel_args(func=f["func"], n=f["n"], rows=f["rows"], heads=f["heads"] or 1,
                           kv_heads=f["kv_heads"], pos=regs[f["pos_reg"]] if f["pos_reg"] else 0,
                           length=regs[f["len_reg"]] if f["len_reg"] else 0,
                           src_addr=f["src_addr"], aux_addr=f["aux_addr"],
                           dst_addr=f["dst_addr"], imm0=f["imm0"], imm1=f["imm1"])
        assert (res["released"][i][0] - res["accepted"][i] + 1
                == unit_cycles(args, word_bits=kernel_bits, sfu_lanes=sfu_lanes)), \
            SfuFunc(f["func"]).name


def _err_case(instrs, bufs=None, regs=(0,), kernels=None):
    bufs = bufs or _random_bufs(np.random.default_rng(0))
    res, rtl, ref, ref_err = _run_both(instrs, bufs, list(regs), kernels=kernels)
    return res, ref_err


@pytest.mark.parametrize("case", ["dst_end", "src_end", "aux_end", "quant_scales"])
def test_unit_buffer_range(case):
    ok = _sfu(SfuFunc.ADD, n=4, rows=1)
    bad = {
        "dst_end": _sfu(SfuFunc.ADD, n=8, rows=2, dst_addr=SIZES[Buffer.OUT] - 32),
        "src_end": _sfu(SfuFunc.SILU, n=8, rows=2, src_addr=SIZES[Buffer.ACT] - 16),
        "aux_end": _sfu(SfuFunc.RMSNORM, n=8, rows=1, aux_addr=SIZES[Buffer.AUX] - 16),
        "quant_scales": _sfu(SfuFunc.QUANT_TOKEN, n=8, rows=2, aux_addr=SIZES[Buffer.AUX] - 8),
    }[case]
    bufs = _random_bufs(np.random.default_rng(1))
    res, rtl, ref, ref_err = _run_both([ok, bad], bufs, [0])
    assert ref_err == (ErrorCode.BUFFER_RANGE, 1)
    assert res["err"] and (res["err_code"], res["err_pc"]) == ref_err
    assert len(res["released"]) == 1


def _with_func(bits: int, raw: int) -> int:
    off = isa.INSTR_LAYOUT["body"].offset + isa.SFU_LAYOUT["func"].offset
    return bits & ~(0x3F << off) | raw << off


@pytest.mark.parametrize("case,regs", [
    ("heads", [0]), ("n_zero", [0]), ("rows_reg_zero", [0, 0]), ("undefined", [0]),
])
def test_unit_malformed(case, regs):
    bits = {
        "heads": _sfu(SfuFunc.SILU, n=9, heads=2, rows=1),
        "n_zero": _sfu(SfuFunc.COPY, n=0),
        "rows_reg_zero": _sfu(SfuFunc.ADD, n=4, rows=3, rows_reg=1),
        "undefined": _with_func(_sfu(SfuFunc.COPY, n=4), max(f.value for f in SfuFunc) + 1),
    }[case]
    if case == "undefined":
        with pytest.raises(ProgramError):
            isa.decode(bits)                    # the ISA refuses it at decode
        unit = SfuUnit(word_bits=128, buffer_bytes=SIZES)
        res = run_unit(unit, [entry_bits(bits, 5)], _random_bufs(np.random.default_rng(2)))
        assert res["err"] and (res["err_code"], res["err_pc"]) == (ErrorCode.MALFORMED, 5)
        return
    res, ref_err = _err_case([bits], regs=regs)
    assert ref_err == (ErrorCode.MALFORMED, 0)
    assert res["err"] and (res["err_code"], res["err_pc"]) == ref_err


def test_unit_misaligned_is_malformed():
    """An int32 operand off a 4-byte boundary: the ISA simulator accepts it, the RTL not."""
    unit = SfuUnit(word_bits=128, buffer_bytes=SIZES)
    res = run_unit(unit, [entry_bits(_sfu(SfuFunc.ADD, n=4, rows=1, src_addr=2), 3)],
                   _random_bufs(np.random.default_rng(3)))
    assert res["err"] and (res["err_code"], res["err_pc"]) == (ErrorCode.MALFORMED, 3)


def test_unit_unsupported():
    kernels = {f: k for f, k in default_kernels(word_bits=128).items() if f != SfuFunc.ROPE}
    res, ref_err = _err_case([_sfu(SfuFunc.ADD, n=4, rows=1),
                              _sfu(SfuFunc.ROPE, n=8, rows=1, heads=2)], kernels=kernels)
    assert ref_err is None
    assert res["err"] and (res["err_code"], res["err_pc"]) == (ErrorCode.UNSUPPORTED, 1)


def test_unit_att_pv_head_dimension_limit_from_the_config():
    """A config's limits.att_pv_max_head_dim sizes the unit's ATT_PV kernel (as the core
    builds it, default_kernels(config.limits, word_bits=...)) and bounds the ISA simulator
    alike: n at the limit runs the same on both, n beyond it is UNSUPPORTED on both."""
    base = load_config("test")
    cfg = dataclasses.replace(base, limits=dataclasses.replace(base.limits,
                                                               att_pv_max_head_dim=8))
    kernels = default_kernels(cfg.limits, word_bits=128)
    rng = np.random.default_rng(11)
    bufs = _random_bufs(rng)
    for r in range(2):                     # value records of 8 values + their scale pair
        bufs[Buffer.KV][16 * r:16 * r + 8] = _b(rng.integers(-128, 128, 8), "<i1")
        bufs[Buffer.KV][16 * r + 8:16 * r + 16] = _b(np.array([3000, 20]))
    bufs[Buffer.OUT][:8] = _b(np.array([1 << 14, 1 << 14]))    # probabilities of 2 keys
    regs = [0, 0, 0, 2]

    def att_pv(n):
        return _sfu(SfuFunc.ATT_PV, src=Buffer.OUT, dst=Buffer.ACT, aux=Buffer.KV, n=n,
                    rows=1, heads=1, kv_heads=1, len_reg=3, dst_addr=384, imm1=16)

    res, rtl, ref, ref_err = _run_both([att_pv(8)], bufs, regs, kernels=kernels, config=cfg)
    assert ref_err is None and not res["err"]
    assert rtl[Buffer.ACT] == ref[Buffer.ACT] and _ints(ref[Buffer.ACT][384:416]).any()
    res, rtl, ref, ref_err = _run_both([att_pv(8), att_pv(12)], bufs, regs,
                                       kernels=kernels, config=cfg)
    assert ref_err == (ErrorCode.UNSUPPORTED, 1)
    assert res["err"] and (res["err_code"], res["err_pc"]) == ref_err


@pytest.mark.parametrize("make,error,match", [
    (lambda: SfuUnit(word_bits=48, buffer_bytes=SIZES), TypeError, "power of two"),
    (lambda: SfuUnit(word_bits=128, buffer_bytes={Buffer.ACT: 100}), ValueError,
     "multiple of 16"),
    (lambda: SfuUnit(word_bits=128, buffer_bytes=SIZES, kernels={3: RopeKernel}), TypeError,
     "SfuFunc"),
    (lambda: ElementwiseKernel(func=SfuFunc.ROPE), ValueError, "COPY"),
    (lambda: ElementwiseKernel(func=SfuFunc.ADD, funcs=(SfuFunc.SILU,)), ValueError,
     "ADD builds some of ADD, RELU"),
    (lambda: RmsNormKernel(funcs=(SfuFunc.SILU,)), ValueError, "RMSNORM and LAYERNORM"),
])
def test_bad_parameters(make, error, match):
    with warnings.catch_warnings():
        # the half-built component is never elaborated: collect it under this filter
        warnings.simplefilter("ignore")
        with pytest.raises(error, match=match) as info:
            make()
        del info
        gc.collect()


#: The functions :func:`_random_program` draws from by default, in the order of the draw.
_PROGRAM_FUNCS = (SfuFunc.COPY,) + ROWWISE


def _random_program(rng, count, funcs=_PROGRAM_FUNCS):
    """``count`` random well-formed SFU instructions within :data:`SIZES` (of ``funcs``,
    default: every row-wise function and ``COPY``).

    Source and destination rows are either the same (in place) or disjoint: the RTL
    streams rows, so partly overlapping ones (other than COPY's) are not supported.
    """
    c = fx._eps_const(float(rng.choice([1e-5, 1e-6, 0.0])))
    instrs = []
    for _ in range(count):
        func = SfuFunc(int(rng.choice([f.value for f in funcs])))
        heads = int(rng.choice([1, 2, 4]))
        hd = 2 * int(rng.integers(1, 5))
        n, rows = heads * hd, int(rng.integers(1, 4))
        span = 4 * n * rows
        src = Buffer(int(rng.choice([Buffer.ACT.value, Buffer.OUT.value])))
        dst = Buffer(int(rng.choice([Buffer.ACT.value, Buffer.OUT.value])))
        sa, da = (4 * int(rng.integers(0, (512 - span) // 4 + 1)) for _ in range(2))
        if src == dst and abs(sa - da) < span and rng.integers(2):
            da = sa                                 # in place
        elif src == dst and abs(sa - da) < span:    # streamed rows must not overlap
            dst = Buffer.OUT if src == Buffer.ACT else Buffer.ACT
        f = dict(n=n, rows=rows, heads=heads, src=src, dst=dst, src_addr=sa, dst_addr=da)
        if func == SfuFunc.COPY:
            f.update(n=int(rng.integers(1, 64)), src_addr=int(rng.integers(0, 440)),
                     dst_addr=int(rng.integers(0, 440)))
        elif func == SfuFunc.QUANT_TOKEN:
            seg = n // heads
            f.update(dst=Buffer.KV, aux=Buffer.KV, imm0=8 * ((seg + 7) // 8) + 8, imm1=0)
            f.update(dst_addr=0, aux_addr=8 * ((seg + 7) // 8))
            f["imm1"] = f["imm0"]
        elif func in (SfuFunc.RMSNORM, SfuFunc.LAYERNORM):
            f.update(aux_addr=4 * int(rng.integers(0, 16)), imm0=c & 0xFFFFFFFF, imm1=c >> 32)
        elif func == SfuFunc.ROPE:
            f.update(aux_addr=2 * int(rng.integers(0, 32)), imm1=2 * int(rng.integers(0, 3)) * hd)
        elif func in (SfuFunc.MUL, SfuFunc.ADD):
            f.update(aux_addr=4 * int(rng.integers(0, (256 - span) // 4 + 1)))
            if func == SfuFunc.ADD:
                f["imm0"] = int(rng.integers(2))    # one row onto every row, or rows
        instrs.append(_sfu(func, **f))
    return instrs


@pytest.mark.slow
@pytest.mark.parametrize("word_bits", [32, 512])
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_unit_random_programs(seed, word_bits):
    """Random programs of every function (strides, heads, overlaps) equal the ISA sim."""
    rng = np.random.default_rng(seed)
    bufs = _random_bufs(rng)
    instrs = _random_program(rng, 10)
    res, rtl, ref, ref_err = _run_both(instrs, bufs, [0], word_bits=word_bits)
    assert ref_err is None and not res["err"], f"seed {seed}: {res}"
    for b in SIZES:
        assert rtl[b] == ref[b], f"seed {seed}: buffer {b.name} differs"


@pytest.mark.parametrize("left_out", [
    (SfuFunc.COPY, SfuFunc.GELU, SfuFunc.RELU, SfuFunc.LAYERNORM),     # as on ulx3s
    (SfuFunc.SILU, SfuFunc.ADD, SfuFunc.RMSNORM),        # the other half of each pair
])
def test_unit_config_sfu_funcs(left_out):
    """A config's ``sfu_funcs`` builds the unit's kernels (those shared by a pair with
    their part only) and bounds the ISA simulator alike: a random program of the
    functions built (one of each) runs the same on both; a function left out is
    UNSUPPORTED on both, after the MALFORMED checks."""
    base = load_config("test")
    cfg = dataclasses.replace(base, sfu_funcs=tuple(f.name for f in SfuFunc
                                                    if f not in left_out))
    kernels = default_kernels(cfg.limits, word_bits=128, funcs=cfg.sfu_functions)
    assert set(kernels) == cfg.sfu_functions
    rng = np.random.default_rng(len(left_out))
    bufs = _random_bufs(rng)
    instrs = [ins for f in _PROGRAM_FUNCS if f not in left_out    # one of each
              for ins in _random_program(rng, 1, funcs=[f])]
    res, rtl, ref, ref_err = _run_both(instrs, bufs, [0], kernels=kernels, config=cfg)
    assert ref_err is None and not res["err"]
    for b in SIZES:
        assert rtl[b] == ref[b], f"buffer {b.name} differs"
    for func in left_out:
        n = 4 if func == SfuFunc.COPY else 8
        for bad, code in [(_sfu(func, n=n, rows=1, heads=2), ErrorCode.UNSUPPORTED),
                          (_sfu(func, n=0, rows=1), ErrorCode.MALFORMED)]:
            res, _, _, ref_err = _run_both([_sfu(SfuFunc.MUL, n=4, rows=1), bad], bufs, [0],
                                           kernels=kernels, config=cfg)
            assert ref_err == (code, 1), func
            assert res["err"] and (res["err_code"], res["err_pc"]) == ref_err, func


@pytest.mark.rtl
def test_unit_verilator_lint(tmp_path):
    """The unit's Verilog is clean under ``verilator --lint-only -Wall`` with the core's
    waivers (the same rules ``airfoil lint`` applies to the whole core)."""
    import subprocess
    from pathlib import Path

    from hdl.build import write_verilog
    v, _ = write_verilog(SfuUnit(word_bits=128, buffer_bytes=SIZES), "airfoil_sfu", tmp_path)
    core_vlt = Path(__file__).resolve().parents[1] / "hdl" / "core" / "airfoil_core.vlt"
    vlt = tmp_path / "airfoil_sfu.vlt"
    vlt.write_text(core_vlt.read_text().replace("airfoil_core.v", "airfoil_sfu.v"))
    proc = subprocess.run(["verilator", "--lint-only", "-Wall", "--top-module", "airfoil_sfu",
                           str(vlt), str(v)], capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
