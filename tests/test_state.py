"""Session state and reconcile: each row of the cross-reference table, a power cut, and max run duration."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from lib import clients, compute, jsonfile
from lib.config import Config
from lib.localcloud import control
from lib.reconcile import Interrupted, reconcile
from lib.state import STATE_FILE, SessionState
from lib.sweep import sweep
from tests.support.vms import SMALL, ensure_opensees_image, unique, vm_env, wait_gone


@pytest.fixture
def vms(localcloud, tmp_path):
    yield from vm_env(localcloud, tmp_path)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def orphan_owner(cfg: Config, name: str, *, guarded: bool) -> None:
    """Make the entry look like its owner process died (killed, or the PC lost power)."""
    with jsonfile.edit(cfg.state_path / STATE_FILE) as data:
        data["vms"][name].update(owner={"pid": dead_pid(), "create_time": None, "host": "", "since": 0},
                                 guarded=guarded)


def raw_delete(cfg: Config, name: str) -> None:
    """Delete behind ops-hpc's back, as Google (preemption, max run duration) or the console would."""
    clients.instances(cfg).delete(project=cfg.project, zone=cfg.zone, instance=name).result(60)


def test_state_file_is_written_on_create_job_and_delete(vms):
    name = vms.create()
    state = SessionState(vms.cfg)
    state.job_started(name, "model-a")
    data = json.loads((vms.cfg.state_path / STATE_FILE).read_text())
    assert data["vms"][name]["jobs"]["model-a"]["state"] == "running"
    state.job_finished(name, "model-a", "done")
    assert state.vms()[name]["jobs"]["model-a"]["state"] == "done"
    assert not list(vms.cfg.state_path.glob(".session_state.json.*.tmp"))  # atomic: no temp file left
    compute.delete_vm(vms.cfg, name, on_log=vms.log)
    assert name not in state.vms()


def test_each_row_of_the_cross_reference_table(vms):
    cfg, state = vms.cfg, SessionState(vms.cfg)
    running = vms.create()             # registered + running -> warn
    gone = vms.create()                # registered + gone -> entry cleaned
    raw_delete(cfg, gone)
    interrupted = vms.create()         # job running + gone -> warn interrupted
    state.job_started(interrupted, "model-b")
    raw_delete(cfg, interrupted)
    orphan = vms.create()              # nothing + ops-hpc VM running -> warn orphan
    state.unregister_vm(orphan)
    creating = vms.name()              # registered a moment ago by a live process: mid-create, left alone
    state.register_vm(creating, run_id="r", kind="build", zone=cfg.zone, expected_end=time.time() + 60,
                      max_run_end=time.time() + 7200, phase="creating")

    warnings: list[str] = []
    result = reconcile(cfg, on_log=vms.log, on_warn=warnings.append)
    rows = {r.vm: r for r in result.rows}
    assert rows[running].state_says == "VM registered" and rows[running].gcp_says == "VM RUNNING"
    assert rows[running].action.startswith("warned: still billing") and running in result.running
    assert rows[gone].action == "entry cleaned" and gone in result.cleaned
    assert rows[interrupted].state_says == "job running" and "interrupted" in rows[interrupted].action
    assert result.interrupted == [Interrupted(interrupted, ("model-b",))]
    assert rows[orphan].state_says == "nothing" and orphan in result.orphans
    assert rows[creating].gcp_says == "not yet created"
    assert any(running in w and "bin/launch --delete" in w for w in warnings)
    assert any(orphan in w and "orphan" in w for w in warnings)
    assert any(interrupted in w and "model-b" in w for w in warnings)
    assert set(state.vms()) == {running, creating}
    assert compute.get_vm(cfg, running).status == "RUNNING"  # reconcile never deletes a live owner's VM
    for name in (running, orphan):
        compute.delete_vm(cfg, name, on_log=vms.log)
    state.unregister_vm(creating)


def test_dry_run_reconcile_changes_nothing(vms):
    name = vms.create()
    orphan_owner(vms.cfg, name, guarded=True)
    result = reconcile(vms.cfg, on_log=vms.log, on_warn=vms.log, dry_run=True)
    assert result.deleted == [] and compute.get_vm(vms.cfg, name) is not None
    assert {r.vm: r.action for r in result.rows}[name].startswith("would delete")
    compute.delete_vm(vms.cfg, name, on_log=vms.log)


