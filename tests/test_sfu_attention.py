"""The SFU attention kernels (hdl/sfu/attention.py) against the ISA simulator, bit for bit.

Each case fills the ``src``, ``aux`` and ``dst`` buffers with random bytes, places INT8
records (scale pairs included) or int32 scores at random, possibly unaligned, addresses,
runs the ISA simulator's ``SFU`` function on copies of the buffers and the kernel in
``amaranth.sim`` (Python memories answer the read ports with latency 1 and record every
write), then compares the whole ``dst`` buffer byte for byte and the cycle count with the
kernel module's formula.
"""

from __future__ import annotations

import dataclasses
import random
from types import SimpleNamespace

import numpy as np
import pytest
from amaranth.sim import Simulator

from airfoil.config import load_config
from airfoil.errors import ProgramError
from airfoil.isa import Buffer, ErrorCode, SfuFunc
from airfoil.kv_banks import KvBanks
from hdl.sfu import attention
from hdl.sfu.banked_attention import BankedAttentionContext, BankedAttentionScores
from hdl.sfu.attention import KERNELS, AttentionContext, AttentionScores, Softmax, pv_aligned
from hdl.sfu.kernel import ARGS_LAYOUT
from sim.isa_sim import IsaSim

BUF_BYTES = 8192
SRC_REG, POS_REG, LEN_REG = 3, 4, 5


def _up8(n: int) -> int:
    return (n + 7) // 8 * 8


# -- harness ----------------------------------------------------------------------------

def run_kernel(dut, args: dict, src: bytes, aux: bytes, dst: bytearray, *, seed: int,
               max_cycles: int = 200_000) -> dict:
    """Run one kernel invocation; return cycles, error flag/code, the write count and the
    bytes written (``written``: enabled bytes, a byte written twice counts twice).

    The read ports answer with the little-endian word (of the ports' width) at the
    address of the previous cycle, which must be a multiple of the word; when ``en`` was
    low they hold their word or show random bits (either at random; the kernel must ignore
    both). An ``aux`` port of ``B`` words reads a banked buffer: ``aux`` in ``B`` equal
    banks, the word at the address of each (:mod:`airfoil.kv_banks`). Writes (of the write
    port's width, at a multiple of it) go to ``dst`` under their byte enables.
    """
    rng = random.Random(seed)
    out = {}
    wb = len(dut.src.data) // 8
    banks = len(dut.aux.data) // len(dut.src.data)
    bank_bytes = len(aux) // banks

    def word(name, mem, a):
        if name == "src":
            return int.from_bytes(mem[a:a + wb], "little")
        return int.from_bytes(b"".join(mem[b * bank_bytes + a:b * bank_bytes + a + wb]
                                       for b in range(banks)), "little")

    async def testbench(ctx):
        ctx.set(dut.args, ARGS_LAYOUT.const(args))
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        pending = {"src": None, "aux": None}
        held = {"src": 0, "aux": 0}
        writes = written = 0
        for cycle in range(1, max_cycles):
            for name, mem in (("src", src), ("aux", aux)):
                port = getattr(dut, name)
                a = pending[name]
                if a is not None:
                    held[name] = word(name, mem, a)
                elif rng.getrandbits(1):
                    held[name] = rng.getrandbits(len(port.data))
                ctx.set(port.data, held[name])
            for name, mem in (("src", src), ("aux", aux)):
                port = getattr(dut, name)
                if ctx.get(port.en):
                    a = ctx.get(port.addr)
                    limit = len(mem) if name == "src" else bank_bytes
                    assert a % wb == 0 and a + wb <= limit, f"{name} read at {a:#x}"
                    pending[name] = a
                else:
                    pending[name] = None
            en = ctx.get(dut.dst.en)
            if en:
                a, d = ctx.get(dut.dst.addr), ctx.get(dut.dst.data)
                width = len(dut.dst.en)
                assert a % width == 0 and a + width <= len(dst), f"dst write at {a:#x}"
                for b in range(width):
                    if en >> b & 1:
                        dst[a + b] = d >> (8 * b) & 0xFF
                writes += 1
                written += bin(en).count("1")
            assert ctx.get(dut.busy), f"busy low in cycle {cycle} before done"
            if ctx.get(dut.done):
                out.update(cycles=cycle, err=ctx.get(dut.err),
                           code=ErrorCode(ctx.get(dut.err_code)), writes=writes,
                           written=written)
                await ctx.tick()
                assert not ctx.get(dut.busy) and not ctx.get(dut.done)
                return
            await ctx.tick()
        raise AssertionError(f"no done within {max_cycles} cycles")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return out


def banked_config(kv_banks: int, word_bits: int):
    """The test config with a KV buffer of ``BUF_BYTES`` in ``kv_banks`` banks of words of
    ``word_bits``."""
    c = load_config("test")
    return dataclasses.replace(
        c, buffers=dataclasses.replace(c.buffers, kv_bytes=BUF_BYTES, kv_banks=kv_banks),
        memory=dataclasses.replace(c.memory, word_bits=word_bits))


