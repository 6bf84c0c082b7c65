"""Measurements behind the ``quant`` bench figures (see docs/figures.md, section ``quant``).

Each shipped recipe of :data:`RECIPES` (``compiler/recipes/<name>.yaml``) quantizes the
tiny model, calibrated on its training split, and is measured on the held-out split
against the float model: perplexity ratio and next-token agreement over the first
``positions`` held-out positions (windows of :data:`WINDOW`, each from an empty KV
cache), and bits per decoder weight.

A recipe the compiler lowers for :data:`CONFIG` (WGT tiles, or streamed formats and
sparsity through the decode unit) is *compiled*: the folder is written, the integer golden
reads the quantized tensors back from it, and the bits are the image's tile and stream
bytes of the decoder's layers x 8 / their weights. Any other recipe is measured on the
``float`` backend after ``quantize`` (fake quantization: dequantized weights, INT8
per-token activations and KV cache) and its bits are
:func:`compiler.bits_budget.layer_weight_bits`; its figures carry ``_fakequant``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from airfoil.config import load_config
from airfoil.errors import CompileError
from airfoil.folder import load_folder
from airfoil.models import BUILTIN_MODELS
from compiler.backends import execute, logits_float
from compiler.bits_budget import budget_bits, layer_weight_bits
from compiler.calibrate import calibration_tokens, default_calibration
from compiler.importers.hf import import_hf
from compiler.llm_recipe import RECIPE_DIR, load_llm_recipe
from compiler.lower_llm import compile_llm, record_bytes
from compiler.passes import llm_pipeline, quantized_model
from compiler.tokenizer import corpus_split, load_tokenizer
from sim.golden_llm import GoldenLLM, golden_from_folder

__all__ = ["RECIPES", "WINDOW", "POSITIONS", "CONFIG", "recipe_path", "TinyEval",
           "plot_ppl_vs_bits"]

#: The recipes measured, by file name under compiler/recipes/.
RECIPES = ("w8", "w4_rtn", "w4_calibrated", "budget_6p0", "w3_calibrated",
           "2of4_w4_magnitude", "2of4_w4_calibrated", "bitmod3", "ovp4", "mixed",
           "budget_3p0", "budget_2p5", "w4_rtn_embed4")
#: Tokens per evaluation window; held-out positions measured.
WINDOW = 128
POSITIONS = 2048
#: The board config compiled recipes are lowered for (WGT tiles and the decode unit).
CONFIG = "sim_llm_decode"


def recipe_path(name: str) -> Path:
    """The shipped recipe file of a name of :data:`RECIPES`."""
    return Path(RECIPE_DIR) / f"{name}.yaml"


class TinyEval:
    """The tiny model, its calibration windows, held-out text and float reference.

    Parameters
    ----------
    positions : int
        Held-out positions measured.
    calibration_count : int, optional
        Calibration tokens (default :data:`compiler.calibrate.DEFAULT_TOKENS`).
    """

    def __init__(self, positions: int = POSITIONS, calibration_count: int | None = None):
        root = BUILTIN_MODELS["tiny-llama"]
        self.graph = import_hf(root)
        kw = {} if calibration_count is None else {"count": calibration_count}
        self.windows = calibration_tokens(load_tokenizer(root), default=default_calibration(
            root), vocab=self.graph.shape.vocab_size, **kw)
        held = torch.tensor(list(corpus_split()[1]), dtype=torch.int64)
        self.chunks = []
        n = 0
        for start in range(0, len(held) - 1, WINDOW):
            take = min(WINDOW, positions - n, len(held) - 1 - start)
            if take <= 0:
                break
            self.chunks.append((held[start:start + take], held[start + 1:start + take + 1]))
            n += take
        if n < positions:
            raise ValueError(f"held-out split too short for {positions} positions")
        self.positions = n
        self.float_logits = [execute(self.graph, x).to(torch.float64) for x, _ in self.chunks]
        self.float_nll = sum(_nll(lf, y) for lf, (_, y) in zip(self.float_logits, self.chunks))

    def _score(self, logits_of) -> dict:
        nll = agree = 0
        for lf, (x, y) in zip(self.float_logits, self.chunks):
            lq = logits_of(x)
            nll += _nll(lq, y)
            agree += int((lq.argmax(-1) == lf.argmax(-1)).sum())
        return {"ppl": math.exp(nll / self.positions),
                "ppl_ratio": math.exp((nll - self.float_nll) / self.positions),
                "next_token_agreement": agree / self.positions}

    @property
    def float_ppl(self) -> float:
        return math.exp(self.float_nll / self.positions)

    def measure(self, name: str, build_dir="build", log=None) -> dict:
        """Quantize by recipe ``name``, compile it when the lowering takes it, measure.

        Returns ``{"compiled", "ppl", "ppl_ratio", "next_token_agreement",
        "bits_per_weight", "embed_bytes", "head_bytes", "formats", "config_hash"}``.
        """
        recipe = load_llm_recipe(recipe_path(name))
        q = llm_pipeline(recipe, calibration=self.windows, log=log).run(self.graph)
        plan = q.meta["plan"]
        d, vocab = self.graph.shape.hidden_size, self.graph.shape.vocab_size
        config = load_config(CONFIG)
        out = {"embed_bytes": vocab * record_bytes(d, config.word_bytes,
                                                   recipe.embedding_group),
               "formats": _format_counts(q), "config_hash": None}
        folder = Path(build_dir) / "bench_quant" / name
        manifest = None
        try:
            manifest = compile_llm(quantized_model(q), config, folder,
                                   source=f"tiny-llama ({name})")
        except CompileError as e:
            if log is not None:
                log(f"quant {name}: not lowered for {config.name} ({e}); fake-quantized "
                    f"figures")
        if manifest is not None:
            gold = GoldenLLM(golden_from_folder(load_folder(folder, config)))
            out.update(self._score(lambda x: logits_float(gold.prefill(x))))
            lin = manifest["model"]["linears"]
            dec = {k: v for k, v in lin.items() if k != "lm_head"}
            out["bits_per_weight"] = (8 * sum(_image_bytes(v) for v in dec.values())
                                      / sum(v["n"] * v["k_in"] for v in dec.values()))
            out["head_bytes"] = _image_bytes(lin["lm_head"])
            out["compiled"] = True
            out["config_hash"] = config.config_hash
        else:
            out.update(self._score(lambda x: execute(q, x).to(torch.float64)))
            out["bits_per_weight"] = budget_bits(q, plan)
            head = q.linear_layers()["lm_head"]
            n, k = q.params[head.attrs["weight"]].shape
            hp = plan["lm_head"]
            out["head_bytes"] = layer_weight_bits(hp, n, k) // 8
            out["compiled"] = False
        if "budget" in q.meta:
            out["budget_reached"] = q.meta["budget"]["reached"]
        return out


def _image_bytes(linear: dict) -> int:
    """Bytes of one linear layer in the image: its tiles, or its tiles' streams."""
    return sum(st["nbytes"] for t in linear["tiles"] for st in t.get("streams", [t]))


def _format_counts(q) -> dict:
    """``"format sparsity"`` -> number of decoder layers."""
    out: dict = {}
    for layer, lq in q.meta["plan"].items():
        if layer == "lm_head":
            continue
        key = lq.label
        out[key] = out.get(key, 0) + 1
    return out


def _nll(logits: torch.Tensor, y: torch.Tensor) -> float:
    return -float(torch.log_softmax(logits, -1).gather(1, y[:, None]).sum())


def plot_ppl_vs_bits(points: dict, path) -> Path:
    """Write a PNG of perplexity ratio against bits per weight, one point per recipe
    (filled: compiled and run by the integer golden; hollow: fake-quantized)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, r in points.items():
        face = "C0" if r["compiled"] else "none"
        ax.scatter(r["bits_per_weight"], r["ppl_ratio"], s=40, facecolors=face,
                   edgecolors="C0")
        ax.annotate(name, (r["bits_per_weight"], r["ppl_ratio"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("bits per decoder weight (scales and N:M metadata included)")
    ax.set_ylabel("held-out perplexity / float perplexity")
    ax.set_yscale("log")
    ax.set_title("tiny-llama: perplexity ratio vs bits per weight\n"
                 "filled: compiled (integer golden); hollow: fake-quantized")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
    return p
