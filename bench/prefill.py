"""Figures of the prefill: the tiny model's prompt as chunks of the prefill program (the
streamed engine's MM) in RTL against the same prompt token by token, and the cycle model's
prefill time of a full-size synthetic LLaMA-2-7B, projected also from one prefill chunk
and one decode step of its layer run in RTL (bench area ``layer7b``).

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``prefill``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from airfoil.config import load_config
from airfoil.errors import AirfoilError

__all__ = ["FIGURES", "SCHEMES", "PROMPT_LENGTHS", "tiny_prefill", "tiny_figures",
           "decode_positions", "prefill_cycles_model", "projected_figures", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "tiny_w4_2of4_prefill_cycles_per_token_rtl_<scheme>": "cycles/token",
    "tiny_w4_2of4_prefill_mm_speedup_rtl": "ratio",
    "llama2_7b_u280_prefill_ms_model_<n>": "ms",
    "llama2_7b_u280_prefill_ms_projected_<n>": "ms",
}

#: How the tiny model's prompt runs (``by_token`` of :meth:`sim.llm_host.LLMHost.prefill`):
#: ``token`` (every token a decode step, a weight pass each) or ``mm`` (chunks of the
#: prefill program, whose MMs read each weight once for all of a chunk's tokens).
SCHEMES = {"token": True, "mm": False}
#: Prompt tokens of the tiny model's prefill: two and a half chunks of the
#: ``stream_tokens`` (16) the streamed engine's MM takes.
TINY_PROMPT = 40
TINY_CONFIG = "sim_llm_decode"
TINY_RECIPE = {"weights": [{"match": "*", "group": 128, "format": "int4",
                            "sparsity": "2:4"}]}
#: Prompt lengths of the 7B prefill figures.
PROMPT_LENGTHS = (128, 1024)
#: Positions between two decode steps the cycle model times for the 7B figures.
DECODE_STRIDE = 128
#: The context whose last chunk of the 7B layer runs in RTL to calibrate the prefill
#: projection (the last chunk of a 128-token prompt).
RTL_CHUNK_CONTEXT = 128


def tiny_prefill(out_dir, *, tokens: int = TINY_PROMPT, backend: str = "rtl",
                 log=None) -> dict:
    """Compile the tiny model in 2:4 W4 for ``sim_llm_decode`` and prefill a
    ``tokens``-token prompt of held-out text on ``backend`` (``rtl``: the core in Verilator
    without memory stalls; ``isa``) in each scheme of :data:`SCHEMES`. Return per scheme
    ``{"cycles", "runs", "logits"}``; raise :class:`AirfoilError` unless every scheme's
    logits equal the golden model's, bit for bit."""
    from airfoil.cli.backend_rtl import RtlLLM
    from airfoil.folder import load_folder
    from compiler.importers.hf import import_hf
    from compiler.llm_recipe import parse_llm_recipe
    from compiler.lower_llm import compile_llm
    from compiler.passes import llm_pipeline, quantized_model
    from compiler.tokenizer import corpus_split
    from sim.golden_llm import GoldenLLM, golden_from_folder
    from sim.isa_sim import IsaLLM
    from sim.measure.llm_accuracy import TINY_MODEL

    config = load_config(TINY_CONFIG)
    model = quantized_model(llm_pipeline(parse_llm_recipe(TINY_RECIPE), config).run(
        import_hf(TINY_MODEL)))
    _, held = corpus_split()
    prompt = [int(t) for t in held[:tokens]]
    out = {}
    folder_dir = Path(out_dir) / "tiny"
    compile_llm(model, config, folder_dir)
    folder = load_folder(folder_dir, config)
    want = GoldenLLM(golden_from_folder(folder)).prefill(prompt)
    for scheme, by_token in SCHEMES.items():
        llm = (RtlLLM(folder, config, stalls=False) if backend == "rtl"
               else IsaLLM(folder, config))
        if log:
            log(f"prefill {backend}: {tokens} tokens, {scheme} scheme")
        logits = llm.prefill(prompt, by_token=by_token)
        if not torch.equal(logits, want):
            raise AirfoilError(f"prefill bench: {backend} logits of the {scheme} scheme "
                               f"differ from the golden model's")
        out[scheme] = {"cycles": sum(r["cycles"] for r in llm.runs), "runs": len(llm.runs),
                       "logits": logits}
    return out


