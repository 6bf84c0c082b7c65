"""Figures of full-size synthetic models: compile time and memory, image bytes, bytes read
per decode token, and the cycle model's decode step beside the bandwidth roofline.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``llama7b``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["FIGURES", "CONTEXTS", "decode_figures", "figures"]

#: Figure name (``<model>`` a key of :data:`bench._fullsize.MODELS`, ``<ctx>`` one of
#: :data:`CONTEXTS`) -> unit; defined in docs/figures.md.
FIGURES = {
    "<model>_compile_seconds": "s",
    "<model>_compile_cpu_seconds": "s",
    "<model>_compile_peak_rss_bytes": "bytes",
    "<model>_image_bytes": "bytes",
    "<model>_bytes_per_token_ctx<ctx>": "bytes",
    "<model>_decode_cycles_model_ctx<ctx>": "cycles",
    "<model>_decode_tok_s_model_ctx<ctx>": "tokens/s",
    "<model>_roofline_tok_s_ctx<ctx>": "tokens/s",
    "<model>_attention_stall_fraction_ctx<ctx>": "fraction",
}

#: Contexts (keys a decode step attends to) of the per-token figures.
CONTEXTS = (512, 4096)


def bytes_per_token(manifest: dict, ctx: int) -> int:
    """Bytes a decode step at context ``ctx`` must read: every weight tile (lm_head
    included), the K and V cache rows of ``ctx`` positions in every layer, and one
    embedding row (an INT8 record, ``embed_row`` bytes)."""
    mm = manifest["model"]
    s = mm["shape"]
    weights = sum(t["nbytes"] for v in mm["linears"].values() for t in v["tiles"])
    kv = 2 * s["num_hidden_layers"] * ctx * mm["layout"]["kv_row"]
    return weights + kv + mm["layout"]["embed_row"]


def decode_figures(prefix: str, folder, manifest: dict, config, log,
                   contexts=CONTEXTS) -> dict:
    """The per-context figures of one compiled folder at ``contexts`` (see
    docs/figures.md)."""
    from airfoil.program import read_program
    from sim.profile import sfu_stall_cycles
    from sim.timing import llm_step_cycles

    words = read_program(Path(folder) / manifest["programs"]["decode"]).words
    bandwidth = config.memory.channels * config.channel_bytes_per_cycle * config.clock_mhz * 1e6
    out = {}
    for ctx in contexts:
        st = llm_step_cycles(manifest, words, config, position=ctx - 1, trace=True)
        stall = sfu_stall_cycles(st.pop("trace"), config.memory.channels)
        nbytes = bytes_per_token(manifest, ctx)
        tag = f"{prefix}_%s_ctx{ctx}"
        out[tag % "bytes_per_token"] = nbytes
        out[tag % "decode_cycles_model"] = st["cycles"]
        out[tag % "decode_tok_s_model"] = config.clock_mhz * 1e6 / st["cycles"]
        out[tag % "roofline_tok_s"] = bandwidth / nbytes
        out[tag % "decode_cycles_model" + "_bytes_read"] = st["bytes_read"]
        out[tag % "decode_cycles_model" + "_instructions"] = st["instructions"]
        out[tag % "attention_stall_fraction"] = stall / st["cycles"]
        out[tag % "attention_stall_fraction" + "_cycles"] = round(stall)
        log(f"{prefix} ctx {ctx}: {st['cycles']} cycles ({out[tag % 'decode_tok_s_model']:.1f}"
            f" tokens/s at {config.clock_mhz} MHz), roofline "
            f"{out[tag % 'roofline_tok_s']:.1f} tokens/s of {nbytes} bytes, SFU stalls "
            f"{out[tag % 'attention_stall_fraction']:.3f} of the step")
    return out


def figures(args, log) -> dict:
    """``airfoil bench`` entry: compile each model with weights (measured), then time its
    decode step; the multi-GB weights.bin is removed once measured."""
    from airfoil.config import load_config

    from ._fullsize import MODELS, compile_measured
    out = {}
    for prefix, (shape, config_name) in MODELS.items():
        config = load_config(config_name)
        folder = Path(args.build_dir) / "llama7b" / prefix
        run = compile_measured(shape, config_name, folder, size_only=False, log=log)
        man = run["manifest"]
        (folder / "weights.bin").unlink()
        out.update({f"{prefix}_compile_seconds": run["seconds"],
                    f"{prefix}_compile_cpu_seconds": run["cpu_seconds"],
                    f"{prefix}_compile_peak_rss_bytes": run["peak_rss_bytes"],
                    f"{prefix}_image_bytes": man["image_bytes"],
                    f"{prefix}_shape": shape, f"{prefix}_config_hash": config.config_hash,
                    f"{prefix}_max_positions": man["model"]["max_positions"],
                    f"{prefix}_max_prompt": man["model"]["max_prompt"]})
        out.update(decode_figures(prefix, folder, man, config, log))
        shutil.rmtree(folder, ignore_errors=True)
    return out
