"""bin/launch as a user runs it: dry run creates nothing, errors before create, delete refusal, exit codes."""

from __future__ import annotations

import json

import pytest

from lib import compute
from tests.support.bins import run_bin
from tests.support.vms import SMALL, vm_env

ROCKY = "projects/cloud-hpc-image-public/global/images/family/hpc-rocky-linux-8"


@pytest.fixture
def vms(localcloud, tmp_path):
    yield from vm_env(localcloud, tmp_path)


def env_for(vms, **extra):
    return vms.cloud.env(state_dir=vms.cfg.state_dir, machine_type=SMALL, build_machine_type=SMALL, **extra)


def test_dry_run_prints_vm_and_worst_case_cost_and_creates_nothing(vms):
    name = vms.name()
    before = {v.name for v in compute.list_vms(vms.cfg, ours_only=False)}
    proc = run_bin("launch", "--dry-run", "--json", "--name", name, "--timeouts", "30,60", "--image", ROCKY,
                   env=env_for(vms))
    assert proc.returncode == 0, proc.stderr
    view = json.loads(proc.stdout)
    assert view["created"] is False and view["max_run_hours"] == 3 and view["termination_action"] == "DELETE"
    assert view["worst_case_cost_usd"] == pytest.approx(3 * (0.067 + 0.10 * 200 / 730), abs=0.01)
    assert "taken 20" in view["prices"]
    assert compute.get_vm(vms.cfg, name) is None
    assert {v.name for v in compute.list_vms(vms.cfg, ours_only=False)} == before
    assert not (vms.cfg.state_path / "session_state.json").exists()
    text = run_bin("launch", "--dry-run", "--name", name, "--kind", "build", env=env_for(vms))
    assert "dry run: nothing created" in text.stdout and "Worst case 2 h" in text.stdout


def test_launch_prints_name_then_delete(vms, tmp_path):
    script = tmp_path / "startup.sh"
    script.write_text("sleep 600\n")
    name = vms.name()
    proc = run_bin("launch", "--name", name, "--kind", "build", "--spot", "--startup-script", str(script),
                   env=env_for(vms))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == name
    vm = compute.get_vm(vms.cfg, name)
    assert vm.spot is True and vm.status == "RUNNING" and vm.labels["ops-hpc-kind"] == "build"
    gone = run_bin("launch", "--delete", name, env=env_for(vms))
    assert gone.returncode == 0 and compute.get_vm(vms.cfg, name) is None
    again = run_bin("launch", "--delete", name, env=env_for(vms))
    assert again.returncode == 0 and "already deleted" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["--machine-type", "n2-standard-3"], "machine type 'n2-standard-3' does not exist"),
    (["--image", "family/nope"], "image family 'nope' not found"),
])
def test_errors_before_create_exit_nonzero(vms, args, message):
    name = vms.name()
    proc = run_bin("launch", "--name", name, "--kind", "build", *args, env=env_for(vms))
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert compute.get_vm(vms.cfg, name) is None


def test_quota_error_before_create(vms, localcloud):
    name = vms.name()
    localcloud.admin("quota", {"metric": "CPUS", "limit": 1})
    try:
        proc = run_bin("launch", "--name", name, "--kind", "build", env=env_for(vms))
    finally:
        localcloud.admin("quota", {"metric": "CPUS", "limit": 1024})
    assert proc.returncode == 1 and "not enough CPUS quota" in proc.stderr
    assert compute.get_vm(vms.cfg, name) is None


def test_delete_refuses_unlabeled_vm_without_force(vms):
    name = vms.create(labels=False)
    refused = run_bin("launch", "--delete", name, env=env_for(vms))
    assert refused.returncode == 3 and "refusing to delete" in refused.stderr
    assert compute.get_vm(vms.cfg, name) is not None
    forced = run_bin("launch", "--delete", name, "--force", env=env_for(vms))
    assert forced.returncode == 0 and compute.get_vm(vms.cfg, name) is None
