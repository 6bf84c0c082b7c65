"""One LLaMA-2-7B decoder layer at full width on the RTL core, and the whole model's
decode speed projected from it.

The layer (compiler/shapes/llama2_7b_layer.yaml: one layer, a 512-entry vocabulary) is
compiled with seeded dense INT4 g128 weights for ``u280_8ch_tiles`` (8 of the U280's 32
HBM channels and 32 chains x 32 lanes; the WGT-tile engine alone, whose dense INT4
program is ``u280_8ch``'s) and one decode step at context 512 runs on the RTL core in
Verilator, bit-exact with the ISA simulator and the golden model
(:func:`sim.measure.layer_rtl.run_layer_step`). The run's result is kept in
``build/layer7b/<shape>_<config>_ctx<ctx>_rtl.json`` with the key of what it ran (the
decode program's digest, the config hash, the context, the seed and the core's source
digest): the figures are recomputed from it
without the RTL while the key matches. ``python -m bench.layer7b`` runs the layer alone
(``--force`` runs the RTL again; ``--model-only`` projects from the cycle model alone).
The streamed recipes are projected by the cycle model's ratio of their layer to the dense
INT4 one, each a size-only compile of the one-layer model (no weight packed).

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``layer7b``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

__all__ = ["FIGURES", "CONFIG", "NARROW_CONFIG", "CONTEXT", "SHAPE", "NARROW_SHAPE", "layer_rtl",
           "model_split", "projections", "figures"]

#: Figure name (``<recipe>`` a key of :data:`RECIPES`, ``<ctx>`` one of
#: :data:`PROJECTED_CONTEXTS`) -> unit; defined in docs/figures.md.
FIGURES = {
    "llama2_7b_u280_layer_rtl_cycles": "cycles",
    "llama2_7b_u280_layer_model_error": "relative error",
    "llama2_7b_u280_decode_tok_s_projected_<recipe>_ctx<ctx>": "tokens/s",
    "llama2_7b_u280_roofline_fraction_projected_<recipe>_ctx512": "fraction",
    "llama2_7b_vhk158_decode_tok_s_projected_<recipe>_ctx512": "tokens/s",
}

_ROOT = Path(__file__).resolve().parents[1]
#: The full-width layer and the narrow one of the regression (tests/test_layer_rtl.py).
SHAPE = _ROOT / "compiler" / "shapes" / "llama2_7b_layer.yaml"
NARROW_SHAPE = _ROOT / "compiler" / "shapes" / "llama_narrow_layer.yaml"
#: The config the layer runs on in RTL (8 U280 channels, the WGT-tile engine alone: the
#: dense INT4 layer's program is the one u280_8ch runs), and the context of its decode step.
CONFIG = "u280_8ch_tiles"
#: The config of the narrow layer's run in the regression (a quarter of :data:`CONFIG`:
#: the same path on a core that builds in minutes).
NARROW_CONFIG = "u280_2ch_tiles"
CONTEXT = 512
#: The published model the projections are of (compiler.synthetic.SHAPES).
MODEL = "llama2-7b"
#: Recipe name -> recipe file (compiler/recipes/); ``w4`` is the one run in RTL, the
#: others are projected by the cycle model's ratio to it on the same layer.
RECIPES = {name: _ROOT / "compiler" / "recipes" / f"{file}.yaml" for name, file in (
    ("w4", "w4_rtn"), ("2of4_w4", "2of4_w4_magnitude"), ("mix3", "mix3"),
    ("bitmod3", "bitmod3"))}
#: Boards of the projections and the contexts of each.
PROJECTED = {"u280": (512, 4096), "vhk158": (512,)}
#: Seed of the weights and of the KV cache.
SEED = 0
#: :func:`projections`' ``measured`` layer without an RTL run: no correction of the
#: cycle model's layer (the projections are the cycle model's alone).
MODEL_ONLY = {"layer_rtl_cycles": 0, "layer_model_cycles": 0}


def _compile(shape, config: str, out: Path, recipe: Path, *, size_only: bool,
             max_positions: int, log) -> dict:
    from ._fullsize import compile_measured
    return compile_measured(str(shape), config, out, size_only=size_only, log=log,
                            extra=["--recipe", str(recipe), "--max-positions",
                                   str(max_positions), "--seed", str(SEED)])


def _split(manifest: dict, words, stats: dict) -> dict:
    """A one-layer folder's run (``stats`` with its ``trace``) split at the layer's
    boundaries (:func:`sim.profile.sections_of`): ``total``, ``layer`` (from the layer's
    first instruction's start to its last one's finish), ``rest`` (``total - layer``: the
    start, embedding gather, final norm, head, logits store and end) and the layer's busy
    cycles per unit."""
    from airfoil.isa import Opcode
    from sim.isa_sim import IsaSim
    from sim.profile import SectionCost, sections_of

    instrs = IsaSim.decode_all(list(words))
    names = sections_of(instrs, manifest["model"]["layout"],
                        int(manifest["model"]["shape"]["num_hidden_layers"]))
    layer = SectionCost("layer 0")
    for ev in stats["trace"]:
        if names[ev.index] == "layer 0":
            layer.add(ev, instrs[ev.index].opcode == Opcode.LD)
    busy = {u.lower(): v for u, v in layer.busy.items()}
    return {"total": stats["cycles"], "layer": layer.cycles,
            "rest": stats["cycles"] - layer.cycles, "layer_busy": busy,
            "busy": {u: stats[f"busy_{u}"] for u in ("load", "matrix", "sfu", "store")}}


def model_split(manifest: dict, words, config, position: int, tokens: int = 1) -> dict:
    """:func:`_split` of the cycle model's run of ``words`` (the decode program, or the
    prefill program for a chunk of ``tokens``) at ``position`` without the data
    (:mod:`sim.timing`; WGT-tile layers)."""
    from sim.timing import llm_step_cycles
    return _split(manifest, words, llm_step_cycles(manifest, words, config, position=position,
                                                   tokens=tokens, trace=True))


def isa_split(folder: Path, config, positions) -> dict:
    """``{position: split}``: :func:`_split` of the ISA simulator's decode step (the cycle
    model with the data: streamed layers are timed from their records) at each of
    ``positions``."""
    from airfoil.folder import load_folder
    from sim.isa_sim import IsaLLM

    loaded = load_folder(folder, config)
    llm = IsaLLM(loaded, config, trace=True)
    words = loaded.phase_program("decode").words
    out = {}
    for pos in positions:
        llm.position = pos
        llm.decode(0)
        out[pos] = _split(loaded.manifest, words, llm.runs[-1])
        llm.runs[-1].pop("trace")
    return out


def _phase(tokens: int) -> str:
    return "decode" if tokens == 1 else "prefill"


def _key(folder: Path, config, ctx: int, tokens: int = 1) -> str:
    """What a kept RTL run stands for: the program it ran, the config hash, the context,
    the chunk's tokens, the seed and the core's sources (the digest its Verilog is
    emitted under)."""
    from airfoil.cli.backend_rtl import _source_digest
    h = hashlib.sha256((folder / f"{_phase(tokens)}.afp").read_bytes())
    h.update(f"{config.config_hash}/{ctx}/{SEED}/{_source_digest(config)}".encode())
    if tokens != 1:
        h.update(f"/{tokens}".encode())
    return h.hexdigest()[:16]


def layer_rtl(build_dir="build", log=print, *, shape=SHAPE, config_name: str = CONFIG,
              ctx: int = CONTEXT, tokens: int = 1, force: bool = False) -> dict:
    """The layer's decode step at ``ctx`` (or, ``tokens`` > 1, its prefill chunk of
    positions ``ctx - tokens .. ctx - 1``) on the RTL core (or the kept result of the same
    program, config and context unless ``force``; the layer is compiled anew each time,
    so a changed compiler gives a new program), with the cycle model's split of the
    same program: ``rtl_cycles`` (the core's cycle counter, START to DONE),
    ``layer_rtl_cycles`` (that minus the cycle model's ``rest``), ``layer_model_cycles``,
    ``layer_model_error`` and the run's evidence."""
    from airfoil.config import load_config
    from airfoil.folder import load_folder
    from airfoil.program import read_program
    from sim.measure.layer_rtl import run_layer_step

    config = load_config(config_name)
    name = Path(shape).stem
    folder = Path(build_dir) / "layer7b" / f"{name}_{config_name}_w4"
    run = _compile(shape, config_name, folder, RECIPES["w4"], size_only=False,
                   max_positions=ctx, log=log)
    compile_info = {k: run[k] for k in ("seconds", "cpu_seconds", "peak_rss_bytes")}
    chunk = "" if tokens == 1 else f"_chunk{tokens}"
    kept = Path(build_dir) / "layer7b" / f"{name}_{config_name}_ctx{ctx}{chunk}_rtl.json"
    key = _key(folder, config, ctx, tokens)
    res = None
    if kept.is_file() and not force:
        old = json.loads(kept.read_text())
        if old.get("key") == key:
            res = old
            log(f"layer7b: the RTL run of {name} on {config_name} at context {ctx} is kept "
                f"in {kept} (same program, config and context)")
    fresh = res is None
    if fresh:
        t0 = time.monotonic()
        loaded = load_folder(folder, config)
        res = run_layer_step(loaded, config, ctx, tokens=tokens, seed=SEED,
                             build_dir=build_dir, log=log)
        res.update(key=key, wall_seconds=round(time.monotonic() - t0, 1),
                   config=config_name, config_hash=config.config_hash,
                   shape=Path(shape).name, compile=compile_info)
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    man = json.loads((folder / "manifest.json").read_text())
    words = read_program(folder / man["programs"][_phase(tokens)]).words
    # The cycle model's figures come from the model as it is now (a kept run keeps the
    # RTL's counts only); a fresh run checks the data-free model against the ISA
    # simulator's.
    split = model_split(man, words, config, ctx - tokens, tokens)
    if fresh and split["total"] != res["model_cycles"]:
        raise RuntimeError(f"layer7b: the data-free cycle model gives {split['total']} "
                           f"cycles, the ISA simulator {res['model_cycles']}")
    layer_rtl_cycles = res["rtl_cycles"] - split["rest"]
    out = {**res, "model_cycles": split["total"],
           "model_error": abs(split["total"] - res["rtl_cycles"]) / res["rtl_cycles"],
           "layer_rtl_cycles": layer_rtl_cycles, "layer_model_cycles": split["layer"],
           "layer_model_error": abs(split["layer"] - layer_rtl_cycles) / layer_rtl_cycles,
           "model_rest_cycles": split["rest"], "model_layer_busy": split["layer_busy"]}
    out.update({f"model_busy_{u}": v for u, v in split["busy"].items()})
    log(f"layer7b: layer {layer_rtl_cycles} RTL cycles, cycle model {split['layer']} "
        f"({100 * out['layer_model_error']:.2f} % off)")
    return out


def _tile_bytes(tile: dict) -> int:
    """Bytes of one tile in the image: a WGT tile's, or a streamed tile's records on
    every channel."""
    if "nbytes" in tile:
        return tile["nbytes"]
    return sum(s["nbytes"] for s in tile["streams"])


def _weight_bytes(manifest: dict) -> tuple[int, int]:
    """(bytes of the decoder layer's weights, of the head's) in a one-layer folder."""
    lin = manifest["model"]["linears"]
    nbytes = lambda v: sum(_tile_bytes(t) for t in v["tiles"])
    return (sum(nbytes(v) for k, v in lin.items() if k != "lm_head"), nbytes(lin["lm_head"]))


def _recipe_layers(board: str, config, contexts, shape_file: Path, work: Path, log,
                   recipes) -> dict:
    """``{recipe: (layer weight bytes, {ctx: layer cycles})}`` of the streamed recipes
    (every one but ``w4``): the one-layer model ``shape_file`` compiled ``--size-only``
    with the recipe's seeded synthetic weights (:mod:`compiler.synthetic`: its streams
    sized from their record formats, no weight packed), its decode step's layer span on
    the data-free cycle model (:mod:`sim.timing`), which times streams as the ISA
    simulator does."""
    from airfoil.program import read_program

    out = {}
    for recipe in recipes:
        if recipe == "w4":
            continue
        folder = work / f"project_{board}_{recipe}"
        man = _compile(shape_file, board, folder, RECIPES[recipe], size_only=True,
                       max_positions=max(contexts), log=log)["manifest"]
        words = read_program(folder / man["programs"]["decode"]).words
        out[recipe] = (_weight_bytes(man)[0],
                       {c: model_split(man, words, config, c - 1)["layer"] for c in contexts})
    return out


def projections(measured: dict, build_dir="build", log=print, recipes=tuple(RECIPES)
                ) -> dict:
    """The whole model's decode figures projected from the measured layer for
    ``recipes`` (keys of :data:`RECIPES`; see docs/figures.md, ``layer7b``)."""
    from airfoil.config import load_config
    from airfoil.program import read_program
    from compiler.synthetic import SHAPES, load_shape
    import dataclasses
    import yaml

    full = SHAPES[MODEL]
    layers = full.num_hidden_layers
    one = dataclasses.replace(load_shape(SHAPE), vocab_size=full.vocab_size)
    work = Path(build_dir) / "layer7b"
    work.mkdir(parents=True, exist_ok=True)
    shape_file = work / "llama2_7b_one_layer_full_vocab.yaml"
    shape_file.write_text(yaml.safe_dump(dataclasses.asdict(one)))
    out = {}
    for board, contexts in PROJECTED.items():
        config = load_config(board)
        bandwidth = config.memory.channels * config.channel_bytes_per_cycle * \
            config.clock_mhz * 1e6
        folder = work / f"project_{board}_w4"
        man = _compile(shape_file, board, folder, RECIPES["w4"], size_only=True,
                       max_positions=max(contexts), log=log)["manifest"]
        words = read_program(folder / man["programs"]["decode"]).words
        w4_bytes, head_bytes = _weight_bytes(man)
        kv_row = man["model"]["layout"]["kv_row"]
        streamed = _recipe_layers(board, config, contexts, shape_file, work, log, recipes)
        tag = f"{MODEL.replace('-', '_')}_{board}"
        for ctx in contexts:
            split = model_split(man, words, config, ctx - 1)
            # The measured layer moved to this board and context by what the cycle model
            # says changes (the weight stream per channel, the MATRIX width, the KV
            # cache's length).
            w4_layer = measured["layer_rtl_cycles"] + split["layer"] - \
                measured["layer_model_cycles"]
            for recipe in recipes:
                layer_bytes, ratio = w4_bytes, 1.0
                if recipe in streamed:
                    layer_bytes = streamed[recipe][0]
                    ratio = streamed[recipe][1][ctx] / split["layer"]
                layer = round(w4_layer * ratio)
                cycles = split["rest"] + layers * layer
                tok_s = config.clock_mhz * 1e6 / cycles
                name = f"{tag}_decode_tok_s_projected_{recipe}_ctx{ctx}"
                nbytes = layers * (layer_bytes + 2 * ctx * kv_row) + head_bytes + \
                    man["model"]["layout"]["embed_row"]
                out[name] = tok_s
                out.update({name + "_cycles": cycles, name + "_layer_cycles": layer,
                            name + "_model_layer_cycles": split["layer"],
                            name + "_model_rest_cycles": split["rest"],
                            name + "_recipe_ratio": ratio, name + "_bytes_per_token": nbytes,
                            name + "_config_hash": config.config_hash,
                            name + "_shape": f"{MODEL} ({layers} layers) at context {ctx}"})
                if board == "u280" and ctx == CONTEXT:
                    fname = f"{tag}_roofline_fraction_projected_{recipe}_ctx{ctx}"
                    out[fname] = tok_s * nbytes / bandwidth
                    out[fname + "_bandwidth_bytes_per_s"] = bandwidth
                    out[fname + "_bytes_per_token"] = nbytes
                log(f"layer7b: {name} = {tok_s:.2f} ({cycles} cycles, {nbytes} bytes a "
                    f"token)")
    return out


def figures(args, log, recipes=tuple(RECIPES)) -> dict:
    """``airfoil bench`` entry (area ``layer7b``): the layer in RTL (or its kept result),
    then the projections of ``recipes``."""
    m = layer_rtl(args.build_dir, log)
    prefix = "llama2_7b_u280_layer"
    out = {
        f"{prefix}_rtl_cycles": m["layer_rtl_cycles"],
        f"{prefix}_rtl_cycles_cycles": m["rtl_cycles"],
        f"{prefix}_rtl_cycles_model_rest_cycles": m["model_rest_cycles"],
        f"{prefix}_rtl_cycles_shape": f"{m['shape']} at context {m['ctx']}",
        f"{prefix}_rtl_cycles_config": m["config"],
        f"{prefix}_rtl_cycles_config_hash": m["config_hash"],
        f"{prefix}_rtl_cycles_ctx": m["ctx"],
        f"{prefix}_rtl_cycles_wall_seconds": m["wall_seconds"],
        f"{prefix}_rtl_cycles_sim_seconds": m["rtl_sim_seconds"],
        f"{prefix}_rtl_cycles_peak_rss_bytes": m["peak_rss_bytes"],
        f"{prefix}_model_error": m["layer_model_error"],
        f"{prefix}_model_error_model_cycles": m["layer_model_cycles"],
        f"{prefix}_model_error_rtl_cycles": m["layer_rtl_cycles"],
        f"{prefix}_model_error_step_model_cycles": m["model_cycles"],
        f"{prefix}_model_error_step_rtl_cycles": m["rtl_cycles"],
    }
    for u in ("load", "matrix", "sfu", "store"):
        out[f"{prefix}_model_error_rtl_busy_{u}"] = m[f"rtl_busy_{u}"]
        out[f"{prefix}_model_error_model_busy_{u}"] = m[f"model_busy_{u}"]
    out.update(projections(m, args.build_dir, log, recipes))
    return out


def main(argv=None) -> int:
    """``python -m bench.layer7b [--force] [--build-dir D] [--recipes R ...]``: the
    layer's RTL run and its figures, printed as JSON (and kept in
    ``<build-dir>/layer7b/figures.json``)."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m bench.layer7b", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--build-dir", default="build")
    p.add_argument("--force", action="store_true", help="run the RTL again")
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES),
                   help="the recipes projected (default: all)")
    p.add_argument("--model-only", action="store_true",
                   help="project from the cycle model's layer alone (no RTL run, kept or "
                        "new)")
    args = p.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    if args.force:
        layer_rtl(args.build_dir, log, force=True)
    if args.model_only:
        made = projections(MODEL_ONLY, args.build_dir, log, tuple(args.recipes))
    else:
        made = figures(args, log, tuple(args.recipes))
    text = json.dumps(made, indent=2, sort_keys=True)
    (Path(args.build_dir) / "layer7b" / "figures.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
