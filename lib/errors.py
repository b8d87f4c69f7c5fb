"""The one exception type a user ever sees: a one-line message and an exit code."""

from __future__ import annotations


class OpsError(Exception):
    """A failure the user can act on. bin/ scripts print `str(err)` and exit with `err.code`."""

    def __init__(self, message: str, *, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class ConfigError(OpsError):
    """A configuration value is missing or wrong; exit code 2 like argparse's usage errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=2)
