"""The run pipeline on the local cloud with real OpenSees: deadlines, an extension from another process, SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lib import compute, runjobs, runs, ssh, storage
from tests.support.bins import REPO
from tests.support.pipelines import jobs_file, opensees_image, quiet, wait_for
from tests.support.vms import unique, vm_config

MINUTE_S = 3.0  # one job "minute" lasts 3 s here


def test_three_jobs_timeout_extension_from_another_process_and_background_pushes(localcloud, tmp_path):
    bucket = localcloud.new_bucket("run")
    state_dir = tmp_path / "state"
    cfg = vm_config(localcloud, state_dir, bucket=bucket.bucket_name)
    image = opensees_image(cfg)
    jobs = jobs_file(tmp_path / "jobs", ["endless timeout=1", "slow timeout=1 cores=2", "quick timeout=1"])
    env = {**localcloud.env(state_dir=state_dir)}
    extenders: list[subprocess.Popen] = []
    logs: list[str] = []
    lines: list[str] = []

    def on_log(text: str) -> None:
        logs.append(text)
        if text.startswith("job slow: openseesmp"):  # `make extend` from another terminal, while slow runs
            extenders.append(subprocess.Popen([sys.executable, "-m", "invoke", "extend", "--minutes", "2"], cwd=REPO,
                                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))

    name = unique("run")
    started = time.monotonic()
    result = runjobs.run_jobs(cfg, jobs, name=name, image=image, on_log=on_log, on_line=lines.append,
                              time_scale=60 / MINUTE_S, check_s=0.2, push_method="curl")
    elapsed = time.monotonic() - started
    by_name = {j.name: j for j in result.jobs}

    # endless: killed at its deadline, the run went on
    assert by_name["endless"].state == "timeout"
    assert MINUTE_S <= by_name["endless"].seconds < MINUTE_S + 3
    # slow: would have been killed at 3 s (it needs ~4 s); the other process's extension let it finish
    assert by_name["slow"].state == "finished", logs
    assert by_name["slow"].extended_min == 2 and by_name["slow"].seconds > MINUTE_S
    out, _ = extenders[0].communicate(timeout=30)
    assert extenders[0].returncode == 0 and "asked job slow" in out
    assert by_name["quick"].state == "finished"
    assert "analysis complete" in lines and "step 1" in lines

    # every job's folder was pushed as a legacy tree, the killed one with its partial results
    names = {b.name for b in storage.list_blobs(cfg)}
    for job in result.jobs:
        prefix = job.pushed[0]["prefix"]
        assert prefix.startswith(f"{job.name}_") and f"{prefix}progress.txt" in names and f"{prefix}main.tcl" in names
    partial = storage.download_bytes(cfg, by_name["endless"].pushed[0]["prefix"] + "progress.txt").decode()
    assert partial.startswith("step 1 ") and "step 100000" not in partial
    assert "step 1\n" in Path(by_name["endless"].log).read_text()

    assert result.deleted and compute.get_vm(cfg, name) is None
    assert not (state_dir / "deadlines" / f"{name}.json").exists()
    # `ops-hpc runs` lists it from its launch record: its jobs' states, the VM's machine type
    (row,) = [r for r in runs.list_runs(cfg) if r["run_id"] == result.run_id]
    assert row["kind"] == "run" and row["model_states"] == {"endless": "timeout", "quick": "ok", "slow": "ok"}
    assert row["vms"][0]["machine_type"] == cfg.machine_type and row["state"] == "failed" and row["ended"]
    print(f"three-job run: {elapsed:.1f} s")


CHILD = """
import sys
sys.path.insert(0, {repo!r})
from lib import cli, runjobs
from lib.config import Config
cfg = Config.load({{"machine_type": "e2-standard-2"}})
cli.run(lambda argv: runjobs.run_jobs(cfg, {jobs!r}, name={name!r}, image={image!r}, log_dir={logs!r},
                                      on_line=lambda s: None, push_method="curl") and 0)
"""


def _run_jobs_child(localcloud, state_dir, jobs, name: str, image: str, logs) -> subprocess.Popen:
    """`make run` of `jobs` in a child process (so a test can send it SIGINT), output merged on stdout."""
    code = CHILD.format(repo=str(REPO), jobs=str(jobs), name=name, image=image, logs=str(logs))
    return subprocess.Popen([sys.executable, "-c", code], env=localcloud.env(state_dir=state_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigint_during_a_job_deletes_the_vm(localcloud, tmp_path):
    state_dir = tmp_path / "state"
    cfg = vm_config(localcloud, state_dir)
    image = opensees_image(cfg)
    jobs = jobs_file(tmp_path / "jobs", ["endless timeout=60"], models=("endless",))
    name = unique("sigint")
    child = _run_jobs_child(localcloud, state_dir, jobs, name, image, tmp_path / "logs")
    try:
        log = tmp_path / "logs" / "endless.log"
        wait_for(lambda: log.exists() and "step 3" in log.read_text(), timeout=30)
        assert compute.get_vm(cfg, name) is not None
        disk = ssh.local_vm(cfg, name)["disk"]
        os.kill(child.pid, signal.SIGINT)
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, out
    assert f"VMGuard: deleting VM {name} (SIGINT received)" in out
    assert compute.get_vm(cfg, name) is None
    time.sleep(0.5)
    size = len(log.read_text())
    time.sleep(0.5)
    assert len(log.read_text()) == size  # OpenSees stopped with the VM
    assert not os.path.exists(disk)
    compute.delete_vm(cfg, name, on_log=quiet)  # (no-op) nothing left behind


def test_sigint_while_a_push_uploads_lets_it_finish_and_seal_before_the_delete(localcloud, tmp_path, faults):
    state_dir = tmp_path / "state"
    cfg = vm_config(localcloud, state_dir)
    image = opensees_image(cfg)
    jobs = jobs_file(tmp_path / "jobs", ["many timeout=5", "endless timeout=60"], models=("endless",))
    (jobs.parent / "many").mkdir()
    (jobs.parent / "many" / "main.tcl").write_text(
        "for {set i 0} {$i < 30} {incr i} { set f [open out_$i.txt w]; puts $f $i; close $f }\n")
    faults("storage", "delay", count=10_000, match="name=many_", seconds=0.3)  # job 1's push takes ~10 s
    name = unique("sigpush")
    child = _run_jobs_child(localcloud, state_dir, jobs, name, image, tmp_path / "logs")
    try:
        log = tmp_path / "logs" / "endless.log"
        wait_for(lambda: log.exists() and "step 3" in log.read_text(), timeout=60)  # job 2 runs, job 1 pushes
        os.kill(child.pid, signal.SIGINT)
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, out
    assert f"before deleting VM {name}; Ctrl+C again deletes it now" in out, out
    assert out.index("pushed many -> ") < out.index(f"VMGuard: deleting VM {name}"), out
    assert compute.get_vm(cfg, name) is None
    names = [b.name for b in storage.list_blobs(cfg, "many_")]
    assert sum(1 for n in names if "/out_" in n) == 30 and any(n.endswith("/MANIFEST.json") for n in names), names
