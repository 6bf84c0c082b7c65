"""Airfoil: the contract shared by the hardware, the compiler and the simulators.

The packages ``hdl``, ``compiler`` and ``sim`` import from here (configuration, ISA,
numeric formats, program and output-folder I/O) and never from each other; only
:mod:`airfoil.cli` ties all of them together.
"""

from .errors import AirfoilError, ConfigError, ProgramError, CompileError

__all__ = ["AirfoilError", "ConfigError", "ProgramError", "CompileError"]
__version__ = "0.1.0"
