"""Figures of the decode unit's unpacker (``airfoil bench --only decode``).

* ``bits_per_weight_<fmt>``: bytes of the image the real packer emits for a 4096 x 4096
  tensor (group 128, the U280 board's geometry and 32 channels; scales, headers and
  padding included) x 8 / 4096**2.
* ``decode_unpacker_words_per_cycle_<fmt>``: words accepted per cycle by the standalone
  unpacker in RTL (Verilator), one channel of the U280 board (256-bit words, 32 lanes,
  2 rows per record) streaming a 64 x 4096 tensor (group 128) with no backpressure: words
  / cycles from the first accepted word to the last. Raw evidence beside it: ``_cycles``,
  ``_shape``, ``_config_hash``.

The end-to-end ``decode_weight_port_utilization_<fmt>``, with the memory model's latency
and the chains consuming the beats, is measured by :mod:`airfoil.cli.bench_stream`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import load_config
from ..packing import (TAG_BITS, RecordTag, StreamGeometry, bits_per_weight,
                       pack_tensor, tensor_records)

__all__ = ["FORMATS", "figures", "image_bits_per_weight", "unpacker_verilog",
           "unpacker_words_per_cycle"]

#: Figure suffix -> record format.
FORMATS = {"int2": RecordTag.INT2, "int3": RecordTag.INT3, "int4": RecordTag.INT4,
           "int8": RecordTag.INT8, "ovp": RecordTag.OVP4}


def _tensor(tag: RecordTag, rows: int, k: int, group: int, seed: int):
    from sim.tb_decode.stimulus import random_scales, random_weights

    rng = np.random.default_rng(seed)
    q = random_weights(rng, tag, (rows, k))
    s = random_scales(rng, rows * (k // group)).astype(np.int16).reshape(rows, k // group)
    return q, torch.from_numpy(s).view(torch.float16)


def image_bits_per_weight(cfg, fmt: str, *, rows: int = 4096, k: int = 4096,
                          group: int = 128, seed: int = 0) -> float:
    """Bits per weight of the packed image of a random ``rows x k`` tensor in ``fmt``."""
    geom = StreamGeometry.from_config(cfg)
    q, s = _tensor(FORMATS[fmt], rows, k, group, seed)
    image = pack_tensor(geom, q, s, group=group, tags=FORMATS[fmt],
                        channels=cfg.memory.channels)
    return bits_per_weight(image, rows * k)


def unpacker_verilog(geom: StreamGeometry, out_dir) -> tuple[Path, Path]:
    """Write the standalone unpacker's Verilog and metadata for ``geom``."""
    from hdl.build import write_verilog
    from hdl.decode_unit.unpacker import Unpacker

    return write_verilog(Unpacker(geometry=geom),
                         f"unpacker_w{geom.word_bits}_l{geom.lanes}_r{geom.rows}", out_dir,
                         params={"word_bits": geom.word_bits, "lanes": geom.lanes,
                                 "rows": geom.rows})


def unpacker_words_per_cycle(cfg, fmt: str, *, rows: int, k: int, group: int = 128,
                             build_dir="build", seed: int = 0) -> dict:
    """Measure in RTL the words per cycle the unpacker of one channel of ``cfg`` takes.

    The stream is the real packer's image of one channel's share of a random ``rows x k``
    tensor (``fmt`` a key of :data:`FORMATS`, or ``"mixed"``: a format drawn per group).
    Return ``{"words", "cycles", "words_per_cycle", "beats", "shape"}``; every beat is
    checked bit-exactly against the reference reader on the way.
    """
    from sim.tb_decode.rtl import run_unpacker_rtl
    from sim.tb_decode.stimulus import make_case

    geom = StreamGeometry.from_config(cfg)
    tag = FORMATS.get(fmt, RecordTag.INT4)
    q, s = _tensor(tag, rows, k, group, seed)
    if fmt == "mixed":
        rng = np.random.default_rng(seed)
        from sim.tb_decode.stimulus import random_weights
        B, G = -(-rows // geom.rows), k // group
        tags = rng.choice([t.value for t in TAG_BITS], size=(B, G))
        for b in range(B):
            for j in range(G):
                t = RecordTag(int(tags[b, j]))
                blk = q[b * geom.rows:(b + 1) * geom.rows, j * group:(j + 1) * group]
                blk[:] = random_weights(rng, t, blk.shape)
    elif fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (accepted: {', '.join(FORMATS)}, mixed)")
    else:
        tags = tag
    records = [rc for batch in tensor_records(geom, q, s, group=group, tags=tags)
               for rc in batch]
    words, beats = make_case(geom, [records])
    vdir = Path(build_dir) / "decode" / cfg.name
    v, j = unpacker_verilog(geom, vdir)
    res = run_unpacker_rtl(v, j, words, beats, seed=seed)
    if res["errors"] or res["items_in"] != len(words):
        raise RuntimeError(f"unpacker run failed: {res['errors'][:1]}")
    cycles = res["accept_span"]
    return {"words": len(words), "cycles": cycles, "words_per_cycle": len(words) / cycles,
            "beats": res["items_out"],
            "shape": f"{rows}x{k} g{group} {fmt}: {len(words)} words of {geom.word_bits} "
                     f"bits, {geom.lanes} lanes, {geom.rows} rows/record"}


def figures(args, log) -> dict:
    """The decode figures (see the module docstring)."""
    build_dir = getattr(args, "build_dir", "build")
    cfg = load_config("u280")
    out = {}
    for fmt in FORMATS:
        bpw = image_bits_per_weight(cfg, fmt)
        out[f"bits_per_weight_{fmt}"] = bpw
        out[f"bits_per_weight_{fmt}_shape"] = "4096x4096 g128, u280 (32 channels x 2 rows)"
        log(f"bits_per_weight_{fmt} = {bpw:.4f}")
    for fmt in list(FORMATS) + ["mixed"]:
        r = unpacker_words_per_cycle(cfg, fmt, rows=2 * 32, k=4096, build_dir=build_dir)
        name = f"decode_unpacker_words_per_cycle_{fmt}"
        out[name] = r["words_per_cycle"]
        out[f"{name}_cycles"] = r["cycles"]
        out[f"{name}_shape"] = r["shape"]
        out[f"{name}_config_hash"] = cfg.config_hash
        log(f"{name} = {r['words_per_cycle']:.4f} ({r['words']} words / {r['cycles']} cycles)")
    return out
