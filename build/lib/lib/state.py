"""session_state.json: what this PC believes runs in the cloud, so a crash or a power cut is recoverable.

Every VM create/delete and every job start/finish is written at once, atomically and under a
lock (lib/jsonfile.py), because the writing process can die at any instant. At the start of
every command that touches VMs, `reconcile` cross-references the file with what Compute Engine
says, as the original system's table does:

| session state says | GCP says          | action                                              |
|--------------------|-------------------|-----------------------------------------------------|
| VM registered      | VM running        | warn: it is still billing; how to stop it           |
| VM registered      | VM stopped/term.  | warn: disk still bills; bin/sweep deletes it        |
| VM registered      | VM gone           | drop the entry (Google or the sweeper removed it)   |
| job running        | VM gone           | warn: that analysis was interrupted                 |
| nothing            | ops-hpc VM exists | warn: orphan from another session or PC             |
| VM guarded by a process that died (kill -9, taskkill /F, power cut) | VM exists | delete it: the guard's promise |

Entries hold names, ids, zones and times only: nothing secret.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from lib import jsonfile
from lib.config import Config
from lib.log import Log

STATE_FILE = "session_state.json"
VERSION = 1
# A registration younger than this whose owner still runs may be mid-create: not "gone" yet.
CREATING_GRACE_S = 600.0
HISTORY_KEEP_S = 40 * 86400  # machine types of past VMs, for `status --usage` (30 days)


def _owner() -> dict[str, Any]:
    """This process, identified by pid and start time (pids get reused)."""
    try:
        import psutil

        return {"owner_pid": os.getpid(), "owner_started": psutil.Process().create_time()}
    except Exception:  # pragma: no cover - psutil is a dependency, but state must never fail on it
        return {"owner_pid": os.getpid(), "owner_started": None}


def owner_alive(entry: dict[str, Any]) -> bool:
    """True if the process that registered the entry still runs."""
    pid = entry.get("owner_pid")
    if not pid:
        return False
    try:
        import psutil

        proc = psutil.Process(int(pid))
        started = entry.get("owner_started")
        if started is not None and abs(proc.create_time() - float(started)) > 1.0:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


class SessionState:
    """The state file under cfg.state_path; every method is one locked, atomic read-modify-write."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.path: Path = cfg.state_path / STATE_FILE

    # -- reading ------------------------------------------------------------
    def data(self) -> dict[str, Any]:
        data = jsonfile.read(self.path, None) or {}
        data.setdefault("version", VERSION)
        data.setdefault("vms", {})
        return data

    def history(self) -> dict[str, dict[str, Any]]:
        """Machine type, spot and run of every VM created from this PC in the last 40 days, by name."""
        return dict(self.data().get("history", {}))

    def vms(self) -> dict[str, dict[str, Any]]:
        """Every registered VM of this project, by name."""
        return {name: e for name, e in self.data()["vms"].items() if e.get("project", self.cfg.project) == self.cfg.project}

    # -- writing ------------------------------------------------------------
    def _edit(self):
        return jsonfile.edit(self.path, {"version": VERSION, "vms": {}})

    def register_vm(self, name: str, *, run_id: str, kind: str, zone: str, expected_end: float, max_run_end: float,
                    owner_pid: int | None = None, phase: str = "running", machine_type: str = "",
                 spot: bool = False) -> None:
        """Record a VM before (phase 'creating') and after it is created; `history` keeps its machine type for
        the 30-day usage report after it is gone (Monitoring's uptime series do not say it)."""
        owner = _owner() if owner_pid is None or owner_pid == os.getpid() else {"owner_pid": owner_pid, "owner_started": None}
        with self._edit() as data:
            data.setdefault("vms", {})
            old = data["vms"].get(name, {})
            data["vms"][name] = {
                "project": self.cfg.project,
                "zone": zone,
                "run_id": run_id,
                "kind": kind,
                "expected_end": int(expected_end),
                "max_run_end": int(max_run_end),
                "registered": old.get("registered", int(time.time())),
                "phase": phase,
                "jobs": old.get("jobs", {}),
                **owner,
            }
            if "guarded" in old:
                data["vms"][name]["guarded"] = old["guarded"]
            if machine_type:
                history = data.setdefault("history", {})
                history[name] = {"machine_type": machine_type, "spot": bool(spot), "kind": kind, "run_id": run_id,
                                 "created": history.get(name, {}).get("created", int(time.time()))}
                cutoff = time.time() - HISTORY_KEEP_S
                for old_name in [n for n, h in history.items() if h.get("created", 0) < cutoff]:
                    del history[old_name]

    def set_guarded(self, name: str, guarded: bool) -> None:
        """A VMGuard in this process now answers for the VM: if this process dies uncleanly, reconcile deletes it."""
        with self._edit() as data:
            vms = data.setdefault("vms", {})
            entry = vms.get(name)
            if entry is None and guarded:
                # A guard entered before the VM is created (it covers the creation itself): hold its place,
                # register_vm fills in the rest and keeps the mark.
                entry = vms[name] = {"project": self.cfg.project, "zone": self.cfg.zone, "run_id": "", "kind": "",
                                     "expected_end": 0, "max_run_end": 0, "registered": int(time.time()),
                                     "phase": "creating", "jobs": {}}
            if entry is not None:
                entry["guarded"] = bool(guarded)
                if guarded:
                    entry.update(_owner())

    def set_expected_end(self, name: str, expected_end: float) -> None:
        with self._edit() as data:
            entry = data.setdefault("vms", {}).get(name)
            if entry is not None:
                entry["expected_end"] = int(expected_end)

    def unregister_vm(self, name: str) -> None:
        with self._edit() as data:
            data.setdefault("vms", {}).pop(name, None)

    def job_started(self, vm: str, job: str) -> None:
        with self._edit() as data:
            entry = data.setdefault("vms", {}).get(vm)
            if entry is None:  # a job on a VM we did not register: record it anyway, it still needs recovery
                entry = data["vms"][vm] = {"project": self.cfg.project, "zone": self.cfg.zone, "jobs": {}, "phase": "running"}
            entry.setdefault("jobs", {})[job] = {"state": "running", "started": int(time.time())}

    def job_finished(self, vm: str, job: str, state: str) -> None:
        with self._edit() as data:
            entry = data.setdefault("vms", {}).get(vm)
            if entry is None:
                return
            record = entry.setdefault("jobs", {}).setdefault(job, {})
            record.update(state=state, finished=int(time.time()))

    def running_jobs(self, vm: str) -> list[str]:
        entry = self.vms().get(vm) or {}
        return sorted(j for j, r in entry.get("jobs", {}).items() if r.get("state") == "running")


