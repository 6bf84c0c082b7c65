"""Run cocotb testbenches on emitted Verilog under Verilator.

One build folder per (sources, top, build arguments): the folder name carries a hash of
all of them, builds are shared between tests and between pytest-xdist workers (a file
lock serialises the first build), and ccache is used when it is on PATH. A testbench
reads its case (stimulus, expected values) from the JSON file named by ``AIRFOIL_CASE``
and returns data to its caller through the JSON file named by ``AIRFOIL_RESULT``.

When a run fails, it is repeated once with the same seed on a build with FST tracing,
and the waveform path is part of the error, so a failing case always leaves a waveform.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from airfoil.errors import AirfoilError
from airfoil.toolenv import setup_environment

__all__ = ["RtlFailure", "build", "run_cocotb", "DEFAULT_BUILD_ROOT"]

DEFAULT_BUILD_ROOT = Path(os.environ.get("AIRFOIL_SIM_BUILD", "build/sim"))

#: Amaranth's Verilog trips Verilator's width and unused-signal warnings in simulation
#: builds; the lint target (`make lint`) checks the design with -Wall separately.
SIM_BUILD_ARGS = ("-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O3",
                  "--x-assign", "fast", "--x-initial", "fast")


class RtlFailure(AirfoilError):
    """A cocotb testbench failed (the message names the seed and the waveform)."""


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _digest(sources, top, args) -> str:
    h = hashlib.sha256()
    for s in sources:
        h.update(Path(s).read_bytes())
    h.update(top.encode())
    for a in args:
        h.update(b"\0" + str(a).encode())
    return h.hexdigest()[:12]


def _runner(public_flat_rw: bool):
    """cocotb's Verilator runner; without ``public_flat_rw`` its build drops
    ``--public-flat-rw`` (then the sources' Verilator control files say what is public)."""
    from cocotb_tools.runner import get_runner

    runner = get_runner("verilator")
    if not public_flat_rw:
        commands = runner._build_command

        def without_public():
            cmds = commands()
            cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"]
            return cmds
        runner._build_command = without_public
    return runner


def build(sources, top: str, *, build_root=None, waves: bool = False,
          extra_args=(), trace: bool = False, public_flat_rw: bool = True) -> Path:
    """Build (once) a Verilator model of ``top`` and return its build folder.

    ``waves`` builds with FST tracing; ``trace`` with whatever ``extra_args`` ask for.
    ``public_flat_rw`` makes every signal visible and writable to cocotb (cocotb's
    default; it keeps Verilator from optimising the design much); without it only what
    the sources' control files (``.vlt``) mark public is.
    """
    setup_environment()
    sources = [Path(s).resolve() for s in sources]
    args = list(SIM_BUILD_ARGS) + list(extra_args) + (["--trace-fst"] if waves else [])
    root = Path(build_root or DEFAULT_BUILD_ROOT).resolve()
    suffix = "-fst" if waves else "-trace" if trace else ""
    visible = [] if public_flat_rw else ["no --public-flat-rw"]
    bdir = root / f"{top}-{_digest(sources, top, args + visible)}{suffix}"
    stamp = bdir / ".built"
    if stamp.exists():
        return bdir
    with _locked(root / f".{bdir.name}.lock"):
        if stamp.exists():
            return bdir
        runner = _runner(public_flat_rw)
        runner.build(sources=sources, hdl_toplevel=top, build_dir=bdir,
                     build_args=args, waves=waves or trace, always=True,
                     log_file=root / f"{bdir.name}.build.log")
        stamp.write_text("ok\n")
    return bdir


def run_cocotb(*, sources, top: str, test_module: str, test_dir, seed: int,
               env: dict | None = None, case: dict | None = None, testcase=None,
               build_root=None, extra_args=(), keep_waves_on_failure: bool = True,
               public_flat_rw: bool = True) -> dict:
    """Run cocotb test module ``test_module`` (found in ``test_dir``) on ``top``.

    ``case``, if given, is written as JSON to the file named by ``$AIRFOIL_CASE``;
    ``public_flat_rw`` as for :func:`build`.

    Return the JSON object the testbench wrote to ``$AIRFOIL_RESULT`` (empty if none).
    Raise :class:`RtlFailure` naming the seed (and the kept FST waveform) on failure.
    """
    from cocotb_tools.runner import get_results, get_runner

    bdir = build(sources, top, build_root=build_root, extra_args=extra_args,
                 public_flat_rw=public_flat_rw)
    res_dir = Path(tempfile.mkdtemp(prefix=f"{top}-", dir=bdir.parent))
    env = dict(env or {})
    if case is not None:
        case_path = res_dir / "case.json"
        case_path.write_text(json.dumps(case))
        env["AIRFOIL_CASE"] = str(case_path)

    def attempt(build_dir: Path, waves: bool) -> tuple[bool, dict]:
        runner = get_runner("verilator")
        runner.build_dir = build_dir       # reuse the built model without rebuilding
        runner.hdl_toplevel = top
        runner.sim_hdl_toplevel = top
        runner.waves = waves
        result_json = res_dir / "result.json"
        xml = res_dir / "results.xml"
        for f in (result_json, xml):
            if f.exists():
                f.unlink()
        e = {"AIRFOIL_RESULT": str(result_json), **{k: str(v) for k, v in env.items()}}
        try:
            runner.test(test_module=test_module, hdl_toplevel=top, build_dir=build_dir,
                        test_dir=Path(test_dir).resolve(), seed=seed, extra_env=e,
                        results_xml=str(xml), testcase=testcase, waves=waves,
                        hdl_toplevel_lang="verilog")
            ok = True
        except SystemExit:
            ok = False
        if ok:
            try:
                _, failed = get_results(xml)
                ok = failed == 0
            except (RuntimeError, FileNotFoundError):
                ok = False
        data = json.loads(result_json.read_text()) if result_json.exists() else {}
        return ok, data

    ok, data = attempt(bdir, False)
    if ok:
        shutil.rmtree(res_dir, ignore_errors=True)
        return data
    where = ""
    if keep_waves_on_failure:
        try:
            wdir = build(sources, top, build_root=build_root, extra_args=extra_args,
                         waves=True, public_flat_rw=public_flat_rw)
        except RuntimeError:
            # FST needs lz4.h (Debian liblz4-dev); fall back to a VCD trace.
            wdir = build(sources, top, build_root=build_root,
                         extra_args=list(extra_args) + ["--trace-vcd"], waves=False,
                         trace=True, public_flat_rw=public_flat_rw)
        attempt(wdir, True)
        for name in ("dump.fst", "dump.vcd"):
            dump = Path(test_dir).resolve() / name
            if dump.exists():
                kept = res_dir / name
                shutil.move(str(dump), kept)
                where = f"; waveform {kept}"
                break
    msg = data.get("error") if isinstance(data, dict) else None
    raise RtlFailure(f"{top}: cocotb test {test_module} failed with seed {seed}"
                     f"{': ' + msg if msg else ''}{where}")
