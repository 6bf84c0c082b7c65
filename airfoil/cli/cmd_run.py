"""``airfoil run``: run a compiled folder on a backend (torch golden, ISA simulator, RTL,
the Alveo kernel through XRT, a ULX3S board over its USB UART).

The folder's manifest decides what runs: an LLM folder generates text from ``--prompt``
(or ``--tokens``) for ``--max-new-tokens`` tokens on the ``torch`` golden, the ``isa``
simulator or the ``rtl`` core, each token chosen on chip (``TOPK_SAMPLE``): greedily, or
with ``--top-k K --temperature T --seed S`` drawn from the ``K`` largest logits, the same
tokens on every backend; an encoder folder (BERT) runs the sentence of ``--prompt`` (with
its ``[CLS]`` .. ``[SEP]``) as one prefill and ``--save`` writes its sentence embedding
(float32, pooled and normalised on the host in float from the hidden states the device
wrote); a linear-layer folder runs one input vector on any backend.
"""

from __future__ import annotations

import argparse
import importlib
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from .. import fixedpoint as fx
from ..config import load_config
from ..embedding import folder_embedding
from ..errors import AirfoilError
from ..folder import encoder, load_folder
from ..formats import quantize_act
from .argtypes import SEED, int_in

BACKENDS = ("torch", "isa", "rtl", "xrt", "board")


def temperature(text: str) -> float:
    """An ``argparse`` type: a sampling temperature the chip's inverse temperature holds."""
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        fx.inv_temperature(t)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return t


temperature.__name__ = "temperature"


def register(sub):
    p = sub.add_parser("run", help="run a compiled folder on a backend")
    p.add_argument("folder", metavar="OUT", help="output folder of `airfoil compile`")
    p.add_argument("--backend", choices=BACKENDS, default="isa",
                   help="torch (golden model), isa (instruction simulator), rtl, xrt (the "
                        "Alveo kernel, linear-layer folders) or board (a ULX3S at --port)")
    p.add_argument("--config", default=None,
                   help="board config name or YAML path (default: the built-in config the "
                        "folder was compiled for)")
    p.add_argument("--input", default=None, metavar="x.npy",
                   help="input vector of K values: integers are INT8 as they are, floats are "
                        "quantized with the manifest's input scale (default: the stored input)")
    p.add_argument("--seed", type=SEED, default=0,
                   help="seed of top-k sampling (its low 32 bits) and of the rtl backend's "
                        "stalls (default: 0)")
    p.add_argument("--xclbin", default=None, metavar="FILE",
                   help="xrt backend: the kernel's .xclbin (v++ build of `airfoil package`)")
    p.add_argument("--device", type=int_in(0, 255), default=0, metavar="N",
                   help="xrt backend: XRT device index (default: 0)")
    p.add_argument("--port", default=None, metavar="DEV",
                   help="board backend: the board's serial port (e.g. /dev/ttyUSB0)")
    p.add_argument("--save", default=None, metavar="y.npy",
                   help="write the outputs (int64), or an encoder folder's sentence "
                        "embedding (float32)")
    p.add_argument("--prompt", default=None, metavar="TEXT",
                   help="LLM folder: the prompt, encoded with the folder's tokenizer.json")
    p.add_argument("--tokens", default=None, metavar="ID,ID,...",
                   help="LLM folder: the prompt as comma-separated token ids")
    p.add_argument("--max-new-tokens", type=int_in(0, 2 ** 16), default=16, metavar="N",
                   help="LLM folder: tokens to generate (default: 16)")
    p.add_argument("--top-k", type=int_in(1, fx.TOPK_MAX), default=1, metavar="K",
                   help="LLM folder: draw each token from the K largest logits (default: 1, "
                        "greedy; ties go to the lowest token id)")
    p.add_argument("--temperature", type=temperature, default=1.0, metavar="T",
                   help="LLM folder: temperature of top-k sampling (default: 1.0)")
    p.set_defaults(func=run)


def checksum(out: torch.Tensor) -> str:
    """CRC-32 of the outputs as little-endian int64, in hex (for comparing backends)."""
    return f"{zlib.crc32(out.to(torch.int64).numpy().astype('<i8').tobytes()):08x}"


def load_input(path, folder):
    """Read ``--input``: an .npy of K integers (INT8) or floats (quantized)."""
    p = Path(path)
    try:
        a = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise AirfoilError(f"input file {str(p)!r}: not a readable .npy ({e})") from None
    a = np.asarray(a).reshape(-1)
    if a.dtype.kind == "f":
        return quantize_act(torch.from_numpy(a.astype(np.float64)),
                            folder.manifest["input"]["scale"])
    if a.dtype.kind not in "iu":
        raise AirfoilError(f"input file {p.name}: dtype {a.dtype} is neither integer nor float")
    return torch.from_numpy(a.astype(np.int64))


