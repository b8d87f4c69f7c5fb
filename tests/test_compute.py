"""compute: max run duration arithmetic, the VM we create, validation before create, label-checked delete."""

from __future__ import annotations

import time

import pytest

from lib import compute, pricing
from lib.errors import OpsError
from lib.state import SessionState
from tests.support.vms import ensure_opensees_image, vm_env


@pytest.fixture
def vms(localcloud, tmp_path):
    yield from vm_env(localcloud, tmp_path)


@pytest.mark.parametrize("timeouts, upload, hours", [
    ([30, 60], 30, 3),        # 121 min -> 3 h
    ([29], 30, 1),            # exactly 60 min -> 1 h
    ([30], 30, 2),            # 61 min -> 2 h
    ([], 30, 1),              # upload + 1 min -> 1 h
    ([0], 0, 1),              # 1 min -> 1 h
    ([60] * 10, 59, 11),      # 600 + 59 + 1 = 660 min -> 11 h
    ([1440, 1440], 30, 49),   # two days + 31 min -> 49 h
])
def test_max_run_duration_arithmetic(timeouts, upload, hours):
    assert compute.max_run_seconds(timeouts, upload) == hours * 3600


def test_build_is_two_hours_whatever_the_timeouts():
    assert compute.max_run_seconds([600, 600], 30, kind="build") == 7200


def test_max_run_beyond_120_days_and_bad_kind_refused():
    with pytest.raises(OpsError, match="120-day"):
        compute.max_run_seconds([121 * 1440], 0)
    with pytest.raises(OpsError, match="kind"):
        compute.max_run_seconds([1], 0, kind="gpu")


def test_label_values_are_valid_gce_labels():
    assert compute.label_value("Run 2026/11/21 A") == "run-2026-11-21-a"
    assert len(compute.label_value("x" * 100)) == 63


def test_created_vm_has_labels_max_run_delete_on_demand_and_metadata(vms, localcloud):
    image = ensure_opensees_image(vms.cfg)
    before = time.time()
    name = vms.name()
    spec = compute.plan_vm(vms.cfg, name=name, kind="analysis", run_id="Run-7", job_timeouts_min=[30, 60],
                           startup_script="sleep 600", metadata={"ops-hpc-bucket": "b1"})
    assert spec.source_image == image and spec.max_run_s == 3 * 3600
    vm = compute.create_vm(vms.cfg, spec, on_log=vms.log)
    assert vm.status == "RUNNING"  # create_vm waited for the insert operation (the emulator takes its time)
    assert vm.labels == {"ops-hpc": "true", "ops-hpc-run": "run-7", "ops-hpc-kind": "analysis",
                         "ops-hpc-end": str(spec.expected_end), "ops-hpc-host": compute.this_host(),
                         "ops-hpc-launched": spec.labels["ops-hpc-launched"]}
    assert before - 1 <= int(spec.labels["ops-hpc-launched"]) <= time.time()
    assert vm.owner_host == compute.this_host() and vm.launched == int(spec.labels["ops-hpc-launched"])
    assert before + (30 + 60 + 30 + 1) * 60 - 1 <= spec.expected_end <= time.time() + 121 * 60
    assert vm.max_run_s == 10800 and vm.termination_action == "DELETE" and vm.spot is False
    from lib import clients

    raw = clients.instances(vms.cfg).get(project=vms.cfg.project, zone=vms.cfg.zone, instance=name)
    assert raw.scheduling.provisioning_model == "STANDARD"
    meta = {i.key: i.value for i in raw.metadata.items}
    assert meta == {"ops-hpc-bucket": "b1", "startup-script": "sleep 600"}
    entry = SessionState(vms.cfg).vms()[name]
    assert entry["run_id"] == "Run-7" and entry["kind"] == "analysis" and entry["phase"] == "running"
    assert compute.delete_vm(vms.cfg, name, on_log=vms.log) is True
    assert compute.get_vm(vms.cfg, name) is None  # delete_vm waited until the VM was gone, not just STOPPING
    assert compute.delete_vm(vms.cfg, name, on_log=vms.log) is False  # idempotent
    assert name not in SessionState(vms.cfg).vms()


