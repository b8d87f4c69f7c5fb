"""Local VMs are real process trees: a VM's startup script runs under bash with its disk folder as root.

A real VM runs its startup script as root on its own disk; here the disk is a folder, so the script runs
with cwd=<disk> and OPS_HPC_VM_ROOT=<disk>, which vm-scripts prefix to every absolute path (empty on a
real VM). Each VM is its own session (POSIX) so the whole tree can be ended at once, as powering off a
VM would. On Windows the tree is a new process group without a console window, run by Git for Windows'
bash.exe with a `python3` and GNU tools on its PATH (winshell.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from lib.localcloud import winshell

IS_WINDOWS = os.name == "nt"
VM_MARKER = "LOCALCLOUD_VM"  # env var carrying the VM's id: finds processes that left the session
INHERITED = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "COMSPEC", "PATHEXT", "WINDIR", "TZ")
DISK_DIRS = ("var/run", "var/log", "root/.config/gcloud", "tmp", "opt/ops-hpc/bin", "usr/local/bin", "etc")


def prepare_disk(disk: Path) -> None:
    """Create the directories every booted VM has."""
    for sub in DISK_DIRS:
        (disk / sub).mkdir(parents=True, exist_ok=True)


def console_path(disk: Path) -> Path:
    return disk / "var" / "log" / "console.log"


def console_append(disk: Path, text: str) -> None:
    """Lines the 'firmware' writes to the serial console (boot, script exit), as GCE's console shows."""
    path = console_path(disk)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        fh.write(text.encode())


def vm_environment(disk: Path, metadata_host: str, vm_id: str, extra: dict[str, str]) -> dict[str, str]:
    """Minimal environment of a VM: a few inherited variables, the daemon's endpoints, and per-VM paths.

    PATH puts the venv's python first (after the VM's own bin dirs) so `python3` has the opensees package;
    on Windows through a shim in the disk's usr/bin, after which come Git's GNU tools (winshell.vm_path).
    """
    env = {k: os.environ[k] for k in INHERITED if k in os.environ}
    env.update(extra)
    own = [str(disk / "opt" / "ops-hpc" / "bin"), str(disk / "usr" / "local" / "bin")]
    shim = str(winshell.python_shim(disk / "usr" / "bin")) if winshell.is_windows() else None
    env.update({
        "GCE_METADATA_HOST": metadata_host,
        "OPS_HPC_VM_ROOT": str(disk),
        "HOME": str(disk / "root"),
        "TMPDIR": str(disk / "tmp"),
        "CLOUDSDK_CONFIG": str(disk / "root" / ".config" / "gcloud"),
        VM_MARKER: vm_id,
        "PATH": winshell.vm_path(own, os.environ.get("PATH", ""), shim_dir=shim),
    })
    return env


def launch(disk: Path, script: str, env: dict[str, str]) -> subprocess.Popen:
    """Write the startup script onto the disk and run it with bash, output appended to the console log."""
    script_path = disk / "var" / "run" / "startup-script"
    script_path.parent.mkdir(parents=True, exist_ok=True)
    script_path.write_text(script, newline="\n")
    console_append(disk, f"localcloud: running startup-script ({time.strftime('%Y-%m-%dT%H:%M:%S%z')})\n")
    log = open(console_path(disk), "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen([*winshell.shell(), script_path.as_posix()], cwd=str(disk), env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **winshell.session_kwargs())
    finally:
        log.close()


def process(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The process if it is still the one we started (pid reuse is checked through create_time)."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.01:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def vm_members(pid: int | None, create_time: float | None, vm_id: str, deep: bool = True) -> list[psutil.Process]:
    """Every live process of a VM: the root's tree, its process group and (deep) anything carrying its marker."""
    found: dict[int, psutil.Process] = {}
    root = process(pid, create_time)
    if root is not None:
        found[root.pid] = root
        try:
            for child in root.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            pass
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid in found or proc.pid == me:
            continue
        try:
            if not IS_WINDOWS and pid and os.getpgid(proc.pid) == pid and proc.create_time() >= (create_time or 0) - 0.01:
                found[proc.pid] = proc
                continue
            if deep and proc.environ().get(VM_MARKER) == vm_id:
                found[proc.pid] = proc
        except (psutil.Error, OSError):
            continue
    return [p for p in found.values() if _alive(p)]


def reap_strays(disks_root: Path, live_ids: set[str]) -> list[int]:
    """Kill processes of this cloud's VMs that no longer exist: the promise that a deleted VM runs nothing.

    A process can slip past a VM's deletion by starting just after it (an ssh command racing a delete).
    Only processes whose OPS_HPC_VM_ROOT lies under `disks_root` are considered, so two local clouds on
    one machine never touch each other's VMs.
    """
    prefix = str(disks_root) + os.sep
    killed = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        vm_id = env.get(VM_MARKER)
        if vm_id and vm_id not in live_ids and env.get("OPS_HPC_VM_ROOT", "").startswith(prefix):
            try:
                proc.kill()
                killed.append(proc.pid)
            except psutil.Error:
                pass
    return killed


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def end_tree(pid: int | None, create_time: float | None, vm_id: str, grace: float = 3.0) -> None:
    """Power off: SIGTERM every process of the VM, SIGKILL what is left after `grace` seconds.

    Runs in the caller's (server) thread; the VM may be the one asking for its own deletion, so nothing here
    depends on the caller surviving.
    """
    procs = vm_members(pid, create_time, vm_id)
    if not procs:
        return
    if not IS_WINDOWS and pid and process(pid, create_time) is not None:
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            pass
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    alive = _wait_gone(procs, grace)
    # children forked while we were terminating
    alive += [p for p in vm_members(pid, create_time, vm_id) if p not in alive]
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _wait_gone(alive, 2.0)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until the processes are dead or zombies (psutil.wait_procs would wait out an unreaped zombie)."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _alive(p)]
    return alive


def watch(popen: subprocess.Popen | None, pid: int, create_time: float, on_exit: Callable[[int | None], None]) -> None:
    """Call on_exit(returncode) when the VM's startup script ends (also for a process adopted after a restart)."""

    def run() -> None:
        code: int | None
        if popen is not None:
            code = popen.wait()
        else:
            proc = process(pid, create_time)
            code = None
            if proc is not None:
                try:
                    code = proc.wait()
                except psutil.Error:
                    code = None
        on_exit(code)

    threading.Thread(target=run, name=f"vm-watch-{pid}", daemon=True).start()
