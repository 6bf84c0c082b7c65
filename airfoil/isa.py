"""The Airfoil instruction set, defined once.

Every instruction is :data:`INSTR_BITS` bits: a 16-bit header (opcode, dependency
tokens) and a body whose layout depends on the opcode. The layouts below are
``amaranth.lib.data`` layouts and the enums are ``amaranth.lib.enum`` enums, so that:

* the compiler encodes with :func:`encode` (``Layout.const(...).as_bits()``),
* the ISA simulator decodes with :func:`decode` (``data.Const`` views), and
* the RTL decoder is a ``Signal(INSTR_LAYOUT)`` whose fields are these same slices.

No field offset or width is written anywhere else.

Execution model
---------------
Instructions are dispatched in program order to one of four unit queues (:class:`Unit`):
LOAD (``LD``), MATRIX (``MM``, ``MV``), SFU (``SFU``) and STORE (``ST``). ``SYS``
instructions run in the dispatcher itself. The queues run concurrently; they
synchronise only through dependency tokens, as in VTA and FlightLLM: before it starts,
an instruction takes one token from the token FIFO of every unit named in its ``wait``
mask (a FIFO from that unit to this one), and after it completes it puts one token into
the FIFO towards every unit named in its ``release`` mask. A ``SYS BARRIER`` waits until
every queue is empty and idle; ``SYS HALT`` does the same and then ends the program.

Each token FIFO holds at most :data:`TOKEN_DEPTH` tokens; a program must never have more
outstanding between two units (the ISA simulator refuses such a program).

Addresses: ``dram_addr`` is a byte offset from the data base address (a CSR); buffer
addresses are byte offsets into the named on-chip buffer. ``LD``/``ST`` addresses,
strides and sizes are multiples of the configuration's memory word
(:attr:`AccelConfig.word_bytes`) and ``count`` is at least 1; anything else is
:attr:`ErrorCode.MALFORMED`.
"""

from __future__ import annotations

from amaranth.hdl import Shape, signed
from amaranth.lib import data, enum

from .errors import ProgramError

__all__ = [
    "ISA_VERSION", "INSTR_BITS", "TOKEN_DEPTH", "INSTR_BYTES", "Opcode", "Unit", "SysOp", "Buffer",
    "WeightFormat", "Sparsity", "OutFormat", "SfuFunc", "ErrorCode", "HEADER_LAYOUT",
    "SYS_LAYOUT", "MEM_LAYOUT", "MATRIX_LAYOUT", "SFU_LAYOUT", "BODY_LAYOUT",
    "INSTR_LAYOUT", "encode", "decode", "body_name", "unit_of", "UNIT_OF_OPCODE",
]

#: Version of the encoding; a program of another version is refused.
ISA_VERSION = 1
INSTR_BITS = 256
INSTR_BYTES = INSTR_BITS // 8
HEADER_BITS = 16
#: Capacity of each token FIFO between two units.
TOKEN_DEPTH = 8


class Opcode(enum.Enum, shape=4):
    """Instruction class. Code 0 is never assigned, so zeroed memory traps."""
    SYS = 1   #: dispatcher: NOP, HALT, BARRIER, SETREG
    LD = 2    #: LOAD unit: memory -> on-chip buffer
    ST = 3    #: STORE unit: on-chip buffer -> memory
    MM = 4    #: MATRIX unit: matrix x matrix (prefill; ``m`` activation vectors)
    MV = 5    #: MATRIX unit: matrix x vector (decode; ``m`` must be 1)
    SFU = 6   #: special-function unit: softmax, norms, activations, requantization


class Unit(enum.Enum, shape=2):
    """Execution units with their own queue; bit ``i`` of a token mask names unit ``i``."""
    LOAD = 0
    MATRIX = 1
    SFU = 2
    STORE = 3


UNIT_OF_OPCODE = {
    Opcode.LD: Unit.LOAD, Opcode.ST: Unit.STORE, Opcode.MM: Unit.MATRIX,
    Opcode.MV: Unit.MATRIX, Opcode.SFU: Unit.SFU,
}


class SysOp(enum.Enum, shape=4):
    NOP = 0
    HALT = 1
    BARRIER = 2
    SETREG = 3  #: write ``value`` to run-time register ``reg`` (loop bounds, lengths)


