"""``airfoil bench``: measure the project's figures into bench.json.

Figure producers live in modules ``airfoil/cli/bench_<area>.py``; each defines
``figures(args, log) -> dict`` (the module's docstring defines its figures) returning a
flat mapping of named figures together with their raw evidence (``<name>_cycles``,
``<name>_shape``, ``<name>_config_hash``).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

from ..errors import AirfoilError


def _producers():
    pkg = sys.modules[__package__]
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("bench_"):
            yield info.name[len("bench_"):], importlib.import_module(
                f"{__package__}.{info.name}")


def register(sub):
    p = sub.add_parser("bench", help="measure the project's figures into build/bench.json")
    p.add_argument("-o", "--output", default="build/bench.json", help="JSON file to write")
    p.add_argument("--only", action="append", default=[], metavar="AREA",
                   help="run only these areas (repeatable); default: all")
    p.add_argument("--build-dir", default="build", help="folder for builds and evidence")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    producers = dict(_producers())
    unknown = [a for a in args.only if a not in producers]
    if unknown:
        raise AirfoilError(f"unknown bench area {unknown[0]!r} (accepted: "
                           f"{', '.join(producers)})")
    out = Path(args.output)
    results: dict = {}
    if out.is_file() and args.only:
        results = json.loads(out.read_text())
    for name, mod in producers.items():
        if args.only and name not in args.only:
            continue
        t0 = time.monotonic()
        console.log(f"bench {name} ...")
        results.update(mod.figures(args, console.log))
        console.log(f"bench {name} done in {time.monotonic() - t0:.0f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    tmp.replace(out)
    table = Table(title=f"figures ({out})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in sorted(results.items()):
        if isinstance(v, (int, float)) and not k.endswith(("_cycles", "_config_hash")):
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)
    return 0
