"""Import a torch ``nn.Module`` decoder: capture it with ``torch.export`` and pattern-match
the ATen graph into the IR.

The module is called as ``module(tokens)`` with ``tokens`` of shape (1, T) and returns
logits (1, T, vocab) (or an object with ``.logits``). Patterns recognised, with
shape-only ops (view, reshape, transpose, dtype casts, metadata asserts) looked through
and token-independent subgraphs (RoPE tables, masks) treated as constants:

* ``embedding(W, tokens)``                                  -> ``embedding``
* ``W * (h * rsqrt(mean(h**2, -1) + eps))``                 -> ``rmsnorm``
* ``linear(x, W)`` or ``matmul(x, t(W))``                   -> ``linear``
* ``cat([x1 c - x2 s, x2 c + x1 s])`` on the halves of x    -> ``rope``
* ``softmax(mask(q @ k^T * c)) @ v`` (``repeat_interleave`` for GQA), or
  ``scaled_dot_product_attention(q, k, v, is_causal)``     -> ``attention``
* ``silu``, ``mul``, ``add``                               -> the same ops

Hyper-parameters the ATen graph does not carry plainly (RoPE theta, maximum length) come
from the module's ``shape`` (:class:`~compiler.reference.LlamaShape`) or HF ``config``.
Any other op on the data path raises :class:`CompileError` naming it and its node. After
matching, the float graph is run against the module on random tokens; a difference
beyond float rounding (a misread pattern) is a :class:`CompileError` too.
"""

from __future__ import annotations

import torch

from airfoil.errors import CompileError

from ..ir import Graph, Node
from ..reference import LlamaShape

__all__ = ["import_module"]

_A = torch.ops.aten
_PASS = {_A.view.default, _A.reshape.default, _A.transpose.int, _A.to.dtype,
         _A.contiguous.default, _A.clone.default, _A._to_copy.default, _A.alias.default,
         _A.unsqueeze.default, _A.expand.default, _A.dropout.default, _A.detach.default,
         _A.type_as.default, _A.permute.default}
_SKIP = {_A._assert_tensor_metadata.default}


