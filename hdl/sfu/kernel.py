"""The contract between the SFU unit and its function kernels.

The special-function unit (``SFU`` instructions) is a front end that takes an instruction
from its queue, resolves its run-time registers, and starts the *kernel* of its
:class:`~airfoil.isa.SfuFunc`; each kernel computes its function of
:mod:`airfoil.fixedpoint` bit-exactly over the rows the instruction names.

A kernel is a :class:`wiring.Component` with the members of :func:`kernel_signature`:

* ``start`` (in, one cycle) with ``args`` (:data:`ARGS_LAYOUT`) stable from ``start``
  until ``done``; ``args`` holds the instruction's fields with registers already
  resolved (``rows`` = ``regs[rows_reg]`` or the field, ``heads`` = 1 for a field of 0,
  ``pos`` = ``regs[pos_reg]`` or 0, ``length`` = ``regs[len_reg]`` or 0).
* ``busy`` (out) from the cycle after ``start`` until ``done``; ``done`` (out) one cycle
  when the kernel has issued its last write. ``err``/``err_code`` (out) are valid with
  ``done`` (``MALFORMED`` for arguments the function cannot take, e.g. an odd RoPE
  segment); buffer range is checked by the unit, not by kernels.
* Two read ports ``src`` and ``aux`` (:func:`read_port_signature`): the kernel drives a
  byte address (a multiple of 4) and ``en``; the 32-bit little-endian word at that
  address is on ``data`` in the next cycle (latency 1, like a synchronous RAM). ``src``
  reads the instruction's ``src`` buffer, ``aux`` its ``aux`` buffer. A kernel built for
  the buffers' word width (``ATT_QK``, ``ATT_PV``) has read ports of a whole word instead:
  word-aligned addresses, a word of data; one that writes whole words (``QUANT_TOKEN``) has
  a write port of a word with its byte enables (:func:`put_int32` writes one int32
  through it).
* One write port ``dst`` (:func:`write_port_signature`): byte address (multiple of 4),
  32-bit data, 4 byte enables; into the instruction's ``dst`` buffer (its ``aux`` buffer
  while the port's ``aux`` bit is 1).

The unit grants every port access in the cycle it is made (kernels never stall on a
port), so a kernel's cycle count depends only on its arguments. Kernels hold their own
tables (reciprocal, rsqrt, exp, sigmoid) as ROMs generated from :mod:`airfoil.fixedpoint`.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Value
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from airfoil import isa

__all__ = ["ADDR_BITS", "ARGS_LAYOUT", "word_bytes_of", "read_port_signature", "write_port_signature",
           "put_int32", "kernel_signature", "finish_states"]

#: Byte address width of kernel ports (every on-chip buffer is below 16 MiB).
ADDR_BITS = 24

#: Resolved arguments of one SFU instruction.
ARGS_LAYOUT = data.StructLayout({
    "func": isa.SfuFunc,
    "n": 20,
    "rows": 32,
    "heads": 10,
    "kv_heads": 10,
    "pos": 32,
    "length": 32,
    "src_addr": ADDR_BITS,
    "dst_addr": ADDR_BITS,
    "aux_addr": ADDR_BITS,
    "imm0": 32,
    "imm1": 32,
})


def word_bytes_of(word_bits) -> int:
    """Bytes of a buffer word ``word_bits`` wide; raise TypeError unless it is a power of
    two of at least 32 bits (what the SFU's kernels and unit are built for)."""
    if (not isinstance(word_bits, int) or isinstance(word_bits, bool) or word_bits < 32
            or word_bits & (word_bits - 1)):
        raise TypeError(f"Word width must be a power of two of at least 32 bits, "
                        f"not {word_bits!r}")
    return word_bits // 8


def lane_count(lanes, word_bits: int, what: str) -> int:
    """The int32 lanes of a kernel on ``word_bits``-wide words: ``lanes``, or the word's
    int32 count when None; raise ValueError (naming ``what``) unless a power of two
    dividing that count."""
    per_word = word_bytes_of(word_bits) // 4
    lanes = per_word if lanes is None else lanes
    if (not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1
            or per_word % lanes or lanes & (lanes - 1)):
        raise ValueError(f"{what} lanes must be a power of two dividing {per_word}, "
                         f"not {lanes!r}")
    return lanes


def read_port_signature(data_bits: int = 32) -> wiring.Signature:
    """Kernel-side read port: ``addr``/``en`` out, ``data`` (``data_bits`` wide, the
    little-endian bytes from ``addr``, a multiple of ``data_bits / 8``) in one cycle later."""
    return wiring.Signature({"addr": Out(ADDR_BITS), "en": Out(1), "data": In(data_bits)})


def write_port_signature(data_bits: int = 32) -> wiring.Signature:
    """Kernel-side write port: ``addr`` (a multiple of ``data_bits / 8``), ``data`` and
    byte enables ``en`` out.

    ``aux`` (added for ``QUANT_TOKEN``'s scale pairs) sends the write to the instruction's
    ``aux`` buffer instead of its ``dst`` buffer; kernels that leave it 0 write ``dst``.
    """
    return wiring.Signature({"addr": Out(ADDR_BITS), "data": Out(data_bits),
                             "en": Out(data_bits // 8), "aux": Out(1)})


def put_int32(port, addr, data, en=0b1111) -> list:
    """Statements that write the 32-bit ``data`` (byte enables ``en``) at byte address
    ``addr`` (a multiple of 4) through a write ``port`` of any width: the word holding
    ``addr``, ``data`` in each of its lanes, the enables in the lane of ``addr``."""
    lg = (len(port.en) - 1).bit_length()
    if lg == 2:
        return [port.addr.eq(addr), port.data.eq(data), port.en.eq(en)]
    value = Value.cast(data)
    pad = value[-1] if value.shape().signed else Const(0, 1)
    value = Cat(value, pad.replicate(32 - len(value)))[:32]      # extended as its shape says
    return [port.addr.eq(Cat(Const(0, lg), addr[lg:])),
            port.data.eq(Cat(*[value] * (len(port.en) // 4))),
            port.en.eq(Const(en, 4) << (addr[2:lg] * 4))]


def kernel_signature(read_bits: int = 32, write_bits: int = 32,
                     aux_bits: int | None = None) -> dict:
    """Members of every SFU kernel component (see the module docstring); ``read_bits`` and
    ``write_bits`` are the widths of its read and write ports (32, or a buffer word for a
    kernel that takes or gives whole words), ``aux_bits`` that of its ``aux`` read port
    when not ``read_bits`` (a row of a banked KV buffer, :mod:`airfoil.kv_banks`)."""
    return {
        "start": In(1), "args": In(ARGS_LAYOUT),
        "busy": Out(1), "done": Out(1), "err": Out(1), "err_code": Out(isa.ErrorCode),
        "src": Out(read_port_signature(read_bits)),
        "aux": Out(read_port_signature(read_bits if aux_bits is None else aux_bits)),
        "dst": Out(write_port_signature(write_bits)),
    }


class WordKernel(wiring.Component):
    """A kernel whose read ports are a buffer word wide (``word_bits``: a power of two of
    at least 32), and its write port too when ``word_writes``; its cycle count is its
    module's ``cycles(args, word_bytes=...)`` (``formula``)."""

    def __init__(self, formula, *, word_bits: int = 32, word_writes: bool = False):
        self._word_bytes = word_bytes_of(word_bits)
        self._formula = formula
        super().__init__(kernel_signature(word_bits, word_bits if word_writes else 32))

    @property
    def word_bits(self) -> int:
        """Width of the read ports."""
        return 8 * self._word_bytes

    def cycles(self, args) -> int:
        """The kernel's cycles on ``args`` (its module's formula)."""
        return self._formula(args, word_bytes=self._word_bytes)


def finish_states(m, kernel) -> None:
    """Add a kernel FSM's last states (inside its ``with m.FSM()``): ``ERR`` reports
    MALFORMED with ``done``, ``END`` reports ``done``; both return to ``IDLE``."""
    with m.State("ERR"):
        m.d.comb += [kernel.busy.eq(1), kernel.done.eq(1), kernel.err.eq(1),
                     kernel.err_code.eq(isa.ErrorCode.MALFORMED)]
        m.next = "IDLE"
    with m.State("END"):
        m.d.comb += [kernel.busy.eq(1), kernel.done.eq(1)]
        m.next = "IDLE"