class Buffer(enum.Enum, shape=3):
    """On-chip buffers a LD/ST names."""
    ACT = 0     #: activations (INT8 vectors)
    WGT = 1     #: weight tiles: packed weights, group scales, optional bias
    OUT = 2     #: requantized results
    KV = 3      #: key/value cache
    AUX = 4     #: tables, masks, metadata


class WeightFormat(enum.Enum, shape=4):
    """Weight encodings a matrix instruction can name."""
    INT4 = 0
    INT8 = 1
    INT2 = 2
    INT3 = 3


class Sparsity(enum.Enum, shape=4):
    """Weight sparsity pattern of a matrix instruction."""
    DENSE = 0


class OutFormat(enum.Enum, shape=2):
    """Width the matrix result is requantized to (saturating)."""
    INT8 = 0
    INT16 = 1
    INT32 = 2


class SfuFunc(enum.Enum, shape=6):
    """Special functions (the fixed-point definitions live in the compiler's spec)."""
    COPY = 0


class ErrorCode(enum.Enum, shape=4):
    """Error codes the core reports in its status register (0: none)."""
    NONE = 0
    ILLEGAL_OPCODE = 1     #: opcode not in :class:`Opcode`
    MALFORMED = 2          #: a field out of its legal range (enum value, size, m != 1 ...)
    BUFFER_RANGE = 3       #: an access beyond the end of an on-chip buffer
    SCALE_RANGE = 4        #: a group scale's shift outside the rescaler window
    AXI_ERROR = 5          #: SLVERR/DECERR on the memory port
    PROGRAM_END = 6        #: fetch ran past the program length without HALT
    UNSUPPORTED = 7        #: valid encoding this hardware instance was not built for
    DEADLOCK = 8           #: every busy queue waits for a token no unit can release


HEADER_LAYOUT = data.StructLayout({
    "opcode": Opcode,
    "wait": 4,        # token mask over Unit: take one token from each named unit first
    "release": 4,     # token mask over Unit: give one token to each named unit after
    "_rsvd": 4,
})

SYS_LAYOUT = data.StructLayout({
    "op": SysOp,
    "reg": 5,
    "value": 32,
})

#: LD and ST: ``count`` rows of ``nbytes`` bytes; row ``r`` lives at
#: ``dram_addr + r * dram_stride`` in memory and at ``buf_addr + r * nbytes`` on chip.
MEM_LAYOUT = data.StructLayout({
    "buf": Buffer,
    "channel": 6,
    "buf_addr": 24,
    "dram_addr": 40,
    "nbytes": 24,
    "count": 16,
    "dram_stride": 40,
})

#: MM and MV: ``out[j, r] = requant(bias[r] + sum_g psum(r, g, j) * scale(r, g))`` for
#: ``r < rows`` and ``j < m`` (see :mod:`airfoil.formats` for the arithmetic). The weight
#: tile at ``wbuf_addr`` is laid out by :func:`airfoil.formats.tile_layout`.
MATRIX_LAYOUT = data.StructLayout({
    "wfmt": WeightFormat,
    "sparsity": Sparsity,
    "group": 9,           # group size in weights
    "rows": 16,           # output rows in the tile
    "k": 20,              # reduction length
    "m": 16,              # activation vectors (MV: 1)
    "wbuf_addr": 24,      # weight tile in the WGT buffer
    "abuf_addr": 24,      # activations (INT8, m vectors of k, k-contiguous) in ACT
    "obuf_addr": 24,      # results (m vectors of rows, out format) in OUT
    "k0": signed(7),      # base exponent of the group scales (see airfoil.formats)
    "req_m": 16,          # requantization multiplier
    "req_s": 7,           # requantization shift
    "out_fmt": OutFormat,
    "acc_init": 1,        # 1: start from bias (or zero); 0: continue the accumulators
    "final": 1,           # 1: requantize and write the outputs
    "bias": 1,            # 1: the tile carries int32 bias (used when acc_init)
})

SFU_LAYOUT = data.StructLayout({
    "func": SfuFunc,
    "src": Buffer,
    "dst": Buffer,
    "src_addr": 24,
    "dst_addr": 24,
    "aux_addr": 24,
    "n": 20,
    "imm0": 32,
    "imm1": 32,
})

BODY_BITS = INSTR_BITS - HEADER_BITS
BODY_LAYOUT = data.UnionLayout({
    "sys": SYS_LAYOUT,
    "mem": MEM_LAYOUT,
    "matrix": MATRIX_LAYOUT,
    "sfu": SFU_LAYOUT,
    "_pad": BODY_BITS,
})

