"""The formal checks of the project: what each proves, in which mode and to what depth.

Each :class:`Proof` names a harness (a ``build`` function), the properties its assertions
state, the mode and depth of the check and the depth of its cover run (every ``Cover`` of
the harness reached, so the assumptions leave the properties something to check). Each
:class:`Mutant` is a harness with a deliberate fault that its check must FAIL, which shows
that the checks can fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .axi_read import AxiReaderHarness
from .store import StoreHarness
from .tokens import TokenHarness
from .unpacker import UnpackerHarness

__all__ = ["Proof", "Mutant", "PROOFS", "MUTANTS", "proof_named"]


def _router(**kw):
    from hdl.noc.formal import router_harness
    return router_harness(**kw)


def _mesh(**kw):
    from hdl.noc.formal import mesh_harness
    return mesh_harness(**kw)


#: The properties of :class:`hdl.noc.formal.FlitHarness`; the last needs a depth beyond
#: the harness's drain bound (the unlimited-traffic mesh check stops short of it).
_FLIT_PROPERTIES = ("flit_valid_held", "flit_dest_in_reach", "no_flit_invented_or_duplicated",
                    "marked_flit_intact_once", "no_flit_lost")


@dataclass(frozen=True)
class Proof:
    """One check: ``build()`` returns the harness; ``mode`` is ``prove`` or ``bmc``."""

    name: str
    build: Callable
    mode: str
    depth: int
    cover_depth: int
    properties: tuple
    slow: bool = False


@dataclass(frozen=True)
class Mutant:
    """A harness with a fault (``build()``) that a ``mode`` check of ``depth`` must FAIL."""

    name: str
    build: Callable
    mode: str
    depth: int


PROOFS = (
    Proof("axi_read", AxiReaderHarness, "bmc", 10, 20,
          ("arvalid_held_payload_stable", "burst_legal_and_within_4k", "outstanding_limit",
           "bursts_match_command_rows", "r_beat_to_data_once", "idle_only_when_done")),
    Proof("store_axi_write", StoreHarness, "bmc", 10, 30,
          ("awvalid_held_payload_stable", "wvalid_held_payload_stable",
           "burst_legal_and_within_4k", "awlen_plus_one_w_beats_wlast_last_only",
           "no_w_before_aw", "one_burst_at_a_time", "bready_only_when_owed")),
    Proof("axi_read_handshake", lambda: AxiReaderHarness(scope="handshake"), "prove", 4, 20,
          ("arvalid_held_payload_stable_unbounded", "arsize_arburst_fixed")),
    Proof("store_handshake", lambda: StoreHarness(scope="handshake"), "prove", 4, 30,
          ("awvalid_held_payload_stable_unbounded", "wvalid_held_payload_stable_unbounded",
           "awsize_awburst_wstrb_fixed")),
    Proof("token_fifos", TokenHarness, "prove", 4, 12,
          ("token_count_within_depth", "no_token_lost_or_invented", "ok_room_exact")),
    Proof("unpacker_int4_one_record", lambda: UnpackerHarness(records=1, drain=4), "bmc",
          12, 12, ("beat_valid_held_payload_stable", "beat_exact_once", "no_beat_lost")),
    Proof("unpacker_int4_two_records", lambda: UnpackerHarness(records=2, drain=8), "bmc",
          16, 16, ("beat_valid_held_payload_stable", "beats_exact_in_order_once",
                   "no_beat_lost"), slow=True),
    Proof("noc_router2", lambda: _router(ports=2, depth=1), "bmc", 10, 10,
          _FLIT_PROPERTIES),
    Proof("noc_mesh2x2_two_flits", lambda: _mesh(drain=6, flits=2), "bmc", 10, 10,
          _FLIT_PROPERTIES, slow=True),
    Proof("noc_mesh2x2_any_traffic", lambda: _mesh(), "bmc", 10, 10,
          _FLIT_PROPERTIES[:4], slow=True),
    Proof("noc_router3", lambda: _router(ports=3, depth=1), "bmc", 10, 10,
          _FLIT_PROPERTIES, slow=True),
)

MUTANTS = (
    Mutant("axi_read_drops_arvalid", lambda: AxiReaderHarness(mutation="drop_arvalid"),
           "bmc", 6),
    Mutant("store_early_wlast", lambda: StoreHarness(mutation="early_wlast"), "bmc", 8),
    Mutant("tokens_give_without_room", lambda: TokenHarness(mutation="give_without_room"),
           "bmc", 12),
    Mutant("unpacker_repeats_a_word", lambda: UnpackerHarness(mutation="repeat_word"),
           "bmc", 8),
    Mutant("router2_short_drain", lambda: _router(ports=2, depth=1, drain=1), "bmc", 10),
)


def proof_named(name: str) -> Proof:
    """Return the :class:`Proof` called ``name``."""
    for p in PROOFS:
        if p.name == name:
            return p
    raise KeyError(f"no formal proof named {name!r}")
