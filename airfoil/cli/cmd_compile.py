"""``airfoil compile``: quantize and compile a decoder LLM (HF-layout folder) or a linear
layer into an output folder.

``airfoil compile MODEL --recipe R.yaml --config C.yaml -o OUT/`` imports the model
(``config.json`` + ``*.safetensors``), runs the LLM pipeline (validate, fold the attention
scale, quantize per the recipe), lowers it into a prefill and a decode program
(:mod:`compiler.lower_llm`) with a progress bar, and prints a summary: instructions and
bytes per phase, weight bytes per format, and the decode cycles per token the cycle
model predicts (the decode program run once on the ISA simulator at the end of a full
prompt). Without MODEL it compiles one linear layer (``--layer``).

A recipe rule's ``method`` (``gptq``, ``awq``, ``sparsegpt``) and ``--bits-budget B``
calibrate on text: ``--calibration FILE`` (UTF-8, tokenized by the model's tokenizer;
default for the shipped tiny model: its training split), its first
``--calibration-tokens N`` tokens. The budget's choice is printed one line per layer.

A linear layer reads the recipes a model does (its layer is named ``linear``, so
``match: "*"`` rules apply; ``compiler/recipes/linear_default.yaml`` is its default) with
an ``output: {format: int8|int16|int32}`` section of its own, and the options below
override the recipe. A linear layer's weights may be streamed through the decode unit
(ISA version 3):
``--stream`` with ``--wformat int2|int3|int4|int6|int8|ovp|fp4_er_p|...|mixed|bitmod4|
bitmod3`` (``--mixed-formats int4,ovp`` or ``fp4_er_p,fp4_ea_n``: the candidates of the
per-record choice; ``bitmod4``/``bitmod3``: BitMoD's four FP4/FP3 variants) and
``--sparsity dense|1:4|2:4|2:8|4:16|8:16|block`` (magnitude pruning to N:M, or block-skip
records whose all-zero k-steps are neither streamed nor computed; ``--block-density D``
first keeps the fraction ``D`` of each record's k-steps of largest L2 norm); formats other
than int2/int3/int4/int8, N:M and block imply ``--stream``. INT6 and the BitMoD FP formats
need the config to list them (``weight_formats``, e.g. config test_decode).
A bias rides in one small WGT "bias tile" per row block; ``--no-bias`` drops the layer's.

A linear layer compiles as a one-node graph through named steps (validate, quantize,
calibrate, plan, pack, schedule, emit; :data:`compiler.linear.LINEAR_STEPS`), a model
through the graph pipeline's steps and the lowering's, named alike (validate,
fold_attention_scale, quantize, plan, pack, schedule, emit;
:func:`compiler.lower_llm.compile_pipeline`'s; a synthetic model the lowering's alone);
``--stop-after STEP`` runs them up to STEP and prints what it made (``schedule``: the
programs' listings) without writing the folder.
"""

from __future__ import annotations

import sys

from ..config import load_config
from ..errors import CompileError
from .argtypes import MAX_LAYER_WEIGHTS, SEED, bits_in, int_in


#: Default board config of each kind of compile.
DEFAULT_CONFIG = {"llm": "sim_llm", "linear": "test"}


