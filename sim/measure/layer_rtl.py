"""One decode step (or one prefill chunk) of a synthetic decoder layer on the RTL core,
beside the ISA simulator, the golden integer model and the cycle model (bench area
``layer7b``).

The step runs at context ``ctx``: the KV cache holds positions ``0 .. ctx-2`` and the
program decodes position ``ctx-1`` (a chunk of ``T`` tokens: the cache holds ``0 ..
ctx-T-1`` and the prefill program runs positions ``ctx-T .. ctx-1``). The host writes
those cached positions before the
run, as a board's host would restore a sequence, instead of prefilling ``ctx - 1``
tokens: :func:`seeded_kv_cache` draws each position's keys and values (seeded ACT
vectors) and quantizes them with the golden model's own per-token quantizer
(:func:`airfoil.fixedpoint.quant_per_token`), so the cache is one the program could have
written, and the golden model's :class:`~airfoil.fixedpoint.KVCacheInt` holds the same
integers.

:func:`run_layer_step` then runs the decode program on the RTL core (Verilator, no memory
stalls) and on the ISA simulator over the same image, and the golden model from the
folder's own weights; the logits and the KV rows the step writes must be equal, bit for
bit, on all three. The RTL's ``cycles`` is the core's cycle counter from START to DONE
(what the cycle model's ``cycles`` of the ISA simulator predicts).
"""

from __future__ import annotations

import resource
import time

import numpy as np
import torch

from airfoil import fixedpoint as fx
from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError

__all__ = ["seeded_kv_cache", "write_kv_cache", "run_layer_step", "compile_float_layer",
           "UNITS"]

#: The units whose busy cycles the RTL core counts and the ISA simulator reports.
UNITS = ("load", "matrix", "sfu", "store")


def seeded_kv_cache(shape: dict, length: int, seed: int) -> list:
    """Per layer, a :class:`~airfoil.fixedpoint.KVCacheInt` of ``length`` positions whose
    keys and values are seeded ACT vectors (standard normal in Q16) quantized per
    position and KV head as the program's QUANT_TOKEN does."""
    kvh, hd = shape["num_key_value_heads"], shape["head_dim"]
    rng = np.random.default_rng([int(seed), 0x4B56])
    caches = []
    for _ in range(shape["num_hidden_layers"]):
        c = fx.KVCacheInt(kvh, hd)
        k, v = (torch.from_numpy(np.round(rng.standard_normal((kvh, length, hd))
                                          * 2 ** fx.ACT_FRAC).astype(np.int64))
                for _ in range(2))
        c.append(k, v)
        caches.append(c)
    return caches


