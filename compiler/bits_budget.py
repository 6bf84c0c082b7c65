"""Per-layer weight formats under a bits budget (``airfoil compile --bits-budget B``).

The budget is an average of ``B`` bits per weight over the decoder's linear layers (every
``model.layers.N.*`` projection; the LM head and the embedding are not counted and keep
the recipe's format, nor are layers a quantized checkpoint gave): :func:`layer_weight_bits`
of every layer summed, over the layers' weight count. A layer's bits are what its weights
take in the image: the packed values (of the kept weights only under N:M, each at the
``code_bits`` of the format its record took, :func:`quantized_code_bits`: a ``mixed``
layer counts the widths its records chose, not its widest), the N:M index metadata
(``log2(m)`` bits per kept weight), one FP16 scale per group of each row and, for a
streamed layer, each record's fixed header (word padding is not counted).

Each layer's sensitivity to each candidate ``(format, sparsity)`` is measured, not
modelled: the layer alone is quantized by its recipe method and the float graph runs
:data:`SENSITIVITY_WINDOWS` windows of the calibration text; the loss is the mean
Kullback-Leibler divergence of its next-token distribution from the float model's.
Assuming the losses add over layers, a greedy knapsack starts every layer at its
cheapest candidate and repeatedly applies the upgrade (one layer to a costlier
candidate) of the most loss removed per bit added that stays within the budget.

The weights a calibrated candidate (a method reading the calibration statistics) was
quantized to are kept until the choice, and the chosen ones handed to ``quantize``
(``meta["budget_quantized"]``), so the calibration statistics, freed a decoder layer at a
time, are computed once: the memory of those candidates' quantized weights for that of
recomputing every linear input's Gram matrix.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from airfoil.errors import CompileError

from .ir import Graph, Pass
from airfoil.fixedpoint import QLinear
from airfoil.packing import HEADER_FIXED_BITS, MIXED_PRESETS, format_spec

from .llm_recipe import LayerQuant, nm_of
from .passes import DEFAULT_RECORD_ROWS, quantize_node, release_done

__all__ = ["SENSITIVITY_WINDOWS", "DEFAULT_CANDIDATES", "layer_weight_bits",
           "quantized_code_bits", "candidate", "candidate_name", "decoder_layers",
           "budget_bits", "choose", "ChooseFormats"]

#: Calibration windows the sensitivity of a layer is measured on.
SENSITIVITY_WINDOWS = 2
#: Candidates ``(format, sparsity, mixed_max_error)`` when the recipe lists none: the
#: formats whole models compile to.
DEFAULT_CANDIDATES = (("int4", "dense", None), ("int8", "dense", None))


def layer_weight_bits(lq: LayerQuant, n: int, k: int, rows: int = DEFAULT_RECORD_ROWS,
                      code_bits: torch.Tensor | None = None) -> int:
    """Bits an ``n x k`` layer's weights take (``k`` padded to whole groups): values, N:M
    indices, FP16 scales and, for a streamed layer, the fixed header of each record of
    ``rows`` rows x one group (:data:`airfoil.packing.HEADER_FIXED_BITS`).

    ``code_bits`` (n, groups) gives the width of each row's group, the formats its
    records took (:func:`quantized_code_bits`); without it every value counts at the
    widest of the layer's formats (the most a per-group choice may take).
    """
    group, groups = lq.group, -(-k // lq.group)
    nm = nm_of(lq.sparsity)
    headers = -(-n // rows) * groups * HEADER_FIXED_BITS if lq.streamed else 0
    kept_per_group = group if nm is None else group // nm[1] * nm[0]
    kept = n * groups * kept_per_group
    index = 0 if nm is None else kept * int(math.log2(nm[1]))
    value_bits = (kept * lq.bits if code_bits is None
                  else int(code_bits.sum()) * kept_per_group)
    return -(-value_bits // 8) * 8 + -(-index // 8) * 8 + n * groups * 16 + headers


def quantized_code_bits(ql: QLinear) -> torch.Tensor:
    """(rows, groups) code bits of each row's group of a quantized layer: of the format
    its record took when streamed, else the layer's width (WGT tiles)."""
    if ql.formats is None:
        return torch.full(tuple(ql.scales.shape), ql.bits, dtype=torch.int64)
    tags = ql.formats.to(torch.int64)
    width = {int(t): format_spec(int(t)).code_bits for t in torch.unique(tags)}
    out = torch.empty_like(tags)
    for t, b in width.items():
        out[tags == t] = b
    return out


