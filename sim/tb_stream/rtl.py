"""Run streamed GEMV cases on the harness in RTL (Verilator + cocotb) and check them.

The harness Verilog and its metadata JSON come from the caller (``hdl`` writes them);
its ``params`` carry ``word_bits``, ``slices`` (one AXI4 read port ``axi__<c>`` per slice),
``act_depth`` and the ``q`` entry's field offsets (``entry_instr``, ``entry_index``), so
nothing here imports ``hdl``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from airfoil.resources import package_path
from sim.cocotb_runner import DEFAULT_BUILD_ROOT, RtlFailure, run_cocotb
from sim.core_harness import BUILD_ARGS, MEMORY_SOURCES, public_vlt, stall_settings, \
    wrap_with_memory, write_if_changed

from .stimulus import encode_instr

__all__ = ["run_stream_rtl", "check_results", "TB_DIR"]

TB_DIR = package_path("sim.tb_stream")
_ALIGN = 4096
#: Module name of the harness with its memory ports (``sim/tb/axi_mem.sv``).
TOP = "stream_gemv_tb"


def _with_memory(meta: dict, latencies, outstanding: int, build_root) -> list[Path]:
    """Write the harness beside one RTL memory port per slice; return the sources."""
    text = wrap_with_memory(
        meta, TOP, title="The streamed-GEMV harness beside its AXI4 memory",
        what=f"harness {meta['name']}", writers=[],
        readers=[(f"axi__{c}", c, lat, outstanding, 0.0) for c, lat in enumerate(latencies)])
    out = Path(build_root or DEFAULT_BUILD_ROOT) / "harness"
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    sv = write_if_changed(out / f"{TOP}_{digest}.sv", text)
    vlt = write_if_changed(out / f"{TOP}.vlt", public_vlt(False, top=TOP))
    return [vlt, *MEMORY_SOURCES, sv]


def _words(raw: bytes, wb: int) -> list:
    return [raw[i:i + wb][::-1].hex() for i in range(0, len(raw), wb)]


def run_stream_rtl(verilog, meta_json, cases, *, latency, outstanding: int,
                   seed: int, stall: float = 0.0, idle: float = 0.0, build_root=None,
                   max_cycles: int = 2_000_000) -> list:
    """Run ``cases`` (:class:`sim.tb_stream.stimulus.StreamCase`) in order on one
    simulation; return one result dict per case (counters, ``out`` results as ints).

    Each slice ``c`` of the harness reads the case's ``streams[c]`` (``[image]`` for a
    case without ``streams``) on its own port; ``latency`` is one read latency for every
    port or a sequence of one per slice (each port also stalls at random on its own).
    A slice whose stream is empty issues no read: its ``MV`` consumes the records that
    follow the previous case's in the stream already being read.

    Raise :class:`~sim.cocotb_runner.RtlFailure` when a case times out or reports an
    error.
    """
    meta = json.loads(Path(meta_json).read_text())
    prm = meta["params"]
    wb = prm["word_bits"] // 8
    slices = prm.get("slices", 1)
    lat = [latency] * slices if isinstance(latency, int) else [int(x) for x in latency]
    if len(lat) != slices:
        raise ValueError(f"{len(lat)} latencies for {slices} slices")
    addr = 0
    run_cases = []
    for i, c in enumerate(cases):
        streams = [bytes(x) for x in c.get("streams", [c["image"]])]
        if len(streams) != slices:
            raise ValueError(f"case {c['name']}: {len(streams)} streams for {slices} "
                             f"slices")
        instr = encode_instr(c["instr"])
        entry = (instr << prm["entry_instr"]) | (i << prm["entry_index"])
        act = bytes(np.asarray(c["act"], dtype=np.int8).tobytes())
        act += bytes(-len(act) % wb)
        ob = c["instr"]["obuf_addr"]
        end = ob + c.get("tokens", 1) * c["rows"] * c["out_bytes"]
        # A slice without a stream continues the stream the previous case's read started
        # (two MVs consuming one LD WSTREAM): no new read is issued.
        reads = []
        for st in streams:
            reads.append({"image": st.hex(), "addr": addr, "nwords": len(st) // wb})
            addr += -(-len(st) // _ALIGN) * _ALIGN
        run_cases.append({
            "name": c["name"], "reads": reads, "act_words": _words(act, wb),
            "act_base": c["instr"]["abuf_addr"] // wb, "entry": f"{entry:x}",
            "out_first": ob // wb, "out_count": -(-end // wb) - ob // wb,
        })
    run = {"cases": run_cases, "mem_bytes": max(addr, _ALIGN), "word_bytes": wb,
           "slices": slices, "latency": lat, "outstanding": outstanding, "stall": stall,
           "stall_inputs": stall_settings("random", stall),
           "idle": idle, "seed": seed, "max_cycles": max_cycles}
    harness = _with_memory(meta, lat, outstanding, build_root)
    data = run_cocotb(sources=[*harness, verilog], top=TOP, test_module="tb_stream_gemv",
                      test_dir=TB_DIR, seed=seed, build_root=build_root, case=run,
                      env={"AIRFOIL_META": str(Path(meta_json).resolve())},
                      extra_args=BUILD_ARGS, public_flat_rw=False)
    results = data["results"]
    for c, rc, r in zip(cases, run_cases, results):
        raw = b"".join(bytes.fromhex(w)[::-1] for w in r["out_words"])
        ob = c["instr"]["obuf_addr"] - rc["out_first"] * wb
        vals = np.frombuffer(raw[ob:ob + c.get("tokens", 1) * c["rows"] * c["out_bytes"]],
                             dtype={1: np.int8, 2: np.int16, 4: np.int32}[c["out_bytes"]])
        r["out"] = vals.astype(np.int64)
    return results


def check_results(cases, results) -> None:
    """Raise :class:`RtlFailure` naming the first case and row whose result differs."""
    if len(results) != len(cases):
        raise RtlFailure(f"{len(results)} results for {len(cases)} cases")
    for c, r in zip(cases, results):
        diff = np.nonzero(r["out"] != c["expected"])[0]
        if diff.size:
            j = int(diff[0])
            raise RtlFailure(f"case {c['name']}: row {j} is {int(r['out'][j])}, expected "
                             f"{int(c['expected'][j])} ({diff.size} rows differ)")
