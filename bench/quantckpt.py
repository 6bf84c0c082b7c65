"""Bench figures of quantized-checkpoint import: what the compiled folder keeps of a GPTQ,
AWQ or GGUF file.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``quantckpt``.
"""

from __future__ import annotations

from pathlib import Path

from airfoil.config import load_config
from compiler.importers.prequant import positive_scales
from sim.isa_sim import decode_step_cycles
from sim.measure.quantckpt import (KQUANT, TINY, act_order_reference, conversion_error,
                                   folder_mismatches, tiny_model, write_awq, write_gguf,
                                   write_gptq)

__all__ = ["FIGURES", "figures"]

#: Figure name -> unit; defined in docs/figures.md.
FIGURES = {
    "import_gptq_dequant_mismatches": "weights",
    "import_awq_dequant_mismatches": "weights",
    "import_gguf_q4_0_dequant_mismatches": "weights",
    "import_gguf_q4_1_dequant_mismatches": "weights",
    "import_gguf_q8_0_dequant_mismatches": "weights",
    "import_gguf_q5_0_dequant_mismatches": "weights",
    "import_gguf_q4_k_rms_error": "relative RMS error",
    "import_gguf_q5_k_rms_error": "relative RMS error",
    "import_gguf_q6_k_rms_error": "relative RMS error",
    "import_gptq_act_order_dequant_mismatches": "weights",
    "import_gptq_bits_per_weight": "bits/weight",
    "import_awq_bits_per_weight": "bits/weight",
    "import_gguf_q4_0_bits_per_weight": "bits/weight",
    "import_gguf_q4_1_bits_per_weight": "bits/weight",
    "import_gguf_q4_0_magnitude_scales_bits_per_weight": "bits/weight",
    "import_gptq_act_order_bits_per_weight": "bits/weight",
    "import_gptq_sym_bits_per_weight": "bits/weight",
    "import_gguf_q4_0_decode_step_cycles": "cycles",
    "import_gguf_q4_1_decode_step_cycles": "cycles",
    "import_gptq_sym_decode_step_cycles": "cycles",
    "import_gptq_act_order_decode_step_cycles": "cycles",
}
#: The file of each bits-per-weight figure (4-bit codes minus zero points, compiled for a
#: config with the decode unit): (writer, keywords, file name).
_ZERO_POINT_FILES = {
    "gptq": (write_gptq, {"sym": False}, "gptq_asym"),
    "awq": (write_awq, {}, "awq"),
    "gguf_q4_0": (write_gguf, {"qtype": "Q4_0"}, "q4_0.gguf"),
    "gguf_q4_1": (write_gguf, {"qtype": "Q4_1"}, "q4_1.gguf"),
}
#: The files whose layers read their input twice (GGUF Q4_1's offsets, act-order GPTQ
#: regrouped) and the file each is set beside, with the config of both: (writer,
#: keywords, file name), the same for the plain file, config name.
_TWICE_FILES = {
    "gguf_q4_1": ((write_gguf, {"qtype": "Q4_1"}, "q4_1.gguf"),
                  ("gguf_q4_0", (write_gguf, {"qtype": "Q4_0"}, "q4_0.gguf")),
                  "sim_llm_decode"),
    "gptq_act_order": ((write_gptq, {"act_order": True}, "gptq_act_order"),
                       ("gptq_sym", (write_gptq, {}, "gptq_sym")), "sim_llm"),
}
#: The files each mismatch figure sums over: (writer, keywords, file name).
_FILES = {
    "gptq": [(write_gptq, {}, "gptq_sym"), (write_gptq, {"sym": False}, "gptq_asym"),
             (write_gptq, {"sym": False, "v2": True}, "gptq_v2")],
    "awq": [(write_awq, {}, "awq")],
    "gguf_q4_0": [(write_gguf, {"qtype": "Q4_0"}, "q4_0.gguf")],
    "gguf_q4_1": [(write_gguf, {"qtype": "Q4_1"}, "q4_1.gguf")],
    "gguf_q8_0": [(write_gguf, {"qtype": "Q8_0"}, "q8_0.gguf")],
    "gguf_q5_0": [(write_gguf, {"qtype": "Q5_0"}, "q5_0.gguf")],
}


def compile_folder(graph, out_dir, config) -> dict:
    """An imported graph compiled for ``config``: its folder, the bits per weight of its
    decoder-block layers and their formats."""
    r = folder_mismatches(graph, {}, out_dir, config)
    back = r["folder"].manifest["model"]["linears"]
    return {"folder": r["folder"], "bits_per_weight": r["bits_per_weight"],
            "formats": sorted({v["label"] for n, v in back.items() if n != "lm_head"})}


