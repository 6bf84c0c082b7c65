"""The compiler's graph IR for decoder LLMs.

A :class:`Graph` is a topologically ordered list of :class:`Node` s over named values, the
float parameters they read (HF names), the model's shape, and what passes attach
(quantized weights). One contract for every pass (:class:`Pass`): ``apply(graph) ->
graph``, never mutating its input; a :class:`Pipeline` is a list of named steps, and
after any step ``compiler.backends.execute(graph, tokens, backend=...)`` runs the graph.

Ops (value shapes are (T, features) for T positions of one sequence):

=============  =========================  ===============================================
op             inputs                     attrs
=============  =========================  ===============================================
embedding      tokens                     weight
rmsnorm        x                          weight, eps
layernorm      x                          weight, bias, eps
positions      x                          weight (a learned table: x + table[position])
act_quant      x                          format ("int8_per_token")
linear         x                          weight (param name), layer (recipe name), bias
                                          (param name, absent without a bias)
rope           x                          heads, head_dim, theta, scaling
attention      q, k, v                    heads, kv_heads, head_dim, scale, layer (int),
                                          window (0: causal; else a sliding window),
                                          causal (absent: true; false: an encoder's
                                          bidirectional attention)
softmax        x                          (last axis)
silu           x
gelu           x                          approximate ("tanh", GPT-2's form, when absent;
                                          "none": BERT's erf form)
relu           x
mul            a, b
add            a, b                       (the residual)
=============  =========================  ===============================================

``attention`` keeps a KV cache in the execution state: a prefill call appends T
positions, a decode call one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from airfoil.errors import CompileError

from .reference import LINEAR_ROLES, LlamaShape

__all__ = ["OPS", "Node", "Graph", "Pass", "Pipeline", "build_llama_graph", "build_linear_graph",
           "llama_param_shapes", "linear_name", "linear_dims"]

#: Op name -> number of inputs.
OPS = {"embedding": 1, "rmsnorm": 1, "layernorm": 1, "positions": 1, "act_quant": 1,
       "linear": 1, "rope": 1, "attention": 3, "softmax": 1, "silu": 1, "gelu": 1, "relu": 1,
       "mul": 2, "add": 2}


@dataclass
class Node:
    """One operation; its output value is named by ``name``."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict = field(default_factory=dict)


@dataclass
class Graph:
    """A decoder graph.

    Members
    -------
    nodes : list[Node]
        In execution order.
    params : dict[str, torch.Tensor]
        Float parameters by HF name.
    shape : LlamaShape
    output : str
        The value holding the logits.
    qweights : dict
        Linear node name -> :class:`airfoil.fixedpoint.QLinear` (set by ``quantize``).
    prequantized : dict
        Recipe layer name -> :class:`airfoil.fixedpoint.QLinear` a quantized checkpoint
        gave exactly (set by its importer): ``quantize`` takes these as given.
    meta : dict
        Facts passes record (``recipe``, ``attention_scale_folded``, ...).
    """

    nodes: list[Node]
    params: dict[str, torch.Tensor]
    shape: LlamaShape
    output: str
    qweights: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    prequantized: dict = field(default_factory=dict)

    INPUT = "tokens"

    def copy(self) -> "Graph":
        """A copy whose nodes, attrs and dicts are new (tensors are shared, read-only)."""
        return Graph(nodes=[Node(n.name, n.op, tuple(n.inputs), dict(n.attrs))
                            for n in self.nodes],
                     params=dict(self.params), shape=self.shape, output=self.output,
                     qweights=dict(self.qweights), meta=copy.deepcopy(self.meta),
                     prequantized=dict(self.prequantized))

    def node(self, name: str) -> Node:
        """The node named ``name``."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise CompileError(f"graph has no node {name!r}")

    def by_op(self, op: str) -> list[Node]:
        """The nodes of one op, in order."""
        return [n for n in self.nodes if n.op == op]

    def linear_layers(self) -> dict[str, Node]:
        """Recipe layer name (``model.layers.0.self_attn.q_proj``, ``lm_head``) -> node."""
        return {n.attrs["layer"]: n for n in self.by_op("linear")}

    def validate(self) -> "Graph":
        """Check ops, arity, def-before-use, parameter names and shapes; return self."""
        seen = {self.INPUT}
        for n in self.nodes:
            if n.op not in OPS:
                raise CompileError(f"node {n.name}: unsupported op {n.op!r} "
                                   f"(accepted: {', '.join(OPS)})")
            if len(n.inputs) != OPS[n.op]:
                raise CompileError(f"node {n.name}: op {n.op} takes {OPS[n.op]} inputs, "
                                   f"not {len(n.inputs)}")
            for i in n.inputs:
                if i not in seen:
                    raise CompileError(f"node {n.name}: input {i!r} is not defined before")
            for key in ("weight", "bias"):
                w = n.attrs.get(key)
                if w is not None and w not in self.params:
                    raise CompileError(f"node {n.name}: missing parameter {w!r}")
            if n.name in seen:
                raise CompileError(f"node name {n.name!r} is defined twice")
            seen.add(n.name)
        if self.output not in seen:
            raise CompileError(f"graph output {self.output!r} is not defined")
        return self

    def summary(self) -> str:
        """One line per node (for listings and debugging)."""
        return "\n".join(f"{n.name} = {n.op}({', '.join(n.inputs)})" for n in self.nodes)


class Pass:
    """A graph transformation: ``apply(graph) -> graph`` (returns a new graph)."""

    name = "pass"

    def apply(self, graph: Graph) -> Graph:  # pragma: no cover - interface
        raise NotImplementedError


class Pipeline:
    """A list of named steps ``[(name, pass), ...]`` run in order.

    Parameters
    ----------
    steps : list of (str, Pass)
    """

    def __init__(self, steps):
        self.steps = []
        for item in steps:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                    and hasattr(item[1], "apply")):
                raise TypeError(f"pipeline step must be (name, pass), not {item!r}")
            self.steps.append(item)

    @property
    def names(self) -> list[str]:
        """The step names in order."""
        return [n for n, _ in self.steps]

    def run(self, graph: Graph, *, until: str | None = None, after_step=None) -> Graph:
        """Apply the steps (up to and including ``until``); call ``after_step(name, g)``."""
        if until is not None and until not in self.names:
            raise CompileError(f"pipeline has no step {until!r} (steps: "
                               f"{', '.join(self.names)})")
        for name, p in self.steps:
            graph = p.apply(graph)
            if after_step is not None:
                after_step(name, graph)
            if name == until:
                break
        return graph


def linear_name(role: str) -> str:
    """The HF module name of a linear layer's role within a decoder layer."""
    return f"self_attn.{role}_proj" if role in LINEAR_ROLES[:4] else f"mlp.{role}_proj"


