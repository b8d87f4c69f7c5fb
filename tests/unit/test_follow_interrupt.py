"""Ctrl+C while following a run: the VMs run on and delete themselves, so the next command must not report
their analyses as interrupted when they are gone."""

from __future__ import annotations

import time

import pytest

from lib.config import Config
from lib.reconcile import DROP, decide_row
from lib.runstaged.follow import Follower
from lib.state import SessionState


def test_ctrl_c_hands_the_running_models_over_to_the_vms(tmp_path, monkeypatch):
    cfg = Config.load({"backend": "gcp", "project": "eng-project-1", "zone": "us-central1-a",
                       "state_dir": str(tmp_path / "state")}, env={}, path="")
    state = SessionState(cfg)
    state.register_vm("ops-vm-1", run_id="r1", kind="analysis", zone=cfg.zone, expected_end=time.time() + 600,
                      max_run_end=time.time() + 900)
    follower = Follower(cfg, "r1", [], [], results_dir=tmp_path / "results", state=state)
    follower._show(type("Vm", (), {"name": "ops-vm-1", "state": "running", "status": {  # type: ignore[arg-type]
        "current": 1, "models": 2, "current_model": "wall", "per_model": {"wall": {"state": "running"}}}})())
    assert state.running_jobs("ops-vm-1") == ["wall"]  # what a follower that is killed would leave behind

    def ctrl_c():
        raise KeyboardInterrupt

    monkeypatch.setattr(follower, "poll", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        follower.run()
    entry = state.vms()["ops-vm-1"]
    assert state.running_jobs("ops-vm-1") == []
    row = decide_row(entry, None, time.time())  # later: the VM finished and deleted itself
    assert row.do == DROP and not row.interrupted and not row.warning
