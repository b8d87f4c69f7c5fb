"""The local cloud: Google's APIs on this machine, for tests, `make demo` and rehearsals.

One daemon process (lib/localcloud/daemon.py) hosts:
  storage     the real fake-gcs-server binary, behind the storage door (storage_door.py)
  compute     the Compute Engine emulator (compute/), whose VMs are real local processes (vms.py)
  metadata    one metadata server per VM (metadata.py)
  monitoring  a gRPC fake of the Monitoring API (monitoring.py)
  admin       /_localcloud/... on the compute port: faults, preemption, time scale, quotas

`bin/localcloud up|down|status|env` (control.py) manages it; its state file
`<state_dir>/localcloud/localcloud.json` records pids and endpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lib.errors import OpsError

STATE_FILE = "localcloud.json"


def home(state_dir: Path) -> Path:
    return Path(state_dir) / "localcloud"


def read_state(state_dir: Path) -> dict[str, Any] | None:
    path = home(state_dir) / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        return None


def is_alive(pid: int, create_time: float | None) -> bool:
    """True if `pid` runs and is the same process we started (pids get reused)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def running_endpoints(state_dir: Path) -> dict[str, str]:
    """Endpoints of the running local cloud, or a clear error saying how to start it."""
    state = read_state(state_dir)
    if not state or not is_alive(state["pid"], state.get("create_time")):
        raise OpsError(
            f"the local cloud is not running (state dir {state_dir}): start it with `bin/localcloud up` "
            "or `make localcloud-up`, or set OPS_HPC_BACKEND=gcp"
        )
    return state["endpoints"]


def vm_environment(endpoints: dict[str, str], project: str) -> dict[str, str]:
    """What a local VM (and a shell after `bin/localcloud env`) needs to find the local cloud."""
    storage = endpoints["storage"]
    compute = endpoints["compute"]
    return {
        "STORAGE_EMULATOR_HOST": storage,
        "OPS_HPC_STORAGE_API": storage,
        "OPS_HPC_COMPUTE_API": f"{compute}/compute/v1",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE": f"{storage}/storage/v1/",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE": f"{compute}/compute/v1/",
        "CLOUDSDK_AUTH_DISABLE_CREDENTIALS": "true",
        "CLOUDSDK_CORE_PROJECT": project,
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    }


def shell_env(state_dir: Path, project: str) -> dict[str, str]:
    """Variables for the user's shell: the VM ones plus ops-hpc's own configuration."""
    endpoints = running_endpoints(state_dir)
    env = vm_environment(endpoints, project)
    env.update(
        {
            "OPS_HPC_BACKEND": "local",
            "OPS_HPC_STATE_DIR": str(Path(state_dir).resolve()),
            "OPS_HPC_COMPUTE_ENDPOINT": endpoints["compute"],
            "OPS_HPC_STORAGE_ENDPOINT": endpoints["storage"],
            "OPS_HPC_MONITORING_ENDPOINT": endpoints["monitoring"],
        }
    )
    return env


def admin(state_dir_or_url: Path | str, path: str, body: dict | None = None, method: str | None = None) -> Any:
    """Call the local cloud's admin API (/_localcloud/...): faults, preemption, time scale."""
    import urllib.request

    base = state_dir_or_url if isinstance(state_dir_or_url, str) else running_endpoints(state_dir_or_url)["compute"]
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{base}/_localcloud/{path.lstrip('/')}",
        data=data,
        method=method or ("POST" if body is not None else "GET"),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None
