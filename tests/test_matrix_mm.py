"""amaranth.sim tests of the MATRIX unit alone: MV/MM against the ISA simulator, bit-exactly.

A small test top backs :class:`hdl.core.matrix.MatrixUnit` with Amaranth memories for
WGT, ACT, AUX and OUT. Each case writes the same random buffer contents into the memories
and into an :class:`sim.isa_sim.IsaSim`, queues encoded ``MV``/``MM`` entries (with ``rv``
as the dispatcher resolves it), and compares the whole OUT buffer and the error report
with the simulator's ``_matrix``. The cycles from each queue handshake to the release are
checked against the formula of the ``MatrixUnit`` docstring.
"""

import gc
import random
import warnings

import numpy as np
import pytest
import torch
from amaranth.hdl import Module
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from airfoil import isa
from airfoil.config import load_config
from airfoil.errors import ConfigError, ProgramError
from airfoil.formats import fp16_fixed, pack_tile, tile_layout
from airfoil.isa import ErrorCode, OutFormat, WeightFormat
from hdl.core.buffers import BufferGeometry
from hdl.core.matrix import MatrixUnit, acc_depth
from hdl.dsp_chain.dense import DenseChains
from sim.isa_sim import IsaSim

CONFIG = load_config("test")


@pytest.fixture(scope="module")
def wide_config(tmp_path_factory):
    """The test config with 32 lanes on a 256-bit word: one operand step per group of 32,
    so that the scale reader or the serializer, not the operands, sets the pace."""
    with open("fpga/boards/test.yaml") as fh:
        src = fh.read()
    for a, b in (("name: test", "name: test_wide"), ("lanes: 8", "lanes: 32"),
                 ("word_bits: 128", "word_bits: 256"), ("dsp_budget: 64", "dsp_budget: 256")):
        assert a in src, a
        src = src.replace(a, b)
    path = tmp_path_factory.mktemp("cfg") / "wide.yaml"
    path.write_text(src)
    return load_config(str(path))


def unit(cfg, acc_memory="amaranth"):
    return MatrixUnit(geometry=BufferGeometry.of(cfg), chains=cfg.chains, lanes=cfg.lanes,
                      weight_formats=cfg.weight_formats, group_sizes=cfg.group_sizes,
                      acc_memory=acc_memory, pe=cfg.pe, lut_group=cfg.lut_group)


class _Top(wiring.Component):
    """The unit with Amaranth memories on its buffer ports (no ports of its own)."""

    def __init__(self, cfg):
        super().__init__({})
        self.geo = geo = BufferGeometry.of(cfg)
        self.dut = unit(cfg)
        self.wgt = memory.Memory(shape=geo.wgt_bits, depth=geo.wgt_depth, init=[])
        self.act = memory.Memory(shape=geo.word_bits, depth=geo.act_depth, init=[])
        self.aux = memory.Memory(shape=geo.word_bits, depth=geo.aux_depth, init=[])
        self.out = memory.Memory(shape=geo.word_bits, depth=geo.out_depth, init=[])

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        for name in ("wgt", "act", "aux", "out"):
            m.submodules[name] = getattr(self, name)
        wiring.connect(m, dut.wgt_rd, self.wgt.read_port(transparent_for=()))
        wiring.connect(m, dut.sb_rd, self.wgt.read_port(transparent_for=()))
        wiring.connect(m, dut.act_rd, self.act.read_port(transparent_for=()))
        wiring.connect(m, dut.aux_rd, self.aux.read_port(transparent_for=()))
        wiring.connect(m, dut.out_wr, self.out.write_port(granularity=8))
        return m


def _words(raw: bytes, width_bytes: int) -> list[int]:
    return [int.from_bytes(raw[i:i + width_bytes], "little")
            for i in range(0, len(raw), width_bytes)]