def linear_dims(s: LlamaShape) -> dict[str, tuple[int, int]]:
    """Role (:data:`~compiler.reference.LINEAR_ROLES`) -> (rows, k) of a decoder layer."""
    d, hd, f = s.hidden_size, s.head_dim, s.intermediate_size
    q, kv = s.num_attention_heads * hd, s.num_key_value_heads * hd
    return {"q": (q, d), "k": (kv, d), "v": (kv, d), "o": (d, q),
            "gate": (f, d), "up": (f, d), "down": (d, f)}


def llama_param_shapes(s: LlamaShape) -> dict[str, tuple[int, ...]]:
    """The HF tensor names and shapes of a ``LlamaForCausalLM`` checkpoint (with the
    ``.bias`` vectors of the roles in ``s.linear_biases``); the other families are
    imported into these names (LayerNorm biases as the norms' ``.bias``, a learned
    position table as ``model.embed_positions.weight``)."""
    d = s.hidden_size
    out = {"model.embed_tokens.weight": (s.vocab_size, d)}
    if s.positions == "learned":
        out["model.embed_positions.weight"] = (s.max_position_embeddings, d)

    def norm(module):
        out[module + ".weight"] = (d,)
        if s.norm == "layer":
            out[module + ".bias"] = (d,)

    norm("model.norm")
    for i in range(s.num_hidden_layers):
        p = f"model.layers.{i}."
        norm(p + "input_layernorm")
        norm(p + "post_attention_layernorm")
        for role in s.roles:
            n, k = linear_dims(s)[role]
            out[p + linear_name(role) + ".weight"] = (n, k)
            if role in s.linear_biases:
                out[p + linear_name(role) + ".bias"] = (n,)
    if not (s.tie_word_embeddings or s.encoder):
        out["lm_head.weight"] = (s.vocab_size, d)
    return out


