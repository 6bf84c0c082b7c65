"""``airfoil bench``: measure the project's figures into bench.json.

The producers and the driver are the top-level :mod:`bench` package (one module per
area); the figures are defined in docs/figures.md. This command parses the arguments,
runs :func:`bench.run` and prints the figures as a table.
"""

from __future__ import annotations

from ..errors import AirfoilError


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

    import bench

    console = Console(stderr=True)
    try:
        results = bench.run(args, console.log)
    except bench.UnknownArea as e:
        raise AirfoilError(str(e)) from None
    table = Table(title=f"figures ({args.output})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in sorted(results.items()):
        if isinstance(v, (int, float)) and not k.endswith(("_cycles", "_config_hash")):
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)
    return 0
