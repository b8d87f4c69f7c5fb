"""SSH and SCP to a VM: `gcloud compute ssh/scp` on GCP, the local VM's disk folder on the local cloud.

Why gcloud: it handles keys, OS Login and IAP tunnels on Windows (PuTTY) and Linux (OpenSSH) alike.
Every command line is an argv list (never a shell string on the PC), so paths with spaces and
Windows paths (C:\\Users\\...) reach gcloud intact; the remote command is one argument that the
VM's shell parses, so everything interpolated into it goes through `shlex.quote` (see `rpath`).

Retries: only where running twice is harmless. Exit 255 is ssh's "could not connect" status: an
upload, a download, `mkdir -p` or the `true` probe of `wait_for_ssh` are retried on it through the
one policy (lib/retry); a command that may have started (an analysis, a kill) is never re-run.

Local branch: a local VM is a folder plus an environment (admin API `vms/P/Z/NAME`), so a command
runs as `bash -c CMD` with cwd=<disk> and that environment, in its own session (Ctrl+C on the PC
reaches the PC, as with a real ssh session, not the "remote" processes); absolute remote paths map
into the disk folder. The environment carries the VM's marker, so deleting the VM ends these
processes as powering off a real VM drops its ssh sessions.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import tenacity

from lib import clients, compute, retry
from lib.config import Config
from lib.errors import OpsError, UsageError
from lib.log import Log, quiet
from lib.polling import poll_until

Line = Log  # one line of remote output
SSH_CONNECT_FAILED = 255  # ssh's own exit status when it never reached the remote command
IAP_RANGE = "35.235.240.0/20"
GCLOUD_HINT = ("the gcloud CLI is needed for ssh/scp to GCP VMs: install the Google Cloud SDK "
               "(https://cloud.google.com/sdk/docs/install) and run `gcloud auth login`")


class SshConnectionError(OpsError):
    """ssh could not connect (exit 255): nothing ran remotely, so idempotent steps may be retried."""


# ----------------------------------------------------------------------------- command lines


def gcloud_executable() -> str:
    """gcloud on PATH (gcloud.cmd on Windows), or a message saying how to get it."""
    found = shutil.which("gcloud")
    if not found:
        raise UsageError(GCLOUD_HINT)
    return found


def common_flags(cfg: Config) -> list[str]:
    """Flags every ssh/scp call carries: where the VM is, how to reach it, no interactive prompts."""
    flags = ["--zone", cfg.zone, "--project", cfg.project]
    if cfg.use_iap:
        flags.append("--tunnel-through-iap")  # VMs without external IPs; needs tcp:22 from 35.235.240.0/20
    # a fresh VM has a fresh host key every time: recording it would only break the next VM of the same name
    flags += ["--strict-host-key-checking=no", "--quiet"]
    return flags


def ssh_argv(cfg: Config, name: str, command: str, *, gcloud: str = "gcloud") -> list[str]:
    """`gcloud compute ssh NAME --zone Z --project P [--tunnel-through-iap] ... --command CMD` as a list."""
    return [gcloud, "compute", "ssh", name, *common_flags(cfg), "--command", command]


def remote_spec(name: str, path: str) -> str:
    """NAME:PATH for scp; the path is parsed by the VM's shell (legacy scp), so it is shell-quoted when needed."""
    return f"{name}:{shlex.quote(path)}"


def scp_argv(cfg: Config, sources: Sequence[str | os.PathLike[str]], dest: str | os.PathLike[str], *,
             recurse: bool = False, gcloud: str = "gcloud") -> list[str]:
    """`gcloud compute scp [--recurse] SRC... DEST`: local paths go in verbatim (argv, not a shell string)."""
    argv = [gcloud, "compute", "scp", *common_flags(cfg)]
    if recurse:
        argv.append("--recurse")
    return argv + [os.fspath(s) for s in sources] + [os.fspath(dest)]


def rpath(path: str) -> str:
    """A remote absolute path for use inside a remote command: prefixed with the local VM root (empty on GCP)."""
    if not path.startswith("/"):
        raise ValueError(f"remote paths are absolute: {path!r}")
    return '"${OPS_HPC_VM_ROOT:-}"' + shlex.quote(path)


def sudo(command: str, cfg: Config) -> str:
    """Run as root on a real VM; a local VM's 'root' is the disk folder the user already owns."""
    return command if cfg.local else f"sudo {command}"


# ----------------------------------------------------------------------------- local VMs


