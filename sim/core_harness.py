"""The core's Verilator harness: the core beside its AXI4 memory, all in RTL.

:func:`write_harness` writes ``airfoil_core_tb.sv`` for a core's metadata and config: the
core (instance ``core``) with its instruction port and one data port per memory channel
wired to the memory ports of ``sim/tb/axi_mem.sv`` (whose header documents the timing
model), so no Python runs per clock cycle. The harness's own ports are the core's clock,
reset and CSR port, and the run's stall settings (``tb_seed``, ``tb_pattern``,
``tb_stall_q32``, ``tb_open_max``; see :func:`stall_settings`), which the testbench sets
before reset. The bytes live in ``sim/tb/axi_mem_dpi.cpp``, which the testbench fills and
reads through ctypes (:data:`BUILD_ARGS` export its functions from the simulator).

The memory timing comes from the config, one definition each: the read latency and
outstanding bursts of each channel (:meth:`airfoil.config.MemoryConfig.latency_of`,
``outstanding_of``; the instruction port has ``read_latency`` and ``outstanding``), the
channel's read rate (:attr:`airfoil.config.AccelConfig.channel_bytes_per_cycle`) and the
write-response latency (``write_latency``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError
from airfoil.resources import package_path

__all__ = ["TOP", "CORE_INSTANCE", "STALL_PATTERNS", "MEMORY_SOURCES", "BUILD_ARGS",
           "write_harness", "harness_verilog", "wrap_with_memory", "public_vlt",
           "write_if_changed", "stall_settings"]

#: Module name of the harness.
TOP = "airfoil_core_tb"
#: Instance name of the core inside the harness.
CORE_INSTANCE = "core"
#: How the memory withholds its ready/valid signals: never, each cycle at random with
#: probability ``stall``, or in seeded runs of :data:`HOLD_CYCLES` cycles.
STALL_PATTERNS = ("none", "random", "bursts")
#: Shortest and longest withheld run of the ``bursts`` pattern (cycles); the generator
#: of ``sim/tb/axi_mem.sv`` has them as its defaults.
HOLD_CYCLES = (20, 200)
_TB = package_path("sim.tb")
#: The harness's memory: the ports in RTL and the bytes in C++.
MEMORY_SOURCES = (_TB / "axi_mem.sv",)
#: Verilator arguments of the harness build: the memory's C++ and the export of its
#: host functions to ctypes.
BUILD_ARGS = (str(_TB / "axi_mem_dpi.cpp"), "-LDFLAGS", "-rdynamic")


def stall_settings(pattern: str, stall: float) -> dict:
    """The harness's stall inputs for a run: ``tb_pattern``, ``tb_stall_q32``, ``tb_open_max``.

    ``random`` withholds each signal in each cycle with probability ``stall``; ``bursts``
    withholds in runs of 20..200 cycles, with open runs of 1..``open_max`` cycles between
    them chosen so that about a ``stall`` fraction of the cycles is withheld.
    """
    if pattern not in STALL_PATTERNS:
        raise ValueError(f"stall_pattern must be one of {', '.join(STALL_PATTERNS)}, "
                         f"not {pattern!r}")
    if not 0.0 <= stall < 1.0:
        raise ValueError(f"stall must be a probability in [0, 1), not {stall!r}")
    q32 = min(int(round(stall * (1 << 32))), (1 << 32) - 1)
    open_max = 0
    if pattern == "bursts" and stall > 0:
        mean_hold = sum(HOLD_CYCLES) / 2
        open_max = max(1, round(2 * mean_hold * (1 - stall) / stall))
    return {"tb_pattern": STALL_PATTERNS.index(pattern),
            "tb_stall_q32": q32 if pattern == "random" else 0,
            "tb_open_max": min(open_max, (1 << 32) - 1)}


def _port(meta: dict, name: str) -> dict:
    for p in meta["ports"]:
        if p["name"] == name:
            return p
    raise AirfoilError(f"{meta['name']}: the metadata has no port {name!r}")


def _reader(prefix: str, stream: int, nbytes: int, latency: int, outstanding: int,
            rate: float) -> str:
    return (f"    axi_mem_reader #(.BYTES({nbytes}), .LATENCY({latency}), "
            f".OUTSTANDING({outstanding}), .RATE({rate!r}), .STREAM({stream}), "
            f".NAME(\"{prefix}\")) {prefix}_rd (\n"
            f"        .clk, .rst, .seed(tb_seed), .pattern(tb_pattern), "
            f".stall_q32(tb_stall_q32), .open_max(tb_open_max),\n"
            + "".join(f"        .{s}({prefix}__{s}),\n" for s in
                      ("araddr", "arlen", "arvalid", "arready", "rdata", "rresp", "rlast",
                       "rvalid"))
            + f"        .rready({prefix}__rready));\n")


def _writer(prefix: str, stream: int, nbytes: int, latency: int) -> str:
    return (f"    axi_mem_writer #(.BYTES({nbytes}), .WRITE_LATENCY({latency}), "
            f".STREAM({stream}), .NAME(\"{prefix}\")) {prefix}_wr (\n"
            f"        .clk, .rst, .seed(tb_seed), .pattern(tb_pattern), "
            f".stall_q32(tb_stall_q32), .open_max(tb_open_max),\n"
            + "".join(f"        .{s}({prefix}__{s}),\n" for s in
                      ("awaddr", "awlen", "awvalid", "awready", "wdata", "wstrb", "wlast",
                       "wvalid", "wready", "bresp", "bvalid"))
            + f"        .bready({prefix}__bready));\n")


def wrap_with_memory(meta: dict, top: str, *, readers, writers, title: str, what: str) -> str:
    """SystemVerilog of module ``top``: the design of ``meta`` (instance
    :data:`CORE_INSTANCE`) with AXI4 memory ports on the named ports of it.

    ``readers`` lists ``(prefix, stream, latency, outstanding, rate)`` (rate 0: a beat
    every cycle), ``writers`` ``(prefix, stream, write_latency)``; ``stream`` numbers the
    port's stall generators (unique per port). Every other port of the design is a port
    of ``top``, beside the stall inputs ``tb_*``. ``title`` and ``what`` make its first
    line (a comment).
    """
    clk, rst = meta["clock"], meta["reset"]
    served = tuple(f"{r[0]}__" for r in [*readers, *writers])
    outer = [p for p in meta["ports"] if not p["name"].startswith(served)]
    inner = [p for p in meta["ports"] if p["name"].startswith(served)]
    head = [f"    input  logic {clk}", f"    input  logic {rst}",
            "    input  logic [63:0] tb_seed", "    input  logic [1:0] tb_pattern",
            "    input  logic [31:0] tb_stall_q32", "    input  logic [31:0] tb_open_max"]
    for p in outer:
        d = "input " if p["dir"] == "in" else "output"
        head.append(f"    {d} logic [{p['width'] - 1}:0] {p['name']}")
    # The memory's C++ is a build argument, not a source: its digest here rebuilds the
    # harness when it changes.
    cpp = hashlib.sha256(Path(BUILD_ARGS[0]).read_bytes()).hexdigest()[:16]
    lines = [f"// {title} (written by sim/core_harness.py for {what}; memory C++ {cpp}).",
             f"module {top} (", ",\n".join(head), ");"]
    for p in inner:
        lines.append(f"    logic [{p['width'] - 1}:0] {p['name']};")
    conns = ",\n".join(f"        .{p['name']}({p['name']})" for p in meta["ports"])
    lines.append(f"    {meta['top']} {CORE_INSTANCE} (\n        .{clk}({clk}),\n"
                 f"        .{rst}({rst}),\n{conns});")
    for prefix, stream, latency, outstanding, rate in readers:
        nbytes = _port(meta, f"{prefix}__rdata")["width"] // 8
        lines.append(_reader(prefix, stream, nbytes, latency, outstanding,
                             rate if 0 < rate < nbytes else 0.0))
    for prefix, stream, latency in writers:
        nbytes = _port(meta, f"{prefix}__wdata")["width"] // 8
        lines.append(_writer(prefix, stream, nbytes, latency))
    lines.append("endmodule\n")
    return "\n".join(lines)


def harness_verilog(meta: dict, config: AccelConfig) -> str:
    """The harness module's SystemVerilog for a core's metadata and its config."""
    mc = config.memory
    rate = config.channel_bytes_per_cycle
    chans = range(mc.channels)
    return wrap_with_memory(
        meta, TOP, title="The core beside its AXI4 memory", what=f"config {config.name}",
        readers=[("instr", 0, mc.read_latency, mc.outstanding, 0.0)] +
        [(f"data{c}", c + 1, mc.latency_of(c), mc.outstanding_of(c), rate) for c in chans],
        writers=[(f"data{c}", c + 1, mc.write_latency) for c in chans])


def public_vlt(internals: bool, top: str = TOP) -> str:
    """Verilator control file of what cocotb sees: the signals of harness ``top`` (read and
    write) and, with ``internals``, every signal of the design in it (read only).

    Nothing else is public, so Verilator optimises the core freely (cocotb's default,
    every signal public and writable, runs the core several times slower); making the
    core's signals readable costs less than writable, and only the builds for runs that
    watch signals have it.
    """
    lines = ["`verilator_config",
             f'public_flat_rw -module "{top}" -var "*"',
             'public_flat_rd -module "axi_mem_reader" -var "beats"']
    if internals:
        lines.append('public_flat_rd -module "*" -var "*"')
    return "\n".join(lines) + "\n"


def write_if_changed(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` unless it holds it already (keeps the file's time); the
    file is replaced whole, so a concurrent reader never sees it half written."""
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def write_harness(meta: dict, config: AccelConfig, out_dir, *,
                  internals: bool = False) -> list[Path]:
    """Write the harness for ``meta`` and ``config`` into ``out_dir``; return the Verilog
    sources it adds to the core's (the harness, its control file and
    :data:`MEMORY_SOURCES`). ``internals`` makes the core's signals readable by cocotb
    (:func:`public_vlt`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sv = write_if_changed(out / f"{TOP}_{config.config_hash}.sv", harness_verilog(meta, config))
    vlt = write_if_changed(out / f"{TOP}_{'internals' if internals else 'ports'}.vlt",
                 public_vlt(internals))
    return [vlt, *MEMORY_SOURCES, sv]
