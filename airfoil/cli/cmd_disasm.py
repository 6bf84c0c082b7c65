"""``airfoil disasm``: print a program one instruction per line with fields and tokens."""

from __future__ import annotations

from pathlib import Path

from ..config import load_config
from ..errors import AirfoilError
from ..program import read_program


def register(sub):
    p = sub.add_parser("disasm", help="disassemble program.afp (or a compiled folder)")
    p.add_argument("program", metavar="OUT|program.afp", help="program file or output folder")
    p.add_argument("--config", default=None,
                   help="check that the program was compiled for this config")
    p.set_defaults(func=run)


def run(args) -> int:
    from compiler.asm import format_instr
    from ..isa import ISA_VERSION, decode

    p = Path(args.program)
    if p.is_dir():
        p = p / "program.afp"
    if not p.is_file():
        raise AirfoilError(f"program {args.program!r} not found (give program.afp or the "
                           f"output folder holding it)")
    expect = load_config(args.config).config_hash_bytes if args.config else None
    prog = read_program(p, expect_hash=expect)
    lines = [format_instr(decode(w, i), i) for i, w in enumerate(prog.words)]
    print(f"; {p}: ISA version {ISA_VERSION}, config hash {prog.config_hash.hex()}, "
          f"{len(prog)} instructions")
    print("\n".join(lines))
    return 0
