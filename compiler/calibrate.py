"""Calibration: statistics of every linear layer's inputs on sample text, and AWQ scaling.

The float graph (:mod:`compiler.ir`, the ``float`` backend) runs the calibration tokens in
windows of :data:`WINDOW` positions, each from an empty KV cache, and every distinct
linear input (the value several projections read, such as an RMSNorm's output, counts
once) accumulates its Gram matrix ``H = X^T X`` in float64 over the tokens: ``k x k`` per
input whatever the number of tokens. The methods of :mod:`compiler.quant_algorithms`
read ``H``. The matrices are computed a decoder layer at a time, when a pass first asks
for one of the layer's inputs, and freed once the last layer reading an input is
quantized (:class:`CalibrationStats`), so memory is bounded by one decoder layer's
widths, not the model's (LLaMA-2-7B: 1.37 GB, not 44 GB): a pass over the windows per
decoder layer, each stopping after that layer.

The text: a file the user names (``airfoil compile ... --calibration FILE``), tokenized by
the model's tokenizer; without one, for the shipped tiny model, its training split
(:func:`compiler.tokenizer.corpus_split`), never the held-out text the accuracy figures
are measured on.

Passes (``apply(graph) -> graph``):

* :class:`Calibrate` (step ``calibrate``) records the statistics in ``meta["calibration"]``;
* :class:`ActivationAwareScale` (step ``awq``) scales the input channels of the layers
  whose recipe method is ``awq`` (:func:`compiler.quant_algorithms.awq_scales`) and folds
  ``1 / s`` into the producer of their input, where the graph allows it exactly:

  - ``q``, ``k``, ``v`` projections: into the attention RMSNorm's gain;
  - ``gate``, ``up`` projections: into the MLP RMSNorm's gain;
  - ``down`` projection: into the rows of the ``up`` projection (the SiLU-gated product
    is linear in it);
  - ``o`` projection: into the rows of the ``v`` projection (the attention context is
    linear in the values); one scale per head dimension shared by all heads, since
    grouped-query heads share value heads;
  - ``lm_head``: into the final RMSNorm's gain (a tied head gets a weight of its own, the
    embedding is unchanged).

  The statistics of a scaled input become ``H / (s s^T)`` (the inputs are divided by
  ``s``), so a later ``gptq`` sees the layer it quantizes. An input read by, or folding
  into, a layer a quantized checkpoint gave (``graph.prequantized``) is not scaled.
"""

from __future__ import annotations

import re

import torch

from airfoil.errors import CompileError
from airfoil.textfile import read_text

from .ir import Graph, Pass
from .quant_algorithms import awq_scales, format_spec

__all__ = ["WINDOW", "DEFAULT_TOKENS", "CALIBRATION_LIMIT", "CalibrationStats",
           "calibration_text", "calibration_tokens", "collect_grams", "Calibrate",
           "ActivationAwareScale", "default_calibration", "fit_windows", "input_layers",
           "last_readers"]

#: Positions per calibration window (each from an empty KV cache).
WINDOW = 128
#: Calibration tokens used by default.
DEFAULT_TOKENS = 4096
#: Largest calibration file read (bytes).
CALIBRATION_LIMIT = 64 << 20
#: A decoder layer's name within a linear layer's (HF ``model.layers.3.mlp.up_proj``).
_DECODER_LAYER = re.compile(r"^(.*?\.layers?\.\d+)\.")


