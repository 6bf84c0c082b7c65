"""Measurements behind the ``pe`` bench figures (see docs/figures.md)."""

from __future__ import annotations


__all__ = ["ROWS", "bitserial_cycles", "dsp_cycles", "dsp_pe", "lut_cycles"]


ROWS = 4


def bitserial_cycles(cfg, fmt, k, out, build_root, rows=ROWS, scale_r=1):
    """RTL cycles of ``rows`` dot products of length ``k`` in format ``fmt``."""
    from hdl.build import write_verilog
    from hdl.pe.bitserial import BitSerialPE, bitserial_in_layout
    from sim.tb_pe.rtl import run_stream_case
    from sim.tb_pe.stimulus import bitserial_case, layout_fields

    L, G = cfg.lanes, max(cfg.group_sizes)
    v, j = write_verilog(BitSerialPE(lanes=L, sparse=True, max_group=G,
                                     scale_bits_per_cycle=scale_r),
                         f"pe_bitserial_l{L}" + (f"_r{scale_r}" if scale_r > 1 else ""), out,
                         params={"in_fields": layout_fields(bitserial_in_layout(L, True))})
    case, expected = bitserial_case(lanes=L, fmts=[fmt], rows=rows, groups=k // G,
                                    beats=G // L, seed=1)
    res = run_stream_case(v, j, case, expected, seed=1, build_root=build_root)
    return res["cycles"]


def lut_cycles(cfg, bits, k, out, build_root, rows=ROWS, scale_r=1):
    """RTL cycles of the LUT PE on ``rows`` dot products of ``bits``-bit weights."""
    from hdl.build import write_verilog
    from hdl.pe.lut import LutPE, lut_in_layout
    from sim.tb_pe.rtl import run_stream_case
    from sim.tb_pe.stimulus import layout_fields, lut_case

    L, G, g = cfg.lanes, max(cfg.group_sizes), cfg.lut_group
    v, j = write_verilog(LutPE(lanes=L, g=g, max_group=G, scale_bits_per_cycle=scale_r),
                         f"pe_lut_l{L}_g{g}" + (f"_r{scale_r}" if scale_r > 1 else ""), out,
                         params={"in_fields": layout_fields(lut_in_layout(L))})
    case, expected = lut_case(lanes=L, bits_choices=[bits], rows=rows, groups=k // G,
                              beats=G // L, seed=1)
    res = run_stream_case(v, j, case, expected, seed=1, build_root=build_root)
    return res["cycles"]


def dsp_pe(lanes, weight_bits):
    """The ``dsp`` PE of hdl/pe/dsp.py."""
    from hdl.pe.dsp import DspPE
    return DspPE(lanes=lanes, weight_bits=weight_bits)


def dsp_cycles(cfg, k, out, build_root, rows=ROWS):
    """RTL cycles of the DSP PE on ``rows`` dot products of INT2 weights."""
    import random

    from hdl.build import write_verilog
    from hdl.pe import pe_operand_layout, pe_result_layout
    from sim.tb_pe.rtl import run_stream_case
    from sim.tb_pe.stimulus import layout_fields, pack, unpack_signed

    L = cfg.lanes
    pe = dsp_pe(L, 2)
    v, j = write_verilog(pe, f"pe_dsp_l{L}_w2", out, params={
        "in_fields": layout_fields(pe_operand_layout(lanes=L, weight_bits=2))})
    rng = random.Random(1)
    beats, expected = [], []
    out_fields = layout_fields(pe_result_layout(acc_bits=32))
    width = sum(w for _, w in out_fields.values())
    for _r in range(rows):
        acc = 0
        for b in range(k // L):
            w = [rng.randint(-2, 1) for _ in range(L)]
            a = [rng.randint(-128, 127) for _ in range(L)]
            acc += sum(p * q for p, q in zip(w, a))
            beat = {f"w.{i}": w[i] for i in range(L)}
            beat.update({f"a.{i}": a[i] for i in range(L)})
            beat["last"] = int(b == k // L - 1)
            beats.append(beat)
        expected.append(unpack_signed(pack(out_fields, {"acc": acc, "last": 1}), width))
    res = run_stream_case(v, j, beats, expected, seed=1, build_root=build_root)
    return res["cycles"]
