"""Figures of the PE kinds in the core: one streamed GEMV on the ``dsp``, ``bitserial`` and
``lut`` kinds, in INT4 and INT2.

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``kinds``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from airfoil.config import AccelConfig
from sim.measure.mc import bench_slice, measure_mc

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "core_<kind>_gemv_cycles_<fmt>": "cycles",
    "core_dsp_int4_macs_per_dsp_cycle": "MACs/(DSP x cycle)",
    "core_<kind>_dsp_per_mac": "DSP/(MAC/cycle)",
    "core_<kind>_lut_per_mac": "LUTs/(MAC/cycle)",
}

KIND_NAMES = ("dsp", "bitserial", "lut")
FORMATS = ("int4", "int2")
#: (rows, k, group) of the layer.
SHAPE = (1024, 4096, 128)


def kind_config(kind: str) -> AccelConfig:
    """The bench slice with PE kind ``kind`` (and the formats that kind takes)."""
    base = bench_slice((SHAPE[0], SHAPE[1], "int4", SHAPE[2]))
    formats = ("int2", "int3", "int4") if kind == "lut" else base.weight_formats
    return dataclasses.replace(base, name=f"{base.name}_{kind}", pe=kind,
                               weight_formats=formats)


def slice_chains(config: AccelConfig):
    """The streamed chains of one slice of ``config`` (dense), as the core builds them: one
    step input shared but the weights, each chain's own result out. A ``lut`` slice's
    chains build identical tables from the shared activations, which synthesis merges."""
    from amaranth.hdl import Module
    from amaranth.lib import stream, wiring
    from amaranth.lib.wiring import In, Out

    from hdl.dsp_chain.stream_chain import (StreamChain, stream_operand_layout,
                                            stream_psum_layout)

    n, L = config.slice_chains, config.lanes
    probe = StreamChain(kind=config.pe, lanes=L, patterns=("dense",))
    probe._MustUse__silence = True          # asked for its layouts only
    op = stream_operand_layout(lanes=L, act_bits=8, window=probe.window,
                               index_bits=probe.index_bits)

    class SliceChains(wiring.Component):
        def __init__(self):
            super().__init__({"i": In(stream.Signature(op)).array(n),
                              "o": Out(stream.Signature(stream_psum_layout(32))).array(n)})

        def elaborate(self, platform):
            m = Module()
            for c in range(n):
                ch = m.submodules[f"chain{c}"] = StreamChain(kind=config.pe, lanes=L)
                wiring.connect(m, wiring.flipped(self.o[c]), ch.o)
                p = self.i[c].payload
                m.d.comb += [ch.i.valid.eq(self.i[c].valid), self.i[c].ready.eq(ch.i.ready),
                             ch.i.payload.eq(p), ch.i.payload.act.eq(self.i[0].payload.act),
                             ch.i.payload.vbits.eq(self.i[0].payload.vbits)]
            return m

    return SliceChains()


def chain_stats(config: AccelConfig, build_dir="build") -> dict:
    """Yosys counts of one slice's streamed chains of ``config`` (dense)."""
    from hdl.estimate import component_stats

    return component_stats(slice_chains(config), f"slice_chains_{config.pe}_{config.lanes}",
                           flatten=True, cache_dir=Path(build_dir) / "estimate")


def figures(args, log) -> dict:
    """The PE-kind figures for ``airfoil bench``."""
    from hdl.pe.kinds import pe_kind

    build_dir = getattr(args, "build_dir", "build")
    n, k, group = SHAPE
    out: dict = {}
    for kind in KIND_NAMES:
        cfg = kind_config(kind)
        for fmt in FORMATS:
            r = measure_mc(cfg, shape=(n, k, fmt, group), build_dir=build_dir, log=log)
            name = f"core_{kind}_gemv_cycles_{fmt}"
            log(f"{name}: {r['cycles']} (MATRIX busy {r['busy_matrix']}, ISA "
                f"{r['isa_cycles']})")
            out.update({name: r["cycles"], f"{name}_busy_matrix": r["busy_matrix"],
                        f"{name}_isa_cycles": r["isa_cycles"],
                        f"{name}_shape": f"{n}x{k} {fmt} g{group} streamed, "
                                         f"{cfg.chains} chains x {cfg.lanes} lanes",
                        f"{name}_config_hash": cfg.config_hash})
        st = chain_stats(cfg, build_dir)
        macs = cfg.slice_chains * cfg.lanes / pe_kind(kind).step_cycles(4)
        for res in ("dsp", "lut"):
            name = f"core_{kind}_{res}_per_mac"
            out.update({name: st[res] / macs, f"{name}_dsp": st["dsp"],
                        f"{name}_lut": st["lut"], f"{name}_macs_per_cycle": macs,
                        f"{name}_shape": f"one slice's streamed chains, {cfg.slice_chains} "
                                         f"x {cfg.lanes} lanes, dense",
                        f"{name}_config_hash": cfg.config_hash})
        log(f"{kind} slice chains: {st['dsp']} DSP, {st['lut']} LUT for {macs:g} INT4 "
            f"MACs/cycle")
        if kind == "dsp":
            busy = out["core_dsp_gemv_cycles_int4_busy_matrix"]
            dsps = st["dsp"] * cfg.slices
            name = "core_dsp_int4_macs_per_dsp_cycle"
            out.update({name: n * k / (busy * dsps), f"{name}_cycles": busy,
                        f"{name}_dsp": dsps, f"{name}_macs": n * k,
                        f"{name}_shape": f"{n}x{k} int4 g{group} streamed",
                        f"{name}_config_hash": cfg.config_hash})
    return out