def test_spot_only_when_asked(vms):
    name = vms.create(spot=True)
    vm = compute.get_vm(vms.cfg, name)
    assert vm.spot is True and vm.termination_action == "DELETE" and vm.max_run_s == 7200
    compute.delete_vm(vms.cfg, name, on_log=vms.log)


def _nothing_created(vms, name):
    assert compute.get_vm(vms.cfg, name) is None
    assert name not in SessionState(vms.cfg).vms()


def test_missing_machine_type_fails_before_create(vms):
    name = vms.name()
    with pytest.raises(OpsError, match="machine type 'n2-standard-3' does not exist.*nothing was created"):
        compute.plan_vm(vms.cfg, name=name, kind="build", run_id="x", machine_type="n2-standard-3")
    _nothing_created(vms, name)


def test_missing_image_fails_before_create(vms):
    name = vms.name()
    with pytest.raises(OpsError, match="image family 'no-such-family' not found.*nothing was created"):
        compute.plan_vm(vms.cfg, name=name, kind="build", run_id="x", image="family/no-such-family")
    with pytest.raises(OpsError, match="image 'gone-image' not found"):
        compute.plan_vm(vms.cfg, name=name, kind="build", run_id="x", image="gone-image")
    _nothing_created(vms, name)


def test_missing_quota_fails_before_create(vms, localcloud):
    name = vms.name()
    localcloud.admin("quota", {"metric": "CPUS", "limit": 1})
    try:
        with pytest.raises(OpsError, match="not enough CPUS quota in us-central1 for e2-standard-2: limit 1"):
            compute.plan_vm(vms.cfg, name=name, kind="build", run_id="x")
    finally:
        localcloud.admin("quota", {"metric": "CPUS", "limit": 1024})
    _nothing_created(vms, name)


def test_delete_refuses_unlabeled_vm_unless_forced(vms):
    name = vms.create(labels=False)
    with pytest.raises(OpsError, match="refusing to delete") as info:
        compute.delete_vm(vms.cfg, name, on_log=vms.log)
    assert info.value.code == 3 and compute.get_vm(vms.cfg, name).status == "RUNNING"
    with pytest.raises(OpsError, match="refusing to stop"):
        compute.stop_vm(vms.cfg, name, on_log=vms.log)
    assert compute.delete_vm(vms.cfg, name, force=True, on_log=vms.log) is True


def test_list_vms_ours_only(vms):
    ours, theirs = vms.create(), vms.create(labels=False)
    names = {v.name for v in compute.list_vms(vms.cfg)}
    assert ours in names and theirs not in names
    assert theirs in {v.name for v in compute.list_vms(vms.cfg, ours_only=False)}
    compute.delete_vm(vms.cfg, ours, on_log=vms.log)
    compute.delete_vm(vms.cfg, theirs, force=True, on_log=vms.log)


def test_worst_case_cost_is_hourly_price_times_max_run_hours(vms):
    spec = compute.plan_vm(vms.cfg, name=vms.name(), kind="analysis", run_id="x", job_timeouts_min=[90],
                           image="projects/cloud-hpc-image-public/global/images/family/hpc-rocky-linux-8")
    assert spec.max_run_s == 3 * 3600  # 90 + 30 + 1 = 121 min
    hourly = pricing.hourly(vms.cfg, "e2-standard-2") + 0.10 * spec.disk_size_gb / 730
    assert compute.worst_case_cost(vms.cfg, spec) == round(3 * hourly, 2)


def test_expected_end_label_can_be_moved(vms):
    name = vms.create()
    compute.set_expected_end(vms.cfg, name, 2_000_000_000)
    assert compute.get_vm(vms.cfg, name).expected_end == 2_000_000_000
    compute.delete_vm(vms.cfg, name, on_log=vms.log)
