"""`ops-hpc runs` across two runs and two PCs (two state folders, one bucket), with real VMs on the local cloud.

PC A launches a run without waiting and is "switched off" (nothing follows it: the VM finishes, uploads
and deletes itself); PC B launches a run whose model is still running when both PCs list. The bucket is
the source of truth: both see both runs; only the PC that pulled sees results "pulled and verified here".
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import uuid
from pathlib import Path

import pytest

from lib import compute, runs, runstaged, stage, storage
from tests.support import wait_for
from tests.support.bins import run_bin
from tests.support.vms import SMALL, vm_config

REPO = Path(__file__).resolve().parents[1]
SLOW_TCL = """file mkdir output
set f [open output/started.out w]
puts $f "0.0 1.0"
close $f
after 120000
"""


@pytest.fixture
def pcs(localcloud, tmp_path):
    """Two PCs: their own state folder and results folder, one bucket."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    a, b = (vm_config(localcloud, tmp_path / f"pc-{x}", bucket=name, time_scale=30,
                      results_dir=str(tmp_path / f"results-{x}")) for x in "ab")
    storage.ensure_bucket(a)
    yield a, b
    for vm in compute.list_vms(a):
        if storage.list_blobs(a, f"_status/{vm.run_id}/"):
            compute.delete_vm(a, vm.name, on_log=lambda _: None)


def _batch(base: Path, models: dict[str, str]) -> Path:
    lines = []
    for name, spec in models.items():
        if spec.startswith("example:"):
            shutil.copytree(REPO / "batches" / "examples" / spec[8:], base / name)
            lines.append(name)
        else:
            (base / name).mkdir(parents=True)
            (base / name / "main.tcl").write_text(spec)
            lines.append(f"{name} timeout=60")
    (base / "batch.txt").write_text("\n".join(lines) + "\n")
    return base / "batch.txt"


def _by_id(rows):
    return {r["run_id"]: r for r in rows}


def test_two_runs_two_pcs_one_bucket(pcs, image, tmp_path, localcloud):
    pc_a, pc_b = pcs
    # PC A launches and is switched off: nothing follows the run
    run_a = runstaged.run_staged(pc_a, _batch(tmp_path / "a", {"frame": "example:frame_pushover",
                                                               "truss": "example:truss_transient"}),
                                 wait=False, image=image)
    wait_for(lambda: compute.get_vm(pc_a, run_a.vms[0]) is None, 90, interval=0.5)
    time.sleep(1.1)  # run ids carry seconds: B is newer
    run_b = runstaged.run_staged(pc_b, _batch(tmp_path / "b", {"slow": SLOW_TCL}), wait=False, image=image)
    (vm_b,) = run_b.vms
    wait_for(lambda: "model.slow=running" in (storage.download_bytes(pc_b, f"_status/{run_b.run_id}/{vm_b}.txt") or b"")
          .decode(), 90, interval=0.5)

    rows = runs.list_runs(pc_b)
    assert [r["run_id"] for r in rows][:2] == [run_b.run_id, run_a.run_id]  # newest first
    b, a = rows[0], rows[1]
    assert b["state"] == "running" and b["models"]["running"] == 1 and b["ended"] is None
    (vm,) = b["vms"]
    assert vm["name"] == vm_b and vm["state"] == "running" and vm["exists"] is True
    assert vm["machine_type"] == SMALL and vm["host"] == socket.gethostname() and vm["spot"] is False
    assert b["cost_usd"] is not None and b["cost_usd"] > 0 and b["cost_basis"] == "list prices"
    assert a["state"] == "ok" and a["models"]["ok"] == 2 and a["vms"][0]["state"] == "done"
    assert a["results"]["in_bucket"] == 2 and a["results"]["pulled_verified"] == 0
    assert a["sources"] == ["bucket"] and "this PC" in b["sources"]  # PC B knows A only from the bucket
    assert a["duration_s"] and a["duration_s"] > 0 and a["cost_usd"] is not None

    # PC A is back: it pulls its run; the two PCs then say where the results are
    env_a = localcloud.env(bucket=pc_a.bucket_name, state_dir=pc_a.state_dir)
    pulled = run_bin("pull", "--yes", "--dir", pc_a.results_dir, env=env_a)
    assert pulled.returncode == 0, pulled.stderr
    a_on_a = _by_id(runs.list_runs(pc_a))[run_a.run_id]
    assert a_on_a["results"]["pulled_verified"] == 2 and "this PC" in a_on_a["sources"]
    a_on_b = _by_id(runs.list_runs(pc_b))[run_a.run_id]
    assert a_on_b["results"]["elsewhere"] == 2 and a_on_b["results"]["pulled_verified"] == 0

    # the command line, from PC B: --limit, --json, --since
    env_b = localcloud.env(bucket=pc_b.bucket_name, state_dir=pc_b.state_dir, results_dir=pc_b.results_dir)
    listed = run_bin("runs", "--json", "--limit", "1", env=env_b)
    assert listed.returncode == 0, listed.stderr
    assert [r["run_id"] for r in json.loads(listed.stdout)["runs"]] == [run_b.run_id]
    table = run_bin("runs", "--since", "1h", env=env_b)
    assert table.returncode == 0 and run_a.run_id in table.stdout and "list prices" in table.stdout
    print(table.stdout)
    assert "no runs known" in run_bin("runs", "--since", "2099-01-01", env=env_b).stdout
    assert run_bin("runs", "--since", "someday", env=env_b).returncode == 2

    # B's VM is deleted under it (its SIGTERM trap says preempted, if it gets the time): the unfinished model is
    # lost, not running
    compute.delete_vm(pc_b, vm_b, on_log=lambda _: None)
    b = _by_id(runs.list_runs(pc_b))[run_b.run_id]
    assert b["state"] == "lost" and b["models"]["lost"] == 1 and b["vms"][0]["state"] in ("preempted", "running, gone")
    assert b["ended"] is not None

    # tidying empties the bucket of A: only PC A (its history and downloads) still lists it
    assert run_a.run_id in stage.tidy_finished_runs(pc_a, grace_s=0)
    assert not storage.list_blobs(pc_a, f"_runs/{run_a.run_id}/")
    assert run_a.run_id not in _by_id(runs.list_runs(pc_b))
    a_later = _by_id(runs.list_runs(pc_a))[run_a.run_id]
    assert a_later["sources"] == ["this PC"] and a_later["models"]["ok"] == 2
    assert a_later["results"]["pulled_verified"] == 2 and a_later["vms"][0]["machine_type"] == SMALL
