"""Random packed weight streams for the unpacker's tests and benchmarks.

Every stream is made by :mod:`airfoil.packing` (the real packer), and the expected
output by its reference reader, so a testbench only moves words and compares beats.
"""

from __future__ import annotations

import numpy as np

from airfoil.packing import (BITMOD_TAGS, BLOCK_CODE, NM_PATTERNS, OVP_MAGNITUDES, TAG_BITS,
                             Record, StreamGeometry, beat_value, bitmod_values,
                             expected_beats, format_spec, nm_kept, pack_records, record_tag)

__all__ = ["random_weights", "random_nm", "random_blocks", "random_scales", "random_records",
           "stream_words", "make_case", "bitmod_layer"]


def random_weights(rng: np.random.Generator, tag, shape) -> np.ndarray:
    """Random legal weights of ``tag``: the full range, for OVP4 outlier pairs too, for
    a BitMoD or other codebook format any of its values (the extra value included), for
    a zero-point format any code minus a random zero point per row."""
    tag = record_tag(tag)
    spec = format_spec(tag)
    if tag in BITMOD_TAGS or spec.kind == "codebook":
        return rng.choice(bitmod_values(tag), size=shape)
    if spec.kind == "ovp":
        q = rng.integers(-7, 8, shape)
        pairs = q.reshape(-1, 2)
        hit = rng.random(pairs.shape[0]) < 0.2
        mags = rng.choice(np.array(OVP_MAGNITUDES[1:]), size=pairs.shape[0])
        vals = np.where(rng.random(pairs.shape[0]) < 0.5, -mags, mags)
        side = rng.integers(0, 2, pairs.shape[0])
        pairs[hit] = 0
        pairs[hit, side[hit]] = vals[hit]
        return pairs.reshape(shape)
    b = spec.code_bits
    if spec.kind == "zero_point":               # codes 0..2**b-1 minus a zero point per row
        zero = rng.integers(0, 1 << b, shape[:-1] + (1,))
        return rng.integers(0, 1 << b, shape) - zero
    return rng.integers(-(1 << (b - 1)), 1 << (b - 1), shape)


def random_nm(rng: np.random.Generator, q: np.ndarray, nm: int) -> np.ndarray:
    """``q`` pruned to the N:M pattern of code ``nm``: each window of M keeps a random
    0..N of its positions (N most of the time)."""
    if nm == 0:
        return q
    n, mm = NM_PATTERNS[nm]
    win = q.reshape(-1, mm).copy()
    order = np.argsort(rng.random(win.shape), axis=1)
    keep = np.where(rng.random(win.shape[0]) < 0.8, n, rng.integers(0, n + 1, win.shape[0]))
    drop = np.arange(mm)[None, :] >= keep[:, None]
    np.put_along_axis(win, order, np.where(drop, 0, np.take_along_axis(win, order, 1)), 1)
    return win.reshape(q.shape)


def random_blocks(rng: np.random.Generator, q: np.ndarray, lanes: int) -> np.ndarray:
    """``q`` (rows x group) with random k-steps (``lanes`` columns of every row) zeroed:
    each step is kept with a probability drawn per record, all of them dropped now and
    then (the packer then keeps step 0)."""
    steps = q.reshape(q.shape[0], -1, lanes).copy()
    p = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0])
    drop = rng.random(steps.shape[1]) >= p
    steps[:, drop] = 0
    return steps.reshape(q.shape)


def random_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random positive finite FP16 bit patterns, subnormals and extremes included."""
    pats = rng.integers(0, 0x7C00, n)
    special = np.array([0x0000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0x7BFF])
    pick = rng.random(n) < 0.1
    pats[pick] = rng.choice(special, size=int(pick.sum()))
    return pats.astype(np.uint16)


def random_records(geom: StreamGeometry, rng: np.random.Generator, count: int, *,
                   tags=None, groups=None, sparsity=(0,)) -> list:
    """``count`` random records, each of a format from ``tags`` (tags or names), a size
    from ``groups`` and an N:M or block-skip code from ``sparsity`` (drawn per record, so a
    list mixes formats, group sizes and sparsity per group; a code that does not fit the
    record's format, group and lanes falls back to dense)."""
    tags = [record_tag(t) for t in (tags or list(TAG_BITS))]
    groups = [g for g in (groups or (32, 64, 128)) if g % geom.lanes == 0]
    out = []
    for _ in range(count):
        tag = tags[int(rng.integers(len(tags)))]
        grp = int(groups[int(rng.integers(len(groups)))])
        nm = int(sparsity[int(rng.integers(len(sparsity)))])
        if nm and (format_spec(tag).kind == "ovp" or nm_kept(grp, nm) % geom.lanes):
            nm = 0
        q = random_weights(rng, tag, (geom.rows, grp))
        q = random_blocks(rng, q, geom.lanes) if nm == BLOCK_CODE else random_nm(rng, q, nm)
        out.append(Record(tag, grp, q.astype(np.int64), random_scales(rng, geom.rows), nm))
    return out


def stream_words(geom: StreamGeometry, raw: bytes) -> list:
    """The stream's words as integers (word 0 first)."""
    wb = geom.word_bits // 8
    return [int.from_bytes(raw[i:i + wb], "little") for i in range(0, len(raw), wb)]


def make_case(geom: StreamGeometry, streams) -> tuple[list, list]:
    """Words and expected beat payloads (ints) of streams sent back to back.

    ``streams`` is a list of record lists; each is packed as its own stream (a layer),
    so the format may change between layers as well as between groups.
    """
    words, beats = [], []
    for recs in streams:
        raw = pack_records(geom, recs)
        words += stream_words(geom, raw)
        beats += [beat_value(geom, b) for b in expected_beats(geom, raw)]
    return words, beats


def bitmod_layer(rng: np.random.Generator, n: int, k: int, *, group: int, rows: int,
                 formats, sparsity: str = "dense") -> tuple:
    """Float weights ``(n, k)`` whose records (``rows`` rows x one group) each sit on the
    grid of a format drawn from ``formats`` (names), so that a per-record least-error
    choice among ``formats`` finds it.

    A record of a BitMoD FP format holds that format's values (every row has the format's
    largest value, so the BitMoD scale is exact, and its extra value; the rest drawn from
    all values) times a power-of-two scale per row; any other format's record is
    Gaussian. With ``sparsity="2:4"`` every window of 4 keeps its first 2 weights. Return
    ``(weights, names)``: float64 weights and the drawn format per record (row batches x
    group columns).
    """
    B, G = -(-n // rows), k // group
    w = np.zeros((B * rows, k))
    names = np.empty((B, G), dtype=object)
    keep = np.arange(group) % 4 < 2 if sparsity == "2:4" else np.ones(group, dtype=bool)
    for b in range(B):
        for j in range(G):
            name = formats[int(rng.integers(len(formats)))]
            names[b, j] = name
            tag = record_tag(name)
            spec = format_spec(tag)
            if spec.kind == "codebook":
                vals = bitmod_values(tag)
                blk = rng.choice(vals, size=(rows, group)).astype(np.float64)
                blk[:, 0] = vals.max()
                blk[:, 1] = vals[1 << (spec.code_bits - 1)]         # the extra value
            else:
                blk = rng.standard_normal((rows, group))
            blk *= np.exp2(rng.integers(-6, -2, (rows, 1)))
            w[b * rows:(b + 1) * rows, j * group:(j + 1) * group] = np.where(keep, blk, 0.0)
    return w[:n], names
