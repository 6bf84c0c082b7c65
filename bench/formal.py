"""Formal-proof figures for ``airfoil bench``: SymbiYosys (yowasp-sby, smtbmc + yices) on
the checks of :data:`hdl.formal.proofs.PROOFS`, each followed by its cover run.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``formal``.
"""

from __future__ import annotations

import tempfile

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "formal_properties_proved": "properties",
    "formal_properties_failed": "properties",
    "formal_properties_unfinished": "properties",
    "formal_mutants_caught": "mutants",
    "formal_mutants": "mutants",
}


def figures(args, log) -> dict:
    """Run every formal check (a few minutes on one core)."""
    from hdl.formal import run_sby, solver_available
    from hdl.formal.proofs import MUTANTS, PROOFS

    if not solver_available():
        log("formal: yowasp-sby or yices-smt2 missing; no figures")
        return {}
    out = {}
    proved = failed = unfinished = caught = 0
    with tempfile.TemporaryDirectory(prefix="airfoil-formal-") as tmp:
        for p in PROOFS:
            r = run_sby(p.build(), p.name, f"{tmp}/{p.name}", mode=p.mode, depth=p.depth)
            c = run_sby(p.build(), p.name, f"{tmp}/{p.name}_cover", mode="cover",
                        depth=p.cover_depth)
            n = len(p.properties)
            if r.passed and c.passed:
                proved += n
            elif r.status == "FAIL" or c.status == "FAIL":
                failed += n
            else:
                unfinished += n
            log(f"formal {p.name}: {p.mode} depth {p.depth} {r.status} ({r.seconds:.1f} s), "
                f"cover depth {p.cover_depth} {c.status} ({c.seconds:.1f} s)")
            key = f"formal_{p.name}"
            out.update({f"{key}_mode": p.mode, f"{key}_depth": p.depth,
                        f"{key}_status": r.status, f"{key}_seconds": round(r.seconds, 1),
                        f"{key}_cover_status": c.status, f"{key}_cover_depth": p.cover_depth,
                        f"{key}_cover_seconds": round(c.seconds, 1),
                        f"{key}_properties": ", ".join(p.properties)})
        for mu in MUTANTS:
            r = run_sby(mu.build(), mu.name, f"{tmp}/{mu.name}", mode=mu.mode, depth=mu.depth)
            caught += r.status == "FAIL"
            log(f"formal mutant {mu.name}: {r.status} ({r.seconds:.1f} s)")
    out.update({"formal_properties_proved": proved, "formal_properties_failed": failed,
                "formal_properties_unfinished": unfinished,
                "formal_mutants_caught": caught, "formal_mutants": len(MUTANTS)})
    return out
