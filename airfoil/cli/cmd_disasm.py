"""``airfoil disasm``: print a program one instruction per line with fields and tokens."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config
from ..errors import AirfoilError
from ..program import read_program


def register(sub):
    p = sub.add_parser("disasm", help="disassemble program.afp (or a compiled folder)")
    p.add_argument("program", metavar="OUT|program.afp", help="program file or output folder")
    p.add_argument("--config", default=None,
                   help="check that the program was compiled for this config")
    p.add_argument("--phase", default=None,
                   help="program of an LLM folder: prefill or decode (default: all)")
    p.set_defaults(func=run)


def run(args) -> int:
    from compiler.asm import format_instr
    from ..isa import ISA_VERSION, decode

    p = Path(args.program)
    paths = [p]
    if p.is_dir():
        manifest = p / "manifest.json"
        programs = {}
        if manifest.is_file():
            try:
                programs = json.loads(manifest.read_text()).get("programs", {})
            except (ValueError, AttributeError):
                programs = {}
        if programs:
            if args.phase is not None and args.phase not in programs:
                raise AirfoilError(f"{p}: no {args.phase!r} program (accepted: "
                                   f"{', '.join(programs)})")
            paths = [p / programs[ph] for ph in programs
                     if args.phase is None or ph == args.phase]
        else:
            paths = [p / "program.afp"]
    for path in paths:
        if not path.is_file():
            raise AirfoilError(f"program {str(path)!r} not found (give a .afp file or the "
                               f"output folder holding it)")
    expect = load_config(args.config).config_hash_bytes if args.config else None
    for path in paths:
        prog = read_program(path, expect_hash=expect)
        lines = [format_instr(decode(w, i), i) for i, w in enumerate(prog.words)]
        print(f"; {path}: ISA version {ISA_VERSION}, config hash {prog.config_hash.hex()}, "
              f"{len(prog)} instructions")
        print("\n".join(lines))
    return 0
