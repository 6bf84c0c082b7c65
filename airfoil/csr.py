"""The control/status register map of the core, defined once.

The hardware (``hdl.core.csr``) builds its AXI4-Lite register block from :data:`REGISTERS`
and the host side (``sim.rtl`` and the cocotb testbenches) addresses registers by name
through :func:`offset`. Registers are 32 bits wide at word-aligned byte offsets.

Programming sequence: write ``PROG_BASE_LO/HI`` (byte address of the program file, the
header included), ``PROG_COUNT`` (instructions after the header), the data bases (the
address that LD/ST ``dram_addr`` on a memory channel are relative to: ``DATA_BASE_LO/HI``
for channel 0, ``DATA_BASE<c>_LO/HI`` for channel ``c`` >= 1, see
:func:`data_base_registers`), then write ``CTRL`` with ``START`` set. Poll ``STATUS`` until ``DONE``; ``ERROR`` and ``ERR_CODE`` (an
:class:`airfoil.isa.ErrorCode`) tell whether the program stopped on a fault, and
``ERR_PC`` names the faulting instruction. ``CYCLES_LO/HI`` count the clock cycles from
start to done; ``BUSY_<UNIT>`` the cycles each unit was busy (not idle) and ``OVERLAP``
the cycles in which two or more units were busy, so that ``OVERLAP / CYCLES`` is the
fraction of the run in which the queues ran concurrently.

The map lists the base pairs of :data:`MAX_CHANNELS` channels; a core builds those of its
configuration's channels only (the others read as 0 and ignore writes).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import AirfoilError

__all__ = ["Register", "REGISTERS", "CSR_ADDR_BITS", "offset", "register",
           "CTRL_START", "STATUS_BUSY", "STATUS_DONE", "STATUS_ERROR",
           "STATUS_ERR_CODE_SHIFT", "STATUS_ERR_CODE_BITS", "CORE_ID", "COUNTER_REGISTERS",
           "MAX_CHANNELS", "data_base_registers", "channel_of"]

#: Byte-address width of the AXI4-Lite port.
CSR_ADDR_BITS = 10
#: Memory channels the register map has data base pairs for.
MAX_CHANNELS = 64
#: Byte offset of ``DATA_BASE1_LO``; channel ``c`` >= 1 has its pair at
#: ``_CHANNEL_BASE + 8 * (c - 1)``.
_CHANNEL_BASE = 0x100

#: ``CTRL`` bit: write 1 to start the program (ignored while busy).
CTRL_START = 1 << 0
#: ``STATUS`` bits.
STATUS_BUSY = 1 << 0
STATUS_DONE = 1 << 1
STATUS_ERROR = 1 << 2
STATUS_ERR_CODE_SHIFT = 8
STATUS_ERR_CODE_BITS = 4
#: Value of the read-only ``ID`` register: ``"AF"`` and the ISA version in the low byte.
CORE_ID = 0x4146_0000


@dataclass(frozen=True)
class Register:
    """One 32-bit register: name, byte offset, access (``"rw"``, ``"ro"``, ``"wo"``)."""

    name: str
    offset: int
    access: str
    doc: str


REGISTERS = (
    Register("CTRL", 0x00, "wo", "bit 0 START: start the program (self-clearing)"),
    Register("STATUS", 0x04, "ro", "bit 0 BUSY, bit 1 DONE, bit 2 ERROR, bits 8..11 ERR_CODE"),
    Register("PROG_BASE_LO", 0x08, "rw", "program file byte address, bits 0..31"),
    Register("PROG_BASE_HI", 0x0C, "rw", "program file byte address, bits 32..63"),
    Register("PROG_COUNT", 0x10, "rw", "instructions in the program"),
    Register("DATA_BASE_LO", 0x14, "rw", "data base byte address, bits 0..31"),
    Register("DATA_BASE_HI", 0x18, "rw", "data base byte address, bits 32..63"),
    Register("CYCLES_LO", 0x1C, "ro", "cycles from start to done, bits 0..31"),
    Register("CYCLES_HI", 0x20, "ro", "cycles from start to done, bits 32..63"),
    Register("ERR_PC", 0x24, "ro", "index of the instruction that raised the error"),
    Register("RETIRED", 0x28, "ro", "instructions dispatched in the last run"),
    Register("ID", 0x2C, "ro", "core identification: 0x4146 << 16 | ISA version"),
    # Concurrency counters of the last run (cycles, wrapping at 2**32).
    Register("BUSY_LOAD", 0x30, "ro", "cycles the LOAD unit was busy"),
    Register("BUSY_MATRIX", 0x34, "ro", "cycles the MATRIX unit was busy"),
    Register("BUSY_SFU", 0x38, "ro", "cycles the SFU was busy"),
    Register("BUSY_STORE", 0x3C, "ro", "cycles the STORE unit was busy"),
    Register("OVERLAP", 0x40, "ro", "cycles in which two or more units were busy"),
    # Data bases of channels 1..63 (channel 0: DATA_BASE_LO/HI above).
    *(Register(f"DATA_BASE{c}_{half}", _CHANNEL_BASE + 8 * (c - 1) + 4 * i, "rw",
               f"data base byte address of memory channel {c}, bits "
               f"{32 * i}..{32 * i + 31}")
      for c in range(1, MAX_CHANNELS) for i, half in enumerate(("LO", "HI"))),
)

#: The concurrency counters, by the name the RTL runner reports them under.
COUNTER_REGISTERS = {"busy_load": "BUSY_LOAD", "busy_matrix": "BUSY_MATRIX",
                     "busy_sfu": "BUSY_SFU", "busy_store": "BUSY_STORE",
                     "overlap": "OVERLAP"}

_BY_NAME = {r.name: r for r in REGISTERS}


def data_base_registers(channel: int) -> tuple[str, str]:
    """Names of the ``(low, high)`` data base registers of memory ``channel``.

    Channel 0 has ``DATA_BASE_LO/HI`` (0x14, 0x18); channel ``c`` >= 1 has
    ``DATA_BASE<c>_LO/HI`` at ``0x100 + 8 * (c - 1)`` and 4 bytes on.
    """
    if isinstance(channel, bool) or not isinstance(channel, int) or \
            not 0 <= channel < MAX_CHANNELS:
        raise AirfoilError(f"memory channel must be 0..{MAX_CHANNELS - 1}, not {channel!r}")
    if channel == 0:
        return "DATA_BASE_LO", "DATA_BASE_HI"
    return f"DATA_BASE{channel}_LO", f"DATA_BASE{channel}_HI"


def channel_of(name: str) -> int | None:
    """The memory channel whose data base register is ``name`` (``None``: not one)."""
    if name in ("DATA_BASE_LO", "DATA_BASE_HI"):
        return 0
    if name.startswith("DATA_BASE") and name[-3:] in ("_LO", "_HI") and \
            name[9:-3].isdigit():
        return int(name[9:-3])
    return None


def register(name: str) -> Register:
    """Return the register called ``name``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise AirfoilError(f"unknown CSR {name!r} (accepted: {', '.join(_BY_NAME)})") from None


def offset(name: str) -> int:
    """Return the byte offset of the register called ``name``."""
    return register(name).offset
