"""One design point, evaluated where a worker runs it: is the config valid, does the model
fit it, how fast would it run, and what would the core cost.

:func:`evaluate` takes a :class:`Job` (plain data, so that it travels to a Dask worker
with nothing but the installed package behind it) and returns a flat mapping:

* ``valid`` and ``reason``: a config the checks refuse, or a model the compiler cannot
  plan for it, is an invalid point with the one-line reason;
* ``decode_cycles`` and ``tok_s_projected``: the cycle model's cycles of one decode step
  at position ``context`` (:func:`sim.isa_sim.decode_step_cycles`), and the clock over
  them; ``prefill_cycles`` and ``prefill_ms_projected`` for a prompt of ``prompt`` tokens
  (the ISA simulator runs it). The cycle model is calibrated against the RTL core (the
  bench's ``isa_cycle_model_error``), hence ``_projected``;
* ``dsp``, ``lut``, ``ff``, ``bram``, ``uram``: the whole core's Yosys estimate
  (:func:`hdl.estimate.core_estimate`), when the job asks for it.

The model is planned for each point in a temporary folder that is deleted afterwards:
a compiled folder is tied to one config.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Job", "evaluate", "job_key", "model_fingerprint", "RESOURCE_KEYS"]

#: Resource counts a Yosys estimate adds to a point.
RESOURCE_KEYS = ("dsp", "lut", "ff", "bram", "uram")


@dataclass(frozen=True)
class Job:
    """What a worker needs to evaluate one point (absolute paths only)."""

    config: dict
    model: str
    recipe: str | None
    context: int
    prompt: int
    resources: str
    estimate_cache: str | None = None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=16)
def model_fingerprint(model: str) -> str:
    """Digest of a model folder's ``config.json`` and weight files (names and content)."""
    root = Path(model)
    h = hashlib.sha256()
    for p in sorted(root.iterdir()):
        if p.is_file() and (p.name == "config.json" or p.suffix == ".safetensors"):
            h.update(p.name.encode())
            h.update(_file_digest(p).encode())
    return h.hexdigest()[:16]


def job_key(job: Job) -> str:
    """The cache key of a job: its config (as the hardware sees it: the config hash's
    fields), model, recipe, context, prompt, resource mode and the package version."""
    import airfoil

    config = {k: v for k, v in job.config.items() if k not in ("name", "description")}
    blob = json.dumps({
        "config": config,
        "model": model_fingerprint(job.model),
        "recipe": _file_digest(Path(job.recipe)) if job.recipe else None,
        "context": job.context, "prompt": job.prompt, "resources": job.resources,
        "version": airfoil.__version__,
    }, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


@functools.lru_cache(maxsize=4)
def _quantized(model: str, recipe: str | None):
    """The model imported and quantized once per worker process and (model, recipe)."""
    from compiler.importers.hf import import_hf
    from compiler.passes import llm_pipeline, quantized_model

    return quantized_model(llm_pipeline(recipe).run(import_hf(Path(model))))


def _speed(job: Job, config) -> dict:
    from airfoil.folder import load_folder
    from compiler.lower_llm import compile_llm
    from sim.isa_sim import IsaLLM, decode_step_cycles

    model = _quantized(job.model, job.recipe)
    with tempfile.TemporaryDirectory(prefix="airfoil-explore-") as tmp:
        out = Path(tmp) / "model"
        compile_llm(model, config, out, max_prompt=job.prompt)
        folder = load_folder(out, config)
        dec = decode_step_cycles(folder, config, job.context)
        llm = IsaLLM(folder, config)
        llm.prefill([t % llm.vocab for t in range(job.prompt)])
        pre = llm.runs[-1]["cycles"]
    hz = config.clock_mhz * 1e6
    return {"decode_cycles": dec["cycles"], "decode_bytes_read": dec["bytes_read"],
            "tok_s_projected": hz / dec["cycles"], "prefill_cycles": pre,
            "prefill_ms_projected": 1e3 * pre / hz}


def _resources(job: Job, config) -> dict:
    from hdl.estimate import core_estimate

    est = core_estimate(config, cache_dir=job.estimate_cache)
    return {**{k: est.get(k, 0) for k in RESOURCE_KEYS},
            "estimate_method": est["method"], "estimate_seconds": est["seconds"]}


def evaluate(job: Job) -> dict:
    """Evaluate one point (see the module docstring). Errors a user's choice explains
    (:class:`~airfoil.errors.AirfoilError`) make an invalid point; anything else is a
    fault of the tool and propagates."""
    from airfoil.config import AccelConfig
    from airfoil.errors import AirfoilError

    row = {"valid": False, "reason": "", "config_hash": "", "peak_macs_per_cycle": 0}
    try:
        config = AccelConfig.from_dict(job.config, "point")
    except AirfoilError as e:
        return {**row, "reason": f"config: {e}"}
    row.update(config_hash=config.config_hash, peak_macs_per_cycle=config.peak_macs_per_cycle,
               clock_mhz=config.clock_mhz)
    try:
        row.update(_speed(job, config))
    except AirfoilError as e:
        return {**row, "reason": f"model: {e}"}
    if job.resources == "yosys":
        row.update(_resources(job, config))
    return {**row, "valid": True}


def job_record(job: Job) -> dict:
    """A job as JSON-ready data (for the cache's record of what was evaluated)."""
    return asdict(job)