class _GramStore:
    """The Gram matrices of one float graph's linear inputs, computed a decoder layer at a
    time when first asked for and dropped when released.

    The graph is a copy taken at the calibrate step, so later passes (AWQ's scaling, the
    quantizer) do not change what it computes. A request computes the asked value and
    the other inputs of its decoder layer (:func:`input_layers`) not yet released, in one
    run of the windows that stops after the last of them; a released value asked for
    again is recomputed alone.

    Members
    -------
    held_bytes, peak_bytes : int
        Bytes of the Gram matrices held now and at most at once.
    runs : int
        Passes over the calibration windows made.
    """

    def __init__(self, graph: Graph, windows: list):
        self.graph, self.windows = graph, windows
        self.layer_of = input_layers(graph)
        self.held: dict[str, torch.Tensor] = {}
        self.released: set[str] = set()
        self.held_bytes = self.peak_bytes = self.runs = 0

    def get(self, value: str) -> torch.Tensor:
        if value not in self.layer_of:
            raise CompileError(f"no calibration statistics of value {value!r} (run the "
                               f"calibrate step on this graph)")
        if value not in self.held:
            layer = self.layer_of[value]
            want = [v for v, l in self.layer_of.items() if v == value or (
                l == layer and v not in self.held and v not in self.released)]
            for v, H in collect_grams(self.graph, want, self.windows).items():
                self.held[v] = H
                self.held_bytes += H.numel() * H.element_size()
            self.peak_bytes = max(self.peak_bytes, self.held_bytes)
            self.runs += 1
        return self.held[value]

    def release(self, value: str) -> None:
        H = self.held.pop(value, None)
        if H is not None:
            self.held_bytes -= H.numel() * H.element_size()
        self.released.add(value)


class _GivenGrams:
    """A :class:`_GramStore` of Gram matrices computed beforehand."""

    def __init__(self, grams: dict):
        self.grams, self.windows = grams, []
        self.layer_of = dict.fromkeys(grams, "")
        self.peak_bytes = sum(H.numel() * H.element_size() for H in grams.values())
        self.runs = 0

    def get(self, value: str) -> torch.Tensor:
        if value not in self.grams:
            raise CompileError(f"no calibration statistics of value {value!r}")
        return self.grams[value]

    def release(self, value: str) -> None:
        pass


class CalibrationStats:
    """Gram matrices of linear inputs over the calibration tokens, in bounded memory.

    A value's ``H`` is computed on first use (with the rest of its decoder layer's
    inputs) and freed by :meth:`release` once its layers are quantized, so at most about
    one decoder layer's matrices are held at once, not the whole model's.

    Members
    -------
    tokens : int
        Tokens accumulated.
    windows : list[torch.Tensor]
        The token windows run (for sensitivity measurements on the same text).
    peak_bytes : int
        Most bytes of Gram matrices held at once so far.

    Shared, not copied, between graph copies (like the graph's parameters): passes that
    change a statistic build a new object (sharing the store of computed matrices).
    """

    def __init__(self, store: _GramStore, scales: dict | None = None):
        self._store, self._scales = store, dict(scales or {})
        self.windows = store.windows
        self.tokens = sum(int(w.numel()) for w in store.windows)

    @classmethod
    def of_graph(cls, graph: Graph, windows) -> "CalibrationStats":
        """The statistics of a float graph on token windows (computed when asked for)."""
        if graph.qweights:
            raise CompileError("calibrate must run before quantize (on the float graph)")
        return cls(_GramStore(graph.copy(), fit_windows(windows, graph.shape)))

    @classmethod
    def of_rows(cls, rows: dict) -> "CalibrationStats":
        """The statistics of given activations: value name -> ``M x K`` rows (one linear
        layer's calibration sample, :func:`compiler.linear.compile_linear`)."""
        return cls(_GivenGrams({v: x.to(torch.float64).T @ x.to(torch.float64)
                                for v, x in rows.items()}))

    def __deepcopy__(self, memo):
        return self

    @property
    def peak_bytes(self) -> int:
        return self._store.peak_bytes

    @property
    def inputs(self) -> tuple[str, ...]:
        """The linear input values whose statistics it gives (computed when asked for)."""
        return tuple(self._store.layer_of)

    @property
    def runs(self) -> int:
        """Passes over the calibration windows made so far."""
        return self._store.runs

    def of(self, value: str) -> torch.Tensor:
        """``H`` of a linear input value (divided by ``s s^T`` when :meth:`scaled`);
        :class:`CompileError` when the value is not a linear input."""
        H = self._store.get(value)
        s = self._scales.get(value)
        return H if s is None else H / (s.unsqueeze(1) * s.unsqueeze(0))

    def release(self, value: str) -> None:
        """Free ``value``'s ``H`` (asking for it again recomputes it)."""
        self._store.release(value)

    def scaled(self, value: str, s: torch.Tensor) -> "CalibrationStats":
        """A copy in which ``value``'s inputs are divided by ``s`` (``H / (s s^T)``)."""
        return CalibrationStats(self._store, {**self._scales, value: s})


