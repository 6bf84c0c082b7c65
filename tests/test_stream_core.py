"""Streamed, sparse and mixed-precision linear layers through the whole RTL core.

Config ``test_decode`` (the ``test`` engine with the decode unit): the compiler writes the
packed weight streams into ``weights.bin``; the core's LOAD unit sends them (``LD
WSTREAM``) to the MATRIX unit's decode unit, which runs ``MV STREAM`` on the sparse
chains beside the WGT-tile engine. The RTL output, under random stalls on every AXI
channel, equals the torch golden's and the ISA simulator's bit for bit, for every record
format, N:M pattern and block skip. A streamed layer with a bias starts its accumulators
in a WGT-tile MV (the bias tile) that the streamed MV continues, and a streamed MV may
requantize with a per-token scale pair from AUX.
"""

import numpy as np
import pytest
import torch

from airfoil.cli.backend_rtl import run_rtl
from airfoil.config import load_config
from airfoil.folder import load_folder
from compiler.linear import compile_linear
from sim.golden import run_golden
from sim.isa_sim import run_isa
from sim.tb_decode.stimulus import bitmod_layer

pytestmark = pytest.mark.rtl

CFG = load_config("test_decode")


def _layer(tmp_path, seed, n, k, **kw):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[torch.rand(n, k, generator=g) < 0.01] *= 8          # a few outliers (OVP)
    bias = torch.randn(n, generator=g) * 0.1 if kw.pop("bias", False) else None
    out = tmp_path / f"l{seed}"
    compile_linear(w, bias, CFG, out, seed=seed, **kw)
    return load_folder(out, CFG)


@pytest.mark.parametrize("seed,n,k,kw", [
    # mixed formats per record (INT2 / INT4 / INT8), odd rows
    (1, 21, 128, dict(wformat="mixed", mixed_formats="int2,int4,int8", group=32)),
    # 2:4 sparse INT4 in groups of 64, no bias
    (2, 12, 256, dict(wformat="int4", sparsity="2:4", group=64)),
    # OliVe outlier-victim pairs and INT3 layers, K-split free sizes
    (3, 9, 96, dict(wformat="ovp", group=32)),
    (4, 7, 64, dict(wformat="int3", stream=True, group=32)),
    # block skip: INT4 keeping 3/8 of the k-steps per record, INT2 at full density
    (6, 13, 192, dict(wformat="int4", sparsity="block", block_density=0.375, group=64)),
    (7, 5, 96, dict(wformat="int2", sparsity="block", group=32)),
])
def test_streamed_layer_bit_exact_in_rtl(tmp_path, seed, n, k, kw):
    folder = _layer(tmp_path, seed, n, k, **kw)
    want = run_golden(folder)
    isa, _ = run_isa(folder, CFG)
    assert torch.equal(isa, want)
    got, stats = run_rtl(folder.path, CFG, seed=seed, stalls=True)
    assert torch.equal(got, want), (got, want)
    assert stats["cycles"] > 0


#: INT6 and every FP4/FP3 variant (FP3 first: ties of the per-record choice go to it).
BITMOD_ALL = ["fp3_er_p", "fp3_er_n", "fp3_ea_p", "fp3_ea_n", "fp4_er_p", "fp4_er_n",
              "fp4_ea_p", "fp4_ea_n", "int6"]


@pytest.mark.parametrize("sparsity,seed", [("dense", 6), ("2:4", 8)])
def test_bitmod_formats_per_record_bit_exact_in_rtl(tmp_path, sparsity, seed):
    """Records on the grids of INT6 and every FP4/FP3 variant in one layer (odd rows):
    with no error allowed across widths (``mixed_max_error`` 0) the compiler stores
    each in its format, and RTL == ISA == golden under stalls."""
    n, k, group = 3 * CFG.chains + 1, 9 * 32, 32
    w, names = bitmod_layer(np.random.default_rng(seed), n, k, group=group, rows=CFG.chains,
                            formats=BITMOD_ALL, sparsity=sparsity)
    out = tmp_path / "b"
    m = compile_linear(torch.from_numpy(w), None, CFG, out, seed=seed, wformat="mixed",
                       mixed_formats=",".join(BITMOD_ALL), group=group, sparsity=sparsity,
                       mixed_max_error=0.0)
    assert set(m["model"]["linears"]["linear"]["formats"]) == set(names.reshape(-1)) == set(BITMOD_ALL)
    folder = load_folder(out, CFG)
    want = run_golden(folder)
    assert torch.equal(run_isa(folder, CFG)[0], want)
    got, _ = run_rtl(folder.path, CFG, seed=seed, stalls=True)
    assert torch.equal(got, want), (got, want)


