"""Timing of one part of the ULX3S design on the ECP5, alone: the open flow on a
component wrapped in shift-register IO.

Each input of the component is a flip-flop of one long shift chain fed from a pin, and
its outputs are captured into a second chain that shifts out to a pin (:class:`ShiftIO`).
nextpnr then times the component's own paths between flip-flops, as if it sat behind
registers, and the LFE5U-85F's 365 pins do not limit its ports. The place and route is
the GEMV build's (:data:`~fpga.ulx3s.flow.NEXTPNR_OPTS` and ``NEXTPNR_GEMV_OPTS``, placed
for timing, :data:`~fpga.ulx3s.flow.NEXTPNR_SEED`), against ``mhz`` on a clock pin. A
kernel takes a minute or two here, the SFU unit some ten, where the whole build takes
most of an hour: the loop for finding a part's slow paths::

    python -m fpga.ulx3s.unit_timing softmax att_qk        # SFU kernels of ulx3s
    python -m fpga.ulx3s.unit_timing sfu --config ulx3s    # the whole SFU unit

Each part's ``<build-dir>/<part>/report.json`` holds its LUT4 (nextpnr's
``TRELLIS_COMB``), FF, MULT18X18D, DP16KD, Fmax and critical path
(:func:`~fpga.ulx3s.flow.critical_path`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from amaranth.hdl import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import Flow, In, Out

from airfoil.errors import AirfoilError

from .flow import NEXTPNR_GEMV_OPTS, NEXTPNR_OPTS, NEXTPNR_REPORT, NEXTPNR_SEED, _tool_paths, \
    critical_path, parse_nextpnr_log

__all__ = ["ShiftIO", "sfu_parts", "time_part", "main"]

#: The clock pin (the ULX3S's 25 MHz oscillator, ``G2``); the other three pins are placed
#: by nextpnr.
_CLOCK_PIN = "G2"
#: The repository, whose source lines a critical path names (the others are yosys's).
_ROOT = str(Path(__file__).resolve().parents[2])


class ShiftIO(wiring.Component):
    """``dut`` with its inputs driven by a shift chain from ``si`` (one flip-flop per bit)
    and its outputs captured into a chain (when ``ld``) that shifts out at ``so``."""

    def __init__(self, dut: wiring.Component):
        self._dut = dut
        super().__init__({"si": In(1), "ld": In(1), "so": Out(1)})

    @staticmethod
    def ports(dut: wiring.Component) -> tuple[list, list]:
        """The input and the output values of ``dut``'s signature."""
        ins, outs = [], []
        for _, member, value in dut.signature.flatten(dut):
            (ins if member.flow == Flow.In else outs).append(Value.cast(value))
        return ins, outs

    @staticmethod
    def bits(dut: wiring.Component) -> tuple[int, int]:
        """Input and output bits of ``dut``'s signature."""
        ins, outs = ShiftIO.ports(dut)
        return sum(map(len, ins)), sum(map(len, outs))

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self._dut
        ins, outs = self.ports(dut)
        prev = self.si
        for v in ins:
            r = Signal(len(v))
            m.d.sync += r.eq(Cat(prev, r[:-1]))
            m.d.comb += v.eq(r)
            prev = r[-1]
        captured = Signal(sum(len(v) for v in outs))
        with m.If(self.ld):
            m.d.sync += captured.eq(Cat(*outs))
        with m.Else():
            m.d.sync += captured.eq(Cat(prev, captured[:-1]))
        m.d.comb += self.so.eq(captured[-1])
        return m


def sfu_parts(config) -> dict:
    """Factories of the SFU unit of ``config`` (``"sfu"``) and of each of its kernels (by
    function name, lower case; functions sharing a kernel under the first's name)."""
    from hdl.core.plan import CorePlan
    from hdl.sfu.unit import SfuUnit, config_kernels

    geo = CorePlan.of(config).geometry
    parts = {"sfu": lambda: SfuUnit.of(config, geo)}
    for func, factory in sorted(config_kernels(config, geo).items(),
                                key=lambda kv: kv[0].value):
        if factory not in parts.values():
            parts[func.name.lower()] = factory
    return parts