def _shape_of(module) -> LlamaShape:
    s = getattr(module, "shape", None)
    if isinstance(s, LlamaShape):
        return s
    cfg = getattr(module, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        from .hf import parse_hf_config
        return parse_hf_config(cfg.to_dict(), f"{type(module).__name__}.config")
    raise CompileError(f"module {type(module).__name__} has neither a LlamaShape `shape` "
                       f"nor an HF `config` (needed for RoPE theta and lengths)")


class _Matcher:
    def __init__(self, ep, shape: LlamaShape):
        self.shape = shape
        sig = ep.graph_signature
        self.param_of = dict(sig.inputs_to_parameters)
        self.param_of.update(getattr(sig, "inputs_to_buffers", {}) or {})
        self.state = ep.state_dict
        self.tokens = [i for i in sig.user_inputs]
        self.val: dict = {}          # fx node -> IR value name (data path)
        self.nodes: list[Node] = []
        self.params: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}

    # -- helpers ---------------------------------------------------------------------
    def src(self, n):
        """Look through shape-only ops."""
        while hasattr(n, "target") and n.op == "call_function" and n.target in _PASS:
            n = n.args[0]
        return n

    def param(self, n):
        n = self.src(n)
        if getattr(n, "op", None) == "placeholder" and n.name in self.param_of:
            name = self.param_of[n.name]
            self.params[name] = self.state[name].detach().to(torch.float32)
            return name
        return None

    def is_data(self, n):
        return self.src(n) in self.val

    def v(self, n):
        return self.val[self.src(n)]

    def emit(self, op, inputs, **attrs):
        k = self.count.get(op, 0)
        self.count[op] = k + 1
        name = f"{op}{k}"
        self.nodes.append(Node(name, op, tuple(inputs), attrs))
        return name

    def fail(self, n, what="unsupported op"):
        raise CompileError(f"torch module import: {what} {n.target} at node {n.name}")

    @staticmethod
    def target(n):
        return getattr(n, "target", None) if getattr(n, "op", None) == "call_function" \
            else None

    def heads_of(self, n):
        """(heads, head_dim) of a value (..., heads, T, head_dim) from its fake tensor."""
        shp = n.meta["val"].shape
        return int(shp[-3]), int(shp[-1])

    # -- patterns --------------------------------------------------------------------
    def rmsnorm(self, n, a, b):
        """``W * normed`` where normed = h * rsqrt(mean(h^2) + eps)."""
        w = self.param(a) if self.param(a) else self.param(b)
        other = b if self.param(a) else a
        if w is None or self.params[w].dim() != 1:
            return None
        m = self.src(other)
        if self.target(m) != _A.mul.Tensor:
            return None
        h, r = m.args
        if self.target(self.src(r)) != _A.rsqrt.default:
            h, r = r, h
        r = self.src(r)
        if self.target(r) != _A.rsqrt.default:
            return None
        ad = self.src(r.args[0])
        if self.target(ad) != _A.add.Tensor or not isinstance(ad.args[1], float):
            return None
        mean = self.src(ad.args[0])
        if self.target(mean) != _A.mean.dim:
            return None
        pw = self.src(mean.args[0])
        if self.target(pw) != _A.pow.Tensor_Scalar or pw.args[1] != 2:
            return None
        if self.src(pw.args[0]) is not self.src(h) or not self.is_data(h):
            return None
        return self.emit("rmsnorm", [self.v(h)], weight=w, eps=float(ad.args[1]))

    def rope(self, n):
        """``cat([x1*c - x2*s, x2*c + x1*s], -1)`` with x1, x2 the halves of one x."""
        parts = n.args[0]
        if len(parts) != 2:
            return None
        sub, add = (self.src(p) for p in parts)
        if self.target(sub) != _A.sub.Tensor or self.target(add) != _A.add.Tensor:
            return None

        def sliced(p):
            p = self.src(p)
            if self.target(p) != _A.mul.Tensor:
                return None
            for a in p.args:
                a = self.src(a)
                if self.target(a) == _A.slice.Tensor and self.is_data(a.args[0]):
                    return a
            return None
        halves = [sliced(p) for p in (sub.args[0], sub.args[1], add.args[0], add.args[1])]
        if any(h is None for h in halves):
            return None
        x = self.src(halves[0].args[0])
        if any(self.src(h.args[0]) is not x for h in halves):
            return None
        heads, hd = self.heads_of(halves[0].args[0])
        return self.emit("rope", [self.v(x)], heads=heads, head_dim=hd,
                         theta=self.shape.rope_theta,
                         scaling=self.shape.rope_scaling)

    def is_rotate_half(self, n):
        """``cat([-x2, x1], -1)`` of the halves x1, x2 of one x."""
        parts = n.args[0]
        if len(parts) != 2:
            return False
        a, b = (self.src(p) for p in parts)
        if self.target(a) != _A.neg.default:
            return False
        a = self.src(a.args[0])
        return (self.target(a) == _A.slice.Tensor and self.target(b) == _A.slice.Tensor
                and self.src(a.args[0]) is self.src(b.args[0]))

    def rope_rotate_half(self, n):
        """HF style: ``x * cos + cat([-x2, x1]) * sin``."""
        a, b = (self.src(p) for p in n.args[:2])
        if self.target(a) != _A.mul.Tensor or self.target(b) != _A.mul.Tensor:
            return None
        xs = [p for p in a.args if self.is_data(p)]
        rs = [self.src(p) for p in b.args if self.is_data(p)]
        if len(xs) != 1 or len(rs) != 1 or self.target(rs[0]) != _A.cat.default:
            return None
        if not self.is_rotate_half(rs[0]):
            return None
        x = xs[0]
        sl = self.src(rs[0].args[0][1])
        if self.src(sl.args[0]) is not self.src(x):
            return None
        heads, hd = self.heads_of(sl.args[0])
        return self.emit("rope", [self.v(x)], heads=heads, head_dim=hd,
                         theta=self.shape.rope_theta,
                         scaling=self.shape.rope_scaling)

    def kv_source(self, n):
        """The value under an optional GQA ``repeat_interleave`` (and transposes)."""
        n = self.src(n)
        if self.target(n) in (_A.repeat_interleave.self_int,):
            n = self.src(n.args[0])
        return n

    def attention(self, n):
        """``matmul(softmax(masked(q @ k^T * c)), v)``."""
        p, v = n.args
        sm = self.src(p)
        if self.target(sm) not in (_A.softmax.int, _A._softmax.default):
            return None
        x = self.src(sm.args[0])
        if self.target(x) in (_A.masked_fill.Scalar, _A.masked_fill.Tensor):
            x = self.src(x.args[0])
        elif self.target(x) == _A.add.Tensor and not self.is_data(x.args[1]):
            x = self.src(x.args[0])        # additive mask
        scale = 1.0
        if self.target(x) == _A.div.Tensor and isinstance(x.args[1], (int, float)):
            scale, x = 1.0 / float(x.args[1]), self.src(x.args[0])
        elif self.target(x) == _A.mul.Tensor and isinstance(x.args[1], (int, float)):
            scale, x = float(x.args[1]), self.src(x.args[0])
        if self.target(x) != _A.matmul.default:
            return None
        q, kt = x.args
        k = self.kv_source(kt)
        vv = self.kv_source(v)
        if not (self.is_data(q) and self.is_data(k) and self.is_data(vv)):
            return None
        return self._attention_node(self.src(q), k, vv, scale)

    def _attention_node(self, q, k, v, scale):
        heads, hd = self.heads_of(q)
        kv_heads, _ = self.heads_of(k)
        layer = self.count.get("attention", 0)
        return self.emit("attention", [self.v(q), self.v(k), self.v(v)], heads=heads,
                         kv_heads=kv_heads, head_dim=hd, scale=scale, layer=layer)

    def sdpa(self, n):
        q, k, v = (self.src(a) for a in n.args[:3])
        kw = dict(n.kwargs)
        mask = n.args[3] if len(n.args) > 3 else kw.get("attn_mask")
        causal = kw.get("is_causal", n.args[5] if len(n.args) > 5 else False)
        if mask is not None and self.is_data(mask):
            self.fail(n, "attention with a token-dependent mask is unsupported:")
        if mask is None and not causal:
            self.fail(n, "non-causal attention is unsupported:")
        # A token-independent mask is taken as the causal one; import_module checks the
        # captured graph numerically against the module, which catches any other mask.
        hd = self.heads_of(q)[1]
        scale = kw.get("scale") or hd ** -0.5
        return self._attention_node(q, self.kv_source(k), self.kv_source(v), float(scale))

    # -- walk --------------------------------------------------------------------------
    def run(self, gm) -> str:
        out = None
        for n in gm.graph.nodes:
            if n.op == "placeholder":
                if n.name in self.tokens:
                    self.val[n] = Graph.INPUT
                continue
            if n.op == "output":
                res = n.args[0]
                res = res[0] if isinstance(res, (tuple, list)) else res
                if not self.is_data(res):
                    raise CompileError("torch module import: the output is not computed "
                                       "from the tokens")
                out = self.v(res)
                continue
            if n.op == "get_attr":
                continue                         # submodules of token-independent HOPs
            if n.op != "call_function":
                self.fail(n, f"unsupported node kind {n.op}:")
            t = n.target
            args = [a for a in n.args if hasattr(a, "op")]
            flat = list(args)
            for a in n.args:
                if isinstance(a, (list, tuple)):
                    flat += [x for x in a if hasattr(x, "op")]
            if t in _SKIP or not any(self.is_data(a) for a in flat):
                continue                         # constants: RoPE tables, masks
            if t in _PASS:
                continue                         # looked through by src()
            name = None
            if t == _A.embedding.default:
                w = self.param(n.args[0])
                if w and self.is_data(n.args[1]):
                    name = self.emit("embedding", [self.v(n.args[1])], weight=w)
            elif t == _A.linear.default:
                w = self.param(n.args[1])
                if w and (len(n.args) < 3 or n.args[2] is None):
                    name = self.emit("linear", [self.v(n.args[0])], weight=w,
                                     layer=w.removesuffix(".weight"))
            elif t == _A.matmul.default:
                b = self.src(n.args[1])
                if self.target(b) == _A.t.default:
                    w = self.param(b.args[0])
                    if w and self.is_data(n.args[0]) and not self.is_data(n.args[1]):
                        name = self.emit("linear", [self.v(n.args[0])], weight=w,
                                         layer=w.removesuffix(".weight"))
                if name is None and self.is_data(n.args[1]):
                    name = self.attention(n)
                    if name is None and self.target(self.src(n.args[0])) in (
                            _A.softmax.int, _A._softmax.default):
                        self.fail(n, "unrecognised attention pattern at")
                    if name is None:
                        self.val[n] = None      # q @ k^T: absorbed by attention
                        continue
            elif t == _A.scaled_dot_product_attention.default:
                name = self.sdpa(n)
            elif t == _A.mul.Tensor:
                a, b = n.args
                name = self.rmsnorm(n, a, b)
                if name is None and self.is_data(a) and self.is_data(b) \
                        and self.v(a) and self.v(b):
                    name = self.emit("mul", [self.v(a), self.v(b)])
                if name is None:
                    self.val[n] = None          # part of a pattern matched later
                    continue
            elif t == _A.add.Tensor:
                a, b = n.args[:2]
                name = self.rope_rotate_half(n)
                if name is not None:
                    pass
                elif self.is_data(a) and self.is_data(b) and self.v(a) and self.v(b):
                    name = self.emit("add", [self.v(a), self.v(b)])
                else:
                    self.val[n] = None
                    continue
            elif t == _A.silu.default:
                name = self.emit("silu", [self.v(n.args[0])])
            elif t == _A.cat.default:
                name = self.rope(n)
                if name is None and self.is_rotate_half(n):
                    self.val[n] = None          # inner part of HF-style RoPE
                    continue
                if name is None:
                    self.fail(n, "unrecognised concatenation")
            elif t in (_A.pow.Tensor_Scalar, _A.mean.dim, _A.rsqrt.default, _A.sub.Tensor,
                       _A.slice.Tensor, _A.div.Tensor, _A.masked_fill.Scalar,
                       _A.masked_fill.Tensor, _A.softmax.int, _A._softmax.default,
                       _A.repeat_interleave.self_int, _A.t.default, _A.neg.default):
                self.val[n] = None              # inner part of rmsnorm/rope/attention
                continue
            else:
                self.fail(n)
            if name is None:
                self.fail(n, "unrecognised use of")
            self.val[n] = name
        return out