def candidate(lq: LayerQuant, fmt, sparsity: str, mixed_max_error=None) -> LayerQuant:
    """``lq`` in candidate format ``fmt`` (a BitMoD preset, or a tuple of formats of a
    ``mixed`` candidate: a per-group choice, by round to nearest) and ``sparsity``, its
    group and method kept, and its ``mixed_max_error`` unless the candidate gives one."""
    formats = fmt if isinstance(fmt, tuple) else tuple(MIXED_PRESETS.get(fmt, (fmt,)))
    method = lq.method if len(formats) == 1 and fmt != "ovp" else "rtn"
    bound = lq.mixed_max_error if mixed_max_error is None else mixed_max_error
    return replace(lq, formats=formats, sparsity=sparsity, density=1.0, method=method,
                   mixed_max_error=bound)


def candidate_name(fmt) -> str:
    """The name of a candidate's format: ``int4``, ``bitmod3``, ``mixed(int2,int4,int8)``."""
    return fmt if isinstance(fmt, str) else f"mixed({','.join(fmt)})"


def decoder_layers(graph: Graph) -> dict:
    """The linear layers a budget chooses for (name -> node): all but the LM head and the
    layers a quantized checkpoint gave (taken as given)."""
    return {name: n for name, n in graph.linear_layers().items()
            if name != "lm_head" and name not in graph.prequantized}


def budget_bits(graph: Graph, plan: dict, rows: int = DEFAULT_RECORD_ROWS) -> float:
    """Average bits per weight of the decoder layers under ``plan`` (name -> LayerQuant),
    streamed layers in records of ``rows`` rows; of a quantized graph at the formats its
    records took (:func:`quantized_code_bits`)."""
    total = weights = 0
    for name, node in decoder_layers(graph).items():
        n, k = graph.params[node.attrs["weight"]].shape
        ql = graph.qweights.get(node.name)
        total += layer_weight_bits(plan[name], n, k, rows,
                                   None if ql is None else quantized_code_bits(ql))
        weights += n * k
    return total / weights


def _kl(ref_logp: torch.Tensor, logits: torch.Tensor) -> float:
    lp = torch.log_softmax(logits.to(torch.float64), -1)
    return float((ref_logp.exp() * (ref_logp - lp)).sum(-1).mean())


def _sensitivity(graph: Graph, node, qlinear, windows, refs) -> float:
    """Mean KL of the float graph with only ``node``'s weights fake-quantized."""
    from .backends import execute
    g = graph.copy()
    name = node.attrs["weight"] + ":budget"
    g.params[name] = qlinear.dequantize()
    g.node(node.name).attrs["weight"] = name
    return sum(_kl(r, execute(g, w)) for w, r in zip(windows, refs)) / len(windows)


def choose(costs: dict, losses: dict, budget: float) -> dict:
    """Greedy knapsack: ``costs[layer][c]`` bits and ``losses[layer][c]`` of candidate
    ``c``; return layer -> candidate whose summed cost is within ``budget`` bits.

    Raise :class:`CompileError` when even the cheapest candidates exceed it.
    """
    pick = {L: min(c, key=lambda x: (c[x], losses[L][x])) for L, c in costs.items()}
    spent = sum(costs[L][pick[L]] for L in pick)
    if spent > budget:
        raise CompileError(f"the cheapest candidates take {spent} bits, over the budget "
                           f"of {budget:.0f}")
    while True:
        best = None
        for L, c in costs.items():
            cur = pick[L]
            for x in c:
                dc, dl = c[x] - c[cur], losses[L][cur] - losses[L][x]
                if dc <= 0 or dl <= 0 or spent + dc > budget:
                    continue
                if best is None or dl / dc > best[0]:
                    best = (dl / dc, L, x, dc)
        if best is None:
            return pick
        _, L, x, dc = best
        pick[L] = x
        spent += dc


