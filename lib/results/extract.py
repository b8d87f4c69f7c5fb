"""Inflating a result zip safely: check the member list, then every member's CRC while writing it."""

from __future__ import annotations

import base64
import shutil
import zipfile
from pathlib import Path

import google_crc32c

from lib import safepaths
from lib.results.transfers import SetFailed
from lib.units import human


def need_space(folder: Path, size: int) -> None:
    free = shutil.disk_usage(folder).free
    if size > free:
        raise SetFailed(f"not enough disk space: needs {human(size)}, {human(free)} free in {folder}")


def extract(zip_path: Path, into: Path, folder: Path) -> dict[str, list]:
    """Check the member list, then inflate every member (zipfile checks each CRC-32 at its end).

    Returns {path: [size, crc32c]} of the extracted files, computed while writing them.
    """
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SetFailed(f"not a readable zip ({exc})") from None
    with zf:
        infos = zf.infolist()
        if not infos:
            raise SetFailed("empty zip (no members)")
        problems = safepaths.zip_problems(infos)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise SetFailed(f"unsafe zip: {problems[0]}{more}")
        need_space(folder, sum(i.file_size for i in infos))
        files: dict[str, list] = {}
        into.mkdir(parents=True, exist_ok=True)
        for info in infos:
            dest = safepaths.inside(into, info.filename.rstrip("/"))
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            crc = google_crc32c.Checksum()
            try:
                with zf.open(info) as src, open(dest, "wb") as out:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        crc.update(block)
                        out.write(block)
            except (zipfile.BadZipFile, OSError, RuntimeError, EOFError, ValueError) as exc:
                raise SetFailed(f"zip member {info.filename!r} is damaged ({exc})") from None
            files[info.filename] = [info.file_size, base64.b64encode(crc.digest()).decode()]
    return files
