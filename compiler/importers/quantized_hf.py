"""HF folders whose ``config.json`` has a ``quantization_config`` (GPTQ, AWQ).

Every linear layer stored quantized (its ``qweight`` and companions) is read by the
format's layout (:mod:`.gptq`, :mod:`.awq`) and given exactly or converted
(:mod:`.prequant`); a layer the checkpoint keeps in float (often ``lm_head``) is quantized
by the recipe. A ``quantization_config`` whose method is not imported is refused, and so
is one that names a method while no layer is stored quantized.
"""

from __future__ import annotations

import torch

from airfoil.errors import CompileError

from ..ir import Graph, llama_param_shapes
from .prequant import ImportReport, finish_import

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


def _float_tensor(tensors, name, where) -> torch.Tensor:
    t = tensors[name]
    if not t.is_floating_point():
        raise CompileError(f"{where}: tensor {name} has dtype {t.dtype}, expected a float "
                           f"type")
    if not bool(torch.isfinite(t).all()):
        raise CompileError(f"{where}: tensor {name} holds NaN or infinite values (accepted: "
                           f"finite weights)")
    return t


def import_quantized_hf(path, shape, qc, tensors: dict) -> Graph:
    """The graph of an HF folder of LLaMA ``shape`` with ``quantization_config`` ``qc``."""
    layout = quant_layout(qc, f"{path}/config.json")
    report = ImportReport(layout.method)
    params, exact, used = {}, {}, set()
    for name, shp in llama_param_shapes(shape).items():
        prefix = name.removesuffix(".weight")
        stored_quantized = prefix + ".qweight" in tensors
        if stored_quantized and name != "model.embed_tokens.weight":
            n, k = shp
            w, ql, why = layout.layer(prefix, tensors, n, k, path)
            used.update(prefix + s for s in layout.suffixes)
            params[name] = w
            if ql is not None:
                exact[prefix] = ql
                report.exact[prefix] = f"int{ql.bits}"
            else:
                report.converted[prefix] = why
        elif name in tensors:
            params[name] = _float_tensor(tensors, name, path)
            used.add(name)
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
