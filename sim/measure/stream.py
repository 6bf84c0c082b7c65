"""Measurements behind the ``stream`` bench figures (see docs/figures.md)."""

from __future__ import annotations

from pathlib import Path

__all__ = ['FORMATS', 'BLOCK_KEEP', 'harness_verilog', 'stream_runs']


FORMATS = ("int2", "int3", "int4", "int8")


#: Fraction of each record's k-steps the block-skip run keeps.
BLOCK_KEEP = 0.5


def harness_verilog(cfg, out_dir) -> tuple[Path, Path]:
    """Write the streamed-GEMV harness of ``cfg`` (Verilog and metadata JSON)."""
    from hdl.build import write_verilog
    from hdl.core.stream_mv import StreamGemvHarness

    h = StreamGemvHarness.from_config(cfg)
    return write_verilog(h, f"stream_gemv_{cfg.name}", Path(out_dir), params=h.params())


def stream_runs(cfg, *, rows: int, k: int, group: int = 128, build_dir="build",
                seed: int = 0, formats=FORMATS) -> dict:
    """Run dense GEMVs of each format, an INT4 2:4 one and an INT4 block-skip one (half the
    k-steps of every record) in RTL; check them; return ``{case name: {"cycles",
    "useful", "beats", "image_bytes", "shape"}}``."""
    from sim.tb_stream.rtl import check_results, run_stream_rtl
    from sim.tb_stream.stimulus import make_case

    from hdl.core.stream_mv import StreamMatrix

    geom = StreamMatrix.geometry_of(cfg)
    specs = [(f, "dense") for f in formats] + [("int4", "2:4"), ("int4", "block")]
    cases = [make_case(geom, name=f"{f}-{sp}", rows=rows, k=k, group=group, fmt=f,
                       sparsity=sp, seed=seed + i, slices=cfg.slices,
                       block_keep=BLOCK_KEEP if sp == "block" else None)
             for i, (f, sp) in enumerate(specs)]
    v, j = harness_verilog(cfg, Path(build_dir) / "stream" / cfg.name)
    res = run_stream_rtl(v, j, cases,
                         latency=[cfg.memory.latency_of(c) for c in range(cfg.slices)],
                         outstanding=cfg.memory.outstanding, seed=seed)
    check_results(cases, res)
    out = {}
    for c, r in zip(cases, res):
        out[c["name"]] = {
            "cycles": r["cycles"], "useful": r["useful"], "beats": r["beats"],
            "image_bytes": len(c["image"]),
            "shape": f"{rows}x{k} g{group} {c['name']}: {c['image_words']} words of "
                     f"{geom.word_bits} bits, {geom.rows} chains x {geom.lanes} lanes, "
                     f"latency {cfg.memory.read_latency}, {cfg.memory.outstanding} "
                     f"outstanding",
        }
    return out