def reconcile(cfg: Config, *, on_log: Log = print, on_warn: Log = print, vms: list[dict[str, Any]] | None = None,
              now: float | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Cross-reference session state with Compute Engine; returns the table and what was done.

    `vms` (what list_vms returned) can be passed by a caller that already listed them; dry_run changes nothing.
    Result: {"rows": [{"vm", "state_says", "gcp_says", "action"}], "cleaned", "deleted", "orphans", "interrupted",
    "running", "stopped", "downloads_reset"}.
    """
    from lib import compute

    now = time.time() if now is None else now
    state = SessionState(cfg)
    registered = state.vms()
    live = {vm["name"]: vm for vm in (compute.list_vms(cfg) if vms is None else vms) if vm.get("ours")}
    # Registered VMs in another zone than the configured one are looked up where they were created.
    for name, entry in registered.items():
        if name not in live and entry.get("zone") and entry["zone"] != cfg.zone:
            vm = compute.get_vm(cfg.replace(zone=entry["zone"]), name)
            if vm is not None:
                live[name] = vm

    result: dict[str, Any] = {"rows": [], "cleaned": [], "deleted": [], "orphans": [], "interrupted": [], "running": [],
                              "stopped": [], "downloads_reset": []}

    def row(vm: str, state_says: str, gcp_says: str, action: str) -> None:
        result["rows"].append({"vm": vm, "state_says": state_says, "gcp_says": gcp_says, "action": action})

    for name, entry in sorted(registered.items()):
        jobs = sorted(j for j, r in entry.get("jobs", {}).items() if r.get("state") == "running")
        said = "job running" if jobs else "VM registered"
        vm = live.get(name)
        if vm is None:
            young = now - float(entry.get("registered", 0)) < CREATING_GRACE_S
            if entry.get("phase") == "creating" and young and owner_alive(entry):
                row(name, said, "not yet created", "none: its creator is still running")
                continue
            if jobs:
                on_warn(f"warning: VM {name} is gone while job(s) {', '.join(jobs)} were running: that analysis was "
                        "interrupted; rerun it (results already uploaded are kept in the bucket)")
                result["interrupted"].append({"vm": name, "jobs": jobs})
                row(name, said, "VM gone", "warned: interrupted analysis; entry cleaned")
            else:
                row(name, said, "VM gone", "entry cleaned")
            if dry_run:
                result["rows"][-1]["action"] = "would be " + result["rows"][-1]["action"]
                continue
            state.unregister_vm(name)
            result["cleaned"].append(name)
            on_log(f"session state: {name} no longer exists; entry removed")
        elif entry.get("guarded") and not owner_alive(entry):
            on_warn(f"warning: VM {name} ({vm['status']}) was guarded by process {entry.get('owner_pid')}, which died "
                    "without cleaning up (killed, or the PC lost power): deleting it now")
            if jobs:
                on_warn(f"warning: job(s) {', '.join(jobs)} on {name} were interrupted; rerun them")
                result["interrupted"].append({"vm": name, "jobs": jobs})
            try:
                if dry_run:
                    row(name, said, f"VM {vm['status']}", "would delete: its guarding process died")
                    continue
                compute.delete_vm(cfg.replace(zone=entry.get("zone") or cfg.zone), name, on_log=on_log, state=state)
                result["deleted"].append(name)
                row(name, said, f"VM {vm['status']}", "deleted: its guarding process died")
            except Exception as exc:
                on_warn(f"warning: could not delete {name}: {exc}; `bin/sweep` will retry")
                row(name, said, f"VM {vm['status']}", f"delete failed: {exc}")
        elif vm["status"] in ("STOPPED", "TERMINATED", "SUSPENDED"):
            if jobs:
                on_warn(f"warning: VM {name} is {vm['status']} while job(s) {', '.join(jobs)} were running: that "
                        "analysis was interrupted; rerun it")
                result["interrupted"].append({"vm": name, "jobs": jobs})
            on_warn(f"warning: VM {name} is {vm['status']}: its disk still bills; `bin/sweep` deletes it "
                    f"(or `bin/launch --delete {name}`)")
            result["stopped"].append(name)
            row(name, said, f"VM {vm['status']}", "warned: sweeper deletes it")
        else:
            left = int(entry.get("expected_end", 0) - now)
            when = f"expected end in {left // 60} min" if left >= 0 else f"{-left // 60} min past its expected end"
            on_warn(f"warning: VM {name} ({entry.get('kind', '?')}, run {entry.get('run_id', '?')}) is {vm['status']}, "
                    f"{when}; it bills until deleted: `bin/launch --delete {name}` stops it now")
            result["running"].append(name)
            row(name, said, f"VM {vm['status']}", "warned: still billing")

    for name, vm in sorted(live.items()):
        if name in registered:
            continue
        on_warn(f"warning: ops-hpc VM {name} ({vm['status']}, run {vm.get('run_id') or '?'}) is not in this PC's "
                "session state: an orphan from another session or PC; `bin/sweep` deletes it once overdue or stopped")
        result["orphans"].append(name)
        row(name, "nothing", f"VM {vm['status']}", "warned: orphan")

    if not dry_run:
        result["downloads_reset"] = _recover_downloads(cfg, on_log)
    return result


def _recover_downloads(cfg: Config, on_log: Log) -> list[str]:
    """Interrupted downloads go back for retry on the next pull (lib/downloads.py, issue 3), if that module is here."""
    try:
        from lib import downloads
    except ImportError:
        return []
    folder = Path(cfg.results_dir)
    try:
        if hasattr(downloads, "recover"):
            reset = list(downloads.recover(folder) or [])
        elif hasattr(downloads, "Tracker"):
            state_file = getattr(downloads, "STATE_FILE", "download_state.json")
            if not (folder / state_file).exists():  # no pull ever ran here: nothing to reset, create nothing
                return []
            reset = list(downloads.Tracker(folder).recover() or [])
        else:
            return []
    except Exception as exc:  # a broken download state must not block VM safety
        on_log(f"could not check interrupted downloads: {exc}")
        return []
    if reset:
        on_log(f"reset {len(reset)} interrupted download(s) for retry: {', '.join(reset)}")
    return reset
