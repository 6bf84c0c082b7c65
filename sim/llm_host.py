"""The host side of an LLM folder's length-adaptive programs, for every executing backend.

Before each run the host writes the parameter block (int32 ``pos``, ``T``,
``len = pos + T``), the sampling block (:meth:`airfoil.fixedpoint.Sampling.block`) and
the ``T`` token ids into the memory image, runs the phase's program (``prefill`` for each
chunk of the prompt at its start position, ``decode`` for each new token), and reads the
``T`` logit rows and the ``T`` next-token ids the chip chose (``TOPK_SAMPLE``) back; the
KV cache lives in the image, so it persists between runs. Generation feeds the chip's
last choice back as the next token (greedy by default: the first index of the largest
logit). An encoder folder runs a sentence as one prefill (every token sees every other)
and reads back its hidden states; its embedding is pooled on the host in float
(:mod:`airfoil.embedding`).

:class:`LLMHost` does all of that; a backend subclass only says how a program runs on
an image (:meth:`LLMHost.execute`): the ISA simulator in place, the RTL core through
Verilator with the KV cache read back.
"""

from __future__ import annotations

import numpy as np
import torch

from airfoil.config import AccelConfig
from airfoil.embedding import folder_embedding
from airfoil.errors import AirfoilError, ProgramError
from airfoil.fixedpoint import Sampling
from airfoil.folder import encoder, llm_phases, output_width, parameter_block

__all__ = ["LLMHost", "prefill_chunks"]


def prefill_chunks(n: int, max_prompt: int, prefill_positions: int) -> list[tuple[int, int]]:
    """The prefill runs of an ``n``-token prompt, ``(start, end)`` positions: chunks of
    ``max_prompt`` tokens up to ``prefill_positions`` (the positions a chunk may reach),
    the last one shorter; the host runs the tokens after the last chunk as decode steps."""
    end = min(n, prefill_positions)
    return [(a, min(a + max_prompt, end)) for a in range(0, end, max_prompt)]


