"""Is this object name or zip member safe to write under the results folder?

A bucket can hold any name, and a zip any member: `../x`, `/etc/x`, `C:x`,
`a\\b`, `CON`, `x.` or two names that differ only in case. Each of these would
escape the target folder, fail on Windows, or silently overwrite a sibling on a
case-insensitive disk. Names are checked as text first (the same rules on every
OS, so a set that pulls on Linux also pulls on Windows), then the joined path is
resolved and checked again, which also catches a symlinked folder inside `--dir`.
"""

from __future__ import annotations

import re
import stat
import zipfile
from collections.abc import Iterable
from pathlib import Path

from lib.errors import OpsError

# Windows device names, with or without an extension ("CON.txt" is still CON).
_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {f"{d}{i}" for d in ("COM", "LPT") for i in
                                                                   list("123456789") + ["¹", "²", "³"]}
_BAD_CHARS = re.compile(r'[<>:"|?*\\\x00-\x1f]')
_DRIVE = re.compile(r"^[A-Za-z]:")
MAX_SEGMENT = 255

# Names ops-hpc itself keeps in the results folder; no set may land on them.
RESERVED_TOP = {"download_state.json", "download_state.json.lock", ".ops-hpc-partial"}


class UnsafeName(OpsError):
    """A name that must not be written; the message says which name and why."""


def problem(name: str) -> str | None:
    """Why `name` (a relative POSIX path) is unsafe to write anywhere, or None if it is fine."""
    if not name:
        return "empty name"
    if "\\" in name:
        return "contains a backslash (a Windows path separator)"
    if name.startswith("/"):
        return "absolute path"
    if _DRIVE.match(name):
        return "starts with a drive letter"
    for segment in name.split("/"):
        if segment in ("", "."):
            return "empty or '.' path segment"
        if segment == "..":
            return "'..' segment (would leave the folder)"
        if len(segment.encode("utf-8")) > MAX_SEGMENT:
            return f"segment longer than {MAX_SEGMENT} bytes"
        bad = _BAD_CHARS.search(segment)
        if bad:
            return f"character {bad.group()!r} that Windows cannot hold"
        if segment[-1] in ". ":
            return "segment ends with a dot or space (Windows drops it)"
        if segment.split(".")[0].rstrip(" ").upper() in _RESERVED:
            return f"'{segment}' is a reserved device name on Windows"
    return None


def check(name: str) -> str:
    """`name` unchanged, or UnsafeName."""
    why = problem(name)
    if why:
        raise UnsafeName(f"unsafe name {name!r}: {why}")
    return name


def case_clashes(names: Iterable[str]) -> list[str]:
    """Names that collide on a case-insensitive disk: equal ignoring case, or a file that is also a folder."""
    seen: dict[str, str] = {}
    clashes: list[str] = []
    files: list[str] = []
    for name in names:
        key = name.rstrip("/").casefold()
        if key in seen:
            clashes.append(f"{seen[key]!r} and {name!r} differ only in case" if seen[key] != name
                           else f"{name!r} appears twice")
        else:
            seen[key] = name
        if not name.endswith("/"):
            files.append(key)
    folders = {"/".join(k.split("/")[:i]) for k in seen for i in range(1, k.count("/") + 1)}
    clashes += [f"{f!r} is both a file and a folder" for f in files if f in folders]
    return clashes


def inside(root: Path, name: str) -> Path:
    """The path for relative POSIX `name` under `root`, checked as text and again after resolving."""
    check(name)
    base = Path(root).resolve()
    path = (base / Path(*name.split("/"))).resolve()
    if path == base or base not in path.parents:
        raise UnsafeName(f"unsafe name {name!r}: resolves outside {base}")
    return path


def is_symlink(info: zipfile.ZipInfo) -> bool:
    """True for a zip member stored as a symbolic link (Unix mode bits in the external attributes)."""
    return stat.S_ISLNK(info.external_attr >> 16)


def zip_problems(infos: list[zipfile.ZipInfo]) -> list[str]:
    """Every reason a zip's member list is unsafe to extract; empty means safe."""
    problems: list[str] = []
    for info in infos:
        name = info.filename
        why = problem(name.rstrip("/") if info.is_dir() else name)
        if why:
            problems.append(f"member {name!r}: {why}")
        elif is_symlink(info):
            problems.append(f"member {name!r}: is a symbolic link")
        elif info.flag_bits & 0x1:
            problems.append(f"member {name!r}: is encrypted")
    problems += [f"members {c}" for c in case_clashes(i.filename for i in infos)]
    return problems
