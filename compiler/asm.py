"""Text assembly listing of a program: one line per instruction with fields and tokens."""

from __future__ import annotations

import functools

from amaranth.lib import enum

from airfoil.isa import Instr, Opcode, Unit, decode

__all__ = ["format_tokens", "format_instr", "listing"]

_SHORT = {"buf_addr": "buf_addr", "dram_addr": "dram", "dram_stride": "stride",
          "wbuf_addr": "wbuf", "abuf_addr": "abuf", "obuf_addr": "obuf"}
_HEX = {"buf_addr", "dram_addr", "dram_stride", "wbuf_addr", "abuf_addr", "obuf_addr",
        "src_addr", "dst_addr", "aux_addr"}


@functools.lru_cache(maxsize=None)
def format_tokens(mask: int) -> str:
    """Name the units of a token mask (``-`` for none)."""
    names = [u.name for u in Unit if mask >> u.value & 1]
    return ",".join(names) if names else "-"


def _value(key, v) -> str:
    if isinstance(v, enum.Enum):
        return v.name
    if key in _HEX:
        return hex(v)
    return str(v)


def format_instr(ins: Instr, index: int | None = None) -> str:
    """One line: index, opcode, wait/release tokens, then every body field."""
    head = f"{index:6d}  " if index is not None else ""
    fields = " ".join(f"{_SHORT.get(k, k)}={_value(k, v)}" for k, v in ins.fields.items())
    if ins.opcode == Opcode.SYS:
        fields = f"{ins.fields['op'].name.lower()} " + " ".join(
            f"{k}={_value(k, v)}" for k, v in ins.fields.items() if k != "op")
    return (f"{head}{ins.opcode.name:<4} wait={format_tokens(ins.wait):<13} "
            f"rel={format_tokens(ins.release):<13} {fields}").rstrip()


def listing(words, title: str = "") -> str:
    """Return the assembly listing of encoded instruction words (decoding each)."""
    lines = [f"; {title}"] if title else []
    lines += [format_instr(decode(w, i), i) for i, w in enumerate(words)]
    return "\n".join(lines) + "\n"
