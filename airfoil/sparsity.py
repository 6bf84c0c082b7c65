"""Structured weight sparsity: N:M packing with index metadata, block-skip masks, pruning.

Shared by the compiler, the golden model and the tests; the sparse DSP chain
(``hdl/dsp_chain/sparse.py``) computes exactly :func:`sparse_group_psum`.

N:M sparsity keeps at most ``n`` nonzero weights in every window of ``m`` consecutive
weights along k. A row of ``k`` weights is stored as ``k * n / m`` *kept values* and, for
each, its *index* ``0..m-1`` inside its window (``log2(m)`` bits, unsigned). Within a
window the kept indices are strictly increasing; a window with fewer than ``n`` nonzeros
keeps zeros at its lowest unused positions, so every window holds exactly ``n`` entries
and the metadata has a fixed size. Values and indices are packed separately with
:func:`airfoil.formats.pack_int` (LSB first), values as signed ``bits``-bit integers and
indices as unsigned ``log2(m)``-bit fields.

Block skip marks blocks of ``block`` consecutive weights of a row that are all zero; such
blocks are neither read nor computed. :func:`block_schedule` names the blocks a row reads.
In the packed weight stream (:mod:`airfoil.packing`) a block is one *k-step* of a record:
``lanes`` consecutive weights of each of the record's ``rows`` rows; :func:`prune_blocks`
zeros the k-steps of least L2 norm of every record down to a density.

All tensors are ``torch`` int64 (weights) unless a name says bytes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from amaranth.lib import enum

from .errors import CompileError
from .formats import pack_int, unpack_int

__all__ = [
    "SparsityMode", "NM_PATTERNS", "mode_of", "nm_of", "index_bits", "is_nm", "check_nm",
    "prune_nm", "prune_blocks", "nm_compress", "nm_expand", "pack_nm", "unpack_nm",
    "nm_nbytes",
    "sparse_group_psum", "block_mask", "block_schedule", "block_group_psum",
]


class SparsityMode(enum.Enum, shape=4):
    """Sparsity mode of one chain operation (values chosen to extend ``isa.Sparsity``)."""
    DENSE = 0
    NM_1_4 = 1
    NM_2_4 = 2
    NM_2_8 = 3
    NM_4_16 = 4
    NM_8_16 = 5
    BLOCK = 6


#: N:M patterns by their configuration name (``AccelConfig.sparsity``).
NM_PATTERNS = {"1:4": (1, 4), "2:4": (2, 4), "2:8": (2, 8), "4:16": (4, 16),
               "8:16": (8, 16)}

_MODE_BY_NAME = {"dense": SparsityMode.DENSE, "1:4": SparsityMode.NM_1_4,
                 "2:4": SparsityMode.NM_2_4, "2:8": SparsityMode.NM_2_8,
                 "4:16": SparsityMode.NM_4_16, "8:16": SparsityMode.NM_8_16,
                 "block": SparsityMode.BLOCK}
_NM_BY_MODE = {_MODE_BY_NAME[k]: v for k, v in NM_PATTERNS.items()}


def mode_of(name) -> SparsityMode:
    """Return the :class:`SparsityMode` of a configuration name such as ``"2:4"``."""
    if isinstance(name, SparsityMode):
        return name
    try:
        return _MODE_BY_NAME[str(name).lower()]
    except KeyError:
        raise CompileError(f"unknown sparsity pattern {name!r} (accepted: "
                           f"{', '.join(_MODE_BY_NAME)})") from None


def nm_of(mode) -> tuple[int, int]:
    """Return ``(n, m)`` of a mode; dense and block-skip modes are ``(1, 1)``."""
    return _NM_BY_MODE.get(mode_of(mode), (1, 1))


def index_bits(m: int) -> int:
    """Bits of one N:M index (``log2(m)``; 0 for ``m == 1``)."""
    if m < 1 or m & (m - 1):
        raise CompileError(f"N:M window m must be a power of two, not {m}")
    return m.bit_length() - 1


def _check_nm_args(n: int, m: int) -> None:
    index_bits(m)
    if not 1 <= n <= m:
        raise CompileError(f"N:M needs 1 <= n <= m, not {n}:{m}")


def _windows(q: torch.Tensor, m: int) -> torch.Tensor:
    if q.dim() != 2:
        raise CompileError(f"weights must be a 2-D (rows x k) tensor, not {q.dim()}-D")
    rows, k = q.shape
    if k % m:
        raise CompileError(f"k={k} is not a multiple of the N:M window m={m}")
    return q.reshape(rows, k // m, m)


def is_nm(q: torch.Tensor, n: int, m: int) -> bool:
    """Whether every window of ``m`` weights of ``q`` holds at most ``n`` nonzeros."""
    _check_nm_args(n, m)
    return bool(((_windows(q, m) != 0).sum(dim=2) <= n).all())


def check_nm(q: torch.Tensor, n: int, m: int) -> None:
    """Raise :class:`CompileError` naming the first window of ``q`` that is not N:M."""
    _check_nm_args(n, m)
    nz = (_windows(q, m) != 0).sum(dim=2)
    bad = (nz > n).nonzero()
    if bad.numel():
        r, w = (int(v) for v in bad[0])
        raise CompileError(f"weights are not {n}:{m} sparse: row {r}, window {w} "
                           f"(k {w * m}..{w * m + m - 1}) has {int(nz[r, w])} nonzeros")


def prune_nm(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Zero all but the ``n`` largest magnitudes of every window of ``m`` (ties: lower k).

    Works on float or integer weights and returns the same dtype.
    """
    _check_nm_args(n, m)
    win = _windows(w, m)
    mag = win.abs().to(torch.float64)
    # Stable descending sort keeps the lower index first among equal magnitudes.
    order = torch.sort(mag, dim=2, descending=True, stable=True).indices
    keep = torch.zeros_like(mag, dtype=torch.bool)
    keep.scatter_(2, order[:, :, :n], True)
    return torch.where(keep, win, torch.zeros_like(win)).reshape(w.shape)


