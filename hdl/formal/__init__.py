"""Formal checks with SymbiYosys: the runner (:mod:`.sby`), handshake rules
(:mod:`.rules`), a harness per unit and the list of proofs (:mod:`.proofs`)."""

from .rules import check_of, hold_until_ready
from .sby import MODES, SbyResult, run_sby, solver_available, write_sby

__all__ = ["MODES", "SbyResult", "run_sby", "write_sby", "solver_available",
           "hold_until_ready", "check_of"]
