"""Run programs on the emitted core Verilog under Verilator and cocotb.

:func:`run_core` takes the Verilog file list and the metadata JSON that ``hdl`` wrote (never
``hdl``'s classes), places a program and a data image in a memory model, and runs one or
more cases in a single simulator process (one build per design). Each case reports the
core's status, its cycle counter and the memory regions asked for.

Memory channels: the core has one data port per channel of its config; the memory model
holds one flat image and serves every port from it, each with its channel's read latency
and outstanding reads (:meth:`airfoil.config.MemoryConfig.latency_of`, ``outstanding_of``),
its bandwidth (:attr:`airfoil.config.AccelConfig.channel_bytes_per_cycle`) and stalls of
its own (the case's ``stall_pattern``). The memory runs in RTL beside the core
(:mod:`sim.core_harness`; ``sim/tb/axi_mem.sv`` documents its timing). Channel
``c``'s data base is the image's address plus ``channel_offsets[c]`` of the case (where
that channel's memory starts in the image, as a folder's manifest says; by default every
channel sees the whole image).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError
from airfoil.program import HEADER_SIZE
from airfoil.resources import package_path

from .cocotb_runner import DEFAULT_BUILD_ROOT, run_cocotb
from .core_harness import BUILD_ARGS, CORE_INSTANCE, STALL_PATTERNS, TOP, stall_settings, \
    write_harness

__all__ = ["RtlCase", "run_core", "write_job", "overlap_fraction", "PROG_BASE", "DEFAULT_STALL",
           "STALL_PATTERNS"]

#: Byte address of the program file in the memory model.
PROG_BASE = 0x1000
#: Probability that the memory model withholds a ready or valid in a cycle.
DEFAULT_STALL = 0.25
_TB_DIR = package_path("sim.tb")


@dataclass
class RtlCase:
    """One run: a program file, the data image and where things are.

    ``extra`` maps image-relative byte addresses to bytes written after the image (the
    input vector); ``read_back`` maps a name to ``(image-relative address, nbytes)``;
    ``channel_offsets`` gives, per memory channel, where its memory starts in the image
    (``None``: every channel at offset 0).

    ``stall_pattern`` says how the memory withholds the ready/valid signals it drives on
    every channel of every port (:data:`sim.core_harness.STALL_PATTERNS`): ``"none"``
    never, ``"random"`` in each cycle with probability ``stall``, ``"bursts"`` in seeded
    runs of 20..200 cycles, about a ``stall`` fraction of the cycles in all. ``watch`` names
    signals under the core whose high cycles the run reports (see :func:`run_core`).
    """

    program: bytes
    image: bytes
    seed: int = 0
    stall: float = DEFAULT_STALL
    extra: dict = field(default_factory=dict)
    read_back: dict = field(default_factory=dict)
    max_cycles: int = 2_000_000
    poll: int = 64
    channel_offsets: list | None = None
    stall_pattern: str = "random"
    watch: list = field(default_factory=list)

    def __post_init__(self):
        stall_settings(self.stall_pattern, self.stall)


def _align(v: int, a: int) -> int:
    return -(-v // a) * a


def write_job(cases, channels: int, tmp: Path, *, watch=()) -> tuple[Path, list[dict]]:
    """Write the memory regions of ``cases`` (:class:`RtlCase`) and the job file a core
    testbench reads (``$AIRFOIL_JOB``) into ``tmp``; return the job file and its runs.

    The program sits at :data:`PROG_BASE`, the image at the next 64 KiB boundary after it,
    channel ``c``'s data base at the image plus the case's ``channel_offsets[c]``.
    """
    nch = channels
    tmp.mkdir(parents=True, exist_ok=True)
    runs = []
    for i, case in enumerate(cases):
        if len(case.program) < HEADER_SIZE:
            raise AirfoilError("program image shorter than its header")
        count = int.from_bytes(case.program[8:12], "little")
        data_base = _align(PROG_BASE + len(case.program), 1 << 16)
        offsets = list(case.channel_offsets) if case.channel_offsets is not None \
            else [0] * nch
        if len(offsets) != nch or any(not isinstance(o, int) or o < 0 for o in offsets):
            raise AirfoilError(f"channel_offsets must list {nch} byte offsets >= 0 (one per "
                               f"memory channel), not {case.channel_offsets!r}")
        end = len(case.image)
        for addr, raw in case.extra.items():
            end = max(end, addr + len(raw))
        for addr, n in case.read_back.values():
            end = max(end, addr + n)
        regions = []
        for j, (addr, raw) in enumerate([(PROG_BASE, case.program), (data_base, case.image)]
                                        + [(data_base + a, r) for a, r in case.extra.items()]):
            f = tmp / f"case{i}_region{j}.bin"
            f.write_bytes(raw)
            regions.append({"addr": addr, "file": str(f)})
        runs.append({
            "seed": case.seed, "stall": case.stall, "stall_pattern": case.stall_pattern,
            "stall_inputs": stall_settings(case.stall_pattern, case.stall),
            "core": CORE_INSTANCE, "watch": list(dict.fromkeys([*watch, *case.watch])),
            "prog_base": PROG_BASE,
            "prog_count": count, "data_base": data_base,
            "data_bases": [data_base + o for o in offsets],
            "mem_bytes": _align(data_base + end, 1 << 12) + (1 << 12),
            "regions": regions, "max_cycles": case.max_cycles, "poll": case.poll,
            "read_back": {k: {"addr": data_base + a, "nbytes": n}
                          for k, (a, n) in case.read_back.items()},
        })
    # The memory's timing is the harness's (sim.core_harness, from the config).
    job = {"channels": nch, "runs": runs}
    job_file = tmp / "job.json"
    job_file.write_text(json.dumps(job))
    return job_file, runs


def run_core(*, verilog, meta, config: AccelConfig, cases, build_root=None,
             work_dir=None, log_level: str = "WARNING", watch=()) -> list[dict]:
    """Run ``cases`` (a list of :class:`RtlCase`) on the core; return one dict per case.

    ``verilog`` is the core's Verilog file or the list of its files (the file list);
    ``log_level`` is the cocotb log level of the simulation; ``watch`` names signals
    watched in every case (besides each case's own ``watch``).

    Each dict holds ``done``, ``error``, ``err_code``, ``err_pc``, ``cycles``,
    ``retired``, ``read_beats`` (data ports, all channels), ``read_beats_per_channel``,
    ``data_bases`` (the data base registers read back), ``reads`` (name -> bytes) and ``counters`` (the
    concurrency counters read after the run: ``busy_load``, ``busy_matrix``, ``busy_sfu``,
    ``busy_store`` and ``overlap``, in cycles; see :func:`overlap_fraction`), the
    counters also flat beside ``cycles`` (``busy_<unit>`` and ``overlap_cycles``),
    ``protocol_errors`` (the memory's AXI checks, empty on a clean run),
    ``stall_pattern``, ``sim_seconds`` (wall-clock seconds of the simulation from START to
    the poll that saw DONE) and ``watched``/``watched_rises``: for each watched signal,
    the cycles it was high (nonzero) and how often it rose, from START to that poll.

    A watched signal is named by its path under the core as cocotb sees it: instance
    names and the signal's name joined by dots, as in the emitted Verilog (Verilator keeps
    every signal, ``--public-flat-rw``), e.g. ``engine.queue_load.w_rdy`` or
    ``engine.fetch.pending``; a leading ``!`` counts the cycles it was zero instead (a
    queue is full while ``!engine.queue_load.w_rdy``).
    """
    meta = json.loads(Path(meta).read_text()) if not isinstance(meta, dict) else meta
    names = {p["name"] for p in meta["ports"]}
    nch = config.memory.channels
    for need in ("csr__awaddr", "instr__araddr", "data0__araddr", "data0__awaddr"):
        if need not in names:
            raise AirfoilError(f"{meta['name']}: the metadata has no port {need!r}; not a "
                               f"core built by hdl.core")
    for c in range(nch):
        if f"data{c}__araddr" not in names:
            raise AirfoilError(f"{meta['name']}: the metadata has no data port 'data{c}' "
                               f"for memory channel {c} of config {config.name!r}")
    tmp = Path(work_dir or tempfile.mkdtemp(prefix="airfoil-rtl-"))
    job_file, runs = write_job(cases, nch, tmp, watch=watch)
    sources = [Path(v) for v in ([verilog] if isinstance(verilog, (str, Path)) else verilog)]
    harness = write_harness(meta, config, Path(build_root or DEFAULT_BUILD_ROOT) / "harness",
                            internals=any(r["watch"] for r in runs))
    seed = cases[0].seed if cases else 0
    data = run_cocotb(sources=[*harness, *sources], top=TOP, test_module="core_tb",
                      test_dir=_TB_DIR, seed=seed,
                      env={"AIRFOIL_JOB": job_file, "COCOTB_LOG_LEVEL": log_level,
                           "GPI_LOG_LEVEL": log_level},
                      build_root=build_root, extra_args=BUILD_ARGS, public_flat_rw=False)
    out = data.get("runs", [])
    for case, r in zip(cases, out):
        r["stall_pattern"] = case.stall_pattern
        r["reads"] = {k: bytes.fromhex(v) for k, v in r["reads"].items()}
        counters = r.get("counters", {})
        for name, value in counters.items():
            r["overlap_cycles" if name == "overlap" else name] = value
    return out


def overlap_fraction(result: dict) -> float:
    """Fraction of a run's cycles in which two or more units were busy.

    ``result`` is one dict of :func:`run_core`; the figure ``rtl_unit_overlap_fraction``
    is this value of a run, with ``result["cycles"]`` as its raw evidence.
    """
    cycles = result["cycles"]
    if cycles <= 0:
        raise AirfoilError(f"a run of {cycles} cycles has no overlap fraction")
    return result["counters"]["overlap"] / cycles
