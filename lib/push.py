"""VM -> GCS from the PC: `vm push NAME` runs vm-scripts/push.sh on the VM over ssh; `vm download` for one small file.

Results travel VM -> bucket over Google's internal network, then bucket -> PC with bin/pull (verified,
resumable). scp straight to the PC is only for a small single file: large recursive scp transfers are
are what fails over PuTTY-style links, so directories and big files are refused with the way to do it.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from lib import clients, paths, ssh
from lib.config import Config
from lib.errors import OpsError, Refused, UsageError
from lib.log import Log, quiet

REMOTE_TOOLS = "/tmp/ops-hpc/bin"
ANALYSIS_ROOT = "/tmp/ops-hpc-analysis"
DOWNLOAD_LIMIT = 50 * 1024 * 1024
METHODS = ("auto", "curl", "gcloud")
_PUSHED = re.compile(r"PUSHED folder=(\S+) prefix=(\S+) files=(\d+) bytes=(\d+)")
_FAILED = re.compile(r"FAILED folder=(\S+) reason=(\S+)")


def stamp(now: float | None = None) -> str:
    """YYYYMMDD-HHMMSS (UTC), the suffix that keeps pushes of the same folder apart."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))


def install_tools(cfg: Config, name: str, *, on_log: Log = quiet) -> None:
    """Copy push.sh, lib.sh and kill_opensees.sh to the VM (harmless to repeat)."""
    ssh.upload(cfg, name, [paths.vm_script(t) for t in paths.SSH_TOOLS], REMOTE_TOOLS, on_log=on_log)


def tool(script: str) -> str:
    return ssh.rpath(f"{REMOTE_TOOLS}/{script}")


def push_command(bucket: str, folders: Sequence[str] = (), *, when: str | None = None, method: str = "auto") -> str:
    """The remote command line for push.sh (every value shell-quoted)."""
    if method not in METHODS:
        raise UsageError(f"push method {method!r}: expected one of {', '.join(METHODS)}")
    parts = [f"bash {tool('push.sh')}", "--bucket", shlex.quote(bucket), "--with", method]
    if when:
        parts += ["--stamp", shlex.quote(when)]
    parts.append("--")
    parts += [shlex.quote(f) for f in folders]
    return " ".join(parts)


def push(cfg: Config, name: str, folders: Sequence[str] = (), *, on_log: Log = print, on_line: Log | None = None,
         when: str | None = None, method: str = "auto", install: bool = True) -> list[dict[str, Any]]:
    """Push /tmp/ops-hpc-analysis/<folder>/ (every folder when none given) to gs://BUCKET/<folder>_<stamp>/.

    Returns [{folder, prefix, files, bytes}] for what was pushed; OpsError if any folder failed (the others
    are pushed all the same). Not retried: push.sh retries each upload itself, and re-running it would
    write a second, differently stamped tree.
    """
    cfg = clients.resolve(cfg)
    for folder in folders:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", folder):
            raise UsageError(f"folder {folder!r}: a name under {ANALYSIS_ROOT} (letters, digits, '.', '_', '-')")
    if install:
        install_tools(cfg, name)
    lines: list[str] = []

    def line(text: str) -> None:
        lines.append(text)
        if on_line is not None:
            on_line(text)

    code = ssh.run(cfg, name, push_command(cfg.bucket_name, folders, when=when or stamp(), method=method),
                   on_line=line)
    pushed = [{"folder": m[1], "prefix": m[2], "files": int(m[3]), "bytes": int(m[4])}
              for m in (_PUSHED.search(x) for x in lines) if m]
    failed = [f"{m[1]} ({m[2]})" for m in (_FAILED.search(x) for x in lines) if m]
    for p in pushed:
        on_log(f"pushed {p['folder']} -> gs://{cfg.bucket_name}/{p['prefix']} ({p['files']} files, {p['bytes']} bytes)")
    if code or failed:
        tail = " | ".join(x for x in lines[-3:] if x)
        raise OpsError(f"push from {name} failed (exit {code}){': ' + ', '.join(failed) if failed else ''}"
                       f"{' — ' + tail if tail and not failed else ''}; what was pushed stays in the bucket")
    if not pushed:
        on_log(f"nothing to push under {ANALYSIS_ROOT} on {name}")
    return pushed


def download(cfg: Config, name: str, remote_path: str, dest: Path, *, limit: int = DOWNLOAD_LIMIT,
             on_log: Log = print) -> Path:
    """scp one small file from the VM; folders and files over `limit` are refused (use push + pull)."""
    cfg = clients.resolve(cfg)
    path = remote_path if remote_path.startswith("/") else f"{ANALYSIS_ROOT}/{remote_path}"
    if ".." in PurePosixPath(path).parts:
        raise UsageError(f"remote path {remote_path!r} must not contain '..'")
    code, out = ssh.capture(cfg, name, f"stat -L -c '%F|%s' {ssh.rpath(path)}")
    if code == ssh.SSH_CONNECT_FAILED:
        raise OpsError(f"cannot reach {name} over ssh: {out.strip()[-200:]}")
    kind, _, size_text = out.strip().splitlines()[-1].partition("|") if code == 0 and out.strip() else ("", "", "")
    how = f"push it to the bucket and pull it: `bin/push {name}` then `make pull`"
    if code != 0 or not size_text.isdigit():
        raise OpsError(f"{name}:{path}: no such file")
    if kind == "directory":
        raise Refused(f"{name}:{path} is a folder; vm download copies single small files only: {how}")
    size = int(size_text)
    if size > limit:
        raise Refused(f"{name}:{path} is {size / 1e6:.1f} MB, over the {limit / 1e6:.0f} MB limit for scp: {how}")
    target = ssh.download(cfg, name, path, Path(dest))
    on_log(f"downloaded {name}:{path} -> {target} ({size} bytes)")
    return target