def run_reference(args: dict, src: bytes, aux: bytes, dst: bytes | None, config=None):
    """The ISA simulator's ``SFU`` function on copies of the buffers: (dst, error code).

    ``dst = None`` writes into (a copy of) ``src``: the in-place form the compiler emits.
    ``config``: the simulator's configuration (default ``test``; a banked KV buffer's
    decides where the records are).
    """
    isa = IsaSim(load_config("test") if config is None else config, bytearray(64))
    isa.buffers[Buffer.ACT] = bytearray(src)
    isa.buffers[Buffer.KV] = bytearray(aux)
    isa.buffers[Buffer.OUT] = bytearray(src if dst is None else dst)
    out = Buffer.OUT if dst is not None else Buffer.ACT
    isa.regs[SRC_REG] = args["rows"]
    isa.regs[POS_REG] = args["pos"]
    isa.regs[LEN_REG] = args["length"]
    fields = dict(func=args["func"], n=args["n"], rows=0, rows_reg=SRC_REG,
                  heads=args["heads"], kv_heads=args["kv_heads"], pos_reg=POS_REG,
                  len_reg=LEN_REG, src=Buffer.ACT, aux=Buffer.KV, dst=out,
                  src_addr=args["src_addr"], aux_addr=args["aux_addr"],
                  dst_addr=args["dst_addr"], imm0=args["imm0"], imm1=args["imm1"])
    try:
        isa._sfu_func(0, SimpleNamespace(fields=fields))
    except ProgramError as e:
        return bytes(isa.buffers[out]), e.code
    return bytes(isa.buffers[out]), ErrorCode.NONE


def make_args(func, *, n, rows, heads, kv_heads=1, pos=0, length, src_addr=0, aux_addr=0,
              dst_addr=0, imm0=0, imm1=0) -> dict:
    return dict(func=func, n=n, rows=rows, heads=heads, kv_heads=kv_heads, pos=pos,
                length=length, src_addr=src_addr, dst_addr=dst_addr, aux_addr=aux_addr,
                imm0=imm0, imm1=imm1)


def put_records(buf: bytearray, rng: np.random.Generator, start: int, count: int, n: int,
                stride: int, se_range: tuple[int, int]) -> None:
    """Random INT8 records with normalised ``sm`` and ``se`` drawn from ``se_range``."""
    for i in range(count):
        a = start + i * stride
        buf[a:a + n] = rng.integers(-128, 128, n).astype(np.int8).tobytes()
        sm = int(rng.integers(1 << 15, 1 << 16))
        se = int(rng.integers(*se_range))
        buf[a + _up8(n):a + _up8(n) + 8] = np.array([sm, se], "<i4").tobytes()


def check(dut, args: dict, src: bytearray, aux: bytearray, seed: int, *,
          in_place: bool = False, config=None) -> dict:
    """Run kernel and reference on the same buffers; assert equal bytes and cycles.

    ``in_place``: ``dst`` is the ``src`` buffer itself (the kernel's writes are visible
    to its later reads), as the compiler emits ``SOFTMAX``. ``config``: the reference's
    (:func:`run_reference`).
    """
    if in_place:
        want, code = run_reference(args, src, aux, None, config)
        dst = src = bytearray(src)
    else:
        dst = bytearray(np.random.default_rng(seed + 1).integers(0, 256, BUF_BYTES,
                                                                 np.uint8))
        want, code = run_reference(args, src, aux, dst, config)
        src = bytes(src)
    got = run_kernel(dut, args, src, bytes(aux), dst, seed=seed,
                     max_cycles=4 * dut.cycles(args) + 100)
    assert got["code"] == code and got["err"] == (code != ErrorCode.NONE), (seed, got, code)
    assert bytes(dst) == want, f"seed {seed}: dst differs from the ISA simulator"
    assert got["cycles"] == dut.cycles(args), (seed, got["cycles"], dut.cycles(args))
    got["dst"] = bytes(dst)
    return got


