"""What every bin/ script shares: common flags, config loading, one-line errors, exit codes.

Exit codes: 0 ok, 1 something failed (details printed), 2 bad input or config,
3 nothing to do / refused (e.g. no terminal to confirm on), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lib.config import Config
from lib.errors import (  # noqa: F401  (re-exported for bin/)
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    OpsError,
    Refused,
    UsageError,
)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that override config values; None means 'not given' so lower sources win."""
    group = parser.add_argument_group("configuration (flag > OPS_HPC_* env > ops-hpc.toml > default)")
    group.add_argument("--backend", choices=("gcp", "local"), default=None, help="gcp, or local for the local cloud")
    group.add_argument("--project", default=None, help="GCP project id")
    group.add_argument("--zone", default=None, help="zone, e.g. us-central1-a")
    group.add_argument("--bucket", default=None, help="results bucket (default PROJECT-ops-hpc)")
    group.add_argument("--state-dir", default=None, help="where session state and the local cloud live")
    group.add_argument("--config", default=None, metavar="FILE", help="config file (default ./ops-hpc.toml)")


def load_config(args: argparse.Namespace, **extra: Any) -> Config:
    keys = ("backend", "project", "zone", "bucket", "state_dir")
    overrides = {k: getattr(args, k, None) for k in keys}
    overrides.update(extra)
    return Config.load(overrides, path=getattr(args, "config", None))


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s", stream=sys.stderr)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Call main and exit: OpsError becomes one line on stderr, Ctrl+C exit 130, never a traceback for user errors."""
    setup_logging("-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:]))
    try:
        code = main(argv)
    except OpsError as exc:
        err(f"error: {exc}")
        code = exc.code
    except KeyboardInterrupt:
        err("interrupted")
        code = EXIT_INTERRUPTED
    sys.exit(code)
