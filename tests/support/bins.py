"""Helpers for tests: running bin/ scripts as a user would, and skip markers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_bin(name: str, *args: str, env: dict[str, str], timeout: float = 120, input: str | None = None, cwd=None):
    """Run a bin/ script as a user would, returning the CompletedProcess."""
    return subprocess.run([sys.executable, str(REPO / "bin" / name), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, input=input, cwd=cwd or REPO)


needs_gcloud = pytest.mark.skipif(shutil.which("gcloud") is None, reason="the gcloud CLI is not installed")
