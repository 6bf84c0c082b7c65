"""Functional coverage of the core's randomized runs (cocotb-coverage).

The bins (:func:`define` builds them for a config):

* ``airfoil.layer.format_x_sparsity``: every (weight format, sparsity) pair a layer on
  the config may take (:func:`sim.random_regression.legal_pairs`), sampled by each
  layer the randomized regression runs on the RTL core;
* ``airfoil.core.error_code``: every :class:`airfoil.isa.ErrorCode` (``NONE`` included),
  sampled by each RTL run's status: the regression's layers, and the program fuzzer's
  programs (the ISA simulator's code, which the fuzzer compares with the core's);
* ``airfoil.memory.read_stalls`` and ``airfoil.memory.write_stalls``: every stall pattern
  of :data:`sim.core_harness.STALL_PATTERNS`, sampled by each RTL run that read
  (wrote) memory under it;
* ``airfoil.core.full``: each queue of the core seen full in an RTL run
  (:data:`FULL_SIGNALS`: the instruction queue of every unit and the token FIFOs from
  every unit), sampled from the signals
  the testbench watched (:func:`sim.rtl.run_core`).

:func:`write_report` writes the cocotb-coverage YAML and a JSON summary (bins, hits, the
fraction hit and the missing bins) under ``build/coverage/``.
"""

from __future__ import annotations

import json
from pathlib import Path

from cocotb_coverage.coverage import CoverPoint, coverage_db

from airfoil.isa import ErrorCode, Unit

__all__ = ["define", "sample_layer", "sample_error", "sample_full", "summary",
           "write_report", "ROOT", "FULL_SIGNALS"]

ROOT = "airfoil"
#: Core signals of a full queue: each unit's instruction queue (``!``: the watch counts
#: the cycles its ``w_rdy`` is low) and the token FIFOs from each unit
#: (:class:`hdl.core.tokens.TokenCounters`).
FULL_SIGNALS = (tuple(f"!engine.queue_{unit.name.lower()}.w_rdy" for unit in Unit) +
                tuple(f"engine.tokens.full_from_{unit.value}" for unit in Unit))
_samplers: dict = {}


def define(cfg, full_signals=()) -> None:
    """Build the bins for ``cfg`` (once per process; later calls are no-ops)."""
    from sim.core_harness import STALL_PATTERNS
    from sim.random_regression import legal_pairs
    if _samplers:
        return
    pairs = legal_pairs(cfg)

    @CoverPoint(f"{ROOT}.layer.format_x_sparsity", xf=lambda f, s: (f, s), bins=pairs,
                bins_labels=[f"{f} x {s}" for f, s in pairs])
    def layer(f, s):
        pass

    codes = [c.name for c in ErrorCode]

    @CoverPoint(f"{ROOT}.core.error_code", xf=lambda c: ErrorCode(c).name, bins=codes)
    def error(code):
        pass

    @CoverPoint(f"{ROOT}.memory.read_stalls", xf=lambda p: p, bins=list(STALL_PATTERNS))
    def read_stalls(pattern):
        pass

    @CoverPoint(f"{ROOT}.memory.write_stalls", xf=lambda p: p, bins=list(STALL_PATTERNS))
    def write_stalls(pattern):
        pass

    _samplers.update(layer=layer, error=error, read=read_stalls, write=write_stalls)
    if full_signals:
        names = list(full_signals)

        @CoverPoint(f"{ROOT}.core.full", xf=lambda n: n, bins=names)
        def full(name):
            pass
        _samplers["full"] = full


def sample_layer(format_bin: str, sparsity: str, stall_pattern: str, *, wrote: bool = True
                 ) -> None:
    """One layer ran on the RTL core (it read, and wrote when ``wrote``)."""
    _samplers["layer"](format_bin, sparsity)
    _samplers["read"](stall_pattern)
    if wrote:
        _samplers["write"](stall_pattern)


def sample_error(code: int) -> None:
    """One RTL run ended with error code ``code`` (0: none)."""
    _samplers["error"](code)


def sample_full(watched: dict) -> None:
    """An RTL run's watched signals: each one seen high samples its bin."""
    if "full" in _samplers:
        for name, count in watched.items():
            if count:
                _samplers["full"](name)


def summary() -> dict:
    """Bins, hits, the fraction hit, and the missing bins per cover point."""
    points = {}
    total = hit = 0
    for name in sorted(coverage_db):
        cp = coverage_db[name]
        if not isinstance(cp, CoverPoint) or not name.startswith(ROOT + "."):
            continue
        detail = cp.detailed_coverage
        missing = [str(b) for b, n in detail.items() if n < cp.at_least]
        points[name] = {"bins": len(detail), "hit": len(detail) - len(missing),
                        "missing": missing}
        total += len(detail)
        hit += len(detail) - len(missing)
    return {"bins": total, "hit": hit, "hit_fraction": hit / total if total else 0.0,
            "points": points}


def write_report(out_dir="build/coverage") -> dict:
    """Write ``coverage.yml`` (cocotb-coverage's export) and ``summary.json``; return the
    summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    coverage_db.export_to_yaml(str(out / "coverage.yml"))
    s = summary()
    (out / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    return s
