"""The errors a user ever sees: a one-line message and an exit code.

Exit codes (the same for every bin/ script, invoke task and the `ops-hpc` command):
0 ok, 1 something failed, 2 bad input or config (`UsageError`), 3 refused or nothing
to act on (`Refused`), 130 interrupted. lib/ raises these classes and never passes
a numeric code itself, so the meaning of a code lives here only.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class OpsError(Exception):
    """A failure the user can act on. bin/ scripts print `str(err)` and exit with `err.code`."""

    code = EXIT_FAILED

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(OpsError):
    """Bad input: a flag, a file, a name the user gave; exit 2 like argparse's usage errors."""

    code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration value is missing or wrong (exit 2)."""


class Refused(OpsError):
    """Refused on purpose, or nothing to act on: not ours, no terminal to confirm on, no such run (exit 3)."""

    code = EXIT_REFUSED
