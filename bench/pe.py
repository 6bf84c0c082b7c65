"""``airfoil bench`` figures of the processing elements (bit-serial, LUT, DSP).

The figures (:data:`FIGURES`) are defined in docs/figures.md, section ``pe``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from airfoil.bitmod import BitModFormat
from airfoil.config import load_config
from sim.measure.pe import ROWS, bitserial_cycles, dsp_cycles, dsp_pe, lut_cycles

__all__ = ["FIGURES", "figures"]

#: Figure name (``<x>`` a placeholder of a family) -> unit; defined in docs/figures.md.
FIGURES = {
    "bitserial_int2_over_int4_cycles": "ratio",
    "bitserial_int8_over_int4_cycles": "ratio",
    "bitserial_pe_luts_per_mac": "LUTs/(MAC/cycle)",
    "lut_pe_luts_per_mac": "LUTs/(MAC/cycle)",
    "dsp_pe_luts_per_mac": "LUTs/(MAC/cycle)",
    "lut_vs_dsp_macs_per_kilolut": "ratio",
    "lut_vs_dsp_macs_per_kilolut_nodsp": "ratio",
    "bitserial_pe_luts_per_mac_lanes32": "LUTs/(MAC/cycle)",
    "lut_pe_luts_per_mac_lanes32": "LUTs/(MAC/cycle)",
}

#: Lanes of the wider chain measured as scaling evidence.
SCALE_LANES = 32
#: Scale bits per cycle of that chain's rescaler.
SCALE_R = 4


def _evidence(name, cycles, shape, cfg) -> dict:
    return {f"{name}_cycles": cycles, f"{name}_shape": shape,
            f"{name}_config_hash": cfg.config_hash}


def figures(args, log) -> dict:
    """Measure the PE figures of issue 5 (RTL cycles and Yosys LUTs)."""
    from hdl.estimate import component_stats
    from hdl.pe.bitserial import BitSerialPE, SerialRescaler, psum_bits
    from hdl.pe.lut import LutChain, LutTableBuilder

    cfg = load_config("test")
    L, G = cfg.lanes, max(cfg.group_sizes)
    k = 2 * G
    macs = ROWS * k
    shape = {"rows": ROWS, "k": k, "group": G, "lanes": L}
    base = Path(getattr(args, "build_dir", "build"))
    out, build_root = base / "pe", base / "sim"
    res: dict = {}

    log("bench pe: bit-serial cycles in RTL (INT2, INT4, INT8) ...")
    cyc = {f: bitserial_cycles(cfg, f, k, out, build_root)
           for f in (BitModFormat.INT2, BitModFormat.INT4, BitModFormat.INT8)}
    c2, c4, c8 = cyc[BitModFormat.INT2], cyc[BitModFormat.INT4], cyc[BitModFormat.INT8]
    res["bitserial_int2_over_int4_cycles"] = c2 / c4
    res.update(_evidence("bitserial_int2_over_int4_cycles", [c2, c4], shape, cfg))
    res["bitserial_int8_over_int4_cycles"] = c8 / c4
    res.update(_evidence("bitserial_int8_over_int4_cycles", [c8, c4], shape, cfg))

    log("bench pe: LUT PE and DSP PE cycles in RTL (INT2 weights) ...")
    cl = lut_cycles(cfg, 2, k, out, build_root)
    cd = dsp_cycles(cfg, k, out, build_root)

    log("bench pe: Yosys xcup LUT counts ...")
    bs = component_stats(BitSerialPE(lanes=L, sparse=True, max_group=G), "pe_bitserial",
                         "xcup", nodsp=True, flatten=True)
    lc = component_stats(LutChain(lanes=L, g=cfg.lut_group, max_group=G), "lut_chain",
                         "xcup", nodsp=True, flatten=True)
    lb = component_stats(LutTableBuilder(lanes=L, g=cfg.lut_group), "lut_builder", "xcup",
                         nodsp=True, flatten=True)
    rs = component_stats(SerialRescaler(psum_width=psum_bits(L, G)), "rescaler", "xcup",
                         nodsp=True, flatten=True)

    def per_mac(name, luts, cycles, extra):
        mpc = macs / cycles
        res[name] = luts / mpc
        res.update(_evidence(name, cycles, {**shape, "weights": "int2"}, cfg))
        res[f"{name}_luts"] = luts
        res[f"{name}_macs_per_cycle"] = mpc
        res.update({f"{name}_{k2}": v for k2, v in extra.items()})
        return mpc

    per_mac("bitserial_pe_luts_per_mac", bs["lut"], c2,
            {"dsp": bs["dsp"], "rescaler_luts": rs["lut"]})
    lut_luts = lc["lut"] + lb["lut"] / cfg.chains
    lut_mpc = per_mac("lut_pe_luts_per_mac", lut_luts, cl,
                      {"chain_luts": lc["lut"], "builder_luts": lb["lut"],
                       "builder_shared_by_chains": cfg.chains, "dsp": lc["dsp"] + lb["dsp"]})
    ds = component_stats(dsp_pe(L, 2), "pe_dsp", "xcup", flatten=True)
    dn = component_stats(dsp_pe(L, 2), "pe_dsp", "xcup", nodsp=True, flatten=True)
    dsp_mpc = per_mac("dsp_pe_luts_per_mac", ds["lut"], cd,
                      {"dsp": ds["dsp"], "source": "hdl/pe/dsp.py DspPE weight_bits=2",
                       "nodsp_luts": dn["lut"]})
    lut_per_k = lut_mpc / (lut_luts / 1000)
    dsp_per_k = dsp_mpc / (ds["lut"] / 1000)
    res["lut_vs_dsp_macs_per_kilolut"] = lut_per_k / dsp_per_k
    res.update(_evidence("lut_vs_dsp_macs_per_kilolut", [cl, cd],
                         {**shape, "weights": "int2"}, cfg))
    res["lut_vs_dsp_macs_per_kilolut_lut_pe"] = lut_per_k
    res["lut_vs_dsp_macs_per_kilolut_dsp_pe"] = dsp_per_k
    # The same comparison with the DSP PE's multipliers mapped to fabric (-nodsp).
    res["lut_vs_dsp_macs_per_kilolut_nodsp"] = lut_per_k / (dsp_mpc / (dn["lut"] / 1000))

    # Scaling evidence: the same per-MAC figures for a chain of SCALE_LANES lanes (the
    # rescaler and the control are shared by more lanes). Its INT2 groups of 128 last 8
    # cycles, so its rescaler takes SCALE_R scale bits per cycle to keep up.
    cfg_w = dataclasses.replace(cfg, lanes=SCALE_LANES)
    log(f"bench pe: {SCALE_LANES}-lane bit-serial and LUT PEs (RTL cycles, Yosys) ...")
    c2w = bitserial_cycles(cfg_w, BitModFormat.INT2, k, out, build_root, scale_r=SCALE_R)
    clw = lut_cycles(cfg_w, 2, k, out, build_root, scale_r=SCALE_R)
    bsw = component_stats(BitSerialPE(lanes=SCALE_LANES, sparse=True, max_group=G,
                                      scale_bits_per_cycle=SCALE_R),
                          "pe_bitserial", "xcup", nodsp=True, flatten=True)
    lcw = component_stats(LutChain(lanes=SCALE_LANES, g=cfg.lut_group, max_group=G,
                                   scale_bits_per_cycle=SCALE_R),
                          "lut_chain", "xcup", nodsp=True, flatten=True)
    lbw = component_stats(LutTableBuilder(lanes=SCALE_LANES, g=cfg.lut_group),
                          "lut_builder", "xcup", nodsp=True, flatten=True)
    shape_w = {**shape, "lanes": SCALE_LANES, "weights": "int2",
               "scale_bits_per_cycle": SCALE_R}
    for name, luts, cycles in (
            (f"bitserial_pe_luts_per_mac_lanes{SCALE_LANES}", bsw["lut"], c2w),
            (f"lut_pe_luts_per_mac_lanes{SCALE_LANES}",
             lcw["lut"] + lbw["lut"] / cfg.chains, clw)):
        res[name] = luts / (macs / cycles)
        res.update(_evidence(name, cycles, shape_w, cfg_w))
        res[f"{name}_luts"] = luts
    return res
