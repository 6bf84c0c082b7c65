"""The torch golden model: what every backend must compute, bit for bit.

It reads the quantized tensors back out of ``weights.bin`` through the manifest (never
re-quantizing, never reading ``program.afp``), reassembles each layer's whole weight
matrix, scales and bias, and applies the whole-row arithmetic of
:func:`airfoil.formats.linear_reference` with torch integer ops. It shares nothing with
the ISA simulator beyond :mod:`airfoil.formats` and the folder's input/output helpers, so
a tiling or addressing bug in the compiler or the simulator cannot hide.
"""

from __future__ import annotations

import torch

from airfoil.errors import AirfoilError
from airfoil.folder import Folder, load_folder
from airfoil.formats import linear_reference, tile_layout, unpack_tile, weight_format

__all__ = ["run_golden", "layer_tensors"]


def _as_folder(folder) -> Folder:
    return folder if isinstance(folder, Folder) else load_folder(folder)


def layer_tensors(folder, index: int = 0) -> dict:
    """Return one layer's quantized tensors as stored in the image.

    Returns a dict with ``q`` (N x K int64), ``scales`` (N x K/group float16) and
    ``bias`` (N int64 accumulator units, or ``None``), plus the layer's manifest entry
    under ``layer``.
    """
    folder = _as_folder(folder)
    cfg = folder.resolve_config()
    layer = folder.manifest["layers"][index]
    n, k, group = layer["n"], layer["k"], layer["group"]
    wf = weight_format(layer["wformat"])
    q = torch.zeros((n, k), dtype=torch.int64)
    scales = torch.zeros((n, k // group), dtype=torch.float16)
    bias = torch.zeros(n, dtype=torch.int64) if layer["bias"] else None
    covered = torch.zeros((n, k), dtype=torch.bool)
    for t in layer["tiles"]:
        r0, rows = t["row0"], t["rows"]
        c0, cols = t.get("col0", 0), t.get("cols", k)
        has_bias = bool(layer["bias"]) and c0 == 0
        lay = tile_layout(rows=rows, k=cols, group=group, wfmt=wf, chains=cfg.chains,
                          lanes=cfg.lanes, bias=has_bias, align=cfg.word_bytes)
        if lay.nbytes != t["nbytes"] or t["addr"] + lay.nbytes > len(folder.image):
            raise AirfoilError(f"tile at row {r0}, column {c0}: manifest says {t['nbytes']} "
                               f"bytes at {t['addr']:#x}, layout needs {lay.nbytes}")
        tq, ts, tb = unpack_tile(lay, bytes(folder.image[t["addr"]:t["addr"] + lay.nbytes]))
        q[r0:r0 + rows, c0:c0 + cols] = tq
        scales[r0:r0 + rows, c0 // group:(c0 + cols) // group] = ts
        covered[r0:r0 + rows, c0:c0 + cols] = True
        if has_bias:
            bias[r0:r0 + rows] = tb
    if not bool(covered.all()):
        raise AirfoilError("the manifest's tiles do not cover the whole weight matrix")
    return {"q": q, "scales": scales, "bias": bias, "layer": layer}


def run_golden(folder, x_q=None) -> torch.Tensor:
    """Compute the folder's linear layer on ``x_q`` (default: the stored input).

    Parameters
    ----------
    folder : Folder or path
        A loaded output folder (or its path).
    x_q : sequence of int, optional
        INT8 input vector of length K.

    Returns
    -------
    torch.Tensor
        int64 tensor of shape (N,): the requantized outputs.
    """
    folder = _as_folder(folder)
    t = layer_tensors(folder, 0)
    layer = t["layer"]
    x = folder.read_input(folder.image_with_input(x_q))
    return linear_reference(t["q"], t["scales"], x, layer["group"], layer["k0"],
                            layer["req_m"], layer["req_s"], layer["out_bits"], bias=t["bias"])
