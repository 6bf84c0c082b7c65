"""The named steps of an LLM's compile, and what each one made as text (``airfoil compile
MODEL --stop-after STEP``).

The steps are the graph pipeline's (:func:`compiler.passes.llm_pipeline`: ``validate``,
``fold_attention_scale``, with calibrated recipes ``calibrate``, ``awq``,
``bits_budget``, then ``quantize``) followed by the lowering's
(:func:`compiler.lower_llm.lower_pipeline`'s passes: ``plan``, ``pack``, ``schedule``,
``emit``), one pipeline over the graph (:func:`compiler.lower_llm.compile_pipeline`),
named as a single layer's steps are (:data:`compiler.linear.LINEAR_STEPS`) where they do
the same thing. Every step before ``emit`` writes nothing.
"""

from __future__ import annotations

from collections import Counter

from .asm import listing
from .ir import Graph

__all__ = ["graph_step_summary", "lowering_summary"]


def _counts(items) -> str:
    return ", ".join(f"{c} {name}" for name, c in sorted(Counter(items).items()))


def graph_step_summary(graph: Graph, step: str) -> str:
    """What graph step ``step`` made: the graph's nodes, the folded scales, the
    calibration statistics, the formats chosen or the quantized weights."""
    linears = graph.by_op("linear")
    if step == "validate":
        return (f"validate: {len(graph.nodes)} nodes ({_counts(n.op for n in graph.nodes)}), "
                f"{graph.shape.num_hidden_layers} layers")
    if step == "fold_attention_scale":
        folded = [n for n in linears if n.attrs["weight"].endswith(":scaled")]
        return (f"fold_attention_scale: the attention scale folded into {len(folded)} query "
                f"projections")
    if step == "calibrate":
        stats = graph.meta["calibration"]
        return (f"calibrate: statistics of {len(stats.inputs)} linear inputs over "
                f"{stats.tokens} tokens (computed a decoder layer at a time when asked "
                f"for)")
    if step == "awq":
        return (f"awq: activation-aware scales of "
                f"{len(graph.meta.get('awq_scaled', ()))} linear inputs")
    if step == "bits_budget":
        budget = graph.meta["budget"]
        return (f"bits_budget: {budget['reached']:.3f} bits a weight for a budget of "
                f"{budget['bits']}: " + _counts(f"{r['format']}/{r['sparsity']}"
                                               for r in budget["layers"]))
    if step == "quantize":
        labels = (f"{lq[0]} g{lq[1]}" for lq in graph.meta["recipe"].values())
        return (f"quantize: {len(graph.qweights)} linear layers ({_counts(labels)}), "
                f"{len(graph.by_op('act_quant'))} per-token activation quantizers")
    return f"{step}: {len(graph.nodes)} nodes"


def lowering_summary(made: dict, step: str) -> str:
    """What lowering step ``step`` made (``made``: :func:`compiler.lower_llm.compile_llm`'s
    result with ``stop_after``, or the manifest after ``emit``): the tiles, WGT slots and
    bounds; the image's layout; each phase's listing; the folder."""
    if step == "plan":
        tiles = made["tiles"]
        return (f"plan: {sum(len(t) for t in tiles.values())} WGT tiles of {len(tiles)} "
                f"layers, {made['wgt_slots']} WGT slots of {made['wgt_slot_bytes']} bytes, "
                f"{len(made['streamed'])} streamed layers; prefill up to "
                f"{made['max_prompt']} tokens, {made['max_positions']} KV positions")
    if step == "pack":
        lay = made["layout"]
        return (f"pack: an image of {made['image_bytes']} bytes, {len(made['linears'])} "
                f"linear layers' weights from {lay['tiles']:#x}, KV caches of "
                f"{made['max_positions']} positions")
    if step == "schedule":
        return "\n".join(listing(words, f"schedule: {phase}, {len(words)} instructions")
                         .rstrip("\n") for phase, words in made["words"].items())
    phases = ", ".join(f"{p} {v['instructions']} instructions"
                       for p, v in made["phases"].items())
    return f"emit: {made['image_bytes']} image bytes, {phases} written"
