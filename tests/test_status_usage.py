"""status --usage: 30 days of uptime priced per VM and added up per run, as text, JSON and CSV.

Two runs on the local cloud (two VMs of one run, one of another with a bigger machine type); run ids and
machine types come from this PC's history, or from Monitoring's metadata on a PC that never saw the VMs.
"""

from __future__ import annotations

import csv
import io
import json
import time

import pytest

from lib import compute, pricing, status
from tests.support.bins import run_bin
from tests.support.vms import vm_env


@pytest.fixture
def vms(localcloud, tmp_path):
    yield from vm_env(localcloud, tmp_path)


@pytest.fixture
def two_runs(vms):
    """run A: 2 x e2-standard-2, run B: 1 x e2-standard-4; all ran about a second and are deleted again."""
    made = {}
    for run, machine in (("a", "e2-standard-2"), ("a", "e2-standard-2"), ("b", "e2-standard-4")):
        name = vms.name()
        spec = compute.plan_vm(vms.cfg, name=name, kind="build", run_id=f"{vms.prefix}-run-{run}",
                               startup_script="sleep 600", machine_type=machine)
        compute.create_vm(vms.cfg, spec, on_log=vms.log)
        made[name] = (f"{vms.prefix}-run-{run}", machine)
    time.sleep(1.5)
    for name in made:
        compute.delete_vm(vms.cfg, name, on_log=vms.log)
    return made


def _ours(rows, prefix):
    return [r for r in rows if r.get("name", r.get("run_id", "")).startswith(prefix)]


def test_usage_prices_each_vm_and_adds_them_up_per_run(vms, two_runs):
    u = status.usage(vms.cfg)
    rows = {r["name"]: r for r in u["vms"] if r["name"] in two_runs}
    assert set(rows) == set(two_runs)
    for name, (run_id, machine) in two_runs.items():
        r = rows[name]
        assert (r["run_id"], r["machine_type"]) == (run_id, machine) and r["seconds"] >= 1
        assert r["cost_usd"] == pytest.approx(pricing.hourly(vms.cfg, machine) * r["seconds"] / 3600, abs=1e-4)
    runs = {r["run_id"]: r for r in u["runs"] if r["run_id"].startswith(vms.prefix)}
    a, b = runs[f"{vms.prefix}-run-a"], runs[f"{vms.prefix}-run-b"]
    assert len(a["vms"]) == 2 and len(b["vms"]) == 1 and a["unpriced_vms"] == b["unpriced_vms"] == 0
    assert a["cost_usd"] == pytest.approx(sum(rows[n]["cost_usd"] for n in a["vms"]), abs=1e-4)
    assert a["seconds"] == pytest.approx(sum(rows[n]["seconds"] for n in a["vms"]), abs=0.2)
    assert b["cost_usd"] == pytest.approx(rows[b["vms"][0]]["cost_usd"], abs=1e-4)
    text = "\n".join(status.format_status({"project": "p", "zone": "z", "vms": [], "other_vms": [], "errors": [],
                                           "prices": u["prices"], "usage": u}))
    assert f"run {vms.prefix}-run-a: 2 VM(s)" in text and f"run {vms.prefix}-run-b: 1 VM(s)" in text


def test_a_pc_that_never_saw_the_vms_gets_run_and_machine_from_monitoring(vms, two_runs, tmp_path):
    """Another PC: empty session state, the VMs are gone from Compute; Monitoring's labels still say it all."""
    other = vms.cfg.replace(state_dir=str(tmp_path / "other-pc"))
    u = status.usage(other)
    rows = {r["name"]: r for r in u["vms"] if r["name"] in two_runs}
    for name, (run_id, machine) in two_runs.items():
        assert (rows[name]["run_id"], rows[name]["machine_type"]) == (run_id, machine)
        assert rows[name]["cost_usd"] is not None
    assert {r["run_id"] for r in u["runs"]} >= {run_id for run_id, _ in two_runs.values()}


def test_csv_and_json_from_the_command_line(localcloud, vms, two_runs, bucket):
    env = localcloud.env(state_dir=vms.cfg.state_dir, machine_type="e2-standard-2", bucket=bucket.bucket_name)
    proc = run_bin("status", "--usage", "--csv", env=env)
    assert proc.returncode == 0, proc.stderr
    table = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert tuple(table[0]) == status.CSV_COLUMNS
    vm_rows = {r["name"]: r for r in table if r["level"] == "vm" and r["name"] in two_runs}
    assert set(vm_rows) == set(two_runs)
    assert all(float(r["cost_usd"]) > 0 and r["run_id"] == two_runs[n][0] for n, r in vm_rows.items())
    run_rows = {r["name"]: r for r in table if r["level"] == "run" and r["name"].startswith(vms.prefix)}
    run_a = run_rows[f"{vms.prefix}-run-a"]
    expected = sum(float(r["cost_usd"]) for r in vm_rows.values() if r["run_id"] == run_a["name"])
    assert float(run_a["cost_usd"]) == pytest.approx(expected, abs=1e-3)
    (total,) = [r for r in table if r["level"] == "total"]
    assert "list prices" in total["note"] and "taken 2026-" in total["note"]
    proc = run_bin("status", "--usage", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    runs = {r["run_id"]: r for r in json.loads(proc.stdout)["usage"]["runs"]}
    assert len(runs[f"{vms.prefix}-run-a"]["vms"]) == 2 and runs[f"{vms.prefix}-run-b"]["cost_usd"] > 0
    proc = run_bin("status", "--csv", "--json", env=env)
    assert proc.returncode == 2 and "choose one" in proc.stderr


def test_usage_by_run_counts_unpriced_vms_and_vms_without_a_run():
    rows = [{"name": "v1", "run_id": "r1", "seconds": 3600.0, "cost_usd": 0.5},
            {"name": "v2", "run_id": "r1", "seconds": 1800.0, "cost_usd": None},
            {"name": "v3", "run_id": "", "seconds": 60.0, "cost_usd": 0.01}]
    runs = {r["run_id"]: r for r in status.usage_by_run(rows)}
    assert runs["r1"] == {"run_id": "r1", "vms": ["v1", "v2"], "seconds": 5400.0, "hours": 1.5, "cost_usd": 0.5,
                          "unpriced_vms": 1}
    assert runs[""]["vms"] == ["v3"]
