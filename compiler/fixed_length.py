"""Programs with fixed lengths: what a compiler without run-time length registers emits.

The length-adaptive programs of :mod:`compiler.lower_llm` start by loading the run-time
lengths (``SYS LDREG`` of :data:`~compiler.lower_llm.REG_POS`, ``REG_T``, ``REG_LEN``
from the parameter block) and take every length from those registers, so one prefill and
one decode program serve every length. A scheme without them (FlightLLM's length
buckets, or one program per length) compiles each program with its lengths as constants:
:func:`fixed_length_words` is that program, the same instructions with the length loads
replaced by constants (``SYS SETREG``), and :func:`program_bytes` its size in the same
encoding. Every length in this compiler's programs is an instruction field or a register,
never a count of instructions, so a fixed-length program has the instructions of the
adaptive one: its bytes do not depend on the lengths it is fixed to.
"""

from __future__ import annotations

import struct

from airfoil.errors import CompileError
from airfoil.folder import parameter_block
from airfoil.isa import INSTR_BITS, Opcode, SysOp, decode, encode
from airfoil.program import HEADER_SIZE

from .lower_llm import REG_GROUPS, REG_LEN, REG_POS, REG_T

__all__ = ["fixed_length_words", "program_bytes", "BUCKETS"]

#: FlightLLM's length buckets (tokens): decode programs per 16 positions, prefill
#: programs per 128 prompt tokens.
BUCKETS = {"decode": 16, "prefill": 128}


def program_bytes(instructions: int) -> int:
    """Bytes of a program file of ``instructions`` instructions (header and words)."""
    return HEADER_SIZE + instructions * INSTR_BITS // 8


def fixed_length_words(words, *, pos: int, tokens: int, kv_banks: int = 1) -> list[int]:
    """The program ``words`` (an LLM phase program) with its run-time lengths fixed: the
    ``SYS LDREG`` of the position, token count and length registers (and, on a KV buffer
    of ``kv_banks`` banks, of the key groups) become ``SYS SETREG`` of ``pos``, ``tokens``,
    ``pos + tokens`` (and ``ceil((pos + tokens) / kv_banks)``)."""
    # The values the run's parameter block would give the registers the program loads.
    params = (REG_POS, REG_T, REG_LEN, REG_GROUPS)
    regs = params[:4 if kv_banks > 1 else 3]
    value = dict(zip(regs, struct.unpack("<4i", parameter_block(pos, tokens, kv_banks))))
    out, seen = [], set()
    for w in words:
        ins = decode(w) if (w & 0xF) == Opcode.SYS.value else None
        if ins is not None and ins.op == SysOp.LDREG and ins.reg in value:
            out.append(encode(Opcode.SYS, op=SysOp.SETREG, reg=ins.reg, value=value[ins.reg]))
            seen.add(ins.reg)
        else:
            if ins is not None and ins.op == SysOp.LDREG and ins.reg in params:
                seen.add(ins.reg)
            out.append(w)
    if seen != set(value):
        raise CompileError(f"the program loads registers {sorted(seen)}, not the length "
                           f"registers {sorted(value)} of a KV buffer of {kv_banks} "
                           f"bank(s): not a length-adaptive LLM program for it")
    return out
