"""The per-set MANIFEST.json the VM writes, and comparing a local folder with a list of expected files.

Format (agreed with the VM side; MANIFEST.json does not list itself):
  {"format": 1, "run_id": str, "model": str, "state": "ok"|"failed"|"timeout", "exit_code": int,
   "started": iso, "finished": iso, "seconds": float,
   "files": [{"path": "relative/posix/path", "size": int, "crc32c": "<base64 like GCS>"}]}

The same comparison serves three sources of truth (GCS metadata, the manifest, and
the checksums a pull recorded in download_state.json), so `bin/verify` reports
missing, extra and differing files the same way whichever one it used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib import safepaths
from lib.errors import OpsError

NAME = "MANIFEST.json"
STATES = ("ok", "failed", "timeout")


@dataclass(frozen=True)
class Expected:
    """One file we expect: size always, crc32c (base64) and/or md5 (base64) when known."""

    path: str
    size: int
    crc32c: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class Difference:
    path: str
    kind: str  # "missing" | "extra" | "differs"
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind:<8} {self.path}" + (f"  ({self.detail})" if self.detail else "")


class ManifestError(OpsError):
    """MANIFEST.json is unreadable or not in the agreed format."""


def parse(data: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Validate a manifest; returns the dict. Raises ManifestError naming what is wrong."""
    if not isinstance(data, dict):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{NAME} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != 1:
        raise ManifestError(f"{NAME}: expected an object with \"format\": 1")
    files = data.get("files")
    if not isinstance(files, list):
        raise ManifestError(f"{NAME}: \"files\" must be a list")
    seen = set()
    for entry in files:
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("size"), int) and isinstance(entry.get("crc32c"), str)):
            raise ManifestError(f"{NAME}: each file needs path (text), size (integer) and crc32c (text): {entry!r}")
        why = safepaths.problem(entry["path"])
        if why:
            raise ManifestError(f"{NAME}: unsafe path {entry['path']!r}: {why}")
        if entry["path"] in seen:
            raise ManifestError(f"{NAME}: {entry['path']!r} listed twice")
        seen.add(entry["path"])
    if data.get("state") is not None and data["state"] not in STATES:
        raise ManifestError(f"{NAME}: state {data['state']!r} is not one of {', '.join(STATES)}")
    return data


def read(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, validated, or None when it has none."""
    try:
        raw = (Path(folder) / NAME).read_bytes()
    except FileNotFoundError:
        return None
    return parse(raw)


def expected(manifest: dict[str, Any]) -> list[Expected]:
    return [Expected(f["path"], f["size"], f["crc32c"]) for f in manifest["files"]]


def local_files(folder: Path) -> list[str]:
    """Relative POSIX paths of every regular file under `folder` (symlinks are reported, not followed)."""
    folder = Path(folder)
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            out.append((rel / name).as_posix())
    return sorted(out)


def compare(folder: Path, files: list[Expected], *, ignore: tuple[str, ...] = (NAME,),
            computed: dict[str, list] | None = None) -> list[Difference]:
    """Missing, extra and differing files of `folder` against `files` (content checked by CRC32C or MD5).

    `computed` ({path: [size, crc32c]}) holds checksums taken while the files were written, so a folder
    just extracted is not read a second time.
    """
    from lib import storage

    folder = Path(folder)
    want = {f.path: f for f in files}
    have = set(local_files(folder)) if folder.is_dir() else set()
    diffs: list[Difference] = []
    for path in sorted(want):
        exp = want[path]
        local = folder / Path(*path.split("/"))
        if path not in have:
            diffs.append(Difference(path, "missing"))
            continue
        size = local.stat().st_size
        if size != exp.size:
            diffs.append(Difference(path, "differs", f"size {size}, expected {exp.size}"))
        elif exp.crc32c:
            crc = computed[path][1] if computed and path in computed else storage.crc32c_file(local)
            if crc != exp.crc32c:
                diffs.append(Difference(path, "differs", f"crc32c {crc}, expected {exp.crc32c}"))
        elif exp.md5:
            md5 = md5_file(local)
            if md5 != exp.md5:
                diffs.append(Difference(path, "differs", f"md5 {md5}, expected {exp.md5}"))
    diffs += [Difference(p, "extra") for p in sorted(have - set(want)) if p not in ignore]
    return diffs


def md5_file(path: Path) -> str:
    """Base64 MD5 as GCS reports it (`Blob.md5_hash`), for objects without a CRC32C."""
    import base64
    import hashlib

    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode()
