"""The largest random LLaMA that the ``ulx3s`` config holds, generating on the RTL core of
that config: the cycles of its decode steps, so that its tokens per second on the board
follow from the routed clock (bench area ``ecp5``).

The model is bounded by the config's buffers before its 64 KiB of memory: a decode step
keeps the gate and up outputs beside the attention's queries, keys, values and scores in
the 1 KiB OUT buffer, so hidden 32 (2 heads of 16), MLP 64 and 16 positions are what fit
(:data:`SHAPE`; hidden 64 needs 1,192 of its 1,024 bytes); its image takes about a third
of the memory. The run is the core alone on its AXI memory model (the design on the board
adds the link and the block-RAM memory around the same core; ``tests/test_ulx3s.py``
runs that), with random memory stalls drawn from the seed; every step's logits equal the
golden model's and the ISA simulator's, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["SHAPE", "RECIPE", "PROMPT", "compile_board_llm", "board_llm_decode"]

#: ``random_llama`` arguments of the model (hidden = heads x head_dim).
SHAPE = {"heads": 2, "kv": 2, "hd": 16, "inter": 64, "layers": 2, "vocab": 64,
         "max_pos": 16}
#: INT4 in groups of 32 everywhere (the embedding INT8, as always).
RECIPE = {"weights": [{"match": "*", "format": "int4", "group": 32}]}
#: The prompt; the prefill program takes one token, so the host runs the rest as decode
#: steps (the OUT buffer holds one token's activations).
PROMPT = [3, 41, 7, 22]


def compile_board_llm(config, out_dir, seed: int = 0):
    """Compile the model for ``config`` into ``out_dir``; return the loaded folder."""
    from airfoil.folder import load_folder
    from compiler.ir import build_llama_graph
    from compiler.llm_recipe import parse_llm_recipe
    from compiler.lower_llm import compile_llm
    from compiler.passes import llm_pipeline, quantized_model
    from compiler.reference import random_llama

    m = random_llama(seed=seed, **SHAPE)
    g = llm_pipeline(parse_llm_recipe(RECIPE)).run(build_llama_graph(m.shape,
                                                                     m.hf_state_dict()))
    compile_llm(quantized_model(g), config, Path(out_dir), max_prompt=1)
    return load_folder(out_dir, config)


def board_llm_decode(config, out_dir, *, new_tokens: int = 4, seed: int = 1,
                     build_dir="build") -> dict:
    """Generate ``new_tokens`` after :data:`PROMPT` on the RTL core and on the golden model
    (greedy); raise if a step's logits differ. Returns the tokens, the image bytes and
    the core cycles of the last decode step (``decode_cycles``) with its position."""
    from airfoil.cli.backend_rtl import RtlLLM
    from airfoil.errors import AirfoilError
    from sim.golden_llm import GoldenLLM, golden_from_folder

    folder = compile_board_llm(config, out_dir)
    gold = GoldenLLM(golden_from_folder(folder))
    rtl = RtlLLM(folder, config, seed=seed, stalls=True, build_dir=build_dir)

    def check(want, got, position):
        if not torch.equal(got, want):
            raise AirfoilError(f"board LLM: the RTL core's logits at position {position} "
                               f"differ from the golden model's")
        return want.reshape(-1, want.shape[-1])[-1]

    logits = check(gold.prefill(PROMPT[:1]), rtl.prefill(PROMPT[:1]), 0)
    tokens = []
    for position in range(1, len(PROMPT) + new_tokens):
        if position < len(PROMPT):
            tok = PROMPT[position]
        else:
            tok = int(torch.argmax(logits))
            tokens.append(tok)
        logits = check(gold.decode(tok), rtl.decode(tok), position)
    return {"tokens": tokens, "image_bytes": len(folder.image),
            "decode_cycles": int(rtl.runs[-1]["cycles"]), "decode_position": position,
            "memory_bytes": config.memory.channels * config.memory.channel_bytes,
            "seed": seed}
