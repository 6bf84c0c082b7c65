"""``airfoil explore SPACE.yaml --model MODEL``: sweep configurations on Dask.

Every point of the space (:mod:`explore.space`) is evaluated on a Dask cluster
(:mod:`explore.sweep`: a local one of ``--workers`` processes by default, or the
scheduler ``--scheduler tcp://HOST:8786``): the config's checks, the model planned for
it, the cycle model's projected decode tokens/s and prefill time, and the whole core's
Yosys estimate (``resources: yosys`` in the space). Results are cached under
``--cache-dir`` (default ``build/explore-cache``), so an interrupted sweep resumes and a
repeated one costs nothing. Written into ``-o`` (default ``build/explore/<space>``):
``points.csv`` (one line per point), ``front.png`` (tokens/s against DSP and LUT, the
Pareto front highlighted) and ``front.json``; the front is printed as a table.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import AirfoilError


def register(sub):
    p = sub.add_parser("explore", help="sweep configurations of a design space on Dask: "
                                       "projected tokens/s, resources, the Pareto front")
    p.add_argument("space", metavar="SPACE.yaml", help="the design space (see README)")
    p.add_argument("--model", help="HF-layout model folder or shipped model name (default: "
                                   "the space's model)")
    p.add_argument("--scheduler", metavar="tcp://HOST:8786",
                   help="a running Dask scheduler (default: a local cluster)")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes of the local cluster (default 2)")
    p.add_argument("--cache-dir", default="build/explore-cache",
                   help="where results are cached (default build/explore-cache)")
    p.add_argument("-o", "--output", help="output folder (default build/explore/<space>)")
    p.set_defaults(func=run)


def _model_dir(space, arg) -> Path:
    from ..models import BUILTIN_MODELS, model_path

    name = arg or space.model
    if name is None:
        raise AirfoilError("no model: give --model MODEL or model: in the space (an HF-layout "
                           f"folder or one of {', '.join(BUILTIN_MODELS)})")
    path = model_path(name)
    if not (path / "config.json").is_file():
        raise AirfoilError(f"model {name!r} not found (an HF-layout folder with config.json "
                           f"and *.safetensors, or one of {', '.join(BUILTIN_MODELS)})")
    return path


def _front_table(rows, front, costs, title):
    from rich.table import Table

    t = Table(title=title)
    fields = list(dict.fromkeys(k for r in rows for k in r["point"]))
    for c in fields + ["tok/s (proj.)", "prefill ms (proj.)"] + list(costs):
        t.add_column(c, justify="right")
    for r in sorted((r for r, on in zip(rows, front) if on),
                    key=lambda r: -r["tok_s_projected"]):
        t.add_row(*[str(r["point"].get(f, "")) for f in fields],
                  f"{r['tok_s_projected']:.1f}", f"{r['prefill_ms_projected']:.2f}",
                  *[str(r[c]) for c in costs])
    return t


def run(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from explore.front import costs_of, pareto_front, write_csv, write_plot
    from explore.space import load_space
    from explore.sweep import sweep

    if args.workers < 1:
        raise AirfoilError(f"--workers must be at least 1, not {args.workers}")
    space = load_space(args.space)
    model = _model_dir(space, args.model)
    out = Path(args.output or Path("build/explore") / Path(args.space).stem)
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]points"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), TimeElapsedColumn(), console=console,
                  transient=not console.is_terminal) as bar:
        task = bar.add_task("points", total=None)
        rows = sweep(space, str(model), args.cache_dir, scheduler=args.scheduler,
                     workers=args.workers,
                     progress=lambda done, total: bar.update(task, completed=done,
                                                             total=total))
    front = pareto_front(rows, space.device)
    costs = costs_of(rows)
    write_csv(rows, front, space.device, out / "points.csv")
    title = (f"{Path(args.space).name}: {model.name}, decode at {space.context}, "
             f"prefill {space.prompt} tokens")
    if any(r["valid"] for r in rows):
        write_plot(rows, front, out / "front.png", title)
    (out / "front.json").write_text(json.dumps(
        [r for r, on in zip(rows, front) if on], indent=1, sort_keys=True))
    valid = sum(r["valid"] for r in rows)
    cached = sum(r["cached"] for r in rows)
    Console().print(_front_table(rows, front, costs, title))
    print(f"{len(rows)} points ({valid} valid, {cached} from the cache), {sum(front)} on the "
          f"front{'' if costs != ('peak_macs_per_cycle',) else ' (ranked by peak MACs per cycle: no resource estimate)'}"
          f" -> {out}")
    return 0