class ChosenWeights(dict):
    """Layer name -> the quantized weights of its chosen calibrated candidate: shared, not
    copied, between graph copies (like the graph's parameters)."""

    def __deepcopy__(self, memo):
        return self


class ChooseFormats(Pass):
    """Choose each decoder layer's format and sparsity under a bits budget; set
    ``meta["plan"]`` (layer -> LayerQuant) and ``meta["budget_quantized"]`` (layer -> the
    chosen calibrated candidate's weights) for ``quantize``, and ``meta["budget"]`` (the
    budget, the bits reached and the per-layer choice with its bits and loss).

    Parameters
    ----------
    recipe : compiler.llm_recipe.LlmRecipe
        Its rules give every layer's group and method (and the LM head's format); its
        ``budget`` the candidates and, unless ``bits`` is given, the bits.
    bits : float, optional
    log : callable, optional
        Called with one line per layer (the choice) and a total line.
    """

    name = "bits_budget"

    def __init__(self, recipe, bits=None, *, config=None, log=None):
        from .passes import StreamShape
        b = recipe.budget or {}
        self.recipe, self.log = recipe, log
        self.shape = StreamShape.of(config)
        self.bits = bits if bits is not None else b.get("bits")
        if self.bits is None:
            raise CompileError(f"{recipe.source}: budget has no bits (give --bits-budget B)")
        if isinstance(self.bits, bool) or not 0 < float(self.bits) <= 16:
            raise CompileError(f"bits budget must be a number in (0, 16], not {self.bits!r}")
        self.bits = float(self.bits)
        self.candidates = tuple(b.get("candidates") or DEFAULT_CANDIDATES)

    def apply(self, graph: Graph) -> Graph:
        from .backends import execute
        g = graph.copy()
        stats = g.meta.get("calibration")
        if stats is None:
            raise CompileError("bits_budget needs the calibrate step first")
        plan = self.recipe.resolve(g.linear_layers())
        windows = stats.windows[:SENSITIVITY_WINDOWS]
        refs = [torch.log_softmax(execute(g, w).to(torch.float64), -1) for w in windows]
        layers = decoder_layers(g)
        costs, losses, calibrated, weights = {}, {}, {}, 0
        for name, node in layers.items():
            n, k = g.params[node.attrs["weight"]].shape
            weights += n * k
            costs[name], losses[name], calibrated[name] = {}, {}, {}
            for c in self.candidates:
                lq = candidate(plan[name], *c)
                nm = lq.nm
                if nm and k % nm[1]:
                    continue
                ql = quantize_node(g, node, lq, self.shape)
                costs[name][c] = layer_weight_bits(lq, n, k, self.shape.rows,
                                                   quantized_code_bits(ql))
                losses[name][c] = _sensitivity(g, node, ql, windows, refs)
                if lq.method != "rtn":
                    calibrated[name][c] = ql
            release_done(g, node)
            if not costs[name]:
                raise CompileError(f"no budget candidate fits layer {name} (k={k})")
        pick = choose(costs, losses, self.bits * weights)
        new = dict(plan)
        rows = []
        for name, c in pick.items():
            new[name] = candidate(plan[name], *c)
            rows.append({"layer": name, "format": candidate_name(c[0]), "sparsity": c[1],
                         "bits": costs[name][c], "kl": losses[name][c]})
        reached = sum(r["bits"] for r in rows) / weights
        g.meta["budget_quantized"] = ChosenWeights(
            (name, calibrated[name][c]) for name, c in pick.items() if c in calibrated[name])
        g.meta["plan"] = new
        g.meta["budget"] = {"bits": self.bits, "reached": reached, "layers": rows}
        if self.log is not None:
            for r in rows:
                n, k = g.params[layers[r["layer"]].attrs["weight"]].shape
                self.log(f"{r['layer']:<36} {r['format']:<9} {r['sparsity']:<6} "
                         f"{r['bits'] / (n * k):6.3f} bits/weight  KL {r['kl']:.2e}")
            self.log(f"bits budget {self.bits:g}: {reached:.3f} bits/weight over "
                     f"{weights} decoder weights")
        return g
