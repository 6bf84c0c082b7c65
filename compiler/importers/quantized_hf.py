"""HF folders whose ``config.json`` has a ``quantization_config`` (GPTQ, AWQ).

Every linear layer stored quantized (its ``qweight`` and companions) is read by the
format's layout (:mod:`.gptq`, :mod:`.awq`) and given exactly or converted
(:mod:`.prequant`); a layer the checkpoint keeps in float (often ``lm_head``) is quantized
by the recipe. An act-order down projection has its inputs put in group order, the gate and
up projections' rows following (:func:`_mlp_input_orders`); the other act-order layers are
regrouped (:func:`~.gptq.regroup`). A ``quantization_config`` whose method is not imported is refused, and so
is one that names a method while no layer is stored quantized.
"""

from __future__ import annotations

import torch

from airfoil.errors import CompileError

from ..ir import Graph, llama_param_shapes
from .hf import float_weight
from .prequant import ImportReport, finish_import, permute_rows

__all__ = ["QUANT_METHODS", "quant_layout", "import_quantized_hf"]

#: ``quant_method`` values of ``quantization_config`` that are imported.
QUANT_METHODS = ("gptq", "awq")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def quant_layout(qc, p):
    """The layout reader of a ``quantization_config`` (one-line error if not imported)."""
    if not isinstance(qc, dict):
        raise CompileError(f"{p}: quantization_config must be an object, not {qc!r}")
    method = qc.get("quant_method")
    if method == "gptq":
        from .gptq import parse_gptq_config
        return parse_gptq_config(qc, p)
    if method == "awq":
        from .awq import parse_awq_config
        return parse_awq_config(qc, p)
    raise CompileError(f"{p}: quantization_config quant_method {method!r} is not imported "
                       f"(accepted: {', '.join(QUANT_METHODS)})")


def _mlp_input_orders(layout, shape, tensors, path) -> dict:
    """Per layer prefix, the ``(inputs, rows)`` reorderings that put each act-order down
    projection's inputs in group order: its columns, and the rows of the gate and up
    projections that produce them (``silu(gate) * up`` is elementwise)."""
    out = {}
    if not hasattr(layout, "grouping_order"):
        return out
    for i in range(shape.num_hidden_layers):
        p = f"model.layers.{i}.mlp."
        order = layout.grouping_order(p + "down_proj", tensors, shape.intermediate_size, path)
        if order is not None:
            out[p + "down_proj"] = (order, None)
            out[p + "gate_proj"] = out[p + "up_proj"] = (None, order)
    return out


def import_quantized_hf(path, shape, qc, tensors: dict) -> Graph:
    """The graph of an HF folder of LLaMA ``shape`` with ``quantization_config`` ``qc``."""
    layout = quant_layout(qc, f"{path}/config.json")
    report = ImportReport(layout.method)
    params, exact, used = {}, {}, set()
    reorder = _mlp_input_orders(layout, shape, tensors, path)
    for name, shp in llama_param_shapes(shape).items():
        prefix = name.removesuffix(".weight")
        inputs, rows = reorder.get(prefix, (None, None))
        stored_quantized = prefix + ".qweight" in tensors
        if stored_quantized and name != "model.embed_tokens.weight":
            n, k = shp
            kw = {} if inputs is None else {"inputs": inputs}
            w, ql, why = layout.layer(prefix, tensors, n, k, path, **kw)
            used.update(prefix + s for s in layout.suffixes)
            if ql is not None:
                exact[prefix] = ql if rows is None else permute_rows(ql, rows)
                report.exact[prefix] = f"int{ql.bits}"
            else:
                report.converted[prefix] = why
        elif name in tensors:
            w = float_weight(tensors[name], name, path)
            used.add(name)
            if inputs is not None:
                w = w[:, inputs]
        else:
            continue
        params[name] = w if rows is None else w[rows]
        how = []
        if inputs is not None:
            how.append("inputs in g_idx order (act-order)")
        if rows is not None:
            how.append("outputs in the down projection's g_idx order")
        if prefix in exact and exact[prefix].input_copies > 1:
            how.append(f"inputs regrouped, read {exact[prefix].input_copies} times "
                       f"(act-order)")
        if how:
            report.reordered[prefix] = "; ".join(how)
    if not exact and not report.converted:
        raise CompileError(f"{path}: config.json quantization_config names "
                           f"{layout.method} but no layer is stored quantized (no "
                           f"*.qweight tensor)")
    for name, t in tensors.items():
        if name in used or name.endswith(_IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and shape.tie_word_embeddings:
            continue
        if name.endswith(".bias") and not bool(t.any()):
            continue                    # GPTQ packers store all-zero biases of bias-free layers
        raise CompileError(f"{path}: unexpected tensor {name} (shape {list(t.shape)}) for "
                           f"{shape.num_hidden_layers}-layer {layout.method} "
                           f"LlamaForCausalLM")
    return finish_import(shape, params, exact, report, path)
