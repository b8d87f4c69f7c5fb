"""reconcile's decision table, row by row, with no cloud: decide_row is pure (entry, VM, time, observations)."""

from __future__ import annotations

import pytest

from lib.compute import Vm
from lib.reconcile import (
    DELETE,
    DONE_GRACE_S,
    DROP,
    INSERT_WINDOW_S,
    NONE,
    RESCUE,
    WARN,
    Report,
    awaits_first_status,
    decide_row,
)

NOW = 1_000_000.0
WINDOW = 120.0


def entry(**kw: object) -> dict:
    base = {"zone": "z", "run_id": "run-1", "kind": "analysis", "expected_end": NOW + 600, "registered": NOW - 30,
            "phase": "running", "jobs": {}}
    return {**base, **kw}


def vm(**kw: object) -> Vm:
    base = {"name": "v", "zone": "z", "status": "RUNNING", "ours": True, "run_id": "run-1", "launched": int(NOW - 30)}
    return Vm(**{**base, **kw})


JOB = {"model-a": {"state": "running"}}
INSERT = {"request_id": "r-1", "started": NOW - 20}

TABLE = [
    # (case, entry, vm, owner_alive, reported, do, kind, action starts with)
    ("registered, running", entry(), vm(), True, None, WARN, "running", "warned: still billing"),
    ("registered, stopped", entry(), vm(status="TERMINATED"), True, None, WARN, "stopped", "warned: sweeper"),
    ("registered, gone", entry(), None, False, None, DROP, "cleaned", "entry cleaned"),
    ("job running, gone", entry(jobs=JOB), None, False, None, DROP, "cleaned", "warned: interrupted"),
    ("creating, live creator", entry(phase="creating"), None, True, None, NONE, "waiting", "none: its creator"),
    ("creating, creator dead, no insert recorded", entry(phase="creating"), None, False, None, DROP, "cleaned",
     "entry cleaned"),
    ("insert in flight, creator dead", entry(phase="creating", insert=INSERT), None, False, None, NONE, "waiting",
     "none: its insert may still land"),
    ("insert long ago, creator dead", entry(phase="creating", insert={**INSERT, "started": NOW - INSERT_WINDOW_S - 1}),
     None, False, None, DROP, "cleaned", "entry cleaned"),
    ("nothing, ours", None, vm(), False, None, WARN, "orphan", "warned: orphan"),
    ("guard died", entry(guarded=True), vm(), False, None, DELETE, "deleted", "deleted: its guarding process died"),
    ("guard alive", entry(guarded=True), vm(), True, None, WARN, "running", "warned: still billing"),
    ("silent reporter, no entry (another PC's launch died mid-insert)", None,
     vm(reports_status=True, launched=int(NOW - WINDOW - 1)), False, False, DELETE, "deleted",
     "deleted: never reported"),
    ("silent reporter, unguarded entry", entry(), vm(reports_status=True, launched=int(NOW - WINDOW - 1)), True,
     False, DELETE, "deleted", "deleted: never reported"),
    ("reporter that reported", None, vm(reports_status=True, launched=int(NOW - WINDOW - 1)), False, True, WARN,
     "orphan", "warned: orphan"),
    ("reporter, bucket could not say", None, vm(reports_status=True, launched=int(NOW - WINDOW - 1)), False, None,
     WARN, "orphan", "warned: orphan"),
    ("silent reporter still inside its window", None, vm(reports_status=True, launched=int(NOW - 10)), False, False,
     WARN, "orphan", "warned: orphan"),
    ("silent VM that does not report by design", None, vm(launched=int(NOW - 9999)), False, False, WARN, "orphan",
     "warned: orphan"),
]


@pytest.mark.parametrize(("case", "e", "v", "alive", "reported", "do", "kind", "action"), TABLE,
                         ids=[row[0] for row in TABLE])
def test_decide_row(case, e, v, alive, reported, do, kind, action):
    row = decide_row(e, v, NOW, owner_alive=alive, reported=reported, first_status_s=WINDOW)
    assert (row.do, row.kind) == (do, kind), case
    assert row.action.startswith(action), row.action


def test_interrupted_jobs_travel_with_the_row():
    assert decide_row(entry(jobs=JOB), None, NOW).interrupted == ("model-a",)
    assert decide_row(entry(jobs=JOB, guarded=True), vm(), NOW, owner_alive=False).interrupted == ("model-a",)
    assert decide_row(entry(jobs=JOB), vm(status="STOPPED"), NOW, owner_alive=True).interrupted == ("model-a",)


def test_a_live_guard_decides_for_its_own_vm():
    """A launch still waiting for its VM's first status is never overruled by a status run elsewhere."""
    old = vm(reports_status=True, launched=int(NOW - 10 * WINDOW))
    assert not awaits_first_status(entry(guarded=True), old, NOW, owner_alive=True, first_status_s=WINDOW)
    assert awaits_first_status(entry(guarded=True), old, NOW, owner_alive=False, first_status_s=WINDOW)
    assert not awaits_first_status(None, vm(reports_status=True, status="TERMINATED", launched=0), NOW,
                                   owner_alive=False, first_status_s=WINDOW)


def test_a_window_that_would_delete_every_launch_is_refused(tmp_path):
    from lib.config import Config
    from lib.errors import UsageError
    from lib.reconcile import reconcile

    cfg = Config.load({"backend": "local", "state_dir": str(tmp_path)}, env={}, path="")
    with pytest.raises(UsageError):
        reconcile(cfg, vms=[], first_status_s=0)


