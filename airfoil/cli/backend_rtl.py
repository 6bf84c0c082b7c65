"""The ``rtl`` backend: elaborate the core for a config, run a folder on it in Verilator.

:func:`emit_core` writes ``build/<config>/airfoil_core.{v,json,f,vlt}`` (reused while the
config and the ``hdl`` sources are unchanged); :func:`run_rtl` runs a compiled folder on
that Verilog through :func:`sim.rtl.run_core` and returns the output vector and the
core's cycle counter.

The core has one AXI4 data port per memory channel (``data0`` .. ``data{C-1}``, listed in
the metadata's ``data_ports``); the host sets channel ``c``'s data base to the image's
address plus ``channel_offsets[c]`` of the folder's manifest (where that channel's memory
starts in ``weights.bin``; without it every channel sees the whole image).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError
from airfoil.folder import OUT_DTYPES, load_folder
from airfoil.folder import channel_offsets as folder_channel_offsets
from airfoil.isa import ErrorCode
from airfoil.resources import package_path
from sim.llm_host import LLMHost

__all__ = ["TOP", "RAM_MODULE", "emit_core", "run_rtl", "WAIVERS", "RtlLLM", "generate_rtl",
           "channel_offsets"]

#: Name of the top-level Verilog module.
TOP = "airfoil_core"
#: The buffer RAM module (hdl/core/ram.py), written beside the core.
RAM_MODULE = "airfoil_ram"
_HDL = package_path("hdl")
#: Verilator lint waivers, copied next to the emitted Verilog.
WAIVERS = _HDL / "core" / "airfoil_core.vlt"


def _source_digest(config: AccelConfig) -> str:
    h = hashlib.sha256(config.hardware_hash.encode())
    for p in sorted(_HDL.rglob("*.py")) + [WAIVERS]:
        h.update(str(p.relative_to(_HDL)).encode() + p.read_bytes())
    for name in ("isa.py", "formats.py", "csr.py", "config.py", "program.py"):
        h.update(package_path("airfoil", name).read_bytes())
    return h.hexdigest()[:16]


def emit_core(config: AccelConfig, build_dir="build", *, force: bool = False) -> dict:
    """Write the core's Verilog, metadata, file list and waivers for ``config``.

    Returns a dict of paths: ``verilog``, ``ram``, ``meta``, ``filelist``, ``waivers``,
    ``dir``, and ``sources`` (the Verilog files in file-list order).
    Elaboration is skipped when the outputs exist for the same config and sources.
    """
    from hdl.build import write_verilog
    from hdl.core.ram import RAM_VERILOG
    from hdl.core.top import Core

    out = Path(build_dir) / config.name
    paths = {"dir": out, "verilog": out / f"{TOP}.v", "meta": out / f"{TOP}.json",
             "filelist": out / f"{TOP}.f", "waivers": out / f"{TOP}.vlt",
             "ram": out / f"{RAM_MODULE}.v"}
    digest = _source_digest(config)
    if not force and all(p.exists() for p in paths.values()):
        try:
            params = json.loads(paths["meta"].read_text()).get("params", {})
        except ValueError:
            params = {}
        if params.get("source_digest") == digest:
            paths["sources"] = [paths["verilog"], paths["ram"]]
            return paths
    core = Core(config)
    params = {"config": config.name, "config_hash": config.config_hash,
              "source_digest": digest, "chains": config.chains, "lanes": config.lanes,
              "word_bits": config.memory.word_bits, "channels": config.memory.channels}
    write_verilog(core, TOP, out, params=params)
    shutil.copyfile(WAIVERS, paths["waivers"])
    paths["ram"].write_text(RAM_VERILOG)
    paths["sources"] = [paths["verilog"], paths["ram"]]
    paths["filelist"].write_text("".join(f"{p.resolve()}\n" for p in paths["sources"]))
    return paths


def channel_offsets(manifest: dict, config: AccelConfig) -> list[int]:
    """Where each memory channel's memory starts in a folder's image (byte offsets, one per
    channel of ``config``): :func:`airfoil.folder.channel_offsets`."""
    return folder_channel_offsets(manifest, config.memory.channels)


def run_rtl(folder_path, config: AccelConfig, x_q=None, seed: int = 0, stalls: bool = True,
            *, build_dir="build") -> tuple[torch.Tensor, dict]:
    """Run a compiled folder on the RTL core; return ``(out, stats)``.

    ``out`` is the int64 output vector; ``stats`` holds ``cycles`` (the core's cycle
    counter), ``instructions``, ``read_beats`` (and per channel), the busy counters
    (``busy_<unit>``, ``overlap_cycles``), ``seed`` and ``stalls``. Random stalls on
    every AXI channel are drawn from ``seed`` when ``stalls`` is set.
    """
    from sim.rtl import DEFAULT_STALL, RtlCase, run_core

    folder = load_folder(folder_path, config)
    image = bytes(folder.image_with_input(x_q))
    out_spec = folder.manifest["output"]
    dt = np.dtype(OUT_DTYPES[folder.out_bits])
    nbytes = folder.n * dt.itemsize
    paths = emit_core(config, build_dir)
    case = RtlCase(program=folder.program.to_bytes(), image=image, seed=int(seed),
                   stall=DEFAULT_STALL if stalls else 0.0,
                   read_back={"out": (int(out_spec["addr"]), nbytes)},
                   channel_offsets=channel_offsets(folder.manifest, config))
    res = run_core(verilog=paths["sources"], meta=paths["meta"], config=config, cases=[case],
                   build_root=Path(build_dir) / "sim")[0]
    if res["error"]:
        code = ErrorCode(res["err_code"])
        raise AirfoilError(f"rtl: the core stopped with error {code.name} at instruction "
                           f"{res['err_pc']} (seed {seed})")
    out = torch.from_numpy(np.frombuffer(res["reads"]["out"], dtype=dt).astype(np.int64))
    stats = {"cycles": res["cycles"], "instructions": res["retired"],
             "read_beats": res["read_beats"],
             "read_beats_per_channel": res.get("read_beats_per_channel"),
             **{k: v for k, v in res.items() if k.startswith("busy_") or k == "overlap_cycles"},
             "seed": int(seed), "stalls": bool(stalls)}
    return out, stats


class RtlLLM(LLMHost):
    """An LLM folder's sequence on the RTL core: each program run is one Verilator run.

    The image goes to the memory model before each run; the logits and the KV cache are
    read back after it, so the cache persists between runs as on a board. ``stats`` of a
    run hold the core's ``cycles`` and concurrency counters.
    """

    def __init__(self, folder, config: AccelConfig, *, seed: int = 0, stalls: bool = True,
                 build_dir="build", sampling=None):
        super().__init__(folder, config, sampling)
        self.seed, self.stalls = int(seed), bool(stalls)
        self.paths = emit_core(config, build_dir)
        self.build_root = Path(build_dir) / "sim"

    def execute(self, phase: str, T: int) -> dict:
        from sim.rtl import DEFAULT_STALL, RtlCase, run_core

        lo, hi = self.logits_span(T)
        klo, khi = self.kv_span()
        nlo, nhi = self.next_span(T)
        case = RtlCase(program=self.programs[phase].to_bytes(), image=bytes(self.image),
                       seed=self.seed + len(self.runs),
                       stall=DEFAULT_STALL if self.stalls else 0.0,
                       read_back={"logits": (lo, hi - lo), "kv": (klo, khi - klo),
                                  "next": (nlo, nhi - nlo)},
                       max_cycles=50_000_000, poll=256,
                       channel_offsets=channel_offsets(self.folder.manifest, self.config))
        res = run_core(verilog=self.paths["sources"], meta=self.paths["meta"],
                       config=self.config, cases=[case], build_root=self.build_root)[0]
        if not res["done"] or res["error"]:
            what = (f"error {ErrorCode(res['err_code']).name} at instruction {res['err_pc']}"
                    if res["error"] else "no finish within the cycle limit")
            raise AirfoilError(f"rtl: {phase} stopped with {what} (seed {case.seed})")
        self.image[lo:hi] = res["reads"]["logits"]
        self.image[klo:khi] = res["reads"]["kv"]
        self.image[nlo:nhi] = res["reads"]["next"]
        stats = {k: v for k, v in res.items() if k not in ("reads",)}
        stats["seed"] = case.seed
        return stats


def generate_rtl(folder, config: AccelConfig, prompt, max_new_tokens: int, *, seed: int = 0,
                 stalls: bool = True, build_dir="build", sampling=None
                 ) -> tuple[list[int], list[dict]]:
    """Generation on the RTL core (greedy unless ``sampling``, an
    :class:`airfoil.fixedpoint.Sampling`, says otherwise); return the new tokens and
    per-run stats."""
    llm = RtlLLM(folder, config, seed=seed, stalls=stalls, build_dir=build_dir,
                 sampling=sampling)
    return llm.generate(prompt, max_new_tokens), llm.runs
