"""Figures of the design-space exploration (``airfoil explore``) on a local Dask cluster.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``explore``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "explore_points_per_minute_local": "points/minute",
    "explore_points_per_minute_local_yosys": "points/minute",
    "explore_tiny_best_tok_s_projected": "tokens/s (projected)",
}


def _timed_sweep(space, cache_dir):
    from explore.sweep import sweep

    from airfoil.models import model_path

    t0 = time.monotonic()
    rows = sweep(space, str(model_path(space.model)), cache_dir, workers=2)
    return rows, time.monotonic() - t0


def figures(args, log) -> dict:
    from explore.front import pareto_front
    from explore.space import load_space

    out = {}
    speed = load_space("tiny_speed")
    with tempfile.TemporaryDirectory() as tmp:
        log("explore: tiny_speed, 16 points, empty cache")
        rows, sec = _timed_sweep(speed, tmp)
    out.update({
        "explore_points_per_minute_local": 60 * len(rows) / sec,
        "explore_points_per_minute_local_points": len(rows),
        "explore_points_per_minute_local_seconds": round(sec, 1),
        "explore_points_per_minute_local_shape": "tiny_speed: tiny-llama on 16 engines, "
                                                 "2 local workers, no resource estimate",
    })
    full = load_space("tiny_sim_llm")
    two = dataclasses.replace(full, axes=(("chains", (4, 8)), ("lanes", (8,)),
                                          ("memory.channels", (1,))))
    with tempfile.TemporaryDirectory() as tmp:
        log("explore: tiny_sim_llm, 2 points with Yosys estimates, empty cache")
        rows, sec = _timed_sweep(two, tmp)
    front = pareto_front(rows, two.device)
    best = max((r for r, on in zip(rows, front) if on), key=lambda r: r["tok_s_projected"])
    out.update({
        "explore_points_per_minute_local_yosys": 60 * len(rows) / sec,
        "explore_points_per_minute_local_yosys_points": len(rows),
        "explore_points_per_minute_local_yosys_seconds": round(sec, 1),
        "explore_points_per_minute_local_yosys_shape": "tiny_sim_llm: sim_llm with 4 and 8 "
                                                       "chains x 8 lanes, 2 local workers",
        "explore_tiny_best_tok_s_projected": best["tok_s_projected"],
        "explore_tiny_best_tok_s_projected_decode_cycles": best["decode_cycles"],
        "explore_tiny_best_tok_s_projected_config_hash": best["config_hash"],
        "explore_tiny_best_tok_s_projected_dsp": best["dsp"],
        "explore_tiny_best_tok_s_projected_lut": best["lut"],
        "explore_tiny_best_tok_s_projected_shape": f"tiny-llama decode at context "
                                                   f"{two.context}, {best['point']}",
    })
    return out
