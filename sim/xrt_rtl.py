"""Run programs on the Vitis kernel (the core behind XRT's control port) under Verilator.

:func:`run_kernel` is :func:`sim.rtl.run_core` for the adapter of
:mod:`hdl.core.xrt_control`: the same cases (:class:`sim.rtl.RtlCase`), job file, memory
harness and memory layout, but the testbench (``sim/tb/xrt_control_tb.py``) drives
``s_axi_control`` as XRT does: the kernel arguments, ``IER``/``GIE``, ``ap_start``, then a
poll of ``AP_CTRL`` until ``ap_done``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from airfoil.config import AccelConfig

from .cocotb_runner import DEFAULT_BUILD_ROOT, run_cocotb
from .core_harness import BUILD_ARGS, TOP, write_harness
from .rtl import write_job

__all__ = ["run_kernel"]

_TB_DIR = Path(__file__).resolve().parent / "tb"


def run_kernel(*, verilog, meta, config: AccelConfig, cases, build_root=None,
               work_dir=None) -> list[dict]:
    """Run ``cases`` on the kernel adapter; return one dict per case.

    Each dict holds ``ap_ctrl`` (the ``AP_CTRL`` value that showed ``ap_done``),
    ``ap_ctrl_after`` (read again: ``ap_done`` cleared), ``busy_ap_ctrl`` (read right
    after ``ap_start``), ``interrupt`` and ``isr`` at done, ``interrupt_cleared`` (after
    the ISR toggle), ``status``/``done``/``error``/``err_code``/``err_pc``/``cycles``
    (the result registers), ``reads`` (name -> bytes) and ``protocol_errors``.
    """
    meta = json.loads(Path(meta).read_text()) if not isinstance(meta, dict) else meta
    tmp = Path(work_dir or tempfile.mkdtemp(prefix="airfoil-xrt-"))
    job_file, _ = write_job(cases, config.memory.channels, tmp)
    sources = [Path(v) for v in ([verilog] if isinstance(verilog, (str, Path)) else verilog)]
    root = Path(build_root or DEFAULT_BUILD_ROOT)
    harness = write_harness(meta, config, root / "xrt_harness")
    data = run_cocotb(sources=[*harness, *sources], top=TOP, test_module="xrt_control_tb",
                      test_dir=_TB_DIR, seed=cases[0].seed if cases else 0,
                      env={"AIRFOIL_JOB": job_file}, build_root=build_root,
                      extra_args=BUILD_ARGS, public_flat_rw=False)
    out = data.get("runs", [])
    for r in out:
        r["reads"] = {k: bytes.fromhex(v) for k, v in r["reads"].items()}
    return out
