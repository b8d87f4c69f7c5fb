"""Cross-reference this PC's session state with what Compute Engine says, and act on the difference.

Three steps, like the sweeper: observe (list the VMs across zones, read the state file, check owners and
first statuses) -> `decide_row` per VM, pure and table-tested -> apply (delete / drop the entry / warn).

| session state says                 | GCP says               | action                                         |
|------------------------------------|------------------------|------------------------------------------------|
| VM registered                      | VM running             | warn: it is still billing; how to delete it    |
| VM registered                      | VM stopped/term.       | warn: disk still bills; bin/sweep deletes it   |
| VM registered                      | VM gone                | drop the entry (Google or the sweeper did it)  |
| insert sent < INSERT_WINDOW_S ago  | VM not there (yet)     | none: the insert may still land                |
| job running                        | VM gone                | warn: that analysis was interrupted            |
| nothing                            | ops-hpc VM exists      | warn: orphan from another session or PC        |
| guarded by a process that died     | VM exists              | delete it: the guard's promise                 |
| not guarded by a live process      | VM labelled to report a status, none within FIRST_STATUS_S of launch | delete it |

The last row catches a VM whose launcher died mid-insert, on this PC or another: its labels say who
launched it and when, and a run-staged VM that never published `_status/RUN/VM.txt` is doing nothing.
A corrupt state file does not stop any of this: the rows then come from labels alone.

A run-staged VM (label ops-hpc-reports=status) also says where it is in its own status file; a VM past its
purpose is deleted whoever launched it (the run-staged follower applies the same rules to its own VMs):

| its status file says (state=)    | after                         | action                                          |
|----------------------------------|-------------------------------|-------------------------------------------------|
| booting / running                | -                             | none: working (a silent one: the row above)     |
| preempted                        | -                             | none: GCE stops it; `--rerun RUN` re-runs the rest |
| done / error                     | the VM deletes itself at once | none, then delete once still there DONE_GRACE_S |
| self_delete_refused              | at once                       | delete (it may not delete itself; it stays up)  |
| upload_failed, stranded=MODELS   | at once                       | rescue the zips over ssh into the bucket, then delete; rescue failed: warn, the VM keeps retrying until its max run end |
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lib import compute, downloads, retry, storage
from lib.compute import Vm
from lib.config import Config
from lib.errors import OpsError, UsageError
from lib.log import Log, quiet
from lib.state import SessionState, owner_alive

# An insert sent this long ago has landed or never will (Google's operations finish well within it).
INSERT_WINDOW_S = 600.0
# A VM labelled ops-hpc-reports=status that has said nothing this long after its launch is doing nothing.
# Longer than the launch's own boot window (600 s on GCP, 90 s locally), so a live launch always decides first.
FIRST_STATUS_S = 660.0
FIRST_STATUS_LOCAL_S = 120.0

# A VM that said done/error deletes itself within a second or two; still there this long after, it could not.
DONE_GRACE_S = 10.0

NONE, DROP, DELETE, WARN, RESCUE = "none", "drop", "delete", "warn", "rescue"


@dataclass(frozen=True)
class Report:
    """What a run-staged VM's own status file says: its state, how old that is, what waits on its disk."""

    state: str
    age_s: float
    stranded: tuple[str, ...] = ()


def decide_report(report: Report | None) -> tuple[str, str] | None:
    """(do, action) for a VM past its purpose by its own status file (the second table), or None. Pure."""
    from lib.runstatus import SELF_DELETE_REFUSED, VM_DONE

    if report is None or report.state not in VM_DONE:
        return None  # still working, preempted (GCE stops it), or nothing said
    if report.stranded:
        return RESCUE, f"rescued: stranded result(s) {', '.join(report.stranded)}, then deleted"
    if report.state == SELF_DELETE_REFUSED:
        return DELETE, "deleted: its self-delete was refused"
    if report.age_s >= DONE_GRACE_S:
        return DELETE, f"deleted: reported {report.state} {report.age_s:.0f} s ago and is still there"
    return None


@dataclass(frozen=True)
class RowAction:
    """What to do about one VM, and the row of the table that says so."""

    state_says: str
    gcp_says: str
    do: str  # none | drop (the entry) | delete (the VM) | warn
    action: str  # the table's action column
    kind: str  # running | stopped | orphan | cleaned | deleted | waiting: the result list it goes to
    warning: str = ""
    interrupted: tuple[str, ...] = ()
    rescue: tuple[str, ...] = ()  # stranded results to copy off the VM before deleting it


