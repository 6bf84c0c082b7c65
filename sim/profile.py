"""Where a compiled LLM's cycles and bytes go: profiles of its runs on the ISA simulator.

A :class:`StepProfile` is one run of a phase program (a decode step at a position, or a
prefill of ``T`` tokens) on the ISA simulator with its instruction trace
(:class:`sim.isa_sim.TraceEvent`), cut into *sections* in program order: ``embed`` (the
token ids, the embedding gather and its ``DEQUANT_ROW``), ``layer 0`` .. ``layer N-1``
(each from the load of its attention RMSNorm gain) and ``head`` (from the final norm's
gain: norm, ``lm_head``, the logits' store, the next token's ``TOPK_SAMPLE``). The compiler emits every layer's instructions after that gain's load
and before the next one's, so the cut needs nothing but the folder's memory layout.

From a profile: the busy cycles of each unit per section, each section's operating point
(multiply-accumulates, bytes read, cycles from its first instruction's start to its last
one's finish), and the memory channels' utilization over the run. :func:`context_sweep`
gives the decode step's cycles over positions. Everything is the cycle model's count
(:mod:`sim.cycle_model`), the one the RTL tests check the core against; a ``--size-only``
folder (loaded with ``size_only_ok``) is timed by :mod:`sim.timing`, which charges the
same costs without the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError
from airfoil.isa import Opcode, Unit

from .isa_sim import IsaLLM, IsaSim, TraceEvent
from .timing import llm_step_cycles

__all__ = ["StepProfile", "SectionCost", "profile_decode", "profile_prefill",
           "context_sweep", "sections_of", "bandwidth_timeline", "peak_bytes_per_cycle",
           "sfu_stall_cycles"]


def peak_bytes_per_cycle(config: AccelConfig) -> float:
    """Bytes all memory channels deliver per core cycle."""
    return config.memory.channels * config.channel_bytes_per_cycle


def sections_of(instrs, layout: dict, layers: int) -> list[str]:
    """The section of every instruction of a decoded phase program (see the module
    docstring)."""
    starts = {layout[f"l{i}.attn_norm"]: f"layer {i}" for i in range(layers)}
    starts[layout["norm"]] = "head"
    out, current = [], "embed"
    for ins in instrs:
        if ins.opcode == Opcode.LD and ins.dram_addr in starts:
            current = starts[ins.dram_addr]
        out.append(current)
    return out


@dataclass
class SectionCost:
    """What one section of a run took."""

    name: str
    busy: dict = field(default_factory=lambda: {u.name: 0 for u in Unit})
    macs: int = 0
    bytes_read: int = 0
    first: int | None = None
    last: int = 0

    @property
    def cycles(self) -> int:
        """From the start of its first instruction to the finish of its last."""
        return 0 if self.first is None else self.last - self.first

    def add(self, ev: TraceEvent, read: bool):
        self.busy[ev.unit.name] += ev.end - ev.start
        self.macs += ev.macs
        self.bytes_read += ev.nbytes if read else 0
        self.first = ev.start if self.first is None else min(self.first, ev.start)
        self.last = max(self.last, ev.finish)


@dataclass
class StepProfile:
    """One traced run of a phase program."""

    phase: str
    position: int
    tokens: int
    cycles: int
    bytes_read: int         # all the run read: its LDs and the SYS LDREG words
    trace: list
    sections: list          # section name per instruction index
    reads: set              # instruction indices that are LDs

    def section_costs(self) -> list[SectionCost]:
        """The sections in program order with their costs."""
        costs: dict[str, SectionCost] = {}
        for name in self.sections:
            costs.setdefault(name, SectionCost(name))
        for ev in self.trace:
            costs[self.sections[ev.index]].add(ev, ev.index in self.reads)
        return [c for c in costs.values() if c.first is not None]

    @property
    def macs(self) -> int:
        return sum(ev.macs for ev in self.trace)


def _runner(folder, config: AccelConfig, trace: bool):
    """``run(phase, position, tokens) -> stats`` of one run each: on the ISA simulator
    (one :class:`IsaLLM`, its programs decoded once), or for a ``--size-only`` folder (no
    image) on its data-free scheduler (:mod:`sim.timing`), which charges the same costs."""
    if folder.kind != "llm":
        raise AirfoilError(f"{folder.path}: a profile needs an LLM folder, not kind "
                           f"{folder.kind!r}")
    if folder.image is None:
        def timed(phase, position, tokens):
            st = llm_step_cycles(folder.manifest, folder.phase_program(phase).words, config,
                                 position=position, tokens=tokens, trace=trace)
            st["position"], st["tokens"] = position, tokens
            return st
        return timed
    llm = IsaLLM(folder, config, trace=trace)

    def simulated(phase, position, tokens):
        if phase == "prefill":
            llm.prefill([0] * tokens)
        else:
            llm.position = position
            llm.decode(0)
        return llm.runs[-1]
    return simulated


def _profile(folder, config: AccelConfig, phase: str, position: int, tokens: int
             ) -> StepProfile:
    st = _runner(folder, config, trace=True)(phase, position, tokens)
    words = folder.phase_program(phase).words
    mm = folder.manifest["model"]
    instrs = IsaSim.decode_all(words)
    sections = sections_of(instrs, mm["layout"], int(mm["shape"]["num_hidden_layers"]))
    reads = {i for i, ins in enumerate(instrs) if ins.opcode == Opcode.LD}
    return StepProfile(phase, st["position"], st["tokens"], st["cycles"], st["bytes_read"],
                       st["trace"], sections, reads)


def _check_position(folder, position: int) -> None:
    top = folder.manifest["model"]["max_positions"] - 1
    if not 0 <= position <= top:
        raise AirfoilError(f"decode position {position} is outside 0..{top}, the positions "
                           f"the folder's KV cache holds")


def profile_decode(folder, config: AccelConfig, position: int) -> StepProfile:
    """A traced decode step at ``position`` (the KV cache's content does not change the
    timing, so no prefill runs first)."""
    _check_position(folder, position)
    return _profile(folder, config, "decode", position, 1)


def profile_prefill(folder, config: AccelConfig, tokens: int) -> StepProfile:
    """A traced prefill of ``tokens`` tokens (at most the folder's ``max_prompt``)."""
    top = folder.manifest["model"]["max_prompt"]
    if not 1 <= tokens <= top:
        raise AirfoilError(f"a prefill of {tokens} tokens: the folder's prefill program "
                           f"takes 1..{top}")
    return _profile(folder, config, "prefill", 0, tokens)


def context_sweep(folder, config: AccelConfig, points: int = 8) -> list[tuple[int, int]]:
    """``(position, decode step cycles)`` at ``points`` positions spread (geometrically)
    over the positions the folder holds."""
    top = folder.manifest["model"]["max_positions"] - 1
    pos = sorted({int(round(p)) for p in np.geomspace(1, max(top, 1), points)} | {0, top})
    run = _runner(folder, config, trace=False)
    return [(p, run("decode", p, 1)["cycles"]) for p in pos]


def bandwidth_timeline(profile: StepProfile, config: AccelConfig, bins: int = 100
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(bin start cycles, utilization)``: the bytes the LDs read in each of ``bins``
    equal spans of the run (each LD's bytes spread evenly over its busy cycles), over what
    all channels could deliver in that span."""
    total = max(profile.cycles, 1)
    edges = np.linspace(0, total, bins + 1)
    got = np.zeros(bins)
    for ev in profile.trace:
        if ev.index not in profile.reads or ev.end <= ev.start:
            continue
        rate = ev.nbytes / (ev.end - ev.start)
        lo = np.clip(edges[:-1], ev.start, ev.end)
        hi = np.clip(edges[1:], ev.start, ev.end)
        got += (hi - lo) * rate
    span = np.diff(edges) * peak_bytes_per_cycle(config)
    return edges[:-1], got / span


def sfu_stall_cycles(trace, channels: int) -> float:
    """Cycles of a run in which the SFU computes while the memory channels stand idle,
    each cycle weighted by the share of the ``channels`` that read nothing in it.

    From a :class:`~sim.isa_sim.TraceEvent` list: the SFU computes from an event's
    ``start`` to its ``end``; a LOAD event holds one channel over the same span. A cycle
    with the SFU busy and ``b`` channels reading counts ``1 - b / channels``: the weight
    stream (or the KV cache) the step must read anyway does not advance in it, so these
    are the cycles attention and the other SFU functions add to a bandwidth-bound step.
    """
    if channels < 1:
        raise ValueError(f"channels must be a positive integer, not {channels!r}")
    times, sfu, reads = [], [], []
    for ev in trace:
        if ev.end <= ev.start or ev.unit not in (Unit.SFU, Unit.LOAD):
            continue
        busy = ev.unit == Unit.SFU
        times += [ev.start, ev.end]
        sfu += [1, -1] if busy else [0, 0]
        reads += [0, 0] if busy else [1, -1]
    if not times:
        return 0.0
    order = np.argsort(times, kind="stable")
    t = np.asarray(times)[order]
    sfu_on = np.cumsum(np.asarray(sfu)[order]) > 0
    reading = np.minimum(np.cumsum(np.asarray(reads)[order]), channels)
    span = np.diff(t)
    return float(np.sum(span * sfu_on[:-1] * (1 - reading[:-1] / channels)))
