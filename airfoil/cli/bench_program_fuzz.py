"""``airfoil bench`` figures of the program fuzzer (area ``program_fuzz``).

Random programs of :mod:`sim.program_fuzz`, legal and illegal, each generated from one
integer seed, run on the ISA simulator (:class:`sim.isa_sim.IsaSim`) and on the RTL core
(Verilator + cocotb, :func:`sim.rtl.run_core`, :data:`BATCH` programs per simulator
process, random memory stalls of probability 0, 0.25 or 0.5 by seed) and compared:
done/error status, error code, error instruction index and, for a program that
completes, its output memory byte for byte; a run that does not finish within its cycle
limit is a mismatch. Seeds :data:`SEEDS` on the ``test`` config, :data:`DECODE_SEEDS` on
``test_decode`` (streamed weights) and :data:`X2_SEEDS` on ``test_x2`` (``test`` with two
memory channels, :func:`airfoil.cli.bench_mc.mc_config`).

* ``reliability_program_fuzz_cases``: programs run on both sides and compared.
  Goal >= 1,000.
* ``reliability_program_fuzz_mismatches``: programs whose two outcomes differ. Goal 0.

Evidence: ``reliability_program_fuzz_seeds`` (seed range per config),
``reliability_program_fuzz_config_hash`` (per config), ``reliability_program_fuzz_kinds``
(programs per kind), ``reliability_program_fuzz_codes`` (programs per error code the ISA
simulator reported, ``NONE`` for those that complete),
``reliability_program_fuzz_rtl_programs_per_second`` (programs over the wall-clock time of
the RTL runs, simulator start-up included; the Verilator build is not) and
``reliability_program_fuzz_first_mismatch`` (the first mismatch's report, or empty).
"""

from __future__ import annotations

from collections import Counter

from ..config import load_config

__all__ = ["SEEDS", "DECODE_SEEDS", "X2_SEEDS", "BATCH", "figures"]

#: Seeds run on the ``test`` config.
SEEDS = range(0, 1000)
#: Seeds run on the ``test_decode`` config.
DECODE_SEEDS = range(0, 300)
#: Seeds run on ``test_x2``.
X2_SEEDS = range(0, 300)
#: Programs per simulator process.
BATCH = 250


def figures(args, log) -> dict:
    from sim.program_fuzz import fuzz

    from .backend_rtl import emit_core
    from .bench_mc import mc_config

    build = getattr(args, "build_dir", "build")
    cases, mismatches, seconds = 0, [], 0.0
    kinds, codes = Counter(), Counter()
    seeds, hashes = {}, {}
    test = load_config("test")
    for cfg, rng in ((test, SEEDS), (load_config("test_decode"), DECODE_SEEDS),
                     (mc_config(2, test, out_rows=1), X2_SEEDS)):
        name = cfg.name
        core = emit_core(cfg, build)
        log(f"program fuzz: {len(rng)} programs on {name}")
        s = fuzz(rng, cfg, core, batch=BATCH, build_root=f"{build}/sim")
        cases += s.cases
        mismatches += s.mismatches
        seconds += s.rtl_seconds
        kinds.update(s.kinds)
        codes.update(s.codes)
        seeds[name] = f"{rng.start}..{rng.stop - 1}"
        hashes[name] = cfg.config_hash
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
