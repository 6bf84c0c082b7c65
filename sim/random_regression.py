"""Randomized regression of the core: random linear layers on the RTL core under stalls.

Each case is a linear layer drawn from one integer seed: weight format (every record
format the config decodes, ``mixed`` and the BitMoD presets, and the dense WGT-tile
path), sparsity (every pattern the config builds, block skip with a random density),
group size, output width, bias, shape (``n`` rows, ``k`` a multiple of the group; WGT
tiles also split over ``k``) and the memory's stall pattern
(:data:`sim.core_harness.STALL_PATTERNS`).
The case is compiled with :func:`compiler.linear.compile_linear`, run on the ISA
simulator, on the golden model and on the RTL core (all cases of one config in one
simulation), and the three outputs must agree bit for bit.

A config's channel count is part of the draw space: :func:`channel_variant` builds the
config with more memory channels (each of another read latency and outstanding limit).
The PE kind is the config's (``pe``).

Every case samples the functional coverage of :mod:`sim.coverage` (format x sparsity,
stall pattern, the error code seen).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from airfoil.config import AccelConfig, load_config
from airfoil.errors import CompileError
from airfoil.folder import OUT_DTYPES, load_folder
from airfoil.packing import MIXED_PRESETS
from sim.core_harness import STALL_PATTERNS

__all__ = ["LayerCase", "channel_variant", "draw_case",
           "draw_cases", "legal_pairs", "run_cases", "stream_formats"]

#: Fraction of withheld cycles under the ``random`` and ``bursts`` stall patterns.
RANDOM_STALL = 0.25
OUT_FORMATS = ("int8", "int16", "int32")
#: Read latency and outstanding bursts of each channel of a variant with that many
#: channels (the first channel is not the fastest).
CHANNEL_LATENCY = {2: (24, 48), 3: (40, 12, 64), 4: (30, 12, 64, 20)}
CHANNEL_OUTSTANDING = {3: (2, 4, 3), 4: (4, 1, 2, 4)}


def channel_variant(base: str | AccelConfig, channels: int) -> AccelConfig:
    """``base`` (a config or its name) with ``channels`` memory channels of the read
    latencies of :data:`CHANNEL_LATENCY` and the outstanding reads of
    :data:`CHANNEL_OUTSTANDING`."""
    cfg = load_config(base) if isinstance(base, str) else base
    if channels == cfg.memory.channels:
        return cfg
    if channels not in CHANNEL_LATENCY:
        raise ValueError(f"channels must be 1 or one of {sorted(CHANNEL_LATENCY)}, "
                         f"not {channels!r}")
    return dataclasses.replace(
        cfg, name=f"{cfg.name}_ch{channels}",
        memory=dataclasses.replace(cfg.memory, channels=channels,
                                   channel_latency=CHANNEL_LATENCY[channels],
                                   channel_outstanding=CHANNEL_OUTSTANDING.get(channels, ())))


@dataclass(frozen=True)
class LayerCase:
    """One drawn linear layer and the memory's behaviour while it runs."""
    seed: int
    wformat: str
    sparsity: str
    group: int
    n: int
    k: int
    out_format: str
    bias: bool
    stream: bool
    stall_pattern: str
    block_density: float = 1.0
    max_tile_bytes: int | None = None
    mixed_formats: tuple | None = None

    @property
    def label(self) -> str:
        path = "stream" if self.stream else "tiles"
        split = f" tile<={self.max_tile_bytes}B" if self.max_tile_bytes else ""
        dens = f" d={self.block_density:.2f}" if self.sparsity == "block" else ""
        fmt = (f"mixed({','.join(self.mixed_formats)})" if self.mixed_formats
               else self.wformat)
        return (f"seed={self.seed} {path} {fmt} {self.sparsity}{dens} "
                f"g{self.group} {self.n}x{self.k} -> {self.out_format}"
                f"{' +bias' if self.bias else ''}{split} stalls={self.stall_pattern}")

    @property
    def format_bin(self) -> str:
        """The weight-format bin of the coverage: the format, ``tiles:<format>`` on the
        WGT-tile path."""
        return self.wformat if self.stream else f"tiles:{self.wformat}"


