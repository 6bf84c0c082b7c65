"""compiler.reference against the pinned transformers LlamaForCausalLM (random models).

Float tolerance: both compute in float32 with different operation orders (fused SDPA
or eager attention, matmul blocking); on logits of magnitude ~1 the differences are a
few 1e-6, so 1e-4 absolute is loose enough for any order yet far below what a wrong
RoPE pairing or GQA head mapping produces (> 1e-2 on these models).
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from airfoil.errors import CompileError  # noqa: E402
from compiler.reference import KVCache, LlamaReference, LlamaShape  # noqa: E402

TOL = 1e-4

CASES = {
    "gqa": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_size=64),
    "mha": dict(num_attention_heads=4, num_key_value_heads=4, head_dim=8, hidden_size=32),
    "odd_gqa": dict(num_attention_heads=3, num_key_value_heads=1, head_dim=16,
                    hidden_size=48),
    "odd_mha": dict(num_attention_heads=5, num_key_value_heads=5, head_dim=6,
                    hidden_size=40),
}


#: LLaMA 3.1's RoPE scaling, on a short original context so that all three frequency
#: bands (kept, blended, divided) occur at head_dim 8..16 and theta 500.
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def _pair(case, tie, seed, rope_scaling=None):
    kw = CASES[case]
    shape = LlamaShape(vocab_size=61, intermediate_size=72, num_hidden_layers=2,
                       rms_norm_eps=1e-5, rope_theta=500.0, max_position_embeddings=64,
                       tie_word_embeddings=tie, rope_scaling=rope_scaling, **kw)
    cfg = transformers.LlamaConfig(**shape.to_hf())
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():          # non-trivial norms and a wide weight spread
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() == 2 else 0.2) + (p.dim() == 1))
    ref = LlamaReference(shape).eval()
    sd = {k: v for k, v in hf.state_dict().items() if not k.endswith("inv_freq")}
    if tie:
        sd.pop("lm_head.weight", None)
    ref.load_state_dict(sd, strict=True)
    return hf, ref


@pytest.mark.parametrize("tie,rope_scaling", [(False, None), (True, None),
                                               (False, LLAMA3_ROPE)],
                         ids=["untied", "tied", "llama3-rope"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("seed", [0])
def test_prefill_and_decode_logits_match_transformers(case, tie, rope_scaling, seed):
    hf, ref = _pair(case, tie, seed, rope_scaling)
    gen = torch.Generator().manual_seed(seed + 1)
    tok = torch.randint(0, 61, (1, 11), generator=gen)
    with torch.no_grad():
        want = hf(tok).logits
        got = ref(tok)
        assert float((got - want).abs().max()) < TOL
        # prefill 8, then decode 3 tokens one at a time with both KV caches
        out = hf(tok[:, :8], use_cache=True)
        pkv = out.past_key_values
        cache = KVCache(2)
        assert float((ref(tok[:, :8], cache) - out.logits).abs().max()) < TOL
        for t in range(8, 11):
            out = hf(tok[:, t:t + 1], past_key_values=pkv, use_cache=True)
            pkv = out.past_key_values
            step = ref(tok[:, t:t + 1], cache)
            assert float((step - out.logits).abs().max()) < TOL
            assert float((step[0, 0] - want[0, t]).abs().max()) < TOL


def test_wrong_rope_pairing_would_be_caught():
    """The tolerance separates a right model from one with interleaved RoPE pairs."""
    hf, ref = _pair("gqa", False, 3)
    tok = torch.randint(0, 61, (1, 9), generator=torch.Generator().manual_seed(2))
    import compiler.reference as r
    orig = r.apply_rope

    def interleaved(x, cos, sin):
        x1, x2 = x[..., 0::2], x[..., 1::2]
        y = torch.stack([x1 * cos.to(x.dtype) - x2 * sin.to(x.dtype),
                         x2 * cos.to(x.dtype) + x1 * sin.to(x.dtype)], dim=-1)
        return y.flatten(-2)
    r.apply_rope = interleaved
    try:
        with torch.no_grad():
            bad = float((ref(tok) - hf(tok).logits).abs().max())
    finally:
        r.apply_rope = orig
    assert bad > 100 * TOL


def test_llama3_rope_frequencies_as_transformers():
    """All three bands of the llama3 scaling occur and match transformers' frequencies."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from airfoil.fixedpoint import rope_inv_freq

    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=500.0,
                                   rope_scaling=dict(LLAMA3_ROPE),
                                   max_position_embeddings=64)
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    plain = rope_inv_freq(16, 500.0)
    got = rope_inv_freq(16, 500.0, LLAMA3_ROPE)
    assert torch.allclose(got, want.to(torch.float64), rtol=1e-6)     # HF works in float32
    ratio = got / plain
    assert (ratio == 1).any() and (ratio == 1 / 8).any()
    assert ((ratio > 1 / 8) & (ratio < 1)).any()


def test_bad_rope_scaling_refused():
    with pytest.raises(CompileError, match="rope_scaling must be null or"):
        LlamaShape(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                   num_attention_heads=1, num_key_value_heads=1, head_dim=8,
                   rope_scaling={"rope_type": "yarn", "factor": 4.0})
