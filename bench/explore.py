"""Figures of the design-space exploration (``airfoil explore``) on a local Dask cluster.

* ``explore_points_per_minute_local``: points evaluated per minute of wall-clock time by
  :func:`explore.sweep.sweep` on a ``LocalCluster`` of two worker processes, with an empty
  cache, for the shipped space ``tiny_speed`` (16 engines around ``sim_llm``: the tiny
  model planned for each point, a decode step at context 64 on the cycle model and a
  64-token prefill on the ISA simulator; no resource estimate). The cluster's start is
  counted.
* ``explore_points_per_minute_local_yosys``: the same for two points of the shipped space
  ``tiny_sim_llm`` (``sim_llm`` with 4 and 8 chains of 8 lanes, one channel), each with the
  whole core's Yosys estimate (an empty synthesis cache): the cost of a point that a
  sweep with resources pays.
* ``explore_tiny_best_tok_s_projected``: the highest projected decode tokens/s on the Pareto
  front of those two points within the XCU280's resources (the cycle model's decode step
  at context 64, calibrated against the RTL core: ``isa_cycle_model_error``).

Beside them: ``_points``, ``_seconds``, ``_shape`` and, for the best point,
``_decode_cycles``, ``_config_hash``, ``_dsp`` and ``_lut``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time

__all__ = ["FIGURES", "figures"]


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
