"""Full-size synthetic compiles shared by the bench areas ``llama7b`` and
``length_adaptive``: each published shape compiled for its board by ``airfoil compile
--synthetic`` in a process of its own, whose wall time and peak resident memory are
measured (``os.wait4``, what ``/usr/bin/time -v`` reports as "Maximum resident set
size")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["MODELS", "compile_measured"]

#: Figure prefix -> (synthetic shape, board config).
MODELS = {"llama2_7b_u280": ("llama2-7b", "u280"),
          "llama3_8b_u280": ("llama3-8b", "u280"),
          "llama2_13b_vhk158": ("llama2-13b", "vhk158")}


def compile_measured(shape: str, config: str, out_dir, *, size_only: bool, log,
                     extra=()) -> dict:
    """Compile ``shape`` for ``config`` into ``out_dir`` in a child process (``extra``:
    further ``airfoil compile`` arguments, e.g. ``--recipe R.yaml``); return
    ``{"seconds", "cpu_seconds", "peak_rss_bytes", "manifest"}`` (wall time, user and
    system CPU time, maximum resident set size). Raise ``RuntimeError`` with the
    child's last output line when the compile fails."""
    cmd = [sys.executable, "-m", "airfoil", "compile", "--synthetic", shape, "--config",
           config, "-o", str(out_dir)] + (["--size-only"] if size_only else []) + list(extra)
    log(f"compiling {shape} for {config}{' (size only)' if size_only else ''} ...")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "COLUMNS": "100"})
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        last = out.strip().splitlines()[-1] if out.strip() else "no output"
        raise RuntimeError(f"airfoil compile --synthetic {shape} --config {config} failed: "
                           f"{last}")
    manifest = json.loads((Path(out_dir) / "manifest.json").read_text())
    log(f"compiled {shape} for {config} in {seconds:.0f} s, peak RSS "
        f"{usage.ru_maxrss / 2 ** 20:.2f} GiB")
    return {"seconds": round(seconds, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_bytes": usage.ru_maxrss * 1024, "manifest": manifest}
