"""Bench figures of the whole tiny model on the RTL core (Verilator), config ``sim_llm``.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``llm_rtl``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from airfoil.config import load_config
from airfoil.errors import AirfoilError
from airfoil.folder import load_folder
from sim.measure.sfu_busy import compile_tiny

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "tiny_rtl_prefill_cycles": "cycles",
    "tiny_rtl_cycles_per_token": "cycles",
    "rtl_unit_overlap_fraction": "fraction",
    "isa_cycle_model_error": "relative error",
    "rtl_core_sim_cycles_per_second": "cycles/s",
}

#: Tokens of the prefill and context of the decode step.
CONTEXT = 64
CONFIG = "sim_llm"


def measure(out_dir="build/bench_llm_rtl", log=None) -> dict:
    """Compile, run prefill + one decode step on RTL and ISA; return the figures."""
    from compiler.tokenizer import corpus_split
    from sim.isa_sim import IsaLLM

    from airfoil.cli.backend_rtl import RtlLLM

    out_dir = Path(out_dir)
    config = load_config(CONFIG)
    folder = load_folder(compile_tiny(config, out_dir, context=CONTEXT), config)
    _, held = corpus_split()
    prompt = list(held[:CONTEXT])
    nxt = int(held[CONTEXT])
    isa = IsaLLM(folder, config)
    rtl = RtlLLM(folder, config, stalls=False)
    got = {}
    for name, llm in (("isa", isa), ("rtl", rtl)):
        if log:
            log(f"llm rtl: {name} prefill of {CONTEXT} tokens")
        pre = llm.prefill(prompt)
        if log:
            log(f"llm rtl: {name} decode step at context {CONTEXT}")
        dec = llm.decode(nxt)
        got[name] = (pre, dec)
    for a, b in zip(got["isa"], got["rtl"]):
        if not torch.equal(a, b):
            raise AirfoilError("llm rtl bench: RTL logits differ from the ISA simulator's")
    r_pre, r_dec = rtl.runs[0], rtl.runs[1]
    i_dec = isa.runs[1]
    busy2 = r_dec.get("overlap_cycles")
    fig = {
        "tiny_rtl_prefill_cycles": r_pre["cycles"],
        "tiny_rtl_prefill_cycles_shape": f"{CONTEXT} tokens",
        "tiny_rtl_cycles_per_token": r_dec["cycles"],
        "tiny_rtl_cycles_per_token_shape": f"decode at context {CONTEXT}",
        "isa_cycle_model_error": abs(i_dec["cycles"] - r_dec["cycles"]) / r_dec["cycles"],
        "isa_cycle_model_error_isa_cycles": i_dec["cycles"],
        "isa_cycle_model_error_rtl_cycles": r_dec["cycles"],
        "isa_cycle_model_error_shape": f"tiny decode step at context {CONTEXT}",
        "tiny_rtl_config_hash": config.config_hash,
        "tiny_rtl_prefill_isa_cycles": isa.runs[0]["cycles"],
        "rtl_core_sim_cycles_per_second": r_dec["cycles"] / r_dec["sim_seconds"],
        "rtl_core_sim_cycles_per_second_cycles": r_dec["cycles"],
        "rtl_core_sim_cycles_per_second_seconds": r_dec["sim_seconds"],
        "rtl_core_sim_cycles_per_second_shape": f"tiny decode step at context {CONTEXT}",
        "rtl_core_sim_cycles_per_second_config_hash": config.config_hash,
    }
    if busy2 is not None:
        fig["rtl_unit_overlap_fraction"] = busy2 / r_dec["cycles"]
        fig["rtl_unit_overlap_fraction_cycles"] = r_dec["cycles"]
        fig["rtl_unit_overlap_fraction_overlap_cycles"] = busy2
        for k, v in r_dec.items():
            if k.startswith("busy_"):
                fig[f"rtl_unit_overlap_fraction_{k}"] = v
    return fig


def figures(args, log) -> dict:
    """``airfoil bench`` entry (area ``llm_rtl``)."""
    return measure(log=log)
