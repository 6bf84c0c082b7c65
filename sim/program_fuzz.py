"""Program fuzzer: random instruction streams, legal and illegal, on the ISA simulator and
the RTL core, compared.

:func:`generate` builds one program from one integer seed (reproducible: the same seed
and config give the same words and image). Its *kind* is drawn from the seed:

* ``legal``: a chain of steps, each ``LD`` -> compute -> ``ST``, ordered by dependency
  tokens that balance (every release has its wait), ending with ``HALT``. Compute is
  ``MV`` (with an optional K split) or ``MM`` (vector strides, per-vector token scales)
  on packed weight tiles, ``MV`` on a packed weight stream (configs with a decode unit),
  an ``SFU`` function (``COPY`` with overlapping operands, ``SILU``/``ADD``/``MUL``/
  ``RMSNORM`` in place or not, ``QUANT_TOKEN``, ``ROPE``) or nothing; loads take their
  row count or row offset from registers (``SYS SETREG``/``LDREG``); ``BARRIER``\\ s
  between steps. Steps use disjoint buffer regions until a barrier,
  loads read the image's input area, stores write its output area: no two units ever race
  for a byte, so the result does not depend on timing.
* an illegal kind (:data:`ILLEGAL_KINDS`): a short legal program with one fault planted at
  one instruction -- an unassigned opcode, an enum field out of its enum, a size or count
  out of range, a buffer access past the end, a reserved bit set, a wait no unit will ever
  answer (deadlock), a register or token field misused, a missing ``HALT``, a memory
  address beyond the memory (AXI SLVERR), a group scale outside the rescaler window, a
  misaligned SFU operand, an ``MV`` whose stream loads fall short (a starved stream).

:func:`compare` checks that both sides agree: the same done/error status, error code
(:class:`airfoil.isa.ErrorCode`) and error instruction index (``ERR_PC``), and, for a
program that completes, the image's output area byte for byte. A run that does not finish
within its cycle limit is a mismatch (the RTL reports a deadlock as DEADLOCK and stops).

What is compared, and what is not:

* Reserved bits are refused by both sides as MALFORMED at their instruction: the ISA
  simulator's decoder when it loads the program, the core's dispatcher when it reaches
  the word (:func:`airfoil.isa.reserved_bits`).
* An illegal program carries one fault: with two, the sides may stop at different ones
  (the ISA simulator refuses an illegal encoding before it runs anything, the core runs
  up to it).
* After an error, memory is not compared: the ISA simulator refuses an illegal encoding
  (opcode, enum, reserved bit, token field) when it loads the program and so runs
  nothing, while the core runs the instructions before it; and the core's SFU stops a
  kernel at its first out-of-range access, the ISA simulator before any write.
* Programs that break a rule the ISA states for programs but no side checks the same way
  are not generated: more than :data:`airfoil.isa.TOKEN_DEPTH` outstanding tokens (the
  ISA simulator refuses, the core waits), a register rewritten while a queued instruction
  names it, buffer regions two units use without a token between them, the MATRIX
  unit's alignment limits (UNSUPPORTED on this core, not modelled by the ISA simulator),
  and an ``MV STREAM`` that waits for the token of an ``LD WSTREAM`` it drains (the core's
  load finishes only once the stream FIFO took its last word, so a load longer than the
  FIFO never releases: the core hangs, the ISA simulator, whose stream is unbounded,
  completes).

Memory: the image is :data:`IMAGE_BYTES` long; its first :data:`INPUT_BYTES` hold the
data loads read, the rest is the output area stores write. The RTL memory model ends a
page or two after the image (:func:`sim.rtl.run_core`), so "beyond the memory" addresses
are :data:`FAR_ADDR` and up, past both.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from airfoil import format_registry, isa
from airfoil.config import AccelConfig
from airfoil.errors import ProgramError
from airfoil.formats import FORMAT_BITS, OUT_BITS, pack_tile, qmax, tile_layout
from airfoil.isa import Buffer, ErrorCode, Opcode, OutFormat, SfuFunc, SysOp, Unit, WeightFormat
from airfoil.program import Program

__all__ = ["KINDS", "ILLEGAL_KINDS", "STREAM_KINDS", "FuzzProgram", "Outcome", "FuzzSummary",
           "kinds_of", "generate", "run_isa_side", "rtl_case", "rtl_outcome", "compare",
           "disassemble", "report", "run_rtl_side", "fuzz", "IMAGE_BYTES", "INPUT_BYTES",
           "FAR_ADDR", "MAX_CYCLES", "STALLS"]

IMAGE_BYTES = 16384
INPUT_BYTES = 8192
#: A data address past the end of both memories (the ISA image and the RTL model's).
FAR_ADDR = 1 << 24
#: Cycle limit of one RTL run: far above any generated program's run time.
MAX_CYCLES = 60_000
#: Probabilities of a memory stall per cycle in the RTL runs (one per seed, round robin).
STALLS = (0.0, 0.25, 0.5)

ILLEGAL_KINDS = ("bad_opcode", "bad_enum", "bad_size", "buffer_range", "reserved_bit",
                 "deadlock", "bad_register", "bad_tokens", "program_end", "axi_range",
                 "scale_range", "misaligned", "starved_stream")
KINDS = ("legal",) + ILLEGAL_KINDS
#: Kinds that need the decode unit (``LD WSTREAM``, ``MV`` with ``wfmt = STREAM``).
STREAM_KINDS = ("starved_stream",)
#: Record formats of generated weight streams (each with its own integer range): the
#: WGT-tile formats, which every decode unit reads.
_STREAM_FORMATS = tuple(f.name for f in format_registry.tile_formats()
                        if f.streamed and f.always_decoded)
#: Buffers LD/ST move (WSTREAM is the weight stream, not a buffer).
_DATA_BUFFERS = (Buffer.ACT, Buffer.WGT, Buffer.OUT, Buffer.KV, Buffer.AUX)
#: Buffers the SFU reaches on the core (see :mod:`hdl.core.top`).
_SFU_BUFFERS = (Buffer.ACT, Buffer.OUT, Buffer.KV, Buffer.AUX)
_Q16 = 1 << 16


def _field_span(body: str, key: str) -> tuple[int, int]:
    """Bit offset and width of a body field in an instruction word, from the layouts."""
    body_off = dict(isa.INSTR_LAYOUT)["body"].offset
    f = dict(isa.BODY_LAYOUT.members[body])[key]
    return body_off + f.offset, f.width


def _with_field(word: int, body: str, key: str, value: int) -> int:
    """``word`` with body field ``key`` set to the raw ``value`` (any bits, legal or not)."""
    off, width = _field_span(body, key)
    mask = (1 << width) - 1
    return (word & ~(mask << off)) | ((value & mask) << off)


def _with_opcode(word: int, raw: int) -> int:
    f = dict(isa.HEADER_LAYOUT)["opcode"]
    mask = (1 << f.width) - 1
    return (word & ~(mask << f.offset)) | ((raw & mask) << f.offset)


@dataclass
class FuzzProgram:
    """One generated program: its words, the data image and what it was built to do."""

    seed: int
    kind: str
    words: list
    image: bytes
    #: Where the planted fault is and what it is (empty for ``legal``).
    fault: str = ""
    #: The error code the fault was planted to raise (``NONE``: the program completes).
    expect: ErrorCode = ErrorCode.NONE
    #: The index of the instruction it was planted at (``None``: no fault).
    where: int | None = None


@dataclass
class Outcome:
    """How a run ended: ``error`` code (``None``: done without error), the faulting
    instruction index, and the output area (``None`` when it is not compared)."""

    finished: bool
    error: ErrorCode | None = None
    index: int | None = None
    output: bytes | None = None

    def describe(self) -> str:
        if not self.finished:
            return "did not finish (hang)"
        if self.error is None:
            return "done"
        return f"{self.error.name} at instruction {self.index}"


class _Builder:
    """A legal program under construction: words, the image, buffer and memory regions."""

    def __init__(self, rng: random.Random, config: AccelConfig):
        self.rng, self.config = rng, config
        self.wb = config.word_bytes
        self.words: list[int] = []
        self.image = bytearray(IMAGE_BYTES)
        self.in_ptr = 0
        self.out_ptr = INPUT_BYTES
        b = config.buffers
        self.buf_size = {Buffer.ACT: b.act_bytes, Buffer.WGT: b.weight_bytes,
                         Buffer.OUT: b.out_bytes, Buffer.KV: b.kv_bytes,
                         Buffer.AUX: b.aux_bytes}
        self.buf_ptr = {buf: 0 for buf in _DATA_BUFFERS}
        self.released = Counter()          # (from, to) -> releases since the last barrier
        self.free_regs = list(range(1, 32))
        #: Bytes of a WGT buffer row: the core's tile engine takes tiles at row starts.
        from hdl.core.buffers import BufferGeometry
        self.wgt_row = BufferGeometry.of(config).wgt_bits // 8
        self.stream_mv = None              # index of the last MV STREAM
        rng.shuffle(self.free_regs)

    # -- resources ----------------------------------------------------------------------

    def up(self, n: int) -> int:
        return -(-n // self.wb) * self.wb

    def emit(self, opcode, wait=(), release=(), **fields) -> int:
        own = isa.unit_of(opcode)
        for u in release:
            self.released[(own, u)] += 1
        self.words.append(isa.encode(opcode, wait=wait, release=release, **fields))
        return len(self.words) - 1

    def put(self, raw: bytes) -> int | None:
        """Place ``raw`` in the input area; return its data address (``None``: full)."""
        n = self.up(len(raw))
        if self.in_ptr + n > INPUT_BYTES:
            return None
        addr = self.in_ptr
        self.image[addr:addr + len(raw)] = raw
        self.in_ptr += n
        return addr

    def out(self, nbytes: int) -> int | None:
        n = self.up(nbytes)
        if self.out_ptr + n > IMAGE_BYTES:
            return None
        addr = self.out_ptr
        self.out_ptr += n
        return addr

    def alloc(self, buf: Buffer, nbytes: int, align: int = 0) -> int | None:
        """A region of ``buf`` no other instruction since the last barrier uses."""
        a = max(align, self.wb)
        start = -(-self.buf_ptr[buf] // a) * a
        if start + nbytes > self.buf_size[buf]:
            return None
        self.buf_ptr[buf] = self.up(start + nbytes)
        return start

    def barrier(self) -> None:
        self.emit(Opcode.SYS, op=SysOp.BARRIER)
        self.buf_ptr = {buf: 0 for buf in _DATA_BUFFERS}
        self.released.clear()

    def room_for_tokens(self, pairs) -> None:
        """Put a barrier first if a step releasing on ``pairs`` would overfill a FIFO."""
        if any(self.released[p] + 1 > isa.TOKEN_DEPTH for p in pairs):
            self.barrier()

    def random_bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def q16(self, count: int, span: float = 8.0) -> bytes:
        lim = int(span * _Q16)
        return np.array([self.rng.randint(-lim, lim) for _ in range(count)],
                        dtype="<i4").tobytes()

    # -- loads and stores ---------------------------------------------------------------

    def channel(self) -> int:
        """A random memory channel (every channel sees the whole image)."""
        n = self.config.memory.channels
        return self.rng.randrange(n) if n > 1 else 0

    def load(self, buf: Buffer, raw: bytes, release=(), align: int = 0) -> int | None:
        """LD ``raw`` (one or more rows) into a fresh region of ``buf``; return its address."""
        nbytes = self.up(len(raw))
        addr = self.alloc(buf, nbytes, align)
        if addr is None:
            return None
        rows = self.rng.choice([r for r in (1, 2, 4) if nbytes % (r * self.wb) == 0])
        row = nbytes // rows
        gap = self.rng.choice([0, 0, self.wb, 3 * self.wb])
        image = bytearray()
        for r in range(rows):
            image += raw[r * row:(r + 1) * row].ljust(row, b"\0") + bytes(gap)
        dram = self.put(bytes(image))
        if dram is None:
            return None
        fields = dict(buf=buf, buf_addr=addr, dram_addr=dram, nbytes=row, count=rows,
                      dram_stride=row + gap, channel=self.channel())
        if self.free_regs and self.rng.random() < 0.15:
            # dram_addr + regs[row_reg] * dram_stride is the data's address.
            reg = self.free_regs.pop()
            skip = self.rng.randint(0, dram // (row + gap))
            self.emit(Opcode.SYS, op=SysOp.SETREG, reg=reg, value=skip)
            fields.update(row_reg=reg, dram_addr=dram - skip * (row + gap))
        if self.free_regs and self.rng.random() < 0.2:
            reg = self.free_regs.pop()
            if self.rng.random() < 0.5:
                self.emit(Opcode.SYS, op=SysOp.SETREG, reg=reg, value=rows)
            else:
                where = self.put(rows.to_bytes(4, "little"))
                if where is None:
                    return None
                where += self.rng.randrange(0, self.wb - 3)
                self.image[where:where + 4] = rows.to_bytes(4, "little")
                self.emit(Opcode.SYS, op=SysOp.LDREG, reg=reg, value=where)
            fields.update(count=self.rng.randrange(1 << 16), count_reg=reg)
        self.emit(Opcode.LD, release=release, **fields)
        return addr

    def store(self, buf: Buffer, addr: int, nbytes: int, wait=()) -> bool:
        """ST ``nbytes`` (a multiple of the word) of ``buf`` at ``addr`` to the output area."""
        rows = self.rng.choice([r for r in (1, 2) if nbytes % (r * self.wb) == 0])
        row = nbytes // rows
        stride = row + self.rng.choice([0, self.wb])
        dram = self.out((rows - 1) * stride + row)
        if dram is None:
            return False
        self.emit(Opcode.ST, wait=wait, buf=buf, buf_addr=addr, dram_addr=dram, nbytes=row,
                  count=rows, dram_stride=stride, channel=self.channel())
        return True

    # -- steps ----------------------------------------------------------------------------

    def step_copy(self) -> bool:
        self.room_for_tokens([(Unit.LOAD, Unit.STORE)])
        buf = self.rng.choice(_DATA_BUFFERS)
        n = self.wb * self.rng.randint(1, 6)
        addr = self.load(buf, self.random_bytes(n), release=[Unit.STORE])
        return addr is not None and self.store(buf, addr, n, wait=[Unit.LOAD])

    def matrix_fields(self, m: int):
        """Random in-range fields of a matrix instruction and its tile(s)' bytes."""
        cfg, rng = self.config, self.rng
        wfmt = WeightFormat[rng.choice(cfg.tile_formats).upper()]
        group = rng.choice(cfg.group_sizes)
        k = group * rng.randint(1, max(1, 256 // group))
        out_fmt = rng.choice(list(OutFormat))
        ob = OUT_BITS[out_fmt] // 8
        rows = rng.choice([r for r in range(1, 17) if r * ob % self.wb == 0] or [self.wb])
        return dict(wfmt=wfmt, group=group, k=k, rows=rows, m=m, out_fmt=out_fmt,
                    req_m=rng.randrange(1 << 16), req_s=rng.randrange(1 << 7),
                    k0=-20), ob

    def layout(self, f: dict, bias: bool):
        cfg = self.config
        return tile_layout(rows=f["rows"], k=f["k"], group=f["group"], wfmt=f["wfmt"],
                           chains=cfg.chains, lanes=cfg.lanes, bias=bias, align=self.wb)

    def tile(self, f: dict, bias: bool) -> bytes:
        cfg, g = self.config, torch.Generator().manual_seed(self.rng.randrange(1 << 30))
        lay = self.layout(f, bias)
        lim = qmax(FORMAT_BITS[f["wfmt"]])
        q = torch.randint(-lim, lim + 1, (f["rows"], f["k"]), generator=g)
        # Scales 2**-8 .. 2**-1: exponents -18 .. -11 with the 11-bit significand, shifts
        # 2 .. 9 from k0 = -20, inside the rescaler window.
        scales = (torch.rand(f["rows"], f["k"] // f["group"], generator=g) *
                  (2 ** -1 - 2 ** -8) + 2 ** -8).to(torch.float16)
        b = torch.randint(-(1 << 20), 1 << 20, (f["rows"],), generator=g) if bias else None
        return pack_tile(lay, q, scales, b)

    def step_matrix(self) -> bool:
        self.room_for_tokens([(Unit.LOAD, Unit.MATRIX), (Unit.MATRIX, Unit.STORE)])
        rng = self.rng
        mm = rng.random() < 0.4
        m = rng.randint(1, 3) if mm else 1
        f, ob = self.matrix_fields(m)
        split = not mm and rng.random() < 0.3
        parts = 2 if split else 1
        tiles = []
        for p in range(parts):
            bias = p == 0 and rng.random() < 0.5
            raw = self.tile(f, bias)
            wbuf = self.load(Buffer.WGT, raw, align=self.wgt_row)
            if wbuf is None:
                return False
            tiles.append((wbuf, bias))
        if mm and rng.random() < 0.5:
            # Vectors apart in ACT and OUT (strides in memory words).
            f.update(astride=-(-f["k"] // self.wb) + rng.randint(0, 2),
                     ostride=f["rows"] * ob // self.wb + rng.randint(0, 1))
        astep = f["astride"] * self.wb if f.get("astride") else f["k"]
        ostep = f["ostride"] * self.wb if f.get("ostride") else f["rows"] * ob
        if rng.random() < 0.3:
            # Per-vector requantization: (sm, se) pairs in AUX.
            pairs = np.array([[rng.randrange(1 << 16), rng.randint(-40, 200)]
                              for _ in range(m)], dtype="<i4").tobytes()
            sbuf = self.load(Buffer.AUX, pairs)
            if sbuf is None:
                return False
            f.update(tok_scale=1, sbuf_addr=sbuf)
        act = self.load(Buffer.ACT, self.random_bytes((m - 1) * astep + f["k"] * parts),
                        release=[Unit.MATRIX], align=8)
        out = self.alloc(Buffer.OUT, (m - 1) * ostep + f["rows"] * ob)
        if act is None or out is None:
            return False
        for p, (wbuf, bias) in enumerate(tiles):
            last = p == parts - 1
            self.emit(Opcode.MM if mm else Opcode.MV, wait=[Unit.LOAD] if p == 0 else (),
                      release=[Unit.STORE] if last else (), **f, wbuf_addr=wbuf,
                      abuf_addr=act + p * f["k"], obuf_addr=out, acc_init=int(p == 0),
                      final=int(last), bias=int(bias))
        # One ST per vector: the bytes between vectors are not written by this program.
        return all(self.store(Buffer.OUT, out + j * ostep, f["rows"] * ob,
                              wait=[Unit.MATRIX] if j == 0 else ()) for j in range(m))

    def step_stream(self, starve: bool = False) -> bool:
        """LD ACT, LD WSTREAM of packed records, MV STREAM, ST; ``starve``: the stream load
        brings only part of the records (or none), so the MV waits for words no load
        brings (the ISA: MALFORMED at the MV)."""
        from airfoil.packing import core_stream_geometry, pack_tensor
        self.room_for_tokens([(Unit.LOAD, Unit.MATRIX), (Unit.MATRIX, Unit.STORE)])
        rng = self.rng
        f, ob = self.matrix_fields(1)
        fmt = rng.choice(_STREAM_FORMATS)
        lim = qmax(FORMAT_BITS[WeightFormat[fmt.upper()]])
        g = torch.Generator().manual_seed(rng.randrange(1 << 30))
        q = torch.randint(-lim, lim + 1, (f["rows"], f["k"]), generator=g)
        scales = (torch.rand(f["rows"], f["k"] // f["group"], generator=g) *
                  (2 ** -1 - 2 ** -8) + 2 ** -8).to(torch.float16)
        raw = pack_tensor(core_stream_geometry(self.config), q, scales, group=f["group"],
                          tags=fmt)
        if starve:
            raw = raw[:self.up(len(raw) // 2) - self.wb * rng.randint(0, 1)]
        # As the compiler orders it: the MV waits for its activations' load only and takes
        # the stream as it arrives (a token from the stream load would wait for the MV
        # to drain the stream FIFO).
        act = self.load(Buffer.ACT, self.random_bytes(f["k"]), align=8,
                        release=[Unit.MATRIX])
        out = self.alloc(Buffer.OUT, f["rows"] * ob)
        dram = self.put(raw) if raw else 0
        if act is None or out is None or dram is None:
            return False
        if raw:
            self.emit(Opcode.LD, buf=Buffer.WSTREAM, buf_addr=0, dram_addr=dram,
                      nbytes=len(raw), count=1, dram_stride=0)
        f.update(wfmt=WeightFormat.STREAM)
        self.stream_mv = self.emit(Opcode.MV, wait=[Unit.LOAD], release=[Unit.STORE], **f,
                                   abuf_addr=act, obuf_addr=out, acc_init=1, final=1)
        return self.store(Buffer.OUT, out, f["rows"] * ob, wait=[Unit.MATRIX])

    def step_sfu(self) -> bool:
        self.room_for_tokens([(Unit.LOAD, Unit.SFU), (Unit.SFU, Unit.STORE)])
        rng = self.rng
        func = rng.choice([SfuFunc.COPY, SfuFunc.SILU, SfuFunc.ADD, SfuFunc.MUL,
                           SfuFunc.RMSNORM, SfuFunc.QUANT_TOKEN, SfuFunc.ROPE])
        src, dst, aux = (rng.choice(_SFU_BUFFERS) for _ in range(3))
        if func == SfuFunc.COPY and rng.random() < 0.3:
            # Source and destination overlap (COPY moves like memmove).
            n = self.wb * rng.randint(1, 4)
            base = self.load(src, self.random_bytes(n + 2 * self.wb), release=[Unit.SFU])
            if base is None:
                return False
            da = base + self.wb * rng.randint(0, 2)
            self.emit(Opcode.SFU, wait=[Unit.LOAD], release=[Unit.STORE], func=func, src=src,
                      dst=src, src_addr=base + rng.randrange(2 * self.wb + 1), dst_addr=da,
                      n=n)
            return self.store(src, da, n, wait=[Unit.SFU])
        if func == SfuFunc.ROPE:
            return self.rope(src, dst, aux)
        if func == SfuFunc.COPY:
            n = self.wb * rng.randint(1, 4)
            skew = rng.randrange(self.wb)
            sa = self.load(src, self.random_bytes(n + self.wb), release=[Unit.SFU])
            da = self.alloc(dst, n)
            if sa is None or da is None:
                return False
            self.emit(Opcode.SFU, wait=[Unit.LOAD], release=[Unit.STORE], func=func, src=src,
                      dst=dst, src_addr=sa + skew, dst_addr=da, n=n)
            return self.store(dst, da, n, wait=[Unit.SFU])
        rows = rng.randint(1, 3)
        n = 4 * rng.randint(1, 6)
        heads = rng.choice([h for h in (1, 2, 4) if n % h == 0])
        quant = func == SfuFunc.QUANT_TOKEN
        if quant:
            rows = 2 * rows             # whole words of scale pairs
            n = self.wb * rng.randint(1, 2)
            heads = 1
        xa = 0
        if func in (SfuFunc.ADD, SfuFunc.MUL):
            xa = self.load(aux, self.q16(rows * n))
        elif func == SfuFunc.RMSNORM:
            xa = self.load(aux, self.q16(n, 2.0))
        sa = self.load(src, self.q16(rows * n), release=[Unit.SFU])
        out_bytes = rows * n * (1 if quant else 4)
        in_place = not quant and rng.random() < 0.3
        if in_place:
            dst = src
        da = sa if in_place else self.alloc(dst, out_bytes)
        if quant:
            xa = self.alloc(aux, rows * 8)
        if None in (xa, sa, da):
            return False
        imm = dict(imm0=rng.randrange(1 << 20), imm1=0) if func == SfuFunc.RMSNORM else {}
        self.emit(Opcode.SFU, wait=[Unit.LOAD], release=[Unit.STORE], func=func, src=src,
                  dst=dst, aux=aux, src_addr=sa, dst_addr=da, aux_addr=xa, n=n, rows=rows,
                  heads=heads if heads > 1 else rng.choice([0, 1]), **imm)
        ok = self.store(dst, da, out_bytes, wait=[Unit.SFU])
        return ok and (not quant or self.store(aux, xa, rows * 8))

    def step(self, kind) -> bool:
        """Add one step, or nothing if it does not fit (the image or a buffer is full)."""
        saved = (len(self.words), self.in_ptr, self.out_ptr, dict(self.buf_ptr),
                 Counter(self.released), list(self.free_regs))
        if kind():
            return True
        n, self.in_ptr, self.out_ptr, self.buf_ptr, self.released, self.free_regs = saved
        del self.words[n:]
        return False

    def rope(self, src: Buffer, dst: Buffer, aux: Buffer) -> bool:
        """LD rows and a cos/sin table, SFU ROPE, ST."""
        rng = self.rng
        rows, heads, hd = rng.randint(1, 3), rng.choice([1, 2]), 2 * rng.randint(1, 4)
        n = heads * hd
        rows += rows * n % 4 and 4 - rows % 4          # whole words of int32 results
        stride = 2 * hd + 2 * rng.choice([0, 0, 1, 3])
        table = b"".join(np.array([rng.randint(-(1 << 15), (1 << 15) - 1)
                                   for _ in range(stride // 2)], dtype="<i2").tobytes()
                         for _ in range(rows))
        xa = self.load(aux, table)
        sa = self.load(src, self.q16(rows * n), release=[Unit.SFU])
        da = self.alloc(dst, rows * n * 4)
        if None in (xa, sa, da):
            return False
        self.emit(Opcode.SFU, wait=[Unit.LOAD], release=[Unit.STORE], func=SfuFunc.ROPE,
                  src=src, dst=dst, aux=aux, src_addr=sa, dst_addr=da, aux_addr=xa, n=n,
                  rows=rows, heads=heads, imm1=0 if stride == 2 * hd else stride)
        return self.store(dst, da, rows * n * 4, wait=[Unit.SFU])

    def build(self, steps: int, first=None, last=None) -> None:
        """``first`` (a step method), then random steps up to ``steps`` in all (fewer if
        the image fills up), then ``last``, then HALT."""
        kinds = [self.step_copy, self.step_matrix, self.step_sfu]
        if self.config.decode_unit:
            kinds.append(self.step_stream)
        # The first step into empty buffers fits unless its random sizes overflow the
        # input area: a few tries with new sizes.
        if first is not None and not any(self.step(first) for _ in range(8)):
            raise AssertionError(f"{first.__name__} never fits {self.config.name!r}")
        for s in range(int(first is not None), steps):
            if s and self.rng.random() < 0.1:
                self.barrier()
            if not self.step(self.rng.choice(kinds)):
                break
        if last is not None:
            self.stream_mv = None
            self.step(last)
        self.emit(Opcode.SYS, op=SysOp.HALT)


# -- faults ------------------------------------------------------------------------------

def _decoded(words):
    return [isa.decode(w) for w in words]


def _pick(rng, words, opcodes, where=lambda ins: True) -> int | None:
    cands = [i for i, ins in enumerate(_decoded(words)) if ins.opcode in opcodes and where(ins)]
    return rng.choice(cands) if cands else None


def _reencode(word: int, wait=None, release=None, **changes) -> int:
    ins = isa.decode(word)
    fields = dict(ins.fields)
    fields.update(changes)
    return isa.encode(ins.opcode, wait=ins.wait if wait is None else wait,
                      release=ins.release if release is None else release, **fields)


_ENUM_FIELDS = {"sys": ["op"], "mem": ["buf"], "matrix": ["wfmt", "sparsity", "out_fmt"],
                "sfu": ["func", "src", "dst", "aux"]}


def _bad_enum(rng, words, cfg):
    i = rng.randrange(len(words))
    ins = isa.decode(words[i])
    body = isa.body_name(ins.opcode)
    key = rng.choice(_ENUM_FIELDS[body])
    enum_ = dict(isa.BODY_LAYOUT.members[body])[key].shape
    width = _field_span(body, key)[1]
    bad = [v for v in range(1 << width) if v not in {e.value for e in enum_}]
    v = rng.choice(bad)
    words[i] = _with_field(words[i], body, key, v)
    return i, f"{key}={v} (not a {enum_.__name__})", ErrorCode.MALFORMED


def _bad_size(rng, words, cfg):
    i = _pick(rng, words, (Opcode.LD, Opcode.ST, Opcode.MV, Opcode.MM, Opcode.SFU))
    ins = isa.decode(words[i])
    wb = cfg.word_bytes
    if ins.opcode in (Opcode.LD, Opcode.ST):
        if ins.count_reg:
            choices = [dict(nbytes=0), dict(nbytes=ins.nbytes + rng.randrange(1, wb)),
                       dict(channel=rng.randrange(cfg.memory.channels, 64))]
        else:
            choices = [dict(count=0), dict(nbytes=0), dict(dram_stride=ins.dram_stride + 4),
                       dict(buf_addr=ins.buf_addr + 8), dict(dram_addr=ins.dram_addr + 1),
                       dict(channel=rng.randrange(cfg.memory.channels, 64))]
        if ins.opcode == Opcode.ST:
            choices.append(dict(gather=1))
        change, code = rng.choice(choices), ErrorCode.MALFORMED
    elif ins.opcode in (Opcode.MV, Opcode.MM):
        unbuilt = [w.name.lower() for w in WeightFormat if w != WeightFormat.STREAM
                   and w.name.lower() not in cfg.tile_formats]
        choices = [(dict(rows=0), ErrorCode.MALFORMED), (dict(k=0), ErrorCode.MALFORMED),
                   (dict(k=ins.k + cfg.lanes), ErrorCode.MALFORMED),
                   (dict(group=rng.choice([g for g in (8, 16, 256) if g not in
                                           cfg.group_sizes])), ErrorCode.UNSUPPORTED)]
        choices.append((dict(m=0), ErrorCode.MALFORMED) if ins.opcode == Opcode.MM
                       else (dict(m=rng.randint(2, 5)), ErrorCode.MALFORMED))
        if unbuilt:
            choices.append((dict(wfmt=WeightFormat[rng.choice(unbuilt).upper()]),
                            ErrorCode.UNSUPPORTED))
        change, code = rng.choice(choices)
    else:
        change = rng.choice([dict(n=0)] + ([dict(rows=0)] if ins.func != SfuFunc.COPY else []))
        code = ErrorCode.MALFORMED
    words[i] = _reencode(words[i], **change)
    return i, f"{ins.opcode.name} {change}", code


def _buffer_range(rng, words, cfg):
    i = _pick(rng, words, (Opcode.LD, Opcode.ST, Opcode.MV, Opcode.MM, Opcode.SFU),
              lambda ins: ins.fields.get("buf") != Buffer.WSTREAM and
              ins.fields.get("wfmt") != WeightFormat.STREAM)
    ins = isa.decode(words[i])
    b = cfg.buffers
    size = {Buffer.ACT: b.act_bytes, Buffer.WGT: b.weight_bytes, Buffer.OUT: b.out_bytes,
            Buffer.KV: b.kv_bytes, Buffer.AUX: b.aux_bytes}
    wb = cfg.word_bytes
    if ins.opcode in (Opcode.LD, Opcode.ST):
        over = ins.count_reg == 0 and ins.count * ins.nbytes > wb
        change = dict(buf_addr=size[ins.buf] - (wb if over and rng.random() < 0.5 else 0))
    elif ins.opcode in (Opcode.MV, Opcode.MM):
        spans = [("wbuf_addr", size[Buffer.WGT] - wb), ("abuf_addr", size[Buffer.ACT] - 8)]
        if ins.final:
            spans.append(("obuf_addr", size[Buffer.OUT]))
        key, addr = rng.choice(spans)
        change = {key: addr}
    elif rng.random() < 0.3:
        # An operand in a buffer the SFU does not reach (isa.SFU_BUFFERS).
        change = {rng.choice(["src", "dst"]): Buffer.WGT}
    else:
        key = rng.choice(["src_addr", "dst_addr"])
        buf = ins.src if key == "src_addr" else ins.dst
        change = {key: size[buf] - 4 * rng.randint(0, 1)}
    words[i] = _reencode(words[i], **change)
    return i, f"{ins.opcode.name} {change}", ErrorCode.BUFFER_RANGE


def _reserved_bit(rng, words, cfg):
    i = rng.randrange(len(words))
    ins = isa.decode(words[i])
    bits = isa.reserved_bits(ins.opcode)
    choices = [n for n in range(isa.INSTR_BITS) if bits >> n & 1]
    n = rng.choice(choices)
    words[i] |= 1 << n
    return i, f"reserved bit {n} set", ErrorCode.MALFORMED


def _deadlock(rng, words, cfg):
    """A wait no unit will answer: before HALT, or a pair of units waiting for each other."""
    halt = len(words) - 1
    if rng.random() < 0.5:
        # Tokens balance, so every FIFO is empty at HALT: a late wait never returns.
        unit = rng.choice([Opcode.LD, Opcode.ST])
        other = rng.choice([u for u in Unit if u != isa.unit_of(unit)])
        i = _pick(rng, words[:halt], (unit,))
        if i is None:
            words.insert(halt, isa.encode(Opcode.SYS, op=SysOp.NOP))
            return halt, "no LD/ST to copy", None
        words.insert(halt, _reencode(words[i], wait=1 << other.value, release=0))
        return halt, f"{unit.name} waits for {other.name} before HALT", ErrorCode.DEADLOCK
    ld = _pick(rng, words[:halt], (Opcode.LD,))
    st = _pick(rng, words[:halt], (Opcode.ST,))
    if ld is None or st is None:
        return halt, "no LD/ST pair", None
    a = _reencode(words[ld], wait=1 << Unit.STORE.value, release=1 << Unit.STORE.value)
    b = _reencode(words[st], wait=1 << Unit.LOAD.value, release=1 << Unit.LOAD.value)
    words[halt:halt] = [a, b]
    return halt, "LD and ST wait for each other", ErrorCode.DEADLOCK


def _bad_register(rng, words, cfg):
    i = _pick(rng, words, (Opcode.LD, Opcode.ST, Opcode.MV))
    ins = isa.decode(words[i])
    used = {x.reg for x in _decoded(words) if x.opcode == Opcode.SYS}
    unset = rng.choice([r for r in range(1, 32) if r not in used])
    if ins.opcode == Opcode.MV:
        change = dict(m_reg=rng.randrange(1, 32))      # MV takes no m_reg
    else:
        change = dict(count_reg=unset)                  # reads 0 rows
    words[i] = _reencode(words[i], **change)
    return i, f"{ins.opcode.name} {change}", ErrorCode.MALFORMED


def _bad_tokens(rng, words, cfg):
    i = rng.randrange(len(words))
    ins = isa.decode(words[i])
    own = ins.unit
    if own is None:
        mask = rng.randrange(1, 16)
        what = rng.choice(["wait", "release"])
        words[i] = _reencode(words[i], **{what: mask})
        return i, f"SYS with {what}={mask}", ErrorCode.MALFORMED
    what = rng.choice(["wait", "release"])
    words[i] = _reencode(words[i], **{what: getattr(ins, what) | 1 << own.value})
    return i, f"{ins.opcode.name} {what}s for its own unit", ErrorCode.MALFORMED


def _program_end(rng, words, cfg):
    del words[-1]
    return len(words), "no HALT", ErrorCode.PROGRAM_END


def _axi_range(rng, words, cfg):
    i = _pick(rng, words, (Opcode.LD, Opcode.ST))
    far = FAR_ADDR + cfg.word_bytes * rng.randrange(1 << 12)
    if rng.random() < 0.25:
        words.insert(i, isa.encode(Opcode.SYS, op=SysOp.LDREG, reg=rng.randrange(32),
                                   value=far))
        return i, f"LDREG from {far:#x}", ErrorCode.AXI_ERROR
    ins = isa.decode(words[i])
    words[i] = _reencode(words[i], dram_addr=far)
    return i, f"{ins.opcode.name} dram_addr={far:#x}", ErrorCode.AXI_ERROR


def _scale_range(rng, words, cfg):
    i = _pick(rng, words, (Opcode.MV, Opcode.MM))
    k0 = rng.choice([-64, -40, -10, 0, 63])
    words[i] = _reencode(words[i], k0=k0)
    return i, f"k0={k0}", ErrorCode.SCALE_RANGE


def _misaligned(rng, words, cfg):
    i = _pick(rng, words, (Opcode.SFU,), lambda ins: ins.func in isa.SFU_ALIGN)
    if i is None:
        return len(words) - 1, "no SFU to misalign", None
    ins = isa.decode(words[i])
    key, align = rng.choice(sorted(isa.SFU_ALIGN[ins.func].items()))
    change = {key: ins.fields[key] + rng.randrange(1, align)}
    words[i] = _reencode(words[i], **change)
    return i, f"SFU {ins.func.name} {change}", ErrorCode.MALFORMED


def _bad_opcode(rng, words, cfg):
    i = rng.randrange(len(words))
    assigned = {o.value for o in Opcode}
    raw = rng.choice([v for v in range(16) if v not in assigned])
    words[i] = _with_opcode(rng.getrandbits(isa.INSTR_BITS), raw)
    return i, f"opcode {raw}", ErrorCode.ILLEGAL_OPCODE


_FAULTS = {"bad_opcode": _bad_opcode, "bad_enum": _bad_enum, "bad_size": _bad_size,
           "buffer_range": _buffer_range, "reserved_bit": _reserved_bit,
           "deadlock": _deadlock, "bad_register": _bad_register, "bad_tokens": _bad_tokens,
           "program_end": _program_end, "axi_range": _axi_range,
           "scale_range": _scale_range, "misaligned": _misaligned}


def kinds_of(config: AccelConfig) -> tuple:
    """The program kinds ``config`` can run (the stream kinds need its decode unit)."""
    return tuple(k for k in KINDS if config.decode_unit or k not in STREAM_KINDS)


def generate(seed: int, config: AccelConfig, kind: str | None = None) -> FuzzProgram:
    """The program of ``seed``: its kind (drawn from the seed unless given), words, image."""
    rng = random.Random(seed)
    kinds = kinds_of(config)
    if kind is None:
        kind = "legal" if rng.random() < 0.4 else rng.choice(kinds[1:])
    if kind not in kinds:
        raise ValueError(f"unknown program kind {kind!r} for config {config.name!r} "
                         f"(accepted: {', '.join(kinds)})")
    b = _Builder(rng, config)
    first = {"scale_range": b.step_matrix, "misaligned": b.step_sfu,
             "legal": None}.get(kind, b.step_copy)
    last = (lambda: b.step_stream(starve=True)) if kind == "starved_stream" else None
    b.build(rng.randint(1, 8) if kind == "legal" else rng.randint(1, 4), first, last)
    words, fault, expect = b.words, "", ErrorCode.NONE
    where = None
    if kind == "starved_stream" and b.stream_mv is not None:
        where, what, expect = b.stream_mv, "the stream loads fall short", ErrorCode.MALFORMED
    elif kind not in ("legal", "starved_stream"):
        where, what, expect = _FAULTS[kind](rng, words, config)
    if expect in (None, ErrorCode.NONE):
        expect, where = ErrorCode.NONE, None
    else:
        fault = f"{kind} at instruction {where}: {what}"
    return FuzzProgram(seed, kind, words, bytes(b.image), fault, expect, where)


# -- running and comparing --------------------------------------------------------------

def fill_programs(config: AccelConfig) -> list[FuzzProgram]:
    """Directed legal programs that fill what random ones rarely do: the SFU's instruction
    queue (a long ``COPY`` with ``instr_queue_depth + 2`` short ones behind it) and the
    token FIFO from LOAD, from SFU and from STORE (:data:`airfoil.isa.TOKEN_DEPTH`
    releases to a unit whose first instruction also waits for a long operation of a third
    unit). The config needs the SFU and an ACT buffer of 4 KiB or more; seeds are
    negative (-1, -2 ..)."""
    wb, depth = config.word_bytes, isa.TOKEN_DEPTH

    def copy(src, dst, n, **tok):
        return isa.encode(Opcode.SFU, func=SfuFunc.COPY, src=Buffer.ACT, dst=Buffer.ACT,
                          src_addr=src, dst_addr=dst, n=n, rows=1, **tok)

    def ld(buf, buf_addr, nbytes, **tok):
        return isa.encode(Opcode.LD, buf=buf, buf_addr=buf_addr, dram_addr=0, nbytes=nbytes,
                          count=1, dram_stride=0, **tok)

    def st(**tok):
        return isa.encode(Opcode.ST, buf=Buffer.ACT, buf_addr=2048, dram_addr=0x3000,
                          nbytes=wb, count=1, dram_stride=0, **tok)

    halt = isa.encode(Opcode.SYS, op=SysOp.HALT)
    long_copy = copy(0, 1024, 1024)                      # ACT [1024, 2048), ~1,000 cycles
    long_ld = ld(Buffer.KV, 0, config.buffers.kv_bytes)  # the whole KV buffer
    programs = {"fill_queue_sfu": [long_copy] + [copy(3072, 3584, wb)] *
                (config.instr_queue_depth + 2) + [halt]}
    # source unit: (its short instruction releasing the consumer, the consumer's
    # instruction waiting for it, the third unit's long instruction)
    fills = {
        # (into AUX: the long COPY holds the ACT buffer's port)
        Unit.LOAD: (ld(Buffer.AUX, 0, wb, release=[Unit.STORE]), st, long_copy),
        Unit.SFU: (copy(3072, 3584, wb, release=[Unit.STORE]), st, long_ld),
        Unit.STORE: (st(release=[Unit.LOAD]),
                     lambda **tok: ld(Buffer.ACT, 3584, wb, **tok), long_copy),
    }
    for src, (short, consumer, slow) in fills.items():
        third = isa.decode(slow).unit
        slow = _reencode(slow, release=[isa.decode(consumer()).unit])
        words = [slow] + [short] * depth
        words.append(consumer(wait=[src, third]))
        words += [consumer(wait=[src])] * (depth - 1) + [halt]
        programs[f"fill_tokens_from_{src.name.lower()}"] = words
    fps = [FuzzProgram(seed=-1 - i, kind=kind, words=words, image=bytes(IMAGE_BYTES))
           for i, (kind, words) in enumerate(programs.items())]
    return fps + [_fill_matrix_tokens(config, seed=-1 - len(fps))]


def _fill_matrix_tokens(config: AccelConfig, seed: int) -> FuzzProgram:
    """:func:`fill_programs`' token FIFO from MATRIX: one tile and vector, then two long
    loads (the second releases STORE) while :data:`airfoil.isa.TOKEN_DEPTH` short MVs
    release STORE, whose first ST waits for both."""
    b = _Builder(random.Random(seed), config)
    f, ob = b.matrix_fields(1)
    f["k"] = f["group"]                                   # short MVs
    wbuf = b.load(Buffer.WGT, b.tile(f, False), align=b.wgt_row)
    act = b.load(Buffer.ACT, b.random_bytes(f["k"]), release=[Unit.MATRIX], align=8)
    out = b.alloc(Buffer.OUT, f["rows"] * ob)
    kv, aux = config.buffers.kv_bytes, config.buffers.aux_bytes
    b.emit(Opcode.LD, buf=Buffer.KV, buf_addr=0, dram_addr=0, nbytes=kv, count=1,
           dram_stride=0)
    b.emit(Opcode.LD, release=[Unit.STORE], buf=Buffer.AUX, buf_addr=0, dram_addr=0,
           nbytes=aux, count=1, dram_stride=0)
    for i in range(isa.TOKEN_DEPTH):
        b.emit(Opcode.MV, wait=[Unit.LOAD] if i == 0 else (), release=[Unit.STORE], **f,
               wbuf_addr=wbuf, abuf_addr=act, obuf_addr=out, acc_init=1, final=1, bias=0)
    for i in range(isa.TOKEN_DEPTH):
        b.store(Buffer.OUT, out, f["rows"] * ob,
                wait=[Unit.MATRIX, Unit.LOAD] if i == 0 else [Unit.MATRIX])
    b.emit(Opcode.SYS, op=SysOp.HALT)
    return FuzzProgram(seed=seed, kind="fill_tokens_from_matrix", words=b.words,
                       image=bytes(b.image))


def run_isa_side(fp: FuzzProgram, config: AccelConfig) -> Outcome:
    """Run on the ISA simulator (:class:`sim.isa_sim.IsaSim`)."""
    from .isa_sim import IsaSim
    image = bytearray(fp.image)
    try:
        IsaSim(config, image).run(fp.words)
    except ProgramError as e:
        return Outcome(True, ErrorCode(e.code), e.index)
    return Outcome(True, output=bytes(image[INPUT_BYTES:]))


def rtl_case(fp: FuzzProgram, config: AccelConfig):
    """The :class:`sim.rtl.RtlCase` of a program: random memory stalls drawn from its
    seed, with a probability of 0, 0.25 or 0.5 (by the seed)."""
    from .rtl import RtlCase
    return RtlCase(program=Program(fp.words, config.config_hash_bytes).to_bytes(),
                   image=fp.image, seed=fp.seed, stall=STALLS[fp.seed % len(STALLS)],
                   read_back={"out": (INPUT_BYTES, IMAGE_BYTES - INPUT_BYTES)},
                   max_cycles=MAX_CYCLES)


def rtl_outcome(result: dict) -> Outcome:
    """The :class:`Outcome` of one result of :func:`sim.rtl.run_core`."""
    if not result["done"]:
        return Outcome(False)
    if result["error"]:
        return Outcome(True, ErrorCode(result["err_code"]), result["err_pc"])
    return Outcome(True, output=result["reads"]["out"])


def compare(isa_out: Outcome, rtl_out: Outcome) -> str | None:
    """What differs between two outcomes (``None``: they agree)."""
    if (isa_out.finished, isa_out.error, isa_out.index) != \
            (rtl_out.finished, rtl_out.error, rtl_out.index):
        return f"ISA simulator: {isa_out.describe()}; RTL: {rtl_out.describe()}"
    if isa_out.error is None and isa_out.output != rtl_out.output:
        a, b = np.frombuffer(isa_out.output, np.uint8), np.frombuffer(rtl_out.output, np.uint8)
        bad = np.flatnonzero(a != b)
        return (f"output area differs in {len(bad)} bytes, first at data address "
                f"{INPUT_BYTES + int(bad[0]):#x} (ISA {a[bad[0]]:#04x}, RTL {b[bad[0]]:#04x})")
    return None


def disassemble(words) -> str:
    """Assembly listing (:mod:`compiler.asm`); a word that does not decode is shown raw."""
    from compiler.asm import format_instr
    lines = []
    for i, w in enumerate(words):
        try:
            lines.append(format_instr(isa.decode(w, i), i))
        except ProgramError as e:
            lines.append(f"{i:6d}  .word {w:#066x}  ; {e}")
    return "\n".join(lines)


def report(fp: FuzzProgram, why: str) -> str:
    """A failure message: seed, kind, fault, what differs and the disassembly."""
    return (f"program fuzz seed {fp.seed} ({fp.kind}{'; ' + fp.fault if fp.fault else ''}): "
            f"{why}\n{disassemble(fp.words)}")


def run_rtl_side(programs, config: AccelConfig, core: dict, build_root="build/sim", *,
                 watch=(), watched: Counter | None = None) -> list:
    """Run programs on the core in one simulator process; return their outcomes.

    ``watch`` names core signals to count (:func:`sim.rtl.run_core`); the runs in which
    each was seen are added to ``watched``."""
    from .rtl import run_core
    res = run_core(verilog=core["sources"], meta=core["meta"], config=config,
                   cases=[rtl_case(fp, config) for fp in programs], build_root=build_root,
                   watch=watch)
    if watched is not None:
        for r in res:
            watched.update(name for name, n in r.get("watched", {}).items() if n)
    return [rtl_outcome(r) for r in res]


@dataclass
class FuzzSummary:
    """Counts of a fuzz run: programs per kind, outcomes per error code, and mismatches."""

    cases: int = 0
    kinds: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)
    mismatches: list = field(default_factory=list)
    #: Wall-clock seconds of the RTL runs (simulator start-up included).
    rtl_seconds: float = 0.0
    #: Watched signal -> programs whose run saw it.
    watched: Counter = field(default_factory=Counter)


def fuzz(seeds, config: AccelConfig, core: dict, *, batch: int = 100,
         build_root="build/sim", watch=(), extra=()) -> FuzzSummary:
    """Generate the programs of ``seeds``, run both sides, compare; ``batch`` programs per
    simulator process (``watch``: core signals counted, :attr:`FuzzSummary.watched`;
    ``extra``: programs run as one more batch, e.g. :func:`fill_programs`). A batch the
    simulator does not finish (a hang) counts every program in it as a mismatch, each
    named by its seed."""
    seeds = list(seeds)
    out = FuzzSummary()
    batches = [[generate(s, config) for s in seeds[b0:b0 + batch]]
               for b0 in range(0, len(seeds), batch)]
    for programs in batches + ([list(extra)] if extra else []):
        _check_batch(programs, config, core, out, build_root, watch)
    return out


def _check_batch(programs, config, core, out: FuzzSummary, build_root, watch) -> None:
    """Run ``programs`` on both sides (one simulator process) and tally them into ``out``."""
    import time

    from .cocotb_runner import RtlFailure
    isa_side = [run_isa_side(fp, config) for fp in programs]
    t0 = time.monotonic()
    try:
        rtl_side = run_rtl_side(programs, config, core, build_root, watch=watch,
                                watched=out.watched)
    except RtlFailure as e:
        # run_core raises when a run does not finish: every program of the batch is
        # suspect (rerun its seeds in smaller batches to find the one that hangs).
        why = f"a run of the batch of seeds {programs[0].seed}..{programs[-1].seed} " \
              f"did not finish: {e}"
        out.mismatches += [report(fp, why) for fp in programs]
        out.cases += len(programs)
        return
    finally:
        out.rtl_seconds += time.monotonic() - t0
    for fp, a, r in zip(programs, isa_side, rtl_side):
        out.cases += 1
        out.kinds[fp.kind] += 1
        out.codes[(a.error or ErrorCode.NONE).name] += 1
        why = compare(a, r)
        if why:
            out.mismatches.append(report(fp, why))
