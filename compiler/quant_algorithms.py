"""Weight quantization algorithms of one linear layer: RTN, GPTQ, AWQ and SparseGPT.

Each algorithm is a pure function of the float weights ``w`` (n x k), the layer's input
statistics (the Gram matrix ``H = X^T X`` of its inputs over the calibration tokens, k x
k, from :mod:`compiler.calibrate`), a weight format of :mod:`airfoil.format_registry`,
the group size and an optional N:M pattern ``(n, m)`` (keep ``n`` of every ``m``
consecutive weights along k). Each returns a :class:`QuantResult`: integer values on the
format's grid, FP16 group scales and the keep mask, stored by the ``quantize`` pass
exactly as its round-to-nearest path stores them, so the golden model, the ISA simulator
and the RTL read them unchanged.

The group scales are always the ones the round-to-nearest quantizer chooses for the
weights it is given (:func:`group_scales`, the rule of
:func:`airfoil.formats.quantize_weights`): GPTQ and SparseGPT keep them fixed and choose
the values (static groups), so a calibrated layer differs from a round-to-nearest one in
its values only, and AWQ changes the weights the scales are chosen from.

* :func:`rtn`: round to nearest, after magnitude pruning to N:M when asked.
* :func:`gptq`: GPTQ (Frantar et al. 2022): quantize column by column in order of
  decreasing ``H`` diagonal, each column's rounding error spread onto the columns not yet
  quantized through the inverse Hessian (Cholesky form, damped by a fraction of its mean
  diagonal), in blocks of :data:`BLOCK` columns.
* :func:`sparsegpt`: SparseGPT (Frantar & Alistarh 2023) with quantization: the same
  error compensation in natural column order; at the first column of every window of
  ``m`` the ``m - n`` weights of least ``w**2 / Hinv[j, j]**2`` of each row are pruned.
* :func:`awq_scales`: AWQ (Lin et al. 2023): per-input-channel scales ``s = a**alpha``
  (``a`` the channel's RMS activation), ``alpha`` searched on a grid for the least output
  error of round-to-nearest on ``w * s`` of every layer reading that input. The graph
  pass (:mod:`compiler.calibrate`) multiplies the weights by ``s`` and folds ``1 / s``
  into the producer of the input.

The output error of quantized weights ``q`` is :func:`output_error`:
``trace((q - w) H (q - w)^T)``, the summed squared error of the layer's outputs over the
calibration tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from airfoil import format_registry
from airfoil.errors import CompileError
from airfoil.formats import qmax

__all__ = ["QuantResult", "METHODS", "BLOCK", "DAMP", "AWQ_GRID", "format_spec",
           "grid_max", "group_scales", "quantize_fixed", "rtn", "gptq", "sparsegpt",
           "awq_scales", "output_error", "quantize_layer"]

#: Methods a recipe rule may name (``method:``).
METHODS = ("rtn", "gptq", "awq", "sparsegpt")
#: Columns per GPTQ block (the lazy batch update of the paper).
BLOCK = 128
#: Hessian damping: this fraction of the mean diagonal is added to the diagonal.
DAMP = 0.01
#: AWQ's exponents ``alpha`` searched (``s = a**alpha``).
AWQ_GRID = tuple(i / 20 for i in range(21))


@dataclass(frozen=True)
class QuantResult:
    """A quantized layer.

    Members
    -------
    values : torch.Tensor
        (n, k) int64 values on the format's grid (0 where pruned).
    scales : torch.Tensor
        (n, k / group) float16 group scales.
    keep : torch.Tensor
        (n, k) bool: the weights N:M pruning kept (all True when dense).
    """

    values: torch.Tensor
    scales: torch.Tensor
    keep: torch.Tensor

    def dequantize(self, group: int) -> torch.Tensor:
        """The float64 weights ``value * scale``."""
        return self.values.to(torch.float64) * self.scales.to(torch.float64
                                                              ).repeat_interleave(group, 1)


def format_spec(name) -> format_registry.FormatSpec:
    """The registry format of a name; raise :class:`CompileError` for a format these
    algorithms cannot quantize one value at a time (OVP4 quantizes pairs)."""
    spec = format_registry.by_name(name)
    if spec.kind == "ovp":
        raise CompileError(f"format {spec.name} quantizes weight pairs; the calibrated "
                           f"methods take int and codebook formats")
    return spec


def grid_max(spec) -> int:
    """Largest magnitude the format holds with both signs (what a group's largest weight
    maps to: ``qmax`` for INT, 12 for FP4, 4 for FP3)."""
    vals = set(spec.quant_values())
    return max(v for v in vals if v > 0 and -v in vals)


def group_scales(w: torch.Tensor, spec, group: int) -> torch.Tensor:
    """FP16 scales (n, k / group) of round to nearest: a group's largest magnitude over
    :func:`grid_max`, raised to at least ``2**-14`` of the layer's largest scale (every
    exponent in one rescaler window, as :func:`airfoil.formats.quantize_weights`)."""
    n, k = w.shape
    if k % group:
        raise CompileError(f"k={k} is not a multiple of the group size {group}")
    amax = w.detach().to(torch.float64).reshape(n, k // group, group).abs().amax(dim=2)
    s = amax / grid_max(spec)
    smax = float(s.max()) if s.numel() else 0.0
    s = torch.ones_like(s) if smax == 0.0 else torch.clamp(s, min=smax * 2.0 ** -14)
    s16 = s.to(torch.float16)
    s16 = torch.where(s16 > 0, s16, torch.tensor(2.0 ** -24, dtype=torch.float16))
    if bool(torch.isinf(s16).any()):
        raise CompileError("weights too large: a group scale overflows FP16")
    return s16


def quantize_fixed(w: torch.Tensor, scale: torch.Tensor, spec) -> torch.Tensor:
    """Values (int64) of float weights ``w`` (..., c) with their scales (..., c): the
    nearest value of the format (INT: round half to even, clamp to ``-qmax..qmax``)."""
    a = w.to(torch.float64) / scale.to(torch.float64)
    if spec.kind == "int":
        q = qmax(spec.code_bits)
        return torch.clamp(torch.round(a), -q, q).to(torch.int64)
    grid = torch.tensor(spec.quant_values(), dtype=torch.float64)
    i = torch.clamp(torch.searchsorted(grid, a.contiguous()), 1, len(grid) - 1)
    lo, hi = grid[i - 1], grid[i]
    return torch.where(a - lo <= hi - a, lo, hi).to(torch.int64)


def _check(w, H, group, nm):
    n, k = w.shape
    if k % group:
        raise CompileError(f"k={k} is not a multiple of the group size {group}")
    if H is not None and tuple(H.shape) != (k, k):
        raise CompileError(f"statistics of shape {tuple(H.shape)} do not fit a layer of "
                           f"k={k} inputs")
    if nm is not None:
        keep, m = nm
        if not (0 < keep <= m and k % m == 0):
            raise CompileError(f"N:M pattern {keep}:{m} does not fit k={k}")


def _magnitude_keep(w: torch.Tensor, nm) -> torch.Tensor:
    """Keep mask of magnitude N:M pruning (ties: the lower index stays)."""
    n, k = w.shape
    keep, m = nm
    win = w.abs().reshape(n, k // m, m)
    order = torch.sort(win, dim=2, descending=True, stable=True).indices
    mask = torch.zeros_like(win, dtype=torch.bool)
    mask.scatter_(2, order[:, :, :keep], True)
    return mask.reshape(n, k)


def rtn(w: torch.Tensor, H, spec, group: int, nm=None) -> QuantResult:
    """Round to nearest with the quantizer's scales, after magnitude N:M pruning.

    ``H`` is unused (accepted so that every method has one signature).
    """
    _check(w, H, group, nm)
    wf = w.detach().to(torch.float64)
    n, k = wf.shape
    keep = _magnitude_keep(wf, nm) if nm else torch.ones((n, k), dtype=torch.bool)
    wf = torch.where(keep, wf, torch.zeros_like(wf))
    s16 = group_scales(wf, spec, group)
    cols = s16.repeat_interleave(group, dim=1)
    q = torch.where(keep, quantize_fixed(wf, cols, spec), torch.zeros((), dtype=torch.int64))
    return QuantResult(q, s16, keep)


def _inverse_hessian_chol(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped inverse of ``H`` (float64)."""
    k = H.shape[0]
    Hd = H.clone()
    Hd.diagonal().add_(damp * float(Hd.diagonal().mean()) + 1e-12)
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            break
        Hd.diagonal().add_(damp * float(Hd.diagonal().mean()))
    else:
        raise CompileError("the calibration Hessian is not positive definite")
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True)


