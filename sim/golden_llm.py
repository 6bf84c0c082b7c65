"""The integer golden of a whole quantized decoder LLM: prefill, decode, generate.

Input is the plain quantized model: only :mod:`airfoil` types and tensors, read from the
compiled output folder by :func:`airfoil.folder.read_llm_model` (:func:`golden_from_folder`;
``compiler.passes.quantized_model`` builds the same dict before compilation), so the golden
never quantizes on its own. Every step is
the arithmetic of :mod:`airfoil.formats` (linear layers) and :mod:`airfoil.fixedpoint`
(everything else), which the ISA simulator and the RTL implement bit for bit.

The token's activation is its INT8 embedding row dequantized
(:meth:`airfoil.fixedpoint.QEmbedding.lookup`). Per layer, on ACT values (signed 32-bit
Q16)::

    x = rmsnorm(h); xq = quant_per_token(x)
    q, k, v = linear(xq); q, k = rope(q), rope(k)        # 1/sqrt(d) folded into W_q
    a = attention(q, k, v, kv_cache)                      # INT8 KV cache per (pos, head)
                                                          # (sliding window if any)
    h = add(h, linear_o(quant_per_token(a)))
    x = rmsnorm(h); xq = quant_per_token(x)
    h = add(h, linear_down(quant_per_token(mul(silu(linear_gate(xq)), linear_up(xq)))))
    logits = linear_head(quant_per_token(rmsnorm(h)))

where a layer whose role has a bias (``q_bias`` ...) adds it to its ACT output with
``add``. The shape's ``norm``, ``mlp`` and ``positions`` select the other families'
forms: ``layernorm`` (with its bias) for ``rmsnorm``; ``down(act(up(x)))`` with ``gelu``
or ``relu`` for the gated MLP; learned positions (``h = add(embed.lookup(tok),
positions[pos])``) for RoPE. An encoder (``shape.encoder``, BERT) is post-norm with
bidirectional attention and returns its last hidden states::

    x = layernorm(add(embed.lookup(tok), positions[pos]))     # the model's ``norm``
    x = layernorm(add(x, linear_o(quant_per_token(attention(q, k, v)))))   # attn_norm
    x = layernorm(add(x, linear_down(quant_per_token(gelu(linear_up(xq))))))  # mlp_norm
"""

from __future__ import annotations

import torch

from airfoil import fixedpoint as fx
from airfoil.errors import CompileError

__all__ = ["GoldenLLM", "generate", "golden_from_folder", "generate_folder"]


class GoldenLLM:
    """One sequence's integer decoder with its KV cache.

    Parameters
    ----------
    model : dict
        The quantized model (see the module docstring).
    """

    def __init__(self, model: dict):
        self.model = model
        s = model["shape"]
        self.heads, self.kv_heads = s["num_attention_heads"], s["num_key_value_heads"]
        self.head_dim, self.eps = s["head_dim"], s["rms_norm_eps"]
        self.vocab, self.max_pos = s["vocab_size"], s["max_position_embeddings"]
        self.norm_kind = s.get("norm", "rms")
        self.mlp_kind = s.get("mlp", "silu_gated")
        self.rotary = s.get("positions", "rope") == "rope"
        self.window = s.get("sliding_window") or 0
        self.encoder = bool(s.get("encoder", False))
        if not self.rotary:
            self.cos = self.sin = None
        elif "rope" in model:         # the folder's table
            self.cos, self.sin = model["rope"]
        else:
            self.cos, self.sin = fx.rope_table(self.head_dim, s["rope_theta"], self.max_pos,
                                               s.get("rope_scaling"))
        self.reset()

    def reset(self):
        """Empty the KV cache."""
        self.caches = [fx.KVCacheInt(self.kv_heads, self.head_dim)
                       for _ in self.model["layers"]]

    @property
    def position(self) -> int:
        """Positions held in the KV cache."""
        return self.caches[0].length if self.caches else 0

    def _norm(self, h, owner: dict, key: str):
        """The norm ``key`` of ``owner`` (a layer or the model) on ACT rows ``h``."""
        if self.norm_kind == "rms":
            return fx.rmsnorm(h, owner[key], self.eps)
        return fx.layernorm(h, owner[key], owner[key + "_bias"], self.eps)

    def _rope(self, x, heads, start, T):
        if not self.rotary:
            return x
        c, s = self.cos[start:start + T], self.sin[start:start + T]
        y = fx.rope(x.view(T, heads, self.head_dim).transpose(0, 1), c, s)
        return y.transpose(0, 1).reshape(T, heads * self.head_dim)

    def forward(self, tokens) -> torch.Tensor:
        """Run T tokens after the cached positions; return ACT logits (T, vocab)."""
        tok = torch.as_tensor(tokens, dtype=torch.int64).reshape(-1)
        T, start = tok.shape[0], self.position
        if T == 0:
            raise CompileError("no tokens to run")
        if int(tok.min()) < 0 or int(tok.max()) >= self.vocab:
            raise CompileError(f"token id outside the vocabulary 0..{self.vocab - 1}")
        if start + T > self.max_pos:
            raise CompileError(f"{start + T} positions exceed max_position_embeddings="
                               f"{self.max_pos}")
        m = self.model
        h = m["embed"].lookup(tok)
        if not self.rotary:
            h = fx.add(h, m["positions"][start:start + T])
        if self.encoder:
            return self._encoder(h, start, T)
        for L, cache in zip(m["layers"], self.caches):
            xq = fx.quant_per_token(self._norm(h, L, "attn_norm"))
            q = self._rope(_linear(L, "q", xq), self.heads, start, T)
            k = self._rope(_linear(L, "k", xq), self.kv_heads, start, T)
            v = _linear(L, "v", xq)
            a = fx.attention(q, k, v, cache, self.heads, self.kv_heads, self.head_dim,
                             self.window)
            h = fx.add(h, _linear(L, "o", fx.quant_per_token(a)))
            xq = fx.quant_per_token(self._norm(h, L, "mlp_norm"))
            u = _linear(L, "up", xq)
            if self.mlp_kind == "silu_gated":
                a = fx.mul(fx.silu(_linear(L, "gate", xq)), u)
            else:
                a = fx.relu(u) if self.mlp_kind == "relu" else fx.gelu(u)
            h = fx.add(h, _linear(L, "down", fx.quant_per_token(a)))
        x = fx.quant_per_token(self._norm(h, m, "norm"))
        return fx.linear(m["lm_head"], *x)

    def _encoder(self, h, start, T):
        """The post-norm layers of an encoder on its embeddings ``h``: ACT hidden states."""
        x = self._norm(h, self.model, "norm")
        for L, cache in zip(self.model["layers"], self.caches):
            xq = fx.quant_per_token(x)
            a = fx.attention(_linear(L, "q", xq), _linear(L, "k", xq), _linear(L, "v", xq),
                             cache, self.heads, self.kv_heads, self.head_dim, causal=False)
            x = self._norm(fx.add(x, _linear(L, "o", fx.quant_per_token(a))), L, "attn_norm")
            u = fx.gelu(_linear(L, "up", fx.quant_per_token(x)))
            x = self._norm(fx.add(x, _linear(L, "down", fx.quant_per_token(u))), L,
                           "mlp_norm")
        return x

    def prefill(self, tokens) -> torch.Tensor:
        """Start a new sequence with ``tokens``; return its ACT logits (T, vocab)."""
        self.reset()
        return self.forward(tokens)

    def decode(self, token: int) -> torch.Tensor:
        """Run one token after the cache; return its ACT logits (vocab,)."""
        return self.forward([token])[0]


