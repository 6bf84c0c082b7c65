"""Cases for the streamed GEMV harness: packed images, activations and golden results.

A case is one ``MV`` with ``wfmt = STREAM`` (or, with ``tokens > 1``, one ``MM`` of that
many activation vectors, each record applied to all of them): a weight tensor packed by
:mod:`airfoil.packing` (records of any format, N:M pattern or block skip, chosen per
record), INT8 activations and the instruction's fields. For a unit of ``slices`` slices
the tensor is padded to whole super-batches of ``slices * rows`` rows (zero weights,
scale 1.0, as the compiler pads a tile to a multiple of the chains) and its row batches
are cut into one stream per slice by the packing rule (batch ``b`` to slice
``b % slices``). The golden result reads the streams back with
:func:`airfoil.packing.unpack_channels` and applies
:func:`airfoil.formats.linear_reference`, so the packer, the reader and the arithmetic
are the shared definitions, not copies.
"""

from __future__ import annotations

import numpy as np
import torch

from airfoil import isa
from airfoil.formats import (OUT_BITS, accumulate, fp16_fixed, group_psum, linear_reference,
                             requant_params, rescale)
from airfoil.packing import (BLOCK_CODE, NM_BY_NAME, Record, StreamGeometry, interleave,
                             nm_kept, pack_records, record_tag, unpack_channels)

from ..tb_decode.stimulus import random_blocks, random_nm, random_weights

__all__ = ["StreamCase", "make_case", "encode_instr", "random_fp16_scales", "K0"]

#: Exponent window of the random scales: values in [2**-6, 2**2), so ``k`` in -16..-9
#: and padding rows' 1.0 (k = -10) lie in the rescaler window of ``k0 = -16``.
K0 = -16