def _obs(w: torch.Tensor, H: torch.Tensor, spec, s16: torch.Tensor, group: int, nm,
         order: torch.Tensor | None, damp: float, magnitude_keep=None):
    """The optimal-brain-surgeon loop shared by GPTQ and SparseGPT.

    Columns are visited in ``order`` (None: natural); column ``j`` is quantized with the
    scale of its group, the error divided by ``Hinv[j, j]`` and subtracted from the later
    columns along row ``j`` of the upper Cholesky factor of the inverse Hessian. With
    ``nm`` (natural order only) a window's mask is chosen at its first column.
    """
    W = w.detach().to(torch.float64).clone()
    H = H.detach().to(torch.float64).clone()
    n, k = W.shape
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    scol = s16.to(torch.float64).repeat_interleave(group, dim=1)
    if order is not None:
        W, H, scol = W[:, order], H[order][:, order], scol[:, order]
    U = _inverse_hessian_chol(H, damp)
    Q = torch.zeros((n, k), dtype=torch.int64)
    keep = torch.ones((n, k), dtype=torch.bool)
    for b0 in range(0, k, BLOCK):
        b1 = min(b0 + BLOCK, k)
        W1 = W[:, b0:b1].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[b0:b1, b0:b1]
        for i in range(b1 - b0):
            j = b0 + i
            if nm is not None and j % nm[1] == 0:
                m = nm[1]
                if magnitude_keep is not None:
                    keep[:, j:j + m] = magnitude_keep[:, j:j + m]
                else:
                    d = U1.diagonal()[i:i + m]
                    score = W1[:, i:i + m] ** 2 / d ** 2
                    top = torch.topk(score, nm[0], dim=1).indices
                    keep[:, j:j + m] = False
                    keep[:, j:j + m].scatter_(1, top, True)
            col = W1[:, i]
            q = quantize_fixed(col, scol[:, j], spec)
            q = torch.where(keep[:, j], q, torch.zeros_like(q))
            Q[:, j] = q
            err = (col - q.to(torch.float64) * scol[:, j]) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            E1[:, i] = err
        W[:, b1:] -= E1 @ U[b0:b1, b1:]
    if order is not None:
        inv = torch.argsort(order)
        Q, keep = Q[:, inv], keep[:, inv]
    return Q, keep


