"""``airfoil demo``: show every backend agreeing bit for bit.

Two parts: the built-in linear layer on the torch, isa and rtl backends, then the
shipped tiny LLM (``tiny-llama``, :mod:`airfoil.models`) compiled and generating text
greedily on the torch golden, the isa simulator and the RTL core in Verilator (``--no-linear`` /
``--no-llm`` skip a part, ``--no-rtl`` the Verilator runs).
"""

from __future__ import annotations

import time
import torch

from ..config import load_config
from ..errors import AirfoilError
from ..folder import load_folder
from .argtypes import SEED, int_in
from .cmd_run import checksum, rtl_module, run_backend


def _compile_args(argv: list[str]):
    """``airfoil compile ARGV``'s parsed arguments, every other option at its default
    (the demo compiles as the command would)."""
    from . import build_parser
    return build_parser().parse_args(["compile", *argv])


def register(sub):
    p = sub.add_parser("demo", help="compile the built-in linear layer and the tiny LLM and "
                                    "run them on the torch, isa (and rtl) backends")
    p.add_argument("--config", default="test", help="board config name or YAML path "
                                                    "(default: test)")
    p.add_argument("-o", "--output", default="build/demo", metavar="OUT",
                   help="output folder (default: build/demo)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the layer and calibration")
    p.add_argument("--no-rtl", action="store_true", help="skip the rtl backend")
    p.add_argument("--no-linear", action="store_true", help="skip the linear-layer part")
    p.add_argument("--no-llm", action="store_true", help="skip the LLM part")
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="HF-layout model folder for the LLM part (default: the shipped tiny-llama)")
    p.add_argument("--llm-config", default="sim_llm",
                   help="board config of the LLM part (default: sim_llm)")
    p.add_argument("--prompt", default="The ", help="prompt of the LLM part")
    p.add_argument("--max-new-tokens", type=int_in(0, 2 ** 16), default=8, metavar="N",
                   help="tokens the LLM part generates (default: 8)")
    p.set_defaults(func=run)


def run(args) -> int:
    ok = True
    if not args.no_linear:
        ok &= run_linear(args) == 0
    if not args.no_llm:
        ok &= run_llm(args) == 0
    return 0 if ok else 1


def run_llm(args) -> int:
    """Compile the tiny model and generate text on the torch and isa backends."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from ..models import BUILTIN_MODELS
    from .cmd_compile import compile_llm_from_args, summary_table
    from .cmd_run import generate_backend

    console = Console()
    model = Path(args.model) if args.model else BUILTIN_MODELS["tiny-llama"]
    out_dir = f"{args.output}-llm"
    cargs = _compile_args([str(model), "--config", args.llm_config, "-o", out_dir])
    t0 = time.monotonic()
    manifest, summary = compile_llm_from_args(cargs, console)
    console.print(summary_table(manifest, summary))
    console.print(f"compiled {model} into {out_dir} ({time.monotonic() - t0:.1f} s)")
    config = load_config(args.llm_config)
    folder = load_folder(out_dir, config)
    from compiler.tokenizer import load_tokenizer
    tok = load_tokenizer(model)
    prompt = tok.encode(args.prompt)
    table = Table(title=f"{model.name}: greedy continuation of {args.prompt!r}")
    for col in ("backend", "text", "tokens", "decode cycles/token", "time", "match"):
        table.add_column(col, justify="right" if col in ("decode cycles/token", "time")
                         else "left")
    ref = None
    ok = True
    backends = ("torch", "isa") if args.no_rtl else ("torch", "isa", "rtl")
    for b in backends:
        t0 = time.monotonic()
        out, runs = generate_backend(b, folder, config, prompt, args.max_new_tokens,
                                     seed=args.seed)
        dt = time.monotonic() - t0
        dec = [r["cycles"] for r in runs if r["phase"] == "decode"]
        ref = out if ref is None else ref
        ok &= out == ref
        table.add_row(b, repr(tok.decode(out)), " ".join(map(str, out)),
                      str(sum(dec) // len(dec)) if dec else "-", f"{dt:.1f} s",
                      "reference" if b == "torch" else ("yes" if out == ref else "NO"))
    console.print(table)
    if not ok:
        console.print("[bold red]LLM backends disagree[/]")
        return 1
    console.print(f"LLM: {', '.join(backends)} generate the same tokens")
    return 0


def run_linear(args) -> int:
    """Compile the built-in linear layer and compare every backend."""
    from rich.console import Console
    from rich.table import Table

    from .cmd_compile import compile_from_args

    console = Console()
    cargs = _compile_args(["--config", args.config, "-o", args.output, "--layer", "builtin",
                           "--seed", str(args.seed)])
    t0 = time.monotonic()
    m = compile_from_args(cargs)
    layer = m["model"]["linears"]["linear"]
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
