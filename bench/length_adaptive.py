"""Program bytes of length-adaptive compilation at LLaMA-2-7B scale on the U280 config,
against FlightLLM's length buckets and one program per length, all built by this
compiler in the same encoding.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``length_adaptive``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["FIGURES", "MAX_LENGTH", "MODEL", "scheme_bytes", "figures"]

#: Figure name -> unit; defined in docs/figures.md.
FIGURES = {
    "length_adaptive_bytes": "bytes",
    "bucket_scheme_bytes": "bytes",
    "per_length_bytes": "bytes",
    "length_adaptive_bytes_vs_buckets": "ratio",
    "length_adaptive_bytes_vs_per_length": "ratio",
}

#: Lengths every scheme serves: 1 .. MAX_LENGTH tokens of prompt and of context.
MAX_LENGTH = 4096
#: The model and board of the figures (a key of :data:`bench._fullsize.MODELS`).
MODEL = "llama2_7b_u280"


def _fixed_bytes(words, phase: str, lengths, kv_banks: int) -> dict[int, int]:
    """Bytes of the ``phase`` program fixed to each length in ``lengths`` (prefill: a
    prompt of that many tokens, up to the prefill program's tokens; decode: one token
    that sees that many keys), on a KV buffer of ``kv_banks`` banks."""
    from airfoil.program import Program
    from compiler.fixed_length import fixed_length_words
    out = {}
    for n in lengths:
        pos, tokens = (0, n) if phase == "prefill" else (n - 1, 1)
        out[n] = len(Program(fixed_length_words(words, pos=pos, tokens=tokens,
                                                kv_banks=kv_banks), bytes(8)).to_bytes())
    return out


def scheme_bytes(folder, max_length: int = MAX_LENGTH, sample=None) -> dict:
    """The three schemes' program bytes for every length ``1 .. max_length``, from a
    compiled LLM ``folder`` (a path; its ``prefill.afp`` and ``decode.afp``).

    * adaptive: the folder's two programs;
    * buckets: one program per bucket (:data:`compiler.fixed_length.BUCKETS`) and phase,
      each the phase program with its lengths fixed to the bucket's largest;
    * per length: one program per length and phase, fixed to that length.

    A fixed-length program has the adaptive program's instructions (the lengths are
    fields and registers, :mod:`compiler.fixed_length`): the function builds the fixed
    programs of the lengths in ``sample`` (default: 1, 2, the first bucket's bound and the
    length after it, ``max_length - 1`` and ``max_length``; every length when
    ``sample="all"``), checks that each has the bytes of its adaptive program, and counts
    the programs of each scheme. Prefill programs are fixed
    to at most the folder's ``max_prompt`` tokens (a longer prompt runs as chunks of
    ``max_prompt`` tokens; the buffers hold no more).
    """
    import json

    from airfoil.config import load_config
    from airfoil.program import read_program
    from compiler.fixed_length import BUCKETS

    folder = Path(folder)
    man = json.loads((folder / "manifest.json").read_text())
    kv_banks = load_config(man["config"]).buffers.kv_banks
    mm = man["model"]
    cap = {"prefill": mm["max_prompt"], "decode": mm["max_positions"]}
    if max_length > mm["max_positions"]:
        raise ValueError(f"the folder holds {mm['max_positions']} positions, not the "
                         f"{max_length} every scheme must serve")
    out = {"adaptive": 0, "buckets": 0, "per_length": 0, "programs": {}}
    for phase in ("prefill", "decode"):
        raw = (folder / man["programs"][phase]).read_bytes()
        words = read_program(folder / man["programs"][phase]).words
        size = len(raw)
        step = BUCKETS[phase]
        bounds = [min(b, max_length) for b in range(step, max_length + step, step)]
        if sample == "all":
            lengths = range(1, max_length + 1)
        else:
            lengths = sorted(set(sample or (1, 2, step, step + 1, max_length - 1,
                                            max_length)))
        fixed = _fixed_bytes(words, phase, [min(n, cap[phase]) for n in lengths],
                             kv_banks)
        wrong = {n: b for n, b in fixed.items() if b != size}
        if wrong:
            raise AssertionError(f"{phase}: fixed-length programs of {len(wrong)} lengths "
                                 f"differ in size from the adaptive one ({size} bytes)")
        out["adaptive"] += size
        out["buckets"] += len(bounds) * size
        out["per_length"] += max_length * size
        out["programs"][phase] = {"bytes": size, "instructions": len(words),
                                  "buckets": len(bounds), "per_length": max_length,
                                  "checked_lengths": len(fixed)}
    return out


def figures(args, log) -> dict:
    """``airfoil bench`` entry: compile LLaMA-2-7B size-only for the U280 and count."""
    from airfoil.config import load_config

    from ._fullsize import MODELS, compile_measured
    shape, config = MODELS[MODEL]
    out_dir = Path(args.build_dir) / "length_adaptive" / MODEL
    compile_measured(shape, config, out_dir, size_only=True, log=log)
    s = scheme_bytes(out_dir)
    log(f"{MODEL}: adaptive {s['adaptive']} B (2 programs), buckets {s['buckets']} B, "
        f"per length {s['per_length']} B")
    return {
        "length_adaptive_bytes": s["adaptive"],
        "bucket_scheme_bytes": s["buckets"],
        "per_length_bytes": s["per_length"],
        "length_adaptive_bytes_vs_buckets": s["adaptive"] / s["buckets"],
        "length_adaptive_bytes_vs_per_length": s["adaptive"] / s["per_length"],
        "length_adaptive_bytes_shape": f"{shape} on {config}, lengths 1..{MAX_LENGTH}",
        "length_adaptive_bytes_config_hash": load_config(config).config_hash,
        "length_adaptive_bytes_programs": s["programs"],
    }