def tiny_figures(runs: dict, tokens: int, config_hash: str, backend: str = "rtl") -> dict:
    """The tiny model's figures of :func:`tiny_prefill`'s ``runs``."""
    fig = {}
    for scheme, r in runs.items():
        name = f"tiny_w4_2of4_prefill_cycles_per_token_{backend}_{scheme}"
        fig[name] = r["cycles"] / tokens
        fig[name + "_cycles"] = r["cycles"]
        fig[name + "_runs"] = r["runs"]
        fig[name + "_shape"] = f"{tokens}-token prompt, tiny-llama 2:4 W4 g128"
        fig[name + "_config_hash"] = config_hash
    fig[f"tiny_w4_2of4_prefill_mm_speedup_{backend}"] = \
        runs["token"]["cycles"] / runs["mm"]["cycles"]
    return fig


def decode_positions(first: int, tokens: int, stride: int = DECODE_STRIDE) -> list[int]:
    """Positions whose decode step :func:`prefill_cycles_model` times for a prompt of
    ``tokens`` after prefill chunks up to ``first``: ``first``, every multiple of ``stride``
    after it and the last, ``tokens - 1`` (none when the chunks take the whole prompt)."""
    if first >= tokens:
        return []
    return sorted({first, tokens - 1, *range(-(-first // stride) * stride, tokens, stride)})


def prefill_cycles_model(manifest: dict, prefill_words, decode_words, config,
                         tokens: int, *, stride: int = DECODE_STRIDE, timed=None) -> dict:
    """Cycle-model cycles of prefilling ``tokens`` tokens as the host runs them
    (:func:`sim.llm_host.prefill_chunks`): one run of the prefill program per chunk at its
    start position, each timed (:func:`sim.timing.llm_step_cycles`), then one decode step
    per token past ``prefill_positions``. The decode steps are timed at
    :func:`decode_positions` (a full-size step takes about a minute in the cycle model) and
    the steps between two timed positions taken on the line between them (a step's cycles
    grow with the keys it attends to). ``timed`` (``("prefill", start, tokens)`` or
    ``("decode", position)`` -> run statistics) keeps the timings across calls."""
    from sim.llm_host import prefill_chunks
    from sim.timing import llm_step_cycles

    timed = {} if timed is None else timed
    mm = manifest["model"]
    chunks = prefill_chunks(tokens, mm["max_prompt"], mm["prefill_positions"])
    for a, b in chunks:
        if ("prefill", a, b - a) not in timed:
            timed["prefill", a, b - a] = llm_step_cycles(manifest, prefill_words, config,
                                                         position=a, tokens=b - a)
    first = chunks[-1][1]
    points = decode_positions(first, tokens, stride)
    for pos in points:
        if ("decode", pos) not in timed:
            timed["decode", pos] = llm_step_cycles(manifest, decode_words, config,
                                                   position=pos)
    step = {p: timed["decode", p]["cycles"] for p in points}
    steps = 0.0
    if points:
        steps = step[points[0]]
        for a, b in zip(points, points[1:]):
            # Positions a+1 .. b on the line from a to b.
            n = b - a
            steps += sum(step[a] + (step[b] - step[a]) * i / n for i in range(1, n + 1))
    runs = [timed["prefill", a, b - a] for a, b in chunks]
    chunk_cycles = sum(r["cycles"] for r in runs)
    return {"cycles": chunk_cycles + steps, "prefill_tokens": first,
            "chunks": len(chunks), "chunk_cycles": chunk_cycles,
            "chunk_busy": {u: sum(r[f"busy_{u}"] for r in runs)
                           for u in ("load", "matrix", "sfu", "store")},
            "decode_timed": step}


def figures(args, log) -> dict:
    """``airfoil bench`` entry: the tiny model's prefill in RTL, then the size-only 7B's
    prefill times in the cycle model."""
    from airfoil.program import read_program

    from ._fullsize import compile_measured

    root = Path(args.build_dir) / "prefill"
    config = load_config(TINY_CONFIG)
    out = tiny_figures(tiny_prefill(root / "tiny", log=log), TINY_PROMPT,
                       config.config_hash)
    u280 = load_config("u280")
    folder = root / "llama2_7b_u280"
    man = compile_measured("llama2-7b", "u280", folder, size_only=True, log=log)["manifest"]
    words = {p: read_program(folder / man["programs"][p]).words
             for p in ("prefill", "decode")}
    timed = {}
    for n in PROMPT_LENGTHS:
        st = prefill_cycles_model(man, words["prefill"], words["decode"], u280, n,
                                  timed=timed)
        name = f"llama2_7b_u280_prefill_ms_model_{n}"
        out[name] = st["cycles"] / (u280.clock_mhz * 1e3)
        out[name + "_cycles"] = round(st["cycles"])
        out[name + "_chunk_cycles"] = st["chunk_cycles"]
        out[name + "_chunk_busy"] = st["chunk_busy"]
        out[name + "_decode_timed"] = {str(p): c for p, c in st["decode_timed"].items()}
        out[name + "_shape"] = (f"{n}-token prompt: {st['chunks']} prefill chunks of up to "
                                f"{man['model']['max_prompt']} tokens over its first "
                                f"{st['prefill_tokens']}, then "
                                f"{n - st['prefill_tokens']} decode steps")
        out[name + "_config_hash"] = u280.config_hash
        log(f"llama2-7b u280: prefill of {n} tokens {out[name]:.1f} ms (cycle model)")
    shutil.rmtree(folder, ignore_errors=True)
    out.update(projected_figures(out, args.build_dir, log))
    return out


def projected_figures(model: dict, build_dir, log) -> dict:
    """``llama2_7b_u280_prefill_ms_projected_<n>``: each ``model`` figure's chunk cycles
    times the ratio of the RTL core's cycles to the cycle model's on one prefill chunk of
    the 7B layer (:data:`RTL_CHUNK_CONTEXT`, the layer folder's ``max_prompt`` tokens, on
    :data:`bench.layer7b.CONFIG`), and its decode steps' cycles times that ratio on the
    layer's decode step at :data:`bench.layer7b.CONTEXT` (both :func:`bench.layer7b.
    layer_rtl`, their kept results when the program, config and core are the same)."""
    import json

    from . import layer7b

    u280 = load_config("u280")
    decode = layer7b.layer_rtl(build_dir, log)
    name = Path(layer7b.SHAPE).stem
    folder = Path(build_dir) / "layer7b" / f"{name}_{layer7b.CONFIG}_w4"
    tokens = json.loads((folder / "manifest.json").read_text())["model"]["max_prompt"]
    chunk = layer7b.layer_rtl(build_dir, log, ctx=RTL_CHUNK_CONTEXT, tokens=tokens)
    ratio = {run: m["layer_rtl_cycles"] / m["layer_model_cycles"]
             for run, m in (("chunk", chunk), ("decode", decode))}
    out = {}
    for n in PROMPT_LENGTHS:
        base = f"llama2_7b_u280_prefill_ms_model_{n}"
        chunks = model[base + "_chunk_cycles"]
        cycles = chunks * ratio["chunk"] + (model[base + "_cycles"] - chunks) * ratio["decode"]
        fig = f"llama2_7b_u280_prefill_ms_projected_{n}"
        out[fig] = cycles / (u280.clock_mhz * 1e3)
        out[fig + "_cycles"] = round(cycles)
        out[fig + "_shape"] = model[base + "_shape"]
        out[fig + "_config_hash"] = u280.config_hash
        out[fig + "_rtl_chunk"] = {
            "config": layer7b.CONFIG, "config_hash": chunk["config_hash"],
            "ctx": RTL_CHUNK_CONTEXT, "tokens": tokens, "rtl_cycles": chunk["rtl_cycles"],
            "layer_rtl_cycles": chunk["layer_rtl_cycles"],
            "layer_model_cycles": chunk["layer_model_cycles"], "ratio": ratio["chunk"]}
        out[fig + "_decode_ratio"] = ratio["decode"]
        log(f"llama2-7b u280: prefill of {n} tokens {out[fig]:.1f} ms projected from the "
            f"RTL layer (chunk ratio {ratio['chunk']:.4f}, decode ratio "
            f"{ratio['decode']:.4f})")
    return out
