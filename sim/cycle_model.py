"""Cycle cost model: what each instruction costs on a configuration.

Every per-instruction cost the ISA simulator charges comes from here. A unit whose RTL
states its own count (the MATRIX unit: :mod:`hdl.core.matrix_timing`; the SFU:
:func:`hdl.sfu.unit.unit_cycles` and its kernels' formulas) is charged that count, which
its RTL tests measure; the LOAD and STORE units, the dispatcher and the run's start and
end are counted here. The constants are calibrated against the RTL core (``hdl/core``):
each one names the mechanism of the RTL it stands for, so a change of the hardware maps
to a change of one constant, and a new instruction class adds its own method built from
the same parts.

Costs (in core clock cycles; *start* is the cycle the unit takes the instruction from
its queue, *finish* the first cycle a unit waiting for its token can take its own)
------------------------------------------------------------------------------------
* ``LD`` (:meth:`CycleModel.load`): ``beats = bytes / word_bytes``. The LOAD unit checks
  the instruction and hands one read command to the AXI reader, which raises ARVALID a
  cycle later (:data:`LD_ISSUE_CYCLES`); the first beat arrives ``read_latency`` cycles
  after the address; beats then stream at ``rate`` words per cycle
  (:meth:`CycleModel.words_per_cycle`: one word per cycle while ``outstanding`` bursts of
  ``max_burst`` beats cover the latency); the receiver releases the tokens one cycle after
  the last beat (:data:`RELEASE_CYCLES`) and the waiting unit sees the token counter a
  cycle after that (:data:`TOKEN_HANDOFF`). The channel is busy for the beats plus the
  receiver's hand-over to the next record (:data:`LD_RECORD_GAP`), so back-to-back LDs
  stream their data one after the other and pay the latency once. LDs into one buffer
  (one WGT bank) on different channels share its write port (:data:`BUFFER_WRITE_WORDS`,
  :meth:`CycleModel.load_write`) round robin: while several channels hold beats for it,
  each takes an equal share of the port (:func:`round_robin_ends`), so every one of
  them is slowed down (and its channel with it), the first one as much as the later
  ones, until it has written its last beat.
* ``ST`` (:meth:`CycleModel.store`): the STORE unit prepares and checks the instruction
  (:data:`ST_PREP_CYCLES`), then per burst of at most ``max_burst`` beats: the address
  handshake (:data:`AW_CYCLES`), one beat every :data:`ST_BEAT_CYCLES` cycles (buffer read,
  then the W handshake), ``write_latency`` and the B handshake (:data:`B_CYCLES`); one burst
  at a time. It uses the write channels only, so it holds the (read) channel for one cycle.
* ``MV``/``MM`` (:meth:`CycleModel.matrix`): the MATRIX unit's own count,
  :func:`hdl.core.matrix_timing.matrix_cycles` (written once beside the hardware and
  checked against it in RTL: steps of the PE kind's cycles, the scale reader, the
  serializer, the chain, rescaler and requantizer pipelines, the release), plus
  :data:`TOKEN_HANDOFF`. The unit takes its next instruction when the tokens go out, so
  busy equals latency.
* ``SFU`` (:meth:`CycleModel.sfu_call`): the SFU unit runs one kernel at a time; its
  kernels take a buffer word per cycle where they stream (the records of ``ATT_QK`` and
  ``ATT_PV``, ``word_bytes`` INT8 products per cycle, ``ATT_QK`` without the funnel's
  word when its records are word-aligned; the max and sum passes of ``RMSNORM`` and
  ``QUANT_TOKEN``, ``SOFTMAX``'s max pass, ``ATT_PV``'s output pass of ``word_bytes / 4``
  int32), a chunk of ``sfu_lanes`` scores per cycle in ``SOFTMAX``'s exp and output
  passes, of ``sfu_lanes`` elements in the output pass of ``RMSNORM`` and ``LAYERNORM``
  on chunk-aligned rows, and one 32-bit element per cycle elsewhere;
  each function's count is the kernel's
  exact cycle formula, plus the unit's accept/check/start/release and the divider that
  checks ``n % heads`` for row-wise and attention-product functions: all of it is the
  SFU's own count (:func:`hdl.sfu.unit.unit_cycles`, written once beside the hardware
  and checked against it in RTL), plus :data:`TOKEN_HANDOFF`.
* ``SYS`` and the dispatch of any instruction: :data:`DISPATCH_CYCLES` per instruction.
* ``SYS LDREG`` (:meth:`CycleModel.ldreg`): the dispatcher waits until every queue is
  empty and every unit idle (as for ``BARRIER``), then reads the register's word through
  channel 0's reader: the wait state, the command handshake and the registered ARVALID
  (:data:`LDREG_ISSUE_CYCLES`), ``read_latency`` of channel 0 and one beat (two when the
  32-bit word crosses a memory word), in whose cycle the register is written; the
  dispatcher takes the next instruction in the cycle after it.
* The run as a whole (:meth:`CycleModel.program_overhead`): the start (CSR kick, the
  first instruction fetched over the instruction port and passed through the fetch and
  unit queues) and the end (HALT, AXI drain, the done flag) that no instruction pays.

A unit executes its queue in order; LOAD and STORE may start the next transfer on
another channel one cycle after the previous one started (their completions, and so the
tokens they release, stay in program order); MATRIX and SFU run one instruction at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from airfoil.config import AccelConfig
from airfoil.isa import INSTR_BITS, SfuFunc
from hdl.core.matrix_timing import FINAL_LATENCY, matrix_cycles

__all__ = ["Cost", "CycleModel", "MATRIX_LATENCY", "DISPATCH_CYCLES", "ISSUE_CYCLES",
           "LD_ISSUE_CYCLES", "LD_RECORD_GAP", "BUFFER_WRITE_WORDS", "RELEASE_CYCLES", "TOKEN_HANDOFF",
           "ST_PREP_CYCLES", "AW_CYCLES", "ST_BEAT_CYCLES", "B_CYCLES", "FETCH_START_CYCLES",
           "QUEUE_CYCLES", "END_CYCLES", "LDREG_ISSUE_CYCLES", "round_robin_ends"]

# -- handshakes shared by the units (hdl/core/top.py) ----------------------------------------
#: Cycles from a unit's release handshake to the waiting unit's queue handshake: the token
#: counter is a register, and the queue head's ``valid`` reads it.
TOKEN_HANDOFF = 1
#: Cycles of the dispatcher per instruction (and of a SYS NOP/SETREG), and from dispatch to
#: the earliest start in the unit.
DISPATCH_CYCLES = 1
#: Cycles between the starts of two transfers of the LOAD or STORE unit (address issue).
ISSUE_CYCLES = 1

# -- SYS LDREG in the dispatcher (hdl/core/top.py) -------------------------------------------
#: The dispatch cycle to the AR handshake of an LDREG's read: the LDREG_WAIT state that sees
#: every unit idle, the LDREG_CMD handshake with channel 0's reader, its registered ARVALID.
LDREG_ISSUE_CYCLES = 3

# -- LOAD unit (hdl/core/load.py, hdl/core/axi_read.py) --------------------------------------
#: Queue handshake to AR handshake: the check cycle, the command handshake with the AXI
#: reader, its registered ARVALID.
LD_ISSUE_CYCLES = 3
#: The receiver's release cycle after the last beat of an LD (``releasing``).
RELEASE_CYCLES = 1
#: Beats lost between two LDs in the receiver: the release cycle and the pop of the next
#: record before ``beats.ready`` rises again.
LD_RECORD_GAP = 2
#: Words per cycle one buffer write port takes from the LOAD unit: a buffer has one write
#: port, the WGT and KV buffers one per bank (``buffers.wgt_banks``, ``buffers.kv_banks``),
#: which the receivers of all channels share round robin (``connect_writes``,
#: ``connect_wgt_writes``, ``connect_kv_writes`` in hdl/core/fabric.py), so LDs through one
#: port on several channels at once stream their data through it together at this rate,
#: each an equal share (:func:`round_robin_ends`); loads through different ports (other
#: buffers, other banks: a weight tile's LDs, or a KV pass's, one bank each) do not meet.
BUFFER_WRITE_WORDS = 1

# -- STORE unit (hdl/core/store.py) -----------------------------------------------------------
#: PREP (row offset) and CHECK states before the first address.
ST_PREP_CYCLES = 2
#: The AW state: one cycle per burst for the address handshake.
AW_CYCLES = 1
#: Cycles per write beat: the OUT buffer read (``have`` low), then the W handshake.
ST_BEAT_CYCLES = 2
#: The B handshake after ``write_latency`` (the unit waits for every burst's response).
B_CYCLES = 1

# -- MATRIX unit (hdl/core/matrix.py, its count in hdl/core/matrix_timing.py) --------------
#: Fill and drain of one matrix instruction on a final tile up to the waiting unit's
#: token, without the serializer's ``chains`` cycles (the streamed MV costs build on it).
MATRIX_LATENCY = FINAL_LATENCY + TOKEN_HANDOFF

# -- the run as a whole (hdl/core/top.py, hdl/core/fetch.py) ---------------------------------
#: From the CTRL write to the first read command of the fetch: the CSR kick and the engine's
#: start register, the fetch's pending command, the command handshake, registered ARVALID
#: and the AR handshake.
FETCH_START_CYCLES = 5
#: A SyncFIFOBuffered (fetch queue, unit queue) from write to a valid head.
QUEUE_CYCLES = 2
#: From the last unit's release to the cycle counter's stop: HALT sees all units idle,
#: DRAIN, DONE and the busy flag.
END_CYCLES = 3


@dataclass(frozen=True)
class Cost:
    """Cost of one instruction.

    Members
    -------
    busy : int
        Cycles the resource (channel or unit) is occupied; the next instruction on the
        same resource starts no earlier than ``start + busy``.
    latency : int
        Cycles from start to completion (when its tokens are released), ``>= busy``.
    """

    busy: int
    latency: int


class CycleModel:
    """Per-instruction costs of one configuration.

    Parameters
    ----------
    config : AccelConfig
        The accelerator whose memory and engine shape set the costs.
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, not {config!r}")
        self._config = config

    @property
    def config(self) -> AccelConfig:
        return self._config

    def words_per_cycle(self, latency: int, outstanding: int | None = None) -> float:
        """Sustained words per cycle of one channel whose requests see ``latency``: at most
        one, at most the channel's bandwidth (:attr:`~airfoil.config.AccelConfig.
        channel_bytes_per_cycle`), and no more than ``outstanding`` (default: the config's)
        bursts of ``max_burst`` beats cover in the latency."""
        mem = self._config.memory
        outstanding = outstanding or mem.outstanding
        return min(1.0, self._config.channel_bytes_per_cycle / mem.word_bytes,
                   outstanding * mem.max_burst / (latency + mem.max_burst))

    def _beat_cycles(self, nbytes: int, channel: int) -> int:
        mem = self._config.memory
        beats = -(-nbytes // self._config.word_bytes)
        rate = self.words_per_cycle(mem.latency_of(channel), mem.outstanding_of(channel))
        return max(1, math.ceil(beats / rate))

    def load(self, nbytes: int, channel: int = 0) -> Cost:
        """Cost of reading ``nbytes`` from memory on ``channel`` (``LD``)."""
        lat = self._config.memory.latency_of(channel)
        beats = self._beat_cycles(nbytes, channel)
        return Cost(busy=beats + LD_RECORD_GAP,
                    latency=LD_ISSUE_CYCLES + lat + beats + RELEASE_CYCLES + TOKEN_HANDOFF)

    def load_write(self, nbytes: int, channel: int = 0) -> tuple[int, int, int]:
        """The buffer side of an ``LD`` of ``nbytes`` on ``channel`` into a buffer:
        ``(first, port, paced)``, the cycles from its start to its first beat at the
        buffer, the cycles its beats hold the buffer's write port
        (:data:`BUFFER_WRITE_WORDS`), and the cycles the channel delivers them in."""
        beats = -(-nbytes // self._config.word_bytes)
        return (LD_ISSUE_CYCLES + self._config.memory.latency_of(channel),
                -(-beats // BUFFER_WRITE_WORDS), self._beat_cycles(nbytes, channel))

    def store(self, nbytes: int) -> Cost:
        """Cost of writing ``nbytes`` to memory on one channel (``ST``)."""
        mem = self._config.memory
        beats = -(-nbytes // self._config.word_bytes)
        bursts = -(-beats // mem.max_burst)
        total = (ST_PREP_CYCLES + bursts * (AW_CYCLES + mem.write_latency + B_CYCLES) +
                 beats * ST_BEAT_CYCLES + RELEASE_CYCLES + TOKEN_HANDOFF)
        return Cost(busy=1, latency=total)

    def matrix(self, rows: int, k: int, m: int = 1, *, wfmt=None, final: bool = True,
               group: int | None = None, use_init: bool = False) -> Cost:
        """Cost of one ``MV`` (``m == 1``) or ``MM`` over a ``rows x k`` weight tile:
        :func:`hdl.core.matrix_timing.matrix_cycles` on this config's engine and PE kind,
        plus :data:`TOKEN_HANDOFF`.

        ``wfmt`` (a :class:`airfoil.isa.WeightFormat` or its name; default INT4) sets the
        cycles per step; ``final`` whether the tile's results are requantized (the last
        K-chunk) or left in the accumulators; ``group`` (when given) and ``use_init``
        (a batch starts from the bias or an earlier chunk) bound a batch from below by the
        scale reader.
        """
        c = self._config
        total = matrix_cycles(chains=c.chains, lanes=c.lanes, rows=rows, k=k, m=m,
                              wfmt=wfmt, pe=c.pe, final=final, group=group,
                              use_init=use_init) + TOKEN_HANDOFF
        return Cost(busy=total, latency=total)

    def sfu_call(self, func, *, n: int, rows: int, heads: int = 1, kv_heads: int = 1,
                 pos: int = 0, length: int = 0, src_addr: int = 0, aux_addr: int = 0,
                 dst_addr: int = 0, imm0: int = 0, imm1: int = 0) -> Cost:
        """Cost of one SFU instruction with resolved arguments (registers read): the
        SFU unit's own count (:func:`hdl.sfu.unit.unit_cycles`, the formulas of its
        kernels beside their hardware; ``SOFTMAX``'s window ``imm0`` and bidirectional
        ``imm1`` among them) and :data:`TOKEN_HANDOFF`. The record addresses and strides
        (``src_addr``, ``aux_addr``, ``imm0``, ``imm1``) of ``ATT_QK`` and ``ATT_PV``:
        word-aligned records spare them the funnel's word; the element-wise functions
        take a chunk per cycle where ``src_addr``, ``dst_addr`` and ``aux_addr`` are on
        words, the norms' output pass where they are on chunks."""
        from hdl.sfu.unit import unit_cycles
        total = unit_cycles(dict(func=SfuFunc(func), n=n, rows=rows, heads=heads or 1,
                                 kv_heads=kv_heads, pos=pos, length=length,
                                 src_addr=src_addr, aux_addr=aux_addr,
                                 dst_addr=dst_addr, imm0=imm0, imm1=imm1),
                            word_bits=self._config.sfu_word_width,
                            sfu_lanes=self._config.sfu_lane_count,
                            kv_banks=self._config.buffers.kv_banks,
                            topk_max=self._config.limits.topk_max) + TOKEN_HANDOFF
        return Cost(busy=total, latency=total)

    def sys(self) -> Cost:
        """Cost of a ``SYS`` NOP or SETREG in the dispatcher."""
        return Cost(busy=DISPATCH_CYCLES, latency=DISPATCH_CYCLES)

    def ldreg(self, addr: int) -> Cost:
        """Cost of a ``SYS LDREG`` of the 32-bit word at byte ``addr`` (of channel 0) in the
        dispatcher, from the cycle it finds every unit idle: :data:`LDREG_ISSUE_CYCLES`,
        channel 0's read latency and the word's beats (two when it crosses a memory word;
        the last one's cycle writes the register)."""
        mem = self._config.memory
        beats = 2 if addr % mem.word_bytes > mem.word_bytes - 4 else 1
        total = LDREG_ISSUE_CYCLES + mem.latency_of(0) + beats
        return Cost(busy=total, latency=total)

    def program_overhead(self) -> int:
        """Cycles of a run that no instruction pays: start and end of the core.

        The start: :data:`FETCH_START_CYCLES`, ``read_latency`` of the instruction port,
        the beats of the first instruction (``INSTR_BITS / word_bits``), the fetch queue,
        the dispatcher and the unit queue (:data:`QUEUE_CYCLES` each); the end:
        :data:`END_CYCLES`. Add it to the time of the last instruction's completion.
        """
        mem = self._config.memory
        beats = max(1, INSTR_BITS // mem.word_bits)
        return (FETCH_START_CYCLES + mem.read_latency + beats + 2 * QUEUE_CYCLES +
                END_CYCLES - DISPATCH_CYCLES)


def round_robin_ends(flows, port_words: float = BUFFER_WRITE_WORDS) -> list[float]:
    """When each of ``flows`` has written its last word through one buffer write port
    that the channels holding words take round robin (``connect_writes``,
    ``connect_wgt_writes`` in hdl/core/fabric.py).

    ``flows`` lists ``(arrive, words, rate)``: the cycle the first word reaches the port,
    the words, and the words per cycle its channel delivers. The port takes
    ``port_words`` words per cycle, shared equally among the flows that have words
    waiting; a flow whose channel delivers less than its share leaves the rest to the
    others (max-min fair shares, the fluid limit of the round robin). Returns the end
    cycle of each flow, in the order given (not rounded).
    """
    n = len(flows)
    left = [float(w) for _, w, _ in flows]
    ends = [0.0] * n
    order = sorted(range(n), key=lambda i: flows[i][0])
    now = flows[order[0]][0] if n else 0.0
    arrived = 0
    active = []
    while arrived < n or active:
        while arrived < n and flows[order[arrived]][0] <= now:
            active.append(order[arrived])
            arrived += 1
        if not active:
            now = flows[order[arrived]][0]
            continue
        # Max-min fair shares of the port.
        share, room, rates = {}, float(port_words), sorted(active, key=lambda i: flows[i][2])
        for k, i in enumerate(rates):
            share[i] = min(flows[i][2], room / (len(rates) - k))
            room -= share[i]
        step = min(left[i] / share[i] for i in active)
        if arrived < n:
            step = min(step, flows[order[arrived]][0] - now)
        now += step
        for i in list(active):
            left[i] -= share[i] * step
            if left[i] <= 1e-9:
                ends[i] = now
                active.remove(i)
    return ends


# -- ISA version 3: matrix instructions on streamed weights (decode unit) ------------------

#: Cycles the decode unit adds in front of the chains on a streamed matrix instruction:
#: header and scale fields, FP16 -> fixed point, beat assembly (before the first k-step).
UNPACK_LATENCY = 4
#: Fill latency of a streamed MV/MM: the unpacker plus the matrix pipeline.
STREAM_LATENCY = UNPACK_LATENCY + MATRIX_LATENCY
#: Cycles a streamed MV/MM with per-token scales (``tok_scale``) adds before it starts, per
#: vector: the read of its scale pair from AUX.
TOKEN_SCALE_CYCLES = 1


def stream_matrix_work(words: int, ksteps: int, m: int = 1) -> int:
    """Cycles of work of an MV/MM on streamed weights (``wfmt = STREAM``).

    The decode unit takes at most one memory word of the stream per cycle, and the chains
    take one k-step (``lanes`` kept weights on each of the ``chains`` rows of a record)
    per cycle per activation vector (an ``MM`` applies each record to its ``m`` vectors,
    one after the other, before the next record), so the slower of the two sets the pace:
    ``max(words, m * ksteps)``. ``words`` counts the stream words the instruction is the
    first to read from (PAD words before its records included), ``ksteps`` the sum over
    its records of
    ``kept / lanes`` (``group / lanes`` for a dense record; an N:M record keeps
    ``group * N / M``, so 2:4 halves the chain work; a block-skip record counts its
    present k-steps only, the set bits of its step mask).
    """
    for name, v in (("words", words), ("ksteps", ksteps), ("m", m)):
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, not {v!r}")
    return max(words, m * ksteps)


def stream_matrix_cost(slices, m: int = 1, rate: float = 1.0, *,
                       token_scale: bool = False) -> Cost:
    """Cost of an MV/MM on streamed weights: the slowest slice's
    :func:`stream_matrix_work` plus :data:`STREAM_LATENCY` (busy and latency alike, as
    :meth:`CycleModel.matrix`).

    ``slices`` lists ``(words, ksteps)`` of every slice of the engine: each slice reads
    its own channel's stream into its own chains, all at the same time, so the
    instruction lasts as long as its slowest slice. ``rate`` is the words per cycle a
    channel delivers (below 1 when its bandwidth is below the port's,
    :meth:`CycleModel.words_per_cycle`): a slice's words then take ``words / rate``
    cycles. ``token_scale`` adds :data:`TOKEN_SCALE_CYCLES` per vector.
    """
    work = max(stream_matrix_work(math.ceil(w / rate), s, m) for w, s in slices)
    work += TOKEN_SCALE_CYCLES * m if token_scale else 0
    return Cost(busy=work + STREAM_LATENCY, latency=work + STREAM_LATENCY)
