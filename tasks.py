"""ops-hpc's pipelines, composed from lib/ and bin/. `invoke --list` shows them; each docstring is its help.

On Windows this file is the front door (`.venv\\Scripts\\invoke demo`); on Linux/macOS the
Makefile's targets call these. Logic lives in lib/: a task parses, calls, prints, and
raises Exit with a one-line message when something is wrong.
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Exit, task

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from lib.config import Config  # noqa: E402
from lib.errors import OpsError  # noqa: E402

PY = sys.executable


def _cfg(**overrides) -> Config:
    try:
        return Config.load(overrides)
    except OpsError as exc:
        raise Exit(f"error: {exc}", code=exc.code) from None


def _bin(c, name: str, *args: str, warn: bool = False):
    """Run a bin/ script with this interpreter; quoting is left to the shell-free list form on every OS."""
    import subprocess

    result = subprocess.run([PY, str(REPO / "bin" / name), *args])
    if result.returncode and not warn:
        raise Exit(code=result.returncode)
    return result.returncode


# --- local cloud (foundation) ------------------------------------------------


@task
def localcloud_up(c):
    """Start the local cloud in the background."""
    _bin(c, "localcloud", "up")


@task
def localcloud_down(c):
    """Stop the local cloud and every process it started."""
    _bin(c, "localcloud", "down")


# --- results: pull, watch, verify (issue 3) ---------------------------------

# --- VM safety: status, setup, cleanup, sweep (issue 4) ---------------------

# --- run-staged, log, demo (issue 5) -----------------------------------------

# --- ssh pipelines: build, run, push, monitor, controls (issue 6) ------------