def stream_formats(cfg: AccelConfig) -> list[str]:
    """Weight formats a streamed layer may name on ``cfg``: its record formats, ``mixed``
    and the presets whose candidates it decodes."""
    built = list(cfg.stream_formats)
    presets = [p for p, names in MIXED_PRESETS.items() if all(n in built for n in names)]
    return built + (["mixed"] if built else []) + presets


def legal_pairs(cfg: AccelConfig) -> list[tuple[str, str]]:
    """The (format bin, sparsity) pairs a layer on ``cfg`` may take: the streamed formats
    with every pattern the compiler accepts for some group size (``mixed`` with candidates
    of its choice), and the WGT-tile formats dense."""
    pairs = []
    for f in stream_formats(cfg):
        for s in cfg.sparsity:
            mixed = _SPARSE_MIXED if f == "mixed" and s != "dense" else None
            if any(_accepted(cfg, f, s, mixed, g) for g in cfg.group_sizes):
                pairs.append((f, s))
    return pairs + [(f"tiles:{f}", "dense") for f in cfg.tile_formats]


#: ``mixed`` candidates of a sparse layer (OVP pairs are dense).
_SPARSE_MIXED = ("int2", "int4", "int8")


def _accepted(cfg, wformat, sparsity, mixed, group) -> bool:
    from compiler.linear import layer_quant
    try:
        layer_quant(cfg, wformat=wformat, sparsity=sparsity, mixed_formats=mixed, group=group,
                    stream=True)
    except CompileError:
        return False
    return True


