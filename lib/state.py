"""session_state.json: what this PC believes runs in the cloud, so a crash or a power cut is recoverable.

Every VM create/delete and every job start/finish is written at once, atomically and under a
lock (lib/jsonfile.py), because the writing process can die at any instant. An insert is recorded
(name and requestId) BEFORE it is sent, so a VM whose creation was interrupted is never forgotten.
lib/reconcile.py cross-references this file with what Compute Engine says.

Entries hold names, ids, zones, times and the owner process (pid, start time, host): nothing secret.
"""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from lib import jsonfile
from lib.config import Config
from lib.errors import OpsError
from lib.procs import ProcessRef

STATE_FILE = "session_state.json"
VERSION = 1
HISTORY_KEEP_S = 40 * 86400  # machine types of past VMs, for `status --usage` (30 days)


def entry_owner(entry: dict[str, Any]) -> ProcessRef | None:
    """The process that answers for an entry (older files stored owner_pid/owner_started: read those too)."""
    ref = ProcessRef.from_dict(entry.get("owner"))
    if ref is None and entry.get("owner_pid"):
        started = entry.get("owner_started")
        ref = ProcessRef(int(entry["owner_pid"]), None if started is None else float(started), "", 0.0)
    return ref


def owner_alive(entry: dict[str, Any]) -> bool:
    """True if the process that registered or guards the entry still runs (same pid AND start time).

    A process on another host (a state folder shared between PCs) cannot be checked: presumed alive, so
    this PC never deletes a VM another PC's live guard answers for (the sweeper still does once overdue).
    """
    ref = entry_owner(entry)
    return ref is not None and ref.alive(foreign_stale_after=math.inf)


class SessionState:
    """The state file under cfg.state_path; every method is one locked, atomic read-modify-write."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.path: Path = cfg.state_path / STATE_FILE

    # -- reading ------------------------------------------------------------
    def data(self) -> dict[str, Any]:
        data = jsonfile.read(self.path, None) or {}
        if not isinstance(data, dict) or not isinstance(data.get("vms", {}), dict):
            raise OpsError(f"{self.path} is not a session state file: move it aside and rerun")
        data.setdefault("version", VERSION)
        data.setdefault("vms", {})
        return data

    def readable(self) -> bool:
        """False when the file exists but cannot be read (corrupt): the safety nets then work from labels alone."""
        try:
            self.data()
            return True
        except OpsError:
            return False

    def quarantine(self, now: float | None = None) -> Path | None:
        """Move an unreadable file aside as session_state.json.corrupt-YYYYMMDD-HHMMSS (never deleted); its path."""
        if self.readable() or not self.path.exists():
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        self.path.replace(target)
        return target

    def history(self) -> dict[str, dict[str, Any]]:
        """Machine type, spot and run of every VM created from this PC in the last 40 days, by name."""
        return dict(self.data().get("history", {}))

    def vms(self) -> dict[str, dict[str, Any]]:
        """Every registered VM of this project, by name."""
        return {name: e for name, e in self.data()["vms"].items() if e.get("project", self.cfg.project) == self.cfg.project}

    # -- writing ------------------------------------------------------------
    def _edit(self) -> AbstractContextManager[Any]:
        return jsonfile.edit(self.path, {"version": VERSION, "vms": {}})

    def register_vm(self, name: str, *, run_id: str, kind: str, zone: str, expected_end: float, max_run_end: float,
                    phase: str = "running", machine_type: str = "", spot: bool = False,
                    request_id: str = "") -> None:
        """Record a VM before (phase 'creating', with the insert's requestId) and after it is created; `history`
        keeps its machine type for the 30-day usage report after it is gone (Monitoring does not say it)."""
        owner = ProcessRef.current().to_dict()
        with self._edit() as data:
            data.setdefault("vms", {})
            old = data["vms"].get(name, {})
            entry = {
                "project": self.cfg.project,
                "zone": zone,
                "run_id": run_id,
                "kind": kind,
                "expected_end": int(expected_end),
                "max_run_end": int(max_run_end),
                "registered": old.get("registered", int(time.time())),
                "phase": phase,
                "jobs": old.get("jobs", {}),
                "owner": owner,
            }
            if phase == "creating" and request_id:
                entry["insert"] = {"request_id": request_id, "started": time.time()}
            if "guarded" in old:
                entry["guarded"] = old["guarded"]
            data["vms"][name] = entry
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
                    entry["owner"] = ProcessRef.current().to_dict()

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