@dataclass(frozen=True)
class Row:
    vm: str
    state_says: str
    gcp_says: str
    action: str


@dataclass(frozen=True)
class Interrupted:
    vm: str
    jobs: tuple[str, ...]


@dataclass
class ReconcileResult:
    rows: list[Row] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    interrupted: list[Interrupted] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    downloads_reset: list[str] = field(default_factory=list)
    state_problem: str = ""  # why the state file could not be used ('' when it was)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.vm == name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- decide (pure)


def _running_jobs(entry: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(j for j, r in entry.get("jobs", {}).items() if r.get("state") == "running"))


def insert_may_land(entry: Mapping[str, Any], now: float, *, owner_alive: bool) -> bool:
    """An entry still being created: its insert was sent recently (whoever sent it), or its live creator is at it."""
    if entry.get("phase") != "creating":
        return False
    insert = entry.get("insert") or {}
    started = float(insert.get("started") or entry.get("registered", 0) or 0)
    young = now - started < INSERT_WINDOW_S
    return young and (bool(insert) or owner_alive)


def awaits_first_status(entry: Mapping[str, Any] | None, vm: Vm, now: float, *, owner_alive: bool,
                        first_status_s: float) -> bool:
    """True for a VM that should have reported by now and that no live process answers for: check its status."""
    if not (vm.ours and vm.reports_status) or vm.status in compute.STOPPED_STATES:
        return False
    if entry is not None and entry.get("guarded") and owner_alive:
        return False  # its launcher is alive and decides (its own boot window)
    launched = vm.launched or vm.created_epoch
    return launched is not None and now - launched > first_status_s


def decide_row(entry: Mapping[str, Any] | None, vm: Vm | None, now: float, *, owner_alive: bool = False,
               reported: bool | None = None, first_status_s: float = FIRST_STATUS_S,
               report: Report | None = None) -> RowAction:
    """One row of the table. `owner_alive`: the entry's owner process runs; `reported`: the VM published a
    first status (None: not checked or unknown, which never deletes); `report`: its status file, if read."""
    jobs = _running_jobs(entry) if entry is not None else ()
    said = "nothing" if entry is None else ("job running" if jobs else "VM registered")
    if vm is None:
        assert entry is not None, "a row needs a VM or an entry"
        if insert_may_land(entry, now, owner_alive=owner_alive):
            why = "its creator is still running" if owner_alive else "its insert may still land"
            return RowAction(said, "not yet created", NONE, f"none: {why}", "waiting")
        if jobs:
            return RowAction(said, "VM gone", DROP, "warned: interrupted analysis; entry cleaned", "cleaned",
                             warning="is gone while job(s) {jobs} were running: that analysis was interrupted; rerun "
                                     "it (results already uploaded are kept in the bucket)", interrupted=jobs)
        return RowAction(said, "VM gone", DROP, "entry cleaned", "cleaned")

    gcp = f"VM {vm.status}"
    if entry is not None and entry.get("guarded") and not owner_alive:
        return RowAction(said, gcp, DELETE, "deleted: its guarding process died", "deleted",
                         warning="({status}) was guarded by a process that died without cleaning up (killed, or "
                                 "the PC lost power): deleting it now", interrupted=jobs)
    past = decide_report(report) if vm.status not in compute.STOPPED_STATES else None
    if past is not None and report is not None:
        do, action = past
        what = f"stranded result(s) {', '.join(report.stranded)} on its disk" if do == RESCUE else \
            f"{report.state} {report.age_s:.0f} s ago"
        how = "copying them to the bucket over ssh, then deleting it" if do == RESCUE else "deleting it"
        return RowAction(said, gcp, do, action, "deleted", warning=f"({{status}}, run {{run}}) reports {what}: {how}",
                         rescue=report.stranded if do == RESCUE else ())
    silent = reported is False and awaits_first_status(entry, vm, now, owner_alive=owner_alive,
                                                       first_status_s=first_status_s)
    if silent:
        return RowAction(said, gcp, DELETE, "deleted: never reported a first status", "deleted",
                         warning=f"({{status}}, launched from {vm.owner_host or '?'}) never reported a first status "
                                 f"within {first_status_s / 60:.0f} min and no live process guards it: deleting it",
                         interrupted=jobs)
    if entry is None:
        return RowAction(said, gcp, WARN, "warned: orphan", "orphan",
                         warning="({status}, run {run}) is not in this PC's session state: an orphan from another "
                                 "session or PC; `bin/sweep` deletes it once overdue or stopped")
    if vm.status in compute.STOPPED_STATES:
        return RowAction(said, gcp, WARN, "warned: sweeper deletes it", "stopped",
                         warning="is {status}: its disk still bills; `bin/sweep` deletes it (or `bin/launch --delete "
                                 "{name}`)", interrupted=jobs)
    return RowAction(said, gcp, WARN, "warned: still billing", "running",
                     warning="({kind}, run {run}) is {status}, {when}; it bills until deleted: `bin/launch --delete "
                             "{name}` deletes it now")