def test_sparser_stream_takes_fewer_cycles(tmp_path):
    """Memory-bound on the core: 1:4 INT4 moves fewer bytes than dense and its MV takes
    fewer cycles, without stalls (exact counts)."""
    cyc = {}
    for sp in ("dense", "1:4"):
        folder = _layer(tmp_path, 11, 16, 512, wformat="int4", sparsity=sp, stream=True,
                        group=128)
        want = run_golden(folder)
        got, stats = run_rtl(folder.path, CFG, seed=0, stalls=False)
        assert torch.equal(got, want)
        cyc[sp] = stats["cycles"]
    assert cyc["1:4"] < 0.8 * cyc["dense"], cyc


def test_block_skip_takes_fewer_cycles_than_dense(tmp_path):
    """Half the k-steps of each record pruned: bit-exact under random stalls against the
    golden and the ISA simulator, and fewer RTL cycles than the dense layer of the same
    odd shape."""
    cyc = {}
    for sp, kw in (("dense", {}), ("block", dict(block_density=0.5))):
        folder = _layer(tmp_path, 12, 37, 384, wformat="int4", sparsity=sp, stream=True,
                        group=128, **kw)
        want = run_golden(folder)
        assert torch.equal(run_isa(folder, CFG)[0], want)
        got, stats = run_rtl(folder.path, CFG, seed=3, stalls=True)
        assert torch.equal(got, want)
        cyc[sp] = stats["cycles"]
    assert cyc["block"] < cyc["dense"], cyc


@pytest.mark.parametrize("seed,n,k,kw", [
    (5, 8, 64, dict(wformat="int4", stream=True, group=32)),
    # several batches of chains, odd rows, 2:4 records
    (9, 3 * CFG.chains + 5, 128, dict(wformat="int4", sparsity="2:4", group=64)),
])
def test_streamed_layer_with_bias_bit_exact_in_rtl(tmp_path, seed, n, k, kw):
    """A bias tile's MV (WGT-tile engine, ``final = 0``) starts each row block's
    accumulators; the streamed MV continues them (``acc_init = 0``)."""
    from airfoil.isa import Opcode, WeightFormat, decode

    folder = _layer(tmp_path, seed, n, k, bias=True, **kw)
    mvs = [decode(w) for w in folder.program.words]
    mvs = [i for i in mvs if i.opcode == Opcode.MV]
    assert any(i.wfmt == WeightFormat.STREAM and not i.acc_init for i in mvs)
    want = run_golden(folder)
    assert torch.equal(run_isa(folder, CFG)[0], want)
    got, _ = run_rtl(folder.path, CFG, seed=seed, stalls=True)
    assert torch.equal(got, want), (got, want)


