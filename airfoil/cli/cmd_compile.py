"""``airfoil compile``: quantize and compile a linear layer into an output folder."""

from __future__ import annotations

import sys

from ..config import load_config
from ..errors import CompileError


def register(sub):
    p = sub.add_parser("compile", help="compile a linear layer into program.afp, weights.bin "
                                       "and manifest.json")
    p.add_argument("--layer", default="builtin", metavar="builtin|PATH.pt|PATH.npz",
                   help="the layer: the built-in random nn.Linear (default) or a file with "
                        "'weight' (N x K) and optional 'bias'")
    p.add_argument("--config", default="test", help="board config name or YAML path "
                                                    "(default: test)")
    p.add_argument("--recipe", default=None, metavar="R.yaml",
                   help="quantization recipe (default: compiler/recipes/linear_default.yaml)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    p.add_argument("--n", type=int, default=None, help="built-in layer: output rows N")
    p.add_argument("--k", type=int, default=None, help="built-in layer: inputs K")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the built-in layer and of the calibration sample")
    p.add_argument("--wformat", default=None, help="weight format (overrides the recipe)")
    p.add_argument("--group", type=int, default=None, help="group size (overrides the recipe)")
    p.add_argument("--out-format", default=None, help="int8|int16|int32 (overrides the recipe)")
    p.set_defaults(func=run)


def compile_from_args(args, log=None) -> dict:
    """Compile the layer the arguments describe; return the manifest."""
    from compiler.layers import BUILTIN_K, BUILTIN_N, builtin_linear, load_linear
    from compiler.linear import compile_linear
    from compiler.recipe import load_recipe

    config = load_config(args.config)
    kw = load_recipe(args.recipe)
    for key, value in (("wformat", args.wformat), ("group", args.group),
                       ("out_format", getattr(args, "out_format", None))):
        if value is not None:
            kw[key] = value
    if args.layer == "builtin":
        n = args.n if args.n is not None else BUILTIN_N
        k = args.k if args.k is not None else BUILTIN_K
        weight, bias = builtin_linear(n, k, args.seed)
    else:
        if args.n is not None or args.k is not None:
            raise CompileError("--n and --k apply to the built-in layer only, not to "
                               f"{args.layer!r}")
        weight, bias = load_linear(args.layer)
    manifest = compile_linear(weight, bias, config, args.output, seed=args.seed, **kw)
    return manifest


def run(args) -> int:
    m = compile_from_args(args)
    layer = m["layers"][0]
    print(f"compiled linear {layer['n']} x {layer['k']} {layer['wformat']} g{layer['group']} "
          f"-> int{layer['out_bits']} for config {m['config']} ({m['config_hash']}): "
          f"{len(layer['tiles'])} tiles, {m['image_bytes']} image bytes -> {args.output}",
          file=sys.stdout)
    return 0