def register(sub):
    p = sub.add_parser("compile", help="compile a decoder LLM (HF folder) or a linear layer "
                                       "into programs, weights.bin and manifest.json")
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="HF-layout model folder (config.json + *.safetensors; float, GPTQ "
                        "or AWQ), a llama .gguf file or a shipped model (tiny-llama); omit "
                        "to compile a linear layer (--layer)")
    p.add_argument("--synthetic", default=None, metavar="SHAPE|SHAPE.yaml",
                   help="compile a synthetic model with seeded weights made layer by layer "
                        "(INT4 g128, or --recipe's formats whose record sizes do not "
                        "depend on the weights) instead of MODEL: llama2-7b, llama3-8b, "
                        "llama2-13b, or a YAML file of LlamaShape fields (HF config.json "
                        "names)")
    p.add_argument("--size-only", action="store_true",
                   help="MODEL or --synthetic: write the programs, listings, memory map and "
                        "manifest but not weights.bin (such a folder cannot be run)")
    p.add_argument("--max-positions", type=int_in(1, 2 ** 20), default=None, metavar="P",
                   help="MODEL or --synthetic: at most P KV positions (default: the model's, "
                        "capped by what the buffers hold)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="MODEL: UTF-8 text the calibrated methods (recipe method gptq, awq, "
                        "sparsegpt) and --bits-budget measure the layers on (default for "
                        "tiny-llama: its training split)")
    p.add_argument("--calibration-tokens", type=int_in(2, 2 ** 24), default=None,
                   metavar="N", help="MODEL: calibration tokens used, from the start of the "
                                    "text (default: compiler.calibrate.DEFAULT_TOKENS)")
    p.add_argument("--bits-budget", type=bits_in(0.5, 16.0), default=None, metavar="B",
                   help="MODEL: choose each decoder layer's format (and sparsity) among the "
                        "recipe's budget candidates (default int4, int8) for an average of B "
                        "bits per weight, scales and metadata included, with the least loss "
                        "on the calibration text; prints the choice per layer")
    p.add_argument("--max-prompt", type=int_in(1, 2 ** 16), default=None, metavar="T",
                   help="MODEL: longest prompt of the prefill program (default: 32 or what "
                        "fits)")
    p.add_argument("--layer", default="builtin", metavar="builtin|PATH.pt|PATH.npz",
                   help="the layer: the built-in random nn.Linear (default) or a file with "
                        "'weight' (N x K) and optional 'bias'")
    p.add_argument("--config", default=None, help="board config name or YAML path "
                                                  "(default: sim_llm for MODEL, else test)")
    p.add_argument("--recipe", default=None, metavar="R.yaml",
                   help="quantization recipe (default: compiler/recipes/llm_default.yaml for "
                        "MODEL, else compiler/recipes/linear_default.yaml)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    p.add_argument("--n", type=int_in(1, 2 ** 16 - 1), default=None,
                   help="built-in layer: output rows N")
    p.add_argument("--k", type=int_in(1, 2 ** 20 - 1), default=None,
                   help="built-in layer: inputs K")
    p.add_argument("--seed", type=SEED, default=0,
                   help="seed of the built-in layer and of the calibration sample")
    p.add_argument("--wformat", default=None, help="weight format (overrides the recipe)")
    p.add_argument("--group", type=int_in(1, 2 ** 16), default=None,
                   help="group size (overrides the recipe)")
    p.add_argument("--out-format", default=None, help="int8|int16|int32 (overrides the recipe)")
    p.add_argument("--stream", action="store_true", default=None,
                   help="stream the weights through the decode unit (LD WSTREAM + MV STREAM) "
                        "instead of WGT tiles; formats int2|int3|int4|int6|int8|ovp|fp4_er_p|"
                        "fp4_er_n|fp4_ea_p|fp4_ea_n|fp3_er_p|fp3_er_n|fp3_ea_p|fp3_ea_n|"
                        "mixed|bitmod4|bitmod3")
    p.add_argument("--sparsity", default=None, metavar="dense|1:4|2:4|2:8|4:16|8:16|block",
                   help="N:M magnitude pruning of streamed weights, or block-skip records "
                        "(overrides the recipe)")
    p.add_argument("--block-density", type=float, default=None, metavar="D",
                   help="--sparsity block: keep the fraction 0 < D <= 1 of each record's "
                        "k-steps, those of largest L2 norm (default 1: skip only all-zero "
                        "k-steps)")
    p.add_argument("--mixed-formats", default=None, metavar="F,F,...",
                   help="--wformat mixed: candidate formats of the per-record least-squared-"
                        "error choice (default: int4,ovp)")
    p.add_argument("--no-bias", action="store_true",
                   help="drop the layer's bias (a streamed layer then needs no WGT tiles)")
    p.add_argument("--stop-after", default=None, metavar="STEP",
                   help="run the compile's steps up to STEP, print what STEP made "
                        "(schedule: the programs' listings) and write nothing before emit; "
                        "a linear layer's: validate, quantize, calibrate, plan, pack, "
                        "schedule, emit; MODEL's: validate, fold_attention_scale, "
                        "[calibrate, awq, bits_budget,] quantize, plan, pack, schedule, emit; "
                        "--synthetic's: plan, pack, schedule, emit")
    p.set_defaults(func=run)


def compile_from_args(args, log=None) -> dict:
    """Compile the layer the arguments describe; return the manifest."""
    from compiler.linear import compile_linear

    weight, bias, config, kw = linear_from_args(args)
    return compile_linear(weight, bias, config, args.output, seed=args.seed, **kw)


def linear_from_args(args) -> tuple:
    """``(weight, bias, config, options)`` of the layer the arguments describe (options, as
    :func:`compiler.linear.compile_linear` takes them: the recipe, read as a model's are,
    and the arguments that override it)."""
    from compiler.layers import BUILTIN_K, BUILTIN_N, builtin_linear, load_linear
    from compiler.llm_recipe import LINEAR_DEFAULT_RECIPE, load_llm_recipe

    config = load_config(args.config or DEFAULT_CONFIG["linear"])
    kw = {"recipe": load_llm_recipe(args.recipe or LINEAR_DEFAULT_RECIPE)}
    for key, value in (("wformat", args.wformat), ("group", args.group),
                       ("out_format", getattr(args, "out_format", None)),
                       ("stream", getattr(args, "stream", None)),
                       ("sparsity", getattr(args, "sparsity", None)),
                       ("mixed_formats", getattr(args, "mixed_formats", None)),
                       ("block_density", getattr(args, "block_density", None))):
        if value is not None:
            kw[key] = value
    if args.layer == "builtin":
        n = args.n if args.n is not None else BUILTIN_N
        k = args.k if args.k is not None else BUILTIN_K
        if n * k > MAX_LAYER_WEIGHTS:
            raise CompileError(f"the built-in layer of --n {n} x --k {k} weights is over the "
                               f"{MAX_LAYER_WEIGHTS} accepted")
        weight, bias = builtin_linear(n, k, args.seed)
    else:
        if args.n is not None or args.k is not None:
            raise CompileError("--n and --k apply to the built-in layer only, not to "
                               f"{args.layer!r}")
        weight, bias = load_linear(args.layer)
    if getattr(args, "no_bias", False):
        bias = None
    return weight, bias, config, kw


def stop_after_from_args(args) -> str:
    """Run the layer's compile up to ``--stop-after``; return what that step made."""
    from compiler.linear import LINEAR_STEPS, compile_linear, step_summary

    if args.stop_after not in LINEAR_STEPS:
        raise CompileError(f"--stop-after {args.stop_after!r} is not a step of a linear "
                           f"layer's compile (accepted: {', '.join(LINEAR_STEPS)})")
    weight, bias, config, kw = linear_from_args(args)
    graph = compile_linear(weight, bias, config, args.output, seed=args.seed,
                           stop_after=args.stop_after, **kw)
    return step_summary(graph, args.stop_after)


def compile_llm_from_args(args, console=None) -> tuple[dict, dict]:
    """Import, quantize and lower the model the arguments name, with a progress bar.

    Returns ``(manifest, summary)``; the summary holds the figures the table prints.
    """
    import shutil
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from compiler.importers import import_model, model_folder
    from compiler.importers.prequant import conversion_errors
    from compiler.lower_llm import LowerOptions, compile_pipeline
    from sim.isa_sim import decode_step_cycles

    from ..folder import encoder, load_folder

    console = console or Console()
    config, model_dir, pipe = llm_source(args, console)
    steps = ["import"] + pipe.names + ["tile and pack weights", "plan the memory image",
                                        "schedule prefill", "schedule decode",
                                        "write the folder", "predict decode cycles"]
    with Progress(TextColumn("[bold]{task.description:<24}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=console, transient=not console.is_terminal) as bar:
        task = bar.add_task("import", total=len(steps))

        def tick(name):
            i = steps.index(name)
            bar.update(task, completed=i + 1,
                       description=steps[i + 1] if i + 1 < len(steps) else "done")

        graph = import_model(model_dir)
        tick("import")
        opts = LowerOptions(config, args.output, max_prompt=args.max_prompt,
                            source=str(model_dir), progress=tick,
                            max_positions=args.max_positions, size_only=args.size_only)
        q = compile_pipeline(pipe, opts).run(
            graph, after_step=lambda name, g: tick(name) if name in pipe.names else None)
        manifest = q.meta["lowered"]
        tok = model_folder(model_dir) / "tokenizer.json"
        if tok.is_file():
            shutil.copyfile(tok, Path(args.output) / "tokenizer.json")
        if args.size_only or encoder(manifest["model"]["shape"]):
            cycles = folder_decode_cycles(args.output, manifest, config)
        else:
            cycles = decode_step_cycles(load_folder(args.output, config), config)
        tick("predict decode cycles")
    return manifest, {"decode_cycles": cycles, "config": config,
                      "import": q.meta.get("import"), "conversion": conversion_errors(q)}


def llm_source(args, console) -> tuple:
    """``(config, model folder, graph pipeline)`` of the model the arguments name."""
    from compiler.passes import llm_pipeline

    from ..models import BUILTIN_MODELS, model_path

    config = load_config(args.config or DEFAULT_CONFIG["llm"])
    model_dir = model_path(args.model)
    if not (model_dir.is_dir() or model_dir.suffix.lower() == ".gguf"):
        raise CompileError(f"model folder {str(model_dir)!r} not found (MODEL is an HF-layout "
                           f"folder with config.json and *.safetensors, a .gguf file, or a "
                           f"shipped model: {', '.join(BUILTIN_MODELS)})")
    pipe = llm_pipeline(args.recipe, config, **calibration_args(args, model_dir, console))
    return config, model_dir, pipe


def llm_stop_after_from_args(args, console=None) -> str:
    """Run the model's compile up to ``--stop-after`` (a step of
    :func:`compiler.lower_llm.compile_pipeline`); return what that step made."""
    import shutil
    from pathlib import Path

    from rich.console import Console

    from compiler.importers import import_model, model_folder
    from compiler.llm_steps import graph_step_summary, lowering_summary
    from compiler.lower_llm import LowerOptions, compile_pipeline

    config, model_dir, pipe = llm_source(args, console or Console())
    full = compile_pipeline(pipe, LowerOptions(
        config, args.output, max_prompt=args.max_prompt, source=str(model_dir),
        max_positions=args.max_positions, size_only=args.size_only))
    step = args.stop_after
    if step not in full.names:
        raise CompileError(f"--stop-after {step!r} is not a step of this model's compile "
                           f"(accepted: {', '.join(full.names)})")
    g = full.run(import_model(model_dir), until=step)
    if step in pipe.names:
        return graph_step_summary(g, step)
    tok = model_folder(model_dir) / "tokenizer.json"
    if step == "emit" and tok.is_file():
        shutil.copyfile(tok, Path(args.output) / "tokenizer.json")
    return lowering_summary(g.meta["lowered"], step)


def synthetic_stop_after_from_args(args) -> str:
    """Lower the synthetic model ``--synthetic`` names up to ``--stop-after`` (a step of
    :data:`compiler.lower_llm.LOWER_STEPS`: the model is made, not imported, so it has no
    graph steps); return what that step made."""
    from compiler.llm_steps import lowering_summary
    from compiler.lower_llm import LOWER_STEPS, compile_llm
    from compiler.passes import StreamShape
    from compiler.synthetic import load_shape, synthetic_model

    if args.stop_after not in LOWER_STEPS:
        raise CompileError(f"--stop-after {args.stop_after!r} is not a step of a synthetic "
                           f"model's lowering (accepted: {', '.join(LOWER_STEPS)})")
    config = load_config(args.config or DEFAULT_CONFIG["llm"])
    model = synthetic_model(load_shape(args.synthetic), seed=args.seed, recipe=args.recipe,
                            record_rows=StreamShape.of(config).rows)
    made = compile_llm(model, config, args.output, max_prompt=args.max_prompt,
                       source=f"synthetic {args.synthetic} (seed {args.seed})",
                       recipe=model["recipe"], max_positions=args.max_positions,
                       size_only=args.size_only, stop_after=args.stop_after)
    return lowering_summary(made, args.stop_after)


def compile_synthetic_from_args(args, console=None) -> tuple[dict, dict]:
    """Compile the synthetic model ``--synthetic`` names (:mod:`compiler.synthetic`), with
    a progress bar; the decode cycles come from the data-free cycle model
    (:mod:`sim.timing`), as the folder may have no image. Returns ``(manifest, summary)``."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from compiler.lower_llm import compile_llm
    from compiler.passes import StreamShape
    from compiler.synthetic import load_shape, synthetic_model

    console = console or Console()
    config = load_config(args.config or DEFAULT_CONFIG["llm"])
    shape = load_shape(args.synthetic)
    steps = ["make the model", "tile and pack weights", "plan the memory image",
             "schedule prefill", "schedule decode", "write the folder",
             "predict decode cycles"]
    with Progress(TextColumn("[bold]{task.description:<24}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=console, transient=not console.is_terminal) as bar:
        task = bar.add_task(steps[0], total=len(steps))

        def tick(name):
            i = steps.index(name)
            bar.update(task, completed=i + 1,
                       description=steps[i + 1] if i + 1 < len(steps) else "done")

        model = synthetic_model(shape, seed=args.seed, recipe=args.recipe,
                                record_rows=StreamShape.of(config).rows)
        tick("make the model")
        manifest = compile_llm(model, config, args.output, max_prompt=args.max_prompt,
                               source=f"synthetic {args.synthetic} (seed {args.seed})",
                               recipe=model["recipe"], progress=tick,
                               max_positions=args.max_positions, size_only=args.size_only)
        cycles = folder_decode_cycles(args.output, manifest, config)
        tick("predict decode cycles")
    return manifest, {"decode_cycles": cycles, "config": config}



def folder_decode_cycles(out_dir, manifest, config, position=None) -> dict:
    """The data-free cycle model's decode step of a compiled folder at ``position``
    (default: after a full prompt, as :func:`sim.isa_sim.decode_step_cycles`); of an
    encoder folder, its prefill of a sentence of ``max_prompt`` tokens (``tokens``)."""
    from pathlib import Path

    from sim.timing import llm_step_cycles

    from ..folder import encoder
    from ..program import read_program
    mm = manifest["model"]
    if encoder(mm["shape"]):
        pos, phase, tokens = 0, "prefill", mm["max_prompt"]
    else:
        pos = min(mm["max_prompt"], mm["max_positions"] - 1) if position is None else position
        phase, tokens = "decode", 1
    prog = read_program(Path(out_dir) / manifest["programs"][phase],
                        config.config_hash_bytes)
    st = llm_step_cycles(manifest, prog.words, config, position=pos, tokens=tokens)
    return {"position": pos, "cycles": st["cycles"], "instructions": st["instructions"],
            "bytes_read": st["bytes_read"], "tokens": tokens}


def calibration_args(args, model_dir, console) -> dict:
    """The pipeline's calibration windows and bits budget from the arguments: windows only
    when the recipe or ``--bits-budget`` needs them (a file named but not needed is still
    read and checked, so a bad one is an error either way)."""
    from compiler.calibrate import DEFAULT_TOKENS, calibration_tokens, default_calibration
    from compiler.importers import model_folder
    from compiler.llm_recipe import load_llm_recipe
    from compiler.tokenizer import load_tokenizer

    recipe = load_llm_recipe(args.recipe)
    budget = getattr(args, "bits_budget", None)
    path = getattr(args, "calibration", None)
    count = getattr(args, "calibration_tokens", None) or DEFAULT_TOKENS
    if not (recipe.needs_calibration or budget is not None or path is not None):
        return {}
    windows = calibration_tokens(load_tokenizer(model_folder(model_dir)), path=path,
                                 default=default_calibration(model_dir), count=count)
    return {"calibration": windows, "bits_budget": budget,
            "log": lambda line: console.print(line, highlight=False, soft_wrap=True)}


def summary_table(manifest, summary):
    """The rich table printed after an LLM compile."""
    from rich.table import Table

    from ..folder import encoder
    config = summary["config"]
    shape = manifest["model"]["shape"]
    t = Table(title=f"{manifest['source']} -> config {manifest['config']} "
                    f"({manifest['config_hash']}), ISA v{manifest['isa_version']}")
    t.add_column("item")
    t.add_column("value", justify="right")
    t.add_column("note")
    for phase, ph in manifest["phases"].items():
        ops = ", ".join(f"{k} {v}" for k, v in sorted(ph["opcodes"].items()))
        what = (f"a sentence of 1..{ph['max_tokens']} tokens" if encoder(shape) else
                f"chunks of 1..{ph['max_tokens']} tokens up to position "
                f"{manifest['model']['prefill_positions']}" if phase == "prefill" else
                f"one token at any position < {manifest['model']['max_positions']}")
        t.add_row(f"{phase} program", f"{ph['instructions']} instr / {ph['bytes']} B",
                  f"{what}; {ops}")
    imp = summary.get("import")
    if imp:
        conv = summary.get("conversion") or {}
        worst = f"; worst relative RMS error {max(conv.values()):.3g}" if conv else ""
        rounded = (f"; attention scale rounded into {len(imp['rounded'])} layers' scales "
                   f"(at most {max(imp['rounded'].values()):.2g})" if imp["rounded"] else "")
        kept = {}
        for fmt in imp["exact"].values():
            kept[fmt] = kept.get(fmt, 0) + 1
        how = ", ".join(f"{n} {fmt}{' streamed' if fmt not in ('int4', 'int8') else ''}"
                        for fmt, n in sorted(kept.items()))
        t.add_row(f"import {imp['format']}", f"{len(imp['exact'])} exact",
                  f"{how}; {len(imp['converted'])} layers requantized{worst}{rounded}")
    from airfoil.folder import weight_bits_per_weight
    tiles = {v["label"] for v in manifest["model"]["linears"].values() if not v["streamed"]}
    for fmt, nb in sorted(manifest["weight_bytes"].items()):
        t.add_row(f"weights {fmt}", f"{nb} B", "packed tiles with FP16 group scales"
                  if fmt in tiles else "record streams: values, FP16 scales, sparsity")
    t.add_row("bits/weight", f"{weight_bits_per_weight(manifest):.3f}",
              "linear layers' bytes in the image x 8 / weights")
    t.add_row("memory image", f"{manifest['image_bytes']} B",
              f"{manifest['model']['max_positions']} KV positions")
    if shape.get("sliding_window"):
        t.add_row("attention window", f"{shape['sliding_window']} positions",
                  "sliding: each query sees the keys of the last window positions")
    dc = summary["decode_cycles"]
    if encoder(shape):
        sps = config.clock_mhz * 1e6 / dc["cycles"]
        t.add_row("sentence cycles", str(dc["cycles"]),
                  f"cycle model, one prefill of {dc['tokens']} tokens; {sps:.0f} sentences/s "
                  f"at {config.clock_mhz} MHz; {dc['bytes_read']} B read")
    else:
        tps = config.clock_mhz * 1e6 / dc["cycles"]
        t.add_row("decode cycles/token", str(dc["cycles"]),
                  f"cycle model at position {dc['position']}; {tps:.0f} tokens/s at "
                  f"{config.clock_mhz} MHz; {dc['bytes_read']} B read")
    t.add_row("model", f"{shape['num_hidden_layers']} layers",
              f"d={shape['hidden_size']}, heads={shape['num_attention_heads']}/"
              f"{shape['num_key_value_heads']}, vocab={shape['vocab_size']}")
    return t


def run(args) -> int:
    if args.synthetic is not None:
        from rich.console import Console
        if args.model is not None:
            raise CompileError(f"give MODEL {args.model!r} or --synthetic "
                               f"{args.synthetic!r}, not both")
        if args.stop_after is not None:
            print(synthetic_stop_after_from_args(args), file=sys.stdout)
            return 0
        console = Console()
        manifest, summary = compile_synthetic_from_args(args, console)
        console.print(summary_table(manifest, summary))
        console.print(f"wrote {args.output}" + (" (size only: no weights.bin)"
                                                if manifest["size_only"] else ""))
        return 0
    if args.model is None and (args.size_only or args.max_positions is not None):
        raise CompileError("--size-only and --max-positions apply to MODEL or --synthetic, "
                           "not to a linear layer")
    if args.model is not None:
        from rich.console import Console
        if args.layer != "builtin" or args.n is not None or args.k is not None:
            raise CompileError("--layer, --n and --k apply to linear layers, not to MODEL "
                               f"{args.model!r}")
        console = Console()
        if args.stop_after is not None:
            print(llm_stop_after_from_args(args, console), file=sys.stdout)
            return 0
        manifest, summary = compile_llm_from_args(args, console)
        console.print(summary_table(manifest, summary))
        console.print(f"wrote {args.output}")
        return 0
    if args.stop_after is not None:
        print(stop_after_from_args(args), file=sys.stdout)
        return 0
    m = compile_from_args(args)
    layer = m["model"]["linears"]["linear"]
    shape = f"{layer['n']} x {layer['k_in']}" + (
        f" (K padded to {layer['k']})" if layer["k"] != layer["k_in"] else "")
    if layer["streamed"]:
        fmts = ", ".join(f"{f} {c}" for f, c in sorted(layer["formats"].items()))
        print(f"compiled linear {shape} streamed {layer['wformat']} "
              f"{layer['sparsity']} g{layer['group']} -> int{layer['out_bits']} for config "
              f"{m['config']} ({m['config_hash']}): {len(layer['tiles'])} streams, records "
              f"{fmts}, weight MSE {layer['weight_mse']:.3e}, {layer['stream_bytes']} stream "
              f"bytes, {m['image_bytes']} image bytes -> {args.output}", file=sys.stdout)
        return 0
    print(f"compiled linear {shape} {layer['wformat']} g{layer['group']} "
          f"-> int{layer['out_bits']} for config {m['config']} ({m['config_hash']}): "
          f"{len(layer['tiles'])} tiles, {m['image_bytes']} image bytes -> {args.output}",
          file=sys.stdout)
    return 0