def gptq(w: torch.Tensor, H: torch.Tensor, spec, group: int, nm=None, *,
         damp: float = DAMP, act_order: bool = True) -> QuantResult:
    """GPTQ with the round-to-nearest scales (static groups), columns in order of
    decreasing ``H`` diagonal (``act_order``). With ``nm`` the weights are first pruned
    by magnitude (use :func:`sparsegpt` to choose the mask with compensation)."""
    _check(w, H, group, nm)
    wf = w.detach().to(torch.float64)
    keep = _magnitude_keep(wf, nm) if nm else None
    if keep is not None:
        wf = torch.where(keep, wf, torch.zeros_like(wf))
    s16 = group_scales(wf, spec, group)
    order = None
    if act_order and keep is None:
        order = torch.argsort(H.diagonal().to(torch.float64), descending=True, stable=True)
    q, kp = _obs(wf, H, spec, s16, group, nm, order, damp, magnitude_keep=keep)
    return QuantResult(q, s16, kp)


def sparsegpt(w: torch.Tensor, H: torch.Tensor, spec, group: int, nm=None, *,
              damp: float = DAMP) -> QuantResult:
    """SparseGPT N:M pruning and quantization with error compensation (natural column
    order; dense, i.e. ``nm=None``, is GPTQ without reordering). The scales are those of
    round to nearest on the magnitude-pruned weights: the FP16 scales must be known
    before the first column, and the pruned set changes them little."""
    _check(w, H, group, nm)
    wf = w.detach().to(torch.float64)
    base = torch.where(_magnitude_keep(wf, nm), wf, torch.zeros_like(wf)) if nm else wf
    s16 = group_scales(base, spec, group)
    q, keep = _obs(wf, H, spec, s16, group, nm, None, damp)
    return QuantResult(q, s16, keep)


