"""Linear layers a quantized checkpoint gives exactly, in the form the datapath computes.

The importers of quantized checkpoints (:mod:`.gptq`, :mod:`.awq`, :mod:`.gguf`) read each
linear layer's integer codes, zero points and group scales and either

* give the layer **exactly**: the signed codes ``q - z`` (zero point subtracted at compile
  time) with the file's own FP16 group scales become a
  :class:`~airfoil.fixedpoint.QLinear` (:func:`exact_layer`) in the narrowest WGT-tile
  integer format that holds every code: INT4 (``-8..7``, e.g. symmetric GPTQ with zero 8,
  GGUF Q4_0 with either sign of ``d``: the scales are signed) or INT8 (``-128..127``: any
  4-bit code minus a 4-bit zero point, Q5_0, Q8_0). The compiler's ``quantize`` pass takes these
  layers as given (:attr:`compiler.ir.Graph.prequantized`). A layer whose weights are
  not one code times one scale per run of inputs reads its input more than once
  (:attr:`~airfoil.fixedpoint.QLinear.input_copies`): GGUF Q4_1's ``d q + m``
  (:func:`offset_layer`), act-order GPTQ's groups mixed within runs
  (:func:`~.gptq.regroup`).
  On a configuration whose decode unit reads the zero-point record format ``uint4z``, a
  layer the WGT tiles would hold as INT8 only because its codes span ``-15..15`` (any
  4-bit code minus a 4-bit zero point, a Q4_0 block negated by :func:`positive_scales`),
  each row of each group spanning at most 15, is streamed instead as ``uint4z`` records
  (:func:`zero_point_stream`): the same values and scales in 4-bit codes plus a 4-bit
  zero point per row and group, so the layer keeps the checkpoint's 4 bits; or
* **convert** it: the file's own dequantization becomes the float weight that the recipe
  quantizes like any other, and :func:`conversion_errors` measures what that costs.

Either way the graph's float parameter of the layer is the file's dequantization (the
``float`` backend runs it). What the importer decided per layer is the plain dict
``graph.meta["import"]`` (:class:`ImportReport`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from airfoil.errors import CompileError
from airfoil.fixedpoint import QLinear
from airfoil.formats import SCALE_SHIFT_MAX, fp16_fixed

from ..ir import Graph, build_llama_graph

__all__ = ["HARDWARE_GROUPS", "ImportReport", "NotExact", "exact_layer", "offset_layer",
           "exact_or_why",
           "ZERO_POINT_FORMAT", "zero_point_stream",
           "permute_rows", "positive_scales", "code_bits", "hardware_group", "fold_scale",
           "finish_import",
           "conversion_errors", "rms_error"]

#: Group sizes a layer's scales are split to (largest first): every board config builds
#: 64 and 128, most 32 (``group_sizes`` in ``fpga/boards/*.yaml``).
HARDWARE_GROUPS = (128, 64, 32)
#: Integer WGT-tile formats by width, with their code range.
_INT_RANGES = {4: (-8, 7), 8: (-128, 127)}


@dataclass
class ImportReport:
    """What a quantized checkpoint's importer did with each linear layer.

    Attributes
    ----------
    format : str
        The checkpoint format (``"gptq"``, ``"awq"``, ``"gguf"``).
    exact : dict
        Layer name -> WGT-tile format (``"int4"``, ``"int8"``) of the layers taken exactly.
    converted : dict
        Layer name -> why it is requantized from the file's dequantization (the
        quantization type, act-order, a zero point that is not an integer).
    rounded : dict
        Layer name -> largest relative change of a group scale, for exact layers whose
        scales took the attention scale rounded (:func:`fold_scale`).
    reordered : dict
        Layer name -> how its inputs or outputs were permuted or its inputs regrouped
        (the model computes the same function).
    """

    format: str
    exact: dict = field(default_factory=dict)
    converted: dict = field(default_factory=dict)
    rounded: dict = field(default_factory=dict)
    reordered: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class NotExact(CompileError):
    """A layer the WGT formats cannot hold exactly (the message says why)."""


def code_bits(codes: torch.Tensor, layer: str) -> int:
    """The narrowest integer WGT-tile format (4 or 8 bits) holding every code."""
    lo, hi = int(codes.min()), int(codes.max())
    for bits, (a, b) in _INT_RANGES.items():
        if a <= lo and hi <= b:
            return bits
    raise NotExact(f"layer {layer}: codes {lo}..{hi} do not fit INT8 (-128..127), the "
                   f"widest integer weight format")


def hardware_group(group: int, k: int, layer: str) -> int:
    """The largest of :data:`HARDWARE_GROUPS` dividing ``group`` (a whole row when the
    checkpoint has one scale per row): the file's scales are repeated to it, exactly."""
    for g in HARDWARE_GROUPS:
        if group % g == 0 and k % g == 0:
            return g
    raise CompileError(f"layer {layer}: group size {group} is not a multiple of any group "
                       f"size the hardware builds ({', '.join(map(str, HARDWARE_GROUPS))})")


