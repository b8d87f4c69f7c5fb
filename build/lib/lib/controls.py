"""The operator's emergency controls (the original dashboard's panic buttons), as plain functions.

    abort      kill OpenSees on the VM; the VM stays (inspect it, push, or run something else)
    emergency  kill OpenSees, then push whatever is on the disk now; the VM stays
    stop_vm    delete the VM now (anything not pushed is lost)

Each does exactly that and returns what it did, so a bin script, an invoke task or a front end can
report it. A running `make run` notices: the killed job ends (its partial results are pushed as usual);
a deleted VM ends the run, whose guard finds the VM already gone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lib import clients, push, ssh
from lib.config import Config
from lib.errors import OpsError
from lib.log import Log


def abort(cfg: Config, name: str, *, on_log: Log = print, grace_s: int = 5, install: bool = True) -> int:
    """Kill every OpenSees process on VM `name` (TERM, then KILL after grace_s); returns how many."""
    cfg = clients.resolve(cfg)
    if install:
        push.install_tools(cfg, name)
    code, out = ssh.capture(cfg, name, f"bash {push.tool('kill_opensees.sh')} {int(grace_s)}")
    m = re.search(r"KILLED (\d+)", out)
    if code or not m:
        raise OpsError(f"abort on {name} failed (exit {code}): {out.strip()[-300:]}")
    killed = int(m[1])
    on_log(f"abort: {'killed ' + str(killed) + ' OpenSees process(es)' if killed else 'no OpenSees running'} "
           f"on {name}; the VM keeps running")
    return killed


def emergency(cfg: Config, name: str, *, on_log: Log = print, method: str = "auto",
              kill: bool = True) -> dict[str, Any]:
    """Kill OpenSees (so files stop changing), then push every analysis folder on the disk; the VM stays."""
    cfg = clients.resolve(cfg)
    push.install_tools(cfg, name)
    killed = abort(cfg, name, on_log=on_log, install=False) if kill else 0
    pushed = push.push(cfg, name, on_log=on_log, method=method, install=False)
    on_log(f"emergency: {len(pushed)} folder(s) in gs://{cfg.bucket_name}; VM {name} is still running: "
           f"`make pull`, then `make stop-vm NAME={name}`")
    return {"killed": killed, "pushed": pushed}


def stop_vm(cfg: Config, name: str, *, on_log: Log = print, on_confirm: Callable[[str], bool] | None = None,
            force: bool = False) -> bool:
    """Delete VM `name` now; False if it was already gone or the user declined."""
    return push.terminate(cfg, name, on_log=on_log, on_confirm=on_confirm, force=force)
