"""Measurements behind the ``sparse`` bench figures (see docs/figures.md)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from airfoil.resources import package_path

__all__ = ['ALL_PATTERNS', 'BENCH_SHAPE', 'measure']


ALL_PATTERNS = ("dense", "1:4", "2:4", "2:8", "4:16", "8:16", "block")


#: Shape of the bench GEMV: rows x k, INT4 weights, groups of 128.
BENCH_SHAPE = (32, 1024, 128)


def measure(config, *, rows: int, k: int, group: int, build_dir, seed: int = 1,
            synth: bool = True, log=None) -> dict:
    """Run dense, 2:4 and 1:4 GEMVs of ``rows x k`` on the config's chain; return figures.

    ``synth=False`` takes the DSP count from the chain's multiplier count instead of
    Yosys (for quick tests); the figures name which in ``..._dsp_source``.
    """
    import torch

    from hdl.build import write_verilog
    from hdl.dsp_chain.sparse import SparseChain
    from sim.cocotb_runner import run_cocotb
    from sim.tb_chain.model import build_job, random_weights

    # The bench chain has every pattern built in; its config hash names that instance.
    cfg = dataclasses.replace(config, sparsity=ALL_PATTERNS)
    groups = max(1, min(4, cfg.lanes // 2))
    make = lambda: SparseChain(lanes=cfg.lanes, weight_bits=4, patterns=ALL_PATTERNS,
                               groups=groups)
    chain = make()
    out = Path(build_dir).resolve() / "bench_sparse"
    name = f"sparse_chain_l{cfg.lanes}_int4"      # the regression's build of the same chain
    v, meta = write_verilog(chain, name, out, params=chain.params())
    tb_dir = package_path("sim.tb_chain")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (k,), generator=gen)
    jobs = []
    for mode in ("dense", "2:4", "1:4"):
        q = random_weights(gen, rows, k, 4, mode)
        beats, expected = build_job(q, x, mode, lanes=chain.lanes, window=chain.window,
                                    group=group)
        jobs.append({"name": mode, "beats": beats, "expected": expected})
    job = out / f"jobs_{rows}x{k}_g{group}.json"
    job.write_text(json.dumps({"meta": str(meta), "p_idle": 0.0, "p_stall": 0.0,
                               "jobs": jobs}))
    res = run_cocotb(sources=[v], top=name, test_module="tb_sparse_chain", test_dir=tb_dir,
                     seed=seed, env={"CHAIN_JOB": job},
                     build_root=Path(build_dir).resolve() / "sim")["jobs"]
    cycles, in_cycles = {}, {}
    for one, r in zip(jobs, res):
        if r["error"] or r["mismatches"] or r["received"] != len(one["expected"]):
            raise RuntimeError(f"bench GEMV {one['name']} gave wrong results: {r}")
        cycles[one["name"]] = r["cycles"]
        in_cycles[one["name"]] = r["in_cycles"]
        if log:
            log(f"sparse chain {one['name']}: {len(one['beats'])} beats, {r['cycles']} cycles")
    if synth:
        from hdl.estimate import component_stats
        dsp = component_stats(make(), name, "xcup", flatten=True)["dsp"]
        dsp_source = "yosys synth_xilinx -family xcup"
    else:
        dsp = chain.multipliers
        dsp_source = "multiplier count"
    macs = rows * k
    shape = [rows, k, group]
    h = cfg.config_hash
    fig = {
        "sparse_2of4_cycle_ratio": cycles["2:4"] / cycles["dense"],
        "sparse_2of4_cycle_ratio_cycles": [cycles["2:4"], cycles["dense"]],
        "sparse_2of4_cycle_ratio_shape": shape,
        "sparse_2of4_cycle_ratio_config_hash": h,
        "sparse_1of4_cycle_ratio": cycles["1:4"] / cycles["dense"],
        "sparse_1of4_cycle_ratio_cycles": [cycles["1:4"], cycles["dense"]],
        "sparse_1of4_cycle_ratio_shape": shape,
        "sparse_1of4_cycle_ratio_config_hash": h,
        "sparse_dense_utilisation": macs / (cycles["dense"] * chain.lanes),
        "sparse_dense_utilisation_cycles": cycles["dense"],
        "sparse_dense_utilisation_shape": shape,
        "sparse_dense_utilisation_config_hash": h,
        "dsp_int4_macs_per_dsp_cycle": macs / in_cycles["dense"] / dsp,
        "dsp_int4_macs_per_dsp_cycle_cycles": in_cycles["dense"],
        "dsp_int4_macs_per_dsp_cycle_with_fill": macs / cycles["dense"] / dsp,
        "dsp_int4_macs_per_dsp_cycle_with_fill_cycles": cycles["dense"],
        "dsp_int4_macs_per_dsp_cycle_shape": shape,
        "dsp_int4_macs_per_dsp_cycle_config_hash": h,
        "dsp_int4_macs_per_dsp_cycle_dsp": dsp,
        "dsp_int4_macs_per_dsp_cycle_dsp_source": dsp_source,
        # Dense-equivalent work per DSP at 2:4 (the products skipped count as done).
        "dsp_int4_2of4_dense_equiv_macs_per_dsp_cycle": macs / cycles["2:4"] / dsp,
        "dsp_int4_2of4_dense_equiv_macs_per_dsp_cycle_cycles": cycles["2:4"],
        "dsp_int4_2of4_dense_equiv_macs_per_dsp_cycle_shape": shape,
        "dsp_int4_2of4_dense_equiv_macs_per_dsp_cycle_config_hash": h,
    }
    return fig