def _records(q: torch.Tensor, sm: torch.Tensor, se: torch.Tensor, rec: int) -> np.ndarray:
    """(length, heads * rec) bytes: per position, each head's record (INT8 values, then the
    int32 scale pair at the next 8-byte boundary), as QUANT_TOKEN writes it."""
    heads, length, hd = q.shape
    out = np.zeros((length, heads, rec), dtype=np.uint8)
    out[:, :, :hd] = q.permute(1, 0, 2).numpy().astype(np.int8).view(np.uint8)
    at = -(-hd // 8) * 8
    pair = torch.stack([sm, se], dim=-1).permute(1, 0, 2).numpy().astype("<i4")
    out[:, :, at:at + 8] = pair.view(np.uint8).reshape(length, heads, 8)
    return out.reshape(length, heads * rec)


def write_kv_cache(image: bytearray, manifest: dict, caches) -> None:
    """Write ``caches`` (one :class:`~airfoil.fixedpoint.KVCacheInt` per layer) into the
    folder image's K and V caches, from position 0."""
    mm = manifest["model"]
    lay, rec = mm["layout"], mm["record_bytes"]
    for i, c in enumerate(caches):
        for name, q, sm, se in (("kcache", c.k, c.k_sm, c.k_se),
                                ("vcache", c.v, c.v_sm, c.v_se)):
            rows = _records(q, sm, se, rec)
            if rows.shape[1] != lay["kv_row"]:
                raise AirfoilError(f"a KV row of {rows.shape[1]} bytes, the folder's is "
                                   f"{lay['kv_row']}")
            at = lay[f"l{i}.{name}"]
            image[at:at + rows.size] = rows.tobytes()


def _row_bytes(image, manifest: dict, position: int) -> bytes:
    """Every layer's K and V row of ``position``."""
    mm = manifest["model"]
    lay, row = mm["layout"], mm["layout"]["kv_row"]
    return b"".join(bytes(image[lay[f"l{i}.{n}"] + position * row:
                                lay[f"l{i}.{n}"] + (position + 1) * row])
                    for i in range(mm["shape"]["num_hidden_layers"])
                    for n in ("kcache", "vcache"))


def run_layer_step(folder, config: AccelConfig, ctx: int, *, tokens: int = 1, seed: int = 0,
                   token: int = 1, build_dir="build", golden: bool = True,
                   log=None) -> dict:
    """Run positions ``ctx - tokens .. ctx - 1`` of ``folder`` (an LLM folder compiled for
    ``config``) after a seeded cache of ``ctx - tokens`` positions on the RTL core and the
    ISA simulator (and the golden model unless ``golden`` is false): a decode step of
    ``token`` (``tokens`` 1) or one prefill chunk of the ids ``token, token + 1, ...``;
    raise :class:`AirfoilError` unless their logits and written KV rows are equal.

    Returns ``rtl_cycles`` (the core's cycle counter), ``model_cycles`` (the ISA
    simulator's cycle model on the same program), ``model_error`` (``|model - rtl| /
    rtl``), each unit's ``rtl_busy_<unit>`` and ``model_busy_<unit>``, ``instructions``,
    ``bytes_read`` (the cycle model's), the wall times ``rtl_seconds`` (build and run),
    ``rtl_sim_seconds`` (the simulation alone), ``isa_seconds``, and
    ``peak_rss_bytes`` (of this process and its finished children, the Verilator build
    and simulation among them).
    """
    from airfoil.cli.backend_rtl import RtlLLM
    from sim.golden_llm import GoldenLLM, golden_from_folder
    from sim.isa_sim import IsaLLM

    say = log or (lambda msg: None)
    mm = folder.manifest["model"]
    if not 1 <= tokens <= mm["max_prompt"]:
        raise AirfoilError(f"a chunk of {tokens} tokens: the folder's prefill takes "
                           f"1..{mm['max_prompt']}")
    reach = mm["max_positions"] if tokens == 1 else mm["prefill_positions"]
    if not tokens + 1 <= ctx <= reach:
        raise AirfoilError(f"context {ctx} is outside {tokens + 1}..{reach}, the positions "
                           f"the folder's {'decode' if tokens == 1 else 'prefill'} reaches")
    pos = ctx - tokens
    caches = seeded_kv_cache(mm["shape"], pos, seed)
    ids = [(token + i) % mm["shape"]["vocab_size"] for i in range(tokens)]
    phase = "decode" if tokens == 1 else "prefill"
    out = {"ctx": ctx, "position": pos, "tokens": tokens}
    hosts = {}
    for name, make in (("isa", lambda: IsaLLM(folder, config)),
                       ("rtl", lambda: RtlLLM(folder, config, seed=seed, stalls=False,
                                              build_dir=build_dir))):
        say(f"layer step: {name} {phase} of {tokens} at position {pos} of {folder.path}")
        t0 = time.monotonic()
        host = make()
        write_kv_cache(host.image, folder.manifest, caches)
        host.position = pos
        logits = host.decode(token)[None] if tokens == 1 else host.chunk(ids)
        out[f"{name}_seconds"] = round(time.monotonic() - t0, 1)
        hosts[name] = (host, logits)
    (isa, want), (rtl, got) = hosts["isa"], hosts["rtl"]
    if not torch.equal(got, want):
        raise AirfoilError(f"layer step: RTL logits differ from the ISA simulator's in "
                           f"{int((got != want).sum())} of {want.numel()}")
    rows = range(pos, ctx)
    if any(_row_bytes(rtl.image, folder.manifest, p) != _row_bytes(isa.image, folder.manifest,
                                                                    p) for p in rows):
        raise AirfoilError("layer step: the KV rows the RTL wrote differ from the ISA "
                           "simulator's")
    if golden:
        say(f"layer step: golden {phase}")
        g = GoldenLLM(golden_from_folder(folder))
        g.caches = seeded_kv_cache(mm["shape"], pos, seed)
        gold = g.forward(ids)
        if not torch.equal(gold, want):
            raise AirfoilError(f"layer step: ISA simulator logits differ from the golden "
                               f"model's in {int((gold != want).sum())} of {gold.numel()}")
        for i, c in enumerate(g.caches):
            mine = _records(c.k[:, pos:], c.k_sm[:, pos:], c.k_se[:, pos:], mm["record_bytes"])
            at = mm["layout"][f"l{i}.kcache"] + pos * mm["layout"]["kv_row"]
            if mine.tobytes() != bytes(isa.image[at:at + mine.size]):
                raise AirfoilError(f"layer step: layer {i}'s K row differs from the golden's")
    r, m = rtl.runs[-1], isa.runs[-1]
    out.update(rtl_cycles=r["cycles"], model_cycles=m["cycles"],
               model_error=abs(m["cycles"] - r["cycles"]) / r["cycles"],
               instructions=m["instructions"], bytes_read=m["bytes_read"],
               rtl_sim_seconds=round(r["sim_seconds"], 1), golden_checked=bool(golden))
    for u in UNITS:
        out[f"rtl_busy_{u}"] = r.get(f"busy_{u}")
        out[f"model_busy_{u}"] = m.get(f"busy_{u}")
    ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    out["peak_rss_bytes"] = max(u.ru_maxrss for u in ru) * 1024
    say(f"layer step at context {ctx}: RTL {r['cycles']} cycles, cycle model "
        f"{m['cycles']} ({100 * out['model_error']:.2f} % off)")
    return out


def compile_float_layer(shape, config: AccelConfig, recipe, out_dir, *, max_positions: int,
                        seed: int = 0) -> dict:
    """Compile a model of ``shape`` (a :class:`~compiler.reference.LlamaShape`) with seeded
    float weights (standard deviation :data:`compiler.synthetic.WEIGHT_STD`, the
    embedding standard normal, RMSNorm gains about 1) quantized by ``recipe`` (a recipe
    file) through the compiler's pipeline into ``out_dir``; return the manifest.

    What :func:`compiler.synthetic.synthetic_model` cannot make: a model in the streamed
    formats (N:M sparse, BitMoD, INT2/INT3), whose record layout the quantizer decides
    from the values. Its weights are held in memory as float32, about 0.8 GB for a 7B
    layer."""
    from compiler.ir import build_llama_graph, llama_param_shapes
    from compiler.lower_llm import compile_llm
    from compiler.passes import llm_pipeline, quantized_model
    from compiler.synthetic import WEIGHT_STD

    gen = torch.Generator().manual_seed(int(seed))
    params = {}
    for name, dims in llama_param_shapes(shape).items():
        t = torch.randn(dims, generator=gen)
        if len(dims) == 1:
            t = 1.0 + 0.1 * t
        elif "embed" not in name:
            t = t * WEIGHT_STD
        params[name] = t
    q = llm_pipeline(recipe, config).run(build_llama_graph(shape, params))
    del params
    return compile_llm(quantized_model(q), config, out_dir, max_prompt=1,
                       source=f"seeded float weights (seed {seed})",
                       recipe=q.meta.get("recipe"), max_positions=max_positions)
