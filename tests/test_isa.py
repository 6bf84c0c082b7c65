import random

import pytest
from amaranth.hdl import Signal

from airfoil import isa
from airfoil.errors import ProgramError
from airfoil.isa import (INSTR_BITS, INSTR_LAYOUT, Buffer, Opcode, OutFormat, SysOp, Unit,
                         WeightFormat, decode, encode)
from airfoil.program import HEADER_SIZE, Program, read_program, write_program


def test_every_instruction_class_exists():
    assert {o.name for o in Opcode} == {"SYS", "LD", "ST", "MM", "MV", "SFU"}
    assert INSTR_LAYOUT.size == INSTR_BITS
    for name in ("opcode", "wait", "release"):
        assert name in isa.HEADER_LAYOUT.members


@pytest.mark.parametrize("seed", range(5))
def test_encode_decode_round_trip(seed):
    rng = random.Random(seed)
    for _ in range(50):
        wait, release = rng.randrange(16), rng.randrange(16)
        kind = rng.choice(["mem", "matrix", "sys"])
        if kind == "mem":
            op = rng.choice([Opcode.LD, Opcode.ST])
            f = dict(buf=rng.choice(list(Buffer)), buf_addr=rng.randrange(1 << 24),
                     dram_addr=rng.randrange(1 << 40), nbytes=rng.randrange(1 << 24),
                     count=rng.randrange(1 << 16), dram_stride=rng.randrange(1 << 40),
                     channel=rng.randrange(64))
        elif kind == "matrix":
            op = rng.choice([Opcode.MM, Opcode.MV])
            f = dict(wfmt=rng.choice(list(WeightFormat)), group=rng.randrange(512),
                     rows=rng.randrange(1 << 16), k=rng.randrange(1 << 20),
                     m=rng.randrange(1 << 16), k0=rng.randrange(-64, 64),
                     req_m=rng.randrange(1 << 16), req_s=rng.randrange(128),
                     out_fmt=rng.choice(list(OutFormat)), acc_init=rng.randrange(2),
                     final=rng.randrange(2), bias=rng.randrange(2),
                     wbuf_addr=rng.randrange(1 << 24), abuf_addr=rng.randrange(1 << 24),
                     obuf_addr=rng.randrange(1 << 24))
        else:
            op = Opcode.SYS
            f = dict(op=rng.choice(list(SysOp)), reg=rng.randrange(32),
                     value=rng.randrange(1 << 32))
        word = encode(op, wait=wait, release=release, **f)
        assert 0 <= word < 1 << INSTR_BITS
        ins = decode(word)
        assert ins.opcode == op and ins.wait == wait and ins.release == release
        for key, value in f.items():
            assert getattr(ins, key) == value, key


def test_token_masks_from_units():
    ins = decode(encode(Opcode.LD, wait=[Unit.MATRIX], release=[Unit.MATRIX, Unit.STORE]))
    assert ins.wait == 1 << Unit.MATRIX.value
    assert ins.release == (1 << Unit.MATRIX.value) | (1 << Unit.STORE.value)
    assert ins.unit == Unit.LOAD


def test_rtl_decoder_view_uses_the_same_layout():
    s = Signal(INSTR_LAYOUT)
    assert len(s.as_value()) == INSTR_BITS
    assert s.header.opcode.shape() is Opcode
    assert s.body.matrix.k0.shape().signed


@pytest.mark.parametrize("word, message", [
    (0, "unknown opcode 0"),
    (15, "unknown opcode 15"),
    (Opcode.MV.value | (15 << 16), "malformed field"),
])
def test_illegal_encodings(word, message):
    with pytest.raises(ProgramError, match=message):
        decode(word, index=3)


def test_encode_checks_ranges_and_names():
    with pytest.raises(ProgramError, match="outside"):
        encode(Opcode.MV, rows=1 << 16)
    with pytest.raises(ProgramError, match="k0=-65"):
        encode(Opcode.MV, k0=-65)
    with pytest.raises(ProgramError, match="unknown field 'nrows'"):
        encode(Opcode.MV, nrows=3)


def test_program_file_checks(tmp_path):
    words = [encode(Opcode.SYS, op=SysOp.NOP), encode(Opcode.SYS, op=SysOp.HALT)]
    prog = Program(words, bytes.fromhex("0123456789abcdef"))
    path = tmp_path / "p.afp"
    write_program(path, prog)
    assert read_program(path).words == words
    raw = bytearray(path.read_bytes())
    with pytest.raises(ProgramError, match="compiled for config hash"):
        read_program(path, expect_hash=bytes(8))
    bad = bytearray(raw)
    bad[0:4] = b"ELF\x7f"
    path.write_bytes(bad)
    with pytest.raises(ProgramError, match="bad magic"):
        read_program(path)
    bad = bytearray(raw)
    bad[HEADER_SIZE + 5] ^= 1
    path.write_bytes(bad)
    with pytest.raises(ProgramError, match="checksum"):
        read_program(path)
    bad = bytearray(raw)
    bad[4] = 99
    path.write_bytes(bad)
    with pytest.raises(ProgramError, match="ISA version 99"):
        read_program(path)
    path.write_bytes(raw[:-3])
    with pytest.raises(ProgramError, match="bytes follow"):
        read_program(path)
