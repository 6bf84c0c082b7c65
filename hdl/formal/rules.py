"""Handshake rules shared by the harnesses: asserted on a design's outputs, assumed on
the free inputs a harness drives."""

from __future__ import annotations

from amaranth.hdl import Assert, Assume, Cat, Signal, Value

__all__ = ["hold_until_ready", "check_of"]


def check_of(kind: str):
    """``Assert`` for a property of the design, ``Assume`` for a rule of its environment."""
    return {"assert": Assert, "assume": Assume}[kind]


def hold_until_ready(m, *, valid, ready, payload, kind: str, name: str):
    """``valid`` once raised stays raised, with ``payload`` unchanged, until ``ready``.

    Parameters
    ----------
    m : Module
    valid, ready : Value
        The handshake.
    payload : Value
        Everything that must stay stable while ``valid`` waits (a list for several).
    kind : str
        ``"assert"`` (an output of the design) or ``"assume"`` (a free input).
    name : str
        Prefix of the registers that remember the last cycle.
    """
    payload = Cat(*payload) if isinstance(payload, (list, tuple)) else Value.cast(payload)
    waited = Signal(name=f"{name}_waited")
    last = Signal(len(payload), name=f"{name}_last")
    m.d.sync += [waited.eq(valid & ~ready), last.eq(payload)]
    m.d.comb += check_of(kind)(~waited | (valid & (payload == last)))
