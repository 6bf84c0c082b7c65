"""Run a space's points on Dask, with a cache that makes a sweep resumable.

Each point's result is written to ``CACHE/<key>.json`` (:func:`explore.point.job_key`) as
soon as it arrives, atomically, so an interrupted sweep resumes where it stopped and a
repeated one evaluates nothing. The points not in the cache run on a Dask cluster: a
``LocalCluster`` of ``workers`` single-threaded worker processes by default, or the
scheduler at ``scheduler`` (``tcp://HOST:8786``), whose workers need only the installed
package. A worker that dies takes its points with it; the scheduler runs them again on
another worker (Dask's ``allowed-failures`` times), so no point is lost.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from airfoil.errors import AirfoilError

from .point import Job, evaluate, job_key, job_record
from .space import Space

__all__ = ["jobs_of", "sweep", "read_cached"]


def jobs_of(space: Space, model: str, estimate_cache: str | None = None) -> list[tuple]:
    """``(overrides, job)`` for every point of ``space`` with the model folder ``model``."""
    recipe = str(Path(space.recipe).resolve()) if space.recipe else None
    return [(ov, Job(config=space.config_of(ov), model=str(Path(model).resolve()),
                     recipe=recipe, context=space.context, prompt=space.prompt,
                     resources=space.resources, estimate_cache=estimate_cache))
            for ov in space.points()]


def read_cached(cache: Path, key: str) -> dict | None:
    """The cached result of ``key``, or None (an unreadable entry counts as missing)."""
    try:
        return json.loads((cache / f"{key}.json").read_text())["result"]
    except (OSError, ValueError, KeyError):
        return None


def _write_cached(cache: Path, key: str, job: Job, result: dict) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{key}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"job": job_record(job), "result": result}, sort_keys=True))
    os.replace(tmp, cache / f"{key}.json")


def _client(scheduler: str | None, workers: int):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except OSError as e:
            raise AirfoilError(f"cannot reach the Dask scheduler at {scheduler!r} ({e}); give "
                               f"tcp://HOST:PORT of a running scheduler") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    return Client(cluster), cluster


def sweep(space: Space, model: str, cache_dir, *, scheduler: str | None = None,
          workers: int = 2, progress=None, on_result=None) -> list[dict]:
    """Evaluate every point of ``space``; return one row per point, in the space's order.

    A row is ``{"point": overrides, "key": cache key, "cached": bool, **result}``.
    ``progress(done, total)`` is called as points complete (cached ones first);
    ``on_result(client, row)`` after each evaluated point (tests use it to kill a worker
    mid-sweep).
    """
    cache = Path(cache_dir)
    jobs = jobs_of(space, model, str(cache / "yosys"))
    keys = [job_key(job) for _, job in jobs]
    rows: list[dict | None] = []
    for (ov, _), key in zip(jobs, keys):
        hit = read_cached(cache, key)
        rows.append(None if hit is None else {"point": ov, "key": key, "cached": True, **hit})
    todo = [i for i, r in enumerate(rows) if r is None]
    total, done = len(rows), len(rows) - len(todo)
    if progress:
        progress(done, total)
    if todo:
        from dask.distributed import as_completed

        client, cluster = _client(scheduler, workers)
        try:
            futures = client.map(evaluate, [jobs[i][1] for i in todo],
                                 key=[f"airfoil-point-{keys[i]}" for i in todo], pure=False)
            where = {f.key: i for f, i in zip(futures, todo)}
            for fut in as_completed(futures):
                i = where[fut.key]
                result = fut.result()
                _write_cached(cache, keys[i], jobs[i][1], result)
                rows[i] = {"point": jobs[i][0], "key": keys[i], "cached": False, **result}
                done += 1
                if progress:
                    progress(done, total)
                if on_result:
                    on_result(client, rows[i])
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    return rows
