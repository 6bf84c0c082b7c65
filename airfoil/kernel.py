"""The Vitis kernel interface of the core, defined once: XRT's control registers and the
kernel arguments.

XRT starts an RTL kernel through an AXI4-Lite port ``s_axi_control`` laid out as
``ap_ctrl_hs``: :data:`AP_CTRL` at 0x00 (``ap_start``, ``ap_done``, ``ap_idle``,
``ap_ready``), :data:`GIE`, :data:`IER` and :data:`ISR` at 0x04, 0x08, 0x0C, then the
arguments from 0x10. :func:`kernel_args` lists the arguments of a config:

* ``program``: the byte address of the program file (header included) in the buffer of
  port ``m_axi_instr``;
* ``prog_count``: the instructions after the header;
* ``data<c>``: the data base of memory channel ``c`` (what ``LD``/``ST`` addresses on that
  channel are relative to), a buffer of port ``m_axi_gmem<c>`` on ``HBM[c]``.

After the arguments come read-only result registers (:func:`status_registers`): the
core's ``STATUS`` at the end of the run (ERROR and ERR_CODE as in :mod:`airfoil.csr`),
its ``ERR_PC`` and its cycle counter. The adapter (:mod:`hdl.core.xrt_control`), the
``kernel.xml`` of the package (:mod:`fpga.alveo`) and the XRT host runner
(:mod:`airfoil.cli.backend_xrt`) all read these tables.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AP_CTRL", "GIE", "IER", "ISR", "AP_START", "AP_DONE", "AP_IDLE", "AP_READY",
           "CONTROL_ADDR_BITS", "KernelArg", "kernel_args", "status_registers",
           "instr_port", "data_port", "KERNEL_NAME"]

#: Name of the kernel (and of its Verilog top) in the ``.xo``.
KERNEL_NAME = "airfoil_kernel"
#: Byte-address width of ``s_axi_control``.
CONTROL_ADDR_BITS = 12

AP_CTRL, GIE, IER, ISR = 0x00, 0x04, 0x08, 0x0C
#: ``AP_CTRL`` bits: ``ap_start`` (host sets, cleared when the run is taken), ``ap_done``
#: (cleared when ``AP_CTRL`` is read), ``ap_idle``, ``ap_ready`` (cleared on read).
AP_START, AP_DONE, AP_IDLE, AP_READY = 1 << 0, 1 << 1, 1 << 2, 1 << 3
#: First argument's byte offset.
_ARGS_BASE = 0x10


@dataclass(frozen=True)
class KernelArg:
    """One register of ``s_axi_control`` after the ap_ctrl_hs block.

    ``size`` is 4 or 8 bytes; ``port`` is the AXI4 master a pointer argument addresses
    (``None``: a scalar); ``csr`` names the core registers the value goes to, low word
    first (empty for the read-only result registers).
    """

    name: str
    offset: int
    size: int
    port: str | None
    csr: tuple[str, ...]
    doc: str

    @property
    def is_pointer(self) -> bool:
        return self.port is not None


def instr_port() -> str:
    """The kernel's instruction-fetch AXI4 master."""
    return "m_axi_instr"


def data_port(channel: int) -> str:
    """The kernel's AXI4 master of memory channel ``channel``."""
    return f"m_axi_gmem{channel}"


def kernel_args(channels: int) -> tuple[KernelArg, ...]:
    """The kernel arguments of a core of ``channels`` memory channels, in XRT's order."""
    from .csr import data_base_registers

    args = [KernelArg("program", _ARGS_BASE, 8, instr_port(),
                      ("PROG_BASE_LO", "PROG_BASE_HI"), "program file (header included)"),
            KernelArg("prog_count", _ARGS_BASE + 8, 4, None, ("PROG_COUNT",),
                      "instructions after the header")]
    for c in range(channels):
        args.append(KernelArg(f"data{c}", _ARGS_BASE + 16 + 8 * c, 8, data_port(c),
                              data_base_registers(c), f"data base of memory channel {c}"))
    return tuple(args)


def status_registers(channels: int) -> tuple[KernelArg, ...]:
    """The read-only result registers after the arguments: ``status`` (the core's
    ``STATUS`` when the run ended), ``err_pc`` and ``cycles`` (64 bits)."""
    base = _ARGS_BASE + 16 + 8 * channels
    return (KernelArg("status", base, 4, None, (), "core STATUS at the end of the run"),
            KernelArg("err_pc", base + 4, 4, None, (), "instruction that raised the error"),
            KernelArg("cycles", base + 8, 8, None, (), "cycles from start to done"))