def import_module(module: torch.nn.Module, *, example_len: int = 8,
                  shape: LlamaShape | None = None) -> Graph:
    """Capture ``module`` with ``torch.export`` and pattern-match it into a Graph.

    Parameters
    ----------
    module : torch.nn.Module
        A LLaMA-style decoder called as ``module(tokens)``.
    example_len : int
        Sequence length of the example input used for capture.
    shape : LlamaShape, optional
        Hyper-parameters; by default taken from ``module.shape`` or ``module.config``.
    """
    shape = shape or _shape_of(module)
    example = torch.zeros((1, example_len), dtype=torch.int64)
    try:
        ep = torch.export.export(module.eval(), (example,))
    except Exception as e:  # noqa: BLE001 - report any capture failure in one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompileError(f"torch.export failed on {type(module).__name__}: {msg}") from None
    m = _Matcher(ep, shape)
    out = m.run(ep.graph_module)
    used = {i for n in m.nodes for i in n.inputs}
    dead = [n.name for n in m.nodes if n.name not in used and n.name != out]
    if dead:
        raise CompileError(f"torch module import: values {', '.join(dead)} are computed "
                           f"but not used (unrecognised pattern)")
    if out is None or not m.nodes or m.nodes[-1].name != out or m.nodes[-1].op != "linear":
        raise CompileError("torch module import: the logits are not a linear layer's output")
    m.nodes[-1].attrs["layer"] = "lm_head"
    g = Graph(nodes=m.nodes, params=m.params, shape=shape, output=out).validate()
    _check_numerically(module, g, example_len)
    return g


def _check_numerically(module, g: Graph, n: int):
    """Run the module and the float graph on random tokens; they must agree."""
    from ..backends import execute
    gen = torch.Generator().manual_seed(0)
    tok = torch.randint(0, g.shape.vocab_size, (1, n), generator=gen)
    with torch.no_grad():
        ref = module(tok)
        ref = getattr(ref, "logits", ref)
        ref = ref[0] if isinstance(ref, (tuple, list)) else ref
        got = execute(g, tok[0])
    scale = float(ref.abs().max()) or 1.0
    err = float((got - ref[0]).abs().max())
    if not err <= 1e-4 * scale + 1e-5:
        raise CompileError(f"torch module import: the matched graph differs from the module "
                           f"(max logit error {err:.3g}); a pattern was misread")
