"""Jobs for the sparse DSP chain: operand beats from weights, and the results they must give.

A *job* is one dense, N:M or block-skip GEMV (rows x k weights times one activation
vector) cut into the chain's operand beats, together with the expected psum beats. The
expected values come from :func:`airfoil.formats.group_psum` on the dense weights, not
from a copy of the chain's datapath; the beats are built with :mod:`airfoil.sparsity`.

Beats are plain dicts (``mode`` as an int); :func:`pack_beat` / :func:`unpack_psum` turn
them into the flat bit vectors of the Verilog ports using the field table the hardware
wrote into its metadata JSON (``params.operand_fields`` / ``params.psum_fields``).
"""

from __future__ import annotations

import torch

from airfoil.formats import group_psum
from sim.tb_chain.ports import pack_beat, unpack_psum  # noqa: F401  (re-exported)
from airfoil.sparsity import (NM_PATTERNS, SparsityMode, block_mask, block_schedule,
                              mode_of, nm_compress, prune_nm)

__all__ = ["random_weights", "build_job", "pack_beat", "unpack_psum", "beat_span"]


def beat_span(mode, lanes: int) -> int:
    """Activations (k positions) one beat of ``lanes`` lanes covers in ``mode``."""
    name = mode_of(mode)
    for p, (n, m) in NM_PATTERNS.items():
        if mode_of(p) == name:
            return lanes * m // n
    return lanes


def random_weights(gen: torch.Generator, rows: int, k: int, bits: int, mode, *,
                   block: int = 8, zero_blocks: float = 0.5) -> torch.Tensor:
    """Random ``bits``-bit weights shaped for ``mode``: N:M pruned by magnitude, or with
    about ``zero_blocks`` of their blocks of ``block`` zeroed for block skip."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = torch.randint(lo, hi + 1, (rows, k), generator=gen, dtype=torch.int64)
    mode = mode_of(mode)
    for p, (n, m) in NM_PATTERNS.items():
        if mode_of(p) == mode:
            return prune_nm(q, n, m)
    if mode == SparsityMode.BLOCK:
        keep = torch.rand((rows, k // block), generator=gen) >= zero_blocks
        q = q * keep.repeat_interleave(block, dim=1)
    return q


def build_job(q: torch.Tensor, x: torch.Tensor, mode, *, lanes: int, window: int,
              group: int, split: int = 0, groups: int = 1) -> tuple[list, list]:
    """Cut the GEMV ``q @ x`` into operand beats; return ``(beats, expected)``.

    ``expected`` is a list of ``(psums, last)`` with ``2**split`` psums per result beat.
    With ``split = s`` the lanes form ``2**s`` segments of ``lanes / 2**s`` lanes, each
    computing a different row against the same ``x`` (rows padded with zeros to a
    multiple of ``2**s``). ``k`` must be a multiple of ``group``, and ``group`` of the span
    one segment covers per beat; block skip uses blocks of one beat (``lanes`` weights)
    and ``split = 0``.
    """
    mode = mode_of(mode)
    rows, k = q.shape
    nseg = 1 << split
    if nseg > groups or lanes % nseg:
        raise ValueError(f"split {split} needs 2**split <= groups ({groups})")
    seg_lanes = lanes // nseg
    n, m = next(((n, m) for p, (n, m) in NM_PATTERNS.items() if mode_of(p) == mode), (1, 1))
    span = seg_lanes * m // n             # k positions per beat per segment
    if seg_lanes % n or k % group or group % span:
        raise ValueError(f"k={k}, group={group} do not fit beats of {span} ({mode.name}, "
                         f"{seg_lanes} lanes per segment)")
    if span * nseg > window:
        raise ValueError(f"mode {mode.name} needs a window of {span * nseg}, have {window}")
    ngroups = k // group
    beats, expected = [], []
    xl = x.tolist()
    if mode == SparsityMode.BLOCK:
        if split:
            raise ValueError("block skip runs with split 0")
        psums = group_psum(q, x, group)   # the semantic reference
        mask = block_mask(q, lanes)
        for r in range(rows):
            sched = block_schedule(mask[r].tolist(), group // lanes)
            for t, b in enumerate(sched):
                g = b * lanes // group
                gend = t + 1 == len(sched) or sched[t + 1] * lanes // group != g
                last = t + 1 == len(sched)
                act = xl[b * lanes:(b + 1) * lanes] + [0] * (window - lanes)
                beats.append({"mode": int(mode.value), "split": 0, "group_end": int(gend),
                              "last": int(last), "w": q[r, b * lanes:(b + 1) * lanes].tolist(),
                              "idx": [0] * lanes, "act": act})
                if gend:
                    expected.append(((int(psums[r, g]),), int(last)))
        return beats, expected
    prow = -(-rows // nseg) * nseg
    qp = torch.cat([q, torch.zeros(prow - rows, k, dtype=q.dtype)]) if prow > rows else q
    pp = group_psum(qp, x, group)         # the semantic reference
    if (n, m) != (1, 1):
        vals, idx = nm_compress(qp, n, m)
    else:
        vals, idx = qp.to(torch.int64), torch.zeros_like(qp, dtype=torch.int64)
    vals, idx = vals.tolist(), idx.tolist()
    bpg = group // span                    # beats per group
    for r0 in range(0, prow, nseg):
        for g in range(ngroups):
            for b in range(bpg):
                kb = g * group + b * span  # first k of this beat
                vb = kb // m * n           # first kept value of this beat
                w, ix, act = [], [], []
                for s in range(nseg):
                    w += vals[r0 + s][vb:vb + seg_lanes]
                    ix += idx[r0 + s][vb:vb + seg_lanes]
                    act += xl[kb:kb + span]
                act += [0] * (window - len(act))
                gend = b + 1 == bpg
                last = gend and g + 1 == ngroups
                beats.append({"mode": int(mode.value), "split": split, "group_end": int(gend),
                              "last": int(last), "w": w, "idx": ix, "act": act})
                if gend:
                    expected.append((tuple(int(pp[r0 + s, g]) for s in range(nseg)),
                                     int(last)))
    return beats, expected
