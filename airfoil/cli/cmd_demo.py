"""``airfoil demo``: compile the built-in layer and show every backend agreeing bit for bit."""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from ..config import load_config
from ..errors import AirfoilError
from ..folder import load_folder
from .cmd_run import checksum, rtl_module, run_backend


def register(sub):
    p = sub.add_parser("demo", help="compile the built-in linear layer and run it on the "
                                    "torch, isa (and rtl) backends")
    p.add_argument("--config", default="test", help="board config name or YAML path "
                                                    "(default: test)")
    p.add_argument("-o", "--output", default="build/demo", metavar="OUT",
                   help="output folder (default: build/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the layer and calibration")
    p.add_argument("--no-rtl", action="store_true", help="skip the rtl backend")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .cmd_compile import compile_from_args

    console = Console()
    cargs = SimpleNamespace(config=args.config, recipe=None, output=args.output,
                            layer="builtin", n=None, k=None, seed=args.seed, wformat=None,
                            group=None, out_format=None)
    t0 = time.monotonic()
    m = compile_from_args(cargs)
    layer = m["layers"][0]
    console.print(f"compiled linear {layer['n']} x {layer['k']} {layer['wformat']} "
                  f"g{layer['group']} for config {m['config']} into {args.output} "
                  f"({len(layer['tiles'])} tiles, {time.monotonic() - t0:.1f} s)")
    config = load_config(args.config)
    folder = load_folder(args.output, config)
    backends = ["torch", "isa"]
    note = None
    if args.no_rtl:
        note = "rtl skipped (--no-rtl)"
    else:
        try:
            rtl_module()
            backends.append("rtl")
        except AirfoilError as e:
            note = f"rtl skipped: {e}"
    table = Table(title=f"linear {layer['n']} x {layer['k']} on config {config.name}")
    for col in ("backend", "checksum", "first values", "cycles", "time", "match"):
        table.add_column(col, justify="right" if col in ("cycles", "time") else "left")
    ref = None
    ok = True
    for b in backends:
        t0 = time.monotonic()
        out, stats = run_backend(b, folder, config, None, seed=args.seed)
        dt = time.monotonic() - t0
        if ref is None:
            ref = out
        same = torch.equal(out, ref)
        ok &= same
        table.add_row(b, checksum(out), " ".join(map(str, out[:6].tolist())),
                      str(stats.get("cycles", "-")), f"{dt:.1f} s",
                      "reference" if b == "torch" else ("yes" if same else "NO"))
    console.print(table)
    if note:
        console.print(note)
    if not ok:
        console.print("[bold red]backends disagree[/]")
        return 1
    console.print("all backends agree bit for bit")
    return 0