def build_llama_graph(shape: LlamaShape, params: dict[str, torch.Tensor]) -> Graph:
    """Build the graph of a LLaMA-family decoder (or of an encoder, ``shape.encoder``:
    :func:`_encoder_layers`) from HF-named float parameters.

    Every tensor of :func:`llama_param_shapes` must be present with its shape (a
    :class:`CompileError` names the first that is missing or misshapen).
    """
    want = llama_param_shapes(shape)
    for name, shp in want.items():
        if name not in params:
            raise CompileError(f"missing tensor {name} (expected shape {list(shp)})")
        if tuple(params[name].shape) != shp:
            raise CompileError(f"tensor {name} has shape {list(params[name].shape)}, "
                               f"expected {list(shp)}")
    ps = {k: params[k].detach().to(torch.float32) for k in want}
    nodes: list[Node] = []

    def add(name, op, inputs, **attrs):
        nodes.append(Node(name, op, tuple(inputs), attrs))
        return name

    s = shape

    def linear(L, p, role, x):
        layer = p + linear_name(role)
        bias = {"bias": layer + ".bias"} if role in s.linear_biases else {}
        return add(L + role + "_proj", "linear", [x], weight=layer + ".weight", layer=layer,
                   **bias)

    def norm(name, module, x):
        if s.norm == "rms":
            return add(name, "rmsnorm", [x], weight=module + ".weight", eps=s.rms_norm_eps)
        return add(name, "layernorm", [x], weight=module + ".weight", bias=module + ".bias",
                   eps=s.rms_norm_eps)

    h = add("embed", "embedding", [Graph.INPUT], weight="model.embed_tokens.weight")
    if s.positions == "learned":
        h = add("embed_pos", "positions", [h], weight="model.embed_positions.weight")
    if s.encoder:
        out = _encoder_layers(s, h, add, linear, norm)
        return Graph(nodes=nodes, params=ps, shape=shape, output=out).validate()
    for i in range(s.num_hidden_layers):
        p, L = f"model.layers.{i}.", f"l{i}."
        x = norm(L + "attn_norm", p + "input_layernorm", h)
        proj = {r: linear(L, p, r, x) for r in ("q", "k", "v")}
        rq, rk = proj["q"], proj["k"]
        if s.positions == "rope":
            rq = add(L + "q_rope", "rope", [rq], heads=s.num_attention_heads,
                     head_dim=s.head_dim, theta=s.rope_theta, scaling=s.rope_scaling)
            rk = add(L + "k_rope", "rope", [rk], heads=s.num_key_value_heads,
                     head_dim=s.head_dim, theta=s.rope_theta, scaling=s.rope_scaling)
        a = add(L + "attn", "attention", [rq, rk, proj["v"]], heads=s.num_attention_heads,
                kv_heads=s.num_key_value_heads, head_dim=s.head_dim,
                scale=s.head_dim ** -0.5, layer=i, window=s.sliding_window or 0)
        o = linear(L, p, "o", a)
        h = add(L + "attn_res", "add", [h, o])
        x = norm(L + "mlp_norm", p + "post_attention_layernorm", h)
        u = linear(L, p, "up", x)
        if s.mlp == "silu_gated":
            sg = add(L + "silu", "silu", [linear(L, p, "gate", x)])
            m = add(L + "mlp_mul", "mul", [sg, u])
        else:
            m = add(L + "act", s.mlp, [u])
        d = linear(L, p, "down", m)
        h = add(L + "mlp_res", "add", [h, d])
    x = norm("final_norm", "model.norm", h)
    head = "model.embed_tokens.weight" if s.tie_word_embeddings else "lm_head.weight"
    add("lm_head", "linear", [x], weight=head, layer="lm_head")
    return Graph(nodes=nodes, params=ps, shape=shape, output="lm_head").validate()


def _encoder_layers(s: LlamaShape, h: str, add, linear, norm) -> str:
    """The nodes of a BERT-style encoder after its embeddings ``h``; returns the output,
    the last layer's hidden states. Post-norm: ``x = norm(embeddings)``, then per layer
    ``x = norm1(x + o(attention(x)))`` and ``x = norm2(x + down(gelu(up(x))))``, the
    attention bidirectional (every position sees every key of the sentence)."""
    x = norm("embed_norm", "model.norm", h)
    gelu = {"approximate": "none"} if s.mlp == "gelu_erf" else {}
    for i in range(s.num_hidden_layers):
        p, L = f"model.layers.{i}.", f"l{i}."
        proj = {r: linear(L, p, r, x) for r in ("q", "k", "v")}
        a = add(L + "attn", "attention", [proj["q"], proj["k"], proj["v"]],
                heads=s.num_attention_heads, kv_heads=s.num_key_value_heads,
                head_dim=s.head_dim, scale=s.head_dim ** -0.5, layer=i, window=0,
                causal=False)
        h = add(L + "attn_res", "add", [x, linear(L, p, "o", a)])
        x = norm(L + "attn_norm", p + "input_layernorm", h)
        u = add(L + "act", "gelu" if s.mlp.startswith("gelu") else s.mlp,
                [linear(L, p, "up", x)], **gelu)
        h = add(L + "mlp_res", "add", [x, linear(L, p, "down", u)])
        x = norm(L + "mlp_norm", p + "post_attention_layernorm", h)
    return x


def build_linear_graph(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Graph:
    """The one-node graph of a single linear layer ``y = W x + b``: the graph's input (the
    activations) -> ``linear`` (parameters ``weight``, ``bias`` when given) -> output; the
    single-layer compiler's passes (:func:`compiler.linear.linear_pipeline`) run on it."""
    attrs = {"weight": "weight", "layer": "linear"}
    params = {"weight": weight}
    if bias is not None:
        attrs["bias"], params["bias"] = "bias", bias
    return Graph(nodes=[Node("linear", "linear", (Graph.INPUT,), attrs)], params=params,
                 shape=None, output="linear")
