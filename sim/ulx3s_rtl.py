"""The ULX3S design (core, block-RAM memory, UART host link) under Verilator and cocotb.

:func:`run_system` writes the Verilog of :class:`fpga.ulx3s.system.AirfoilSystem` with
a short serial bit (:data:`SIM_DIVISOR` cycles, the board's 100 at 1 Mbaud would only
make the run longer) and runs ``sim/tb_ulx3s/tb_link.py``: a bit-level UART driver
that plays the host, the link protocol checks, then the request sequence of
:func:`fpga.ulx3s.host.run_sequence` for one program, exactly as the board backend sends
it over the USB UART.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from airfoil.config import AccelConfig

from .cocotb_runner import run_cocotb

__all__ = ["SIM_DIVISOR", "emit_system", "run_system"]

#: Clock cycles per serial bit in simulation.
SIM_DIVISOR = 8
TOP = "airfoil_system"
_TB_DIR = Path(__file__).resolve().parent / "tb_ulx3s"
_SOURCES = Path(__file__).resolve().parents[1]


def _digest(config: AccelConfig) -> str:
    h = hashlib.sha256(config.config_hash.encode())
    for p in sorted((_SOURCES / "hdl").rglob("*.py")) + \
            sorted((_SOURCES / "fpga" / "ulx3s").glob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def emit_system(config: AccelConfig, build_dir="build") -> list[Path]:
    """Write the system's Verilog and the RAM module; return the source files."""
    from fpga.ulx3s.system import AirfoilSystem
    from hdl.build import write_verilog
    from hdl.core.ram import RAM_MODULE, RAM_VERILOG

    out = Path(build_dir) / f"{config.name}_system-{_digest(config)}"
    vpath = out / f"{TOP}.v"
    ram = out / f"{RAM_MODULE}.v"
    if not vpath.exists():
        write_verilog(AirfoilSystem(config, divisor=SIM_DIVISOR), TOP, out)
        ram.write_text(RAM_VERILOG)
    return [ram, vpath]


def run_system(config: AccelConfig, *, program: bytes, image: bytes, read_back: dict,
               build_dir="build", seed: int = 0) -> dict:
    """Run one program on the system through its UART; return the testbench's record:
    ``run`` (the dict of :func:`fpga.ulx3s.host.run_sequence`, reads as hex) and the
    protocol checks (``core_id``, ``bad_op_status``, ``past_end_status``,
    ``roundtrip_ok``)."""
    sources = emit_system(config, build_dir)
    case = {"program": program.hex(), "image": image.hex(),
            "read_back": {k: list(v) for k, v in read_back.items()},
            "memory_bytes": config.memory.channel_bytes, "divisor": SIM_DIVISOR}
    return run_cocotb(sources=sources, top=TOP, test_module="tb_link", test_dir=_TB_DIR,
                      seed=seed, case=case, build_root=Path(build_dir) / "sim",
                      env={"COCOTB_LOG_LEVEL": "WARNING"})
