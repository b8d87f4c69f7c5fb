"""The shell local VMs run under: plain `bash` on Linux/macOS, Git for Windows' bash.exe found explicitly on Windows.

Why explicitly: on Windows `bash` on PATH is usually C:\\Windows\\System32\\bash.exe, the WSL launcher, which
runs the script in a Linux distribution that has neither this folder layout nor the venv's Python. Git for
Windows is looked for from `git` on PATH (<Git>\\cmd\\git.exe -> <Git>\\bin\\bash.exe or <Git>\\usr\\bin\\bash.exe),
then in its standard install folders (Program Files, per-user under LOCALAPPDATA), no registry needed.

A VM's scripts call `python3` (Windows has python.exe only, and a Store alias that opens the Store) and
GNU `timeout -k` (Windows' own timeout.exe is a pause command), `find`, `sort`: Git's usr\\bin goes first on
the VM's PATH and a `python3` shim pointing at this interpreter is written for it. Children get no console
window (CREATE_NO_WINDOW) and their own process group, so a tree can be ended at once.
Imports nothing from ops-hpc: the emulator stays standalone (LocalCloudError is its error type).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib.localcloud import LocalCloudError

# Windows process creation flags (subprocess only defines them on Windows)
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
INSTALL_HINT = ("local VMs on Windows need Git Bash: install Git for Windows (https://git-scm.com/download/win, "
                "or `winget install Git.Git`) and open a new terminal")


class GitBashMissing(LocalCloudError):
    """No Git for Windows bash.exe was found; the message says to install it."""


@dataclass(frozen=True)
class Shell:
    """bash to run, and the folders a VM's PATH needs first (Git's usr\\bin with GNU coreutils, mingw64\\bin with curl)."""

    bash: str
    tool_dirs: tuple[str, ...] = ()


def is_windows() -> bool:
    return os.name == "nt"


def _folded(path: str | os.PathLike[str]) -> str:
    """A path compared the Windows way: backslashes, lower case, trailing separator."""
    return str(path).replace("/", "\\").lower().rstrip("\\") + "\\"


def is_wsl_launcher(path: str | os.PathLike[str], env: Mapping[str, str]) -> bool:
    """System32's bash.exe (and the WindowsApps alias) start WSL, never Git Bash."""
    folded = _folded(path)
    system_root = env.get("SYSTEMROOT") or env.get("SystemRoot") or env.get("WINDIR") or r"C:\Windows"
    return folded.startswith(_folded(system_root)) or "\\system32\\" in folded or "\\windowsapps\\" in folded


def git_roots(env: Mapping[str, str], which: Callable[..., str | None] = shutil.which) -> list[Path]:
    """Candidate Git for Windows install folders, most specific first: from `git` on PATH, then the standard ones."""
    roots: list[Path] = []
    git = which("git", path=env.get("PATH", ""))
    if git:
        parent = Path(git).parent  # <Git>\cmd, <Git>\bin or <Git>\mingw64\bin
        roots += [parent.parent, parent.parent.parent]
    for var in ("ProgramFiles", "ProgramW6432", "ProgramFiles(x86)"):
        if env.get(var):
            roots.append(Path(env[var]) / "Git")
    if env.get("LOCALAPPDATA"):
        roots.append(Path(env["LOCALAPPDATA"]) / "Programs" / "Git")
    unique: list[Path] = []
    for root in roots:
        if _folded(root) not in {_folded(r) for r in unique} and root != Path(root.anchor):
            unique.append(root)
    return unique


def find_git_bash(env: Mapping[str, str] | None = None, *, which: Callable[..., str | None] = shutil.which,
                  exists: Callable[[str], bool] = os.path.isfile) -> Shell:
    """Git for Windows' bash.exe and its tool folders; GitBashMissing (one line) when there is none."""
    env = os.environ if env is None else env
    for root in git_roots(env, which):
        for bash in (root / "bin" / "bash.exe", root / "usr" / "bin" / "bash.exe"):
            if is_wsl_launcher(bash, env) or not exists(str(bash)):
                continue
            tools = tuple(str(d) for d in (root / "usr" / "bin", root / "mingw64" / "bin") if exists(str(d / "bash.exe"))
                          or exists(str(d / "timeout.exe")) or exists(str(d / "curl.exe")))
            return Shell(str(bash), tools)
    raise GitBashMissing(INSTALL_HINT)


def find_shell(env: Mapping[str, str] | None = None, **probes: Any) -> Shell:
    """The shell for this OS: Git Bash on Windows, `bash` (on PATH) elsewhere."""
    return find_git_bash(env, **probes) if is_windows() else Shell("bash")


def shell(env: Mapping[str, str] | None = None) -> list[str]:
    """The argv prefix that runs a bash script or `-c` command: ["bash"] or ["C:\\...\\Git\\bin\\bash.exe"]."""
    return [find_shell(env).bash]


def session_kwargs() -> dict[str, Any]:
    """Popen keywords for a VM's process tree: its own session (POSIX), or its own group and no console (Windows)."""
    if is_windows():
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def no_window_kwargs() -> dict[str, Any]:
    """Popen keywords for a console program started by a process without a console (no window pops up)."""
    return {"creationflags": CREATE_NO_WINDOW} if is_windows() else {}


def python_shim(folder: Path, python: str | None = None) -> Path:
    """Write `folder/python3`, a bash script running this interpreter (Windows has no python3.exe)."""
    exe = python or sys.executable
    if is_windows():
        exe = exe.replace("\\", "/")  # C:/.../python.exe: Git Bash runs that form as is
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "python3"
    text = "#!/bin/sh\n# written by the local cloud: the venv's Python for this VM's scripts\nexec '" + \
        exe.replace("'", "'\\''") + "' \"$@\"\n"
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8", newline="\n")
        target.chmod(0o755)
    return folder


def vm_path(vm_dirs: list[str], inherited: str, *, shim_dir: str | None = None, env: Mapping[str, str] | None = None,
            **probes: Any) -> str:
    """A VM's PATH: its own bin folders, then (Windows) the python3 shim and Git's tools, then this Python's folder.

    Git's usr\\bin precedes the inherited PATH so `timeout`, `find` and `sort` are GNU's, not System32's.
    """
    head = list(vm_dirs)
    if is_windows():
        head += [shim_dir] if shim_dir else []
        head += list(find_git_bash(env, **probes).tool_dirs)
    head.append(os.path.dirname(sys.executable))
    return (";" if is_windows() else ":").join([*head, inherited] if inherited else head)
