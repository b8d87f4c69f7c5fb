"""Watch mode and an unusable results folder: outages are one line and a backoff; a bad folder is one line, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib import results
from lib.downloads import StateError, Tracker
from lib.errors import OpsError, UsageError
from tests.support.bins import run_bin
from tests.support.results import make_zip, names, put

LISTING = r"GET /storage/v1/b/[^/]+/o\?"


def test_watch_rides_out_a_503_storm_on_listing(bucket, tmp_path, faults):
    put(bucket, "run-1/a.zip", make_zip({"a.out": b"1\n"}))
    faults("storage", "http:503", 12, match=LISTING)  # two whole polls' worth of retries
    naps: list[float] = []
    logs: list[str] = []
    reports = results.watch(bucket, tmp_path / "r", interval=30, sleep=naps.append, max_polls=3, settle=0,
                            on_log=logs.append)
    failed = [line for line in logs if line.startswith("poll failed")]
    assert len(failed) == 2 and all("\n" not in line and "503" in line for line in failed), logs
    assert naps == [30, 60]  # backoff: each failed poll doubles the wait
    assert len(reports) == 1 and [o.status for o in reports[0].outcomes] == ["cleaned"]
    assert names(bucket) == []


def test_watch_returns_to_its_interval_after_a_good_poll(bucket, tmp_path, faults):
    faults("storage", "http:503", 6, match=LISTING)
    naps: list[float] = []
    results.watch(bucket, tmp_path / "r", interval=30, sleep=naps.append, max_polls=3, settle=0)
    assert naps == [30, 30]


def test_watch_stops_on_bad_input(bucket, tmp_path, monkeypatch):
    def bad(*a, **k):
        raise UsageError("results_dir is empty")

    monkeypatch.setattr(results.pulling, "pull", bad)
    with pytest.raises(UsageError):
        results.watch(bucket, tmp_path / "r", sleep=lambda s: None, max_polls=3)


def test_empty_results_dir_is_refused(localcloud, bucket, tmp_path):
    with pytest.raises(UsageError, match="results_dir is empty"):
        results.folder_for(bucket.replace(results_dir=""))
    config = tmp_path / "ops-hpc.toml"
    config.write_text('results_dir = ""\n')
    put(bucket, "run-1/a.zip", make_zip({"a.out": b"1\n"}))
    for tool in ("pull", "verify"):
        out = run_bin(tool, "--yes" if tool == "pull" else "--offline", "--config", str(config),
                      env=localcloud.env(bucket=bucket.bucket_name), cwd=tmp_path)
        assert out.returncode == 2 and out.stderr.strip().splitlines() == [
            "error: results_dir is empty: set results_dir in ops-hpc.toml (or OPS_HPC_RESULTS_DIR) or pass --dir"]
    assert names(bucket) == ["run-1/a.zip"] and sorted(p.name for p in tmp_path.iterdir()) == ["ops-hpc.toml"]


# -- an unwritable results folder or state ------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A real, tiny tmpfs (mounting needs root on Linux; skipped elsewhere)."""
    mounts = []

    def mount(name: str, options: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounts.append(where)
        return where

    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _one_line_exit_1(out):
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr


def test_read_only_results_folder_is_one_line_and_exit_1(localcloud, bucket, tmp_path, small_fs):
    ro = small_fs("ro", "ro,size=1m")
    put(bucket, "run-1/a.zip", make_zip({"a.out": b"1\n"}))
    with pytest.raises(OpsError, match="is not writable.*stays in GCS"):
        results.pull(bucket, ro / "results")
    out = run_bin("pull", "--yes", "--dir", str(ro / "results"), env=localcloud.env(bucket=bucket.bucket_name))
    _one_line_exit_1(out)
    assert out.stderr.strip().splitlines()[-1].startswith("error: results folder") and "Read-only" in out.stderr
    assert names(bucket) == ["run-1/a.zip"]


def test_full_filesystem_is_one_line_per_set_and_exit_1(localcloud, bucket, tmp_path, small_fs):
    full = small_fs("full", "size=256k")
    put(bucket, "run-1/a.zip", make_zip({"a.out": os.urandom(400 << 10)}))
    out = run_bin("pull", "--yes", "--no-progress", "--dir", str(full), env=localcloud.env(bucket=bucket.bucket_name))
    _one_line_exit_1(out)
    assert "FAILED run-1/a" in out.stdout or "error: cannot use the download state" in out.stderr
    assert names(bucket) == ["run-1/a.zip"]


def test_state_that_cannot_be_written_stops_the_pull_before_any_delete(bucket, tmp_path, monkeypatch):
    put(bucket, "run-1/a.zip", make_zip({"a.out": b"1\n"}))
    real = Tracker.set_status

    def full(self, set_id, status, *a, **k):
        if status == "downloaded":
            raise StateError("cannot use the download state: database or disk is full; results stay in GCS")
        return real(self, set_id, status, *a, **k)

    monkeypatch.setattr(Tracker, "set_status", full)
    with pytest.raises(StateError, match="disk is full"):
        results.pull(bucket, tmp_path / "r", settle=0)
    assert names(bucket) == ["run-1/a.zip"]
