"""Graph passes for decoder LLMs (each ``apply(graph) -> graph``, see :mod:`compiler.ir`).

The default pipeline (:func:`llm_pipeline`):

1. ``validate`` -- ops, arity, definitions, parameters;
2. ``fold_attention_scale`` -- multiply the query projection by ``1/sqrt(head_dim)`` (RoPE
   is linear, so the product commutes) and set the attention scale to 1: the integer
   attention then needs no extra multiply;
3. ``quantize`` -- quantize every linear layer's weights per the recipe
   (:func:`quantize_linear`: prune per the layer's sparsity, quantize through the format
   registry's quantizers, a format per group for a per-group choice; a layer a quantized
   checkpoint gave exactly, ``graph.prequantized``, is taken as given; a calibrated
   method of the recipe through :func:`quantize_node`), and insert ``act_quant`` (INT8
   per token) in front of the linear layers, one per distinct input.

A recipe with a calibrated method or a bits budget runs ``calibrate``
(:mod:`compiler.calibrate`), ``awq`` when a rule names it, and ``bits_budget``
(:mod:`compiler.bits_budget`, which sets ``meta["plan"]``) before ``quantize``.

After ``quantize`` the ``float`` backend runs the fake-quantized model (dequantized
weights, per-token activation rounding) and the ``golden`` backend the integer one.
"""

from __future__ import annotations

import numpy as np
import torch

from airfoil.embedding import DEFAULT_SENTENCE
from airfoil.errors import CompileError
from airfoil.fixedpoint import QLinear
from airfoil.formats import quantize_weights
from airfoil.packing import NM_BY_NAME, NM_PATTERNS, quantize_stream
from airfoil.sparsity import prune_blocks, prune_nm

from .ir import Graph, Node, Pass, Pipeline, linear_name
from .importers.prequant import (ZERO_POINT_FORMAT, fold_scale, positive_scales,
                                 zero_point_stream)
from .llm_recipe import LayerQuant, LlmRecipe, load_llm_recipe

__all__ = ["Validate", "FoldAttentionScale", "Quantize", "llm_pipeline", "weight_bytes",
           "quantized_model", "quantize_linear", "quantize_node", "release_done", "StreamShape",
           "recipe_entry",
           "QUANTIZERS"]

#: Rows of a stream record and weights of a k-step when no config is given: those of
#: the 4-chain, 8-lane engines with one memory channel (``sim_llm_decode``).
DEFAULT_RECORD_ROWS, DEFAULT_LANES = 4, 8


class Validate(Pass):
    """Check the graph (see :meth:`Graph.validate`); return a copy."""

    name = "validate"

    def apply(self, graph: Graph) -> Graph:
        return graph.copy().validate()


class FoldAttentionScale(Pass):
    """Fold each attention's ``scale`` into the query projection weights."""

    name = "fold_attention_scale"

    def apply(self, graph: Graph) -> Graph:
        if graph.qweights:
            raise CompileError("fold_attention_scale must run before quantize")
        g = graph.copy()
        for att in g.by_op("attention"):
            scale = float(att.attrs["scale"])
            if scale == 1.0:
                continue
            rope = g.node(att.inputs[0])
            lin = g.node(rope.inputs[0]) if rope.op == "rope" else rope
            if lin.op != "linear":
                raise CompileError(f"attention {att.name}: query is not a linear layer's "
                                   f"output, cannot fold the scale")
            if lin.attrs["layer"] in g.prequantized:     # a quantized checkpoint's scales
                fold_scale(g, lin.attrs["layer"], scale)
            for key in ("weight", "bias"):
                if key in lin.attrs:
                    w = lin.attrs[key]
                    g.params[w + ":scaled"] = g.params[w] * scale
                    lin.attrs[key] = w + ":scaled"
            att.attrs["scale"] = 1.0
        g.meta["attention_scale_folded"] = True
        return g.validate()


