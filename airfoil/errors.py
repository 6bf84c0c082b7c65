"""Error types whose message is one line fit to show a user as it is."""


class AirfoilError(Exception):
    """Base of every error the CLI reports as one line (no traceback)."""


class ConfigError(AirfoilError):
    """A board/accelerator configuration is malformed or inconsistent."""


class ProgramError(AirfoilError):
    """A program file (.afp) or an instruction in it is malformed or incompatible."""


class CompileError(AirfoilError):
    """The compiler cannot lower its input for the given configuration."""