class LLMHost:
    """One sequence of an LLM folder: prefill, decode, generate.

    Parameters
    ----------
    folder : Folder
        A compiled folder of kind ``llm``.
    config : AccelConfig
        The configuration it was compiled for.
    sampling : Sampling, optional
        How the chip chooses the next tokens (default: greedy).
    """

    def __init__(self, folder, config: AccelConfig, sampling: Sampling | None = None):
        if folder.kind != "llm":
            raise AirfoilError(f"{folder.path}: not an LLM folder (kind {folder.kind!r})")
        if folder.manifest["config_hash"] != config.config_hash:
            raise AirfoilError(f"folder compiled for config hash "
                               f"{folder.manifest['config_hash']}, but config {config.name!r} "
                               f"has hash {config.config_hash}")
        self.folder, self.config = folder, config
        self.image = bytearray(folder.image)
        mm = folder.manifest["model"]
        self.layout = mm["layout"]
        self.vocab = mm["shape"]["vocab_size"]
        self.width, self.encoder = output_width(mm["shape"]), encoder(mm["shape"])
        self.max_pos, self.max_prompt = mm["max_positions"], mm["max_prompt"]
        self.prefill_positions = mm["prefill_positions"]
        self.programs = {}
        for phase in llm_phases(mm["shape"]):
            prog = folder.phase_program(phase)
            if prog.config_hash != config.config_hash_bytes:
                raise ProgramError(f"{phase} program compiled for config hash "
                                   f"{prog.config_hash.hex()}, not {config.config_hash}")
            self.programs[phase] = prog
        self.position = 0
        self.runs: list[dict] = []
        self.sampling = Sampling() if sampling is None else sampling
        if self.sampling.k > config.limits.topk_max:
            raise AirfoilError(f"top-k {self.sampling.k} is beyond the sampler of config "
                               f"'{config.name}' (accepted: 1..{config.limits.topk_max}, "
                               f"its limits.topk_max)")
        #: The token ids the chip chose after each of the last run's tokens.
        self.next_tokens: list[int] = []

    # -- what a backend provides ----------------------------------------------------------

    def execute(self, phase: str, T: int) -> dict:
        """Run ``phase``'s program on :attr:`image` (updated in place: logits, KV cache);
        return the run's statistics (at least ``cycles``)."""
        raise NotImplementedError

    # -- the host ----------------------------------------------------------------------------

    def kv_span(self) -> tuple[int, int]:
        """Byte range of the image holding every layer's K and V cache."""
        lay = self.layout
        starts = [v for k, v in lay.items() if k.endswith(("kcache", "vcache"))]
        if not starts:
            raise AirfoilError("the folder's layout names no KV cache")
        lo = min(starts)
        ends = [v for k, v in lay.items() if isinstance(v, int) and v > max(starts)]
        hi = min(ends) if ends else len(self.image)
        return lo, hi

    def logits_span(self, T: int) -> tuple[int, int]:
        """Byte range of the ``T`` logit rows."""
        return self.layout["logits"], self.layout["logits"] + T * self.layout["logits_row"]

    def next_span(self, T: int) -> tuple[int, int]:
        """Byte range of the ``T`` next-token ids the chip chose."""
        return self.layout["next"], self.layout["next"] + 4 * T

    def _run(self, phase: str, tokens) -> torch.Tensor:
        tok = [int(t) for t in tokens]
        T, pos = len(tok), self.position
        if any(not 0 <= t < self.vocab for t in tok):
            raise AirfoilError(f"token id outside the vocabulary 0..{self.vocab - 1}")
        if pos + T > self.max_pos:
            raise AirfoilError(f"{pos + T} positions exceed the {self.max_pos} the folder holds")
        lay = self.layout
        self.image[lay["params"]:lay["params"] + 16] = parameter_block(
            pos, T, self.config.buffers.kv_banks)
        self.image[lay["ids"]:lay["ids"] + 4 * T] = np.array(tok, dtype="<i4").tobytes()
        block = self.sampling.block()
        self.image[lay["sampling"]:lay["sampling"] + len(block)] = block
        stats = self.execute(phase, T)
        stats["phase"], stats["tokens"], stats["position"] = phase, T, pos
        self.runs.append(stats)
        self.position = pos + T
        lo, hi = self.next_span(T)
        self.next_tokens = np.frombuffer(self.image[lo:hi], dtype="<i4").tolist()
        row = lay["logits_row"] // 4
        raw = np.frombuffer(self.image, dtype="<i4", count=T * row, offset=lay["logits"])
        return torch.from_numpy(raw.astype(np.int64)).reshape(T, row)[:, :self.width]

    def prefill(self, tokens, *, by_token: bool = False) -> torch.Tensor:
        """Start a sequence with ``tokens``; return their ACT logits (T, vocab).

        A decoder's prompt runs as chunks of at most ``max_prompt`` tokens, each a run of
        the one prefill program at the chunk's start position (:meth:`chunks`): a chunk's
        tokens attend to the cached positions before it and causally to each other. The
        tokens past the positions a chunk may reach (``prefill_positions``) follow as
        decode steps. Every run is the same arithmetic, so the logits equal a token-by-token
        run's (``by_token``: every token a decode step, a weight pass each). An encoder's
        sentence is one prefill (every token sees every other).
        """
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise AirfoilError("the prompt is empty (at least one token is needed)")
        if self.encoder and len(tokens) > self.max_prompt:
            raise AirfoilError(f"a sentence of {len(tokens)} tokens is longer than the "
                               f"{self.max_prompt} the encoder folder takes in its one "
                               f"prefill (max_prompt)")
        self.position = 0
        chunks = [(0, 0)] if by_token and not self.encoder else self.chunks(len(tokens))
        head = [self.chunk(tokens[a:b]) for a, b in chunks if b > a]
        rest = [self._run("decode", [t]) for t in tokens[chunks[-1][1]:]]
        return torch.cat(head + rest)

    def chunk(self, tokens) -> torch.Tensor:
        """Run one prefill chunk of ``tokens`` after the cached positions (what
        :meth:`prefill` runs for each of its chunks); return their ACT logits (T, vocab)."""
        tokens = [int(t) for t in tokens]
        if not 1 <= len(tokens) <= self.max_prompt:
            raise AirfoilError(f"a chunk of {len(tokens)} tokens: the prefill program takes "
                               f"1..{self.max_prompt}")
        if self.position + len(tokens) > self.prefill_positions:
            raise AirfoilError(f"a chunk ending at position {self.position + len(tokens) - 1}"
                               f": the prefill reaches positions below "
                               f"{self.prefill_positions}")
        return self._run("prefill", tokens)

    def chunks(self, n: int) -> list[tuple[int, int]]:
        """The prefill runs of an ``n``-token prompt (:func:`prefill_chunks`)."""
        return prefill_chunks(n, self.max_prompt, self.prefill_positions)

    def decode(self, token: int) -> torch.Tensor:
        """Run one token after the cached positions; return its ACT logits (vocab,)."""
        if self.encoder:
            raise AirfoilError("an encoder folder has no decode step (a sentence runs as "
                               "one prefill)")
        return self._run("decode", [token])[0]

    def embed(self, tokens) -> torch.Tensor:
        """An encoder folder's float32 sentence embedding of ``tokens`` (one sentence)."""
        if not self.encoder:
            raise AirfoilError("a sentence embedding needs an encoder folder (this one "
                               "holds a decoder)")
        return folder_embedding(self.prefill(tokens), self.folder.manifest["model"])

    def generate(self, prompt, max_new_tokens: int) -> list[int]:
        """The ``max_new_tokens`` tokens after ``prompt``, each the one the chip chose
        after the last run (:attr:`sampling`)."""
        out: list[int] = []
        if max_new_tokens:
            self.prefill(prompt)
            while True:
                out.append(self.next_tokens[-1])
                if len(out) == max_new_tokens:
                    break
                self.decode(out[-1])
        return out
