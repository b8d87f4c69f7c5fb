"""Per-family CPU quota (H3, ...) comes from Cloud Quotas, not regions.get: setup and launch check it when that API
answers, and say plainly, with the command that enables it, when they could not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lib import compute, preflight, quotas
from tests.support.vms import REPO_ROOT, vm_config

H3 = "h3-standard-88"


@pytest.fixture
def cfg(localcloud, tmp_path):
    return vm_config(localcloud, tmp_path / "state").replace(machine_type=H3)


@pytest.fixture
def h3_limit(localcloud):
    def set_limit(limit: float) -> None:
        localcloud.admin("quota", {"metric": "H3_CPUS", "limit": limit, "region": "us-central1"})

    yield set_limit
    set_limit(1024)


@pytest.fixture
def quotas_api_off(localcloud):
    localcloud.admin("apis", {"cloudquotas": False})
    yield
    localcloud.admin("apis", {"cloudquotas": True})


def plan(cfg):
    return compute.plan_vm(cfg, name="quota-check", kind="build", run_id="q", machine_type=H3)


def test_an_h3_shortfall_that_regions_get_cannot_show_refuses_the_launch(cfg, h3_limit):
    h3_limit(80)
    metrics = {q.metric for q in compute.clients.compute_client("RegionsClient", cfg).get(
        project=cfg.project, region="us-central1").quotas}
    assert "H3_CPUS" not in metrics  # as on GCP: not a value of the metric enum
    with pytest.raises(compute.OpsError, match=r"not enough H3 family CPUs quota in us-central1 .*limit 80.*"
                                               r"nothing was created"):
        plan(cfg)
    checks = {c.name: c for c in preflight.check_quota(cfg)}
    assert checks["family CPU quota"].status == "fail" and "H3 family CPUs 0/80" in checks["family CPU quota"].detail
    assert checks["CPU quota"].status == "ok"


def test_the_family_quota_is_checked_when_cloud_quotas_answers(cfg):
    spec = plan(cfg)
    assert spec.notes == ()
    checks = {c.name: c for c in preflight.check_quota(cfg)}
    assert checks["family CPU quota"].status == "ok" and "H3 family CPUs 0/1024" in checks["family CPU quota"].detail


def test_a_disabled_cloud_quotas_api_is_said_never_passed(cfg, quotas_api_off):
    spec = plan(cfg)  # the launch goes on: Compute still refuses an insert beyond the quota
    assert len(spec.notes) == 1 and "H3 family CPUs quota in us-central1 not checked" in spec.notes[0]
    assert spec.notes[0].endswith("gcloud services enable cloudquotas.googleapis.com")
    check = {c.name: c for c in preflight.check_quota(cfg)}["family CPU quota"]
    assert check.status == "skip" and check.detail.startswith("could not check")
    assert check.line().endswith("-> gcloud services enable cloudquotas.googleapis.com")
    assert "fits" not in check.line()


def test_launch_dry_run_prints_what_it_could_not_check(localcloud, tmp_path, quotas_api_off):
    env = localcloud.env(state_dir=str(tmp_path / "state"), machine_type=H3)
    proc = subprocess.run([sys.executable, "bin/launch", "--dry-run", "--kind", "build", "--machine-type", H3],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "not checked" in proc.stderr and "gcloud services enable cloudquotas.googleapis.com" in proc.stderr


def test_a_family_without_its_own_quota_has_no_row(cfg):
    assert quotas.family_row(cfg, "e2-standard-2", 2) is None
    assert [r["metric"] for r in compute.cpu_quota(cfg, "e2-standard-2", 2, False)] == ["CPUS"]


def test_family_usage_counts_live_vms_of_the_family_in_the_region(cfg, monkeypatch):
    vms = [compute.Vm(name="a", status="RUNNING", zone="us-central1-b", machine_type=H3),
           compute.Vm(name="b", status="STAGING", zone="us-central1-c", machine_type=H3),
           compute.Vm(name="c", status="TERMINATED", zone="us-central1-a", machine_type=H3),
           compute.Vm(name="d", status="RUNNING", zone="us-east1-b", machine_type=H3),
           compute.Vm(name="e", status="RUNNING", zone="us-central1-a", machine_type="c3d-standard-30")]
    monkeypatch.setattr(compute, "list_vms_in_zones", lambda *a, **k: vms)
    assert quotas.family_usage(cfg, "H3") == 176
    assert (quotas.family_of("n2-custom-8-32768"), quotas.vcpus_of("n2-custom-8-32768")) == ("N2", 8)
    assert (quotas.family_of("c3d-standard-360-lssd"), quotas.vcpus_of("c3d-standard-360-lssd")) == ("C3D", 360)
