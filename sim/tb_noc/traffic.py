"""A cycle-level traffic engine and scoreboard for a network's flat ports.

The engine is pure Python and simulator-neutral: once per cycle the simulator hands it the
outputs that depend only on the network's state (``inj_ready``, ``ej_valid``,
``ej_data``, each a bit vector as an ``int``) and applies the inputs it returns
(``inj_valid``, ``inj_data``, ``ej_ready``) before the clock edge. A handshake happens
where both sides are high, so the engine knows every transfer without reading back.

The scoreboard checks, per ejection port: the flit's ``dest`` is that node alone, packets
arrive whole and contiguous (``first`` ... ``last`` from one source, never interleaved),
and each packet equals the oldest one still expected from that source at that node
(exactly once, in order per source-destination pair, payload intact). At the end nothing
may remain expected.
"""

from __future__ import annotations

import random
from collections import deque

__all__ = ["PATTERNS", "TrafficEngine", "Schedule", "drain_bound"]

PATTERNS = ("uniform", "hotspot", "all_to_one", "broadcast", "bcast_vector", "zero_load")


def drain_bound(undelivered: int, diameter: int) -> int:
    """Return the stated drain bound in cycles once sources stop and sinks stop stalling.

    ``undelivered`` flit copies still owed to sinks, each sink taking at most one per
    cycle, plus two traversals of the network (``diameter + 1`` hops, one buffer each).
    """
    return undelivered + 2 * (diameter + 1)