class StreamShape:
    """What a per-group choice and block pruning depend on in the target: ``rows`` of a
    stream record (one format and one step mask per ``rows x group`` weights, the chains
    of a decode-unit slice) and ``lanes`` (weights of a k-step)."""

    def __init__(self, rows: int = DEFAULT_RECORD_ROWS, lanes: int = DEFAULT_LANES):
        self.rows, self.lanes = int(rows), int(lanes)

    @classmethod
    def of(cls, config) -> "StreamShape":
        """The shape of ``config``'s streams (the defaults for None)."""
        return cls() if config is None else cls(config.slice_chains, config.lanes)


def _prune(w: torch.Tensor, lq: LayerQuant, shape: StreamShape) -> torch.Tensor:
    """Magnitude pruning of float64 weights to the layer's sparsity."""
    if lq.sparsity == "block":
        return prune_blocks(w, rows=shape.rows, lanes=shape.lanes, group=lq.group,
                            density=lq.density)
    if lq.sparsity != "dense":
        return prune_nm(w, *NM_PATTERNS[NM_BY_NAME[lq.sparsity]])
    return w


def quantize_rtn(weight: torch.Tensor, lq: LayerQuant, shape: StreamShape,
                 streamed: bool) -> QLinear:
    """Round-to-nearest quantization of one layer (the default method).

    ``weight`` (rows, k) float, k already padded to a whole group. WGT tiles
    (``streamed`` false) use :func:`airfoil.formats.quantize_weights`; streamed weights
    are pruned (magnitude, :func:`_prune`) and quantized by :func:`airfoil.packing.
    quantize_stream`, which picks each record's format (:func:`~airfoil.packing.
    mixed_choice`, within the layer's ``mixed_max_error``) and each row's FP16 scale
    through the registry's formats.
    """
    if not streamed:
        q, s = quantize_weights(weight, lq.bits, lq.group)
        return QLinear(q, s, lq.group, lq.bits)
    w = weight.detach().to(torch.float64)
    kept = _prune(w, lq, shape) != 0 if lq.sparsity != "dense" else None
    q, s16, tags = quantize_stream(w, group=lq.group, rows=shape.rows, formats=lq.formats,
                                   sparsity=lq.sparsity, lanes=shape.lanes,
                                   block_density=lq.density,
                                   mixed_max_error=lq.mixed_max_error)
    per_row = torch.from_numpy(np.repeat(np.asarray(tags, dtype=np.int64), shape.rows,
                                         axis=0)[:w.shape[0]].copy())
    return QLinear(q, s16, lq.group, lq.bits, formats=per_row, mask=kept,
                   sparsity=lq.sparsity)


#: Quantization methods by name:
#: ``method(weight, layer_quant, stream_shape, streamed) -> QLinear``.
QUANTIZERS = {"rtn": quantize_rtn}