def draw_case(cfg: AccelConfig, seed: int, *, wformat: str | None = None,
              sparsity: str | None = None, stall_pattern: str | None = None) -> LayerCase:
    """Draw one case from ``seed``; the named axes are fixed, the others drawn."""
    rng = random.Random(seed)
    streamed = stream_formats(cfg)
    tiles = list(cfg.tile_formats)
    if wformat is None:
        pool = [("stream", f) for f in streamed] + [("tiles", f) for f in tiles]
        path, wformat = rng.choice(pool)
    else:
        path = "tiles" if wformat.startswith("tiles:") else "stream"
        wformat = wformat.removeprefix("tiles:")
    if sparsity is None:
        sparsity = "dense" if path == "tiles" else rng.choice(
            [s for f, s in legal_pairs(cfg) if f == wformat])
    mixed = None
    if wformat == "mixed":
        pool = [f for f in cfg.stream_formats if sparsity == "dense" or f != "ovp"]
        mixed = tuple(sorted(rng.sample(pool, rng.randint(2, min(4, len(pool))))))
    groups = list(cfg.group_sizes)
    rng.shuffle(groups)
    group = next((g for g in groups if path == "tiles" or _accepted(cfg, wformat, sparsity,
                                                                   mixed, g)), groups[0])
    # Mostly small layers (many cases per second), one in four large (many tiles or
    # records: queues fill, streams wrap).
    large = rng.random() < 0.25
    k_max = max(1, cfg.buffers.act_bytes // group // 2)
    k = group * rng.randint(1, min(k_max, 16 if large else 4))
    n = rng.randint(1, (24 if large else 6) * cfg.chains)
    split = None
    if path == "tiles" and rng.random() < 0.3 and k > group:
        # A cap of 2 to 6 bytes per weight of one group's tile: at least one tile fits,
        # and wide layers split over k.
        split = rng.randint(2, 6) * cfg.chains * group
    return LayerCase(
        seed=seed, wformat=wformat, sparsity=sparsity, group=group, n=n, k=k,
        out_format=rng.choice(OUT_FORMATS), bias=rng.random() < 0.5,
        stream=path == "stream",
        stall_pattern=stall_pattern or rng.choice(STALL_PATTERNS),
        block_density=round(rng.uniform(0.3, 1.0), 2) if sparsity == "block" else 1.0,
        max_tile_bytes=split, mixed_formats=mixed)


def draw_cases(cfg: AccelConfig, seed: int, count: int) -> list[LayerCase]:
    """``count`` cases: first every (format, sparsity) pair the config builds, each with
    the next stall pattern in turn, then free draws; seeds ``seed``, ``seed + 1`` ..."""
    pairs = legal_pairs(cfg)
    out = []
    for i in range(count):
        s = seed + i
        if i < len(pairs):
            f, sp = pairs[i]
            out.append(draw_case(cfg, s, wformat=f, sparsity=sp,
                                 stall_pattern=STALL_PATTERNS[i % len(STALL_PATTERNS)]))
        else:
            out.append(draw_case(cfg, s))
    return out


def _compile(case: LayerCase, cfg: AccelConfig, out: Path):
    from compiler.linear import compile_linear
    gen = torch.Generator().manual_seed(case.seed)
    w = torch.randn(case.n, case.k, generator=gen)
    b = torch.randn(case.n, generator=gen) if case.bias else None
    compile_linear(w, b, cfg, out, wformat=case.wformat, group=case.group,
                   out_format=case.out_format, seed=case.seed, stream=case.stream,
                   sparsity=case.sparsity, max_tile_bytes=case.max_tile_bytes,
                   mixed_formats=case.mixed_formats,
                   block_density=case.block_density if case.sparsity == "block" else None)
    return load_folder(out, cfg)


def _rtl_case(case: LayerCase, folder, cfg: AccelConfig):
    from airfoil.cli.backend_rtl import channel_offsets
    from sim.rtl import RtlCase
    nbytes = folder.n * folder.out_bits // 8
    return RtlCase(program=folder.program.to_bytes(), image=bytes(folder.image_with_input()),
                   seed=case.seed, stall=RANDOM_STALL, stall_pattern=case.stall_pattern,
                   read_back={"out": (folder.manifest["output"]["addr"], nbytes)},
                   max_cycles=1_000_000, channel_offsets=channel_offsets(folder.manifest, cfg))


def run_cases(cases: list[LayerCase], cfg: AccelConfig, work: Path, *,
              build_dir="build", watch=()) -> list[dict]:
    """Compile and run ``cases`` on ``cfg``; return one record per case.

    ``watch`` names core signals the runs count (:func:`sim.rtl.run_core`; each seen
    samples its bin of :mod:`sim.coverage`). A record holds ``case`` (the
    :class:`LayerCase`), ``refused`` (the compiler's message
    when the draw is not a legal layer, else None), ``ok`` (RTL == ISA == golden and the
    core finished without error), ``cycles`` and ``detail`` (what differed).
    """
    from airfoil.cli.backend_rtl import emit_core
    from sim.golden import run_golden
    from sim.isa_sim import run_isa
    from sim.rtl import run_core
    from sim import coverage

    work = Path(work)
    coverage.define(cfg, watch)
    records, runs = [], []
    for case in cases:
        rec = {"case": case, "refused": None, "ok": False, "cycles": None, "detail": ""}
        records.append(rec)
        try:
            folder = _compile(case, cfg, work / f"case{case.seed}")
        except CompileError as e:
            rec["refused"] = str(e)
            continue
        try:
            want = run_golden(folder)
            isa_out, _ = run_isa(folder, cfg)
        except Exception as e:          # a model that fails on a compiled folder: a defect
            rec["detail"] = f"golden or ISA simulator failed: {type(e).__name__}: {e}"
            continue
        runs.append((rec, folder, want, isa_out))
    if not runs:
        return records
    core = emit_core(cfg, build_dir)
    results = run_core(verilog=core["sources"], meta=core["meta"], config=cfg,
                       cases=[_rtl_case(r[0]["case"], r[1], cfg) for r in runs],
                       build_root=Path(build_dir) / "sim", work_dir=work / "rtl",
                       watch=watch)
    for (rec, folder, want, isa_out), res in zip(runs, results):
        case = rec["case"]
        rec["cycles"] = res["cycles"]
        coverage.sample_layer(case.format_bin, case.sparsity, case.stall_pattern)
        coverage.sample_error(res["err_code"] if res["error"] else 0)
        coverage.sample_full(res.get("watched", {}))
        if not res["done"] or res["error"]:
            rec["detail"] = (f"core error code {res['err_code']} at instruction "
                             f"{res['err_pc']}" if res["error"] else "no DONE")
            continue
        dt = np.dtype(OUT_DTYPES[folder.out_bits])
        got = torch.from_numpy(np.frombuffer(res["reads"]["out"], dtype=dt).astype(np.int64))
        if not torch.equal(isa_out, want):
            rec["detail"] = f"ISA != golden at rows {(isa_out != want).nonzero().flatten()[:8].tolist()}"
        elif not torch.equal(got, want):
            rec["detail"] = f"RTL != golden at rows {(got != want).nonzero().flatten()[:8].tolist()}"
        else:
            rec["ok"] = True
    return records