class TrafficEngine:
    """Drive every node of a network with random traffic and check what comes out.

    Parameters
    ----------
    nodes : int
        Network nodes.
    fields : dict
        ``{field: (offset, width)}`` of the flit layout (``airfoil.noc_map.field_slices``).
    pattern : str
        One of :data:`PATTERNS`.
    seed : int
        Random seed (traffic, idle cycles and backpressure).
    packets : int or None
        Packets per source (``bcast_vector``: flits of the vector); ``None`` sends until
        :meth:`stop` is called.
    max_len : int
        Longest unicast packet in flits.
    idle, stall : float
        Probability that a free source does not offer a flit in a cycle, and that a sink
        is not ready in a cycle.
    hotspot : int
        Target node of ``hotspot`` and ``all_to_one`` traffic and source of
        ``bcast_vector``.
    """

    def __init__(self, *, nodes: int, fields: dict, pattern: str, seed: int,
                 packets=16, max_len: int = 4, idle: float = 0.0, stall: float = 0.0,
                 hotspot: int = 0):
        if pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, not {pattern!r}")
        self.nodes, self.fields, self.pattern = nodes, dict(fields), pattern
        self.rng = random.Random(seed)
        self.max_len, self.idle, self.stall, self.hotspot = max_len, idle, stall, hotspot
        self.pay_bits = fields["payload"][1]
        self.fbits = sum(w for _, w in fields.values())
        self.all_mask = (1 << nodes) - 1
        self.budget = [packets] * nodes            # packets left per source (None: endless)
        if pattern in ("all_to_one",):
            self.budget[hotspot] = 0
        if pattern == "bcast_vector":
            self.budget = [0] * nodes
            self.budget[hotspot] = packets
        self.queue = [deque() for _ in range(nodes)]   # flits (ints) of the current packet
        self.offer = [None] * nodes                    # flit offered on inject, held
        self.expected = {}                             # (src, dst) -> deque of packets
        self.open = [None] * nodes                     # sink: (src, [payloads]) in progress
        self.head_cycle = {}                           # (src, seq) -> inject cycle
        self.seq = [0] * nodes
        self.cycle = 0
        self.stopped = False
        self.stop_cycle = None
        self.injected = 0          # flits accepted by the network
        self.ejected = 0           # flit copies delivered
        self.window = None         # (start, end) cycles for counting accepted flits
        self.window_ejected = 0
        self.latencies = []
        self.first_inject = None
        self.last_eject = None
        self.errors = []
        self.zl_busy = 0           # zero_load: copies still in flight
        self.release = False       # sinks always ready (drain phase)

    # -- packing ---------------------------------------------------------------------

    def pack(self, **v) -> int:
        word = 0
        for name, (off, width) in self.fields.items():
            word |= (v.get(name, 0) & ((1 << width) - 1)) << off
        return word

    def unpack(self, word: int) -> dict:
        return {name: (word >> off) & ((1 << width) - 1)
                for name, (off, width) in self.fields.items()}

    # -- traffic ---------------------------------------------------------------------

    def _other(self, s: int) -> int:
        if self.nodes == 1:
            return s
        d = self.rng.randrange(self.nodes - 1)
        return d + (d >= s)

    def _new_packet(self, s: int):
        r, p = self.rng, self.pattern
        length = r.randint(1, self.max_len)
        if p == "uniform":
            mask = 1 << self._other(s)
        elif p == "hotspot":
            mask = 1 << (self.hotspot if r.random() < 0.5 and s != self.hotspot
                         else self._other(s))
        elif p == "all_to_one":
            mask = 1 << self.hotspot
        elif p == "broadcast":
            x = r.random()
            if x < 0.2:
                mask, length = self.all_mask, 1
            elif x < 0.6:
                mask, length = 0, 1
                while bin(mask).count("1") < 2:
                    mask = r.getrandbits(self.nodes)
            else:
                mask = 1 << self._other(s)
        elif p == "bcast_vector":
            mask, length = self.all_mask, 1
        else:  # zero_load: one single-flit packet at a time, uniform
            mask, length = 1 << self._other(s), 1
        flits = [r.getrandbits(self.pay_bits) for _ in range(length)]
        seq = self.seq[s]
        self.seq[s] += 1
        for d in range(self.nodes):
            if mask >> d & 1:
                self.expected.setdefault((s, d), deque()).append((seq, tuple(flits)))
        for k, pay in enumerate(flits):
            self.queue[s].append(self.pack(payload=pay, dest=mask, src=s, first=k == 0,
                                           last=k == length - 1) | (seq << self.fbits))
        if p == "zero_load":
            self.zl_busy += bin(mask).count("1")

    def stop(self) -> None:
        """Start no new packets (packets already started are finished)."""
        self.stopped = True
        self.stop_cycle = self.cycle

    def sources_done(self) -> bool:
        return all(self.offer[s] is None and not self.queue[s] and
                   (self.stopped or self.budget[s] == 0) for s in range(self.nodes))

    def outstanding(self) -> int:
        """Flit copies (packets' flits times destinations) still owed to sinks."""
        return sum(len(f) for q in self.expected.values() for _, f in q) - sum(
            len(o[1]) for o in self.open if o is not None)

    def finished(self) -> bool:
        return self.sources_done() and not any(self.expected.values()) and \
            not any(self.open)

    # -- one cycle -------------------------------------------------------------------

    def step(self, inj_ready: int, ej_valid: int, ej_data: int) -> tuple[int, int, int]:
        """Take the state-only outputs of this cycle; return the inputs to apply."""
        r = self.rng
        fmask = (1 << self.fbits) - 1
        inj_valid = inj_data = 0
        for s in range(self.nodes):
            if self.offer[s] is None:
                if not self.queue[s] and not self.stopped and self.budget[s] != 0:
                    if self.pattern == "zero_load" and (self.zl_busy or s != r.randrange(
                            self.nodes)):
                        continue
                    if r.random() < self.idle:
                        continue
                    self._new_packet(s)
                    if self.budget[s] is not None:
                        self.budget[s] -= 1
                if self.queue[s] and (self.pattern == "zero_load" or r.random() >= self.idle):
                    self.offer[s] = self.queue[s].popleft()
            if self.offer[s] is not None:
                inj_valid |= 1 << s
                inj_data |= (self.offer[s] & fmask) << (s * self.fbits)
                if inj_ready >> s & 1:
                    word = self.offer[s]
                    if (word >> self.fields["first"][0]) & 1:
                        self.head_cycle[(s, word >> self.fbits)] = self.cycle
                    if self.first_inject is None:
                        self.first_inject = self.cycle
                    self.injected += 1
                    self.offer[s] = None
        ej_ready = 0
        for d in range(self.nodes):
            if self.release or r.random() >= self.stall:
                ej_ready |= 1 << d
        fire = ej_valid & ej_ready
        d = 0
        while fire >> d:
            if fire >> d & 1:
                self._receive(d, (ej_data >> (d * self.fbits)) & fmask)
            d += 1
        self.cycle += 1
        return inj_valid, inj_data, ej_ready

    def _error(self, msg: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(f"cycle {self.cycle}: {msg}")

    def _receive(self, d: int, word: int) -> None:
        f = self.unpack(word)
        self.ejected += 1
        self.last_eject = self.cycle
        if self.window and self.window[0] <= self.cycle < self.window[1]:
            self.window_ejected += 1
        if f["dest"] != 1 << d:
            self._error(f"node {d} got a flit with dest mask {f['dest']:#x}")
        s = f["src"]
        if self.open[d] is None:
            if not f["first"]:
                self._error(f"node {d} got a body flit from {s} outside a packet")
                return
            self.open[d] = (s, [])
        elif self.open[d][0] != s or f["first"]:
            self._error(f"node {d}: packet from {self.open[d][0]} interleaved with a flit "
                        f"from {s} (first={f['first']})")
            return
        self.open[d][1].append(f["payload"])
        if f["last"]:
            src, flits = self.open[d]
            self.open[d] = None
            q = self.expected.get((src, d))
            if not q:
                self._error(f"node {d} got an unexpected (duplicate?) packet from {src}")
                return
            seq, want = q.popleft()
            if tuple(flits) != want:
                self._error(f"node {d}: packet {seq} from {src} wrong or out of order: "
                            f"got {[hex(x) for x in flits]}, want {[hex(x) for x in want]}")
            t0 = self.head_cycle.get((src, seq))
            if t0 is not None:
                self.latencies.append(self.cycle - t0 - len(flits) + 1)
            if self.pattern == "zero_load":
                self.zl_busy -= 1

    def summary(self) -> dict:
        """Return counters and checks as plain data (for the result JSON)."""
        return {
            "cycles": self.cycle, "injected": self.injected, "ejected": self.ejected,
            "window_ejected": self.window_ejected, "window": self.window,
            "errors": self.errors, "left": sum(len(q) for q in self.expected.values()),
            "latency_mean": (sum(self.latencies) / len(self.latencies)
                             if self.latencies else None),
            "latency_max": max(self.latencies) if self.latencies else None,
            "first_inject": self.first_inject, "last_eject": self.last_eject,
            "stop_cycle": self.stop_cycle,
        }


class Schedule:
    """The shared run schedule: traffic, then a drain with sinks released, then checks.

    Each cycle the simulator front end calls :meth:`step` with the network's state-only
    outputs and applies the inputs it returns, until it returns ``None``.

    Parameters
    ----------
    engine : TrafficEngine
    cycles : int or None
        Stop starting packets after this many cycles (``None``: when budgets run out).
    warmup : int
        First cycle of the window in which accepted flits are counted (up to ``cycles``).
    diameter : int
        Router hops of the longest route (for :func:`drain_bound`).
    max_cycles : int
        Give up (an error) after this many cycles.
    """

    def __init__(self, engine: TrafficEngine, *, cycles=None, warmup: int = 0,
                 diameter: int, max_cycles: int = 200000):
        self.engine, self.cycles, self.diameter = engine, cycles, diameter
        self.max_cycles = max_cycles
        if cycles is not None:
            engine.window = (warmup, cycles)
        self.drain_start = self.bound = None

    def step(self, inj_ready: int, ej_valid: int, ej_data: int):
        e = self.engine
        if self.cycles is not None and e.cycle == self.cycles and not e.stopped:
            e.stop()
        if e.sources_done() and not e.release:
            e.release = True
            self.drain_start = e.cycle
            self.bound = drain_bound(e.outstanding(), self.diameter)
        if e.finished():
            return None
        if e.cycle >= self.max_cycles:
            e._error(f"not finished after {self.max_cycles} cycles "
                     f"({e.outstanding()} flit copies undelivered)")
            return None
        return e.step(inj_ready, ej_valid, ej_data)

    def result(self) -> dict:
        e = self.engine
        res = e.summary()
        if self.drain_start is not None:
            drained = e.cycle - self.drain_start
            if drained > self.bound:
                e._error(f"drain took {drained} cycles, over the bound {self.bound}")
            res.update(drain_cycles=drained, drain_bound=self.bound, errors=e.errors)
        return res