def test_max_run_duration_deletes_vm_whose_owner_is_gone(vms, localcloud):
    ensure_opensees_image(vms.cfg)
    name = vms.name()
    spec = compute.plan_vm(vms.cfg.replace(upload_timeout_min=0), name=name, kind="analysis", run_id="r",
                           job_timeouts_min=[1], startup_script="sleep 600")
    assert spec.max_run_s == 3600
    compute.create_vm(vms.cfg, spec, on_log=vms.log)
    orphan_owner(vms.cfg, name, guarded=False)  # a self-deleting run: nobody on the PC deletes it
    localcloud.admin("time_scale", {"time_scale": 3600})  # 1 h of VM clock in 1 s
    try:
        assert wait_gone(vms.cfg, name, timeout=20), "Google's max run duration did not delete the VM"
    finally:
        localcloud.admin("time_scale", {"time_scale": 1.0})
    result = reconcile(vms.cfg, on_log=vms.log, on_warn=vms.log)
    assert name in result.cleaned and name not in SessionState(vms.cfg).vms()


def test_power_cut_state_left_mid_run_then_cloud_restarted(tmp_path):
    """The PC loses power mid-run: the next command (or sweep) cleans up, with a warning about the analysis."""
    state_dir = tmp_path / "pc"
    control.up(state_dir)
    try:
        cfg = clients.resolve(Config.load({"backend": "local", "state_dir": str(state_dir), "machine_type": SMALL,
                                           "build_machine_type": SMALL}, env={}, path=""))
        guarded, staged = unique("pc-g"), unique("pc-s")
        for name in (guarded, staged):
            spec = compute.plan_vm(cfg, name=name, kind="build", run_id="pc", startup_script="sleep 600")
            compute.create_vm(cfg, spec, on_log=lambda _: None)
        state = SessionState(cfg)
        state.job_started(guarded, "model-a")
        state.job_started(staged, "model-b")
        orphan_owner(cfg, guarded, guarded=True)
        orphan_owner(cfg, staged, guarded=False)

        control.down(state_dir)  # power off: VM processes end, Compute still records them RUNNING
        control.up(state_dir)    # power back: the host rebooted under them -> TERMINATED
        cfg = clients.resolve(cfg.replace(compute_endpoint="", storage_endpoint="", monitoring_endpoint=""))
        assert compute.get_vm(cfg, guarded).status == "TERMINATED"
        assert compute.get_vm(cfg, staged).status == "TERMINATED"

        lines: list[str] = []
        result = sweep(cfg, on_log=lines.append, on_warn=lines.append)
        rec = result.reconcile
        assert rec.deleted == [guarded]
        assert {i.vm for i in rec.interrupted} == {guarded, staged}
        assert [d.name for d in result.deleted] == [staged]  # TERMINATED: its disk still bills
        assert compute.get_vm(cfg, guarded) is None and compute.get_vm(cfg, staged) is None
        reconcile(cfg, on_log=lines.append, on_warn=lines.append)
        assert SessionState(cfg).vms() == {}
        assert not [v for v in compute.list_vms(cfg) if v.status not in compute.STOPPED_STATES]
    finally:
        control.down(state_dir)


def test_reconcile_resets_interrupted_downloads(vms, tmp_path):
    import socket

    downloads = pytest.importorskip("lib.downloads")
    results = tmp_path / "results"
    results.mkdir()
    owner = {"pid": dead_pid(), "host": socket.gethostname(), "create_time": 1.0, "since": time.time()}
    jsonfile.write_atomic(results / downloads.LEGACY_STATE_FILE, {"format": 1, "sets": {
        "run-a": {"status": "downloading", "owner": owner}, "run-b": {"status": "pending"}}})
    result = reconcile(vms.cfg.replace(results_dir=str(results)), on_log=vms.log, on_warn=vms.log)
    assert result.downloads_reset == ["run-a"]
    assert downloads.Tracker(results).get("run-a")["status"] == "failed"
    empty = tmp_path / "never-pulled"
    assert reconcile(vms.cfg.replace(results_dir=str(empty)), on_log=vms.log, on_warn=vms.log).downloads_reset == []
    assert not empty.exists()  # reconcile creates nothing where no pull ever ran


def test_a_guard_entered_before_the_vm_is_created_keeps_its_mark(tmp_path):
    """run-staged guards the creation itself: the guard's mark must survive the registration that follows."""
    from lib.config import Config
    from lib.state import SessionState

    cfg = Config.load({"backend": "local", "state_dir": str(tmp_path)}, env={}, path="")
    state = SessionState(cfg)
    state.set_guarded("vm-early", True)
    assert state.vms()["vm-early"]["phase"] == "creating"
    state.register_vm("vm-early", run_id="run-1", kind="analysis", zone=cfg.zone, expected_end=2e9, max_run_end=2e9)
    entry = state.vms()["vm-early"]
    assert entry["guarded"] is True and entry["run_id"] == "run-1" and entry["phase"] == "running"
    state.set_guarded("vm-early", False)
    assert state.vms()["vm-early"]["guarded"] is False
    state.set_guarded("vm-never", False)  # un-marking an unknown VM records nothing
    assert "vm-never" not in state.vms()
