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

Reserved bits (:func:`reserved_bits`: those no field of the header or of the opcode's body
covers) must be zero; an instruction with one set is MALFORMED.

``ERR_PC`` names the instruction that raised the error; for DEADLOCK the oldest
instruction waiting at the head of a queue, for PROGRAM_END the index one past the last
instruction (the one that is not there).

Version 2 (whole decoder LLMs; additive, every version-1 encoding keeps its meaning)
-----------------------------------------------------------------------------------
Run-time registers: 32 registers of 32 bits; a ``*_reg`` field of 0 means "not used"
(so register 0 is never read through them). ``SYS SETREG`` writes one; the new
``SYS LDREG`` loads register ``reg`` with the little-endian 32-bit word at data address
``value`` (the host-written parameter block), so one program serves every position and
prompt length (FlightLLM's length-adaptive programs).

* :class:`SysOp` ``LDREG = 4``.
* ``MEM_LAYOUT`` (LD/ST) appends ``count_reg`` (5: ``count = regs[count_reg]``),
  ``row_reg`` (5: ``dram_addr += regs[row_reg] * dram_stride``), ``gather`` (1: LD only,
  row ``r`` is read from ``dram_addr + idx[r] * dram_stride`` with ``idx`` the int32
  array at ``idx_addr`` in AUX; the embedding lookup by token id; it starts only after
  the LOAD unit's earlier transfers completed, so it may read indices they loaded) and
  ``idx_addr`` (24).
* ``MATRIX_LAYOUT`` (MV/MM) appends ``tok_scale`` (1: per-vector requantization: vector
  ``j`` uses ``(M, S) = linear_out_params(sm_j, se_j, k0)`` of
  :mod:`airfoil.fixedpoint`, its scale pair (int32 ``sm``, int32 ``se``) read from AUX at
  ``sbuf_addr + 8 j``; ``req_m``/``req_s`` are then ignored), ``sbuf_addr`` (24),
  ``m_reg`` (5: ``m = regs[m_reg]``, MM only), ``astride`` and ``ostride`` (16 each: memory
  words between consecutive activation / result vectors, so that row tiles and K chunks
  of an ``m``-vector product address one ``m x K`` input and one ``m x N`` output).
* ``SFU_LAYOUT`` appends ``aux`` (:class:`Buffer` of ``aux_addr``), ``rows`` (16: rows of
  ``n`` elements), ``rows_reg`` (5: ``rows = regs[rows_reg]``), ``pos_reg`` (5: position of
  the first row), ``len_reg`` (5: keys in the KV buffer), ``heads`` and ``kv_heads``
  (10 each: segments per row, query and key/value heads of attention), and :class:`SfuFunc` gains
  ``QUANT_TOKEN``, ``RMSNORM``, ``ROPE``, ``SILU``, ``MUL``, ``ADD``, ``ATT_QK``, ``SOFTMAX``
  and ``ATT_PV``, each exactly the function of :mod:`airfoil.fixedpoint` it names (the
  operand layouts are documented on :class:`SfuFunc`).

Version 3 (streamed weights through the decode unit; additive)
--------------------------------------------------------------
* :class:`Buffer` ``WSTREAM = 5`` (``LD`` only): the ``count`` rows of ``nbytes`` are not
  written to a buffer but sent, in order, to the MATRIX unit's decode unit as a stream of
  memory words of the packed weight-stream format of :mod:`airfoil.packing` (records that
  carry their own format, group size, N:M sparsity and FP16 scales). ``buf_addr`` must be
  0. The stream is a FIFO between the LOAD and MATRIX units: the load waits while it is
  full, so a program must not make such a load wait (through tokens) for a matrix
  instruction that consumes a later part of the stream, nor place so many loads before
  the matrix instruction that drains it that the instruction cannot be dispatched (at
  most ``instr_queue_depth - 1`` loads of later parts of the stream ahead of it: the ISA
  simulator's stream is unbounded and does not catch this; the core would wait forever).
* :class:`WeightFormat` ``STREAM = 4`` (``MV``/``MM``): the weights come from that stream
  instead of a WGT tile: the instruction consumes, for each batch of ``chains`` rows
  (``rows`` padded up), the ``k / group`` records of its group columns in k order (PAD
  records and padding between them are skipped). ``group`` must equal every record's
  group; ``sparsity`` must be ``DENSE`` (the records name theirs); ``bias`` must be 0;
  ``wbuf_addr`` is ignored. A record whose group differs is MALFORMED.

Version 4 (other model families, on-chip embedding and token choice, streamed prefill; additive)
-----------------------------------------------------------------------------------------------
Every version-3 encoding keeps its meaning; a version-3 core lacks what follows, so a
version-4 program is refused there (and the reverse, by the version check).

* An ``MM`` on streamed weights (``WeightFormat.STREAM``) reads each record once for all
  its ``m`` vectors; ``m`` over the config's ``limits.stream_tokens``, or ``acc_init = 0``
  with ``m > 1``, is UNSUPPORTED.
* :class:`SfuFunc` ``GELU``, ``RELU`` and ``LAYERNORM`` (GPT-2 / OPT-style layers; codes
  no earlier program uses, so every earlier encoding keeps its meaning), and ``SOFTMAX``'s
  ``imm0``: a sliding attention window (0, what earlier programs hold: none).
* ``ADD``'s ``imm0``: nonzero, the ``aux`` operand is one row of ``n`` added to every row
  (a bias); 0, what earlier programs hold: ``rows`` rows.
* ``SOFTMAX``'s ``imm1``: nonzero, bidirectional attention (an encoder's: every row sees
  all ``L`` keys, ``imm0`` ignored); 0, what earlier programs hold: the causal mask.
* :class:`SfuFunc` ``DEQUANT_ROW`` (INT8 rows with a scale per row to ACT: the embedding
  table stored at INT8; with ``imm1``, INT4 rows with a scale per ``imm1`` values, which
  earlier programs leave 0) and ``TOPK_SAMPLE`` (the next token chosen on chip: argmax, or
  seeded top-k sampling); codes no earlier program uses.
"""

from __future__ import annotations

from amaranth.hdl import Shape, signed
from amaranth.lib import data, enum

from . import format_registry as _formats
from .errors import ProgramError

__all__ = [
    "ISA_VERSION", "INSTR_BITS", "TOKEN_DEPTH", "INSTR_BYTES", "Opcode", "Unit", "SysOp", "Buffer",
    "WeightFormat", "Sparsity", "OutFormat", "SfuFunc", "ErrorCode", "HEADER_LAYOUT",
    "SYS_LAYOUT", "MEM_LAYOUT", "MATRIX_LAYOUT", "SFU_LAYOUT", "BODY_LAYOUT",
    "INSTR_LAYOUT", "encode", "decode", "body_name", "unit_of", "UNIT_OF_OPCODE",
    "reserved_bits", "SFU_ALIGN", "SFU_BUFFERS",
]

#: Version of the encoding; a program of another version is refused.
ISA_VERSION = 4
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
    LDREG = 4   #: v2: register ``reg`` <- 32-bit word at data address ``value``


class Buffer(enum.Enum, shape=3):
    """On-chip buffers a LD/ST names."""
    ACT = 0     #: activations (INT8 vectors)
    WGT = 1     #: weight tiles: packed weights, group scales, optional bias
    OUT = 2     #: requantized results
    KV = 3      #: key/value cache
    AUX = 4     #: tables, masks, metadata
    WSTREAM = 5  #: v3, LD only: packed weight stream to the MATRIX unit's decode unit


WeightFormat = _formats.make_enum("WeightFormat", {
    **{s.enum_name: s.isa_code for s in sorted(_formats.tile_formats(), key=lambda s: s.isa_code)},
    "STREAM": _formats.ISA_STREAM_CODE}, _formats.ISA_CODE_BITS,
    """Weight encodings a matrix instruction can name: the WGT-tile formats of
    :mod:`airfoil.format_registry` by their ISA code, and ``STREAM`` (v3: records of the
    packed weight stream, LD ``WSTREAM``, mixed formats).""")
WeightFormat.__module__ = __name__


class Sparsity(enum.Enum, shape=4):
    """Weight sparsity pattern of a matrix instruction."""
    DENSE = 0


class OutFormat(enum.Enum, shape=2):
    """Width the matrix result is requantized to (saturating)."""
    INT8 = 0
    INT16 = 1
    INT32 = 2


class SfuFunc(enum.Enum, shape=6):
    """Special functions, each bit-exact to the function of :mod:`airfoil.fixedpoint` named.

    Common to the version-2 functions: ``R = regs[rows_reg]`` if ``rows_reg`` else
    ``rows``; ACT rows are little-endian int32 (Q16), ``R`` rows of ``n`` elements
    contiguous at ``src_addr`` in ``src`` (results likewise at ``dst_addr`` in ``dst``); a
    row holds ``heads`` segments (0 counts as 1). A *record* is ``n`` INT8 values, then at
    byte ``ceil(n / 8) * 8`` its scale pair (int32 ``sm``, int32 ``se``). The int32 operand
    addresses (and strides) are multiples of 4 bytes, the int16 RoPE table's of 2
    (:data:`SFU_ALIGN`); anything else is MALFORMED.

    * ``COPY``: ``n`` bytes from ``src`` to ``dst`` (version 1).
    * ``QUANT_TOKEN``: :func:`quant_per_token` of each segment ``s = r * heads + h``; its
      INT8 values at ``dst_addr + s * imm0`` (``imm0 = 0``: contiguous), its scale pair at
      ``aux_addr + s * imm1`` in ``aux`` (``imm1 = 0``: 8). Records when ``aux = dst`` and
      ``aux_addr = dst_addr + ceil(segment / 8) * 8``.
    * ``RMSNORM``: :func:`rmsnorm` of each row with the int32 Q16 gain (``n``) at
      ``aux_addr`` in ``aux``, ``eps = (imm1 * 2**32 + imm0) * 2**-60``.
    * ``ROPE``: :func:`rope` of each segment (a head of ``n / heads``); row ``r`` uses the
      table row at ``aux_addr + r * imm1`` in ``aux`` (``imm1 = 0``: ``n / heads * 2``
      bytes): ``n / heads / 2`` int16 cos then as many int16 sin (the LD that fetched the
      rows was offset by the position register).
    * ``SILU``: :func:`silu`. ``MUL``/``ADD``: :func:`mul`/:func:`add` of the rows at
      ``src_addr`` and the rows at ``aux_addr`` in ``aux``; ``ADD`` with ``imm0``
      nonzero adds the one row at ``aux_addr`` to every row (a bias).
    * ``GELU``: :func:`gelu` (GPT-2's tanh form). ``RELU``: :func:`relu`.
    * ``LAYERNORM``: :func:`layernorm_centred` of each row (LayerNorm without its bias,
      which an ``ADD`` of the bias rows supplies), gain and ``eps`` as for ``RMSNORM``.
    * ``ATT_QK``: :func:`attention_scores` of ``R x heads`` query records (``n`` =
      head_dim, stride ``imm0``) at ``src_addr`` against ``L = regs[len_reg]`` positions x
      ``kv_heads`` key records (stride ``imm1``) at ``aux_addr`` in ``aux``; query head
      ``h`` reads kv head ``h // (heads / kv_heads)``. Writes int32 ``(R, heads, L)``.
    * ``SOFTMAX``: :func:`softmax` of the ``R x heads`` rows of ``L`` scores; row
      ``(t, h)`` masks the keys after position ``regs[pos_reg] + t`` (causal) and, with
      ``imm0`` nonzero (a sliding window), those at or before that position minus
      ``imm0`` (:func:`attention_mask`); with ``imm1`` nonzero (bidirectional, an
      encoder's) every row sees all ``L`` keys and ``imm0`` is ignored. Q15 out. A row
      that sees no key is MALFORMED.
    * ``ATT_PV``: :func:`attention_weights` then :func:`attention_context` of the
      ``(R, heads, L)`` probabilities at ``src_addr`` and the value records (stride
      ``imm1``) at ``aux_addr`` in ``aux``; writes ACT ``(R, heads * n)``. A head
      dimension ``n`` over the config's ``limits.att_pv_max_head_dim`` (default
      :data:`ATT_PV_MAX_HEAD_DIM`) is UNSUPPORTED (the context accumulator's size).
    * ``ATT_QK`` and ``ATT_PV`` on a KV buffer in banks (config ``buffers.kv_banks`` above
      1): ``aux`` must be KV, ``aux_addr`` is an offset in every bank and the record of
      key ``l`` and kv head ``kv`` is at ``aux_addr + ((l // B) * kv_heads + kv) * imm1``
      of bank ``l % B`` (:mod:`airfoil.kv_banks`); those records (and ``ATT_QK``'s
      query records) must start on buffer words, else MALFORMED.
    * ``DEQUANT_ROW``: :func:`dequant_groups` of ``R`` records of ``n`` values (row
      ``r`` at ``src_addr + r * imm0``; ``imm0 = 0``: :func:`dequant_record_bytes`,
      records back to back) into ``R`` ACT rows at ``dst_addr``: the embedding rows a
      gathering ``LD`` fetched, at the precision the memory image stores them. ``imm1 =
      0``: INT8 values, padded to 8 bytes, then one scale pair (int32 ``sm``, ``se``);
      ``imm1 = g``: INT4 values two a byte (the even element in the low nibble), padded
      to 8 bytes, then a scale pair per ``g`` values (:func:`dequant_record_layout`).
    * ``TOPK_SAMPLE``: the next token of each of ``R`` rows of ``n`` ACT logits (row ``r``
      at ``src_addr + r * imm0``; ``imm0 = 0``: ``4 n``), :func:`topk_sample` with the
      draw :func:`sample_uniform` of position ``regs[pos_reg] + r``; the sampling block
      at ``aux_addr`` in ``aux`` holds int32 ``k``, the inverse temperature (unsigned
      Q16) and the seed; the int32 token id of row ``r`` goes to ``dst_addr + 4 r``.
      ``k = 1`` is the argmax (the lowest index among equal maxima). ``k`` outside ``1 ..
      limits.topk_max`` (the config's; default :data:`TOPK_MAX`) or an inverse
      temperature outside ``1 .. 2**24 - 1`` is MALFORMED.
    """
    COPY = 0
    QUANT_TOKEN = 1
    RMSNORM = 2
    ROPE = 3
    SILU = 4
    MUL = 5
    ADD = 6
    ATT_QK = 7
    SOFTMAX = 8
    ATT_PV = 9
    GELU = 10
    RELU = 11
    LAYERNORM = 12
    DEQUANT_ROW = 13
    TOPK_SAMPLE = 14


#: Per function, the SFU fields that address (or stride over) int32 operands (4) or
#: int16 tables (2), and the multiple of bytes each must be.
SFU_ALIGN = {
    SfuFunc.SILU: {"src_addr": 4, "dst_addr": 4},
    SfuFunc.GELU: {"src_addr": 4, "dst_addr": 4},
    SfuFunc.RELU: {"src_addr": 4, "dst_addr": 4},
    SfuFunc.LAYERNORM: {"src_addr": 4, "dst_addr": 4, "aux_addr": 4},
    SfuFunc.MUL: {"src_addr": 4, "dst_addr": 4, "aux_addr": 4},
    SfuFunc.ADD: {"src_addr": 4, "dst_addr": 4, "aux_addr": 4},
    SfuFunc.RMSNORM: {"src_addr": 4, "dst_addr": 4, "aux_addr": 4},
    SfuFunc.QUANT_TOKEN: {"src_addr": 4, "aux_addr": 4, "imm1": 4},
    SfuFunc.ROPE: {"src_addr": 4, "dst_addr": 4, "aux_addr": 2, "imm1": 2},
    SfuFunc.DEQUANT_ROW: {"src_addr": 4, "dst_addr": 4, "imm0": 4},
    SfuFunc.TOPK_SAMPLE: {"src_addr": 4, "dst_addr": 4, "aux_addr": 4, "imm0": 4},
}

#: Buffers an SFU operand may be in; one in another buffer (WGT) is BUFFER_RANGE, as if
#: that buffer had no bytes (WSTREAM is MALFORMED).
SFU_BUFFERS = (Buffer.ACT, Buffer.OUT, Buffer.KV, Buffer.AUX)

#: Default largest head dimension ``n`` of ``ATT_PV`` (the SFU's context accumulator
#: lanes; a config sets its own in ``limits.att_pv_max_head_dim``).
ATT_PV_MAX_HEAD_DIM = 256
#: Largest ``k`` of ``TOPK_SAMPLE`` (the SFU's sorted candidate registers; a config sets
#: a smaller one in ``limits.topk_max``).
TOPK_MAX = 64


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
    # v2
    "count_reg": 5,
    "row_reg": 5,
    "gather": 1,
    "idx_addr": 24,
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
    # v2
    "tok_scale": 1,       # 1: per-vector (M, S) from the scale pairs at sbuf_addr in AUX
    "sbuf_addr": 24,
    "m_reg": 5,           # nonzero: m = regs[m_reg] (MM)
    "astride": 16,        # memory words between activation vectors (0: k bytes)
    "ostride": 16,        # memory words between result vectors (0: rows x out bytes)
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
    # v2
    "aux": Buffer,
    "rows": 16,
    "rows_reg": 5,
    "pos_reg": 5,
    "len_reg": 5,
    "heads": 10,          # segments (heads) per row (0: 1)
    "kv_heads": 10,       # ATT_QK/ATT_PV: key/value heads
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
    opcode = opcode if isinstance(opcode, Opcode) else Opcode(opcode)
    name = _BODY_OF[opcode]
    body = dict(fields)
    table = _FIELDS[name]
    for key, value in body.items():
        if key not in table:
            if key in _PADDING[name]:
                continue
            raise ProgramError(f"{opcode.name}: unknown field {key!r} (fields: "
                               f"{', '.join(table)})")
        _, _, en, signed_, width = table[key]
        if isinstance(value, int) and not isinstance(value, enum.Enum) and en is None:
            lo, hi = ((-(1 << width - 1), 1 << width - 1) if signed_ else (0, 1 << width))
            if not lo <= value < hi:
                raise ProgramError(f"{opcode.name}: field {key}={value} is outside "
                                   f"{lo}..{hi - 1}")
    bits = opcode.value << _HDR["opcode"][0]
    for key, value in (("wait", _mask(wait)), ("release", _mask(release))):
        off, mask = _HDR[key]
        if not 0 <= value <= mask:
            raise ProgramError(f"{opcode.name}: {key} mask {value} is outside 0..{mask}")
        bits |= value << off
    for key, off, mask, en, sgn, width in _TABLES[name]:
        if key not in body:
            continue
        value = body[key]
        if en is not None:
            try:
                value = value.value if isinstance(value, en) else en(value).value
            except ValueError:
                raise ProgramError(f"{opcode.name}: field {key}={value!r} is not a "
                                   f"{en.__name__} (accepted: "
                                   f"{', '.join(m.name for m in en)})") from None
        elif isinstance(value, enum.Enum):
            value = value.value
        bits |= (int(value) & mask) << off
    return bits


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


def _field_table(layout, base: int) -> list:
    """Flatten a body layout into ``(name, offset, mask, enum or None, signed)`` entries,
    computed from the layout itself (no offsets are written by hand)."""
    out = []
    for key, field in layout:
        if key.startswith("_"):
            continue
        shape = field.shape
        is_enum = isinstance(shape, enum.EnumMeta)
        signed_ = (not is_enum) and Shape.cast(shape).signed
        out.append((key, base + field.offset, (1 << field.width) - 1, shape if is_enum else None,
                    signed_, field.width))
    return out


_BODY_OFFSET = {k: f for k, f in INSTR_LAYOUT}["body"].offset
_HDR = {k: (f.offset, (1 << f.width) - 1) for k, f in HEADER_LAYOUT}
_TABLES = {name: _field_table(BODY_LAYOUT.members[name], _BODY_OFFSET)
           for name in set(_BODY_OF.values())}
#: Per body: field name -> (offset, mask, enum or None, signed, width), as in _TABLES (the
#: encoder's lookups; amaranth rebuilds a layout's member dict on every access).
_FIELDS = {name: {key: rest for key, *rest in table} for name, table in _TABLES.items()}
#: Per body: the padding members (names starting with "_"), accepted and not encoded.
_PADDING = {name: {k for k in BODY_LAYOUT.members[name].members if k.startswith("_")}
            for name in _TABLES}
#: Per body: the bits a field of the header or of that body covers; every other bit is
#: reserved and must be zero.
_USED = {name: sum(mask << off for k, (off, mask) in _HDR.items() if not k.startswith("_"))
         | sum(mask << off for _, off, mask, *_ in table) for name, table in _TABLES.items()}


def reserved_bits(opcode: Opcode) -> int:
    """Return the mask of an instruction word's reserved bits for ``opcode``: the bits no
    field of the header or of its body covers (they must be zero)."""
    return ((1 << INSTR_BITS) - 1) & ~_USED[_BODY_OF[Opcode(opcode)]]


def decode(bits: int, index: int | None = None) -> Instr:
    """Decode one instruction; raise :class:`ProgramError` for an illegal encoding (an
    unknown opcode, an enum field out of its enum, or a reserved bit set: a bit that no
    field of the header or of the opcode's body covers).

    Fields are sliced with offsets taken from the layouts (:func:`_field_table`); the
    result equals a ``data.Const(INSTR_LAYOUT, bits)`` view, field by field.
    """
    where = f"instruction {index}: " if index is not None else ""
    if not 0 <= bits < 1 << INSTR_BITS:
        raise ProgramError(f"{where}does not fit in {INSTR_BITS} bits")
    raw_op = bits & ((1 << 4) - 1)
    try:
        opcode = Opcode(raw_op)
    except ValueError:
        raise ProgramError(f"{where}unknown opcode {raw_op} (accepted: " +
                           ", ".join(f"{o.name}={o.value}" for o in Opcode) + ")") from None
    name = _BODY_OF[opcode]
    reserved = bits & ~_USED[name]
    if reserved:
        raise ProgramError(f"{where}{opcode.name}: reserved bit {reserved.bit_length() - 1} "
                           f"is set (reserved bits must be zero)")
    fields = {}
    for key, off, mask, en, sgn, width in _TABLES[name]:
        v = (bits >> off) & mask
        if en is not None:
            try:
                v = en(v)
            except ValueError:
                raise ProgramError(f"{where}{opcode.name}: malformed field ({v!r} is not a "
                                   f"valid {en.__name__})") from None
        elif sgn and v >> (width - 1):
            v -= 1 << width
        fields[key] = v
    wait = (bits >> _HDR["wait"][0]) & _HDR["wait"][1]
    release = (bits >> _HDR["release"][0]) & _HDR["release"][1]
    return Instr(bits, opcode, wait, release, fields)


def _decode_const(bits: int) -> Instr:
    """Reference decoder through ``data.Const`` views (slow; for tests of :func:`decode`)."""
    opcode = Opcode(bits & 0xF)
    c = data.Const(INSTR_LAYOUT, bits)
    name = _BODY_OF[opcode]
    fields = _view_fields(getattr(c.body, name), BODY_LAYOUT.members[name])
    return Instr(bits, opcode, c.header.wait, c.header.release, fields)


def to_bytes(bits: int) -> bytes:
    return bits.to_bytes(INSTR_BYTES, "little")


def from_bytes(raw: bytes) -> int:
    return int.from_bytes(raw, "little")