def calibration_text(path) -> str:
    """The text of a calibration file (UTF-8, at most :data:`CALIBRATION_LIMIT` bytes)."""
    return read_text(path, "calibration file", CompileError, CALIBRATION_LIMIT)


def calibration_tokens(tokenizer, *, path=None, default: bytes | str | None = None,
                       count: int = DEFAULT_TOKENS, vocab: int | None = None,
                       window: int = WINDOW) -> list[torch.Tensor]:
    """Windows of ``window`` tokens (the last may be shorter) of calibration text.

    The text is the file ``path`` when given, else ``default`` (the tiny model's training
    split), else a :class:`CompileError` asks for ``--calibration FILE``. At most
    ``count`` tokens are used, from the start of the text; a text of fewer than 2 tokens
    or with a token outside ``vocab`` is refused.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise CompileError(f"calibration tokens must be an integer of at least 2, not "
                           f"{count!r}")
    if path is not None:
        text, where = calibration_text(path), f"calibration file {str(path)!r}"
    elif default is not None:
        text, where = default, "the calibration text"
    else:
        raise CompileError("this model has no default calibration text: name one with "
                           "--calibration FILE")
    if isinstance(text, bytes):
        ids = list(text[:count])
    else:
        ids = tokenizer.encode(text)[:count]
    if len(ids) < 2:
        raise CompileError(f"{where} holds {len(ids)} token(s); calibration needs at least 2")
    if vocab is not None and (min(ids) < 0 or max(ids) >= vocab):
        raise CompileError(f"{where} gives a token outside the model's vocabulary "
                           f"0..{vocab - 1}")
    t = torch.tensor(ids, dtype=torch.int64)
    return [t[i:i + window] for i in range(0, len(ids), window)]


def fit_windows(windows, shape) -> list[torch.Tensor]:
    """The windows cut to the model's positions; :class:`CompileError` for a token outside
    its vocabulary."""
    out = []
    for w in windows:
        if w.numel() and (int(w.min()) < 0 or int(w.max()) >= shape.vocab_size):
            raise CompileError(f"the calibration text gives a token outside the model's "
                               f"vocabulary 0..{shape.vocab_size - 1}")
        step = shape.max_position_embeddings
        out.extend(w[i:i + step] for i in range(0, w.numel(), step))
    return out


class _WindowDone(Exception):
    """Raised by the observer once a window gave every value asked for."""


def collect_grams(graph: Graph, values, windows) -> dict:
    """Run the float graph on each token window; accumulate the Gram ``X^T X`` (float64)
    of each value of ``values``, stopping each run after the last of them."""
    from .backends import execute

    want = set(values)
    gram: dict[str, torch.Tensor] = {}
    for w in windows:
        seen = set()

        def observe(name, value):
            if name in want:
                x = value.detach().to(torch.float64).reshape(-1, value.shape[-1])
                gram[name] = gram[name] + x.T @ x if name in gram else x.T @ x
                seen.add(name)
                if seen == want:
                    raise _WindowDone

        try:
            execute(graph, w, observe=observe)
        except _WindowDone:
            pass
    return gram


def input_layers(graph: Graph) -> dict[str, str]:
    """Each linear input value (graph order) -> the decoder layer of its first reader
    (``model.layers.3``; a layer outside the decoder stack, ``lm_head``, is its own)."""
    out = {}
    for n in graph.by_op("linear"):
        m = _DECODER_LAYER.match(n.attrs["layer"])
        out.setdefault(n.inputs[0], m.group(1) if m else n.attrs["layer"])
    return out


def last_readers(graph: Graph) -> dict[str, str]:
    """Linear node name -> the input value it is the last reader of (graph order)."""
    last = {n.inputs[0]: n.name for n in graph.by_op("linear")}
    return {node: value for value, node in last.items()}


class Calibrate(Pass):
    """Collect the calibration statistics of a float graph into ``meta["calibration"]``.

    Parameters
    ----------
    windows : list of torch.Tensor
        Token windows (:func:`calibration_tokens`).
    """

    name = "calibrate"

    def __init__(self, windows):
        if not windows:
            raise CompileError("calibration needs at least one window of tokens")
        self.windows = list(windows)

    def apply(self, graph: Graph) -> Graph:
        g = graph.copy()
        g.meta["calibration"] = CalibrationStats.of_graph(g, self.windows)
        return g


def _scale_param(g: Graph, node, factor: torch.Tensor, dim: int, tag: str) -> None:
    """Give ``node`` a new weight: its own times ``factor`` along ``dim`` (0: rows, 1:
    columns, or a vector gain). A linear weight gets a new name (a tied head shares its
    tensor with the embedding); an RMSNorm gain is replaced under its name."""
    old = node.attrs["weight"]
    w = g.params[old]
    f = factor.to(torch.float64)
    if w.dim() == 1:
        new = w.to(torch.float64) * f
    elif dim == 0:
        new = w.to(torch.float64) * f.unsqueeze(1)
    else:
        new = w.to(torch.float64) * f.unsqueeze(0)
    if node.op == "rmsnorm":        # a gain is its norm's own: keep its (HF) name
        g.params[old] = new.to(torch.float32)
        return
    name = f"{old}:{tag}:{node.name}"
    g.params[name] = new.to(torch.float32)
    node.attrs["weight"] = name


class ActivationAwareScale(Pass):
    """AWQ scaling of the layers whose recipe method is ``awq`` (module docstring).

    Parameters
    ----------
    recipe : compiler.llm_recipe.LlmRecipe
    """

    name = "awq"

    def __init__(self, recipe):
        self.recipe = recipe

    def _fold(self, g: Graph, value: str):
        """``(node, dim, tie)``: where ``1 / s`` of input ``value`` folds; None if nowhere."""
        prod = g.node(value)
        if prod.op == "rmsnorm":
            return prod, None, 1
        if prod.op == "mul":
            lin = [g.node(i) for i in prod.inputs if g.node(i).op == "linear"]
            return (lin[0], 0, 1) if len(lin) == 1 else None
        if prod.op == "attention":
            v = g.node(prod.inputs[2])
            return (v, 0, prod.attrs["heads"]) if v.op == "linear" else None
        return None

    def apply(self, graph: Graph) -> Graph:
        g = graph.copy()
        stats = g.meta.get("calibration")
        if stats is None:
            raise CompileError("awq needs the calibrate step first")
        plan = self.recipe.resolve(g.linear_layers())
        readers: dict[str, list] = {}
        for n in g.by_op("linear"):
            readers.setdefault(n.inputs[0], []).append(n)
        scaled = []
        for value, nodes in readers.items():
            awq = [n for n in nodes if plan[n.attrs["layer"]].method == "awq"]
            if not awq:
                continue
            fold = self._fold(g, value)
            if fold is None:
                continue
            target, dim, tie = fold
            given = [n for n in nodes + [target] if n.op == "linear"
                     and n.attrs["layer"] in g.prequantized]
            if given:                       # a quantized checkpoint's weights stay as given
                continue
            lq = plan[awq[0].attrs["layer"]]
            H = stats.of(value)
            ws = [g.params[n.attrs["weight"]] for n in awq]
            s = awq_scales(ws, H, format_spec(lq.format), lq.group, tie=tie)
            for n in nodes:
                _scale_param(g, n, s, 1, "awq")
            if tie > 1:                     # one scale per head dimension -> v rows
                kv = g.node(value).attrs["kv_heads"]
                inv = (1.0 / s[: s.numel() // tie]).repeat(kv)
            else:
                inv = 1.0 / s
            _scale_param(g, target, inv, dim, "awq")
            stats.release(value)
            stats = stats.scaled(value, s)
            scaled.append(value)
        g.meta["calibration"] = stats
        g.meta["awq_scaled"] = scaled
        return g.validate()


def default_calibration(model_dir) -> bytes | None:
    """The default calibration text of a model folder: the training split of the shipped
    tiny model (never its held-out split), None for any other model."""
    from pathlib import Path

    from airfoil.models import BUILTIN_MODELS

    from .tokenizer import corpus_split
    tiny = BUILTIN_MODELS.get("tiny-llama")
    if tiny is not None and Path(model_dir).resolve() == Path(tiny).resolve():
        return corpus_split()[0]
    return None
