"""The host side of the link: the run of a compiled layer as a sequence of requests.

:func:`run_sequence` is the one definition of how a host runs a program on the board:
a generator that yields ``(request bytes, reply length)`` and is sent each reply, so the
same sequence runs over a serial port (:func:`run_over`, :class:`SerialTransport`) and in
the cocotb test's bit-level UART driver. Memory layout: the program file at
:data:`PROG_BASE`, the data image at the next 4 KiB boundary after it.
"""

from __future__ import annotations

import struct

from airfoil import csr as csrmap
from airfoil.errors import AirfoilError

from . import link

__all__ = ["PROG_BASE", "layout", "run_sequence", "run_over", "SerialTransport",
           "LinkError"]

#: Byte address of the program file in the board memory.
PROG_BASE = 0
_ALIGN = 4096


class LinkError(AirfoilError):
    """The board answered a request with a status other than OK."""


def layout(program_bytes: int, image_bytes: int, memory_bytes: int) -> int:
    """The data base for a program and image of these sizes (refused if they do not fit)."""
    data_base = -(-(PROG_BASE + program_bytes) // _ALIGN) * _ALIGN
    if data_base + image_bytes > memory_bytes:
        raise AirfoilError(f"the program ({program_bytes} bytes) and image ({image_bytes} "
                           f"bytes) need {data_base + image_bytes} bytes; the board memory "
                           f"has {memory_bytes}")
    return data_base


def _transact(op, addr, arg=0, payload=b""):
    reply = yield link.request(op, addr, arg, payload), link.reply_bytes(op, arg)
    status = reply[-1]
    if status != link.STATUS_OK:
        raise LinkError(f"link: request {op:#04x} at {addr:#x} answered status {status:#04x}")
    return reply[:-1]


def write_mem(addr: int, data: bytes):
    yield from _transact(link.WRITE_MEM, addr, len(data), bytes(data))


def read_mem(addr: int, n: int):
    return (yield from _transact(link.READ_MEM, addr, n))


def write_csr(name: str, value: int):
    yield from _transact(link.WRITE_CSR, csrmap.offset(name), value & 0xFFFF_FFFF)


def read_csr(name: str):
    return struct.unpack("<I", (yield from _transact(link.READ_CSR, csrmap.offset(name))))[0]


def run_sequence(program: bytes, image: bytes, read_back: dict, *, memory_bytes: int,
                 max_polls: int = 100_000):
    """Load, run and read back one program: a generator of requests (see the module).

    ``read_back`` maps names to ``(image-relative address, nbytes)``. Returns a dict:
    ``done``, ``error``, ``err_code``, ``err_pc``, ``cycles``, ``retired``, ``polls``
    and ``reads`` (name -> bytes).
    """
    if len(program) < 12:
        raise AirfoilError("program image shorter than its header")
    data_base = layout(len(program), len(image), memory_bytes)
    yield from write_mem(PROG_BASE, program)
    yield from write_mem(data_base, image)
    count = int.from_bytes(program[8:12], "little")
    lo, hi = csrmap.data_base_registers(0)
    for name, value in (("PROG_BASE_LO", PROG_BASE), ("PROG_BASE_HI", 0),
                        ("PROG_COUNT", count), (lo, data_base), (hi, 0)):
        yield from write_csr(name, value)
    yield from write_csr("CTRL", csrmap.CTRL_START)
    status = 0
    for polls in range(1, max_polls + 1):
        status = yield from read_csr("STATUS")
        if status & csrmap.STATUS_DONE:
            break
    else:
        raise AirfoilError(f"the core did not finish within {max_polls} status polls")
    result = {
        "done": bool(status & csrmap.STATUS_DONE), "error": bool(status & csrmap.STATUS_ERROR),
        "err_code": (status >> csrmap.STATUS_ERR_CODE_SHIFT)
        & ((1 << csrmap.STATUS_ERR_CODE_BITS) - 1),
        "err_pc": (yield from read_csr("ERR_PC")),
        "retired": (yield from read_csr("RETIRED")),
        "polls": polls,
    }
    lo_c = yield from read_csr("CYCLES_LO")
    hi_c = yield from read_csr("CYCLES_HI")
    result["cycles"] = hi_c << 32 | lo_c
    result["reads"] = {}
    for name, (addr, n) in read_back.items():
        result["reads"][name] = yield from read_mem(data_base + addr, n)
    return result


def run_over(transport, sequence):
    """Drive a request sequence over a blocking transport (``write``, ``read(n)``)."""
    try:
        request, nreply = next(sequence)
        while True:
            transport.write(request)
            reply = transport.read(nreply)
            if len(reply) != nreply:
                raise AirfoilError(f"link: the board answered {len(reply)} of {nreply} bytes "
                                   f"(timed out)")
            request, nreply = sequence.send(reply)
    except StopIteration as stop:
        return stop.value


class SerialTransport:
    """A serial port at :data:`~.link.LINK_BAUD` (pyserial, imported only here)."""

    def __init__(self, port: str, *, baud: int = link.LINK_BAUD, timeout: float = 5.0):
        try:
            import serial
        except ImportError as e:
            raise AirfoilError("the board backend needs pyserial (pip install "
                               "'airfoil[board]')") from e
        try:
            self._port = serial.Serial(port, baudrate=baud, timeout=timeout)
        except (serial.SerialException, OSError) as e:
            raise AirfoilError(f"cannot open serial port {port}: {e}") from None

    def write(self, data: bytes) -> None:
        self._port.write(data)

    def read(self, n: int) -> bytes:
        return self._port.read(n)

    def close(self) -> None:
        self._port.close()
