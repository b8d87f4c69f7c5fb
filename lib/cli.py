"""What every bin/ script shares: common flags, config loading, one error boundary, exit codes.

Exit codes: 0 ok, 1 something failed (details printed), 2 bad input or config,
3 nothing to do / refused (e.g. no terminal to confirm on), 130 interrupted.
`run` is the boundary: whatever reaches it becomes one line (lib.errors.explain), and a
traceback is printed only with --verbose or for an error of no known kind (a bug).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

# Checked before anything imports a third-party package, so a bin/ script run with a Python
# that lacks them says how to run it instead of dying on an ImportError.
REQUIRED = ("tenacity", "google.api_core", "platformdirs") + (("tomli",) if sys.version_info < (3, 11) else ())


def _missing_packages() -> list[str]:
    missing = []
    for name in REQUIRED:
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:  # the parent package (google) is absent
            found = False
        if not found:
            missing.append(name.split(".")[0] if name != "google.api_core" else "google-api-core")
    return missing


def how_to_run(script: str, missing: Sequence[str]) -> str:
    """The one line a user sees when a bin/ script runs under a Python without the toolkit's packages."""
    venv_python = r".venv\Scripts\python" if os.name == "nt" else ".venv/bin/python"
    name = os.path.basename(script) or "SCRIPT"
    return (f"error: {sys.executable} lacks the toolkit's packages ({', '.join(missing)}): run `make venv` once, then "
            f"`{venv_python} bin/{name} ...` (or `pip install .` and `ops-hpc {name} ...`)")


if sys.version_info < (3, 10) or _missing_packages():  # pragma: no cover - exercised by a subprocess test
    print(how_to_run(sys.argv[0], _missing_packages() if sys.version_info >= (3, 10) else ["Python 3.10+"]),
          file=sys.stderr)
    sys.exit(2)

from lib.config import Config  # noqa: E402
from lib.errors import (  # noqa: E402, F401  (re-exported for bin/)
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    OpsError,
    Refused,
    UsageError,
    explain,
)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that override config values; None means 'not given' so lower sources win."""
    group = parser.add_argument_group("configuration (flag > OPS_HPC_* env > ops-hpc.toml > gcloud > default; "
                                      "`ops-hpc config` shows each value's source)")
    group.add_argument("--backend", choices=("gcp", "local"), default=None, help="gcp, or local for the local cloud")
    group.add_argument("--project", default=None, help="GCP project id")
    group.add_argument("--zone", default=None, help="zone, e.g. us-central1-a")
    group.add_argument("--bucket", default=None, help="results bucket (default PROJECT-ops-hpc)")
    group.add_argument("--state-dir", default=None, help="where session state and the local cloud live")
    group.add_argument("--config", default=None, metavar="FILE", help="config file (default ./ops-hpc.toml, else the user config folder's)")


def load_config(args: argparse.Namespace, **extra: Any) -> Config:
    keys = ("backend", "project", "zone", "bucket", "state_dir")
    overrides = {k: getattr(args, k, None) for k in keys}
    overrides.update(extra)
    return Config.load(overrides, path=getattr(args, "config", None))


def quiet_library_warnings() -> None:
    """The Google and urllib3 libraries warn about quota projects, Python versions and TLS: noise for a user.

    Filtered by the module that warns, so nothing is imported here (`--help` stays fast).
    """
    for module in (r"google\..*", r"urllib3\..*", r"requests\..*", r"grpc\..*"):
        warnings.filterwarnings("ignore", module=module)


def verbose_requested(argv: Sequence[str] | None = None) -> bool:
    args = list(sys.argv[1:] if argv is None else argv)
    return "-v" in args or "--verbose" in args or os.environ.get("OPS_HPC_VERBOSE", "") not in ("", "0")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s", stream=sys.stderr)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def boundary(exc: BaseException, *, verbose: bool = False, interrupted: str = "interrupted") -> tuple[str, int]:
    """(line, exit code) for an exception that reached the top; re-raises one of no known kind (a bug)."""
    if isinstance(exc, KeyboardInterrupt):
        return interrupted, EXIT_INTERRUPTED
    known = explain(exc)
    if known is None:
        raise exc
    if verbose and not isinstance(exc, OpsError):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return f"error: {known}", known.code


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Call main and exit with its code; whatever it raises becomes one line and a documented exit code."""
    verbose = verbose_requested(argv)
    setup_logging(verbose)
    if not verbose:
        quiet_library_warnings()
    try:
        code = main(argv)
    except (Exception, KeyboardInterrupt) as exc:
        line, code = boundary(exc, verbose=verbose)
        err(line)
    sys.exit(code)
