"""The sweeper: run by cron / Task Scheduler every 5 minutes, it deletes ops-hpc VMs nobody will delete.

Rules, in order, for every VM of every zone (one instances.aggregatedList: a zone failover puts VMs anywhere):
1. no `ops-hpc=true` label            -> never touched; reported as an orphan it will not touch
2. STOPPED / TERMINATED / SUSPENDED   -> deleted: its disk still bills and nothing will restart it
3. past `ops-hpc-end` + grace minutes -> deleted: the run is overdue (the later of the label and session state wins,
                                         so a deadline extension recorded in either is respected)
4. otherwise (live and on time)       -> left alone, whoever runs it
Session state is reconciled first (lib/reconcile.py: it also deletes VMs whose guarding process died
uncleanly, and labelled VMs that never reported a first status), and a lock in the state dir makes
concurrent sweeps safe: the second one reports the first and does nothing. A corrupt session state file
is reported and the labels decide: the sweeper never needs it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from filelock import FileLock, Timeout

from lib import clients, compute, paths
from lib.compute import Vm
from lib.config import Config
from lib.errors import OpsError, UsageError
from lib.log import Log, quiet
from lib.reconcile import ReconcileResult, reconcile
from lib.state import SessionState

LOCK_FILE = "sweep.lock"


def decide(vm: Vm, *, now: float, grace_s: float, state_end: float | None = None) -> tuple[str, str]:
    """(action, reason) for one VM: action is 'orphan', 'delete' or 'keep'. Pure: the rules above."""
    if not vm.ours:
        return "orphan", "no ops-hpc label: never touched by ops-hpc"
    if vm.status in compute.STOPPED_STATES:
        return "delete", f"{vm.status}: its disk still bills"
    ends = [e for e in (vm.expected_end, state_end) if e]
    if ends and now > max(ends) + grace_s:
        late = int((now - max(ends)) // 60)
        return "delete", f"overdue: {late} min past its expected end (grace {int(grace_s // 60)} min)"
    if not ends:
        return "keep", "no expected end: Google deletes it at its max run duration"
    return "keep", f"live and on time ({int((max(ends) - now) // 60)} min to expected end)"


@dataclass(frozen=True)
class SweepItem:
    name: str
    zone: str
    status: str
    reason: str
    error: str = ""
    already_gone: bool = False


@dataclass
class SweepResult:
    deleted: list[SweepItem] = field(default_factory=list)
    would_delete: list[SweepItem] = field(default_factory=list)
    kept: list[SweepItem] = field(default_factory=list)
    orphans: list[SweepItem] = field(default_factory=list)
    failed: list[SweepItem] = field(default_factory=list)
    reconcile: ReconcileResult | None = None
    pull: dict[str, Any] | None = None
    skipped: bool = False
    dry_run: bool = False
    tidied: list[str] = field(default_factory=list)  # runs whose _uploads/_status/_logs were removed

    @property
    def deleted_total(self) -> int:
        """VMs this sweep deleted, its reconcile's included (what the cron log's summary line counts)."""
        return len(self.deleted) + (len(self.reconcile.deleted) if self.reconcile else 0)

    def summary(self) -> str:
        return (f"sweep: {self.deleted_total} deleted, {len(self.would_delete)} would delete, {len(self.kept)} kept, "
                f"{len(self.orphans)} unlabeled left alone, {len(self.failed)} failed"
                + (f", {len(self.tidied)} finished run(s) tidied" if self.tidied else ""))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_grace(grace_min: float) -> float:
    """A grace below zero would delete runs before their expected end: refused."""
    if grace_min < 0:
        raise UsageError(f"grace {grace_min:g} min: expected 0 or more minutes past a VM's expected end")
    return float(grace_min)


def sweep(cfg: Config, *, grace_min: float | None = None, dry_run: bool = False, pull: bool = False,
          now: float | None = None, on_log: Log = quiet, on_warn: Log = quiet,
          first_status_s: float | None = None) -> SweepResult:
    """One sweep. Needs no session state: a corrupt file is reported and the VMs' labels decide."""
    grace_s = 60.0 * check_grace(cfg.sweep_grace_min if grace_min is None else grace_min)
    cfg = clients.resolve(cfg)
    result = SweepResult(dry_run=dry_run)
    cfg.state_path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(cfg.state_path / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        on_log("another sweep is running (lock held): nothing to do")
        result.skipped = True
        return result
    try:
        vms = compute.list_vms_in_zones(cfg, ours_only=False)
        result.reconcile = reconcile(cfg, on_log=on_log, on_warn=on_warn, vms=vms, now=now, dry_run=dry_run,
                                     first_status_s=first_status_s)
        now = time.time() if now is None else now
        handled = set(result.reconcile.deleted)
        try:
            entries = SessionState(cfg).vms()
        except OpsError:  # already reported by reconcile: the labels decide
            entries = {}
        for vm in vms:
            if vm.name in handled:
                continue
            state_end = (entries.get(vm.name) or {}).get("expected_end")
            action, reason = decide(vm, now=now, grace_s=grace_s, state_end=state_end)
            item = SweepItem(vm.name, vm.zone, vm.status, reason)
            if action == "orphan":
                result.orphans.append(item)
                on_warn(f"orphan (not ops-hpc's, left alone): {vm.name} {vm.status} in {vm.zone}")
            elif action == "keep":
                result.kept.append(item)
                on_log(f"keep {vm.name}: {reason}")
            elif dry_run:
                result.would_delete.append(item)
                on_log(f"would delete {vm.name}: {reason}")
            else:
                try:
                    gone = compute.delete_vm(cfg.replace(zone=vm.zone), vm.name, on_log=quiet)
                    result.deleted.append(replace(item, already_gone=not gone))
                    on_log(f"deleted {vm.name}: {reason}")
                except Exception as exc:  # one failure must not stop the sweep of the others
                    result.failed.append(replace(item, error=str(exc)))
                    on_warn(f"could not delete {vm.name}: {exc}")
        if pull:
            result.pull = run_pull(cfg, dry_run=dry_run, on_log=on_log)
        if not dry_run:
            from lib import stage  # its storage client is only needed here: keeps bin/sweep --help fast

            try:  # the bookkeeping of runs that are over (results pulled, VMs gone): the bucket empties
                result.tidied = stage.tidy_finished_runs(cfg, now=now, on_log=on_log)
            except Exception as exc:  # tidying is housekeeping: it never fails the sweep
                on_warn(f"could not tidy finished runs: {exc}")
    finally:
        lock.release()
    return result


def run_pull(cfg: Config, *, dry_run: bool = False, on_log: Log = quiet) -> dict[str, Any]:
    """The unattended pull (bin/pull --yes), as a subprocess so a failing pull cannot break the sweep."""
    script = paths.BIN / "pull"
    if not script.exists():
        on_log("pull: bin/pull is not installed; skipped")
        return {"ran": False, "reason": "bin/pull missing"}
    cmd = [sys.executable, str(script), "--yes", "--dir", cfg.results_dir]
    if dry_run:
        on_log(f"would run: {shlex.join(cmd)}")
        return {"ran": False, "reason": "dry run", "command": cmd}
    env = {**os.environ, "OPS_HPC_STATE_DIR": str(cfg.state_path), "OPS_HPC_BACKEND": cfg.backend,
           "OPS_HPC_PROJECT": cfg.project, "OPS_HPC_BUCKET": cfg.bucket_name}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).strip().splitlines()[-20:]:
        on_log(f"pull: {line}")
    return {"ran": True, "code": proc.returncode, "command": cmd}


