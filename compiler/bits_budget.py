"""Per-layer weight formats under a bits budget (``airfoil compile --bits-budget B``).

The budget is an average of ``B`` bits per weight over the decoder's linear layers (every
``model.layers.N.*`` projection; the LM head and the embedding are not counted and keep
the recipe's format, nor are layers a quantized checkpoint gave): :func:`layer_weight_bits`
of every layer summed, over the layers' weight count. A layer's bits are what its weights
take in the image: the packed values (``code_bits`` each, of the kept weights only under
N:M), the N:M index metadata (``log2(m)`` bits per kept weight), one FP16 scale per group
of each row and, for a streamed layer, each record's fixed header (word padding is not
counted).

Each layer's sensitivity to each candidate ``(format, sparsity)`` is measured, not
modelled: the layer alone is quantized by its recipe method and the float graph runs
:data:`SENSITIVITY_WINDOWS` windows of the calibration text; the loss is the mean
Kullback-Leibler divergence of its next-token distribution from the float model's.
Assuming the losses add over layers, a greedy knapsack starts every layer at its
cheapest candidate and repeatedly applies the upgrade (one layer to a costlier
candidate) of the most loss removed per bit added that stays within the budget.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from airfoil.errors import CompileError

from .ir import Graph, Pass
from airfoil.packing import HEADER_FIXED_BITS, MIXED_PRESETS

from .llm_recipe import LayerQuant, nm_of
from .passes import DEFAULT_RECORD_ROWS, quantize_node, release_done

__all__ = ["SENSITIVITY_WINDOWS", "DEFAULT_CANDIDATES", "layer_weight_bits", "candidate",
           "decoder_layers", "budget_bits", "choose", "ChooseFormats"]

#: Calibration windows the sensitivity of a layer is measured on.
SENSITIVITY_WINDOWS = 2
#: Candidates when the recipe lists none: the formats whole models compile to.
DEFAULT_CANDIDATES = (("int4", "dense"), ("int8", "dense"))


def layer_weight_bits(lq: LayerQuant, n: int, k: int, rows: int = DEFAULT_RECORD_ROWS
                      ) -> int:
    """Bits an ``n x k`` layer's weights take: values (at the widest code of its formats),
    N:M indices, FP16 scales and, for a streamed layer, the fixed header of each record of
    ``rows`` rows x one group (:data:`airfoil.packing.HEADER_FIXED_BITS`)."""
    bits, group = lq.bits, lq.group
    nm = nm_of(lq.sparsity)
    headers = -(-n // rows) * -(-k // group) * HEADER_FIXED_BITS if lq.streamed else 0
    kept = n * k if nm is None else n * k // nm[1] * nm[0]
    index = 0 if nm is None else kept * int(math.log2(nm[1]))
    values = -(-kept * bits // 8) * 8
    return values + -(-index // 8) * 8 + n * -(-k // group) * 16 + headers


def candidate(lq: LayerQuant, fmt: str, sparsity: str) -> LayerQuant:
    """``lq`` in candidate format ``fmt`` (a BitMoD preset: its per-group choice, by round to
    nearest) and ``sparsity``, its group and method kept."""
    formats = tuple(MIXED_PRESETS.get(fmt, (fmt,)))
    method = lq.method if len(formats) == 1 and fmt != "ovp" else "rtn"
    return replace(lq, formats=formats, sparsity=sparsity, density=1.0, method=method)


def decoder_layers(graph: Graph) -> dict:
    """The linear layers a budget chooses for (name -> node): all but the LM head and the
    layers a quantized checkpoint gave (taken as given)."""
    return {name: n for name, n in graph.linear_layers().items()
            if name != "lm_head" and name not in graph.prequantized}


def budget_bits(graph: Graph, plan: dict, rows: int = DEFAULT_RECORD_ROWS) -> float:
    """Average bits per weight of the decoder layers under ``plan`` (name -> LayerQuant),
    streamed layers in records of ``rows`` rows."""
    total = weights = 0
    for name, node in decoder_layers(graph).items():
        n, k = graph.params[node.attrs["weight"]].shape
        total += layer_weight_bits(plan[name], n, k, rows)
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


class ChooseFormats(Pass):
    """Choose each decoder layer's format and sparsity under a bits budget; set
    ``meta["plan"]`` (layer -> LayerQuant) for ``quantize`` and ``meta["budget"]`` (the
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
        costs, losses, weights = {}, {}, 0
        for name, node in layers.items():
            n, k = g.params[node.attrs["weight"]].shape
            weights += n * k
            costs[name], losses[name] = {}, {}
            for fmt, sp in self.candidates:
                lq = candidate(plan[name], fmt, sp)
                nm = lq.nm
                if nm and k % nm[1]:
                    continue
                ql = quantize_node(g, node, lq, self.shape)
                costs[name][(fmt, sp)] = layer_weight_bits(lq, n, k, self.shape.rows)
                losses[name][(fmt, sp)] = _sensitivity(g, node, ql, windows, refs)
            release_done(g, node)
            if not costs[name]:
                raise CompileError(f"no budget candidate fits layer {name} (k={k})")
        pick = choose(costs, losses, self.bits * weights)
        new = dict(plan)
        rows = []
        for name, (fmt, sp) in pick.items():
            new[name] = candidate(plan[name], fmt, sp)
            rows.append({"layer": name, "format": fmt, "sparsity": sp,
                         "bits": costs[name][(fmt, sp)], "kl": losses[name][(fmt, sp)]})
        reached = budget_bits(g, new, self.shape.rows)
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