def test_streamed_layer_with_token_scale_matches_isa(tmp_path):
    """``tok_scale = 1`` on a streamed MV: the RTL reads the scale pair from AUX and
    requantizes with it as the ISA simulator does; a pair whose ``sm`` does not fit 16
    bits stops the core with SCALE_RANGE at that MV."""
    from airfoil.cli.backend_rtl import channel_offsets, emit_core
    from airfoil.errors import ProgramError
    from airfoil.isa import Buffer, ErrorCode, Opcode, decode, encode
    from airfoil.program import Program
    from sim.isa_sim import IsaSim
    from sim.rtl import RtlCase, run_core

    folder = _layer(tmp_path, 13, 2 * CFG.chains + 3, 128, wformat="int4", stream=True,
                    group=64)
    words = list(folder.program.words)
    ins = [decode(w, i) for i, w in enumerate(words)]
    mv = next(i for i, d in enumerate(ins) if d.opcode == Opcode.MV)
    out = folder.manifest["output"]
    nbytes = folder.n * folder.out_bits // 8
    base = bytes(folder.image_with_input())
    pair_at = (len(base) + 63) // 64 * 64
    # The program: the pair's word loaded into AUX first, the MV requantizing with it.
    prog = list(words)
    f = dict(ins[mv].fields, tok_scale=1, sbuf_addr=8)
    prog[mv] = encode(Opcode.MV, ins[mv].wait, ins[mv].release, **f)
    prog.insert(0, encode(Opcode.LD, (), (), buf=Buffer.AUX, buf_addr=0, dram_addr=pair_at,
                          nbytes=16, count=1, dram_stride=16, channel=0))
    offsets = channel_offsets(folder.manifest, CFG)
    pairs = [(40_000, 3), (123, -20), (1 << 16, 0)]
    cases, wants = [], []
    for j, (sm, se) in enumerate(pairs):
        # The pair in the second half of a word (sbuf_addr = 8 selects it).
        image = base + bytes(pair_at - len(base)) + bytes(8) + \
            np.array([sm, se], dtype="<i4").tobytes()
        mem = bytearray(image)
        try:
            IsaSim(CFG, mem, offsets).run(prog)
            wants.append(bytes(mem[out["addr"]:out["addr"] + nbytes]))
        except ProgramError as e:     # the ISA simulator's verdict
            wants.append(e)
        cases.append(RtlCase(program=Program(prog, CFG.config_hash_bytes).to_bytes(),
                             image=image, seed=j, stall=0.2,
                             read_back={"out": (out["addr"], nbytes)},
                             max_cycles=100_000, channel_offsets=offsets))
    core = emit_core(CFG, "build")
    res = run_core(verilog=core["sources"], meta=core["meta"], config=CFG, cases=cases,
                   build_root="build/sim", work_dir=tmp_path / "run")
    for (sm, se), want, r in zip(pairs, wants, res):
        if isinstance(want, Exception):
            assert r["error"] and ErrorCode(r["err_code"]) == want.code == \
                ErrorCode.SCALE_RANGE and r["err_pc"] == want.index == mv + 1, (sm, r)
        else:
            assert r["done"] and not r["error"], (sm, ErrorCode(r["err_code"]).name)
            assert r["reads"]["out"] == want, (sm, se)
    assert any(r["reads"]["out"] != bytes(nbytes) for r in res[:2])


def test_stream_loads_falling_short_stop_the_core(tmp_path):
    """A program whose LD WSTREAM brings fewer words than its MV STREAM needs: the RTL
    stops with MALFORMED at that MV (no hang), as the ISA simulator reports it."""
    from airfoil.errors import AirfoilError, ProgramError
    from airfoil.isa import Buffer, ErrorCode, Opcode, decode, encode
    from airfoil.program import write_program

    folder = _layer(tmp_path, 8, 16, 256, wformat="int4", stream=True, group=128)
    words = list(folder.program.words)
    ins = [decode(w, i) for i, w in enumerate(words)]
    ld = max(i for i, d in enumerate(ins) if d.opcode == Opcode.LD and d.buf == Buffer.WSTREAM)
    short = dict(ins[ld].fields, nbytes=ins[ld].nbytes // 2)
    words[ld] = encode(Opcode.LD, ins[ld].wait, ins[ld].release, **short)
    folder.program.words = words
    write_program(folder.path / "program.afp", folder.program)
    with pytest.raises(ProgramError) as e:
        run_isa(load_folder(folder.path, CFG), CFG)
    mv = e.value.index
    assert e.value.code == ErrorCode.MALFORMED and "ran out" in str(e.value), e.value
    assert ins[mv].opcode == Opcode.MV and mv > ld
    with pytest.raises(AirfoilError, match=f"MALFORMED at instruction {mv} "):
        run_rtl(folder.path, CFG, seed=2, stalls=True)