def cleanup(cfg: Config, *, confirm: Callable[[str], bool], on_log: Log = quiet) -> dict[str, Any]:
    """Delete every ops-hpc VM (labelled ones only) and every object in the bucket, after `confirm` says yes.
    Needs no session state: the labels say what is ours."""
    from lib import storage  # only cleanup needs it: keeps bin/sweep --help fast

    cfg = clients.resolve(cfg)
    vms = compute.list_vms_in_zones(cfg)
    try:
        objects = len(storage.list_blobs(cfg))
    except Exception as exc:  # a missing bucket: nothing to wipe there
        on_log(f"bucket gs://{cfg.bucket_name}: {exc}")
        objects = 0
    question = (f"delete {len(vms)} ops-hpc VM(s) ({', '.join(v.name for v in vms) or 'none'}) and "
                f"{objects} object(s) in gs://{cfg.bucket_name}, results not yet pulled included?")
    if not confirm(question):
        on_log("cleanup cancelled: nothing deleted")
        return {"cancelled": True, "vms_deleted": [], "objects_deleted": 0}
    deleted, failed = [], []
    for vm in vms:
        try:
            if compute.delete_vm(cfg.replace(zone=vm.zone), vm.name, on_log=on_log):
                deleted.append(vm.name)
        except Exception as exc:
            failed.append({"name": vm.name, "error": str(exc)})
            on_log(f"could not delete {vm.name}: {exc}")
    removed = storage.delete_prefix(cfg, "") if objects else 0
    on_log(f"cleanup: {len(deleted)} VM(s) deleted, {removed} object(s) removed from gs://{cfg.bucket_name}")
    return {"cancelled": False, "vms_deleted": deleted, "objects_deleted": removed, "failed": failed}