def local_vm(cfg: Config, name: str) -> dict[str, Any]:
    """The local cloud's view of a VM: {disk, env, pids, metadata_host, status}."""
    import urllib.error

    from lib.localcloud import admin

    cfg = clients.resolve(cfg)
    try:
        return admin(cfg.compute_endpoint, f"vms/{cfg.project}/{cfg.zone}/{name}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise OpsError(f"VM {name} does not exist in {cfg.zone}") from None
        raise


def _local_env(info: dict[str, Any]) -> dict[str, str]:
    env = dict(info.get("env") or {})
    env.setdefault("OPS_HPC_VM_ROOT", info["disk"])
    return env


def _local_path(info: dict[str, Any], remote: str) -> Path:
    posix = PurePosixPath(remote)
    if not posix.is_absolute() or ".." in posix.parts:
        raise UsageError(f"remote path {remote!r}: expected an absolute path without '..'")
    return Path(info["disk"], *posix.parts[1:])


# ----------------------------------------------------------------------------- running commands


def _popen(cfg: Config, name: str, command: str) -> subprocess.Popen:
    # Its own process group: a terminal's Ctrl+C goes to ops-hpc (its guard decides), not straight to ssh, so
    # a push in flight is not cut off while the guard lets it finish.
    from lib.localcloud import LocalCloudError, winshell

    common: dict[str, Any] = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  **winshell.session_kwargs())
    if cfg.local:
        info = local_vm(cfg, name)
        if info.get("status") != "RUNNING" or not info.get("metadata_host"):
            raise SshConnectionError(f"VM {name} is {info.get('status')}: ssh: connect to host {name}: Connection refused")
        try:
            bash = winshell.shell()  # Git Bash on Windows, never System32's WSL launcher
        except LocalCloudError as exc:
            raise OpsError(str(exc)) from None
        return subprocess.Popen([*bash, "-c", command], cwd=info["disk"], env=_local_env(info), **common)
    cfg = cfg.require_project()
    return subprocess.Popen(ssh_argv(cfg, name, command, gcloud=gcloud_executable()), **common)


def _stream(proc: subprocess.Popen, on_line: Line) -> int:
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        on_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
    proc.stdout.close()
    return proc.wait()


def run(cfg: Config, name: str, command: str, *, on_line: Line = print,
        on_start: Callable[[subprocess.Popen], None] | None = None) -> int:
    """Run `command` on the VM, streaming each output line (stdout+stderr) to on_line; returns the exit status.

    Never retried: the command may have run. A connection failure comes back as 255 (ssh's status).
    """
    try:
        proc = _popen(cfg, name, command)
    except SshConnectionError as exc:
        on_line(str(exc))
        return SSH_CONNECT_FAILED
    if on_start is not None:
        on_start(proc)
    return _stream(proc, on_line)


def capture(cfg: Config, name: str, command: str) -> tuple[int, str]:
    """(exit status, output) of a short command."""
    lines: list[str] = []
    code = run(cfg, name, command, on_line=lines.append)
    return code, "\n".join(lines)


def _retry_connect(fn: Callable[[], Any]) -> Any:
    """Retry only 'could not connect' (nothing ran), under the one policy's bounds and backoff."""
    return retry.policy(retry=tenacity.retry_if_exception_type(SshConnectionError))(fn)


def run_idempotent(cfg: Config, name: str, command: str, *, on_line: Line = quiet) -> int:
    """Run a command that is harmless to repeat (mkdir -p, a probe), retrying connection failures."""
    def attempt() -> int:
        lines: list[str] = []
        code = run(cfg, name, command, on_line=lambda s: (lines.append(s), on_line(s)))
        if code == SSH_CONNECT_FAILED:
            raise SshConnectionError(f"ssh to {name} failed: {' | '.join(lines[-3:]) or 'exit 255'}")
        return code

    return _retry_connect(attempt)


def _scp(cfg: Config, argv: list[str], what: str) -> None:
    def attempt() -> None:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
        if proc.returncode == SSH_CONNECT_FAILED:
            raise SshConnectionError(f"{what}: could not connect ({proc.stderr.strip()[-300:]})")
        if proc.returncode:
            raise OpsError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")

    _retry_connect(attempt)


