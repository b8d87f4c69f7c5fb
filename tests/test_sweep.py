"""The sweeper: deletes overdue and stopped ops-hpc VMs, spares unlabeled ones and live on-time runs; lock; install lines."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from filelock import FileLock

from lib import compute, sweep
from lib.compute import Vm
from lib.errors import UsageError
from tests.support.bins import run_bin
from tests.support.vms import vm_env


@pytest.fixture
def vms(localcloud, tmp_path):
    yield from vm_env(localcloud, tmp_path)


def test_decide_rules():
    now = 10_000.0
    vm = Vm(name="v", zone="z", ours=True, status="RUNNING", expected_end=9_000)
    assert sweep.decide(replace(vm, ours=False), now=now, grace_s=0)[0] == "orphan"
    assert sweep.decide(replace(vm, ours=False, status="TERMINATED"), now=now, grace_s=0)[0] == "orphan"
    assert sweep.decide(replace(vm, status="TERMINATED", expected_end=99_999), now=now, grace_s=0)[0] == "delete"
    assert sweep.decide(vm, now=now, grace_s=900)[0] == "delete"  # 1000 s late, 900 s grace
    assert sweep.decide(vm, now=now, grace_s=1200)[0] == "keep"
    assert sweep.decide(vm, now=now, grace_s=600)[0] == "delete"
    assert sweep.decide(vm, now=now, grace_s=600, state_end=9_900)[0] == "keep"  # an extension in session state
    assert sweep.decide(replace(vm, expected_end=None), now=now, grace_s=0)[0] == "keep"


def test_sweep_deletes_overdue_and_stopped_spares_unlabeled_and_live(vms):
    cfg = vms.cfg
    overdue, stopped, live = vms.create(), vms.create(), vms.create(kind="analysis", job_timeouts_min=[60],
                                                                      image="projects/cloud-hpc-image-public/global/images/family/hpc-rocky-linux-8")
    unlabeled = vms.create(labels=False)
    compute.set_expected_end(cfg, overdue, time.time() - 3600)  # an hour past its expected end
    compute.stop_vm(cfg, stopped, on_log=vms.log)

    lines: list[str] = []
    dry = sweep.sweep(cfg, dry_run=True, on_log=lines.append, on_warn=lines.append)
    assert {i.name for i in dry.would_delete} >= {overdue, stopped} and dry.deleted == []
    assert compute.get_vm(cfg, overdue).status == "RUNNING"  # dry run touched nothing

    result = sweep.sweep(cfg, grace_min=15, on_log=lines.append, on_warn=lines.append)
    deleted = {d.name: d.reason for d in result.deleted}
    assert "overdue" in deleted[overdue] and "TERMINATED" in deleted[stopped]
    assert live in {k.name for k in result.kept}
    assert unlabeled in {o.name for o in result.orphans}
    assert compute.get_vm(cfg, overdue) is None and compute.get_vm(cfg, stopped) is None
    assert compute.get_vm(cfg, live).status == "RUNNING"
    assert compute.get_vm(cfg, unlabeled).status == "RUNNING"
    assert any(unlabeled in line and "left alone" in line for line in lines)
    compute.delete_vm(cfg, live, on_log=vms.log)
    compute.delete_vm(cfg, unlabeled, force=True, on_log=vms.log)


def test_concurrent_sweep_is_skipped_while_lock_held(vms):
    name = vms.create()
    compute.set_expected_end(vms.cfg, name, time.time() - 7200)
    with FileLock(str(vms.cfg.state_path / sweep.LOCK_FILE)):
        result = sweep.sweep(vms.cfg, on_log=vms.log)
    assert result.skipped and compute.get_vm(vms.cfg, name) is not None
    assert [d.name for d in sweep.sweep(vms.cfg, on_log=vms.log).deleted] == [name]


def test_bin_sweep_dry_run_then_real(vms, localcloud):
    name = vms.create()
    compute.set_expected_end(vms.cfg, name, time.time() - 7200)
    env = localcloud.env(state_dir=vms.cfg.state_dir)
    dry = run_bin("sweep", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"would delete {name}" in dry.stdout and compute.get_vm(vms.cfg, name) is not None
    real = run_bin("sweep", "--grace", "5", env=env)
    assert real.returncode == 0, real.stderr
    assert f"deleted {name}" in real.stdout and compute.get_vm(vms.cfg, name) is None


@pytest.mark.skipif(os.name == "nt", reason="fake crontab is a shell script")
def test_install_prints_then_installs_once_with_a_fake_crontab(tmp_path, localcloud):
    fake = tmp_path / "bin"
    fake.mkdir()
    book = tmp_path / "crontab.txt"
    (fake / "crontab").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-l" ]; then [ -f {book} ] && cat {book} && exit 0; echo "no crontab" >&2; exit 1; fi\n'
        f'if [ "$1" = "-" ]; then cat > {book}; exit 0; fi\nexit 2\n')
    (fake / "crontab").chmod((fake / "crontab").stat().st_mode | stat.S_IEXEC)
    env = localcloud.env(state_dir=str(tmp_path / "state"))
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    shown = run_bin("sweep", "--install", env=env)
    assert shown.returncode == 0 and not book.exists(), shown.stderr
    expected = next(row for row in shown.stdout.splitlines() if row.startswith("*/5 * * * * "))
    assert f"--state-dir {tmp_path / 'state'}" in expected
    for _ in range(2):
        done = run_bin("sweep", "--install", "--yes", env=env)
        assert done.returncode == 0, done.stderr
    assert book.read_text().splitlines() == [expected]  # added once, not twice
    win = run_bin("sweep", "--install", "--windows", env=env)
    assert "\nschtasks /Create /SC MINUTE /MO 5 /TN ops-hpc-sweep /TR " in "\n" + win.stdout


def test_cleanup_asks_then_deletes_our_vms_and_wipes_bucket(vms, localcloud):
    cfg = vms.cfg.replace(bucket=localcloud.new_bucket("clean").bucket_name)
    from lib import storage

    storage.upload_bytes(cfg, "run-a/out.txt", b"1")
    storage.upload_bytes(cfg, "_staging/x", b"2")
    ours, theirs = vms.create(), vms.create(labels=False)
    asked: list[str] = []
    no = sweep.cleanup(cfg, confirm=lambda q: asked.append(q) or False, on_log=vms.log)
    assert no["cancelled"] and compute.get_vm(cfg, ours) is not None and len(storage.list_blobs(cfg)) == 2
    assert ours in asked[0] and "2 object(s)" in asked[0]
    done = sweep.cleanup(cfg, confirm=lambda q: True, on_log=vms.log)
    assert ours in done["vms_deleted"] and done["objects_deleted"] == 2
    assert compute.get_vm(cfg, ours) is None and storage.list_blobs(cfg) == []
    assert compute.get_vm(cfg, theirs) is not None  # never an unlabeled VM
    compute.delete_vm(cfg, theirs, force=True, on_log=vms.log)


def _corrupt_state(cfg) -> bytes:
    from lib.state import STATE_FILE

    path = cfg.state_path / STATE_FILE
    path.write_bytes(b'{"version": 1, "vms": {"x": ')  # a crash mid-write by some other tool, or a bad edit
    return path.read_bytes()


def test_sweep_and_cleanup_work_from_labels_when_the_state_file_is_corrupt(vms, localcloud):
    """A corrupt session_state.json disables no safety net: the sweeper deletes the overdue VM, cleanup deletes
    ours, and neither touches the file (status is the one that moves it aside)."""
    from lib.state import STATE_FILE

    overdue, other = vms.create(), vms.create()
    compute.set_expected_end(vms.cfg, overdue, time.time() - 7200)
    before = _corrupt_state(vms.cfg)
    real = run_bin("sweep", env=localcloud.env(state_dir=vms.cfg.state_dir))
    assert real.returncode == 0, real.stderr
    assert f"deleted {overdue}" in real.stdout and "not valid JSON" in real.stdout
    assert compute.get_vm(vms.cfg, overdue) is None and compute.get_vm(vms.cfg, other) is not None
    done = sweep.cleanup(vms.cfg.replace(bucket=localcloud.new_bucket("corrupt").bucket_name),
                         confirm=lambda q: True, on_log=vms.log)
    assert other in done["vms_deleted"] and compute.get_vm(vms.cfg, other) is None
    assert (vms.cfg.state_path / STATE_FILE).read_bytes() == before


def test_a_negative_grace_is_refused_in_one_line(vms, localcloud):
    """--grace -60 would delete a run an hour before its expected end."""
    name = vms.create()
    proc = run_bin("sweep", "--grace", "-60", env=localcloud.env(state_dir=vms.cfg.state_dir))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "grace -60" in proc.stderr, proc.stderr
    assert compute.get_vm(vms.cfg, name).status == "RUNNING"
    with pytest.raises(UsageError):
        sweep.sweep(vms.cfg, grace_min=-1, on_log=vms.log)
    compute.delete_vm(vms.cfg, name, on_log=vms.log)


def test_summary_line_counts_what_reconcile_deleted(vms, localcloud):
    """The cron log's one line must not say '0 deleted' when the sweep's reconcile deleted a dead guard's VM."""
    from lib import jsonfile
    from lib.state import STATE_FILE

    name = vms.create()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with jsonfile.edit(vms.cfg.state_path / STATE_FILE) as data:
        data["vms"][name].update(owner={"pid": dead.pid, "create_time": None, "host": "", "since": 0}, guarded=True)
    proc = run_bin("sweep", env=localcloud.env(state_dir=vms.cfg.state_dir))
    assert proc.returncode == 0, proc.stderr
    assert compute.get_vm(vms.cfg, name) is None
    assert proc.stdout.strip().splitlines()[-1].startswith("sweep: 1 deleted,"), proc.stdout


