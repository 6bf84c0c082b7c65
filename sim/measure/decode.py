"""Measurements behind the ``decode`` bench figures (see docs/figures.md)."""

from __future__ import annotations

from pathlib import Path
import numpy as np
import torch
from airfoil.packing import (TAG_BITS, RecordTag, StreamGeometry, bits_per_weight,
                       pack_tensor, tensor_records)

__all__ = ['FORMATS', 'image_bits_per_weight', 'unpacker_verilog', 'unpacker_words_per_cycle']


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
