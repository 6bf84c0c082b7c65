"""Linear layers to compile: the built-in default and loaders for ``.pt`` and ``.npz`` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from airfoil.errors import CompileError

__all__ = ["BUILTIN_N", "BUILTIN_K", "builtin_linear", "load_linear"]

#: Shape of the built-in layer: odd (neither a power of two), a multiple of every group
#: size, and small enough that the ISA simulator runs it in about a second.
BUILTIN_N = 1000
BUILTIN_K = 1536


def builtin_linear(n: int = BUILTIN_N, k: int = BUILTIN_K, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(weight, bias)`` of a freshly initialised ``torch.nn.Linear(k, n)``."""
    for name, v in (("n", n), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CompileError(f"layer size {name} must be a positive integer, not {v!r}")
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(seed))
        lin = torch.nn.Linear(k, n)
    finally:
        torch.random.set_rng_state(gen_state)
    return lin.weight.detach().clone(), lin.bias.detach().clone()


def _pick(d: dict, source: str):
    keys = [k for k in d if k == "weight" or k.endswith(".weight")]
    if len(keys) != 1:
        raise CompileError(f"{source}: expected exactly one 'weight' tensor, found "
                           f"{len(keys)} ({', '.join(map(str, d)) or 'none'})")
    wk = keys[0]
    bk = wk[:-len("weight")] + "bias"
    w = torch.as_tensor(np.asarray(d[wk]) if not isinstance(d[wk], torch.Tensor) else d[wk])
    b = d.get(bk)
    if b is not None:
        b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b)
    if w.dim() != 2 or not w.is_floating_point():
        raise CompileError(f"{source}: '{wk}' must be a 2-D float array (N x K), not "
                           f"{w.dtype} {tuple(w.shape)}")
    if b is not None and (tuple(b.shape) != (w.shape[0],) or not b.is_floating_point()):
        raise CompileError(f"{source}: '{bk}' must be a float vector of {w.shape[0]} values, "
                           f"not {b.dtype} {tuple(b.shape)}")
    return w.to(torch.float32), None if b is None else b.to(torch.float32)


def load_linear(path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Load ``(weight, bias)`` from a ``.pt`` (state dict or ``nn.Linear``) or ``.npz`` file.

    The file holds one ``weight`` (N x K) and optionally ``bias`` (N); keys with a module
    prefix such as ``fc.weight`` are accepted when there is exactly one weight.
    """
    p = Path(path)
    if not p.is_file():
        raise CompileError(f"layer file {str(p)!r} not found")
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise CompileError(f"{p.name}: not a readable .npz file ({e})") from None
    elif p.suffix == ".pt":
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:          # torch raises many types for a bad file
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CompileError(f"{p.name}: not a readable torch file ({msg})") from None
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, dict):
            raise CompileError(f"{p.name}: expected a state dict, not {type(obj).__name__}")
        d = obj
    else:
        raise CompileError(f"layer file {p.name!r}: unknown kind (accepted: builtin, "
                           f"a .pt state dict or a .npz with 'weight' and 'bias')")
    return _pick(d, p.name)
