"""run-staged's plan and cost first: --dry-run creates nothing, an expensive run needs a yes, auto machine choice.

Through `ops-hpc run-staged` as a user types it (a subprocess with no terminal), on the local cloud.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lib import compute, runstaged, storage
from lib.errors import Refused
from lib.state import SessionState
from tests.support.vms import SMALL, run_config

REPO = Path(__file__).resolve().parents[1]
QUICK_TCL = """file mkdir output
set f [open output/done.out w]
puts $f "finished"
close $f
"""


@pytest.fixture
def cfg(localcloud, tmp_path):
    return run_config(localcloud, tmp_path / "state")


@pytest.fixture
def batch(tmp_path) -> Path:
    base = tmp_path / "batch"
    for name in ("one", "two"):
        (base / name).mkdir(parents=True)
        (base / name / "main.tcl").write_text(QUICK_TCL)
    (base / "batch.txt").write_text("one timeout=2\ntwo timeout=3\n")
    return base / "batch.txt"


def _ops_hpc(localcloud, cfg, *args: str, **config) -> subprocess.CompletedProcess:
    """`ops-hpc ARGS` with no terminal on stdin, configured through the environment like a cron job."""
    env = localcloud.env(bucket=cfg.bucket, state_dir=cfg.state_dir, machine_type=SMALL, time_scale=30, **config)
    return subprocess.run([sys.executable, "-m", "lib.console", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def _nothing_created(cfg, vms_before: set[str]) -> None:
    assert storage.list_blobs(cfg) == []
    assert {v.name for v in compute.list_vms(cfg, ours_only=False)} <= vms_before
    assert SessionState(cfg).history() == {}


def test_dry_run_prints_the_plan_and_its_cost_and_creates_nothing(localcloud, cfg, batch):
    before = {v.name for v in compute.list_vms(cfg, ours_only=False)}
    proc = _ops_hpc(localcloud, cfg, "run-staged", "--batch", str(batch), "--vms", "2", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    for needle in ("2 VM(s) of e2-standard-2", "VM 1: 1 model(s) (two)", "VM 2: 1 model(s) (one)", "1 core(s) used",
                   "predicted makespan 0h04m", "max run duration 0h41m", "expected 0.", "worst case 0.13 USD",
                   "list prices", "nothing was staged or created"):
        assert needle in proc.stdout, (needle, proc.stdout)
    proc = _ops_hpc(localcloud, cfg, "run-staged", "--batch", str(batch), "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["machine_type"] == "e2-standard-2" and plan["vms"] == 1 and plan["worst_usd"] == 0.07
    assert plan["per_vm"][0]["models"] == ["one", "two"] and plan["per_vm"][0]["makespan_s"] == 420  # 1 usable core
    _nothing_created(cfg, before)


def test_an_expensive_run_without_a_terminal_is_refused_with_exit_3(localcloud, cfg, batch):
    before = {v.name for v in compute.list_vms(cfg, ours_only=False)}
    proc = _ops_hpc(localcloud, cfg, "run-staged", "--batch", str(batch), confirm_above_usd="0.05")
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "worst-case cost 0.07 USD" in last and "confirm_above_usd = 0.05" in last and "--yes" in last
    _nothing_created(cfg, before)


def test_declining_at_the_prompt_creates_nothing(cfg, batch, image):
    before = {v.name for v in compute.list_vms(cfg, ours_only=False)}
    asked: list[str] = []
    with pytest.raises(Refused, match="not confirmed"):
        runstaged.run_staged(cfg.replace(confirm_above_usd=0.0), batch, image=image,
                             ask=lambda q: asked.append(q) is not None)
    assert len(asked) == 1 and "worst-case cost" in asked[0]
    _nothing_created(cfg, before)


def test_yes_launches_and_auto_picks_the_cheapest_listed_machine_that_fits(localcloud, cfg, batch, image, tmp_path):
    """With --yes above the threshold the run goes ahead; auto skips e2-standard-2, not in machine_types here."""
    proc = _ops_hpc(localcloud, cfg, "run-staged", "--batch", str(batch), "--machine-type", "auto", "--yes",
                    "--wait", "--dir", str(tmp_path / "results"), confirm_above_usd="0.01",
                    machine_types="e2-standard-8,e2-standard-4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 VM(s) of e2-standard-4 (auto: cheapest of e2-standard-4, e2-standard-8" in proc.stderr
    run_id = proc.stdout.split()[0]
    for model in ("one", "two"):
        assert (tmp_path / "results" / run_id / model / "output" / "done.out").read_text().strip() == "finished"
    (vm,) = [n for n, h in SessionState(cfg).history().items() if h["run_id"] == run_id]
    assert SessionState(cfg).history()[vm]["machine_type"] == "e2-standard-4"
    assert compute.get_vm(cfg, vm) is None


def test_auto_refuses_a_model_no_listed_machine_fits_before_anything_exists(localcloud, cfg, batch):
    before = {v.name for v in compute.list_vms(cfg, ours_only=False)}
    batch.write_text("one timeout=2 cores=16\n")
    proc = _ops_hpc(localcloud, cfg, "run-staged", "--batch", str(batch), "--machine-type", "auto",
                    machine_types="e2-standard-2,e2-standard-8")
    assert proc.returncode == 2 and "fits one (cores=16)" in proc.stderr, proc.stderr
    proc = _ops_hpc(localcloud, cfg, "run-staged", "--batch", str(batch), "--machine-type", "e2-standard-8")
    assert proc.returncode == 2 and "more cores than e2-standard-8 has (4 usable)" in proc.stderr, proc.stderr
    _nothing_created(cfg, before)
