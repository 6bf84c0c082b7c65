"""The ``board`` backend: run a compiled folder on a ULX3S over its USB UART.

The board runs the bitstream of ``airfoil bitstream --board ulx3s`` (the core with its
block-RAM memory and the host link of :mod:`fpga.ulx3s.link`); this side sends the
request sequence of :func:`fpga.ulx3s.host.run_sequence` (program, image, registers,
start, status polls, output) through the serial port (pyserial, imported only here).
"""

from __future__ import annotations

import numpy as np
import torch

from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError
from airfoil.folder import OUT_DTYPES
from airfoil.isa import ErrorCode

__all__ = ["run_board"]


def run_board(folder, config: AccelConfig, x_q=None, *, port: str) -> tuple[torch.Tensor, dict]:
    """Run a linear-layer folder on the board at ``port``; return ``(out, stats)``."""
    from fpga.ulx3s.host import SerialTransport, run_over, run_sequence

    if config.device is None or config.memory.channels != 1:
        raise AirfoilError(f"config {config.name} is not a board build (one memory channel "
                           f"and a device); the ULX3S runs config ulx3s")
    if port is None:
        raise AirfoilError("the board backend needs --port (e.g. /dev/ttyUSB0)")
    dt = np.dtype(OUT_DTYPES[folder.out_bits])
    out_addr = int(folder.manifest["output"]["addr"])
    seq = run_sequence(folder.program.to_bytes(), bytes(folder.image_with_input(x_q)),
                       {"out": (out_addr, folder.n * dt.itemsize)},
                       memory_bytes=config.memory.channel_bytes)
    link = SerialTransport(port)
    try:
        r = run_over(link, seq)
    finally:
        link.close()
    if r["error"]:
        raise AirfoilError(f"board: the core stopped with error {ErrorCode(r['err_code']).name} "
                           f"at instruction {r['err_pc']}")
    out = torch.from_numpy(np.frombuffer(r["reads"]["out"], dtype=dt).astype(np.int64))
    return out, {"cycles": r["cycles"], "instructions": r["retired"]}