INSTR_LAYOUT = data.StructLayout({
    "header": HEADER_LAYOUT,
    "body": BODY_LAYOUT,
})

assert HEADER_LAYOUT.size == HEADER_BITS
assert INSTR_LAYOUT.size == INSTR_BITS

_BODY_OF = {
    Opcode.SYS: "sys", Opcode.LD: "mem", Opcode.ST: "mem", Opcode.MM: "matrix",
    Opcode.MV: "matrix", Opcode.SFU: "sfu",
}


def body_name(opcode: Opcode) -> str:
    """Return the name of the body layout an opcode uses."""
    return _BODY_OF[Opcode(opcode)]


def unit_of(opcode: Opcode) -> Unit | None:
    """Return the unit whose queue runs ``opcode`` (``None`` for SYS)."""
    return UNIT_OF_OPCODE.get(Opcode(opcode))


def _mask(tokens) -> int:
    if isinstance(tokens, int):
        return tokens
    m = 0
    for u in tokens:
        m |= 1 << Unit(u).value
    return m


def encode(opcode: Opcode, wait=(), release=(), **fields) -> int:
    """Encode one instruction into an integer of :data:`INSTR_BITS` bits.

    ``wait``/``release`` are masks or iterables of :class:`Unit`; ``fields`` are the
    body fields of the opcode's layout.
    """
    opcode = Opcode(opcode)
    name = _BODY_OF[opcode]
    layout = BODY_LAYOUT.members[name]
    body = dict(fields)
    for key in body:
        if key not in layout.members:
            raise ProgramError(f"{opcode.name}: unknown field {key!r} (fields: "
                               f"{', '.join(k for k in layout.members if not k.startswith('_'))})")
    for key, value in body.items():
        member = layout.members[key]
        if isinstance(value, int) and not isinstance(value, enum.Enum) and \
                not isinstance(member, enum.EnumMeta):
            shape = Shape.cast(member)
            lo, hi = ((-(1 << shape.width - 1), 1 << shape.width - 1) if shape.signed
                      else (0, 1 << shape.width))
            if not lo <= value < hi:
                raise ProgramError(f"{opcode.name}: field {key}={value} is outside "
                                   f"{lo}..{hi - 1}")
    header = {"opcode": opcode, "wait": _mask(wait), "release": _mask(release)}
    return INSTR_LAYOUT.const({"header": header, "body": {name: body}}).as_bits()


class Instr:
    """A decoded instruction: ``opcode``, ``wait``, ``release`` and the body fields.

    Body fields are attributes (enums as enum members, signed fields as signed integers).
    """

    __slots__ = ("bits", "opcode", "wait", "release", "fields")

    def __init__(self, bits, opcode, wait, release, fields):
        self.bits = bits
        self.opcode = opcode
        self.wait = wait
        self.release = release
        self.fields = fields

    def __getattr__(self, name):
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def unit(self) -> Unit | None:
        return unit_of(self.opcode)

    def __repr__(self):
        return f"Instr({self.opcode.name}, {self.fields})"


def _view_fields(view, layout) -> dict:
    out = {}
    for key, shape in layout.members.items():
        if key.startswith("_"):
            continue
        out[key] = getattr(view, key)
    return out


def decode(bits: int, index: int | None = None) -> Instr:
    """Decode one instruction; raise :class:`ProgramError` for an illegal encoding."""
    where = f"instruction {index}: " if index is not None else ""
    if not 0 <= bits < 1 << INSTR_BITS:
        raise ProgramError(f"{where}does not fit in {INSTR_BITS} bits")
    raw_op = bits & ((1 << 4) - 1)
    try:
        opcode = Opcode(raw_op)
    except ValueError:
        raise ProgramError(f"{where}unknown opcode {raw_op} (accepted: " +
                           ", ".join(f"{o.name}={o.value}" for o in Opcode) + ")") from None
    c = data.Const(INSTR_LAYOUT, bits)
    name = _BODY_OF[opcode]
    layout = BODY_LAYOUT.members[name]
    try:
        fields = _view_fields(getattr(c.body, name), layout)
    except ValueError as e:
        raise ProgramError(f"{where}{opcode.name}: malformed field ({e})") from None
    return Instr(bits, opcode, c.header.wait, c.header.release, fields)


def to_bytes(bits: int) -> bytes:
    return bits.to_bytes(INSTR_BYTES, "little")


def from_bytes(raw: bytes) -> int:
    return int.from_bytes(raw, "little")
