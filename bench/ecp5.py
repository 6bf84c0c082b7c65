"""Figures of the ULX3S 85F (ECP5) open-flow build: utilisation, Fmax, a GEMV's cycles and
the decode step of an LLM that fits the board.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``ecp5``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

__all__ = ["FIGURES", "SHAPE", "SFU", "figures", "gemv_on_system"]

#: Figure name -> unit; defined in docs/figures.md.
FIGURES = {
    "ecp5_ulx3s_fmax_mhz": "MHz",
    "ecp5_ulx3s_luts": "LUT4",
    "ecp5_ulx3s_ffs": "flip-flops",
    "ecp5_ulx3s_mult18": "MULT18X18D",
    "ecp5_ulx3s_bram": "DP16KD",
    "ecp5_ulx3s_gemv_cycles": "cycles",
    "ecp5_ulx3s_llm_decode_cycles": "cycles",
    "ecp5_ulx3s_llm_tok_s_projected": "tokens/s",
}

#: (rows, k, format, group) of the layer.
SHAPE = (64, 256, "int4", 32)


def gemv_on_system(config, build_dir, *, shape=SHAPE, seed: int = 1) -> dict:
    """Compile a layer, run it on the ULX3S design in RTL through the UART; check it
    against the golden and return the run (``cycles``, ``retired``, ...)."""
    from compiler.linear import compile_linear
    from sim.golden import run_golden
    from sim.ulx3s_rtl import run_system

    from airfoil.errors import AirfoilError
    from airfoil.folder import OUT_DTYPES, load_folder

    n, k, fmt, group = shape
    gen = torch.Generator().manual_seed(seed)
    out_dir = Path(build_dir) / "bench_ecp5" / f"{n}x{k}_{fmt}_g{group}"
    compile_linear(torch.randn(n, k, generator=gen), torch.randn(n, generator=gen), config,
                   out_dir, wformat=fmt, group=group, out_format="int16", seed=seed)
    folder = load_folder(out_dir, config)
    dt = np.dtype(OUT_DTYPES[folder.out_bits])
    r = run_system(config, program=folder.program.to_bytes(), image=bytes(folder.image),
                   read_back={"out": (folder.manifest["output"]["addr"],
                                      folder.n * dt.itemsize)},
                   build_dir=build_dir, seed=seed)["run"]
    got = torch.from_numpy(np.frombuffer(bytes.fromhex(r["reads"]["out"]),
                                         dtype=dt).astype(np.int64))
    if r["error"] or not torch.equal(got, run_golden(folder)):
        raise AirfoilError(f"ecp5 bench: the {n}x{k} layer on the ULX3S design differs from "
                           f"the golden (error {r['error']}, code {r['err_code']})")
    return r


#: The build measured: the whole design, the core with its SFU (what an LLM needs;
#: README "Open flow: ULX3S").
SFU = True


def _report(config, build_dir, log) -> dict:
    from fpga.ulx3s.flow import REPORT_NAME, build_bitstream
    path = Path(build_dir) / "ulx3s" / REPORT_NAME
    if path.exists():
        r = json.loads(path.read_text())
        if (r.get("hardware_hash") == config.hardware_hash and r.get("sfu") == SFU
                and r.get("routed", True)):
            log(f"ecp5: the report of {path} (config {config.config_hash})")
            return r
    return build_bitstream(config, path.parent, sfu=SFU, log=log)


def figures(args, log) -> dict:
    """The ECP5 figures for ``airfoil bench``."""
    from airfoil.config import load_config

    build_dir = getattr(args, "build_dir", "build")
    config = load_config("ulx3s")
    rep = _report(config, build_dir, log)
    out = {
        "ecp5_ulx3s_fmax_mhz": rep["fmax_mhz"],
        "ecp5_ulx3s_fmax_mhz_target": rep["target_mhz"],
        "ecp5_ulx3s_meets_clock": rep.get("meets_clock"),
        "ecp5_ulx3s_luts": rep["lut4"],
        "ecp5_ulx3s_ffs": rep["ff"],
        "ecp5_ulx3s_mult18": rep["mult18x18d"],
        "ecp5_ulx3s_bram": rep["dp16kd"],
        "ecp5_ulx3s_build_seconds": rep["build_seconds"],
        "ecp5_ulx3s_config_hash": config.config_hash,
    }
    log(f"ecp5 ulx3s: Fmax {rep['fmax_mhz']:.1f} MHz, LUT4 {rep['lut4']}, MULT18X18D "
        f"{rep['mult18x18d']}, DP16KD {rep['dp16kd']}")
    r = gemv_on_system(config, build_dir)
    n, k, fmt, group = SHAPE
    out.update({"ecp5_ulx3s_gemv_cycles": r["cycles"],
                "ecp5_ulx3s_gemv_cycles_us": r["cycles"] / rep["target_mhz"],
                "ecp5_ulx3s_gemv_cycles_shape": f"{n}x{k} {fmt} g{group}, "
                                                f"{config.chains} chains x {config.lanes} lanes"})
    log(f"ecp5 ulx3s: {n}x{k} {fmt} GEMV in {r['cycles']} cycles")
    board_mhz = rep["target_mhz"] if rep.get("meets_clock") else rep["runnable_mhz"]
    out.update(_llm_figures(config, build_dir, board_mhz, log))
    return out


def _llm_figures(config, build_dir, clock_mhz: float, log) -> dict:
    """The board LLM's decode step in RTL (``sim.measure.board_llm``) and its tokens per
    second at ``clock_mhz``, the clock the routed bitstream runs at (the PLL's clock when
    it meets it, else the fastest the PLL makes within its Fmax)."""
    from sim.measure.board_llm import SHAPE as LLM
    from sim.measure.board_llm import board_llm_decode

    r = board_llm_decode(config, Path(build_dir) / "ecp5_llm", build_dir=build_dir)
    cycles = r["decode_cycles"]
    log(f"ecp5 ulx3s: LLM decode step {cycles} cycles at position {r['decode_position']}, "
        f"{clock_mhz * 1e6 / cycles:.0f} tokens/s at {clock_mhz:g} MHz")
    return {"ecp5_ulx3s_llm_decode_cycles": cycles,
            "ecp5_ulx3s_llm_decode_cycles_shape":
                f"hidden {LLM['heads'] * LLM['hd']}, {LLM['heads']} heads, MLP {LLM['inter']}, "
                f"{LLM['layers']} layers, vocab {LLM['vocab']}, INT4 g32; position "
                f"{r['decode_position']}; image {r['image_bytes']} of {r['memory_bytes']} B",
            "ecp5_ulx3s_llm_tok_s_projected": clock_mhz * 1e6 / cycles}