def test_sweep_tidies_the_bookkeeping_of_finished_runs(localcloud, bucket, monkeypatch, tmp_path):
    """The cron sweeper empties the bucket of runs that are over: all results pulled, no VM left."""
    from lib import clients, storage

    monkeypatch.setattr(compute, "list_vms_in_zones", lambda *a, **k: [])  # no VM of this bucket's runs is left
    for name, data in (("_uploads/run-old/batch.json", '{"models": [{"name": "a", "timeout_min": 1}]}'),
                       ("_status/run-old/vm.txt", "format=1\nrun_id=run-old\nstate=done\nmodel.a=ok 1.0\n"),
                       ("_logs/run-old/a.log", "done\n")):
        storage.upload_bytes(bucket, name, data.encode())
    cfg = clients.resolve(bucket).replace(state_dir=str(tmp_path / "state"))  # endpoints resolved, own state
    dry = sweep.sweep(cfg, dry_run=True, now=time.time() + 2 * 3600)
    assert dry.tidied == [] and len(storage.list_blobs(bucket)) == 3  # a dry run removes nothing
    result = sweep.sweep(cfg, now=time.time() + 2 * 3600)
    assert result.tidied == ["run-old"] and storage.list_blobs(bucket) == []
    assert "1 finished run(s) tidied" in result.summary()
