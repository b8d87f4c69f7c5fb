"""Small JSON state files that survive a crash at any instant.

Writes go to a temp file in the same folder, are fsynced, then `os.replace`d
over the target, so a reader sees the old file or the new one, never half of
one. Read-modify-write cycles hold a `filelock` lock beside the file so two
processes (a cron pull and a watch, a sweep and a pipeline) cannot interleave.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from lib.errors import OpsError


def write_atomic(path: Path, data: Any) -> None:
    """Replace `path` with `data` as JSON, atomically."""
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


def read(path: Path, default: Any = None) -> Any:
    """The file's JSON, or `default` when it is missing. A corrupt file is an error, not a silent reset."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    try:
        return json.loads(text)
    except ValueError:
        raise OpsError(f"{path} is not valid JSON: move it aside and rerun (it is never rewritten blindly)") from None


def lock_for(path: Path, timeout: float = 30.0) -> FileLock:
    return FileLock(str(Path(path)) + ".lock", timeout=timeout)


@contextlib.contextmanager
def edit(path: Path, default: Any = None, *, timeout: float = 30.0) -> Iterator[Any]:
    """Locked read-modify-write: `with edit(p, {}) as data: data[k] = v` writes once on exit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with lock_for(path, timeout):
            data = read(path, default)
            yield data
            write_atomic(path, data)
    except Timeout:
        raise OpsError(f"{path} is locked by another ops-hpc process; try again when it finishes") from None