# ----------------------------------------------------------------------------- observe + apply


def _first_status_s(cfg: Config) -> float:
    return FIRST_STATUS_LOCAL_S if cfg.local else FIRST_STATUS_S


def has_first_status(cfg: Config, vm: Vm) -> bool | None:
    """Did the VM publish `_status/RUN/VM.txt` (the status protocol's first write) in the bucket it was given?
    None if the bucket cannot say."""
    try:
        where = cfg.replace(bucket=vm.bucket) if vm.bucket else cfg
        if storage.get_blob(where, f"_status/{vm.run_id}/{vm.name}.txt") is not None:
            return True
        return False if retry.google(storage.bucket(where).exists) else None  # no bucket: it cannot say
    except Exception:  # an unreachable bucket must never be read as "it said nothing"
        return None


def read_report(cfg: Config, vm: Vm, now: float) -> Report | None:
    """The VM's `_status/RUN/VM.txt` as a Report (its age from the bucket's clock), or None if absent/unreadable."""
    from lib.runstatus import parse_status, stranded

    try:
        where = cfg.replace(bucket=vm.bucket) if vm.bucket else cfg
        blob = storage.get_blob(where, f"_status/{vm.run_id}/{vm.name}.txt")
        if blob is None:
            return None
        status = parse_status(retry.google(blob.download_as_bytes).decode("utf-8", "replace"))
    except Exception:  # an unreadable status decides nothing
        return None
    updated = blob.updated.timestamp() if blob.updated else now
    return Report(status.get("state", ""), max(0.0, now - updated), tuple(stranded(status)))


def _registered(state: SessionState, on_warn: Log) -> tuple[dict[str, dict[str, Any]], str]:
    """The entries, or none and why: a corrupt file must not stop the label-based rows."""
    try:
        return state.vms(), ""
    except OpsError as exc:
        on_warn(f"warning: {exc}; working from the VMs' labels alone")
        return {}, str(exc)


def reconcile(cfg: Config, *, on_log: Log = quiet, on_warn: Log = quiet, vms: list[Vm] | None = None,
              now: float | None = None, dry_run: bool = False, first_status_s: float | None = None,
              recover_downloads: bool = True) -> ReconcileResult:
    """Observe, decide each row, apply. `vms` (what list_vms returned) can be passed by a caller that already
    listed them; dry_run changes nothing."""
    now = time.time() if now is None else now
    window = _first_status_s(cfg) if first_status_s is None else float(first_status_s)
    if not window > 0:  # 0 or less would delete every reporting VM the moment it is launched
        raise UsageError(f"first status window {window:g} s: expected a number of seconds above 0")
    state = SessionState(cfg)
    result = ReconcileResult()
    registered, result.state_problem = _registered(state, on_warn)
    live = {vm.name: vm for vm in (compute.list_vms_in_zones(cfg) if vms is None else vms) if vm.ours}
    for name, known in registered.items():  # registered in another zone: look where it was created
        if name not in live and known.get("zone") and known["zone"] != cfg.zone:
            found = compute.get_vm(cfg.replace(zone=known["zone"]), name)
            if found is not None:
                live[name] = found

    for name in sorted(set(registered) | set(live)):
        entry: dict[str, Any] | None = registered.get(name)
        vm = live.get(name)
        alive = entry is not None and owner_alive(entry)
        reported, report = None, None
        if vm is not None and vm.reports_status and vm.status not in compute.STOPPED_STATES:
            report = read_report(cfg, vm, now)
            reported = True if report is not None else None
        if reported is None and vm is not None and awaits_first_status(entry, vm, now, owner_alive=alive,
                                                                       first_status_s=window):
            reported = has_first_status(cfg, vm)
        row = decide_row(entry, vm, now, owner_alive=alive, reported=reported, first_status_s=window, report=report)
        _apply(cfg, state, name, entry, vm, row, result, now=now, dry_run=dry_run, on_log=on_log, on_warn=on_warn)

    if recover_downloads and not dry_run:
        result.downloads_reset = _recover_downloads(cfg, on_log)
    return result


