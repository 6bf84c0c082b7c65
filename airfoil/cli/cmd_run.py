"""``airfoil run``: run a compiled folder on a backend (torch golden, ISA simulator, RTL)."""

from __future__ import annotations

import importlib
import zlib
from pathlib import Path

import numpy as np
import torch

from ..config import load_config
from ..errors import AirfoilError
from ..folder import load_folder
from ..formats import quantize_act

BACKENDS = ("torch", "isa", "rtl")


def register(sub):
    p = sub.add_parser("run", help="run a compiled folder on a backend")
    p.add_argument("folder", metavar="OUT", help="output folder of `airfoil compile`")
    p.add_argument("--backend", choices=BACKENDS, default="isa",
                   help="torch (golden model), isa (instruction simulator) or rtl")
    p.add_argument("--config", default=None,
                   help="board config name or YAML path (default: the built-in config the "
                        "folder was compiled for)")
    p.add_argument("--input", default=None, metavar="x.npy",
                   help="input vector of K values: integers are INT8 as they are, floats are "
                        "quantized with the manifest's input scale (default: the stored input)")
    p.add_argument("--seed", type=int, default=0, help="seed for the rtl backend's stalls")
    p.add_argument("--save", default=None, metavar="y.npy", help="write the outputs (int64)")
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


def run_backend(backend, folder, config, x_q=None, seed=0):
    """Run one backend; return ``(outputs, stats)`` (stats empty for torch)."""
    if backend == "torch":
        from sim.golden import run_golden
        return run_golden(folder, x_q), {}
    if backend == "isa":
        from sim.isa_sim import run_isa
        return run_isa(folder, config, x_q)
    if backend == "rtl":
        return rtl_module().run_rtl(folder.path, config, x_q, seed=seed)
    raise AirfoilError(f"unknown backend {backend!r} (accepted: {', '.join(BACKENDS)})")


def run(args) -> int:
    if args.config is not None:
        config = load_config(args.config)
    else:
        config = load_folder(args.folder).resolve_config()
    folder = load_folder(args.folder, config)
    x_q = load_input(args.input, folder) if args.input else None
    out, stats = run_backend(args.backend, folder, config, x_q, seed=args.seed)
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
