"""The emulator's own file helpers: the local cloud stands alone and imports nothing from the application."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock


def write_atomic(path: Path, data: Any) -> None:
    """Replace `path` with `data` as JSON, atomically (a crash leaves the old file or the new, never half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def lock_for(path: Path, timeout: float = 30.0) -> FileLock:
    """The inter-process lock that guards `path` (a sibling `.lock` file)."""
    return FileLock(str(Path(path)) + ".lock", timeout=timeout)