def _apply(cfg: Config, state: SessionState, name: str, entry: Mapping[str, Any] | None, vm: Vm | None,
           row: RowAction, result: ReconcileResult, *, now: float, dry_run: bool, on_log: Log, on_warn: Log) -> None:
    entry = entry or {}
    action = row.action
    if row.warning:
        left = int(entry.get("expected_end", 0) - now)
        when = f"expected end in {left // 60} min" if left >= 0 else f"{-left // 60} min past its expected end"
        text = row.warning.format(jobs=", ".join(row.interrupted), status=vm.status if vm else "gone",
                                  run=(vm.run_id if vm else "") or entry.get("run_id") or "?", name=name,
                                  kind=entry.get("kind") or "?", when=when)
        on_warn(f"warning: {'ops-hpc ' if row.kind == 'orphan' else ''}VM {name} {text}")
    if row.interrupted:
        if row.do == DELETE:
            on_warn(f"warning: job(s) {', '.join(row.interrupted)} on {name} were interrupted; rerun them")
        result.interrupted.append(Interrupted(name, row.interrupted))
    if row.do == DROP:
        if dry_run:
            action = "would be " + action
        else:
            state.unregister_vm(name)
            result.cleaned.append(name)
            on_log(f"session state: {name} no longer exists; entry removed")
    elif row.do == RESCUE and not dry_run:
        assert vm is not None
        action = _rescue_and_delete(cfg, state, vm, row.rescue, result, on_log=on_log, on_warn=on_warn) or action
    elif row.do in (DELETE, RESCUE):
        assert vm is not None
        if dry_run:
            action = "would delete: " + action.split(": ", 1)[1]
        else:
            try:
                compute.delete_vm(cfg.replace(zone=vm.zone or cfg.zone), name, on_log=on_log, state=state)
                result.deleted.append(name)
            except Exception as exc:
                on_warn(f"warning: could not delete {name}: {exc}; `bin/sweep` will retry")
                action = f"delete failed: {exc}"
    elif row.kind == "running":
        result.running.append(name)
    elif row.kind == "stopped":
        result.stopped.append(name)
    elif row.kind == "orphan":
        result.orphans.append(name)
    result.rows.append(Row(name, row.state_says, row.gcp_says, action))


def _rescue_and_delete(cfg: Config, state: SessionState, vm: Vm, models: tuple[str, ...], result: ReconcileResult,
                       *, on_log: Log, on_warn: Log) -> str:
    """Copy the VM's stranded zips into the bucket (lib/controls.py), then delete it; '' when done, else why not."""
    from lib import controls

    where = cfg.replace(zone=vm.zone or cfg.zone, bucket=vm.bucket or cfg.bucket)
    try:
        rescued = set(controls.rescue_stranded(where, vm.name, on_log=on_log))
        # a zip not rescued may have gone up meanwhile through the VM's own retry
        left = [m for m in models if f"{vm.run_id}/{m}.zip" not in rescued and
                storage.get_blob(where, f"{vm.run_id}/{m}.zip") is None]
    except Exception as exc:  # ssh closed, VM busy: the VM keeps retrying its uploads itself
        on_warn(f"warning: could not rescue the stranded results of {vm.name} ({exc}); it keeps retrying the "
                "uploads until its max run end; `make emergency NAME=" + vm.name + "` tries again")
        return f"rescue failed: {exc}"
    if left:
        on_warn(f"warning: {vm.name}: stranded result(s) {', '.join(left)} not rescued (incomplete zips?): kept; "
                f"`make emergency NAME={vm.name}` tries again")
        return "rescue incomplete: kept"
    try:
        compute.delete_vm(where, vm.name, on_log=on_log, state=state)
        result.deleted.append(vm.name)
    except Exception as exc:
        on_warn(f"warning: could not delete {vm.name}: {exc}; `bin/sweep` will retry")
        return f"delete failed: {exc}"
    return ""


def _recover_downloads(cfg: Config, on_log: Log) -> list[str]:
    """Downloads a dead pull left `downloading` go back for retry on the next pull (lib/downloads.py)."""
    try:
        reset = downloads.recover(Path(cfg.results_dir))  # creates nothing where no pull ever ran
    except Exception as exc:  # a broken download state must not block VM safety
        on_log(f"could not check interrupted downloads: {exc}")
        return []
    if reset:
        on_log(f"reset {len(reset)} interrupted download(s) for retry: {', '.join(reset)}")
    return reset
