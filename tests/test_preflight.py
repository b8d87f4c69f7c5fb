"""setup: one line per check; the bucket is created locked down; failures say what to do."""

from __future__ import annotations

import subprocess
import sys
import types
import uuid

from lib import preflight, storage
from tests.support.vms import REPO_ROOT, vm_config


def test_all_checks_on_local_cloud_create_the_bucket_locked_down(localcloud, tmp_path):
    cfg = vm_config(localcloud, tmp_path / "state").replace(bucket=f"setup-{uuid.uuid4().hex[:10]}")
    lines: list[str] = []
    checks = preflight.run_checks(cfg, on_check=lambda c: lines.append(c.line()))
    by_name = {c.name: c for c in checks}
    assert [c.name for c in checks] == ["credentials", "project", "Compute Engine API", "Cloud Storage API",
                                        "Cloud Monitoring API", "OS Login", "bucket", "IAM permissions",
                                        "VM service account", "CPU quota", "family CPU quota"]
    assert all(c.status in ("ok", "skip") for c in checks), "\n".join(lines)
    assert by_name["OS Login"].status == "skip" and by_name["IAM permissions"].detail == "skipped on local cloud (no IAM)"
    assert "created" in by_name["bucket"].detail
    assert storage.client(cfg).get_bucket(cfg.bucket_name).name == cfg.bucket_name
    assert len(lines) == len(checks)  # one line per check
    again = {c.name: c for c in preflight.run_checks(cfg, on_check=lambda c: None)}
    assert "exists" in again["bucket"].detail


def test_quota_failure_says_what_to_do(localcloud, tmp_path):
    cfg = vm_config(localcloud, tmp_path / "state")
    localcloud.admin("quota", {"metric": "CPUS", "limit": 1})
    try:
        check = preflight.check_quota(cfg)[0]
    finally:
        localcloud.admin("quota", {"metric": "CPUS", "limit": 1024})
    assert check.status == "fail" and "needs 2 vCPUs" in check.detail
    assert "FAIL" in check.line() and "-> request more at https://console.cloud.google.com/iam-admin/quotas" in check.line()


def test_invoke_setup(localcloud, tmp_path):
    env = localcloud.env(state_dir=str(tmp_path / "state"), machine_type="e2-standard-2",
                         bucket=f"setup-{uuid.uuid4().hex[:10]}")
    proc = subprocess.run([sys.executable, "-m", "invoke", "setup"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[ok  ] bucket" in proc.stdout and "setup: all checks passed" in proc.stdout


def test_bucket_not_locked_down_on_gcp_says_how_to_fix(monkeypatch, localcloud, tmp_path):
    cfg = vm_config(localcloud, tmp_path / "state").replace(backend="gcp")
    loose = types.SimpleNamespace(iam_configuration=types.SimpleNamespace(
        uniform_bucket_level_access_enabled=False, public_access_prevention="inherited"))
    monkeypatch.setattr(storage, "ensure_bucket", lambda cfg: False)
    monkeypatch.setattr(storage, "client", lambda cfg: types.SimpleNamespace(get_bucket=lambda name, retry=None: loose))
    check = preflight.check_bucket(cfg)
    assert check.status == "fail" and "uniform bucket-level access is off" in check.detail
    assert "--uniform-bucket-level-access --public-access-prevention" in check.fix