def upload(cfg: Config, name: str, sources: Sequence[Path], remote_dir: str, *, on_log: Line = quiet) -> None:
    """Copy local files/folders into remote_dir (created first); retried only on connection failures."""
    sources = [Path(s) for s in sources]
    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        raise UsageError(f"cannot upload {', '.join(missing)}: not found")
    on_log(f"uploading {len(sources)} item(s) to {name}:{remote_dir}")
    if cfg.local:
        info = local_vm(cfg, name)
        dest = _local_path(info, remote_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for src in sources:
            if src.is_dir():
                shutil.copytree(src, dest / src.name, dirs_exist_ok=True)
            else:
                shutil.copy2(src, dest / src.name)
        return
    cfg = cfg.require_project()
    code = run_idempotent(cfg, name, f"mkdir -p {shlex.quote(remote_dir)}")
    if code:
        raise OpsError(f"could not create {remote_dir} on {name} (exit {code})")
    argv = scp_argv(cfg, sources, remote_spec(name, remote_dir.rstrip("/") + "/"),
                    recurse=any(s.is_dir() for s in sources), gcloud=gcloud_executable())
    _scp(cfg, argv, f"uploading to {name}:{remote_dir}")


def download(cfg: Config, name: str, remote_path: str, local_path: Path) -> Path:
    """Copy one remote file to local_path (a file or an existing folder); returns the local file."""
    local_path = Path(local_path)
    target = local_path / PurePosixPath(remote_path).name if local_path.is_dir() else local_path
    target.parent.mkdir(parents=True, exist_ok=True)
    if cfg.local:
        src = _local_path(local_vm(cfg, name), remote_path)
        if not src.is_file():
            raise OpsError(f"{name}:{remote_path}: no such file")
        shutil.copy2(src, target)
        return target
    cfg = cfg.require_project()
    _scp(cfg, scp_argv(cfg, [remote_spec(name, remote_path)], target, gcloud=gcloud_executable()),
         f"downloading {name}:{remote_path}")
    return target


# ----------------------------------------------------------------------------- readiness


def oslogin_enabled(cfg: Config, name: str) -> tuple[bool, str]:
    """(enabled, where it is set): instance metadata overrides project metadata; default off."""
    cfg = clients.resolve(cfg)

    def flag(items: Any) -> str | None:
        for item in items or []:
            if item.key.lower() == "enable-oslogin":
                return str(item.value).strip().lower()
        return None

    inst = retry.google(clients.instances(cfg).get, project=cfg.project, zone=cfg.zone, instance=name)
    value = flag(inst.metadata.items)
    if value is not None:
        return value in ("true", "1", "yes"), "instance metadata"
    project = retry.google(clients.compute_client("ProjectsClient", cfg).get, project=cfg.project)
    value = flag(project.common_instance_metadata.items)
    if value is not None:
        return value in ("true", "1", "yes"), "project metadata"
    return False, "default"


def ssh_hints(cfg: Config, name: str) -> str:
    """What usually blocks ssh to a new VM, tailored to this configuration."""
    hints = []
    if cfg.use_iap:
        hints.append(f"allow tcp:22 from {IAP_RANGE} (IAP) in the VPC firewall and grant roles/iap.tunnelResourceAccessor")
    else:
        hints.append("allow tcp:22 to the VM in the VPC firewall (or set use_iap = true for VMs without external IPs)")
    try:
        enabled, where = oslogin_enabled(cfg, name)
        if enabled:
            hints.append(f"OS Login is on ({where}): you need roles/compute.osAdminLogin")
    except Exception:  # a hint must not hide the real error
        pass
    return "; ".join(hints)


def wait_for_ssh(cfg: Config, name: str, timeout: float = 300.0, *, on_log: Line = quiet, interval: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> float:
    """Probe with `true` until the VM answers; returns the seconds waited, or a clear OpsError after `timeout`."""
    started = clock()
    last = ""
    on_log(f"waiting for ssh on {name} (up to {timeout:.0f} s)")

    def answers() -> bool:
        nonlocal last
        lines: list[str] = []
        try:
            code = run(cfg, name, "true", on_line=lines.append)
        except OpsError as exc:  # e.g. the VM is gone: waiting longer cannot help
            raise OpsError(f"VM {name} is not reachable over ssh: {exc}") from None
        if code == 0:
            return True
        last = " | ".join(x for x in lines[-3:] if x) or f"exit {code}"
        # gcloud itself failed: is the VM still there?
        if code != SSH_CONNECT_FAILED and not cfg.local and compute.get_vm(cfg, name) is None:
            raise OpsError(f"VM {name} is gone (deleted or preempted) while waiting for ssh: {last}")
        return False

    if poll_until(answers, timeout, interval, sleep=sleep, clock=clock):
        waited = clock() - started
        on_log(f"ssh to {name} ready after {waited:.0f} s")
        return waited
    raise OpsError(f"VM {name} did not accept ssh within {timeout:.0f} s (last: {last}). "
                   f"Check: {ssh_hints(cfg, name)}. The VM is deleted by its guard.")


class Streamer:
    """run() in a background thread, so a caller can watch a deadline while output streams."""

    def __init__(self, cfg: Config, name: str, command: str, on_line: Line) -> None:
        self.code: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(cfg, name, command, on_line), daemon=True,
                                        name=f"ssh-{name}")

    def _main(self, cfg: Config, name: str, command: str, on_line: Line) -> None:
        try:
            self.code = run(cfg, name, command, on_line=on_line)
        except BaseException as exc:  # handed to the caller in result()
            self.error = exc

    def start(self) -> Streamer:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def result(self) -> int:
        self._thread.join()
        if self.error is not None:
            raise self.error
        return int(self.code if self.code is not None else SSH_CONNECT_FAILED)