def rtl_module():
    """Import the RTL backend lazily; one-line error if it is not there yet."""
    name = f"{__package__}.backend_rtl"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        raise AirfoilError("the rtl backend is not available in this build "
                           "(airfoil/cli/backend_rtl.py is missing)") from None


def run_backend(backend, folder, config, x_q=None, seed=0, *, xclbin=None, device=0,
                port=None):
    """Run one backend; return ``(outputs, stats)`` (stats empty for torch); ``xclbin``
    and ``device`` are the xrt backend's, ``port`` the board backend's."""
    if backend == "torch":
        from sim.golden import run_golden
        return run_golden(folder, x_q), {}
    if backend == "isa":
        from sim.isa_sim import run_isa
        return run_isa(folder, config, x_q)
    if backend == "rtl":
        return rtl_module().run_rtl(folder.path, config, x_q, seed=seed)
    if backend == "xrt":
        from .backend_xrt import run_xrt
        return run_xrt(folder.path, config, x_q, xclbin=xclbin, device=device)
    if backend == "board":
        from .backend_board import run_board
        return run_board(folder, config, x_q, port=port)
    raise AirfoilError(f"unknown backend {backend!r} (accepted: {', '.join(BACKENDS)})")


def prompt_tokens(args, folder) -> tuple[list[int], object]:
    """The prompt of an LLM run as token ids, and the tokenizer (or None)."""
    tok = None
    if folder.path is not None and (folder.path / "tokenizer.json").is_file():
        from compiler.tokenizer import load_tokenizer
        tok = load_tokenizer(folder.path)
    if (args.prompt is None) == (args.tokens is None):
        raise AirfoilError("give exactly one of --prompt TEXT and --tokens ID,ID,... for an "
                           "LLM folder")
    if args.tokens is not None:
        try:
            ids = [int(t) for t in args.tokens.split(",") if t.strip()]
        except ValueError:
            raise AirfoilError(f"--tokens {args.tokens!r} is not a comma-separated list of "
                               f"integers") from None
    else:
        if tok is None:
            raise AirfoilError(f"{folder.path}: no tokenizer.json in the folder; give the "
                               f"prompt as --tokens ID,ID,...")
        try:
            args.prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise AirfoilError("--prompt is not UTF-8 text (give the prompt as UTF-8 or as "
                               "--tokens ID,ID,...)") from None
        ids = tok.encode(args.prompt, special=encoder(folder.manifest["model"]["shape"]))
    if not ids:
        raise AirfoilError("the prompt is empty (at least one token is needed)")
    vocab = folder.manifest["model"]["shape"]["vocab_size"]
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise AirfoilError(f"prompt token {bad[0]} is outside the vocabulary 0..{vocab - 1}")
    return ids, tok


