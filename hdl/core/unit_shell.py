"""The front end every execution unit shares: take an instruction, check it, run it,
release its tokens, and keep the first error.

::

    IDLE --take--> CHECK --go--> RUN --done--> REL --rel.ready--> IDLE
                     |            |
                   code        cancel (or an error latched, with ``leave_run_on_fault``)
                     v            v
                    IDLE         IDLE

A unit builds a :class:`UnitShell`, connects its own queue, release and error members to
the shell's (:meth:`UnitShell.serve`) and fills in the rest: ``code`` (the check of the
instruction, read in CHECK), ``go`` (start it), ``done`` (it has finished), and ``fault``
with ``fault_code`` (an error found while it runs). The unit may take several cycles in
CHECK (computing what the check needs, reading a scale) by holding ``go`` and ``code``
low; it sees the latched queue entry on ``entry`` and the shell's state on ``checking``
and ``running``.

The error latch is sticky: the first error (a failed check before a fault in the same
cycle) sets ``err``, ``err_code`` and ``err_pc`` (the instruction's index) until reset, and
the shell takes no instruction while it is set.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from airfoil import isa

from .fetch import ENTRY_LAYOUT

__all__ = ["UnitShell", "UNIT_MEMBERS"]

#: Members a unit shows the dispatcher (from the unit's side; see :func:`unit_ports`).
UNIT_MEMBERS = ("q", "rel", "err", "err_code", "err_pc", "idle")


class UnitShell(wiring.Component):
    """Idle, check, run and release states and the sticky error latch of a unit.

    Parameters
    ----------
    idle_after_error : bool
        Whether ``idle`` stays high in IDLE once an error is latched (a unit whose
        failure stops it for good reports itself busy, so the core's counters and
        deadlock check see it as stuck).
    leave_run_on_fault : bool
        Whether RUN returns to IDLE once an error is latched (the cycle after the
        ``fault``); else the unit finishes its run.

    Members
    -------
    q, rel, err, err_code, err_pc, idle
        As the unit's (see :func:`~hdl.core.load.unit_ports`).
    entry : Out(ENTRY_LAYOUT)
        The instruction taken, with its index and register values.
    take : Out(1)
        An instruction is taken this cycle (``entry`` holds it from the next).
    checking, running : Out(1)
        In CHECK, in RUN.
    start : Out(1)
        The check passed and ``go`` is up: the run starts (RUN from the next cycle).
    code : In(isa.ErrorCode)
        In CHECK: the instruction's error (``NONE`` if it may run).
    go : In(1)
        In CHECK: start the run (when ``code`` is ``NONE``).
    done : In(1)
        In RUN: the run has finished; release the instruction's tokens.
    cancel : In(1)
        In RUN: stop without a release (the core aborts).
    fault, fault_code : In(1), In(isa.ErrorCode)
        An error in any state (latched unless an error already is).
    """

    def __init__(self, *, idle_after_error: bool, leave_run_on_fault: bool):
        self._idle_after_error = bool(idle_after_error)
        self._leave_run_on_fault = bool(leave_run_on_fault)
        super().__init__({
            "q": In(stream.Signature(ENTRY_LAYOUT)),
            "rel": Out(stream.Signature(4)),
            "err": Out(1), "err_code": Out(isa.ErrorCode), "err_pc": Out(32),
            "idle": Out(1),
            "entry": Out(ENTRY_LAYOUT), "take": Out(1),
            "checking": Out(1), "running": Out(1), "start": Out(1),
            "code": In(isa.ErrorCode), "go": In(1), "done": In(1), "cancel": In(1),
            "fault": In(1), "fault_code": In(isa.ErrorCode),
        })

    def serve(self, m, unit):
        """Connect ``unit``'s queue, release, error and idle members to this shell's."""
        m.d.comb += [self.q.payload.eq(unit.q.payload), self.q.valid.eq(unit.q.valid),
                     unit.q.ready.eq(self.q.ready),
                     unit.rel.payload.eq(self.rel.payload), unit.rel.valid.eq(self.rel.valid),
                     self.rel.ready.eq(unit.rel.ready)]
        for name in ("err", "err_code", "err_pc", "idle"):
            m.d.comb += getattr(unit, name).eq(getattr(self, name))

    def elaborate(self, platform):
        m = Module()
        failed = self.err
        # An error found in CHECK this cycle (it wins over a fault of the same cycle).
        refused = Signal()
        m.d.comb += refused.eq(self.checking & (self.code != isa.ErrorCode.NONE))
        with m.If(~failed):
            with m.If(refused):
                m.d.sync += [failed.eq(1), self.err_code.eq(self.code),
                             self.err_pc.eq(self.entry.index)]
            with m.Elif(self.fault):
                m.d.sync += [failed.eq(1), self.err_code.eq(self.fault_code),
                             self.err_pc.eq(self.entry.index)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.q.ready.eq(~failed),
                             self.idle.eq(1 if self._idle_after_error else ~failed),
                             self.take.eq(self.q.valid & ~failed)]
                with m.If(self.take):
                    m.d.sync += self.entry.eq(self.q.payload)
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.checking.eq(1)
                with m.If(refused):
                    m.next = "IDLE"
                with m.Elif(self.go):
                    m.d.comb += self.start.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.running.eq(1)
                leave = self.cancel
                if self._leave_run_on_fault:
                    leave = leave | failed
                with m.If(leave):
                    m.next = "IDLE"
                with m.Elif(self.done):
                    m.next = "REL"
            with m.State("REL"):
                m.d.comb += [self.rel.valid.eq(1),
                             self.rel.payload.eq(self.entry.instr.header.release)]
                with m.If(self.rel.ready):
                    m.next = "IDLE"
        return m
