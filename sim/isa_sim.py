"""Instruction-set simulator: executes ``program.afp`` bit-exactly and counts cycles.

The machine follows the execution model of :mod:`airfoil.isa`: a dispatcher issues the
instructions in program order (one per cycle) into the queues of the four units (LOAD,
MATRIX, SFU, STORE; each at most ``config.instr_queue_depth`` deep), ``SYS`` runs in the
dispatcher, and the units synchronise only through token FIFOs of depth
:data:`airfoil.isa.TOKEN_DEPTH`. The on-chip buffers (ACT, WGT, OUT, KV, AUX) are byte
arrays sized by ``config.buffers``; memory is the folder's image (:mod:`sim.memory`).

The simulation is event ordered: at each step the unit (or the dispatcher) that can start
soonest runs its head instruction, whose data effect takes place at once and whose tokens
become visible when it completes. Per-instruction costs come from
:mod:`sim.cycle_model` only. The matrix arithmetic is :mod:`airfoil.formats`; nothing of
the golden model is shared.

ISA version 2: 32 run-time registers (``SYS SETREG``/``LDREG``) set run-time counts and
offsets of LD/ST (``count_reg``, ``row_reg``, gathers by index), MM (``m_reg``, per-token
requantization from scale pairs) and the SFU functions (``rows_reg``, ``pos_reg``,
``len_reg``); every SFU function calls the one definition in :mod:`airfoil.fixedpoint`.
:class:`IsaLLM` is the host of an LLM folder: it writes the parameter block and token ids,
runs the prefill or decode program and reads the logits; the KV cache stays in the image.

ISA version 3: ``LD`` into ``WSTREAM`` appends its words to the weight stream, a FIFO
from the LOAD unit to the MATRIX unit's decode unit; ``MV``/``MM`` with ``wfmt = STREAM``
consume their records from it (:func:`airfoil.packing.read_records`, the geometry of
:func:`airfoil.packing.core_stream_geometry`) and compute exactly as from a WGT tile. The
stream's data is unbounded here (the LOAD/MATRIX tokens order it); its cost is
:func:`sim.cycle_model.stream_matrix_cost`.

Faults raise :class:`airfoil.errors.ProgramError` whose message names the instruction
index and the :class:`airfoil.isa.ErrorCode`; the exception carries ``code`` and
``index`` attributes.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np
import torch

from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError, CompileError, ProgramError
from airfoil.folder import OUT_DTYPES, Folder, load_folder
from airfoil.formats import (OUT_BITS, REQ_M_BITS, SCALE_SHIFT_MAX, accumulate,
                             fp16_fixed, group_psum, requantize, rescale, tile_layout,
                             unpack_tile)
from airfoil import fixedpoint as fx
from airfoil.isa import (SFU_ALIGN, SFU_BUFFERS, TOKEN_DEPTH, Buffer, ErrorCode, Instr,
                         Opcode, SfuFunc, Sparsity, SysOp, Unit, WeightFormat, decode)
from airfoil.packing import NM_BY_NAME, core_stream_geometry, read_records, record_tag
from airfoil.kv_banks import KvBanks
from airfoil.wgt_banks import WgtBanks
from hdl.pe.kinds import pe_kind, tag_value_bits

from .cycle_model import DISPATCH_CYCLES, ISSUE_CYCLES, CycleModel, stream_matrix_cost
from .memory import Memory, MemoryRangeError
from .llm_host import LLMHost

#: N:M sparsity code of a stream record -> pattern name of the config.
NM_NAMES = {code: name for name, code in NM_BY_NAME.items()}

__all__ = ["run_isa", "IsaSim", "fault", "IsaLLM", "generate_isa", "decode_step_cycles",
           "TraceEvent"]


class TraceEvent(NamedTuple):
    """One executed unit instruction on the simulator's clock (core cycles).

    ``start`` is when the unit (for ``LD``/``ST``: the memory channel) began it, ``end``
    when the unit could begin its next one (``start`` + busy), ``finish`` when the
    instruction's result is there for a waiting unit; ``nbytes`` the bytes an ``LD`` or
    ``ST`` moved (0 for the others); ``macs`` the multiply-accumulates of an ``MV``/``MM``
    or an attention product (0 for the others).
    """

    index: int
    unit: Unit
    start: int
    end: int
    finish: int
    nbytes: int
    macs: int


#: Unpacked weight tiles by (layout, raw bytes): a pure function of the bytes, so a tile
#: the program loads again (every decode step) is decoded once.
_TILE_CACHE: dict = {}
_TILE_CACHE_MAX = 4096


def _unpack_cached(lay, raw: bytes):
    """``unpack_tile`` and ``fp16_fixed`` of a tile, memoized on its bytes."""
    key = (lay.rows, lay.k, lay.group, lay.bits, lay.has_bias, lay.chains, lay.lanes,
           lay.align, raw)
    hit = _TILE_CACHE.get(key)
    if hit is None:
        q, scales, bias = unpack_tile(lay, raw)
        mant, kexp = fp16_fixed(scales)
        if len(_TILE_CACHE) >= _TILE_CACHE_MAX:
            _TILE_CACHE.clear()
        hit = _TILE_CACHE[key] = (q, mant, kexp, bias)
    return hit


def _up8(n: int) -> int:
    return -(-n // 8) * 8


def fault(index: int, what: str, code: ErrorCode, message: str) -> ProgramError:
    """Return a :class:`ProgramError` for instruction ``index`` with an error code."""
    e = ProgramError(f"instruction {index} ({what}): {code.name}: {message}")
    e.code = code
    e.index = index
    return e


_UNITS_OF_MASK = [tuple(u for u in Unit if mask >> u.value & 1) for mask in range(16)]


def _units(mask: int) -> tuple[Unit, ...]:
    return _UNITS_OF_MASK[mask]


class _UnitState:
    __slots__ = ("queue", "issue_free", "last_finish", "pop_time", "busy", "count")

    def __init__(self):
        self.queue = deque()        # (index, instr, dispatch time)
        self.issue_free = 0         # earliest start of the next instruction
        self.last_finish = 0        # completion of the latest instruction (in order)
        self.pop_time = 0           # when the head last left the queue (frees a slot)
        self.busy = 0
        self.count = 0


class IsaSim:
    """The simulated machine: buffers, memory, accumulators, unit queues and tokens.

    Parameters
    ----------
    config : AccelConfig
        The accelerator instance (buffer sizes, engine shape, memory timing).
    image : bytearray
        Memory image; modified in place by ``ST``.
    channel_offsets : list of int, optional
        Where each channel's memory starts in the image (default: all 0, see
        :mod:`airfoil.folder`).
    """

    def __init__(self, config: AccelConfig, image: bytearray, channel_offsets=None):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, not {config!r}")
        self.config = config
        self.model = CycleModel(config)
        self._kind = pe_kind(config.pe)
        self.mem = Memory(image, config, self.model, channel_offsets)
        b = config.buffers
        self.buffers = {Buffer.ACT: bytearray(b.act_bytes), Buffer.WGT: bytearray(b.weight_bytes),
                        Buffer.OUT: bytearray(b.out_bytes), Buffer.KV: bytearray(b.kv_bytes),
                        Buffer.AUX: bytearray(b.aux_bytes)}
        #: The WGT buffer's banks: where an LD/ST's words are in the rows the MATRIX reads.
        self.wgt_banks = WgtBanks.of(config)
        #: The KV buffer's banks: where ATT_QK and ATT_PV find a key's records.
        self.kv_banks = KvBanks.of(config)
        self.acc = torch.zeros((1, 1), dtype=torch.int64)
        self.regs = [0] * 32
        self.macs = 0
        #: The weight streams, one per slice (LD WSTREAM on channel c -> slice c): unread
        #: bytes from a word boundary, and the bit within them where the next record may
        #: start.
        S = config.slices
        self.streams = [bytearray() for _ in range(S)]
        self.stream_bits = [0] * S
        self._stream_geom = None
        #: Per slice (words, k-steps) of the last STREAM instruction.
        self._stream_cost = None
        self.stream_time = 0            # when the last LD WSTREAM's first word arrived
        #: When a list, :meth:`run` appends one :class:`TraceEvent` per unit instruction
        #: it executes (for timelines: ``airfoil report``).
        self.trace: list | None = None
        #: Words per cycle a channel streams: its bandwidth (the stream FIFO hides latency).
        self._stream_rate = min(1.0, config.channel_bytes_per_cycle / config.word_bytes)

    # -- decoding -------------------------------------------------------------------------

    @staticmethod
    def decode_all(words) -> list[Instr]:
        """Decode every word, mapping bad encodings to ILLEGAL_OPCODE or MALFORMED."""
        out = []
        for i, w in enumerate(words):
            raw = w & 0xF
            try:
                op = Opcode(raw)
            except ValueError:
                raise fault(i, f"opcode {raw}", ErrorCode.ILLEGAL_OPCODE,
                            f"unknown opcode {raw} (accepted: " +
                            ", ".join(f"{o.name}={o.value}" for o in Opcode) + ")") from None
            try:
                ins = decode(w)
            except ProgramError as e:
                raise fault(i, op.name, ErrorCode.MALFORMED, str(e)) from None
            out.append(ins)
        return out

    # -- data effects ---------------------------------------------------------------------

    def _mem_op(self, i: int, ins: Instr, write: bool) -> int:
        """Check and perform LD (``write=False``) or ST; return the bytes moved."""
        name = ins.opcode.name
        wb = self.config.word_bytes
        if ins.channel >= self.config.memory.channels:
            raise fault(i, name, ErrorCode.MALFORMED, f"channel {ins.channel} does not exist "
                        f"(config has {self.config.memory.channels})")
        count = self.regs[ins.count_reg] if ins.count_reg else ins.count
        if count < 1 or ins.nbytes < 1:
            raise fault(i, name, ErrorCode.MALFORMED,
                        f"count={count} and nbytes={ins.nbytes} must be at least 1")
        if ins.gather and write:
            raise fault(i, name, ErrorCode.MALFORMED, "gather applies to LD only")
        for key in ("buf_addr", "dram_addr", "nbytes", "dram_stride"):
            v = ins.fields[key]
            if v % wb:
                raise fault(i, name, ErrorCode.MALFORMED, f"{key}={v} is not a multiple of the "
                            f"{wb}-byte memory word")
        if ins.buf == Buffer.WSTREAM:
            return self._load_stream(i, ins, count, write)
        buf = self.buffers[ins.buf]
        end = ins.buf_addr + count * ins.nbytes
        if end > len(buf):
            raise fault(i, name, ErrorCode.BUFFER_RANGE, f"{ins.buf.name}[{ins.buf_addr:#x}:"
                        f"{end:#x}] is beyond the {len(buf)}-byte buffer")
        base = ins.dram_addr + (self.regs[ins.row_reg] * ins.dram_stride if ins.row_reg else 0)
        if ins.gather:
            idx = self._read(i, name, Buffer.AUX, ins.idx_addr, count, "<i4")
            rows = [base + int(v) * ins.dram_stride for v in idx.tolist()]
        else:
            rows = [base + r * ins.dram_stride for r in range(count)]
        banked = ins.buf == Buffer.WGT and self.wgt_banks.banks > 1
        try:
            for r, d0 in enumerate(rows):
                b0 = ins.buf_addr + r * ins.nbytes
                if banked:
                    self._banked_row(buf, b0, ins.nbytes, d0, ins.channel, write)
                elif write:
                    self.mem.write(d0, bytes(buf[b0:b0 + ins.nbytes]), ins.channel)
                else:
                    buf[b0:b0 + ins.nbytes] = self.mem.read(d0, ins.nbytes, ins.channel)
        except MemoryRangeError as e:
            raise fault(i, name, ErrorCode.AXI_ERROR, str(e)) from None
        return count * ins.nbytes

    def _write_port(self, ins: Instr):
        """The buffer write port an LD's words take: the buffer's one, or the WGT or KV
        bank its ``buf_addr`` names."""
        word = ins.buf_addr // self.config.word_bytes
        if ins.buf == Buffer.WGT:
            return (ins.buf, self.wgt_banks.bank(word))
        if ins.buf == Buffer.KV and self.kv_banks.banks > 1:
            return (ins.buf, self.kv_banks.word_map.bank(word))
        return ins.buf

    def _banked_row(self, buf, b0: int, nbytes: int, d0: int, channel: int, write: bool):
        """Move the ``nbytes`` at LD/ST address ``b0`` of a banked WGT buffer from or to
        memory at ``d0``: its words are where :meth:`~airfoil.wgt_banks.WgtBanks.
        row_major` puts them in the rows the MATRIX unit reads."""
        wb = self.config.word_bytes
        words = self.wgt_banks.row_major(np.arange(b0 // wb, (b0 + nbytes) // wb))
        rows = np.frombuffer(buf, dtype=np.uint8).reshape(-1, wb)
        if write:
            self.mem.write(d0, rows[words].tobytes(), channel)
        else:
            data = np.frombuffer(self.mem.read(d0, nbytes, channel), dtype=np.uint8)
            rows[words] = data.reshape(-1, wb)

    def _load_stream(self, i: int, ins: Instr, count: int, write: bool) -> int:
        """LD into WSTREAM: append ``count`` rows of ``nbytes`` to the weight stream of the
        channel's slice."""
        name = ins.opcode.name
        if write:
            raise fault(i, name, ErrorCode.MALFORMED, "buf=WSTREAM is for LD only (ST reads "
                        "ACT, WGT, OUT, KV or AUX)")
        if ins.gather:
            raise fault(i, name, ErrorCode.MALFORMED, "gather=1 cannot load into WSTREAM "
                        "(accepted: gather=0)")
        if not self.config.decode_unit:
            raise fault(i, name, ErrorCode.UNSUPPORTED, f"config {self.config.name!r} has no "
                        f"decode unit (it lists no int2/int3 format or N:M pattern)")
        if ins.buf_addr:
            raise fault(i, name, ErrorCode.MALFORMED, f"buf_addr={ins.buf_addr} with "
                        f"buf=WSTREAM (accepted: 0)")
        base = ins.dram_addr + (self.regs[ins.row_reg] * ins.dram_stride if ins.row_reg else 0)
        try:
            for r in range(count):
                self.streams[ins.channel] += self.mem.read(base + r * ins.dram_stride,
                                                           ins.nbytes, ins.channel)
        except MemoryRangeError as e:
            raise fault(i, name, ErrorCode.AXI_ERROR, str(e)) from None
        return count * ins.nbytes

    def _stream_holds(self, ins: Instr) -> bool:
        """Whether the weight stream holds every record a STREAM instruction needs (or is
        malformed, which its execution reports)."""
        if not self.config.decode_unit:
            return True
        if self._stream_geom is None:
            try:
                self._stream_geom = core_stream_geometry(self.config)
            except CompileError:
                return True
        cols = ins.k // ins.group if ins.group and ins.k % ins.group == 0 else 0
        need = -(-ins.rows // self.config.chains) * cols
        for stream, bit in zip(self.streams, self.stream_bits):
            try:
                recs, _ = read_records(self._stream_geom, bytes(stream), bit, need)
            except CompileError:
                return True
            if len(recs) < need:
                return False
        return True

    def _stream_records(self, i: int, name: str, count: int) -> list:
        """Take ``count`` records off every slice's weight stream (PAD skipped); return
        one list per slice."""
        if self._stream_geom is None:
            try:
                self._stream_geom = core_stream_geometry(self.config)
            except CompileError as e:
                raise fault(i, name, ErrorCode.UNSUPPORTED, str(e)) from None
        geom = self._stream_geom
        W = geom.word_bits
        out, self._stream_cost = [], []
        for c, stream in enumerate(self.streams):
            start = self.stream_bits[c]
            where = f"weight stream of channel {c}" if len(self.streams) > 1 else \
                "weight stream"
            try:
                recs, end = read_records(geom, bytes(stream), start, count)
            except CompileError as e:
                raise fault(i, name, ErrorCode.MALFORMED, f"{where}: {e}") from None
            if len(recs) < count:
                raise fault(i, name, ErrorCode.MALFORMED, f"{where} ran out: the "
                            f"instruction needs {count} records, {len(recs)} were loaded "
                            f"(LD WSTREAM before it, with a token)")
            # Words first touched by this instruction (one it shares with the previous
            # instruction was counted there).
            words = -(-end // W) - -(-start // W)
            drop = (end // W) * (W // 8)                   # whole words consumed
            del stream[:drop]
            self.stream_bits[c] = end - drop * 8
            self._stream_cost.append([words, 0])
            out.append(recs)
        return out

    def _stream_weights(self, i: int, name: str, f: dict, rows: int, k: int):
        """Weights of a STREAM matrix instruction: ``(q, mant, kexp)`` of its ``rows``."""
        group = f["group"]
        if f["sparsity"] != Sparsity.DENSE:
            raise fault(i, name, ErrorCode.MALFORMED, f"sparsity={f['sparsity'].name} with "
                        f"wfmt=STREAM (accepted: DENSE; the records name their own)")
        if f["bias"]:
            raise fault(i, name, ErrorCode.MALFORMED, "bias=1 with wfmt=STREAM (accepted: 0; "
                        "streamed weights carry no bias)")
        if not self.config.decode_unit:
            raise fault(i, name, ErrorCode.UNSUPPORTED, f"wfmt=STREAM: config "
                        f"{self.config.name!r} has no decode unit")
        chains = self.config.chains
        batches, cols = -(-rows // chains), k // group
        per_slice = self._stream_records(i, name, batches * cols)
        q = np.zeros((batches * chains, k), dtype=np.int64)
        sbits = np.zeros((batches * chains, cols), dtype=np.uint16)
        for sl, recs in enumerate(per_slice):
            ksteps = self._stream_slice(i, name, recs, sl, group, cols, q, sbits)
            self._stream_cost[sl][1] = ksteps
        scales = torch.from_numpy(sbits[:rows].astype(np.int16)).view(torch.float16)
        try:
            mant, kexp = fp16_fixed(scales)
        except CompileError as e:
            raise fault(i, name, ErrorCode.SCALE_RANGE, str(e)) from None
        return torch.from_numpy(q[:rows]), mant, kexp

    def _stream_slice(self, i, name, recs, sl, group, cols, q, sbits) -> int:
        """Place slice ``sl``'s records into ``q``/``sbits`` (its rows of every batch:
        ``j * chains + sl * slice_chains ..``); return the k-steps its chains take."""
        chains, cs = self.config.chains, self.config.slice_chains
        built = {record_tag(f) for f in self.config.stream_formats}
        ksteps = 0                     # chain cycles: k-steps times the PE's cycles per step
        for n, rc in enumerate(recs):
            if rc.group != group:
                raise fault(i, name, ErrorCode.MALFORMED, f"stream record {n} has group "
                            f"{rc.group}, the instruction's group field is {group}")
            if rc.tag not in built:
                # The unpacker is built for the config's formats only: it refuses the
                # header as malformed.
                raise fault(i, name, ErrorCode.MALFORMED, f"stream record {n} is "
                            f"{rc.tag.name}, a format config {self.config.name!r} does not "
                            f"decode (accepted: {', '.join(self.config.stream_formats)})")
            if rc.nm and NM_NAMES[rc.nm] not in self.config.sparsity:
                raise fault(i, name, ErrorCode.UNSUPPORTED, f"stream record {n} is "
                            f"{NM_NAMES[rc.nm]} sparse, not built in (config has "
                            f"{', '.join(self.config.sparsity)})")
            b, c = divmod(n, cols)
            r0 = b * chains + sl * cs
            q[r0:r0 + cs, c * group:(c + 1) * group] = rc.q
            sbits[r0:r0 + cs, c] = rc.scale_bits
            ksteps += rc.step_mask(self.config.lanes).bit_count() * self._kind.step_cycles(
                tag_value_bits(rc.tag))
        return ksteps

    # -- buffer access helpers --------------------------------------------------------

    def _span(self, i, what, buf, start, nbytes, *, sfu: bool = False):
        """``buf`` if ``nbytes`` at ``start`` lie in it (else BUFFER_RANGE); for an SFU
        operand (``sfu``) a buffer outside :data:`~airfoil.isa.SFU_BUFFERS` has no bytes."""
        if sfu and buf not in SFU_BUFFERS:
            raise fault(i, what, ErrorCode.BUFFER_RANGE, f"the SFU does not reach {buf.name} "
                        f"(it reaches {', '.join(b.name for b in SFU_BUFFERS)})")
        b = self.buffers[buf]
        if start < 0 or start + nbytes > len(b):
            raise fault(i, what, ErrorCode.BUFFER_RANGE, f"{buf.name}[{start:#x}:"
                        f"{start + nbytes:#x}] is beyond the {len(b)}-byte buffer")
        return b

    def _read(self, i, what, buf, start, count, dt) -> torch.Tensor:
        """Read ``count`` little-endian elements of numpy dtype ``dt`` as int64."""
        dt = np.dtype(dt)
        b = self._span(i, what, buf, start, count * dt.itemsize, sfu=True)
        a = np.frombuffer(b, dtype=dt, count=count, offset=start)
        return torch.from_numpy(a.astype(np.int64))

    def _write(self, i, what, buf, start, values: torch.Tensor, dt) -> None:
        raw = values.reshape(-1).numpy().astype(dt).tobytes()
        b = self._span(i, what, buf, start, len(raw), sfu=True)
        b[start:start + len(raw)] = raw

    def _records(self, i, what, buf, start, count, n, stride, group=0):
        """Read ``count`` records of ``n`` values with their scale pairs (INT8 with one
        pair, or INT4 with a pair per ``group`` values: :func:`airfoil.fixedpoint.
        dequant_record_layout`)."""
        size = fx.dequant_record_bytes(n, group)
        self._span(i, what, buf, start, (count - 1) * stride + size, sfu=True)
        return self._records_at(buf, start + np.arange(count) * stride, n, group)

    def _records_at(self, buf, starts: np.ndarray, n: int, group: int = 0):
        """The records (as :meth:`_records`) at byte addresses ``starts`` of ``buf``
        (already checked to lie in it)."""
        size = fx.dequant_record_bytes(n, group)
        raw = np.frombuffer(self.buffers[buf], dtype=np.uint8)
        return fx.decode_records(raw[starts[:, None] + np.arange(size)[None, :]], n, group)

    def _matrix(self, i: int, ins: Instr) -> None:
        """Check and perform MV/MM (see :data:`airfoil.isa.MATRIX_LAYOUT`)."""
        cfg = self.config
        name = ins.opcode.name
        f = ins.fields
        m, rows, k, group = f["m"], f["rows"], f["k"], f["group"]
        if f["m_reg"]:
            if ins.opcode == Opcode.MV:
                raise fault(i, name, ErrorCode.MALFORMED, "MV takes no m_reg (m is 1)")
            m = self.regs[f["m_reg"]]
        wb = cfg.word_bytes
        astride = f["astride"] * wb or k
        if ins.opcode == Opcode.MV and m != 1:
            raise fault(i, name, ErrorCode.MALFORMED, f"MV takes one vector (m=1), not m={m}")
        if m < 1 or rows < 1 or k < 1:
            raise fault(i, name, ErrorCode.MALFORMED,
                        f"m={m}, rows={rows} and k={k} must be at least 1")
        fmt = f["wfmt"].name.lower()
        stream = f["wfmt"] == WeightFormat.STREAM
        if not stream and fmt not in cfg.tile_formats:
            raise fault(i, name, ErrorCode.UNSUPPORTED, f"WGT tiles of {fmt} are not built in "
                        f"(config's tile formats: {', '.join(cfg.tile_formats)})")
        if f["sparsity"] != Sparsity.DENSE and not stream:
            raise fault(i, name, ErrorCode.UNSUPPORTED,
                        f"sparsity {f['sparsity'].name} is not built in")
        if group not in cfg.group_sizes:
            raise fault(i, name, ErrorCode.UNSUPPORTED, f"group size {group} is not built in "
                        f"(config has {', '.join(map(str, cfg.group_sizes))})")
        if stream and m > cfg.limits.stream_tokens:
            raise fault(i, name, ErrorCode.UNSUPPORTED, f"m={m} vectors on streamed weights: "
                        f"the streamed engine applies a record to at most "
                        f"{cfg.limits.stream_tokens} (config limits.stream_tokens)")
        if stream and m > 1 and not f["acc_init"]:
            raise fault(i, name, ErrorCode.UNSUPPORTED, f"acc_init=0 with m={m} vectors on "
                        f"streamed weights (the streamed engine continues one vector)")
        if k % group:
            raise fault(i, name, ErrorCode.MALFORMED,
                        f"k={k} is not a multiple of the group size {group}")
        out_bits = OUT_BITS[f["out_fmt"]]
        ob = out_bits // 8
        wgt, act, out = (self.buffers[b] for b in (Buffer.WGT, Buffer.ACT, Buffer.OUT))
        w0, a0, o0 = f["wbuf_addr"], f["abuf_addr"], f["obuf_addr"]
        if stream:
            w0, lay = 0, None
        else:
            lay = tile_layout(rows=rows, k=k, group=group, wfmt=f["wfmt"], chains=cfg.chains,
                              lanes=cfg.lanes, bias=bool(f["bias"]), align=cfg.word_bytes)
        ostride = f["ostride"] * wb or rows * ob
        for bname, start, size, buf in (("WGT", w0, lay.nbytes if lay else 0, wgt),
                                        ("ACT", a0, (m - 1) * astride + k, act),
                                        ("OUT", o0, (m - 1) * ostride + rows * ob
                                         if f["final"] else 0, out)):
            if start + size > len(buf):
                raise fault(i, name, ErrorCode.BUFFER_RANGE, f"{bname}[{start:#x}:"
                            f"{start + size:#x}] is beyond the {len(buf)}-byte buffer")
        batches = m * -(-rows // cfg.chains)
        if (not f["acc_init"] or not f["final"]) and batches > cfg.k_split_batches:
            raise fault(i, name, ErrorCode.UNSUPPORTED, f"a K-split instruction (acc_init="
                        f"{f['acc_init']}, final={f['final']}) over {batches} batches of "
                        f"{cfg.chains} accumulators: the MATRIX unit keeps "
                        f"{cfg.k_split_batches} (config k_split_batches)")
        k0 = f["k0"]
        if stream:
            q, mant, kexp = self._stream_weights(i, name, f, rows, k)
            bias = None
        else:
            try:
                q, mant, kexp, bias = _unpack_cached(lay, bytes(wgt[w0:w0 + lay.nbytes]))
            except CompileError as e:
                raise fault(i, name, ErrorCode.SCALE_RANGE, str(e)) from None
        shift = kexp - k0
        if int(shift.min()) < 0 or int(shift.max()) > SCALE_SHIFT_MAX:
            raise fault(i, name, ErrorCode.SCALE_RANGE, f"group scale shifts "
                        f"{int(shift.min())}..{int(shift.max())} with k0={k0} are outside "
                        f"0..{SCALE_SHIFT_MAX}")
        raw = np.frombuffer(act, dtype=np.int8, count=(m - 1) * astride + k, offset=a0)
        x = np.lib.stride_tricks.as_strided(raw, shape=(m, k), strides=(astride, 1))
        x = torch.from_numpy(x.astype(np.int64))
        scaled = rescale(group_psum(q, x, group), mant, kexp, k0)      # (m, rows, groups)
        if f["acc_init"]:
            acc = accumulate(scaled, bias=bias if f["bias"] else None)
        else:
            acc = accumulate(scaled, acc=self._acc_view(m, rows))
        self._acc_store(acc)
        if f["final"]:
            if f["tok_scale"]:
                sc = self._read(i, name, Buffer.AUX, f["sbuf_addr"], 2 * m, "<i4").reshape(m, 2)
                bad = (sc[:, 0] < 0) | (sc[:, 0] >= 1 << REQ_M_BITS)
                if bad.any():
                    raise fault(i, name, ErrorCode.SCALE_RANGE, f"token scale sm="
                                f"{int(sc[bad, 0][0])} at AUX[{f['sbuf_addr']:#x}+] is "
                                f"outside 0..{(1 << REQ_M_BITS) - 1}")
                M, S = fx.linear_out_params(sc[:, 0], sc[:, 1], k0)
                res = fx.requantize_rows(acc, M, S, out_bits)
            else:
                res = requantize(acc, f["req_m"], f["req_s"], out_bits)
            res = res.numpy().astype(OUT_DTYPES[out_bits])
            for j in range(m):
                out[o0 + j * ostride:o0 + j * ostride + rows * ob] = res[j].tobytes()
        self.macs += m * rows * k
        return m

    def _acc_view(self, m: int, rows: int) -> torch.Tensor:
        if self.acc.shape[0] < m or self.acc.shape[1] < rows:
            grown = torch.zeros((max(m, self.acc.shape[0]), max(rows, self.acc.shape[1])),
                                dtype=torch.int64)
            grown[:self.acc.shape[0], :self.acc.shape[1]] = self.acc
            self.acc = grown
        return self.acc[:m, :rows]

    def _acc_store(self, acc: torch.Tensor) -> None:
        m, rows = acc.shape
        self._acc_view(m, rows)[...] = acc

    def _sfu_args(self, ins: Instr) -> dict:
        """An SFU instruction's arguments with its registers read (as the unit sees them)."""
        f = ins.fields
        reg = lambda name: self.regs[f[name]] if f[name] else 0     # noqa: E731
        return {"n": f["n"], "rows": reg("rows_reg") if f["rows_reg"] else f["rows"],
                "heads": f["heads"] or 1, "kv_heads": f["kv_heads"], "pos": reg("pos_reg"),
                "length": reg("len_reg"), "src_addr": f["src_addr"],
                "aux_addr": f["aux_addr"], "dst_addr": f["dst_addr"], "imm0": f["imm0"],
                "imm1": f["imm1"]}

    def _sfu(self, i: int, ins: Instr):
        """Perform one SFU instruction; return ``(elements, macs)`` for the cost model."""
        f = ins.fields
        for key in ("src", "dst", "aux"):
            if f[key] == Buffer.WSTREAM:
                raise fault(i, "SFU", ErrorCode.MALFORMED, f"{key}=WSTREAM (the weight stream "
                            f"is for LD only; accepted: "
                            f"{', '.join(b.name for b in SFU_BUFFERS)})")
        if f["func"] != SfuFunc.COPY:
            return self._sfu_func(i, ins)
        n = f["n"]
        if n < 1:
            raise fault(i, "SFU", ErrorCode.MALFORMED, "n must be at least 1")
        self._check_built(i, "SFU COPY", SfuFunc.COPY)
        src = self._span(i, "SFU", f["src"], f["src_addr"], n, sfu=True)
        dst = self._span(i, "SFU", f["dst"], f["dst_addr"], n, sfu=True)
        data = bytes(src[f["src_addr"]:f["src_addr"] + n])
        dst[f["dst_addr"]:f["dst_addr"] + n] = data
        return n, 0

    def _check_built(self, i: int, what: str, fn: SfuFunc) -> None:
        """UNSUPPORTED unless the config builds ``fn`` (``sfu_funcs``), checked where the
        unit checks it: after the MALFORMED checks, before any access."""
        if fn not in self.config.sfu_functions:
            raise fault(i, what, ErrorCode.UNSUPPORTED, f"config {self.config.name!r} does "
                        f"not build the SFU function {fn.name} (sfu_funcs: "
                        f"{', '.join(self.config.sfu_funcs)})")

    def _sfu_func(self, i: int, ins: Instr):
        f = ins.fields
        fn = f["func"]
        what = f"SFU {fn.name}"
        n = f["n"]
        rows = self.regs[f["rows_reg"]] if f["rows_reg"] else f["rows"]
        hs = f["heads"] or 1
        for key, align in SFU_ALIGN.get(fn, {}).items():
            if f[key] % align:
                raise fault(i, what, ErrorCode.MALFORMED, f"{key}={f[key]} is not a multiple "
                            f"of {align} bytes (the operand's element size)")
        rowwise = fn in (SfuFunc.QUANT_TOKEN, SfuFunc.RMSNORM, SfuFunc.ROPE, SfuFunc.SILU,
                         SfuFunc.MUL, SfuFunc.ADD, SfuFunc.GELU, SfuFunc.RELU,
                         SfuFunc.LAYERNORM)
        if n < 1 or rows < 1 or (rowwise and n % hs):
            raise fault(i, what, ErrorCode.MALFORMED, f"n={n} and rows={rows} must be at least "
                        f"1 and n a multiple of heads={hs}")
        src, dst, aux = f["src"], f["dst"], f["aux"]
        sa, da, xa = f["src_addr"], f["dst_addr"], f["aux_addr"]
        I32 = "<i4"
        H, KV, hd = hs, f["kv_heads"], n
        L = self.regs[f["len_reg"]] if f["len_reg"] else 0
        attention = fn in (SfuFunc.ATT_QK, SfuFunc.ATT_PV)
        if attention and (KV < 1 or H % KV or L < 1):
            raise fault(i, what, ErrorCode.MALFORMED, f"heads={H}, kv_heads={KV} and keys={L} "
                        f"must be positive, heads a multiple of kv_heads")
        if fn == SfuFunc.SOFTMAX and L < 1:
            raise fault(i, what, ErrorCode.MALFORMED, f"keys={L} must be at least 1")
        # On a banked KV buffer (airfoil.kv_banks) the records lie in the banks by key.
        banks = self.kv_banks if self.kv_banks.banks > 1 else None
        if attention and banks is not None and aux != Buffer.KV:
            raise fault(i, what, ErrorCode.MALFORMED, f"records must be in the KV buffer of "
                        f"{banks.banks} banks, not in {aux.name}")
        self._check_built(i, what, fn)
        if rowwise:
            x = self._read(i, what, src, sa, rows * n, I32).reshape(rows, n)
            if fn == SfuFunc.QUANT_TOKEN:
                seg = n // hs
                q, sm, se = fx.quant_per_token(x.reshape(rows * hs, seg))
                dstride = f["imm0"] or seg
                sstride = f["imm1"] or 8
                for r in range(rows * hs):
                    self._write(i, what, dst, da + r * dstride, q[r], "<i1")
                    self._write(i, what, aux, xa + r * sstride,
                                torch.stack([sm[r], se[r]]), I32)
                return rows * n, 0
            if fn in (SfuFunc.RMSNORM, SfuFunc.LAYERNORM):
                g = self._read(i, what, aux, xa, n, I32)
                norm = fx.rmsnorm if fn == SfuFunc.RMSNORM else fx.layernorm_centred
                y = norm(x, g, 0.0, eps_q60=(f["imm1"] << 32) | f["imm0"])
            elif fn == SfuFunc.ROPE:
                hd = n // hs
                if hd % 2:
                    raise fault(i, what, ErrorCode.MALFORMED, f"the head dimension "
                                f"n/heads = {hd} must be even (RoPE rotates pairs)")
                stride = f["imm1"] or 2 * hd
                tab = torch.stack([self._read(i, what, aux, xa + r * stride, hd, "<i2")
                                   for r in range(rows)])
                cos, sin = tab[:, :hd // 2], tab[:, hd // 2:]
                y = fx.rope(x.reshape(rows, hs, hd).transpose(0, 1), cos, sin)
                y = y.transpose(0, 1).reshape(rows, n)
            elif fn == SfuFunc.SILU:
                y = fx.silu(x)
            elif fn == SfuFunc.GELU:
                y = fx.gelu(x)
            elif fn == SfuFunc.RELU:
                y = fx.relu(x)
            elif fn == SfuFunc.ADD and f["imm0"]:       # one row onto every row
                y = fx.add(x, self._read(i, what, aux, xa, n, I32).reshape(1, n))
            else:
                b = self._read(i, what, aux, xa, rows * n, I32).reshape(rows, n)
                y = fx.mul(x, b) if fn == SfuFunc.MUL else fx.add(x, b)
            self._write(i, what, dst, da, y, I32)
            return rows * n, 0
        if fn == SfuFunc.DEQUANT_ROW:
            group = f["imm1"]
            stride = f["imm0"] or fx.dequant_record_bytes(n, group)
            q, sm, se = self._records(i, what, src, sa, rows, n, stride, group)
            self._span(i, what, dst, da, 4 * rows * n, sfu=True)
            self._write(i, what, dst, da, fx.dequant_groups(q, sm, se, group), I32)
            return rows * n, 0
        if fn == SfuFunc.TOPK_SAMPLE:
            k, inv_t, seed = self._read(i, what, aux, xa, 3, "<u4").tolist()
            kmax = self.config.limits.topk_max
            if not 1 <= k <= kmax or not 1 <= inv_t < 1 << fx.INV_TEMP_BITS:
                raise fault(i, what, ErrorCode.MALFORMED, f"k={k} must be 1..{kmax} "
                            f"and the inverse temperature {inv_t} 1..2**{fx.INV_TEMP_BITS}-1")
            stride = f["imm0"] or 4 * n
            self._span(i, what, src, sa, (rows - 1) * stride + 4 * n, sfu=True)
            logits = torch.stack([self._read(i, what, src, sa + r * stride, n, I32)
                                  for r in range(rows)])
            pos = self.regs[f["pos_reg"]] if f["pos_reg"] else 0
            u = [fx.sample_uniform(seed, pos + r) for r in range(rows)]
            self._span(i, what, dst, da, 4 * rows, sfu=True)
            self._write(i, what, dst, da, fx.topk_sample(logits, k, inv_t, u), I32)
            return rows * n, 0
        if fn == SfuFunc.SOFTMAX:
            s = self._read(i, what, src, sa, rows * H * L, I32).reshape(rows, H, L)
            pos = self.regs[f["pos_reg"]] if f["pos_reg"] else 0
            mask = fx.attention_mask(pos, rows, L, f["imm0"], causal=not f["imm1"]
                                     ).unsqueeze(1).expand(rows, H, L)
            if bool(mask.all(dim=-1).any()):
                raise fault(i, what, ErrorCode.MALFORMED, f"a query row at positions "
                            f"{pos}..{pos + rows - 1} sees none of the {L} keys")
            self._write(i, what, dst, da, fx.softmax(s, mask), I32)
            return rows * H * L, 0
        max_hd = self.config.limits.att_pv_max_head_dim
        if fn == SfuFunc.ATT_PV and hd > max_hd:
            raise fault(i, what, ErrorCode.UNSUPPORTED, f"head dimension n={hd} is over the "
                        f"{max_hd} the context accumulator holds (config "
                        f"limits.att_pv_max_head_dim)")
        # The (R, heads, L) scores or probabilities bound L by their buffer: check their
        # span, then the key/value records', before any record is read.
        if attention:
            if banks is not None and (banks.misaligned(xa, f["imm1"]) or (
                    fn == SfuFunc.ATT_QK and banks.misaligned(sa, f["imm0"]))):
                raise fault(i, what, ErrorCode.MALFORMED, f"records on the {banks.banks} "
                            f"KV banks must start on {banks.word_bytes}-byte words "
                            f"(aux_addr, imm1{', src_addr, imm0' * (fn == SfuFunc.ATT_QK)})")
            scores = (dst, da) if fn == SfuFunc.ATT_QK else (src, sa)
            self._span(i, what, *scores, 4 * rows * H * L, sfu=True)
            if banks is None:
                self._span(i, what, aux, xa, (L * KV - 1) * f["imm1"] + _up8(hd) + 8,
                           sfu=True)
            elif xa + banks.span(L, KV, f["imm1"], _up8(hd) + 8) > banks.bank_bytes:
                raise fault(i, what, ErrorCode.BUFFER_RANGE, f"records of {L} keys at "
                            f"{xa:#x} reach beyond a {banks.bank_bytes}-byte KV bank")
        g = H // KV
        # Keys are taken in chunks so that a long key range with a short record stride
        # never holds more than about 2**22 record values at once.
        chunk = max(1, (1 << 22) // max(1, KV * hd))

        def keys(first, count):
            if banks is not None:
                v, sm, se = self._records_at(aux, banks.records(xa, first, count, KV,
                                                                f["imm1"]), hd)
            else:
                v, sm, se = self._records(i, what, aux, xa + first * KV * f["imm1"],
                                          count * KV, hd, f["imm1"])
            return (v.reshape(count, KV, hd).permute(1, 0, 2).unsqueeze(1),   # (KV, 1, l, d)
                    sm.reshape(count, KV).t().unsqueeze(1),
                    se.reshape(count, KV).t().unsqueeze(1))

        if fn == SfuFunc.ATT_QK:
            q, q_sm, q_se = self._records(i, what, src, sa, rows * H, hd, f["imm0"])
            q = q.reshape(rows, KV, g, hd).permute(1, 2, 0, 3)                # (KV, g, T, d)
            q_sm = q_sm.reshape(rows, KV, g).permute(1, 2, 0)
            q_se = q_se.reshape(rows, KV, g).permute(1, 2, 0)
            sc = torch.cat([fx.attention_scores(q, q_sm, q_se, *keys(a, min(chunk, L - a)))
                            for a in range(0, L, chunk)], dim=-1)           # (KV, g, T, L)
            self._write(i, what, dst, da, sc.permute(2, 0, 1, 3), I32)
            return rows * H * L, rows * H * L * hd
        if fn == SfuFunc.ATT_PV:
            p = self._read(i, what, src, sa, rows * H * L, I32).reshape(rows, KV, g, L)
            p = p.permute(1, 2, 0, 3)
            acc = 0
            for a in range(0, L, chunk):
                v, v_sm, v_se = keys(a, min(chunk, L - a))
                w = fx.attention_weights(p[..., a:a + v.shape[-2]], v_sm, v_se)
                acc = acc + w.to(torch.int64) @ v
            o = fx.context_out(acc)                                              # (KV, g, T, d)
            self._write(i, what, dst, da, o.permute(2, 0, 1, 3), I32)
            return rows * H * L, rows * H * L * hd
        raise fault(i, what, ErrorCode.UNSUPPORTED, f"function {fn.name} is not built in")

    @classmethod
    def prepare(cls, words) -> list[Instr]:
        """Decode a program and check its token fields."""
        instrs = cls.decode_all(words)
        for i, ins in enumerate(instrs):
            cls._check_tokens(i, ins)
        return instrs

    # -- scheduling -----------------------------------------------------------------------

    @staticmethod
    def _check_tokens(i: int, ins: Instr) -> None:
        own = ins.unit
        if own is None:
            if ins.wait or ins.release:
                raise fault(i, "SYS", ErrorCode.MALFORMED,
                            "SYS instructions take no wait/release tokens")
        elif (ins.wait | ins.release) >> own.value & 1:
            raise fault(i, ins.opcode.name, ErrorCode.MALFORMED,
                        f"a {own.name} instruction cannot wait for or release its own unit")

    def run(self, words, instrs: list[Instr] | None = None) -> dict:
        """Execute a program to its HALT; return the statistics.

        ``instrs`` may give the program already decoded (and token-checked) by
        :meth:`prepare`, so a program run many times is decoded once.
        """
        if instrs is None:
            instrs = self.prepare(words)
        n = len(instrs)
        depth = self.config.instr_queue_depth
        units = {u: _UnitState() for u in Unit}
        fifos = {(a, b): deque() for a in Unit for b in Unit}
        token_log = {(a, b): [] for a in Unit for b in Unit}
        #: The LOAD unit's instructions in program order from ``loads_dropped`` on:
        #: (token cell, own completion, trace position); see _held_back.
        loads, loads_dropped = [], 0
        pc = 0
        disp_free = 0
        end_time = None
        executed = 0
        while True:
            best = None
            for u in Unit:
                st = units[u]
                if not st.queue:
                    continue
                idx, ins, dtime = st.queue[0]
                t = max(st.issue_free, dtime + DISPATCH_CYCLES)
                blocked = False
                for w in _units(ins.wait):
                    fifo = fifos[(w, u)]
                    if not fifo:
                        blocked = True
                        break
                    t = max(t, fifo[0][0])
                if blocked:
                    continue
                if ins.opcode in (Opcode.LD, Opcode.ST) and \
                        ins.channel < self.config.memory.channels:
                    t = max(t, self.mem.channel_free[ins.channel])
                if ins.opcode == Opcode.LD and ins.gather:
                    t = max(t, st.last_finish)      # its indices were loaded before it
                if ins.opcode in (Opcode.MV, Opcode.MM) and \
                        ins.wfmt == WeightFormat.STREAM:
                    # The weight stream is a FIFO: wait until LOAD has put its records in.
                    if not self._stream_holds(ins):
                        continue
                    t = max(t, self.stream_time)
                if best is None or t < best[0]:
                    best = (t, u)
            if end_time is None and pc < n:
                ins = instrs[pc]
                t = disp_free
                ready = True
                if ins.opcode == Opcode.SYS and ins.op in (SysOp.HALT, SysOp.BARRIER,
                                                           SysOp.LDREG):
                    if any(units[u].queue for u in Unit):
                        ready = False
                    else:
                        t = max([t] + [units[u].last_finish for u in Unit])
                elif ins.opcode != Opcode.SYS:
                    st = units[ins.unit]
                    if len(st.queue) >= depth:
                        ready = False
                    else:
                        t = max(t, st.pop_time)
                if ready and (best is None or t < best[0]):
                    best = (t, None)
            if best is None:
                if end_time is not None:
                    break
                if pc >= n and not any(units[u].queue for u in Unit):
                    raise fault(n, "end", ErrorCode.PROGRAM_END,
                                f"the program ran past its {n} instructions without SYS HALT")
                head = units[Unit.MATRIX].queue
                if head and head[0][1].wfmt == WeightFormat.STREAM:
                    # Starved of stream data no load will bring: report what is missing.
                    self._matrix(head[0][0], head[0][1])
                self._deadlock(units, fifos)
            t, u = best
            if u is None:
                ins = instrs[pc]
                if ins.opcode == Opcode.SYS:
                    disp_free = t + (self.model.ldreg(ins.value) if ins.op == SysOp.LDREG
                                     else self.model.sys()).busy
                    if ins.op == SysOp.HALT:
                        end_time = t
                    elif ins.op == SysOp.SETREG:
                        self.regs[ins.reg] = ins.value
                    elif ins.op == SysOp.LDREG:
                        try:
                            raw = self.mem.read(ins.value, 4, 0)
                        except MemoryRangeError as e:
                            raise fault(pc, "SYS LDREG", ErrorCode.AXI_ERROR, str(e)) from None
                        self.regs[ins.reg] = int.from_bytes(raw, "little")
                    executed += 1
                else:
                    units[ins.unit].queue.append((pc, ins, t))
                    disp_free = t + DISPATCH_CYCLES
                pc += 1
                continue
            st = units[u]
            idx, ins, _ = st.queue.popleft()
            st.pop_time = t
            for w in _units(ins.wait):
                fifos[(w, u)].popleft()
                token_log[(w, u)].append((t, 0, idx))
            op = ins.opcode
            nbytes, begin, macs = 0, t, 0
            port_loads = ()
            if op in (Opcode.LD, Opcode.ST):
                nbytes = self._mem_op(idx, ins, write=op == Opcode.ST)
                begin, cost = self.mem.transfer(ins.channel, t, nbytes, write=op == Opcode.ST)
                st.issue_free = begin + ISSUE_CYCLES
                finish = begin + cost.latency
                if op == Opcode.LD and ins.buf != Buffer.WSTREAM:
                    port_loads = self.mem.buffer_write(self._write_port(ins), ins.channel,
                                                       begin, nbytes)
                    finish += port_loads[0][1]
                if op == Opcode.LD and ins.buf == Buffer.WSTREAM:
                    self.stream_time = max(self.stream_time, begin +
                                           self.config.memory.latency_of(ins.channel))
            else:
                if op == Opcode.SFU:
                    macs = self._sfu(idx, ins)[1]
                    cost = self.model.sfu_call(ins.func, **self._sfu_args(ins))
                else:
                    macs = self.macs
                    m = self._matrix(idx, ins)
                    macs = self.macs - macs
                    if ins.wfmt == WeightFormat.STREAM:
                        cost = stream_matrix_cost(self._stream_cost, m, self._stream_rate,
                                                  token_scale=bool(ins.tok_scale))
                    else:
                        cost = self.model.matrix(
                            ins.rows, ins.k, m, wfmt=ins.wfmt, final=bool(ins.final),
                            group=ins.group,
                            use_init=bool((ins.bias and ins.acc_init) or not ins.acc_init))
                st.issue_free = t + cost.busy
                finish = t + cost.latency
            own_finish = finish
            finish = max(finish, st.last_finish)
            st.last_finish = finish
            st.busy += cost.busy
            if self.trace is not None:
                self.trace.append(TraceEvent(idx, u, int(begin), int(begin + cost.busy),
                                             int(finish), nbytes, int(macs)))
            # A token is a cell holding its time: a later LD that slows an earlier one at a
            # shared buffer write port moves the earlier one's tokens (see _held_back).
            cell = [finish]
            if u == Unit.LOAD:
                loads.append([cell, own_finish, len(self.trace) - 1 if self.trace else None])
                if port_loads:
                    port_loads[0][0].owner = len(loads) - 1 + loads_dropped
                    loads_dropped = self._held_back(st, loads, loads_dropped,
                                                    port_loads[1:], t)
            st.count += 1
            executed += 1
            for r in _units(ins.release):
                fifos[(u, r)].append(cell)
                token_log[(u, r)].append((cell, 1, idx))
        self._check_token_depth(token_log)
        # The core's start (CSR kick, first fetch) and HALT drain, paid by no instruction.
        stats = {"cycles": int(end_time) + self.model.program_overhead(),
                 "instructions": executed,
                 "macs": self.macs, "bytes_read": self.mem.bytes_read,
                 "bytes_written": self.mem.bytes_written}
        for u in Unit:
            stats[f"busy_{u.name.lower()}"] = units[u].busy
            stats[f"count_{u.name.lower()}"] = units[u].count
        return stats

    def _held_back(self, st: _UnitState, loads: list, dropped: int, grown, now: int) -> int:
        """Move the completions of the LOAD unit's instructions that a shared buffer write
        port (:meth:`~sim.memory.Memory.buffer_write`) now holds back longer: ``grown``
        lists ``(PortLoad, cycles)``, each load's ``owner`` its index among the unit's
        instructions. Its own completion moves by ``cycles``, and the completions of it and
        of every later instruction of the unit stay in program order (their token cells,
        trace events and the unit's ``last_finish`` with them). ``loads`` holds the
        instructions from index ``dropped`` on; those complete before ``now`` are dropped
        (no port can move them any more). Returns the new ``dropped``."""
        if grown:
            first = len(loads)
            for ld, cycles in grown:
                k = ld.owner - dropped
                loads[k][1] += cycles
                first = min(first, k)
            done = loads[first - 1][0][0] if first else 0
            for cell, own, at in loads[first:]:
                cell[0] = done = max(own, done)
                if at is not None:
                    self.trace[at] = self.trace[at]._replace(finish=int(done))
            st.last_finish = done
        keep = 0
        while keep < len(loads) - 1 and loads[keep][0][0] <= now:
            keep += 1
        del loads[:keep]
        return dropped + keep

    @staticmethod
    def _deadlock(units, fifos):
        blocked = []
        for u in Unit:
            if units[u].queue:
                idx, ins, _ = units[u].queue[0]
                need = [w for w in _units(ins.wait) if not fifos[(w, u)]]
                blocked.append((idx, ins, u, need))
        idx, ins, u, need = min(blocked, key=lambda b: b[0])
        raise fault(idx, ins.opcode.name, ErrorCode.DEADLOCK,
                    f"{u.name} waits for a token from {', '.join(w.name for w in need)} that "
                    f"no queued or later instruction can release first")

    @staticmethod
    def _check_token_depth(token_log):
        for (a, b), events in token_log.items():
            level = 0
            for time, kind, idx in sorted((t[0] if kind else t, kind, idx)
                                          for t, kind, idx in events):
                level += 1 if kind else -1
                if level > TOKEN_DEPTH:
                    raise fault(idx, f"{a.name} release", ErrorCode.MALFORMED,
                                f"token FIFO {a.name}->{b.name} would hold more than "
                                f"{TOKEN_DEPTH} tokens")


def run_isa(folder, config: AccelConfig, x_q=None) -> tuple[torch.Tensor, dict]:
    """Run a compiled folder on the ISA simulator.

    Parameters
    ----------
    folder : Folder or path
        The compiled output folder.
    config : AccelConfig
        The configuration to simulate; the folder must have been compiled for it.
    x_q : sequence of int, optional
        INT8 input vector (default: the folder's stored input).

    Returns
    -------
    (torch.Tensor, dict)
        The output vector (int64, shape (N,)) and statistics: ``cycles`` (when HALT
        retires), ``instructions`` (executed), per unit ``busy_<unit>`` (the sum of its
        instructions' busy cycles; for LOAD and STORE summed over the channels, so it may
        exceed ``cycles``) and ``count_<unit>``, ``macs``, ``bytes_read``,
        ``bytes_written``.
    """
    if not isinstance(folder, Folder):
        folder = load_folder(folder, config)
    if folder.manifest["config_hash"] != config.config_hash:
        raise AirfoilError(f"folder compiled for config hash {folder.manifest['config_hash']}, "
                           f"but config {config.name!r} has hash {config.config_hash}")
    program = folder.program
    if program.config_hash != config.config_hash_bytes:
        raise ProgramError(f"program compiled for config hash {program.config_hash.hex()}, "
                           f"but config {config.name!r} has hash {config.config_hash}")
    image = folder.image_with_input(x_q)
    sim = IsaSim(config, image, folder.channel_offsets)
    stats = sim.run(program.words)
    return folder.read_output(image), stats


class IsaLLM(LLMHost):
    """One sequence of an LLM folder on the ISA simulator (parameters: :class:`LLMHost`)."""

    def __init__(self, folder, config: AccelConfig, *, trace: bool = False, sampling=None):
        super().__init__(folder, config, sampling)
        self._decoded = {phase: (prog.words, IsaSim.prepare(prog.words))
                         for phase, prog in self.programs.items()}
        #: Keep each run's :class:`TraceEvent` list as its stats' ``trace``.
        self.keep_trace = trace

    def execute(self, phase: str, T: int) -> dict:
        words, instrs = self._decoded[phase]
        sim = IsaSim(self.config, self.image, self.folder.channel_offsets)
        if self.keep_trace:
            sim.trace = []
        stats = sim.run(words, instrs)
        if sim.trace is not None:
            stats["trace"] = sim.trace
        return stats


def decode_step_cycles(folder, config: AccelConfig, position: int | None = None) -> dict:
    """What the cycle model says one decode step costs at ``position`` (default: the
    position after a full prompt, ``max_prompt``): ``{"position", "cycles",
    "instructions", "bytes_read"}`` and each unit's ``busy_<unit>`` cycles. The KV cache's
    content does not change the timing, so no prefill runs first."""
    mm = folder.manifest["model"]
    pos = min(mm["max_prompt"], mm["max_positions"] - 1) if position is None else position
    if not 0 <= pos < mm["max_positions"]:
        raise AirfoilError(f"decode position {pos} is outside 0..{mm['max_positions'] - 1}, "
                           f"the positions the folder's KV cache holds")
    llm = IsaLLM(folder, config)
    llm.position = pos
    llm.decode(0)
    st = llm.runs[-1]
    return {"position": pos, "cycles": st["cycles"], "instructions": st["instructions"],
            "bytes_read": st["bytes_read"],
            **{k: v for k, v in st.items() if k.startswith("busy_")}}


def generate_isa(folder, config: AccelConfig, prompt, max_new_tokens: int, *, sampling=None
                 ) -> tuple[list[int], list[dict]]:
    """Generation on the ISA simulator (greedy unless ``sampling``, an
    :class:`airfoil.fixedpoint.Sampling`, says otherwise); return the new tokens and
    per-run stats."""
    llm = IsaLLM(folder, config, sampling=sampling)
    return llm.generate(prompt, max_new_tokens), llm.runs
