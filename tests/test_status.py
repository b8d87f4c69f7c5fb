"""status: image, VM rows with time left and cost so far, bucket result sets and storage cost, 30-day usage."""

from __future__ import annotations

import time

import pytest

from lib import compute, pricing, status, storage
from tests.support.bins import run_bin
from tests.support.vms import ensure_opensees_image, vm_env


@pytest.fixture
def vms(localcloud, tmp_path):
    yield from vm_env(localcloud, tmp_path)


def test_status_shows_image_vm_bucket_and_usage(vms, bucket):
    cfg = vms.cfg.replace(bucket=bucket.bucket_name)
    ensure_opensees_image(cfg)
    storage.upload_bytes(cfg, "run-a/model1.zip", b"x" * 1000)
    storage.upload_bytes(cfg, "run-b.zip", b"y" * 500)
    storage.upload_bytes(cfg, "_staging/batch.json", b"{}")
    name = vms.create(kind="analysis", job_timeouts_min=[60])
    time.sleep(1.2)
    info = status.status(cfg, with_usage=True, on_log=vms.log, on_warn=vms.log)
    assert info["image"]["family"] == "opensees-hpc" and info["image"]["name"].startswith("opensees-hpc")
    row = next(r for r in info["vms"] if r["name"] == name)
    assert row["status"] == "RUNNING" and row["machine_type"] == "e2-standard-2" and row["spot"] is False
    assert row["uptime_s"] >= 1
    assert 60 * 60 < row["left_expected_s"] <= (60 + 30 + 1) * 60          # 60 + 30 + 1 min
    assert 7200 - 60 < row["left_max_run_s"] <= 7200                       # rounded up to 2 h
    assert row["cost_so_far_usd"] == pytest.approx(0.067 * row["uptime_s"] / 3600, abs=0.01)
    sets = {s["name"]: s for s in info["bucket"]["result_sets"]}
    assert set(sets) == {"run-a/model1", "run-b"} and sets["run-a/model1"]["bytes"] == 1000  # as pull --list counts them
    assert info["bucket"]["usd_per_month"] == pytest.approx(pricing.storage_monthly(cfg, 1502), abs=1e-4)
    used = {u["name"]: u for u in info["usage"]["vms"]}
    assert used[name]["machine_type"] == "e2-standard-2" and used[name]["seconds"] >= 1
    assert used[name]["cost_usd"] == pytest.approx(0.067 * used[name]["seconds"] / 3600, abs=1e-4)
    text = "\n".join(status.format_status(info))
    assert name in text and "to max run" in text and "taken 2026-" in text
    compute.delete_vm(cfg, name, on_log=vms.log)


def test_usage_keeps_deleted_vms_priced_from_history(vms):
    name = vms.create()
    time.sleep(1.1)
    compute.delete_vm(vms.cfg, name, on_log=vms.log)
    used = {u["name"]: u for u in status.usage(vms.cfg)["vms"]}
    assert used[name]["machine_type"] == "e2-standard-2" and used[name]["cost_usd"] is not None


def test_price_table_override(vms, tmp_path):
    table = tmp_path / "prices.toml"
    table.write_text('taken = "2030-01-01"\nregion = "us-central1"\n[machine_types]\n"e2-standard-2" = 1.5\n')
    cfg = vms.cfg.replace(price_table=str(table))
    assert pricing.hourly(cfg, "e2-standard-2") == 1.5 and "taken 2030-01-01" in pricing.note(cfg)
    assert pricing.hourly(cfg, "h3-standard-88") is None


def test_bin_status_runs(vms, bucket):
    proc = run_bin("status", env=vms.cloud.env(state_dir=vms.cfg.state_dir, bucket=bucket.bucket_name))
    assert proc.returncode == 0, proc.stderr
    assert "image:" in proc.stdout and "VMs:" in proc.stdout and "prices:" in proc.stdout


def test_status_moves_a_corrupt_state_file_aside_and_goes_on(vms):
    from lib.state import STATE_FILE, SessionState

    name = vms.create()
    path = vms.cfg.state_path / STATE_FILE
    path.write_bytes(b'{"vms": {')
    warnings: list[str] = []
    info = status.status(vms.cfg, on_log=vms.log, on_warn=warnings.append)
    moved = list(vms.cfg.state_path.glob(f"{STATE_FILE}.corrupt-*"))
    assert [str(m) for m in moved] == [info["state_moved_aside"]] and moved[0].read_bytes() == b'{"vms": {'
    assert any("moved aside" in w for w in warnings)
    assert name in {r["name"] for r in info["vms"]}  # the VMs still show (as orphans: the labels say they are ours)
    assert SessionState(vms.cfg).readable()
    compute.delete_vm(vms.cfg, name, on_log=vms.log)


def test_a_labelled_vm_that_never_reported_is_deleted_whoever_launched_it(vms, bucket):
    """A launcher killed mid-insert (on this PC or another) leaves a VM nobody guards: a run-staged VM that has
    published no first status long after its launch is deleted by status; one that reported, or is young, stays."""
    from lib.state import SessionState

    cfg = vms.cfg.replace(bucket=f"t-never-made-{time.time_ns()}")  # the VMs' own bucket is the one looked in
    long_ago, where = time.time() - 300, {"ops-hpc-bucket": bucket.bucket_name}
    silent = vms.create(reports_status=True, now=long_ago, metadata=where)
    spoke = vms.create(reports_status=True, now=long_ago, metadata=where)
    lost = vms.create(reports_status=True, now=long_ago)  # its bucket (the configured one) does not exist: kept
    young = vms.create(reports_status=True)
    quiet_by_design = vms.create(now=long_ago)  # not a run-staged VM: it publishes no status, and is kept
    storage.upload_bytes(bucket, f"_status/{compute.get_vm(cfg, spoke).run_id}/{spoke}.txt", b"format=1 state=running")
    for name in (silent, spoke, lost, young, quiet_by_design):
        SessionState(cfg).unregister_vm(name)  # as if launched from another PC
    warnings: list[str] = []
    info = status.status(cfg, on_log=vms.log, on_warn=warnings.append, first_status_s=120)
    assert info["reconcile"]["deleted"] == [silent] and compute.get_vm(cfg, silent) is None
    assert any(silent in w and "never reported a first status" in w for w in warnings)
    for name in (spoke, lost, young, quiet_by_design):
        assert compute.get_vm(cfg, name).status == "RUNNING"
        compute.delete_vm(cfg, name, on_log=vms.log)
