"""The ``xrt`` backend: run a compiled folder on the Alveo kernel through XRT's ``pyxrt``.

``pyxrt`` comes with an XRT install (not from PyPI) and is imported only when this backend
runs. :func:`run_xrt` opens the device, loads the ``.xclbin`` built from the package of
:mod:`fpga.alveo`, and places the folder in one buffer per kernel argument of
:func:`airfoil.kernel.kernel_args`, each in the memory bank of the argument's port:

* ``program``: ``program.afp`` (header included), ``prog_count`` its instructions;
* ``data<c>``: channel ``c``'s region of ``weights.bin`` (from the manifest's
  ``channel_offsets``; channel 0's region holds the input and the output); channels whose
  regions start at the same offset share one buffer.

It syncs the buffers to the device, runs the kernel, waits, reads the result registers
(:func:`airfoil.kernel.status_registers`: ``STATUS`` names an error), syncs the buffers back
and reads the output from channel 0's region.
"""

from __future__ import annotations

import importlib

from airfoil import csr as csrmap
from airfoil import kernel as kmap
from airfoil.config import AccelConfig
from airfoil.errors import AirfoilError
from airfoil.folder import load_folder
from airfoil.isa import ErrorCode

__all__ = ["run_xrt", "import_pyxrt", "channel_regions"]


def import_pyxrt():
    """Import ``pyxrt``; one-line error when XRT's Python module is not installed."""
    try:
        return importlib.import_module("pyxrt")
    except ImportError:
        raise AirfoilError("the xrt backend needs XRT's Python module 'pyxrt' (not on PyPI: "
                           "install XRT and source its setup.sh)") from None


def channel_regions(offsets: list[int], image_bytes: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each channel's region of the image: from its offset to the next
    larger offset of any channel (the end of the image for the last)."""
    ends = sorted(set(offsets)) + [image_bytes]
    return [(o, ends[ends.index(o) + 1]) for o in offsets]


def _read_status(kernel, channels: int) -> dict:
    out = {}
    for reg in kmap.status_registers(channels):
        value = 0
        for i in range(reg.size // 4):
            value |= (int(kernel.read_register(reg.offset + 4 * i)) & 0xFFFFFFFF) << (32 * i)
        out[reg.name] = value
    return out


def run_xrt(folder_path, config: AccelConfig, x_q=None, *, xclbin, device: int = 0):
    """Run a linear-layer folder on the kernel in ``xclbin`` on XRT device ``device``;
    return ``(out, stats)`` (``cycles``: the core's cycle counter)."""
    if xclbin is None:
        raise AirfoilError("the xrt backend needs --xclbin (the v++ build of `airfoil "
                           "package`)")
    pyxrt = import_pyxrt()
    folder = load_folder(folder_path, config)
    image = folder.image_with_input(x_q)
    nch = config.memory.channels
    regions = channel_regions(folder.channel_offsets, len(image))
    program = folder.program.to_bytes()

    dev = pyxrt.device(device)
    uuid = dev.load_xclbin(str(xclbin))
    kernel = pyxrt.kernel(dev, uuid, kmap.KERNEL_NAME,
                          pyxrt.kernel.cu_access_mode.exclusive)
    args = kmap.kernel_args(nch)
    index = {a.name: i for i, a in enumerate(args)}
    to_dev = pyxrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE
    from_dev = pyxrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE

    def buffer(raw: bytes, arg: str):
        bo = pyxrt.bo(dev, max(len(raw), 4096), pyxrt.bo.normal, kernel.group_id(index[arg]))
        bo.write(raw, 0)
        bo.sync(to_dev, len(raw), 0)
        return bo

    values = {"program": buffer(program, "program"),
              "prog_count": len(folder.program.words)}
    by_start = {}
    for c, (start, end) in enumerate(regions):
        if start not in by_start:
            by_start[start] = buffer(bytes(image[start:end]), f"data{c}")
        values[f"data{c}"] = by_start[start]
    run = kernel(*[values[a.name] for a in args])
    state = run.wait()
    status = _read_status(kernel, nch)
    if not status["status"] & csrmap.STATUS_DONE:
        raise AirfoilError(f"xrt: the kernel did not finish (command state {state})")
    if status["status"] & csrmap.STATUS_ERROR:
        code = ErrorCode((status["status"] >> csrmap.STATUS_ERR_CODE_SHIFT) &
                         ((1 << csrmap.STATUS_ERR_CODE_BITS) - 1))
        raise AirfoilError(f"xrt: the core stopped with error {code.name} at instruction "
                           f"{status['err_pc']}")
    for start, bo in by_start.items():
        end = next(e for s, e in regions if s == start)
        bo.sync(from_dev, end - start, 0)
        image[start:end] = bytes(bo.read(end - start, 0))
    return folder.read_output(image), {"cycles": status["cycles"]}