def random_fp16_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random FP16 scales of either sign (a checkpoint's negative block scales),
    magnitudes in [2**-6, 2**2), as uint16 bit patterns."""
    vals = np.exp2(rng.uniform(-6.0, 2.0, n)).astype(np.float16)
    return (vals.view(np.uint16) | (rng.integers(0, 2, n) << 15)).astype(np.uint16)


class StreamCase(dict):
    """One case (a dict, JSON-ready apart from ``image``/``act``/``expected``).

    Keys: ``name``, ``streams`` (bytes of each slice's stream), ``image`` (the streams
    interleaved word by word, as a compiled image holds them; the stream itself for one
    slice), ``act`` (int8 array of ``k``, or ``tokens x k``), ``instr`` (the MV or MM
    fields for :func:`airfoil.isa.encode`), ``expected`` (int64 results per row, token
    after token), ``out_bytes`` (bytes per result), ``rows``, ``k``, ``weights`` (weight
    count), ``image_words`` (words of all streams), ``slices``, ``tokens``.
    """


def make_case(geom: StreamGeometry, *, name: str, rows: int, k: int, group: int, fmt,
              sparsity="dense", seed: int = 0, out_fmt: str = "INT8",
              abuf_addr: int = 0, obuf_addr: int = 0,
              block_keep: float | None = None, slices: int = 1,
              tokens: int = 1) -> StreamCase:
    """Build a random case.

    ``fmt`` is a format name (``"int4"``, ``"ovp"``) or a list of names drawn per record;
    ``sparsity`` a pattern name or a list drawn per record (a pattern that does not fit a
    record's format or the lanes falls back to dense). Block-skip records drop random
    k-steps (:func:`~sim.tb_decode.stimulus.random_blocks`), or with ``block_keep`` keep
    exactly ``round(block_keep * steps)`` of them (at least one). ``geom.rows`` is a
    slice's chains; ``slices`` the unit's slices (one stream each); ``tokens`` the
    activation vectors (``MM`` with ``m = tokens``, vectors and results contiguous).
    """
    rng = np.random.default_rng(seed)
    fmts = [fmt] if isinstance(fmt, str) else list(fmt)
    sps = [sparsity] if isinstance(sparsity, str) else list(sparsity)
    R = geom.rows
    batches = -(-rows // (R * slices)) * slices
    cols = k // group
    q = np.zeros((batches * R, k), dtype=np.int64)
    sbits = np.full((batches * R, cols), 0x3C00, dtype=np.uint16)
    records = []
    for b in range(batches):
        for c in range(cols):
            tag = record_tag(fmts[int(rng.integers(len(fmts)))])
            nm = NM_BY_NAME[sps[int(rng.integers(len(sps)))]]
            if nm and (tag.name == "OVP4" or nm_kept(group, nm) % geom.lanes):
                nm = 0
            live = max(0, min(R, rows - b * R))
            blk = np.zeros((R, group), dtype=np.int64)
            blk[:live] = random_weights(rng, tag, (live, group))
            if nm == BLOCK_CODE and block_keep is not None:
                steps = group // geom.lanes
                drop = rng.permutation(steps)[max(1, round(block_keep * steps)):]
                for st in drop:
                    blk[:, st * geom.lanes:(st + 1) * geom.lanes] = 0
            elif nm == BLOCK_CODE:
                blk = random_blocks(rng, blk, geom.lanes)
            else:
                blk = random_nm(rng, blk, nm)
            sc = np.full(R, 0x3C00, dtype=np.uint16)
            sc[:live] = random_fp16_scales(rng, live)
            q[b * R:(b + 1) * R, c * group:(c + 1) * group] = blk
            sbits[b * R:(b + 1) * R, c] = sc
            records.append(Record(tag, group, blk, sc, nm))
    # Row batch b (its cols records) goes to slice b % slices.
    streams = [pack_records(geom, [rc for b in range(c, batches, slices)
                                   for rc in records[b * cols:(b + 1) * cols]])
               for c in range(slices)]
    image = interleave(streams, geom.word_bits // 8)
    # The golden reads the streams back with the reference reader.
    q_ref, s_ref, _ = unpack_channels(geom, streams, rows=batches * R, k=k)
    q_ref, s_ref = q_ref[:rows], s_ref[:rows]
    assert np.array_equal(q_ref.numpy(), q[:rows]), "packer round trip"
    shape = (k,) if tokens == 1 else (tokens, k)
    act = torch.from_numpy(rng.integers(-128, 128, shape)).to(torch.int64)
    m, kk = fp16_fixed(s_ref)
    acc = accumulate(rescale(group_psum(q_ref, act, group), m, kk, K0))
    ofmt = isa.OutFormat[out_fmt]
    out_bits = OUT_BITS[ofmt]
    peak = max(1, int(acc.abs().max()))
    mult, shift = requant_params((1 << (out_bits - 1)) * 1.25 / peak)   # some saturate
    expected = linear_reference(q_ref, s_ref, act, group, K0, mult, shift, out_bits)
    instr = dict(wfmt="STREAM", group=group, rows=rows, k=k, m=tokens, abuf_addr=abuf_addr,
                 obuf_addr=obuf_addr, k0=K0, req_m=mult, req_s=shift, out_fmt=out_fmt,
                 acc_init=1, final=1)
    return StreamCase(name=name, streams=streams, image=image,
                      act=act.numpy().astype(np.int8), instr=instr,
                      expected=expected.numpy().astype(np.int64).reshape(-1),
                      out_bytes=out_bits // 8, rows=rows, k=k, weights=rows * k,
                      slices=slices, tokens=tokens,
                      image_words=sum(len(s) for s in streams) * 8 // geom.word_bits)


def encode_instr(fields: dict, *, release: int = 0) -> int:
    """The 256-bit encoding of a case's fields: ``MV``, or ``MM`` for ``m > 1``."""
    f = dict(fields)
    f["wfmt"] = isa.WeightFormat[f["wfmt"]]
    f["out_fmt"] = isa.OutFormat[f["out_fmt"]]
    op = isa.Opcode.MM if f["m"] > 1 else isa.Opcode.MV
    return isa.encode(op, release=release, **f)
