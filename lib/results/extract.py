"""Inflating a result zip safely, and the disk space a set needs.

A zip is judged from its central directory before anything is inflated: safe member
names, a total uncompressed size within `max_unzipped_gb` (config), a compression
ratio a real result can have, and room on the disk. Declared sizes can lie, so the
same limits are enforced again on the bytes actually written. Space is reserved
under a lock while a set is in flight, so parallel sets cannot all pass the same
free-space check and then fill the disk together.
"""

from __future__ import annotations

import base64
import shutil
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import google_crc32c

from lib import safepaths
from lib.results.transfers import SetFailed
from lib.units import human

# Deflate cannot do better than ~1,030:1; real recorder output stays far below this. Small sets are not
# judged by ratio (a few MB of zeros harm nobody; the size limit and the space check still apply).
MAX_RATIO = 200
RATIO_FLOOR = 64 << 20
# Free space always kept on the results disk: 5 % of it, at most 1 GiB.
MARGIN_FRACTION, MARGIN_MAX = 0.05, 1 << 30

_lock = threading.Lock()
_reserved: dict[str, int] = {}  # disk (results folder) -> bytes promised to sets in flight


def _margin(total: int) -> int:
    return min(int(total * MARGIN_FRACTION), MARGIN_MAX)


@contextmanager
def reserve(folder: Path, size: int) -> Iterator[None]:
    """Hold `size` bytes of `folder`'s disk for one set, or raise SetFailed if they (plus the margin) are not free."""
    key = str(Path(folder).resolve())
    with _lock:
        usage = shutil.disk_usage(folder)
        others = _reserved.get(key, 0)
        available = usage.free - others - _margin(usage.total)
        if size > available:
            held = f", {human(others)} held by sets in progress" if others else ""
            raise SetFailed(f"not enough disk space: needs {human(size)}, {human(usage.free)} free in {folder}"
                            f"{held}, {human(_margin(usage.total))} kept free")
        _reserved[key] = others + size
    try:
        yield
    finally:
        with _lock:
            _reserved[key] -= size
            if not _reserved[key]:
                del _reserved[key]


def check_members(infos: list[zipfile.ZipInfo], zip_size: int, max_bytes: int) -> int:
    """Judge a zip from its central directory; returns the declared uncompressed total."""
    if not infos:
        raise SetFailed("empty zip (no members)")
    problems = safepaths.zip_problems(infos)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SetFailed(f"unsafe zip: {problems[0]}{more}")
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise SetFailed(f"zip would inflate to {human(total)}, above max_unzipped_gb ({human(max_bytes)}): "
                        "raise max_unzipped_gb if this result is genuine")
    if total > RATIO_FLOOR and total > MAX_RATIO * max(zip_size, 1):
        raise SetFailed(f"zip would inflate {human(zip_size)} to {human(total)} (more than {MAX_RATIO}:1): "
                        "refused as a zip bomb")
    return total


def extract(source: Path | BinaryIO, into: Path, folder: Path, *, max_bytes: int) -> dict[str, list]:
    """Check the member list, then inflate every member (zipfile checks each CRC-32 at its end).

    `source` is the zip's path, or a seekable file (a zip still arriving: streaming.py).
    Returns {path: [size, crc32c]} of the extracted files, computed while writing them.
    """
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SetFailed(f"not a readable zip ({exc})") from None
    with zf:
        infos = zf.infolist()
        zip_size = source.stat().st_size if isinstance(source, Path) else source.seek(0, 2)
        total = check_members(infos, zip_size, max_bytes)
        with reserve(folder, total):
            return _inflate(zf, infos, into, min(total, max_bytes))


def _inflate(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], into: Path, budget: int) -> dict[str, list]:
    files: dict[str, list] = {}
    into.mkdir(parents=True, exist_ok=True)
    written = 0
    for info in infos:
        dest = safepaths.inside(into, info.filename.rstrip("/"))
        if info.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        crc = google_crc32c.Checksum()
        size = 0
        try:
            with zf.open(info) as src, open(dest, "wb") as out:
                for block in iter(lambda: src.read(1 << 20), b""):
                    size += len(block)
                    written += len(block)
                    if size > info.file_size or written > budget:
                        raise SetFailed(f"zip member {info.filename!r} inflates beyond its declared size "
                                        f"({info.file_size} bytes): refused as a zip bomb")
                    crc.update(block)
                    out.write(block)
        except (zipfile.BadZipFile, OSError, RuntimeError, EOFError, ValueError) as exc:
            raise SetFailed(f"zip member {info.filename!r} is damaged ({exc})") from None
        files[info.filename] = [size, base64.b64encode(crc.digest()).decode()]
    return files