def exact_layer(codes: torch.Tensor, scales: torch.Tensor, group: int, layer: str, *,
                input_copies: int = 1) -> QLinear:
    """The :class:`QLinear` whose weights are exactly ``codes * scales`` (per group).

    ``codes``: (rows, k) integers, zero point already subtracted; ``scales``: (rows,
    k / group) FP16, any sign: a negative scale is kept (the rescaler multiplies by the
    signed significand), so a GGUF Q4_0 block with a negative ``d`` keeps its 4-bit codes
    (:func:`positive_scales` negates such groups for a PE whose rescaler takes
    magnitudes). A group whose weights are all zero takes the layer's largest scale
    magnitude (any scale is exact for zero codes, and that one keeps the exponent spread
    small). The group is split to :func:`hardware_group`. Raise :class:`NotExact` when a
    code does not fit INT8 or the scales span more than the ``2**SCALE_SHIFT_MAX`` the
    rescaler shifts across one layer (the hardware's SCALE_RANGE), a one-line
    :class:`CompileError` when a scale is not finite. ``input_copies``: the codes are
    that many blocks of columns, one per copy of the input (:func:`offset_layer`).
    """
    if scales.dtype != torch.float16:
        raise TypeError(f"scales must be float16, not {scales.dtype}")
    rows, k = codes.shape
    if not bool(torch.isfinite(scales).all()):
        raise CompileError(f"layer {layer}: a group scale is infinite or NaN")
    q = codes.to(torch.int64).reshape(rows, k // group, group)
    s = scales.clone()
    zero = (s == 0) | (q == 0).all(dim=2)
    q = torch.where(zero.unsqueeze(2), torch.zeros_like(q), q)
    top = s.abs().max() if bool((s != 0).any()) else torch.tensor(1.0, dtype=torch.float16)
    s = torch.where(zero, top, s)
    g = hardware_group(group, k, layer)
    s = s.repeat_interleave(group // g, dim=1)
    _, kexp = fp16_fixed(s)
    if int(kexp.max() - kexp.min()) > SCALE_SHIFT_MAX:
        lo, hi = float(s.abs().min()), float(s.abs().max())
        raise NotExact(f"layer {layer}: group scales {lo:.3g}..{hi:.3g} span more than "
                       f"the 2**{SCALE_SHIFT_MAX} the rescaler shifts within a layer")
    q = q.reshape(rows, k)
    return QLinear(q, s, g, code_bits(q, layer), input_copies=input_copies)


def offset_layer(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor,
                 group: int, layer: str) -> QLinear:
    """The exact layer of weights ``scales * codes + offsets`` per group (GGUF ``Q4_1``'s
    ``w = d q + m``): the input read twice (``input_copies`` 2), codes ``[codes | 1]``
    and scales ``[scales | offsets]``, so the offset term is ``m`` times the group's sum
    of inputs, accumulated beside ``d (q . x)`` with no hardware of its own. It costs
    twice the columns: the MACs and the bytes of two layers."""
    ones = torch.ones_like(codes)
    return exact_layer(torch.cat([codes, ones], dim=1), torch.cat([scales, offsets], dim=1),
                       group, layer, input_copies=2)


#: The record format an INT8 layer of 4-bit codes minus zero points streams in.
ZERO_POINT_FORMAT = "uint4z"


def zero_point_stream(ql: QLinear, config) -> QLinear | None:
    """``ql`` (an exact layer, :func:`exact_layer`) as a streamed layer of
    :data:`ZERO_POINT_FORMAT` records with the same values and scales, or ``None`` when it
    stays on WGT tiles: ``config`` is None or lacks a decode unit reading the format, the
    layer already fits INT4 tiles, or a row of a group spans more than the format's codes
    (or its values pass them: codes ``0..15`` minus a zero point ``0..15``)."""
    from airfoil.format_registry import by_name

    spec = by_name(ZERO_POINT_FORMAT)
    if config is None or ZERO_POINT_FORMAT not in config.stream_formats or ql.streamed:
        return None
    if ql.bits <= 4 or ql.group not in config.group_sizes or ql.group % config.lanes:
        return None
    rows, k = ql.q.shape
    g = ql.q.reshape(rows, k // ql.group, ql.group)
    top = (1 << spec.code_bits) - 1
    lo, hi = g.amin(dim=2), g.amax(dim=2)
    if bool(((hi - lo) > top).any() or (lo < -top).any() or (hi > top).any()):
        return None
    formats = torch.full((rows, k // ql.group), spec.tag, dtype=torch.int64)
    return QLinear(ql.q, ql.scales, ql.group, ql.bits, formats=formats,
                   in_features=ql.in_features, input_copies=ql.input_copies)


def positive_scales(ql: QLinear, layer: str) -> QLinear:
    """``ql`` with every negative group scale and its codes negated (the same weights), for
    a PE whose MATRIX rescaler takes scale magnitudes
    (:attr:`hdl.pe.kinds.PeKind.signed_tile_scales`): the codes may need INT8 then (a
    Q4_0 block's ``-8`` becomes ``8``)."""
    neg = (ql.scales < 0).repeat_interleave(ql.group, dim=1)
    if not bool(neg.any()):
        return ql
    q = torch.where(neg, -ql.q, ql.q)
    return QLinear(q, ql.scales.abs(), ql.group, code_bits(q, layer),
                   in_features=ql.in_features, input_copies=ql.input_copies)


def permute_rows(ql: QLinear, rows: torch.Tensor) -> QLinear:
    """``ql`` with its rows (outputs) in the order ``rows`` (row ``j`` is ``ql``'s
    ``rows[j]``)."""
    return QLinear(ql.q[rows], ql.scales[rows], ql.group, ql.bits,
                   input_copies=ql.input_copies)


def exact_or_why(codes, scales, group, layer, offsets=None
                 ) -> tuple[QLinear | None, str | None]:
    """``(exact_layer(...), None)`` (:func:`offset_layer` with ``offsets``), or ``(None,
    why)`` when the layer is not exact (:class:`NotExact`): the importer then requantizes
    it from its dequantization."""
    try:
        if offsets is not None:
            return offset_layer(codes, scales, offsets, group, layer), None
        return exact_layer(codes, scales, group, layer), None
    except NotExact as e:
        return None, str(e).removeprefix(f"layer {layer}: ")


def fold_scale(graph: Graph, layer: str, factor: float) -> None:
    """Multiply the group scales of pre-quantized ``layer`` by ``factor`` (the attention
    scale ``1/sqrt(head_dim)`` folded into the query projection), in place.

    The products are rounded to FP16: exact for a power of two that keeps the scales
    normal (``head_dim`` 16, 64, 256); otherwise (``head_dim`` 128) the layer is recorded
    in ``meta["import"]["rounded"]`` with the largest relative change of a scale.
    """
    ql = graph.prequantized[layer]
    want = ql.scales.to(torch.float64) * factor
    s = want.to(torch.float16)
    if not bool(torch.isfinite(s).all()) or bool(((s == 0) & (want != 0)).any()):
        raise CompileError(f"layer {layer}: the attention scale {factor:.6g} folded into its "
                           f"group scales leaves the FP16 range")
    graph.prequantized[layer] = QLinear(ql.q, s, ql.group, ql.bits,
                                        input_copies=ql.input_copies)
    change = float(((s.to(torch.float64) - want).abs() / want.abs().clamp(min=1e-30)).max())
    if change > 0 and "import" in graph.meta:
        graph.meta["import"]["rounded"][layer] = change


def finish_import(shape, params: dict, exact: dict, report: ImportReport, where) -> Graph:
    """The graph of a quantized checkpoint: float ``params`` (HF names; the file's
    dequantization), the ``exact`` layers (HF layer name -> :class:`QLinear`) and the
    report in ``meta["import"]``."""
    try:
        g = build_llama_graph(shape, params)
    except CompileError as e:
        raise CompileError(f"{where}: {e}") from None
    g.prequantized = dict(exact)
    g.meta["import"] = report.as_dict()
    return g


def rms_error(approx: torch.Tensor, ref: torch.Tensor) -> float:
    """RMS of ``approx - ref`` over the RMS of ``ref`` (0 when both are 0)."""
    d = (approx.to(torch.float64) - ref.to(torch.float64)).pow(2).mean().sqrt()
    r = ref.to(torch.float64).pow(2).mean().sqrt()
    return float(d / r) if float(r) > 0 else float(d)


def conversion_errors(graph: Graph) -> dict[str, float]:
    """Relative RMS error (:func:`rms_error`) of each converted layer of a quantized graph:
    its quantized weights against the file's dequantization."""
    converted = graph.meta.get("import", {}).get("converted", {})
    out = {}
    for layer, node in graph.linear_layers().items():
        if layer in converted and node.name in graph.qweights:
            out[layer] = rms_error(graph.qweights[node.name].dequantize(),
                                   graph.params[node.attrs["weight"]])
    return out