def quantize_linear(weight: torch.Tensor, lq: LayerQuant, shape: StreamShape | None = None,
                    method: str = "rtn", streamed: bool | None = None) -> QLinear:
    """Quantize one linear layer's float weights per its :class:`LayerQuant`.

    The one place float weights become a :class:`~airfoil.fixedpoint.QLinear` (for the
    LLM compiler and :func:`compiler.linear.compile_linear` alike): ``k`` is padded with
    zero columns to a whole group (``in_features`` keeps the width), then
    ``QUANTIZERS[method]`` quantizes. ``streamed`` (default :attr:`LayerQuant.streamed`)
    asks for stream records even of a dense tile format.
    """
    if method not in QUANTIZERS:
        raise CompileError(f"quantization method {method!r} is not known (accepted: "
                           f"{', '.join(QUANTIZERS)})")
    shape = shape or StreamShape()
    rows, k = weight.shape
    kp = -(-k // lq.group) * lq.group
    w = torch.nn.functional.pad(weight, (0, kp - k)) if kp != k else weight
    ql = QUANTIZERS[method](w, lq, shape, lq.streamed if streamed is None else streamed)
    ql.in_features = k
    return ql


def recipe_entry(lq: LayerQuant) -> tuple:
    """A layer's entry in ``meta["recipe"]`` (and the manifest's ``model.recipe``):
    ``(label, group)``, and for a choice across widths ``(label, group,
    mixed_max_error)``."""
    if len(lq.widths) > 1:
        return lq.label, lq.group, lq.mixed_max_error
    return lq.label, lq.group


class Quantize(Pass):
    """Quantize linear weights per an :class:`LlmRecipe`; insert activation quantizers.

    The plan is ``meta["plan"]`` when a step set it (``bits_budget``), else the recipe's;
    a layer in ``meta["budget_quantized"]`` (the weights ``bits_budget`` made of a
    calibrated layer's chosen candidate) takes them as they are, so the calibration
    statistics are computed once.

    Parameters
    ----------
    recipe : LlmRecipe or path or None
        None loads the default recipe.
    config : AccelConfig, optional
        The target: its stream records' rows and lanes (:class:`StreamShape`) decide the
        per-group choice and block pruning (default: 4 rows, 8 lanes).
    method : str
        A key of :data:`QUANTIZERS` (``rtn``).
    """

    name = "quantize"

    def __init__(self, recipe=None, config=None, method: str = "rtn"):
        self.recipe = recipe if isinstance(recipe, LlmRecipe) else load_llm_recipe(recipe)
        if self.recipe.output is not None:
            raise CompileError(f"{self.recipe.source}: output sets one linear layer's result "
                               f"format; a model's are its own (accepted for a model: "
                               f"weights, activations, kv_cache, budget, embedding)")
        self.shape = StreamShape.of(config)
        self.config = config
        self.method = method

    def apply(self, graph: Graph) -> Graph:
        g = graph.copy()
        if g.qweights:
            raise CompileError("graph is already quantized")
        plan = dict(g.meta.get("plan") or self.recipe.resolve(g.linear_layers()))
        chosen = g.meta.pop("budget_quantized", {})
        for layer, node in g.linear_layers().items():
            if layer in g.prequantized:                 # a quantized checkpoint's, as given
                pre = g.prequantized[layer]
                if self.config is not None and not self.config.signed_tile_scales:
                    pre = positive_scales(pre, layer)   # a rescaler of magnitudes
                    if "import" in g.meta:
                        g.meta["import"]["exact"][layer] = f"int{pre.bits}"
                streamed = zero_point_stream(pre, self.config)
                if streamed is not None:                # 4-bit codes and zero points
                    pre = streamed
                    if "import" in g.meta:
                        g.meta["import"]["exact"][layer] = ZERO_POINT_FORMAT
                g.qweights[node.name] = pre
                plan[layer] = LayerQuant((ZERO_POINT_FORMAT if pre.streamed else
                                          f"int{pre.bits}",), pre.group)
                continue
            g.qweights[node.name] = chosen[layer] if layer in chosen else quantize_node(
                g, node, plan[layer], self.shape, self.method)
            release_done(g, node)
        # One act_quant per distinct linear input, placed right after its producer.
        quant_of: dict[str, str] = {}
        nodes: list[Node] = []
        inputs = {n.inputs[0] for n in g.by_op("linear")}
        for n in g.nodes:
            if n.op == "linear":
                n.inputs = (quant_of[n.inputs[0]],)
            nodes.append(n)
            if n.name in inputs:
                qn = Node(n.name + ".q", "act_quant", (n.name,), {"format": "int8_per_token"})
                quant_of[n.name] = qn.name
                nodes.append(qn)
        g.nodes = nodes
        g.meta["recipe"] = {layer: recipe_entry(lq) for layer, lq in plan.items()}
        g.meta["plan"] = dict(plan)
        g.meta.pop("calibration", None)
        g.meta["kv_cache"] = self.recipe.kv_cache
        g.meta["embedding_group"] = self.recipe.embedding_group
        return g.validate()


def quantize_node(graph: Graph, node: Node, lq: LayerQuant, shape: StreamShape | None = None,
                  method: str = "rtn") -> QLinear:
    """The quantized weights of a linear node: by the layer's recipe method when it is a
    calibrated one (:func:`compiler.quant_algorithms.quantize_layer` on the calibration
    statistics of the node's input, ``meta["calibration"]``), else by
    :func:`quantize_linear` with ``method``."""
    from .quant_algorithms import format_spec, quantize_layer
    w = graph.params[node.attrs["weight"]]
    if lq.method == "rtn":
        return quantize_linear(w, lq, shape, method)
    stats = graph.meta.get("calibration")
    H = stats.of(node.inputs[0]).to(torch.float64) if stats is not None else None
    rows, k = w.shape
    kp = -(-k // lq.group) * lq.group
    if kp != k:                      # zero columns padding k to a whole group
        w = torch.nn.functional.pad(w, (0, kp - k))
        H = None if H is None else torch.nn.functional.pad(H, (0, kp - k, 0, kp - k))
    spec = format_spec(lq.format)
    r = quantize_layer(lq.method, w, H, spec, lq.group, lq.nm)
    formats = None
    if lq.streamed:
        formats = torch.full((rows, kp // lq.group), spec.tag, dtype=torch.int64)
    return QLinear(r.values, r.scales, lq.group, lq.bits, formats=formats,
                   mask=r.keep if lq.sparsity != "dense" else None, sparsity=lq.sparsity,
                   in_features=k)


def release_done(graph: Graph, node: Node) -> None:
    """Free the calibration statistics of ``node``'s input when it is the input's last
    linear reader (:func:`compiler.calibrate.last_readers`): statistics are held a
    decoder layer at a time."""
    from .calibrate import last_readers
    stats = graph.meta.get("calibration")
    if stats is not None and node.name in last_readers(graph):
        stats.release(node.inputs[0])


def llm_pipeline(recipe=None, config=None, calibration=None, bits_budget=None,
                 log=None) -> Pipeline:
    """The default pipeline: validate, fold_attention_scale, quantize(recipe, config).

    A recipe with a calibrated method or a budget (or ``bits_budget``, which overrides the
    recipe's) needs ``calibration``, token windows (:func:`compiler.calibrate.
    calibration_tokens`): the steps ``calibrate``, ``awq`` (when a rule names it) and
    ``bits_budget`` (the per-layer choice, reported through ``log``) run before
    ``quantize``.
    """
    recipe = recipe if isinstance(recipe, LlmRecipe) else load_llm_recipe(recipe)
    steps = [("validate", Validate()), ("fold_attention_scale", FoldAttentionScale())]
    if bits_budget is not None or recipe.needs_calibration:
        from .bits_budget import ChooseFormats
        from .calibrate import ActivationAwareScale, Calibrate
        if calibration is None:
            raise CompileError(f"{recipe.source}: a calibrated method or a bits budget "
                               f"needs calibration text")
        steps.append(("calibrate", Calibrate(calibration)))
        if any(r.get("method") == "awq" for r in recipe.rules):
            steps.append(("awq", ActivationAwareScale(recipe)))
        if bits_budget is not None or recipe.budget is not None:
            steps.append(("bits_budget", ChooseFormats(recipe, bits_budget, config=config,
                                                       log=log)))
    return Pipeline(steps + [("quantize", Quantize(recipe, config))])


def weight_bytes(graph: Graph) -> dict[str, int]:
    """Bytes of dense quantized weights (values at their widest code plus FP16 scales)
    per width; the compiled image's exact figures are the manifest's ``weight_bytes``."""
    out: dict[str, int] = {}
    for ql in graph.qweights.values():
        rows, k = ql.shape
        n = (rows * k * ql.bits + 7) // 8 + ql.scales.numel() * 2
        key = f"int{ql.bits}"
        out[key] = out.get(key, 0) + n
    return out


def quantized_model(graph: Graph) -> dict:
    """Export a quantized decoder graph as the plain data ``sim.golden_llm`` runs.

    The result holds only ``airfoil`` types and tensors (the contents the output folder
    will carry): ``shape`` (HF config fields), ``embed``
    (:class:`~airfoil.fixedpoint.QEmbedding`: INT8 rows with a scale per row, or the
    recipe's INT4 rows with a scale per group), ``norm``
    (Q16 gain), ``lm_head`` (:class:`~airfoil.fixedpoint.QLinear`) and ``layers``, one dict
    per layer with ``attn_norm``, ``mlp_norm`` (Q16 gains) and QLinear ``q``, ``k``,
    ``v``, ``o``, ``gate`` (gated MLPs only), ``up``, ``down``; for the roles of
    ``shape.linear_biases`` their ACT biases ``q_bias`` ... (:func:`linear_bias`); with
    LayerNorm each norm's ACT bias beside it (``norm_bias``, ``attn_norm_bias``,
    ``mlp_norm_bias``); with learned positions their ACT table ``positions``. An encoder
    (``shape.encoder``) has no ``lm_head``: ``norm`` is its embeddings' LayerNorm, and
    ``sentence_embedding`` says how the host pools its hidden states
    (:mod:`airfoil.embedding`, from ``graph.meta``, mean pooling when absent).
    """
    from dataclasses import asdict

    from airfoil.fixedpoint import QEmbedding, embedding_table, linear_bias, rmsnorm_weight
    if not graph.qweights:
        raise CompileError("export needs a quantized graph (run the quantize step)")
    if not graph.meta.get("attention_scale_folded"):
        raise CompileError("export needs fold_attention_scale to have run")
    s = graph.shape
    by_layer = {n.attrs["layer"]: graph.qweights[n.name] for n in graph.by_op("linear")}
    bias_of = {n.attrs["layer"]: graph.params[n.attrs["bias"]] for n in graph.by_op("linear")
               if "bias" in n.attrs}
    op = "rmsnorm" if s.norm == "rms" else "layernorm"
    norms = {n.attrs["weight"]: n for n in graph.by_op(op)}
    embeds = graph.by_op("embedding")

    def norm(out, key, module):
        name = module + ".weight"
        if name not in norms:
            raise CompileError(f"export: graph has no {op} with weight {name}")
        out[key] = rmsnorm_weight(graph.params[name])
        if s.norm == "layer":
            out[key + "_bias"] = linear_bias(graph.params[norms[name].attrs["bias"]])

    def lin(name):
        if name not in by_layer:
            raise CompileError(f"export: graph has no linear layer {name}")
        return by_layer[name]

    layers = []
    for i in range(s.num_hidden_layers):
        p = f"model.layers.{i}."
        d = {}
        norm(d, "attn_norm", p + "input_layernorm")
        norm(d, "mlp_norm", p + "post_attention_layernorm")
        for r in s.roles:
            d[r] = lin(p + linear_name(r))
        for r in s.linear_biases:
            name = p + linear_name(r)
            if name not in bias_of:
                raise CompileError(f"export: linear layer {name} has no bias")
            d[r + "_bias"] = linear_bias(bias_of[name])
        layers.append(d)
    if len(embeds) != 1:
        raise CompileError(f"export: graph has {len(embeds)} embeddings, expected 1")
    emb = embeds[0].attrs["weight"]
    embed = QEmbedding.from_table(embedding_table(graph.params[emb]),
                                  graph.meta.get("embedding_group", 0))
    out = {"shape": asdict(s), "embed": embed, "layers": layers}
    if s.encoder:
        out["sentence_embedding"] = dict(graph.meta.get("sentence_embedding",
                                                        DEFAULT_SENTENCE))
    else:
        out["lm_head"] = lin("lm_head")
    norm(out, "norm", "model.norm")
    if s.positions == "learned":
        (pos,) = graph.by_op("positions")
        out["positions"] = embedding_table(graph.params[pos.attrs["weight"]])
    return out