def run_rtl(cfg, buffers: dict, entries: list[tuple[int, int]], max_cycles=20000) -> dict:
    """Run ``entries`` ``(instruction bits, rv0)`` on the unit with ``buffers`` loaded.

    Return ``{"out": bytes, "cycles": [handshake-to-release per instruction],
    "err": (code, pc) or None}``.
    """
    top = _Top(cfg)
    dut, geo = top.dut, top.geo
    res = {"cycles": [], "err": None}

    async def bench(ctx):
        for name, width in (("wgt", geo.wgt_row_bytes), ("act", geo.word_bytes),
                            ("aux", geo.word_bytes), ("out", geo.word_bytes)):
            mem = getattr(top, name)
            for i, w in enumerate(_words(buffers[name], width)):
                if w:
                    ctx.set(mem.data[i], w)
        ctx.set(dut.rel.ready, 1)
        cycle = 0
        for index, (bits, rv0) in enumerate(entries):
            ctx.set(dut.q.payload.instr.as_value(), bits)
            ctx.set(dut.q.payload.index, index)
            ctx.set(dut.q.payload.rv.as_value(), rv0)     # rv[0]; rv[1], rv[2] are 0
            ctx.set(dut.q.valid, 1)
            while not ctx.get(dut.q.ready):
                await ctx.tick()
                cycle += 1
                assert cycle < max_cycles, "unit never took the instruction"
            t0 = cycle
            await ctx.tick()
            cycle += 1
            ctx.set(dut.q.valid, 0)
            while not ctx.get(dut.rel.valid):
                if ctx.get(dut.err):
                    res["err"] = (ErrorCode(ctx.get(dut.err_code)), ctx.get(dut.err_pc))
                    break
                await ctx.tick()
                cycle += 1
                assert cycle < max_cycles, "unit never released the instruction"
            if res["err"]:
                break
            assert ctx.get(dut.rel.payload) == isa.decode(bits).release
            res["cycles"].append(cycle - t0)
            await ctx.tick()
            cycle += 1
        for _ in range(4):          # a late error after the release
            await ctx.tick()
        if res["err"] is None and ctx.get(dut.err):
            res["err"] = (ErrorCode(ctx.get(dut.err_code)), ctx.get(dut.err_pc))
        out = bytearray()
        for i in range(geo.out_depth):
            out += ctx.get(top.out.data[i]).to_bytes(geo.word_bytes, "little")
        res["out"] = bytes(out)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return res


def run_isa(cfg, buffers: dict, entries, regs: dict):
    """The reference: ``IsaSim._matrix`` on the same buffers; ``(out, error or None)``."""
    s = IsaSim(cfg, bytearray(64))
    for name, buf in (("wgt", isa.Buffer.WGT), ("act", isa.Buffer.ACT),
                      ("aux", isa.Buffer.AUX), ("out", isa.Buffer.OUT)):
        s.buffers[buf][:] = buffers[name]
    for r, v in regs.items():
        s.regs[r] = v
    for i, (bits, _) in enumerate(entries):
        try:
            s._matrix(i, isa.decode(bits))
        except ProgramError as e:
            return bytes(s.buffers[isa.Buffer.OUT]), (e.code, e.index)
    return bytes(s.buffers[isa.Buffer.OUT]), None


