"""Execute a graph (:mod:`compiler.ir`) on a backend, after any pipeline step.

* ``float``: torch float32 (the float reference's arithmetic; after ``quantize`` the
  weights are dequantized and activations rounded per token: fake quantization);
* ``golden``: integer semantics, linear layers through :mod:`airfoil.formats` and
  everything else through :mod:`airfoil.fixedpoint`; needs a quantized graph.

One sequence at a time: :func:`execute` runs T new tokens after the positions already in
``state`` (prefill: T tokens on a fresh state; decode: one token at a time).
"""

from __future__ import annotations


import torch

from airfoil import fixedpoint as fx
from airfoil.errors import CompileError

from .ir import Graph
from .reference import apply_rope, rms_norm, rope_tables

__all__ = ["BACKENDS", "ExecState", "execute", "logits_float"]

BACKENDS = ("float", "golden")


class ExecState:
    """The run-time state of one sequence: position and the KV caches by layer."""

    def __init__(self):
        self.position = 0
        self.caches: dict[int, object] = {}
        self.memo: dict[str, torch.Tensor] = {}


def _fake_quant(x: torch.Tensor) -> torch.Tensor:
    s = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-30) / 127.0
    return torch.clamp(torch.round(x / s), -127, 127) * s


def _float_attention(n, q, k, v, state: ExecState, T: int, quant: bool) -> torch.Tensor:
    H, KV, hd = n.attrs["heads"], n.attrs["kv_heads"], n.attrs["head_dim"]
    q = q.view(T, H, hd).transpose(0, 1)
    k = k.view(T, KV, hd).transpose(0, 1)
    v = v.view(T, KV, hd).transpose(0, 1)
    if quant:       # INT8 per (position, head) queries and KV cache, as the golden
        q, k, v = _fake_quant(q), _fake_quant(k), _fake_quant(v)
    li = n.attrs["layer"]
    if li in state.caches:
        pk, pv = state.caches[li]
        k, v = torch.cat([pk, k], dim=1), torch.cat([pv, v], dim=1)
    state.caches[li] = (k, v)
    S = k.shape[1]
    k = k.repeat_interleave(H // KV, dim=0)
    v = v.repeat_interleave(H // KV, dim=0)
    att = (q @ k.transpose(-1, -2)) * float(n.attrs["scale"])
    mask = fx.attention_mask(S - T, T, S, n.attrs.get("window", 0), n.attrs.get("causal", True))
    att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
    return (att @ v).transpose(0, 1).reshape(T, H * hd)


def _run_float(g: Graph, n, vals, state: ExecState, T: int):
    x = [vals[i] for i in n.inputs]
    op = n.op
    if op == "embedding":
        if g.qweights:      # a quantized graph: the INT8 rows the device reads, as floats
            table = g.params[n.attrs["weight"]]
            return fx.from_fixed(_quantized_embedding(g, n, state).lookup(x[0])).to(table.dtype)
        return g.params[n.attrs["weight"]][x[0]]
    if op == "rmsnorm":
        return rms_norm(x[0], g.params[n.attrs["weight"]], n.attrs["eps"])
    if op == "layernorm":
        return torch.nn.functional.layer_norm(x[0], x[0].shape[-1:],
                                              g.params[n.attrs["weight"]],
                                              g.params[n.attrs["bias"]], n.attrs["eps"])
    if op == "positions":
        return x[0] + g.params[n.attrs["weight"]][state.position:state.position + T]
    if op == "act_quant":
        return _fake_quant(x[0])
    if op == "linear":
        ql = g.qweights.get(n.name)
        w = ql.dequantize() if ql is not None else g.params[n.attrs["weight"]]
        y = x[0] @ w.t()
        return y + g.params[n.attrs["bias"]] if "bias" in n.attrs else y
    if op == "rope":
        H, hd = n.attrs["heads"], n.attrs["head_dim"]
        cos, sin = rope_tables(hd, n.attrs["theta"],
                               torch.arange(state.position, state.position + T),
                               n.attrs.get("scaling"))
        return apply_rope(x[0].view(T, H, hd).transpose(0, 1), cos, sin
                          ).transpose(0, 1).reshape(T, H * hd)
    if op == "attention":
        return _float_attention(n, *x, state, T, quant=bool(g.qweights))
    if op == "softmax":
        return x[0].softmax(dim=-1)
    if op == "silu":
        return torch.nn.functional.silu(x[0])
    if op == "gelu":
        return torch.nn.functional.gelu(x[0], approximate=n.attrs.get("approximate", "tanh"))
    if op == "relu":
        return torch.relu(x[0])
    if op == "mul":
        return x[0] * x[1]
    if op == "add":
        return x[0] + x[1]
    raise CompileError(f"float backend: unsupported op {op!r} at node {n.name}")


def _quantized_embedding(g: Graph, n, state: ExecState) -> fx.QEmbedding:
    """The embedding node's table as the device stores it (INT8 rows with a scale each,
    or the recipe's INT4 groups, ``meta["embedding_group"]``)."""
    w, group = n.attrs["weight"], g.meta.get("embedding_group", 0)
    return _memo(state, f"qemb:{group}:{w}",
                 lambda: fx.QEmbedding.from_table(fx.embedding_table(g.params[w]), group))


def _memo(state: ExecState, key: str, make):
    if key not in state.memo:
        state.memo[key] = make()
    return state.memo[key]


def _run_golden(g: Graph, n, vals, state: ExecState, T: int):
    x = [vals[i] for i in n.inputs]
    op = n.op
    if op == "embedding":
        return _quantized_embedding(g, n, state).lookup(x[0])
    if op == "rmsnorm":
        w = n.attrs["weight"]
        gam = _memo(state, "gamma:" + w, lambda: fx.rmsnorm_weight(g.params[w]))
        return fx.rmsnorm(x[0], gam, n.attrs["eps"])
    if op == "layernorm":
        w, b = n.attrs["weight"], n.attrs["bias"]
        gam = _memo(state, "gamma:" + w, lambda: fx.rmsnorm_weight(g.params[w]))
        beta = _memo(state, "bias:" + b, lambda: fx.linear_bias(g.params[b]))
        return fx.layernorm(x[0], gam, beta, n.attrs["eps"])
    if op == "positions":
        w = n.attrs["weight"]
        tab = _memo(state, "emb:" + w, lambda: fx.embedding_table(g.params[w]))
        return fx.add(x[0], tab[state.position:state.position + T])
    if op == "act_quant":
        return fx.quant_per_token(x[0])
    if op == "linear":
        ql = g.qweights.get(n.name)
        if ql is None or not isinstance(x[0], tuple):
            raise CompileError(f"golden backend: linear {n.name} is not quantized "
                               f"(run the quantize step first)")
        y = fx.linear(ql, *x[0])
        if "bias" in n.attrs:
            b = n.attrs["bias"]
            y = fx.add(y, _memo(state, "bias:" + b, lambda: fx.linear_bias(g.params[b])))
        return y
    if op == "rope":
        H, hd = n.attrs["heads"], n.attrs["head_dim"]
        end = state.position + T
        key = f"rope:{hd}:{n.attrs['theta']}:{n.attrs.get('scaling')}"
        tab = state.memo.get(key)
        if tab is None or tab[0].shape[0] < end:
            tab = fx.rope_table(hd, n.attrs["theta"], max(end, g.shape.max_position_embeddings),
                                n.attrs.get("scaling"))
            state.memo[key] = tab
        cos, sin = tab[0][state.position:end], tab[1][state.position:end]
        return fx.rope(x[0].view(T, H, hd).transpose(0, 1), cos, sin
                       ).transpose(0, 1).reshape(T, H * hd)
    if op == "attention":
        if float(n.attrs["scale"]) != 1.0:
            raise CompileError(f"golden backend: attention {n.name} has scale "
                               f"{n.attrs['scale']:g} (run fold_attention_scale first)")
        li = n.attrs["layer"]
        cache = state.caches.setdefault(li, fx.KVCacheInt(n.attrs["kv_heads"],
                                                          n.attrs["head_dim"]))
        return fx.attention(*x, cache, n.attrs["heads"], n.attrs["kv_heads"],
                            n.attrs["head_dim"], n.attrs.get("window", 0),
                            n.attrs.get("causal", True))
    if op == "softmax":
        return fx.softmax(x[0])
    if op == "silu":
        return fx.silu(x[0])
    if op == "gelu":            # the tanh form, what the device runs, for either form
        return fx.gelu(x[0])
    if op == "relu":
        return fx.relu(x[0])
    if op == "mul":
        return fx.mul(x[0], x[1])
    if op == "add":
        return fx.add(x[0], x[1])
    raise CompileError(f"golden backend: unsupported op {op!r} at node {n.name}")


def execute(graph: Graph, tokens, *, backend: str = "float",
            state: ExecState | None = None, observe=None) -> torch.Tensor:
    """Run ``tokens`` (1-D) after the positions in ``state``; return the logits (T, vocab)
    (an encoder's graph: its hidden states (T, hidden)).

    ``float`` returns float32 logits; ``golden`` returns ACT integers (Q16, int64).
    ``state`` (an :class:`ExecState`) is advanced by T positions. ``observe(name, value)``,
    when given, sees every node's output as it is computed (calibration statistics).
    """
    if backend not in BACKENDS:
        raise CompileError(f"unknown backend {backend!r} (accepted: {', '.join(BACKENDS)})")
    tokens = torch.as_tensor(tokens, dtype=torch.int64).reshape(-1)
    state = state if state is not None else ExecState()
    T = tokens.shape[0]
    s = graph.shape
    if T == 0:
        raise CompileError("no tokens to run")
    if int(tokens.min()) < 0 or int(tokens.max()) >= s.vocab_size:
        raise CompileError(f"token id outside the vocabulary 0..{s.vocab_size - 1}")
    if state.position + T > s.max_position_embeddings:
        raise CompileError(f"{state.position + T} positions exceed "
                           f"max_position_embeddings={s.max_position_embeddings}")
    run = _run_float if backend == "float" else _run_golden
    vals = {Graph.INPUT: tokens}
    with torch.no_grad():
        for n in graph.nodes:
            vals[n.name] = run(graph, n, vals, state, T)
            if observe is not None:
                observe(n.name, vals[n.name])
    state.position += T
    return vals[graph.output]


def logits_float(logits: torch.Tensor) -> torch.Tensor:
    """Logits of either backend as float64 (golden ACT integers are Q16)."""
    if logits.dtype == torch.int64:
        return fx.from_fixed(logits)
    return logits.to(torch.float64)


