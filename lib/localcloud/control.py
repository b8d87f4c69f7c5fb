"""Start, stop and inspect the local cloud daemon. Used by bin/localcloud, tasks.py and the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from lib.localcloud import (
    DEFAULT_OP_DELAY,
    DEFAULT_PROJECT,
    STATE_FILE,
    LocalCloudError,
    admin,
    home,
    is_alive,
    read_state,
    shell_env,
    winshell,
)
from lib.localcloud.files import lock_for

REPO = Path(__file__).resolve().parents[2]
Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def status(state_dir: Path) -> dict[str, Any]:
    """{'running': bool, 'stale': bool, 'pid', 'endpoints', 'vms': [...]}: what runs right now."""
    state = read_state(state_dir)
    if not state:
        return {"running": False, "stale": False, "state_dir": str(state_dir)}
    alive = is_alive(state["pid"], state.get("create_time"))
    info: dict[str, Any] = {
        "running": alive,
        "stale": not alive,
        "pid": state["pid"],
        "state_dir": str(state_dir),
        "endpoints": state["endpoints"],
        "storage_backend": state.get("storage_backend"),
        "uptime_s": round(time.time() - state.get("started", time.time())),
    }
    if alive:
        try:
            info["vms"] = admin(state["endpoints"]["compute"], "vms")
        except OSError as exc:
            info["vms_error"] = str(exc)
    return info


def _kill_recorded(state: dict[str, Any], on_log: Log) -> int:
    """End every process the state file says we started (VM trees included), checking each is still ours."""
    killed = 0
    entries = list(state.get("vms", [])) + list(state.get("children", []))
    entries.append({"pid": state["pid"], "create_time": state.get("create_time")})
    procs = []
    for entry in entries:
        if not is_alive(entry["pid"], entry.get("create_time")):
            continue
        try:
            root = psutil.Process(entry["pid"])
            procs += [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
    for proc in procs:
        try:
            proc.kill()
            killed += 1
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)
    if killed:
        on_log(f"ended {killed} leftover process(es) of the local cloud")
    return killed


def up(
    state_dir: Path, *, storage_backend: str = "filesystem", time_scale: float = 1.0, on_log: Log = _quiet,
    project: str = DEFAULT_PROJECT, op_delay: tuple[float, float] = DEFAULT_OP_DELAY, rtt_ms: float = 0.0,
    mbit: float = 0.0,
) -> dict[str, Any]:
    """Start the daemon in the background unless it already runs; returns its endpoints.

    op_delay: seconds (low, high) each step of a Compute operation takes; rtt_ms and mbit shape the
    storage door like a PC's line (0: loopback speed).
    """
    winshell.find_shell()  # on Windows: Git Bash for the VMs, or one line saying to install it, before anything starts
    root = home(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    with lock_for(root / STATE_FILE, timeout=60):
        state = read_state(state_dir)
        if state and is_alive(state["pid"], state.get("create_time")):
            on_log(f"local cloud already running (pid {state['pid']}, state {root}); not starting a second one")
            return state["endpoints"]
        if state:
            on_log(f"found a stale local cloud state file (pid {state['pid']} is gone): cleaning up")
            _kill_recorded(state, on_log)
            (root / STATE_FILE).unlink(missing_ok=True)
        log_path = root / "daemon.log"
        cmd = [sys.executable, "-m", "lib.localcloud.daemon", "--state-dir", str(Path(state_dir).resolve()),
               "--storage-backend", storage_backend, "--time-scale", str(time_scale), "--project", project,
               "--op-delay", f"{op_delay[0]}:{op_delay[1]}", "--rtt-ms", str(rtt_ms), "--mbit", str(mbit)]
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS
        else:
            kwargs["start_new_session"] = True
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, **kwargs)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = read_state(state_dir)
            if state and state.get("pid") == proc.pid:
                on_log(f"local cloud up (pid {proc.pid}, state {root})")
                return state["endpoints"]
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.kill()
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise LocalCloudError(f"the local cloud failed to start; see {log_path}: {' | '.join(tail)}")


def down(state_dir: Path, *, on_log: Log = _quiet) -> bool:
    """Stop the daemon (it ends its VMs and fake-gcs-server), then anything left; False if nothing ran."""
    root = home(state_dir)
    with lock_for(root / STATE_FILE, timeout=60):
        state = read_state(state_dir)
        if not state:
            on_log("local cloud is not running")
            return False
        if is_alive(state["pid"], state.get("create_time")):
            proc = psutil.Process(state["pid"])
            proc.terminate()
            try:
                proc.wait(15)
            except psutil.TimeoutExpired:
                on_log("daemon did not stop within 15 s; killing it")
        else:
            on_log(f"the local cloud daemon (pid {state['pid']}) had already died; cleaning up after it")
        _kill_recorded(state, on_log)
        (root / STATE_FILE).unlink(missing_ok=True)
        on_log("local cloud down")
        return True


def env_lines(state_dir: Path, project: str, *, powershell: bool = False) -> list[str]:
    """`export K='V'` lines (or PowerShell `$env:K = 'V'`) for a shell to point at the local cloud."""
    env = shell_env(state_dir, project)
    if powershell:
        return [f"$env:{k} = '{v}'" for k, v in sorted(env.items())]
    return [f"export {k}='{v}'" for k, v in sorted(env.items())]