def test_owner_liveness_uses_pid_start_time_and_host():
    import os
    import socket
    import subprocess
    import sys

    from lib.procs import ProcessRef
    from lib.state import owner_alive

    me = ProcessRef.current().to_dict()
    assert owner_alive({"owner": me})
    assert not owner_alive({"owner": {**me, "create_time": me["create_time"] - 100}})  # a reused pid
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not owner_alive({"owner": {"pid": dead.pid, "create_time": None, "host": socket.gethostname(), "since": 0}})
    assert owner_alive({"owner": {"pid": 1, "create_time": 1.0, "host": "another-pc", "since": 0}})  # cannot check
    assert owner_alive({"owner_pid": os.getpid(), "owner_started": None})  # files written before the owner record
    assert not owner_alive({})


REPORTER = {"reports_status": True, "launched": int(NOW - 3600)}
REPORTS = [
    # (case, report, vm status, do, action starts with)
    ("self-delete refused: at once", Report("self_delete_refused", 0.5), "RUNNING", DELETE,
     "deleted: its self-delete was refused"),
    ("done, still there after the grace", Report("done", DONE_GRACE_S), "RUNNING", DELETE, "deleted: reported done"),
    ("error, still there after the grace", Report("error", DONE_GRACE_S + 5), "RUNNING", DELETE,
     "deleted: reported error"),
    ("done moments ago: its own delete is under way", Report("done", 2.0), "RUNNING", WARN, "warned: orphan"),
    ("stranded results: rescued first", Report("upload_failed", 0.0, ("m",)), "RUNNING", RESCUE,
     "rescued: stranded result(s) m"),
    ("stranded and refused: the rescue comes first", Report("self_delete_refused", 0.0, ("m",)), "RUNNING", RESCUE,
     "rescued"),
    ("running: working", Report("running", 999.0), "RUNNING", WARN, "warned: orphan"),
    ("running with a stranded model: later models still run", Report("running", 999.0, ("m",)), "RUNNING", WARN,
     "warned: orphan"),
    ("preempted: GCE stops it", Report("preempted", 999.0), "RUNNING", WARN, "warned: orphan"),
    ("done but stopped: the stopped row", Report("done", 999.0), "TERMINATED", WARN, "warned: orphan"),
]


@pytest.mark.parametrize(("case", "report", "status", "do", "action"), REPORTS, ids=[r[0] for r in REPORTS])
def test_a_vm_past_its_purpose_by_its_own_status(case, report, status, do, action):
    row = decide_row(None, vm(status=status, **REPORTER), NOW, reported=True, first_status_s=WINDOW, report=report)
    assert row.do == do, case
    assert row.action.startswith(action), row.action
    assert row.rescue == (report.stranded if do == RESCUE else ())


def test_a_dead_guard_still_wins_over_the_status_file():
    row = decide_row(entry(guarded=True), vm(**REPORTER), NOW, report=Report("upload_failed", 0.0, ("m",)))
    assert row.do == DELETE and row.action.startswith("deleted: its guarding process died")


def test_the_transitional_states_table_names_every_state_the_vm_publishes():
    import re

    import lib.reconcile as rec
    from lib.runstatus import VM_DONE

    script = (__import__("pathlib").Path(rec.__file__).parents[1] / "vm-scripts" / "run_analysis.sh").read_text()
    published = set(re.findall(r'\bSTATE="([a-z_]+)"', script)) | set(re.findall(r"\bfinish ([a-z_]+)", script))
    assert published >= set(VM_DONE) - {"done"} | {"preempted"}
    for state in published | set(VM_DONE):
        assert state in (rec.__doc__ or ""), f"state {state} is missing from reconcile's table"


@pytest.mark.parametrize(("rescue", "in_bucket", "deleted", "warning"), [
    (["run-1/m.zip"], False, True, None),  # rescued: deleted
    ([], True, True, None),  # the VM's own retry got it up meanwhile: deleted
    ([], False, False, "not rescued"),  # an incomplete zip: kept
    (OSError("ssh: connection refused"), False, False, "keeps retrying the uploads until its max run end"),
])
def test_a_stranded_vm_is_deleted_only_once_its_results_are_in_the_bucket(tmp_path, monkeypatch, rescue, in_bucket,
                                                                           deleted, warning):
    from lib import compute, controls, reconcile, storage
    from lib.config import Config

    cfg = Config.load({"backend": "local", "state_dir": str(tmp_path)}, env={}, path="")

    def rescue_stranded(where, name, **kw):
        if isinstance(rescue, Exception):
            raise rescue
        return rescue

    monkeypatch.setattr(controls, "rescue_stranded", rescue_stranded)
    monkeypatch.setattr(storage, "get_blob", lambda where, name: object() if in_bucket else None)
    gone: list[str] = []
    monkeypatch.setattr(compute, "delete_vm", lambda where, name, **kw: gone.append(name) or True)
    warned: list[str] = []
    result = reconcile.ReconcileResult()
    why = reconcile._rescue_and_delete(cfg, None, vm(**REPORTER), ("m",), result, on_log=lambda _: None,
                                       on_warn=warned.append)
    assert (gone == ["v"]) is deleted and (result.deleted == ["v"]) is deleted and (why == "") is deleted
    assert warning is None and not warned or warning in warned[0], warned