def figures(args, log) -> dict:
    """Write the tiny checkpoints, import and compile them, compare with their files."""
    from compiler.importers import import_model
    config = load_config("sim_llm")
    work = Path(getattr(args, "build_dir", "build")) / "bench_quantckpt"
    work.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    out = {}
    for area, files in _FILES.items():
        name = f"import_{area}_dequant_mismatches"
        bad = total = 0
        formats, converted = set(), 0
        for write, kw, fname in files:
            ref = write(work / fname, model, **kw)
            g = import_model(work / fname)
            converted += len(g.meta["import"]["converted"])
            r = folder_mismatches(g, ref, work / (fname + ".out"), config)
            bad, total = bad + r["mismatches"], total + r["weights"]
            formats |= set(r["formats"].values())
        log(f"{name}: {bad} of {total} weights ({', '.join(sorted(formats))}, "
            f"{converted} layers requantized)")
        out.update({name: bad, f"{name}_weights": total, f"{name}_formats": sorted(formats),
                    f"{name}_requantized_layers": converted, f"{name}_shape": dict(TINY),
                    f"{name}_config_hash": config.config_hash})
    decode = load_config("sim_llm_decode")
    for area, (write, kw, fname) in _ZERO_POINT_FILES.items():
        name = f"import_{area}_bits_per_weight"
        ref = write(work / fname, model, **kw)
        r = folder_mismatches(import_model(work / fname), ref, work / (fname + ".decode"),
                              decode)
        formats = sorted(set(r["formats"].values()))
        log(f"{name}: {r['bits_per_weight']:.4g} ({', '.join(formats)}, "
            f"{r['mismatches']} mismatches)")
        out.update({name: r["bits_per_weight"], f"{name}_formats": formats,
                    f"{name}_mismatches": r["mismatches"],
                    f"{name}_config_hash": decode.config_hash})
    name = "import_gguf_q4_0_magnitude_scales_bits_per_weight"
    ref = write_gguf(work / "q4_0.gguf", model, "Q4_0")
    g = import_model(work / "q4_0.gguf")
    g.prequantized = {layer: positive_scales(ql, layer) for layer, ql in g.prequantized.items()}
    r = folder_mismatches(g, ref, work / "q4_0.gguf.magnitudes", decode)
    formats = sorted(set(r["formats"].values()))
    log(f"{name}: {r['bits_per_weight']:.4g} ({', '.join(formats)}, "
        f"{r['mismatches']} mismatches)")
    out.update({name: r["bits_per_weight"], f"{name}_formats": formats,
                f"{name}_mismatches": r["mismatches"],
                f"{name}_config_hash": decode.config_hash})
    name = "import_gptq_act_order_dequant_mismatches"
    ref = write_gptq(work / "gptq_act_order", model, act_order=True)
    g = import_model(work / "gptq_act_order")
    r = folder_mismatches(g, act_order_reference(ref, work / "gptq_act_order"),
                          work / "gptq_act_order.out", config)
    out.update({name: r["mismatches"], f"{name}_weights": r["weights"],
                f"{name}_formats": sorted(set(r["formats"].values())),
                f"{name}_requantized_layers": len(g.meta["import"]["converted"]),
                f"{name}_shape": dict(TINY), f"{name}_config_hash": config.config_hash})
    log(f"{name}: {r['mismatches']} of {r['weights']} weights "
        f"({len(g.meta['import']['converted'])} layers requantized)")
    for area, (twice, (plain_area, plain), cfg_name) in _TWICE_FILES.items():
        cfg = load_config(cfg_name)
        for a, (write, kw, fname) in ((area, twice), (plain_area, plain)):
            write(work / fname, model, **kw)
            g = compile_folder(import_model(work / fname), work / (fname + ".cycles"), cfg)
            bits, cycles = f"import_{a}_bits_per_weight", f"import_{a}_decode_step_cycles"
            step = decode_step_cycles(g["folder"], cfg)
            if bits not in out:
                out.update({bits: g["bits_per_weight"], f"{bits}_formats": g["formats"],
                            f"{bits}_config_hash": cfg.config_hash})
            out.update({cycles: step["cycles"], f"{cycles}_position": step["position"],
                        f"{cycles}_config_hash": cfg.config_hash})
            log(f"{bits}: {out[bits]:.4g} ({', '.join(g['formats'])}); {cycles}: "
                f"{step['cycles']} at position {step['position']} ({cfg_name})")
    kmodel = tiny_model(**KQUANT)
    for qtype in ("Q4_K", "Q5_K", "Q6_K"):
        name = f"import_gguf_{qtype.lower()}_rms_error"
        path = work / f"{qtype.lower()}.gguf"
        write_gguf(path, kmodel, qtype)
        out[name] = conversion_error(import_model(path))
        out[f"{name}_shape"] = dict(KQUANT)
        out[f"{name}_recipe"] = "int8 group 32"
        log(f"{name}: {out[name]:.4g}")
    return out
