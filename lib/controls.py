"""The operator's emergency controls (the panic buttons of a run), as plain functions.

    abort      kill OpenSees on the VM; the VM stays (inspect it, push, or run something else)
    emergency  kill OpenSees, then push whatever is on the disk now and rescue stranded run-staged results
               (zips whose upload failed, under /opt/ops-hpc/work/RUN/); the VM stays
    rescue_stranded  copy those zips from the VM over ssh and upload them from the PC (run-staged's follower
               and reconcile, i.e. status and sweep, call it before they delete a VM that reports stranded results)
    delete_vm  delete the VM now (anything not pushed is lost)

Each does exactly that and returns what it did, so a bin script, an invoke task or a front end can
report it. A running `make run` notices: the killed job ends (its partial results are pushed as usual);
a deleted VM ends the run, whose guard finds the VM already gone.
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from lib import clients, compute, push, ssh, storage
from lib.config import Config
from lib.errors import OpsError
from lib.log import Log, quiet

WORK = "/opt/ops-hpc/work"  # run_analysis.sh's folder: WORK/RUN_ID/MODEL.zip is a result not yet uploaded


def abort(cfg: Config, name: str, *, on_log: Log = quiet, grace_s: int = 5, install: bool = True) -> int:
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


def emergency(cfg: Config, name: str, *, on_log: Log = quiet, method: str = "auto",
              kill: bool = True) -> dict[str, Any]:
    """Kill OpenSees (so files stop changing), then push every analysis folder on the disk; the VM stays."""
    cfg = clients.resolve(cfg)
    push.install_tools(cfg, name)
    killed = abort(cfg, name, on_log=on_log, install=False) if kill else 0
    pushed = push.push(cfg, name, on_log=on_log, method=method, install=False)
    rescued = rescue_stranded(cfg, name, on_log=on_log)
    on_log(f"emergency: {len(pushed)} folder(s) and {len(rescued)} stranded result(s) in gs://{cfg.bucket_name}; "
           f"VM {name} is still running: `make pull`, then `make delete-vm NAME={name}`")
    return {"killed": killed, "pushed": pushed, "rescued": rescued}


def stranded_on_vm(cfg: Config, name: str) -> list[str]:
    """RUN_ID/MODEL.zip of every finished result still on the VM's disk (its upload failed or is under way)."""
    code, out = ssh.capture(cfg, name, f"cd {ssh.rpath(WORK)} 2>/dev/null && ls -1 -- */*.zip 2>/dev/null; true")
    if code:
        raise OpsError(f"cannot list {WORK} on {name} (exit {code}): {out.strip()[-200:]}")
    found = []
    for line in out.splitlines():
        rel = PurePosixPath(line.strip())
        if len(rel.parts) == 2 and rel.suffix == ".zip" and not rel.name.endswith(".in.zip") and ".." not in rel.parts:
            found.append(str(rel))
    return sorted(found)


def rescue_stranded(cfg: Config, name: str, *, on_log: Log = quiet) -> list[str]:
    """Copy each stranded result zip off VM `name` over ssh and upload it as gs://BUCKET/RUN_ID/MODEL.zip.

    The PC's path to the bucket is used because the VM's failed. A zip must open and hold a
    MANIFEST.json (a complete result, as run_analysis.sh writes it atomically); an object already in
    the bucket with the same bytes is left as it is. Returns the object names now in the bucket.
    """
    cfg = clients.resolve(cfg)
    rescued = []
    with tempfile.TemporaryDirectory(prefix="ops-hpc-rescue-") as tmp:
        for rel in stranded_on_vm(cfg, name):
            local = ssh.download(cfg, name, f"{WORK}/{rel}", Path(tmp) / rel.replace("/", "__"))
            try:
                with zipfile.ZipFile(local) as zf:
                    if "MANIFEST.json" not in zf.namelist():
                        raise zipfile.BadZipFile("no MANIFEST.json")
            except zipfile.BadZipFile as exc:
                on_log(f"{name}:{WORK}/{rel}: not a complete result ({exc}); left on the VM")
                continue
            storage.upload_file(cfg, local, rel, content_type="application/zip")
            on_log(f"rescued {name}:{WORK}/{rel} -> gs://{cfg.bucket_name}/{rel}")
            rescued.append(rel)
    return rescued


def delete_vm(cfg: Config, name: str, *, on_log: Log = quiet, on_confirm: Callable[[str], bool] | None = None,
              force: bool = False) -> bool:
    """The operator's "delete now": delete VM `name` (ours only unless force) after `on_confirm` says yes;
    False if it was already gone or the user declined. compute.delete_vm is the primitive under it."""
    if on_confirm is not None and not on_confirm(f"delete VM {name} now? Anything not pushed to the bucket is lost"):
        on_log("nothing deleted")
        return False
    deleted = compute.delete_vm(cfg, name, force=force, on_log=on_log)
    if not deleted:
        on_log(f"VM {name} does not exist (already deleted)")
    return deleted
