"""Reliability figures: randomized RTL runs, their functional coverage, and CLI fuzzing.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``reliability``.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "reliability_random_rtl_cases": "layers",
    "reliability_random_rtl_mismatches": "layers",
    "reliability_random_rtl_refused": "layers",
    "coverage_bins": "bins",
    "coverage_bins_hit": "bins",
    "coverage_bins_hit_fraction": "fraction",
    "reliability_program_fuzz_cases": "programs",
    "reliability_program_fuzz_mismatches": "programs",
    "reliability_program_fuzz_rtl_programs_per_second": "programs/s",
    "cli_fuzz_cases": "CLI runs",
    "cli_fuzz_non_one_line": "CLI runs",
    "cli_fuzz_silently_accepted": "CLI runs",
}

#: Channel count -> (first seed, cases) of the randomized RTL regression.
RANDOM_RTL = {1: (300_000, 500), 2: (400_000, 300), 4: (500_000, 200)}
#: Config -> seeds of the program fuzzer.
PROGRAM_SEEDS = {"test": range(0, 1000), "test_decode": range(0, 300), "test_x2": range(0, 300)}
#: Fuzzed programs per simulator process.
PROGRAM_BATCH = 250
#: CLI fuzz cases per input kind.
CLI_FUZZ = 100


def commit() -> str:
    """The repository's commit (``unknown`` outside a git checkout), ``+dirty`` when the
    tree has changes."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _random_rtl(build: Path, log) -> dict:
    from sim import coverage
    from sim.random_regression import channel_variant, draw_cases, run_cases
    cases = mismatches = refused = 0
    out = {"reliability_random_rtl_failures": []}
    for channels, (seed, count) in RANDOM_RTL.items():
        cfg = channel_variant("test_decode", channels)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            # One channel count watches the full signals (a build of its own).
            records = run_cases(draw_cases(cfg, seed, count), cfg, Path(tmp),
                                build_dir=str(build),
                                watch=coverage.FULL_SIGNALS if channels == 1 else ())
        bad = [r for r in records if not r["ok"] and not r["refused"]]
        ran = [r for r in records if not r["refused"]]
        cases += len(ran)
        mismatches += len(bad)
        refused += len(records) - len(ran)
        out["reliability_random_rtl_failures"] += [f"{r['case']!r}: {r['detail']}"
                                                   for r in bad]
        out[f"reliability_random_rtl_{channels}ch_config_hash"] = cfg.config_hash
        out[f"reliability_random_rtl_{channels}ch_seeds"] = [seed, seed + count - 1]
        out[f"reliability_random_rtl_{channels}ch_cycles"] = sum(r["cycles"] or 0
                                                                 for r in ran)
        out[f"reliability_random_rtl_{channels}ch_seconds"] = round(time.monotonic() - t0, 1)
        log(f"random RTL, {channels} channel(s): {len(ran)} cases, {len(bad)} mismatches")
    out.update(reliability_random_rtl_cases=cases, reliability_random_rtl_mismatches=mismatches,
               reliability_random_rtl_refused=refused)
    return out


def _program_fuzz(build: Path, log) -> dict:
    from collections import Counter

    from airfoil.config import load_config
    from airfoil.isa import ErrorCode
    from sim import coverage
    from sim.program_fuzz import fill_programs, fuzz

    from airfoil.cli.backend_rtl import emit_core
    from sim.measure.mc import mc_config
    cases, mismatches, seconds = 0, [], 0.0
    kinds, codes = Counter(), Counter()
    seeds, hashes = {}, {}
    test = load_config("test")
    configs = {"test": test, "test_decode": load_config("test_decode"),
               "test_x2": mc_config(2, test, out_rows=1)}
    for key, cfg in configs.items():
        rng = PROGRAM_SEEDS[key]
        log(f"program fuzz: {len(rng)} programs on {cfg.name}")
        # The programs on ``test`` watch the full signals (a build of their own), with the
        # directed programs that fill the SFU queue and the token FIFOs.
        on_test = key == "test"
        s = fuzz(rng, cfg, emit_core(cfg, build), batch=PROGRAM_BATCH,
                 build_root=f"{build}/sim", watch=coverage.FULL_SIGNALS if on_test else (),
                 extra=fill_programs(cfg) if on_test else ())
        coverage.sample_full(s.watched)
        cases += s.cases
        mismatches += s.mismatches
        seconds += s.rtl_seconds
        kinds.update(s.kinds)
        codes.update(s.codes)
        seeds[cfg.name] = f"{rng.start}..{rng.stop - 1}"
        hashes[cfg.name] = cfg.config_hash
    for name, count in codes.items():
        for _ in range(count):
            coverage.sample_error(ErrorCode[name].value)
    return {
        "reliability_program_fuzz_cases": cases,
        "reliability_program_fuzz_mismatches": len(mismatches),
        "reliability_program_fuzz_seeds": seeds,
        "reliability_program_fuzz_config_hash": hashes,
        "reliability_program_fuzz_kinds": dict(sorted(kinds.items())),
        "reliability_program_fuzz_codes": dict(sorted(codes.items())),
        "reliability_program_fuzz_rtl_programs_per_second": round(cases / seconds, 2),
        "reliability_program_fuzz_first_mismatch": mismatches[0] if mismatches else "",
    }


def _cli_fuzz(log) -> dict:
    from sim.cli_fuzz import KINDS, fuzz
    totals = {"cases": 0, "non_one_line": 0, "silently_accepted": 0}
    out = {"cli_fuzz_failures": []}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            r = fuzz(kind, CLI_FUZZ, Path(tmp) / kind)
            for k in totals:
                totals[k] += r[k]
            out[f"cli_fuzz_{kind}_cases"] = r["cases"]
            out["cli_fuzz_failures"] += r["failures"][:5]
            log(f"CLI fuzz {kind}: {r['cases']} cases, {r['non_one_line']} not one line, "
                f"{r['silently_accepted']} silently accepted")
    out.update({f"cli_fuzz_{k}": v for k, v in totals.items()})
    out["cli_fuzz_seconds"] = round(time.monotonic() - t0, 1)
    return out


def figures(args, log) -> dict:
    from sim import coverage
    from sim.random_regression import channel_variant
    build = Path(args.build_dir)
    coverage.define(channel_variant("test_decode", 1), coverage.FULL_SIGNALS)
    out = {"reliability_commit": commit()}
    out.update(_random_rtl(build, log))
    out.update(_program_fuzz(build, log))
    report = coverage.write_report(build / "coverage")
    out.update(coverage_bins=report["bins"], coverage_bins_hit=report["hit"],
               coverage_bins_hit_fraction=round(report["hit_fraction"], 4),
               coverage_missing_bins={k: v["missing"] for k, v in report["points"].items()
                                      if v["missing"]})
    out.update(_cli_fuzz(log))
    return out
