"""The program file (``program.afp``): a checked header and the instruction words.

Header (little-endian, :data:`HEADER_SIZE` bytes)::

    0   4  magic  b"AFP\\0"
    4   2  ISA version
    6   2  header size in bytes
    8   4  instruction count
    12  4  CRC-32 of the instruction bytes
    16  8  config hash (:attr:`AccelConfig.config_hash_bytes`)
    24  8  reserved (zero)

followed by ``count`` instructions of :data:`airfoil.isa.INSTR_BYTES` bytes each. The
core fetches the instruction words from ``program base + HEADER_SIZE``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from .errors import ProgramError
from .isa import INSTR_BYTES, ISA_VERSION, Instr, decode

__all__ = ["MAGIC", "HEADER_SIZE", "Program", "write_program", "read_program"]

MAGIC = b"AFP\0"
HEADER_SIZE = 32
_HEADER = struct.Struct("<4sHHII8s8s")
assert _HEADER.size == HEADER_SIZE


class Program:
    """A list of encoded instructions with the config hash they were compiled for."""

    def __init__(self, words: list[int], config_hash: bytes, version: int = ISA_VERSION):
        self.words = list(words)
        self.config_hash = bytes(config_hash)
        self.version = version

    def __len__(self):
        return len(self.words)

    def instructions(self) -> list[Instr]:
        """Decode every instruction (raises :class:`ProgramError` on the first bad one)."""
        return [decode(w, i) for i, w in enumerate(self.words)]

    def body_bytes(self) -> bytes:
        return b"".join(w.to_bytes(INSTR_BYTES, "little") for w in self.words)

    def to_bytes(self) -> bytes:
        body = self.body_bytes()
        head = _HEADER.pack(MAGIC, self.version, HEADER_SIZE, len(self.words),
                            zlib.crc32(body), self.config_hash, bytes(8))
        return head + body

    @classmethod
    def from_bytes(cls, raw: bytes, *, source: str = "program",
                   expect_hash: bytes | None = None) -> "Program":
        """Parse and check a program image; raise :class:`ProgramError` naming the fault."""
        if len(raw) < HEADER_SIZE:
            raise ProgramError(f"{source}: too short for a program header "
                               f"({len(raw)} bytes, need {HEADER_SIZE})")
        magic, version, hsize, count, crc, chash, reserved = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise ProgramError(f"{source}: bad magic {magic!r} (expected {MAGIC!r}): "
                               f"not an Airfoil program")
        if version != ISA_VERSION:
            raise ProgramError(f"{source}: ISA version {version}, but this build runs "
                               f"version {ISA_VERSION}; recompile the model")
        if hsize != HEADER_SIZE:
            raise ProgramError(f"{source}: header size {hsize}, expected {HEADER_SIZE}")
        if reserved != bytes(len(reserved)):
            raise ProgramError(f"{source}: reserved header bytes 24..31 are not zero "
                               f"({reserved.hex()}); they must be zero")
        body = raw[HEADER_SIZE:]
        if len(body) != count * INSTR_BYTES:
            raise ProgramError(f"{source}: header says {count} instructions "
                               f"({count * INSTR_BYTES} bytes) but {len(body)} bytes follow")
        if zlib.crc32(body) != crc:
            raise ProgramError(f"{source}: checksum mismatch (file corrupted)")
        if expect_hash is not None and chash != bytes(expect_hash):
            raise ProgramError(f"{source}: compiled for config hash {chash.hex()}, but the "
                               f"given config has hash {bytes(expect_hash).hex()}; "
                               f"recompile for this config")
        words = [int.from_bytes(body[i:i + INSTR_BYTES], "little")
                 for i in range(0, len(body), INSTR_BYTES)]
        return cls(words, chash, version)


def write_program(path, program: Program) -> None:
    """Write a program file atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(program.to_bytes())
    tmp.replace(path)


def read_program(path, expect_hash: bytes | None = None) -> Program:
    """Read and check a program file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ProgramError(f"program file {str(path)!r} not found") from None
    return Program.from_bytes(raw, source=path.name, expect_hash=expect_hash)