def _linear(layer: dict, role: str, xq) -> torch.Tensor:
    """The linear layer of ``role`` on per-token INT8 ``xq``, plus its bias if it has one."""
    y = fx.linear(layer[role], *xq)
    bias = layer.get(role + "_bias")
    return y if bias is None else fx.add(y, bias)


def generate(model: dict, prompt, max_new_tokens: int, decode_text=None, *,
             sampling: fx.Sampling | None = None) -> tuple[list[int], str]:
    """Prefill ``prompt`` (token ids), then decode ``max_new_tokens`` tokens, each chosen
    by ``sampling`` (default: greedy) from the logits of the token before it, as the
    chip's ``TOPK_SAMPLE`` chooses (the draw of that token's position).

    Return ``(new_tokens, text)``; ``text`` is ``decode_text(new_tokens)`` when given,
    else the tokens as UTF-8 bytes for a 256-token (byte) vocabulary.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise CompileError(f"max_new_tokens must be a non-negative integer, not "
                           f"{max_new_tokens!r}")
    g = GoldenLLM(model)
    prompt = list(prompt)
    if not prompt:
        raise CompileError("the prompt is empty (at least one token is needed)")
    sampling = fx.Sampling() if sampling is None else sampling
    out: list[int] = []
    if max_new_tokens:
        logits = g.prefill(prompt)[-1]
        while True:
            out.append(sampling.choose(logits, g.position - 1))
            if len(out) == max_new_tokens:
                break
            logits = g.decode(out[-1])
    if decode_text is not None:
        text = decode_text(out)
    elif g.vocab == 256:
        text = bytes(out).decode("utf-8", errors="replace")
    else:
        text = " ".join(str(t) for t in out)
    return out, text


def golden_from_folder(folder) -> dict:
    """The quantized model stored in an LLM output folder (for :class:`GoldenLLM`)."""
    from airfoil.folder import read_llm_model
    return read_llm_model(folder.manifest, folder.image, folder.resolve_config())


def generate_folder(folder, prompt, max_new_tokens: int, decode_text=None, *, sampling=None):
    """:func:`generate` on the model read from an LLM output folder."""
    m = folder.manifest["model"]
    if len(list(prompt)) + max(max_new_tokens - 1, 0) > m["max_positions"]:
        raise CompileError(f"prompt plus new tokens exceed the {m['max_positions']} positions "
                           f"the folder holds")
    return generate(golden_from_folder(folder), prompt, max_new_tokens, decode_text,
                    sampling=sampling)
