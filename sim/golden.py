"""The torch golden model: what every backend must compute, bit for bit.

It reads the quantized tensors back out of ``weights.bin`` through the manifest (never
re-quantizing, never reading ``program.afp``), reassembles each layer's whole weight
matrix, scales and bias, and applies the whole-row arithmetic of
:func:`airfoil.formats.linear_reference` with torch integer ops. It shares nothing with
the ISA simulator beyond :mod:`airfoil.formats` and the folder's input/output helpers, so
a tiling or addressing bug in the compiler or the simulator cannot hide.

A layer of streamed weights (manifest ``"stream": true``, ISA version 3) is rebuilt from
the packed streams in ``weights.bin`` with the reference reader of :mod:`airfoil.packing`
(:func:`~airfoil.packing.unpack_channels`: records of any format, N:M expanded), one stream
per memory channel and tile of the manifest, and computed with the same :mod:`airfoil.formats` arithmetic;
its bias comes from the tiles' bias tiles (WGT tiles whose weights are all zero).
"""

from __future__ import annotations

import torch

from airfoil.errors import AirfoilError
from airfoil.folder import Folder, load_folder
from airfoil.formats import linear_reference, tile_layout, unpack_tile, weight_format
from airfoil.packing import core_stream_geometry, unpack_channels
from airfoil.wgt_banks import WgtBanks

__all__ = ["run_golden", "layer_tensors"]


def _as_folder(folder) -> Folder:
    return folder if isinstance(folder, Folder) else load_folder(folder)


def layer_tensors(folder, name: str = "linear") -> dict:
    """Return one layer's quantized tensors as stored in the image (``name``: its entry in
    the manifest's ``model.linears``; a single-layer folder's one layer is ``linear``).

    Returns a dict with ``q`` (N x K int64), ``scales`` (N x K/group float16) and
    ``bias`` (N int64 accumulator units, or ``None``), plus the layer's manifest entry
    under ``layer``.
    """
    folder = _as_folder(folder)
    cfg = folder.resolve_config()
    layer = folder.manifest["model"]["linears"][name]
    if layer["streamed"]:
        return _stream_tensors(folder, cfg, layer)
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
        raw = WgtBanks.of(cfg).read_tile(folder.image, t["addr"], lay.nbytes, cfg.word_bytes)
        tq, ts, tb = unpack_tile(lay, raw)
        q[r0:r0 + rows, c0:c0 + cols] = tq
        scales[r0:r0 + rows, c0 // group:(c0 + cols) // group] = ts
        covered[r0:r0 + rows, c0:c0 + cols] = True
        if has_bias:
            bias[r0:r0 + rows] = tb
    if not bool(covered.all()):
        raise AirfoilError("the manifest's tiles do not cover the whole weight matrix")
    return {"q": q, "scales": scales, "bias": bias, "layer": layer}


def _stream_tensors(folder: Folder, cfg, layer: dict) -> dict:
    """:func:`layer_tensors` of a streamed layer: every tile's stream parsed back."""
    n, k, group = layer["n"], layer["k"], layer["group"]
    geom = core_stream_geometry(cfg)
    q = torch.zeros((n, k), dtype=torch.int64)
    scales = torch.zeros((n, k // group), dtype=torch.float16)
    covered = torch.zeros(n, dtype=torch.bool)
    bias = torch.zeros(n, dtype=torch.int64) if layer["bias"] else None
    offsets = folder.channel_offsets
    for t in layer["tiles"]:
        r0, rows = t["row0"], t["rows"]
        streams = []
        for st in t["streams"]:
            a, nb = offsets[st["channel"]] + st["addr"], st["nbytes"]
            if a + nb > len(folder.image):
                raise AirfoilError(f"stream of rows {r0}..{r0 + rows - 1} on channel "
                                   f"{st['channel']}: {nb} bytes at {a:#x} run past the "
                                   f"{len(folder.image)}-byte image")
            streams.append(bytes(folder.image[a:a + nb]))
        if len(streams) != cfg.slices:
            raise AirfoilError(f"stream of rows {r0}..{r0 + rows - 1} has {len(streams)} "
                               f"channel streams, config {cfg.name!r} has {cfg.slices} slices")
        tq, ts, _ = unpack_channels(geom, streams, rows=rows, k=k)
        if tq.shape[1] != k or int(ts.shape[1]) != k // group:
            raise AirfoilError(f"stream of rows {r0}..{r0 + rows - 1} is not group {group}")
        q[r0:r0 + rows] = tq
        scales[r0:r0 + rows] = ts
        covered[r0:r0 + rows] = True
        if bias is not None:
            lay = tile_layout(rows=rows, k=group, group=group, wfmt=weight_format(
                layer["bias_wformat"]), chains=cfg.chains, lanes=cfg.lanes, bias=True,
                align=cfg.word_bytes)
            b0 = offsets[0] + t["bias_addr"]
            if lay.nbytes != t["bias_nbytes"] or b0 + lay.nbytes > len(folder.image):
                raise AirfoilError(f"bias tile of rows {r0}..{r0 + rows - 1}: manifest says "
                                   f"{t['bias_nbytes']} bytes at {b0:#x}, layout needs "
                                   f"{lay.nbytes}")
            raw = WgtBanks.of(cfg).read_tile(folder.image, b0, lay.nbytes, cfg.word_bytes)
            bq, _, bb = unpack_tile(lay, raw)
            if bool(bq.any()):
                raise AirfoilError(f"bias tile of rows {r0}..{r0 + rows - 1} has nonzero "
                                   f"weights")
            bias[r0:r0 + rows] = bb
    if not bool(covered.all()):
        raise AirfoilError("the manifest's streams do not cover every output row")
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
    t = layer_tensors(folder)
    layer = t["layer"]
    x = folder.read_input(folder.image_with_input(x_q))
    x = torch.nn.functional.pad(x, (0, layer["k"] - x.numel()))  # K padded to a group
    return linear_reference(t["q"], t["scales"], x, layer["group"], layer["k0"],
                            layer["req_m"], layer["req_s"], layer["out_bits"], bias=t["bias"])