def output_error(w: torch.Tensor, wq: torch.Tensor, H: torch.Tensor) -> float:
    """``trace((wq - w) H (wq - w)^T)``: squared output error summed over the tokens."""
    d = wq.to(torch.float64) - w.to(torch.float64)
    return float(((d @ H.to(torch.float64)) * d).sum())


def awq_scales(ws, H: torch.Tensor, spec, group: int, *, tie: int = 1,
               grid=AWQ_GRID) -> torch.Tensor:
    """AWQ per-input-channel scales (float64, k) of the layers ``ws`` that read one input.

    ``s = a**alpha`` normalised to a geometric mean of 1, ``a`` the RMS of each input
    channel (from ``H``'s diagonal; with ``tie > 1`` the RMS is averaged over channels
    ``c, c + k/tie, ...`` so that they share one scale, as when the input is an
    attention context whose heads share key/value heads). ``alpha`` minimises the summed
    :func:`output_error` of round to nearest on ``w * s`` (then divided by ``s``), over
    :data:`AWQ_GRID`; ``alpha = 0`` is plain round to nearest.
    """
    Hd = H.to(torch.float64)
    k = Hd.shape[0]
    a = Hd.diagonal().clamp(min=0).sqrt()
    if tie > 1:
        a = a.reshape(tie, k // tie).mean(dim=0).repeat(tie)
    a = a.clamp(min=1e-8 * float(a.max()) if float(a.max()) > 0 else 1e-8)
    best, best_s = None, torch.ones(k, dtype=torch.float64)
    for alpha in grid:
        s = a ** alpha
        s = s / torch.exp(torch.log(s).mean())
        err = 0.0
        for w in ws:
            wf = w.detach().to(torch.float64)
            r = rtn(wf * s, None, spec, group)
            err += output_error(wf, r.dequantize(group) / s, Hd)
        if best is None or err < best:
            best, best_s = err, s
    return best_s


def quantize_layer(method: str, w: torch.Tensor, H, spec, group: int, nm=None
                   ) -> QuantResult:
    """Quantize one layer by ``method`` (:data:`METHODS`; ``awq`` here is round to
    nearest: its scaling is a graph transformation done before; ``gptq`` under N:M is
    :func:`sparsegpt`, which chooses the mask with the same compensation)."""
    if method in ("rtn", "awq"):
        return rtn(w, H, spec, group, nm)
    if H is None:
        raise CompileError(f"method {method} needs calibration statistics")
    if method == "gptq" and nm is None:
        return gptq(w, H, spec, group)
    if method == "gptq":                # N:M: the mask chosen with compensation too
        return sparsegpt(w, H, spec, group, nm)
    if method == "sparsegpt":
        return sparsegpt(w, H, spec, group, nm)
    raise CompileError(f"unknown quantization method {method!r} (accepted: "
                       f"{', '.join(METHODS)})")