def out_words(args: dict, word_bytes: int) -> int:
    """Buffer words the ``ATT_PV`` outputs of the ``(row, head)`` pairs reach, each pair's
    ``n`` int32 contiguous from ``dst_addr`` (writes of a word-wide output pass)."""
    n = args["n"]
    starts = (args["dst_addr"] + 4 * n * i for i in range(args["rows"] * args["heads"]))
    return sum((a + 4 * n - 1) // word_bytes - a // word_bytes + 1 for a in starts)


def random_buffers(seed: int):
    rng = np.random.default_rng(seed)
    src = bytearray(rng.integers(0, 256, BUF_BYTES, np.uint8))
    aux = bytearray(rng.integers(0, 256, BUF_BYTES, np.uint8))
    return rng, src, aux


# -- ATT_QK -----------------------------------------------------------------------------

QK_CASES = [
    # rows, heads, kv_heads, length, n, query stride pad, key stride pad, addr offsets
    pytest.param(1, 4, 2, 5, 8, 0, 0, (0, 0, 0), id="gqa-decode-L5"),
    pytest.param(2, 2, 2, 1, 5, 3, 1, (1, 2, 4), id="mha-prefill-L1-unaligned"),
    pytest.param(1, 4, 2, 17, 3, 1, 5, (3, 1, 8), id="gqa-decode-L17-unaligned"),
    pytest.param(3, 2, 1, 5, 12, 0, 4, (2, 3, 0), id="mqa-prefill-L5"),
    # Records on 64-byte words (the compiler's layout on u280): no funnel word.
    pytest.param(2, 4, 2, 9, 40, 8, 8, (0, 32, 0), id="gqa-prefill-L9-word-aligned"),
    pytest.param(1, 2, 1, 6, 120, 0, 0, (0, 32, 1), id="mqa-decode-L6-two-words-aligned"),
]


#: Read port widths of the record kernels: 32 bits, and the buffer words of sim_llm and u280.
WORD_BITS = [32, 128, 512]


@pytest.mark.parametrize("seed", [11])
@pytest.mark.parametrize("word_bits", WORD_BITS)
@pytest.mark.parametrize("rows,heads,kv,length,n,qpad,kpad,offs", QK_CASES)
def test_att_qk(rows, heads, kv, length, n, qpad, kpad, offs, word_bits, seed):
    rng, src, aux = random_buffers(seed)
    qstride, kstride = _up8(n) + 8 + qpad, _up8(n) + 8 + kpad
    args = make_args(SfuFunc.ATT_QK, n=n, rows=rows, heads=heads, kv_heads=kv, length=length,
                     src_addr=64 + offs[0], aux_addr=32 + offs[1], dst_addr=offs[2] * 4,
                     imm0=qstride, imm1=kstride)
    put_records(src, rng, args["src_addr"], rows * heads, n, qstride, (8, 24))
    put_records(aux, rng, args["aux_addr"], length * kv, n, kstride, (8, 24))
    got = check(AttentionScores(word_bits=word_bits), args, src, aux, seed)
    assert got["writes"] == rows * heads * length


@pytest.mark.parametrize("seed", [5])
@pytest.mark.parametrize("word_bits", [32, 128])
def test_att_qk_extreme_scales(word_bits, seed):
    """Scales whose shift is far left (saturating at +-2**31) or beyond 62 to the right."""
    rng, src, aux = random_buffers(seed)
    n, heads, kv, length = 8, 2, 1, 6
    args = make_args(SfuFunc.ATT_QK, n=n, rows=1, heads=heads, kv_heads=kv, length=length,
                     src_addr=0, aux_addr=0, dst_addr=0, imm0=16 + 4, imm1=16)
    put_records(src, rng, 0, heads, n, 20, (-20, 5))
    put_records(aux, rng, 0, length, n, 16, (-20, 120))
    # All-extreme values: -128 everywhere in one key, +127 in another.
    aux[0:n] = bytes([0x80] * n)
    aux[16:16 + n] = bytes([0x7F] * n)
    src[0:n] = bytes([0x7F] * n)                     # query 0 all +127
    for buf, at, se in ((src, 0, -20), (aux, 0, -20), (aux, 16, -20), (aux, 32, 120)):
        buf[at + _up8(n) + 4:at + _up8(n) + 8] = np.array([se], "<i4").tobytes()
    got = check(AttentionScores(word_bits=word_bits), args, src, aux, seed)
    scores = np.frombuffer(got["dst"], "<i4", heads * length)
    assert {(1 << 31) - 1, -(1 << 31), 0} <= set(scores.tolist()), "extremes not reached"


# -- SOFTMAX ----------------------------------------------------------------------------

SOFTMAX_CASES = [
    # rows, heads, length, pos, score magnitude
    pytest.param(1, 4, 5, 4, 1 << 18, id="decode-L5"),
    pytest.param(3, 2, 5, 2, 1 << 20, id="prefill-causal"),
    pytest.param(4, 1, 5, 0, 1 << 16, id="prefill-from-0"),
    pytest.param(1, 2, 1, 0, 1 << 16, id="L1"),
    pytest.param(2, 1, 17, 20, 1 << 31, id="L17-extreme"),
]


#: Read and write port widths of the Softmax and its chunk's lanes (None: a word's): the
#: ULX3S's single lane, sim_llm's and u280's words, and fewer lanes than a word's.
SOFTMAX_PORTS = [(32, None), (128, None), (128, 1), (128, 2), (512, None), (512, 4)]


@pytest.mark.parametrize("seed", [3])
@pytest.mark.parametrize("word_bits,lanes", SOFTMAX_PORTS)
@pytest.mark.parametrize("rows,heads,length,pos,mag", SOFTMAX_CASES)
def test_softmax(rows, heads, length, pos, mag, word_bits, lanes, seed):
    """Rows of scores from an address in the second lane of a word (any lane in later
    rows), probabilities to the first lane of another: the output chunks' funnel."""
    rng, src, aux = random_buffers(seed)
    args = make_args(SfuFunc.SOFTMAX, n=1, rows=rows, heads=heads, length=length, pos=pos,
                     src_addr=132, dst_addr=512)
    count = rows * heads * length
    scores = rng.integers(-mag, mag, count, dtype=np.int64).clip(-(1 << 31), (1 << 31) - 1)
    if mag == 1 << 31:       # max - s of 2**31 and more saturates d (to a zero exp)
        scores[0:4] = [(1 << 31) - 1, -(1 << 31), -1, -3]
    src[132:132 + 4 * count] = scores.astype("<i4").tobytes()
    dut = Softmax(word_bits=word_bits, lanes=lanes)
    assert dut.latency == 5 and dut.lanes == (lanes or word_bits // 32)
    got = check(dut, args, src, aux, seed)
    assert got["written"] == 4 * count         # every probability written once


@pytest.mark.parametrize("word_bits,lanes", [(32, None), (128, None), (128, 2)])
@pytest.mark.parametrize("rows,heads,length,pos,window", [
    pytest.param(1, 2, 9, 8, 3, id="decode-window3"),
    pytest.param(4, 1, 8, 2, 3, id="prefill-window3"),
    pytest.param(3, 2, 6, 0, 1, id="window1"),
    pytest.param(2, 1, 17, 20, 40, id="window-beyond-keys"),
    pytest.param(1, 1, 21, 20, 6, id="window-over-words"),
])
def test_softmax_sliding_window(rows, heads, length, pos, window, word_bits, lanes):
    """A window (``imm0``) masks the keys before it, in the max, exp and output passes."""
    rng, src, aux = random_buffers(5)
    args = make_args(SfuFunc.SOFTMAX, n=1, rows=rows, heads=heads, length=length, pos=pos,
                     src_addr=128, dst_addr=256, imm0=window)
    count = rows * heads * length
    scores = rng.integers(-1 << 20, 1 << 20, count, dtype=np.int64)
    scores[0] = 1 << 24                 # the row maximum lies before the window
    src[128:128 + 4 * count] = scores.astype("<i4").tobytes()
    got = check(Softmax(word_bits=word_bits, lanes=lanes), args, src, aux, 5)  # and cycles
    assert got["written"] == 4 * count         # every probability written once


@pytest.mark.parametrize("word_bits,lanes", [(32, None), (128, None), (128, 2)])
@pytest.mark.parametrize("rows,heads,length,pos,window", [
    pytest.param(4, 2, 4, 0, 0, id="sentence-of-4"),
    pytest.param(3, 1, 9, 0, 2, id="window-ignored"),
    pytest.param(2, 1, 17, 0, 0, id="over-words"),
])
def test_softmax_bidirectional(rows, heads, length, pos, window, word_bits, lanes):
    """``imm1`` nonzero (an encoder's attention): every row sees all ``length`` keys, the
    last one included, whatever ``pos`` and ``imm0`` say."""
    rng, src, aux = random_buffers(6)
    args = make_args(SfuFunc.SOFTMAX, n=1, rows=rows, heads=heads, length=length, pos=pos,
                     src_addr=128, dst_addr=512, imm0=window, imm1=1)
    count = rows * heads * length
    scores = rng.integers(-1 << 20, 1 << 20, count, dtype=np.int64)
    scores[length - 1] = 1 << 24        # row 0's maximum is its last key
    src[128:128 + 4 * count] = scores.astype("<i4").tobytes()
    got = check(Softmax(word_bits=word_bits, lanes=lanes), args, src, aux, 6)  # and cycles
    assert got["written"] == 4 * count         # every probability written once
    first = np.frombuffer(bytes(got["dst"][512:512 + 4 * length]), dtype="<i4")
    assert first[-1] > 1 << 14          # the causal mask would have made it 0


@pytest.mark.parametrize("seed", [4])
@pytest.mark.parametrize("word_bits,lanes", [(32, None), (128, None), (512, None), (512, 4)])
def test_softmax_in_place(seed, word_bits, lanes):
    """Probabilities over their own scores (src = dst), as the compiler schedules it: rows
    of 6 scores from a word's start, so later rows start mid-chunk and share a chunk with
    the row before, whose last probabilities are written while they are read."""
    rng, src, aux = random_buffers(seed)
    rows, heads, length = 3, 2, 6
    args = make_args(SfuFunc.SOFTMAX, n=8, rows=rows, heads=heads, length=length, pos=1,
                     src_addr=64, dst_addr=64)
    count = rows * heads * length
    src[64:64 + 4 * count] = rng.integers(-1 << 18, 1 << 18, count).astype("<i4").tobytes()
    dut = Softmax(word_bits=word_bits, lanes=lanes)
    assert not attention.softmax_shifted(args, dut.lanes)
    check(dut, args, src, aux, seed, in_place=True)


@pytest.mark.parametrize("word_bits,lanes", [(128, None), (512, None), (512, 4)])
@pytest.mark.parametrize("src_addr,dst_addr", [(132, 524), (140, 516), (128, 1024)],
                         ids=["dst-lanes-ahead", "dst-lanes-behind", "same-lanes"])
def test_softmax_rows_across_chunks(src_addr, dst_addr, word_bits, lanes):
    """Rows of 7 scores (each row at another lane of its chunk) from and to addresses at
    other lanes of a chunk, either way round: the funnel's extra cycle and no more."""
    rng, src, aux = random_buffers(8)
    rows, heads, length = 3, 2, 7
    args = make_args(SfuFunc.SOFTMAX, n=1, rows=rows, heads=heads, length=length, pos=3,
                     src_addr=src_addr, dst_addr=dst_addr)
    count = rows * heads * length
    src[src_addr:src_addr + 4 * count] = rng.integers(-1 << 20, 1 << 20, count
                                                      ).astype("<i4").tobytes()
    dut = Softmax(word_bits=word_bits, lanes=lanes)
    got = check(dut, args, src, aux, 8)                               # and cycles
    assert got["written"] == 4 * count
    shifted = attention.softmax_shifted(args, dut.lanes)
    assert shifted == (src_addr != 128)
    assert dut.cycles(args) - dut.cycles(dict(args, dst_addr=src_addr)) == (
        rows * heads if shifted else 0)


# -- ATT_PV -----------------------------------------------------------------------------

PV_CASES = [
    # rows, heads, kv_heads, length, n, value stride pad, addr offsets, se range
    pytest.param(1, 4, 2, 5, 8, 0, (0, 0, 0), (14, 24), id="gqa-decode-L5"),
    pytest.param(2, 2, 2, 1, 6, 3, (0, 1, 8), (14, 24), id="mha-prefill-L1-unaligned"),
    pytest.param(1, 2, 1, 17, 4, 1, (4, 3, 0), (14, 24), id="mqa-decode-L17"),
    pytest.param(2, 2, 1, 5, 9, 4, (0, 2, 4), (-30, 60), id="extreme-scales"),
]


@pytest.mark.parametrize("seed", [7])
@pytest.mark.parametrize("word_bits", WORD_BITS)
@pytest.mark.parametrize("rows,heads,kv,length,n,vpad,offs,se_range", PV_CASES)
def test_att_pv(rows, heads, kv, length, n, vpad, offs, se_range, word_bits, seed):
    rng, src, aux = random_buffers(seed)
    vstride = _up8(n) + 8 + vpad
    args = make_args(SfuFunc.ATT_PV, n=n, rows=rows, heads=heads, kv_heads=kv, length=length,
                     src_addr=offs[0] * 4, aux_addr=16 + offs[1], dst_addr=offs[2] * 4,
                     imm1=vstride)
    count = rows * heads * length
    probs = rng.integers(0, (1 << 15) + 1, count)
    probs[: min(count, 3)] = [1 << 15, 0, 1 << 15][: min(count, 3)]
    src[args["src_addr"]:args["src_addr"] + 4 * count] = probs.astype("<i4").tobytes()
    put_records(aux, rng, args["aux_addr"], length * kv, n, vstride, se_range)
    got = check(AttentionContext(max_head_dim=16, word_bits=word_bits), args, src, aux, seed)
    assert got["writes"] == out_words(args, word_bits // 8)
    out = np.frombuffer(got["dst"], "<i4", rows * heads * n, args["dst_addr"])
    if se_range[0] < 0:
        assert ((out == (1 << 31) - 1) | (out == -(1 << 31))).any(), "no saturated output"


@pytest.mark.parametrize("word_bits", [128, 512])
@pytest.mark.parametrize("n", [16, 64, 128])
def test_att_pv_word_aligned(n, word_bits):
    """Value records on word strides with their scale pairs on a word (the compiler's
    layout, :func:`pv_aligned` where ``up8(n)`` is a whole number of words): no funnel
    word after the values, the results of the funnel's path."""
    rng, src, aux = random_buffers(n + word_bits)
    wb = word_bits // 8
    vstride = -(-(_up8(n) + 8) // 64) * 64
    args = make_args(SfuFunc.ATT_PV, n=n, rows=1, heads=4, kv_heads=2, length=7,
                     src_addr=64, aux_addr=64, dst_addr=0, imm1=vstride)
    assert pv_aligned(args, wb) == (n % wb == 0)
    count = 4 * 7
    src[64:64 + 4 * count] = rng.integers(0, (1 << 15) + 1, count).astype("<i4").tobytes()
    put_records(aux, rng, 64, 7 * 2, n, vstride, (14, 24))
    got = check(AttentionContext(max_head_dim=128, word_bits=word_bits), args, src, aux, 3)
    assert got["writes"] == out_words(args, wb) == 4 * -(-4 * n // wb)


@pytest.mark.parametrize("word_bits", WORD_BITS)
@pytest.mark.parametrize("skew", [0, 3])
@pytest.mark.parametrize("func", [SfuFunc.ATT_QK, SfuFunc.ATT_PV])
def test_records_at_buffer_end(func, skew, word_bits):
    """The last record ending at the last byte of its buffer, the records before it
    aligned, or ``skew`` bytes apart (so at odd offsets): no read beyond the buffer."""
    rng, src, aux = random_buffers(9)
    n, heads, kv, length = 8, 2, 1, 3
    stride = _up8(n) + 8 + skew
    q_at = BUF_BYTES - heads * stride + skew
    k_at = BUF_BYTES - length * kv * stride + skew
    args = make_args(func, n=n, rows=1, heads=heads, kv_heads=kv, length=length,
                     src_addr=q_at if func == SfuFunc.ATT_QK else BUF_BYTES - 4 * heads * length,
                     aux_addr=k_at, imm0=stride, imm1=stride)
    if func == SfuFunc.ATT_QK:
        put_records(src, rng, q_at, heads, n, stride, (8, 24))
    else:
        probs = rng.integers(0, (1 << 15) + 1, heads * length).astype("<i4")
        src[BUF_BYTES - 4 * heads * length:] = probs.tobytes()
    put_records(aux, rng, k_at, length * kv, n, stride, (8, 24))
    check(KERNELS[func](word_bits=word_bits), args, src, aux, 9)


# -- refused arguments ------------------------------------------------------------------

MALFORMED = [
    pytest.param(SfuFunc.ATT_QK, dict(heads=1, kv_heads=2, length=4), id="qk-kv-above-heads"),
    pytest.param(SfuFunc.ATT_QK, dict(heads=2, kv_heads=0, length=4), id="qk-no-kv-heads"),
    pytest.param(SfuFunc.ATT_PV, dict(heads=2, kv_heads=1, length=0), id="pv-no-keys"),
    pytest.param(SfuFunc.SOFTMAX, dict(heads=2, kv_heads=1, length=0), id="softmax-no-keys"),
    pytest.param(SfuFunc.SOFTMAX, dict(heads=1, length=5, pos=6, imm0=2),
                 id="softmax-window-past-the-keys"),
]


@pytest.mark.parametrize("func,fields", MALFORMED)
def test_malformed(func, fields):
    """Refused like the ISA simulator: MALFORMED after one cycle, nothing written."""
    _, src, aux = random_buffers(1)
    args = make_args(func, n=8, rows=1, **fields)
    got = check(KERNELS[func](), args, src, aux, 1)
    assert got["code"] == ErrorCode.MALFORMED and got["cycles"] == 1 and got["writes"] == 0


def test_pv_head_dim_beyond_instance():
    _, src, aux = random_buffers(2)
    args = make_args(SfuFunc.ATT_PV, n=20, rows=1, heads=1, kv_heads=1, length=2, imm1=32)
    dst = bytearray(BUF_BYTES)
    got = run_kernel(AttentionContext(max_head_dim=16), args, bytes(src), bytes(aux), dst,
                     seed=2)
    assert got == dict(cycles=1, err=1, code=ErrorCode.UNSUPPORTED, writes=0, written=0)
    assert not any(dst)


def test_parameters_and_formulas():
    with pytest.raises(TypeError, match="multiple of 4, not 6"):
        AttentionContext(max_head_dim=6)
    assert set(KERNELS) == {SfuFunc.ATT_QK, SfuFunc.SOFTMAX, SfuFunc.ATT_PV}
    with pytest.raises(TypeError, match="power of two of at least 4 bytes, not 12"):
        AttentionScores(word_bits=96)
    args = make_args(SfuFunc.ATT_QK, n=64, rows=1, heads=8, kv_heads=2, length=64,
                     imm0=72, imm1=72)
    # One decode step of a 64-key, 8-head attention with head_dim 64 (formula only): a
    # record of 72 bytes is 18 words of 4 bytes, 5 of 16, 2 of 64, plus the funnel's word
    # where a stride of 72 leaves records off the word.
    assert attention.cycles(args, word_bytes=4) == 8 * 64 * (64 // 4 + 2) + 4
    assert attention.cycles(args, word_bytes=16) == 8 * 64 * 6 + 4
    assert attention.cycles(args, word_bytes=64) == 8 * 64 * 3 + 4
    # Records on word strides (the compiler's record_bytes) need no funnel word.
    assert attention.cycles(dict(args, imm0=80, imm1=80), word_bytes=16) == 8 * 64 * 5 + 4
    assert attention.cycles(dict(args, imm0=128, imm1=128), word_bytes=64) == 8 * 64 * 2 + 4
    assert attention.cycles(dict(args, imm0=128, imm1=128, aux_addr=8), word_bytes=64) == \
        8 * 64 * 3 + 4
    pv = dict(args, func=SfuFunc.ATT_PV)
    # Per key: the scale pair (3 words of 4 bytes, 2 of more), the values and a funnel
    # word; per (row, head) the output pass, a word of outputs a cycle (64 int32: 64
    # words of 4 bytes, 4 of 64, one more, the funnel's, where they are off the word).
    assert attention.cycles(pv, word_bytes=4) == 8 * (64 * (3 + 16 + 1) + 64) + 2
    assert attention.cycles(pv, word_bytes=64) == 8 * (64 * (2 + 1 + 1) + 4) + 2
    assert attention.cycles(dict(pv, dst_addr=4), word_bytes=64) == \
        8 * (64 * (2 + 1 + 1) + 5) + 2
    # Value records and scale pairs on words: the pair's word and the value words, as
    # many as an ATT_QK key record's, and a cycle to finish the last key's accumulation.
    assert attention.cycles(dict(pv, imm1=128), word_bytes=64) == \
        8 * (64 * (1 + 1) + 1 + 4) + 2
    assert attention.cycles(dict(pv, imm1=128, aux_addr=8), word_bytes=64) == \
        8 * (64 * (2 + 1 + 1) + 4) + 2
    with pytest.raises(ValueError, match="not COPY"):
        attention.cycles(dict(args, func=SfuFunc.COPY), word_bytes=4)


# -- the three kernels chained, as the compiler schedules one attention ------------------

def _attention_chain(rows, heads, kv, length, n, pos, seed, run_step):
    """QK -> SOFTMAX -> PV through buffers, each step by ``run_step(func, args, src,
    aux)``, with scales of realistic magnitude (scores of a few units in Q16)."""
    rng, qbuf, kbuf = random_buffers(seed)
    vbuf = bytearray(rng.integers(0, 256, BUF_BYTES, np.uint8))
    rec = _up8(n) + 8
    extra = (n // 8).bit_length() - 1 if n >= 8 else 0    # dot products grow with n
    put_records(qbuf, rng, 0, rows * heads, n, rec, (20 + extra, 24 + extra))
    put_records(kbuf, rng, 0, length * kv, n, rec, (20, 24))
    put_records(vbuf, rng, 0, length * kv, n, rec, (20, 24))
    common = dict(rows=rows, heads=heads, kv_heads=kv, length=length, pos=pos)
    scores = run_step(make_args(SfuFunc.ATT_QK, n=n, imm0=rec, imm1=rec, **common),
                      qbuf, kbuf)
    probs = run_step(make_args(SfuFunc.SOFTMAX, n=n, **common), scores, kbuf)
    return scores, probs, run_step(make_args(SfuFunc.ATT_PV, n=n, imm1=rec, **common),
                                   probs, vbuf)


@pytest.mark.parametrize("rows,heads,kv,length,n,pos,seed,word_bits", [
    pytest.param(2, 4, 2, 5, 8, 3, 21, 32, id="gqa-prefill"),
    pytest.param(2, 4, 2, 5, 13, 3, 23, 128, id="gqa-prefill-odd-hd-128"),
    pytest.param(8, 4, 2, 17, 64, 9, 22, 32, id="gqa-prefill-hd64", marks=pytest.mark.slow),
    pytest.param(8, 4, 2, 17, 64, 9, 22, 512, id="gqa-prefill-hd64-512",
                 marks=pytest.mark.slow),
])
def test_attention_chain(rows, heads, kv, length, n, pos, seed, word_bits):
    """Scores, probabilities and context of one attention equal the ISA simulator's."""
    kernels = {SfuFunc.ATT_QK: AttentionScores(word_bits=word_bits),
               SfuFunc.SOFTMAX: Softmax(word_bits=word_bits),
               SfuFunc.ATT_PV: AttentionContext(max_head_dim=64, word_bits=word_bits)}
    zero = bytearray(BUF_BYTES)

    def hardware(args, src, aux):
        dst = bytearray(zero)
        got = run_kernel(kernels[args["func"]], args, bytes(src), bytes(aux), dst, seed=seed)
        assert got["err"] == 0 and got["cycles"] == kernels[args["func"]].cycles(args)
        return dst

    def reference(args, src, aux):
        out, code = run_reference(args, src, aux, zero)
        assert code == ErrorCode.NONE
        return out

    want = _attention_chain(rows, heads, kv, length, n, pos, seed, reference)
    got = _attention_chain(rows, heads, kv, length, n, pos, seed, hardware)
    count = rows * heads * length
    probs = np.frombuffer(want[1], "<i4", count).reshape(rows, heads, length)
    spread = ((probs > 0) & (probs < 1 << 15)).mean()
    assert spread > 0.5, f"degenerate softmax input: {spread:.2f} of probabilities in (0, 1)"
    for name, w, g in zip(("scores", "probabilities", "context"), want, got):
        assert bytes(g) == bytes(w), f"seed {seed}: {name} differ from the ISA simulator"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 112))
def test_random_shapes(seed):
    """Random shapes, strides, offsets, scales and port widths for each kernel (fuzz, slow)."""
    r = random.Random(seed)
    word_bits = r.choice(WORD_BITS)
    kv = r.choice([1, 2])
    heads, rows, length, n = kv * r.choice([1, 2, 3]), r.randint(1, 3), r.randint(1, 9), \
        r.randint(1, 20)
    pos = r.randint(0, 12)
    rng, src, aux = random_buffers(seed)
    stride = _up8(n) + 8 + r.randint(0, 5)
    base = dict(n=n, rows=rows, heads=heads, kv_heads=kv, length=length, pos=pos,
                src_addr=r.randint(0, 40), aux_addr=r.randint(0, 40),
                dst_addr=4 * r.randint(0, 10), imm0=stride, imm1=stride)
    lo = r.randint(-40, 30)
    put_records(src, rng, base["src_addr"], rows * heads, n, stride, (lo, lo + 40))
    put_records(aux, rng, base["aux_addr"], length * kv, n, stride, (lo, lo + 40))
    check(AttentionScores(word_bits=word_bits), dict(base, func=SfuFunc.ATT_QK), src, aux, seed)
    rng, src, aux = random_buffers(seed + 1)
    base["src_addr"] &= ~3
    count = rows * heads * length
    mag = 1 << r.randint(8, 31)
    scores = rng.integers(-mag, mag, count, dtype=np.int64).clip(-(1 << 31), (1 << 31) - 1)
    src[base["src_addr"]:base["src_addr"] + 4 * count] = scores.astype("<i4").tobytes()
    check(Softmax(word_bits=word_bits), dict(base, func=SfuFunc.SOFTMAX), src, aux, seed)
    probs = rng.integers(0, (1 << 15) + 1, count)
    src[base["src_addr"]:base["src_addr"] + 4 * count] = probs.astype("<i4").tobytes()
    put_records(aux, rng, base["aux_addr"], length * kv, n, stride, (lo + 20, lo + 50))
    check(AttentionContext(max_head_dim=20, word_bits=word_bits), dict(base, func=SfuFunc.ATT_PV),
          src, aux, seed)


# -- a banked KV buffer (hdl/sfu/banked_attention.py) --------------------------------------

def put_banked_records(aux: bytearray, rng: np.random.Generator, kv_map: KvBanks,
                       aux_addr: int, keys: int, kv: int, n: int, stride: int,
                       se_range: tuple[int, int]) -> None:
    """Random records of ``keys`` keys and ``kv`` KV heads where the bank map puts them."""
    for a in kv_map.records(aux_addr, 0, keys, kv, stride).tolist():
        put_records(aux, rng, a, 1, n, stride, se_range)


BANKED_CASES = [
    # banks, word bits, rows, heads, kv_heads, length, n, dst offset (int32)
    pytest.param(2, 64, 1, 2, 1, 5, 8, 1, id="B2-w64-mqa-L5"),
    pytest.param(4, 128, 1, 4, 2, 9, 16, 3, id="B4-w128-gqa-L9"),
    pytest.param(4, 128, 2, 2, 2, 8, 20, 0, id="B4-w128-prefill-L8-n20"),
    pytest.param(8, 64, 1, 2, 1, 13, 40, 5, id="B8-w64-L13"),
    pytest.param(2, 512, 1, 2, 2, 3, 120, 7, id="B2-w512-L3"),
    # ATT_PV's group period set by its 3 probability words (1 value word).
    pytest.param(8, 128, 1, 4, 1, 11, 16, 2, id="B8-w128-L11"),
]


@pytest.mark.parametrize("banks,word_bits,rows,heads,kv,length,n,doff", BANKED_CASES)
def test_banked_att_qk(banks, word_bits, rows, heads, kv, length, n, doff):
    seed = 23
    rng, src, aux = random_buffers(seed)
    wb = word_bits // 8
    config = banked_config(banks, word_bits)
    kv_map = KvBanks.of(config)
    stride = -(-(_up8(n) + 8) // wb) * wb
    args = make_args(SfuFunc.ATT_QK, n=n, rows=rows, heads=heads, kv_heads=kv, length=length,
                     src_addr=2 * wb, aux_addr=wb, dst_addr=doff * 4, imm0=stride,
                     imm1=stride)
    put_records(src, rng, args["src_addr"], rows * heads, n, stride, (8, 24))
    put_banked_records(aux, rng, kv_map, args["aux_addr"], length, kv, n, stride, (8, 24))
    dut = BankedAttentionScores(word_bits=word_bits, banks=banks)
    check(dut, args, src, aux, seed, config=config)


@pytest.mark.parametrize("se_range", [(8, 24), (-40, -20)], ids=["mid", "saturating"])
@pytest.mark.parametrize("banks,word_bits,rows,heads,kv,length,n,poff", BANKED_CASES)
def test_banked_att_pv(banks, word_bits, rows, heads, kv, length, n, poff, se_range):
    seed = 29
    rng, src, aux = random_buffers(seed)
    wb = word_bits // 8
    config = banked_config(banks, word_bits)
    stride = -(-(_up8(n) + 8) // wb) * wb
    args = make_args(SfuFunc.ATT_PV, n=n, rows=rows, heads=heads, kv_heads=kv, length=length,
                     src_addr=poff * 4, aux_addr=wb, dst_addr=(poff + 1) * 4, imm1=stride)
    count = rows * heads * length
    probs = rng.integers(0, (1 << 15) + 1, count)
    probs[: min(count, 3)] = [1 << 15, 0, 1 << 15][: min(count, 3)]
    src[args["src_addr"]:args["src_addr"] + 4 * count] = probs.astype("<i4").tobytes()
    put_banked_records(aux, rng, KvBanks.of(config), args["aux_addr"], length, kv, n, stride,
                       se_range)
    dut = BankedAttentionContext(max_head_dim=128, word_bits=word_bits, banks=banks)
    got = check(dut, args, src, aux, seed, config=config)
    assert got["writes"] == out_words(args, wb)


@pytest.mark.parametrize("dst_addr", [0, 12], ids=["on-words", "off-words"])
def test_banked_att_pv_decode_shape(dst_addr):
    """The u280 decode head shape (head_dim 128 on 512-bit words): the output pass writes
    a word of 16 outputs a cycle, 8 words a head on words, 9 off them (the funnel's)."""
    seed, banks, word_bits, n, length = 31, 4, 512, 128, 6
    rng, src, aux = random_buffers(seed)
    config = banked_config(banks, word_bits)
    stride = -(-(_up8(n) + 8) // 64) * 64
    args = make_args(SfuFunc.ATT_PV, n=n, rows=1, heads=2, kv_heads=1, length=length,
                     src_addr=64, aux_addr=0, dst_addr=dst_addr, imm1=stride)
    probs = rng.integers(0, (1 << 15) + 1, 2 * length)
    src[64:64 + 8 * length] = probs.astype("<i4").tobytes()
    put_banked_records(aux, rng, KvBanks.of(config), 0, length, 1, n, stride, (8, 24))
    dut = BankedAttentionContext(max_head_dim=128, word_bits=word_bits, banks=banks)
    got = check(dut, args, src, aux, seed, config=config)
    assert got["writes"] == out_words(args, 64) == (16 if dst_addr == 0 else 18)
    # Per head: 2 key groups of 3 cycles (2 probability words, 16 bytes at any int32
    # offset, under which the previous group's 2 value words and the group's scale pairs
    # are read), the last group's 2 value words, then the output pass.
    assert got["cycles"] == 2 * (2 * 3 + 2 + (8 if dst_addr == 0 else 9)) + 2


@pytest.mark.parametrize("func,kernel", [(SfuFunc.ATT_QK, BankedAttentionScores),
                                         (SfuFunc.ATT_PV, BankedAttentionContext)])
def test_banked_misaligned_refused(func, kernel):
    """Records off the buffer's words are MALFORMED on a banked KV buffer, in the kernel
    and the ISA simulator alike."""
    rng, src, aux = random_buffers(3)
    args = make_args(func, n=8, rows=1, heads=2, kv_heads=1, length=3, src_addr=0,
                     aux_addr=4, imm0=16, imm1=16)
    got = check(kernel(word_bits=64, banks=2), args, src, aux, 3,
                config=banked_config(2, 64))
    assert got["code"] == ErrorCode.MALFORMED


@pytest.mark.parametrize("func", [SfuFunc.ATT_QK, SfuFunc.ATT_PV])
def test_banked_reference_refusals(func):
    """On a banked KV buffer the ISA simulator refuses records outside KV (MALFORMED) and
    records that reach past their bank (BUFFER_RANGE), as the SFU unit does."""
    rng, src, aux = random_buffers(4)
    config = banked_config(2, 64)
    bank = BUF_BYTES // 2
    args = make_args(func, n=8, rows=1, heads=2, kv_heads=1, length=5, src_addr=0,
                     aux_addr=bank - 16, imm0=16, imm1=16)
    assert run_reference(args, src, aux, bytes(BUF_BYTES), config)[1] == \
        ErrorCode.BUFFER_RANGE                     # 3 groups of 16 bytes from bank - 16
    isa = IsaSim(config, bytearray(64))
    isa.regs[LEN_REG] = 5
    fields = dict(func=func, n=8, rows=1, rows_reg=0, heads=2, kv_heads=1, pos_reg=0,
                  len_reg=LEN_REG, src=Buffer.ACT, aux=Buffer.OUT, dst=Buffer.OUT,
                  src_addr=0, aux_addr=0, dst_addr=0, imm0=16, imm1=16)
    with pytest.raises(ProgramError) as e:
        isa._sfu_func(0, SimpleNamespace(fields=fields))
    assert e.value.code == ErrorCode.MALFORMED