def prune_blocks(w: torch.Tensor, *, rows: int, lanes: int, group: int,
                 density: float = 1.0) -> torch.Tensor:
    """Zero the k-steps of least L2 norm of every record, keeping ``ceil(density * steps)``.

    A record is ``rows`` consecutive rows (from row 0; a last partial batch counts its
    rows only) times one group of ``group`` weights; its k-step ``s`` is the ``lanes``
    weights ``s * lanes ..`` of each of its rows (``steps = group / lanes``). Of equal
    norms the lower step stays. ``density = 1`` keeps every step (only exact-zero steps
    are then skipped by the packer). Works on float or integer weights, same dtype back.
    """
    if isinstance(density, bool) or not isinstance(density, (int, float)) or \
            not 0 < density <= 1:
        raise CompileError(f"block density {density!r} is not accepted (accepted: a number "
                           f"with 0 < density <= 1)")
    for what, v in (("rows", rows), ("lanes", lanes), ("group", group)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CompileError(f"block pruning {what} must be a positive integer, not "
                               f"{v!r}")
    if w.dim() != 2 or w.shape[1] % group or group % lanes:
        raise CompileError(f"weights {tuple(w.shape)} do not split into groups of {group} "
                           f"and k-steps of {lanes}")
    R, K = w.shape
    steps = group // lanes
    keep_n = math.ceil(density * steps - 1e-9)
    if keep_n >= steps:
        return w.clone()
    B = -(-R // rows)
    wp = torch.zeros((B * rows, K), dtype=w.dtype)
    wp[:R] = w
    # (B, G, steps, rows, lanes): one entry per record and k-step
    blk = wp.reshape(B, rows, K // group, steps, lanes).permute(0, 2, 3, 1, 4)
    norm = (blk.to(torch.float64) ** 2).sum(dim=(3, 4))
    order = torch.sort(norm, dim=2, descending=True, stable=True).indices
    keep = torch.zeros_like(norm, dtype=torch.bool)
    keep.scatter_(2, order[:, :, :keep_n], True)
    out = torch.where(keep[..., None, None], blk, torch.zeros_like(blk))
    return out.permute(0, 3, 1, 2, 4).reshape(B * rows, K)[:R].contiguous()


def nm_compress(q: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(values, indices)``, each (rows x k*n/m) int64, of N:M sparse ``q``.

    Raise :class:`CompileError` if ``q`` is not N:M sparse.
    """
    check_nm(q, n, m)
    win = _windows(q.to(torch.int64), m)
    rows, nwin, _ = win.shape
    pos = torch.arange(m).expand(rows, nwin, m)
    # Nonzeros first (in index order), then the zero positions in index order; take n and
    # sort them back into increasing index order.
    key = torch.where(win != 0, pos, pos + m)
    idx = torch.sort(torch.sort(key, dim=2).values[:, :, :n] % m, dim=2).values
    vals = torch.gather(win, 2, idx)
    return vals.reshape(rows, -1), idx.reshape(rows, -1)


def nm_expand(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Inverse of :func:`nm_compress`: the dense (rows x k) weights."""
    _check_nm_args(n, m)
    rows, nk = values.shape
    if indices.shape != values.shape or nk % n:
        raise CompileError(f"N:M values {tuple(values.shape)} and indices "
                           f"{tuple(indices.shape)} do not form whole {n}:{m} windows")
    idx = indices.to(torch.int64).reshape(rows, nk // n, n)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= m):
        raise CompileError(f"N:M index outside 0..{m - 1}")
    out = torch.zeros(rows, nk // n, m, dtype=torch.int64)
    out.scatter_add_(2, idx, values.to(torch.int64).reshape(rows, nk // n, n))
    return out.reshape(rows, nk // n * m)


def nm_nbytes(rows: int, k: int, n: int, m: int, bits: int) -> tuple[int, int]:
    """Bytes of the packed values and of the packed indices of a (rows x k) N:M tensor."""
    kept = rows * k // m * n
    return (kept * bits + 7) // 8, (kept * index_bits(m) + 7) // 8


def pack_nm(q: torch.Tensor, n: int, m: int, bits: int) -> tuple[bytes, bytes]:
    """Pack N:M sparse weights into ``(value_bytes, index_bytes)`` (row-major, LSB first)."""
    vals, idx = nm_compress(q, n, m)
    ib = index_bits(m)
    ibytes = b""
    if ib:
        u = idx.reshape(-1).numpy()
        ibytes = pack_int(np.where(u >= 1 << (ib - 1), u - (1 << ib), u), ib)
    return pack_int(vals.reshape(-1).numpy(), bits), ibytes


def unpack_nm(value_bytes: bytes, index_bytes: bytes, *, rows: int, k: int, n: int, m: int,
              bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_nm`: the dense (rows x k) weights."""
    _check_nm_args(n, m)
    if k % m:
        raise CompileError(f"k={k} is not a multiple of the N:M window m={m}")
    kept = rows * k // m * n
    vals = torch.from_numpy(unpack_int(value_bytes, bits, kept)).reshape(rows, -1)
    ib = index_bits(m)
    if ib:
        idx = unpack_int(index_bytes, ib, kept) & ((1 << ib) - 1)
    else:
        idx = np.zeros(kept, dtype=np.int64)
    return nm_expand(vals, torch.from_numpy(idx).reshape(rows, -1), n, m)


def sparse_group_psum(values: torch.Tensor, indices: torch.Tensor, x: torch.Tensor, n: int,
                      m: int, group: int) -> torch.Tensor:
    """Exact per-group dot products of compressed N:M rows with activations ``x`` (k,).

    Each kept value at position ``p`` multiplies ``x[(p // n) * m + indices[p]]``, the
    activation its index names in its window -- what the chain's sparse mux does. Return
    int64 (rows x k/group).
    """
    _check_nm_args(n, m)
    rows, nk = values.shape
    k = nk // n * m
    if x.shape != (k,):
        raise CompileError(f"activations have shape {tuple(x.shape)}, expected ({k},)")
    if group % m or k % group:
        raise CompileError(f"group {group} must be a multiple of m={m} and divide k={k}")
    pos = torch.arange(nk)
    addr = (pos // n * m).unsqueeze(0) + indices.to(torch.int64)
    prod = values.to(torch.int64) * x.to(torch.int64)[addr]
    return prod.reshape(rows, k // group, group // m * n).sum(dim=2)


def block_mask(q: torch.Tensor, block: int) -> torch.Tensor:
    """Bool (rows x k/block): True where a block of ``block`` weights has a nonzero."""
    if block < 1:
        raise CompileError(f"block size must be a positive integer, not {block}")
    if q.dim() != 2 or q.shape[1] % block:
        raise CompileError(f"weights {tuple(q.shape)} do not split into blocks of {block}")
    return (q.reshape(q.shape[0], -1, block) != 0).any(dim=2)


def block_schedule(mask_row, blocks_per_group: int) -> list[int]:
    """Blocks one row reads, in order: its nonzero blocks, plus the first block of any
    group that has none (so that every group still yields its partial sum)."""
    mask = [bool(v) for v in mask_row]
    if blocks_per_group < 1 or len(mask) % blocks_per_group:
        raise CompileError(f"{len(mask)} blocks do not split into groups of "
                           f"{blocks_per_group}")
    out = []
    for g0 in range(0, len(mask), blocks_per_group):
        sel = [b for b in range(g0, g0 + blocks_per_group) if mask[b]]
        out.extend(sel or [g0])
    return out


def block_group_psum(q: torch.Tensor, mask: torch.Tensor, x: torch.Tensor, block: int,
                     group: int) -> torch.Tensor:
    """Per-group dot products computed from the blocks ``mask`` names only.

    Equals :func:`airfoil.formats.group_psum` when ``mask`` covers every nonzero (as
    :func:`block_mask` does). Return int64 (rows x k/group).
    """
    rows, k = q.shape
    if group % block or k % group:
        raise CompileError(f"group {group} must be a multiple of block={block} and "
                           f"divide k={k}")
    keep = mask.to(torch.bool).repeat_interleave(block, dim=1)
    prod = torch.where(keep, q.to(torch.int64) * x.to(torch.int64), 0)
    return prod.reshape(rows, k // group, group).sum(dim=2)
