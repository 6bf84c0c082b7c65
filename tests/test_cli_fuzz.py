"""Input fuzzing of the CLI with hypothesis (:mod:`sim.cli_fuzz`): board YAML (fields and
raw bytes), recipes, model ``config.json``, manifests and program files, each mutated
from a valid file.

Every run must either succeed (status 0) or print exactly one line ``airfoil: error: ...``
with status 2, a failed ``compile`` must leave no output folder behind, and a known-bad
input (a changed program file, a text file that is not UTF-8) must not be accepted.
``make test`` runs :data:`EXAMPLES` cases per input kind (seeded, so the same cases every
run); set ``AIRFOIL_FUZZ_EXAMPLES`` for a longer search.
"""

from __future__ import annotations

import json
import os

import pytest

from sim.cli_fuzz import KINDS, fuzz

#: Cases per input kind in the default run.
EXAMPLES = int(os.environ.get("AIRFOIL_FUZZ_EXAMPLES", "50"))


@pytest.mark.parametrize("kind", KINDS)
def test_fuzz_inputs_give_one_line_errors(tmp_path, kind):
    r = fuzz(kind, EXAMPLES, tmp_path)
    assert r["cases"] >= EXAMPLES
    assert r["non_one_line"] == 0 and r["silently_accepted"] == 0, \
        json.dumps(r["failures"][:5], indent=1)[:6000]


def test_fuzz_counts_every_outcome():
    """The tally can fail: a traceback, a second line or an accepted bad input count."""
    import sys

    from sim.cli_fuzz import _Run

    def fake(argv):
        if argv[0] == "raise":
            raise KeyError("x")
        if argv[0] == "two":
            print("airfoil: error: a\nairfoil: error: b", file=sys.stderr)
            return 2
        if argv[0] == "one":
            print("airfoil: error: a", file=sys.stderr)
            return 2
        return 0

    run = _Run("program_bytes", main=fake)
    for argv, bad in ((["raise"], False), (["two"], False), (["one"], False), (["ok"], True),
                      (["ok"], False)):
        run(argv, bad=bad)
    assert run.counts == {"cases": 5, "ok": 2, "one_line": 1, "non_one_line": 2,
                          "silently_accepted": 1}
    assert len(run.failures) == 3