def time_part(dut: wiring.Component, out_dir, *, mhz: float = 100.0, log=print) -> dict:
    """Synthesize, place and route ``dut`` in :class:`ShiftIO` for the LFE5U-85F into
    ``out_dir``; write and return its ``report.json``."""
    from amaranth.back import rtlil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tools = _tool_paths()
    (out / "top.il").write_text(rtlil.convert(ShiftIO(dut), name="top"))
    (out / "top.lpf").write_text(
        f'LOCATE COMP "clk" SITE "{_CLOCK_PIN}";\nIOBUF PORT "clk" IO_TYPE=LVCMOS33;\n'
        f'FREQUENCY PORT "clk" {mhz} MHZ;\n')
    steps = [
        [tools["YOSYS"], "-q", "-l", "top.rpt", "-p",
         "read_rtlil top.il; synth_ecp5 -top top -json top.json"],
        [tools["NEXTPNR_ECP5"], "--85k", "--package", "CABGA381", "--json", "top.json",
         "--lpf", "top.lpf", "--lpf-allow-unconstrained", "--seed", str(NEXTPNR_SEED),
         "--log", "top.tim", *NEXTPNR_OPTS.format(report=NEXTPNR_REPORT).split(),
         *NEXTPNR_GEMV_OPTS.split()],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, cwd=out, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=os.environ)
        if done.returncode:
            raise AirfoilError(f"{Path(cmd[0]).name} failed in {out}: "
                               f"{done.stderr.strip().splitlines()[-1:]}")
    parsed = parse_nextpnr_log((out / "top.tim").read_text())
    clock = next(iter(parsed["fmax_mhz"]))
    cells = parsed["cells"]
    n_in, n_out = ShiftIO.bits(dut)
    report = {
        "lut4": cells.get("TRELLIS_COMB", [0])[0], "ff": cells.get("TRELLIS_FF", [0])[0],
        "mult18x18d": cells.get("MULT18X18D", [0])[0], "dp16kd": cells.get("DP16KD", [0])[0],
        "ff_of_the_wrapper": n_in + n_out,
        "fmax_mhz": parsed["fmax_mhz"][clock], "target_mhz": parsed["target_mhz"][clock],
        "seed": NEXTPNR_SEED,
        "critical_path": critical_path(json.loads((out / NEXTPNR_REPORT).read_text()),
                                       clock),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv=None) -> int:
    from airfoil.config import load_config

    p = argparse.ArgumentParser(prog="python -m fpga.ulx3s.unit_timing",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("parts", nargs="*", help="'sfu' or SFU kernels (default: all)")
    p.add_argument("--config", default="ulx3s")
    p.add_argument("--build-dir", default="build/unit_timing")
    p.add_argument("--mhz", type=float, default=100.0)
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
        parts = sfu_parts(config)
        unknown = [n for n in args.parts if n not in parts]
        if unknown:
            raise AirfoilError(f"no part {unknown[0]!r} (accepted: {', '.join(parts)})")
        for name in args.parts or list(parts):
            r = time_part(parts[name](), Path(args.build_dir) / config.name / name,
                          mhz=args.mhz)
            cp = r["critical_path"]
            ours = [src.replace(f"{_ROOT}/", "") for src in cp.get("sources", [])
                    if src.startswith(f"{_ROOT}/")]
            print(f"{name}: {r['lut4']} LUT4 ({r['ff_of_the_wrapper']} FF of the wrapper), "
                  f"{r['mult18x18d']} MULT18X18D, Fmax {r['fmax_mhz']:.2f} MHz; critical "
                  f"path {cp.get('delay_ns')} ns ({cp.get('routing_ns')} routing): "
                  f"{' | '.join(ours)}", flush=True)
    except AirfoilError as e:
        print(f"airfoil: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