def generate_backend(backend, folder, config, prompt, max_new_tokens, *, seed=0,
                     sampling=None):
    """Generation on ``torch`` (golden), ``isa`` or ``rtl``, greedy unless ``sampling``
    (:class:`airfoil.fixedpoint.Sampling`) says otherwise; return ``(tokens, runs)``."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise AirfoilError(f"--max-new-tokens must be a non-negative integer, not "
                           f"{max_new_tokens!r}")
    mm = folder.manifest["model"]
    if len(prompt) + max(max_new_tokens - 1, 0) > mm["max_positions"]:
        raise AirfoilError(f"prompt plus {max_new_tokens} new tokens exceed the "
                           f"{mm['max_positions']} positions {folder.path} holds")
    if backend == "torch":
        from sim.golden_llm import generate_folder
        return generate_folder(folder, prompt, max_new_tokens, sampling=sampling)[0], []
    if backend == "isa":
        from sim.isa_sim import generate_isa
        return generate_isa(folder, config, prompt, max_new_tokens, sampling=sampling)
    if backend == "rtl":
        from .backend_rtl import generate_rtl
        return generate_rtl(folder, config, prompt, max_new_tokens, seed=seed,
                            sampling=sampling)
    raise AirfoilError(f"unknown backend {backend!r} (accepted: torch, isa, rtl)")


def run_llm(args, folder, config) -> int:
    prompt, tok = prompt_tokens(args, folder)
    sampling = fx.Sampling(args.top_k, args.temperature, args.seed)
    out, runs = generate_backend(args.backend, folder, config, prompt, args.max_new_tokens,
                                 seed=args.seed, sampling=sampling)
    print(f"backend {args.backend}: {len(prompt)} prompt tokens, {len(out)} new tokens")
    print(f"tokens: {' '.join(map(str, out))}")
    if tok is not None:
        print(f"prompt: {tok.decode(prompt)}")
        print(f"text: {tok.decode(out)}")
    else:
        print("text: (no tokenizer.json in the folder: the new tokens are shown as ids)")
    dec = [r for r in runs if r["phase"] == "decode"]
    pre = [r for r in runs if r["phase"] == "prefill"]
    if pre:
        line = (f"cycles: prefill {sum(r['cycles'] for r in pre)} "
                f"({sum(r['tokens'] for r in pre)} tokens in {len(pre)} chunks)")
        if dec:
            line += (f", decode {sum(r['cycles'] for r in dec) // len(dec)} per token "
                     f"(mean of {len(dec)})")
        print(line)
    return 0


def save_target(path) -> Path:
    """The ``--save`` path, checked before anything runs: a file in an existing
    directory."""
    p = Path(path)
    if p.is_dir() or not p.parent.is_dir():
        raise AirfoilError(f"--save {str(p)!r}: not a file in an existing directory")
    return p


def save_npy(path, array: np.ndarray) -> None:
    """Write ``array`` to the .npy file ``path`` (exactly that name) whole or not at all:
    into a temporary file beside it, then renamed over it."""
    p = save_target(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise AirfoilError(f"--save {str(p)!r}: cannot write ({e.strerror})") from None


def encoder_embedding(backend, folder, config, ids, *, seed=0):
    """The sentence embedding of ``ids`` on ``torch`` (golden), ``isa`` or ``rtl``;
    return ``(embedding, runs)``."""
    if backend == "torch":
        from sim.golden_llm import GoldenLLM, golden_from_folder
        mm = folder.manifest["model"]
        if len(ids) > mm["max_prompt"]:
            raise AirfoilError(f"a sentence of {len(ids)} tokens is longer than the "
                               f"{mm['max_prompt']} the encoder folder takes in its one "
                               f"prefill (max_prompt)")
        hidden = GoldenLLM(golden_from_folder(folder)).prefill(ids)
        return folder_embedding(hidden, mm), []
    if backend == "isa":
        from sim.isa_sim import IsaLLM
        host = IsaLLM(folder, config)
    elif backend == "rtl":
        host = rtl_module().RtlLLM(folder, config, seed=seed)
    else:
        raise AirfoilError(f"backend {backend!r} does not run encoder folders (accepted: "
                           f"torch, isa, rtl)")
    return host.embed(ids), host.runs


def run_encoder(args, folder, config) -> int:
    ids, _ = prompt_tokens(args, folder)
    if args.save:
        save_target(args.save)
    vec, runs = encoder_embedding(args.backend, folder, config, ids, seed=args.seed)
    spec = folder.manifest["model"]["sentence_embedding"]
    norm = ", normalised" if spec["normalize"] else ""
    print(f"backend {args.backend}: {len(ids)} tokens, embedding of {vec.numel()} values "
          f"({spec['pooling']} pooling{norm}, on the host in float)")
    print(f"first values: {' '.join(f'{v:.6g}' for v in vec[:8].tolist())}"
          f"{' ...' if vec.numel() > 8 else ''}")
    if runs:
        print(f"cycles: {runs[0]['cycles']} ({len(ids)} tokens)")
    if args.save:
        save_npy(args.save, vec.numpy().astype(np.float32))
    return 0


def run(args) -> int:
    if args.config is not None:
        config = load_config(args.config)
    else:
        config = load_folder(args.folder).resolve_config()
    folder = load_folder(args.folder, config)
    if folder.kind == "llm":
        if args.input is not None:
            raise AirfoilError("--input applies to linear-layer folders; an LLM folder takes "
                               "--prompt or --tokens")
        if encoder(folder.manifest["model"]["shape"]):
            return run_encoder(args, folder, config)
        if args.save:
            raise AirfoilError(f"--save applies to encoder and linear-layer folders; "
                               f"{args.folder} holds a decoder (its new tokens are printed)")
        return run_llm(args, folder, config)
    if args.prompt is not None or args.tokens is not None:
        raise AirfoilError(f"{args.folder} holds a linear layer; --prompt and --tokens apply "
                           f"to LLM folders")
    x_q = load_input(args.input, folder) if args.input else None
    out, stats = run_backend(args.backend, folder, config, x_q, seed=args.seed,
                             xclbin=args.xclbin, device=args.device, port=args.port)
    m = folder.manifest
    head = " ".join(str(v) for v in out[:8].tolist())
    print(f"backend {args.backend}: {out.numel()} outputs int{m['output']['bits']} "
          f"(scale {m['output']['scale']:.6g}), checksum {checksum(out)}")
    print(f"first values: {head}{' ...' if out.numel() > 8 else ''}")
    print(f"range {int(out.min())}..{int(out.max())}")
    if "cycles" in stats:
        busy = ", ".join(f"{k[5:]} {v}" for k, v in stats.items() if k.startswith("busy_"))
        extra = f", {stats['instructions']} instructions" if "instructions" in stats else ""
        print(f"cycles {stats['cycles']}{extra}" + (f"; busy cycles: {busy}" if busy else ""))
    if args.save:
        np.save(args.save, out.numpy())
    return 0
