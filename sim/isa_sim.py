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

Faults raise :class:`airfoil.errors.ProgramError` whose message names the instruction
index and the :class:`airfoil.isa.ErrorCode`; the exception carries ``code`` and
``index`` attributes.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError, CompileError, ProgramError
from airfoil.folder import OUT_DTYPES, Folder, load_folder
from airfoil.formats import (OUT_BITS, SCALE_SHIFT_MAX, accumulate, fp16_fixed, group_psum,
                             requantize, rescale, tile_layout, unpack_tile)
from airfoil.isa import (TOKEN_DEPTH, Buffer, ErrorCode, Instr, Opcode, Sparsity, SysOp, Unit,
                         decode)

from .cycle_model import DISPATCH_CYCLES, ISSUE_CYCLES, CycleModel
from .memory import Memory, MemoryRangeError

__all__ = ["run_isa", "IsaSim", "fault"]


def fault(index: int, what: str, code: ErrorCode, message: str) -> ProgramError:
    """Return a :class:`ProgramError` for instruction ``index`` with an error code."""
    e = ProgramError(f"instruction {index} ({what}): {code.name}: {message}")
    e.code = code
    e.index = index
    return e


def _units(mask: int) -> list[Unit]:
    return [u for u in Unit if mask >> u.value & 1]


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
        Memory image from the data base address; modified in place by ``ST``.
    """

    def __init__(self, config: AccelConfig, image: bytearray):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, not {config!r}")
        self.config = config
        self.model = CycleModel(config)
        self.mem = Memory(image, config, self.model)
        b = config.buffers
        self.buffers = {Buffer.ACT: bytearray(b.act_bytes), Buffer.WGT: bytearray(b.weight_bytes),
                        Buffer.OUT: bytearray(b.out_bytes), Buffer.KV: bytearray(b.kv_bytes),
                        Buffer.AUX: bytearray(b.aux_bytes)}
        self.acc = torch.zeros((1, 1), dtype=torch.int64)
        self.regs = [0] * 32
        self.macs = 0

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
        if ins.count < 1 or ins.nbytes < 1:
            raise fault(i, name, ErrorCode.MALFORMED,
                        f"count={ins.count} and nbytes={ins.nbytes} must be at least 1")
        for key in ("buf_addr", "dram_addr", "nbytes", "dram_stride"):
            v = ins.fields[key]
            if v % wb:
                raise fault(i, name, ErrorCode.MALFORMED, f"{key}={v} is not a multiple of the "
                            f"{wb}-byte memory word")
        buf = self.buffers[ins.buf]
        end = ins.buf_addr + ins.count * ins.nbytes
        if end > len(buf):
            raise fault(i, name, ErrorCode.BUFFER_RANGE, f"{ins.buf.name}[{ins.buf_addr:#x}:"
                        f"{end:#x}] is beyond the {len(buf)}-byte buffer")
        try:
            for r in range(ins.count):
                b0 = ins.buf_addr + r * ins.nbytes
                d0 = ins.dram_addr + r * ins.dram_stride
                if write:
                    self.mem.write(d0, bytes(buf[b0:b0 + ins.nbytes]))
                else:
                    buf[b0:b0 + ins.nbytes] = self.mem.read(d0, ins.nbytes)
        except MemoryRangeError as e:
            raise fault(i, name, ErrorCode.AXI_ERROR, str(e)) from None
        return ins.count * ins.nbytes

    def _matrix(self, i: int, ins: Instr) -> None:
        """Check and perform MV/MM (see :data:`airfoil.isa.MATRIX_LAYOUT`)."""
        cfg = self.config
        name = ins.opcode.name
        f = ins.fields
        m, rows, k, group = f["m"], f["rows"], f["k"], f["group"]
        if ins.opcode == Opcode.MV and m != 1:
            raise fault(i, name, ErrorCode.MALFORMED, f"MV takes one vector (m=1), not m={m}")
        if m < 1 or rows < 1 or k < 1:
            raise fault(i, name, ErrorCode.MALFORMED,
                        f"m={m}, rows={rows} and k={k} must be at least 1")
        fmt = f["wfmt"].name.lower()
        if fmt not in cfg.weight_formats:
            raise fault(i, name, ErrorCode.UNSUPPORTED, f"weight format {fmt} is not built in "
                        f"(config has {', '.join(cfg.weight_formats)})")
        if f["sparsity"] != Sparsity.DENSE:
            raise fault(i, name, ErrorCode.UNSUPPORTED,
                        f"sparsity {f['sparsity'].name} is not built in")
        if group not in cfg.group_sizes:
            raise fault(i, name, ErrorCode.UNSUPPORTED, f"group size {group} is not built in "
                        f"(config has {', '.join(map(str, cfg.group_sizes))})")
        if k % group:
            raise fault(i, name, ErrorCode.MALFORMED,
                        f"k={k} is not a multiple of the group size {group}")
        out_bits = OUT_BITS[f["out_fmt"]]
        ob = out_bits // 8
        lay = tile_layout(rows=rows, k=k, group=group, wfmt=f["wfmt"], chains=cfg.chains,
                          lanes=cfg.lanes, bias=bool(f["bias"]), align=cfg.word_bytes)
        wgt, act, out = (self.buffers[b] for b in (Buffer.WGT, Buffer.ACT, Buffer.OUT))
        w0, a0, o0 = f["wbuf_addr"], f["abuf_addr"], f["obuf_addr"]
        for bname, start, size, buf in (("WGT", w0, lay.nbytes, wgt), ("ACT", a0, m * k, act),
                                        ("OUT", o0, m * rows * ob if f["final"] else 0, out)):
            if start + size > len(buf):
                raise fault(i, name, ErrorCode.BUFFER_RANGE, f"{bname}[{start:#x}:"
                            f"{start + size:#x}] is beyond the {len(buf)}-byte buffer")
        q, scales, bias = unpack_tile(lay, bytes(wgt[w0:w0 + lay.nbytes]))
        k0 = f["k0"]
        try:
            mant, kexp = fp16_fixed(scales)
        except CompileError as e:
            raise fault(i, name, ErrorCode.SCALE_RANGE, str(e)) from None
        shift = kexp - k0
        if int(shift.min()) < 0 or int(shift.max()) > SCALE_SHIFT_MAX:
            raise fault(i, name, ErrorCode.SCALE_RANGE, f"group scale shifts "
                        f"{int(shift.min())}..{int(shift.max())} with k0={k0} are outside "
                        f"0..{SCALE_SHIFT_MAX}")
        x = np.frombuffer(bytes(act[a0:a0 + m * k]), dtype=np.int8).astype(np.int64)
        x = torch.from_numpy(x).reshape(m, k)
        scaled = rescale(group_psum(q, x, group), mant, kexp, k0)      # (m, rows, groups)
        if f["acc_init"]:
            acc = accumulate(scaled, bias=bias if f["bias"] else None)
        else:
            acc = accumulate(scaled, acc=self._acc_view(m, rows))
        self._acc_store(acc)
        if f["final"]:
            res = requantize(acc, f["req_m"], f["req_s"], out_bits)
            out[o0:o0 + m * rows * ob] = res.numpy().astype(OUT_DTYPES[out_bits]).tobytes()
        self.macs += m * rows * k

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

    def _sfu(self, i: int, ins: Instr) -> int:
        f = ins.fields
        src, dst = self.buffers[f["src"]], self.buffers[f["dst"]]
        n = f["n"]
        if n < 1:
            raise fault(i, "SFU", ErrorCode.MALFORMED, "n must be at least 1")
        for bname, start, buf in ((f["src"].name, f["src_addr"], src),
                                  (f["dst"].name, f["dst_addr"], dst)):
            if start + n > len(buf):
                raise fault(i, "SFU", ErrorCode.BUFFER_RANGE, f"{bname}[{start:#x}:"
                            f"{start + n:#x}] is beyond the {len(buf)}-byte buffer")
        # Only COPY exists so far (decoding refuses any other function code).
        data = bytes(src[f["src_addr"]:f["src_addr"] + n])
        dst[f["dst_addr"]:f["dst_addr"] + n] = data
        return n

    # -- scheduling -----------------------------------------------------------------------

    def _check_tokens(self, i: int, ins: Instr) -> None:
        own = ins.unit
        if own is None:
            if ins.wait or ins.release:
                raise fault(i, "SYS", ErrorCode.MALFORMED,
                            "SYS instructions take no wait/release tokens")
        elif (ins.wait | ins.release) >> own.value & 1:
            raise fault(i, ins.opcode.name, ErrorCode.MALFORMED,
                        f"a {own.name} instruction cannot wait for or release its own unit")

    def run(self, words) -> dict:
        """Execute a program to its HALT; return the statistics."""
        instrs = self.decode_all(words)
        for i, ins in enumerate(instrs):
            self._check_tokens(i, ins)
        n = len(instrs)
        depth = self.config.instr_queue_depth
        units = {u: _UnitState() for u in Unit}
        fifos = {(a, b): deque() for a in Unit for b in Unit}
        token_log = {(a, b): [] for a in Unit for b in Unit}
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
                    t = max(t, fifo[0])
                if blocked:
                    continue
                if ins.opcode in (Opcode.LD, Opcode.ST) and \
                        ins.channel < self.config.memory.channels:
                    t = max(t, self.mem.channel_free[ins.channel])
                if best is None or t < best[0]:
                    best = (t, u)
            if end_time is None and pc < n:
                ins = instrs[pc]
                t = disp_free
                ready = True
                if ins.opcode == Opcode.SYS and ins.op in (SysOp.HALT, SysOp.BARRIER):
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
                self._deadlock(units, fifos)
            t, u = best
            if u is None:
                ins = instrs[pc]
                if ins.opcode == Opcode.SYS:
                    disp_free = t + self.model.sys().busy
                    if ins.op == SysOp.HALT:
                        end_time = t
                    elif ins.op == SysOp.SETREG:
                        self.regs[ins.reg] = ins.value
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
            if op in (Opcode.LD, Opcode.ST):
                nbytes = self._mem_op(idx, ins, write=op == Opcode.ST)
                begin, cost = self.mem.transfer(ins.channel, t, nbytes, write=op == Opcode.ST)
                st.issue_free = begin + ISSUE_CYCLES
                finish = begin + cost.latency
            else:
                if op == Opcode.SFU:
                    cost = self.model.sfu(self._sfu(idx, ins))
                else:
                    self._matrix(idx, ins)
                    cost = self.model.matrix(ins.rows, ins.k, ins.m)
                st.issue_free = t + cost.busy
                finish = t + cost.latency
            finish = max(finish, st.last_finish)
            st.last_finish = finish
            st.busy += cost.busy
            st.count += 1
            executed += 1
            for r in _units(ins.release):
                fifos[(u, r)].append(finish)
                token_log[(u, r)].append((finish, 1, idx))
        self._check_token_depth(token_log)
        stats = {"cycles": int(end_time), "instructions": executed,
                 "macs": self.macs, "bytes_read": self.mem.bytes_read,
                 "bytes_written": self.mem.bytes_written}
        for u in Unit:
            stats[f"busy_{u.name.lower()}"] = units[u].busy
            stats[f"count_{u.name.lower()}"] = units[u].count
        return stats

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
            for time, kind, idx in sorted(events):
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
    sim = IsaSim(config, image)
    stats = sim.run(program.words)
    return folder.read_output(image), stats