class Case:
    """Random buffers, weight tiles and scale pairs placed in them, and queue entries."""

    def __init__(self, seed, cfg=CONFIG):
        self.cfg = cfg
        geo = BufferGeometry.of(cfg)
        self.rng = r = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.buffers = {
            "wgt": bytearray(geo.wgt_bytes),
            "act": bytearray(r.randbytes(geo.act_bytes)),
            "aux": bytearray(r.randbytes(geo.aux_bytes)),
            "out": bytearray(r.randbytes(geo.out_bytes)),
        }
        self.regs = {}
        self.entries = []

    def tile(self, addr, *, rows, k, group, wfmt, bias):
        """Place a random tile at WGT ``addr``; return the smallest exponent of its scales
        (a k0 for which every shift is in range)."""
        bits = 4 if wfmt == WeightFormat.INT4 else 8
        q = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (rows, k), generator=self.gen)
        scales = (torch.rand(rows, k // group, generator=self.gen) * 0.03 + 0.002)
        scales = scales.to(torch.float16)
        cfg = self.cfg
        lay = tile_layout(rows=rows, k=k, group=group, wfmt=wfmt, chains=cfg.chains,
                          lanes=cfg.lanes, bias=bias, align=cfg.word_bytes)
        b = torch.randint(-(1 << 20), 1 << 20, (rows,), generator=self.gen) if bias else None
        raw = pack_tile(lay, q, scales, b)
        self.buffers["wgt"][addr:addr + len(raw)] = raw
        _, kexp = fp16_fixed(scales)
        return int(kexp.min())

    def pairs(self, addr, k0, m, special=False):
        """Scale pairs (sm, se) of ``m`` vectors at AUX ``addr``; ``special`` puts every
        second and third vector's shift below 0 and above REQ_S_MAX."""
        out = []
        for j in range(m):
            sm = self.rng.randrange(1 << 15, 1 << 16)
            s = self.rng.randrange(14, 40)
            if special and j % 3 == 1:
                s = self.rng.choice([-5, -1])          # S < 0: M saturates, S = 0
            elif special and j % 3 == 2:
                s = self.rng.choice([128, 131, 150])   # S > REQ_S_MAX: M rounded down
            out += [sm, s + k0 + 16]                   # se = S + k0 + ACT_FRAC
        self.buffers["aux"][addr:addr + 8 * m] = np.array(out, dtype="<i4").tobytes()

    def add(self, opcode, *, rv0=None, release=0, **fields):
        bits = isa.encode(opcode, release=release, **fields)
        reg = fields.get("m_reg", 0)
        if reg:
            self.regs[reg] = rv0
        self.entries.append((bits, rv0 if reg else 0))

    def check(self, expect_error=None):
        """Run both; the same OUT buffer (all of it) and the same error, or none."""
        want_out, want_err = run_isa(self.cfg, self.buffers, self.entries, self.regs)
        got = run_rtl(self.cfg, self.buffers, self.entries)
        if expect_error is not None:
            assert want_err is not None and want_err[0] == expect_error, want_err
        assert got["err"] == want_err, (got["err"], want_err)
        if want_err is None:
            assert got["out"] == want_out
            assert got["out"] != bytes(self.buffers["out"]), "nothing was written"
        return got


def mfields(*, rows, k, group, wfmt, m=1, **kw):
    base = dict(wfmt=wfmt, group=group, rows=rows, k=k, m=m, wbuf_addr=0, abuf_addr=0,
                obuf_addr=0, k0=0, req_m=40000, req_s=20, out_fmt=OutFormat.INT8, acc_init=1,
                final=1, bias=0)
    base.update(kw)
    return base


def matrix_cycles(*, rows, k, group, m, wfmt, final=True, use_init=False, cfg=CONFIG):
    """The unit's count (:meth:`MatrixUnit.cycles`, :mod:`hdl.core.matrix_timing`) that
    the measured cycles are compared with."""
    return MatrixUnit.cycles(chains=cfg.chains, lanes=cfg.lanes, rows=rows, k=k, group=group,
                             wfmt=wfmt, m=m, final=final, use_init=use_init, pe=cfg.pe)


def test_matrix_cycles_by_hand():
    """The count on the test config (4 chains x 8 lanes, DenseChains.LATENCY 6): 13 rows
    are 4 batches of 64 / 8 = 8 INT4 steps (16 INT8 cycles, one more to hold the last);
    fixed: the serializer's 4 results, then 2 + 6 + 2 + 1 + 4 + 2 cycles of pipelines
    and release, or 2 + 6 + 2 + 1 + 1 + 2 for a K-chunk left in the accumulators."""
    assert DenseChains.LATENCY == 6
    i4 = WeightFormat.INT4
    assert matrix_cycles(rows=13, k=64, group=32, m=1, wfmt=i4) == 4 + 17 + 4 * 8
    assert matrix_cycles(rows=13, k=64, group=32, m=1, wfmt=WeightFormat.INT8) == \
        4 + 17 + 1 + 4 * 16
    assert matrix_cycles(rows=13, k=64, group=32, m=3, wfmt=i4, final=False) == \
        14 + 3 * 4 * 8
    # 1 step per batch: the serializer's 4 cycles set the pace.
    assert matrix_cycles(rows=8, k=8, group=32, m=1, wfmt=i4) == 4 + 17 + 2 * 4


# -- bit-exact cases ------------------------------------------------------------------------

@pytest.mark.parametrize("wfmt,group,out_fmt", [
    (WeightFormat.INT4, 32, OutFormat.INT8),
    (WeightFormat.INT8, 64, OutFormat.INT16),
])
def test_mv_one_vector(wfmt, group, out_fmt):
    c = Case(1 + group)
    rows, k = 13, 2 * group
    k0 = c.tile(0, rows=rows, k=k, group=group, wfmt=wfmt, bias=True)
    c.add(isa.Opcode.MV, release=0b0100, **mfields(rows=rows, k=k, group=group, wfmt=wfmt,
                                                  k0=k0, out_fmt=out_fmt, abuf_addr=64,
                                                  obuf_addr=32, bias=1))
    got = c.check()
    assert got["cycles"] == [matrix_cycles(rows=rows, k=k, group=group, m=1, wfmt=wfmt,
                                           use_init=True)]


@pytest.mark.parametrize("m,wfmt,tok,strides,out_fmt", [
    (2, WeightFormat.INT8, True, False, OutFormat.INT32),
    (5, WeightFormat.INT4, True, True, OutFormat.INT16),
    (5, WeightFormat.INT4, False, False, OutFormat.INT8),
    (2, WeightFormat.INT4, False, True, OutFormat.INT32),
])
def test_mm_vectors(m, wfmt, tok, strides, out_fmt):
    """m vectors through m_reg; tok_scale with shifts in and out of 0..REQ_S_MAX; vectors
    contiguous (astride = ostride = 0) or strided; 7 rows (odd, a partial batch)."""
    c = Case(10 * m + int(tok) + 2 * int(strides))
    rows, k, group = 7, 64, 32
    k0 = c.tile(256, rows=rows, k=k, group=group, wfmt=wfmt, bias=not tok)
    if tok:
        c.pairs(512, k0, m, special=True)
    kw = dict(astride=6, ostride=3) if strides else {}
    c.add(isa.Opcode.MM, rv0=m, **mfields(
        rows=rows, k=k, group=group, wfmt=wfmt, m=1, m_reg=3, k0=k0, wbuf_addr=256,
        abuf_addr=128, obuf_addr=16, out_fmt=out_fmt, bias=int(not tok),
        tok_scale=int(tok), sbuf_addr=512, **kw))
    got = c.check()
    assert got["cycles"] == [matrix_cycles(rows=rows, k=k, group=group, m=m, wfmt=wfmt,
                                           use_init=not tok)]


@pytest.mark.parametrize("wfmt", [WeightFormat.INT4, WeightFormat.INT8])
def test_mm_ksplit_tok_scale(wfmt):
    """A tile split along K in two chunks for 3 vectors, as compiler/lower_llm.py emits
    (INT32 results, per-token scales, astride over the whole K, ostride)."""
    c = Case(77 + wfmt.value)
    m, rows, k, group = 3, 5, 64, 32
    k0a = c.tile(0, rows=rows, k=k, group=group, wfmt=wfmt, bias=False)
    k0b = c.tile(2048, rows=rows, k=k, group=group, wfmt=wfmt, bias=False)
    k0 = min(k0a, k0b)
    c.pairs(64, k0, m)
    common = dict(rows=rows, k=k, group=group, wfmt=wfmt, m=m, k0=k0,
                  out_fmt=OutFormat.INT32, tok_scale=1, sbuf_addr=64,
                  astride=2 * k // CONFIG.word_bytes, ostride=2, obuf_addr=0)
    c.add(isa.Opcode.MM, **mfields(**common, wbuf_addr=0, abuf_addr=256, acc_init=1,
                                    final=0))
    c.add(isa.Opcode.MM, **mfields(**common, wbuf_addr=2048, abuf_addr=256 + k, acc_init=0,
                                    final=1))
    got = c.check()
    assert got["cycles"] == [
        matrix_cycles(rows=rows, k=k, group=group, m=m, wfmt=wfmt, final=False),
        matrix_cycles(rows=rows, k=k, group=group, m=m, wfmt=wfmt, use_init=True)]


#: When the scale reader or the serializer sets the pace, the chains' fill overlaps the wait:
#: the formula is an upper bound by up to the chains' latency less one cycle.
BOUND_SLACK = DenseChains.LATENCY - 1


@pytest.mark.parametrize("wfmt,rows,k,group,bias,m,final", [
    (WeightFormat.INT4, 13, 64, 32, True, 1, 1),     # serializer-bound
    (WeightFormat.INT4, 13, 128, 32, False, 3, 1),   # (with tok_scale)
    (WeightFormat.INT4, 13, 64, 32, True, 2, 0),     # scale-reader-bound
    (WeightFormat.INT8, 8, 256, 64, True, 2, 1),     # operand-bound
])
def test_wide_lanes_cycles(wide_config, wfmt, rows, k, group, bias, m, final):
    """32 lanes, 32-byte words: bit-exact, and the cycle formula exact or at most
    ``BOUND_SLACK`` cycles above the count."""
    c = Case(3, wide_config)
    k0 = c.tile(0, rows=rows, k=k, group=group, wfmt=wfmt, bias=bias)
    tok = final and not bias
    if tok:
        c.pairs(72, k0, m, special=True)       # pairs in every 8-byte lane of a word
    c.add(isa.Opcode.MM, **mfields(rows=rows, k=k, group=group, wfmt=wfmt, m=m, k0=k0,
                                    bias=int(bias), final=final, tok_scale=int(tok),
                                    sbuf_addr=72))
    if final:
        got = c.check()
    else:
        got = run_rtl(wide_config, c.buffers, c.entries)
        assert got["err"] is None
    want = matrix_cycles(rows=rows, k=k, group=group, m=m, wfmt=wfmt, final=bool(final),
                         use_init=bias, cfg=wide_config)
    assert want - BOUND_SLACK <= got["cycles"][0] <= want, (got["cycles"], want)


# -- PE kinds ------------------------------------------------------------------------------

def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _pe_config(tmp_path, kind):
    src = open("fpga/boards/test.yaml").read()
    edits = [("name: test", f"name: test_{kind}"), ("pe: dsp", f"pe: {kind}")]
    if kind == "lut":
        edits.append(("weight_formats: [int4, int8]", "weight_formats: [int4]"))
    for a, b in edits:
        assert a in src, a
        src = src.replace(a, b)
    path = tmp_path / f"{kind}.yaml"
    path.write_text(src)
    return load_config(str(path))


@pytest.mark.parametrize("kind", ["bitserial", "lut"])
def test_pe_kinds_bit_exact(tmp_path, kind):
    """The same MV and K-split MM on the bit-serial and LUT PE kinds: results equal the ISA
    simulator's; each step costs the kind's cycles, so they run slower than dsp."""
    cfg = _pe_config(tmp_path, kind)
    c = Case(91, cfg)
    rows, k, group = 13, 64, 32
    k0 = c.tile(0, rows=rows, k=k, group=group, wfmt=WeightFormat.INT4, bias=True)
    c.add(isa.Opcode.MV, **mfields(rows=rows, k=k, group=group, wfmt=WeightFormat.INT4, k0=k0,
                                   bias=1, out_fmt=OutFormat.INT16))
    got = c.check()
    assert got["cycles"][0] > matrix_cycles(rows=rows, k=k, group=group, m=1,
                                            wfmt=WeightFormat.INT4, use_init=True)


def test_lut_kind_refuses_int8(tmp_path):
    """INT8 is not a LUT format: the config cannot list it, the unit and the ISA simulator
    refuse an INT8 tile as UNSUPPORTED."""
    with pytest.raises(ConfigError, match="lut PE"):
        load_config(str(_write(tmp_path, open("fpga/boards/test.yaml").read()
                                .replace("pe: dsp", "pe: lut"))))
    cfg = _pe_config(tmp_path, "lut")
    c = Case(5, cfg)
    k0 = c.tile(0, rows=4, k=64, group=32, wfmt=WeightFormat.INT8, bias=False)
    c.add(isa.Opcode.MV, **mfields(rows=4, k=64, group=32, wfmt=WeightFormat.INT8, k0=k0))
    c.check(expect_error=ErrorCode.UNSUPPORTED)


# -- errors ----------------------------------------------------------------------------------

def _err_case(seed, opcode, rv0=None, **kw):
    c = Case(seed)
    rows, k, group = 5, 64, 32
    k0 = c.tile(0, rows=rows, k=k, group=group, wfmt=WeightFormat.INT4, bias=False)
    c.pairs(0, k0, 8)
    fields = mfields(rows=rows, k=k, group=group, wfmt=WeightFormat.INT4, k0=k0)
    fields.update(kw)
    c.add(opcode, rv0=rv0, **fields)
    return c


@pytest.mark.parametrize("name,opcode,rv0,kw,code", [
    ("mv_m2", isa.Opcode.MV, None, dict(m=2), ErrorCode.MALFORMED),
    ("mv_mreg", isa.Opcode.MV, 1, dict(m_reg=2), ErrorCode.MALFORMED),
    ("mm_m0", isa.Opcode.MM, 0, dict(m_reg=2), ErrorCode.MALFORMED),
    ("group", isa.Opcode.MM, None, dict(m=2, group=16), ErrorCode.UNSUPPORTED),
    ("k_group", isa.Opcode.MM, None, dict(m=2, k=48), ErrorCode.MALFORMED),
    ("stream", isa.Opcode.MM, None, dict(m=2, wfmt=WeightFormat.INT2), ErrorCode.UNSUPPORTED),
    ("act_range", isa.Opcode.MM, 70000, dict(m_reg=4, astride=4), ErrorCode.BUFFER_RANGE),
    ("out_range", isa.Opcode.MM, None, dict(m=20, ostride=4), ErrorCode.BUFFER_RANGE),
    ("aux_range", isa.Opcode.MM, None, dict(m=3, tok_scale=1, sbuf_addr=4088),
     ErrorCode.BUFFER_RANGE),
])
def test_errors_as_isa_sim(name, opcode, rv0, kw, code):
    _err_case(5, opcode, rv0, **kw).check(expect_error=code)


def test_ksplit_beyond_accumulators_unsupported():
    """K-split state of m x batches beyond acc_depth (the config's k_split_batches): the
    RTL and the ISA simulator refuse it alike."""
    m = 130                             # 130 vectors x 2 batches > 256 accumulator rows
    depth = acc_depth(BufferGeometry.of(CONFIG), CONFIG.chains, min(CONFIG.group_sizes))
    assert m * 2 > depth == CONFIG.k_split_batches
    c = _err_case(6, isa.Opcode.MM, rv0=m, m_reg=2, astride=1, final=0)
    assert run_isa(CONFIG, c.buffers, c.entries, c.regs)[1] == (ErrorCode.UNSUPPORTED, 0)
    got = run_rtl(CONFIG, c.buffers, c.entries)
    assert got["err"] == (ErrorCode.UNSUPPORTED, 0)


def test_scale_pair_out_of_range():
    """A scale mantissa outside 0..2**16-1 is SCALE_RANGE (linear_out_params needs 16 bits)."""
    c = _err_case(7, isa.Opcode.MM, m=2, tok_scale=1, sbuf_addr=0)
    c.buffers["aux"][8:12] = np.array([1 << 16], dtype="<i4").tobytes()
    got = run_rtl(CONFIG, c.buffers, c.entries)
    assert got["err"] == (ErrorCode.SCALE_RANGE, 0)


def test_bad_parameters():
    geo = BufferGeometry.of(CONFIG)
    cases = [(dict(lanes=0), TypeError, "Lane count must be a positive integer, not 0"),
             (dict(acc_memory="x"), ValueError, "acc_memory must be 'ram' or 'amaranth', not 'x'"),
             (dict(group_sizes=(12,)), ValueError, "group size that is a multiple of lanes")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # the half-built units are never elaborated
        for kw, exc, msg in cases:
            args = dict(geometry=geo, chains=4, lanes=8, weight_formats=("int4",),
                        group_sizes=(32,))
            args.update(kw)
            with pytest.raises(exc, match=msg):
                MatrixUnit(**args)
        gc.collect()


def test_requantizer_per_item():
    """Back-to-back inputs, each with its own (M, S), as per-token requantization needs."""
    from airfoil.formats import ACC_BITS, OUT_BITS, requantize
    from hdl.decode_unit.rescaler import Requantizer
    rng = random.Random(11)
    items = []
    for i in range(40):
        acc = rng.choice([rng.randrange(-1 << 24, 1 << 24),
                          rng.randrange(-(1 << (ACC_BITS - 1)), 1 << (ACC_BITS - 1))])
        mult = rng.choice([0, 1, rng.randrange(1 << 15, 1 << 16)])
        shift = rng.choice([0, 1, 16, 17, rng.randrange(2, 40), rng.randrange(40, 128)])
        items.append((acc, mult, shift, rng.choice(list(OutFormat)), i))
    dut = Requantizer(tag_bits=8, per_item=True)
    got = {}

    async def bench(ctx):
        for n, (acc, mult, shift, fmt, tag) in enumerate(items):
            ctx.set(dut.inp.valid, 1)
            ctx.set(dut.inp.payload.acc, acc)
            ctx.set(dut.inp.payload.mult, mult)
            ctx.set(dut.inp.payload.shift, shift)
            ctx.set(dut.inp.payload.tag, tag)
            # out_fmt is a per-instruction port: set it for the result leaving now
            if n >= dut.latency - 1:
                ctx.set(dut.out_fmt, items[n - dut.latency + 1][3])
            await ctx.tick()
            if ctx.get(dut.out.valid):
                got[ctx.get(dut.out.payload.tag)] = ctx.get(dut.out.payload.value)
        ctx.set(dut.inp.valid, 0)
        for n in range(len(items), len(items) + dut.latency):
            if n - dut.latency + 1 < len(items):
                ctx.set(dut.out_fmt, items[n - dut.latency + 1][3])
            await ctx.tick()
            if ctx.get(dut.out.valid):
                got[ctx.get(dut.out.payload.tag)] = ctx.get(dut.out.payload.value)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want = {tag: int(requantize(torch.tensor([acc]), mult, shift, OUT_BITS[fmt])[0])
            for acc, mult, shift, fmt, tag in items}
    assert got == want
