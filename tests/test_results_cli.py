"""bin/pull as cron, a script and a user run it: real subprocesses against the local cloud."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lib.downloads import Tracker
from tests.support.bins import REPO, run_bin
from tests.support.results import (
    assert_same_files,
    make_zip,
    manifest_for,
    names,
    put,
    put_tree,
    recorder_files,
)

T = "ShearWall_20260406-180045"
posix_only = pytest.mark.skipif(not hasattr(signal, "SIGKILL") or sys.platform == "win32", reason="POSIX signals/pty")


def _env(cloud, cfg):
    return cloud.env(bucket=cfg.bucket_name)


def _popen(env, *args):
    return subprocess.Popen([sys.executable, str(REPO / "bin" / "pull"), *args], env=env, cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_list_shows_sets_counts_sizes_and_ignores_underscore_prefixes(localcloud, bucket, tmp_path):
    put(bucket, "run-1/frame.zip", make_zip({"a.out": b"1" * 2000}))
    put_tree(bucket, T, recorder_files(3))
    put(bucket, "_uploads/run-1.zip", b"staged")
    put(bucket, "_status/latest.txt", b"status")
    env = _env(localcloud, bucket)
    text = run_bin("pull", "--list", "--dir", str(tmp_path / "r"), env=env)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("2 result set(s)")
    assert f"  {T}  (tree, 4 file(s)" in text.stdout and "  run-1/frame  (zip, 1 file(s)" in text.stdout
    assert "_uploads" not in text.stdout and "(2 object(s) under _-prefixed folders ignored" in text.stdout
    data = json.loads(run_bin("pull", "--list", "--json", env=env).stdout)
    assert [s["id"] for s in data["sets"]] == ["ShearWall_20260406-180045", "run-1/frame"]
    assert data["internal_objects"] == 2 and data["bytes"] == sum(s["bytes"] for s in data["sets"])
    assert not (tmp_path / "r").exists()  # listing writes nothing
    assert len(names(bucket)) == 7


def test_no_terminal_and_no_yes_is_refused_with_exit_3(localcloud, bucket, tmp_path):
    put(bucket, "run-1/frame.zip", make_zip({"a.out": b"1"}))
    out = run_bin("pull", "--dir", str(tmp_path / "r"), env=_env(localcloud, bucket))
    assert out.returncode == 3, out.stderr
    assert "no terminal to ask on; rerun with --yes" in out.stderr
    assert names(bucket) == ["run-1/frame.zip"]
    assert not (tmp_path / "r" / "run-1").exists()


def test_yes_pulls_and_json_reports_each_set(localcloud, bucket, tmp_path):
    files = recorder_files(3)
    put(bucket, "run-1/frame.zip", make_zip(files))
    put_tree(bucket, T, files)
    out = run_bin("pull", "--yes", "--json", "--settle", "0", "--dir", str(tmp_path / "r"), env=_env(localcloud, bucket))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and {o["id"]: o["status"] for o in report["outcomes"]} == {"run-1/frame": "cleaned",
                                                                                   T: "cleaned"}
    assert_same_files(tmp_path / "r" / "run-1" / "frame", files)
    assert_same_files(tmp_path / "r" / T, files)
    assert names(bucket) == []
    again = run_bin("pull", "--yes", "--dir", str(tmp_path / "r"), env=_env(localcloud, bucket))
    assert again.returncode == 0 and "nothing to pull" in again.stdout  # an empty bucket is not a failure for cron


def test_no_report_leaves_the_runs_html_report_to_bin_report(localcloud, bucket, tmp_path):
    files, env, results = recorder_files(3), _env(localcloud, bucket), tmp_path / "r"
    put(bucket, "run-1/frame.zip", make_zip(files))
    out = run_bin("pull", "--yes", "--no-report", "--settle", "0", "--dir", str(results), env=env)
    assert out.returncode == 0, out.stderr
    assert_same_files(results / "run-1" / "frame", files)
    assert not (results / "run-1" / "index.html").exists()
    put(bucket, "run-1/wall.zip", make_zip(files, manifest=manifest_for(files, model="wall")))
    out = run_bin("pull", "--yes", "--settle", "0", "--dir", str(results), env=env)
    assert out.returncode == 0, out.stderr
    assert (results / "run-1" / "index.html").is_file()  # the default: every run pulled gets its report


def test_plain_percentage_lines_when_not_a_terminal(localcloud, bucket, tmp_path):
    put(bucket, "run-1/frame.zip", make_zip({"a.out": os.urandom(50_000)}))
    out = run_bin("pull", "--yes", "--dir", str(tmp_path / "r"), env=_env(localcloud, bucket))
    assert out.returncode == 0, out.stderr
    assert "run-1/frame: 100%" in out.stderr.splitlines()
    assert "\r" not in out.stderr  # no redrawn bar in a log file


def test_a_failed_set_makes_exit_1_for_cron(localcloud, bucket, tmp_path, faults):
    put(bucket, "run-1/frame.zip", make_zip(recorder_files(2)))
    faults("storage", "corrupt", 1, match="alt=media")
    out = run_bin("pull", "--yes", "--dir", str(tmp_path / "r"), env=_env(localcloud, bucket))
    assert out.returncode == 1
    assert "FAILED run-1/frame" in out.stdout and "kept in GCS" in out.stderr
    assert names(bucket) == ["run-1/frame.zip"]


@posix_only
@pytest.mark.parametrize("answer, code", [("n", 3), ("y", 0)])
def test_terminal_prompt_asks_before_pulling(localcloud, bucket, tmp_path, answer, code):
    import pty

    put(bucket, "run-1/frame.zip", make_zip({"a.out": b"1"}))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(REPO / "bin" / "pull"), "--dir", str(tmp_path / "r")],
                            env=_env(localcloud, bucket), cwd=REPO, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    while b"[y/N]" not in seen and time.monotonic() < deadline:
        seen += os.read(master, 4096)
    assert b"then delete from gs://" in seen
    os.write(master, answer.encode() + b"\n")
    try:
        while True:
            seen += os.read(master, 4096)
    except OSError:
        pass
    try:
        assert proc.wait(timeout=60) == code, seen
    finally:
        if proc.poll() is None:
            proc.kill()
    os.close(master)
    assert names(bucket) == ([] if answer == "y" else ["run-1/frame.zip"])
    assert (tmp_path / "r" / "run-1" / "frame" / "a.out").exists() == (answer == "y")


def test_watch_flag_polls_until_max_polls(localcloud, bucket, tmp_path):
    put(bucket, "run-1/frame.zip", make_zip({"a.out": b"1"}))
    out = run_bin("pull", "--yes", "--watch", "--interval", "0.1", "--max-polls", "2", "--json",
                  "--dir", str(tmp_path / "r"), env=_env(localcloud, bucket))
    assert out.returncode == 0, out.stderr
    assert "watching gs://" in out.stderr
    assert json.loads(out.stdout)["outcomes"][0]["status"] == "cleaned"


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@posix_only
def test_sigkill_mid_download_then_restart_finishes_with_nothing_deleted_early(localcloud, bucket, tmp_path, faults):
    tree = recorder_files(8, "t")
    zipped = recorder_files(4, "z")
    put_tree(bucket, T, tree)
    put(bucket, "run-1/frame.zip", make_zip(zipped))
    before = names(bucket)
    folder = tmp_path / "r"
    env = _env(localcloud, bucket)
    faults("storage", "stall", 2, match=r"(Node_Disp_3\.out|frame\.zip).*alt=media", seconds=30)
    proc = _popen(env, "--yes", "--settle", "0", "--dir", str(folder), "--workers", "4")

    def downloading():
        try:
            sets = Tracker(folder).sets()
        except Exception:
            return False
        return len([s for s in sets.values() if s.get("status") == "downloading"]) == 2 and \
            (folder / T / "Node_Disp_0.out").exists()

    try:
        assert _wait_for(downloading), (proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    # Killed mid-download: nothing deleted, no half file under a final name.
    assert names(bucket) == before
    assert not (folder / T / "Node_Disp_3.out").exists() and not (folder / "run-1").exists()
    assert {v["status"] for v in Tracker(folder).sets().values()} == {"downloading"}
    localcloud.clear_faults()
    out = run_bin("pull", "--yes", "--settle", "0", "--json", "--dir", str(folder), env=env)
    assert out.returncode == 0, out.stderr
    assert "stopped mid-download; retrying it" in out.stderr
    report = json.loads(out.stdout)
    assert sorted(report["recovered"]) == ["ShearWall_20260406-180045", "run-1/frame"]
    assert_same_files(folder / T, tree)
    assert_same_files(folder / "run-1" / "frame", zipped)
    assert names(bucket) == []
    state = Tracker(folder).sets()
    assert {k: (v["status"], v["attempts"]) for k, v in state.items()} == {T: ("cleaned", 2),
                                                                            "run-1/frame": ("cleaned", 2)}
    assert not [p for p in folder.rglob("*") if p.suffix in (".part", ".tmp")]


def test_two_concurrent_pulls_on_one_folder_never_download_a_set_twice(localcloud, bucket, tmp_path, faults):
    sets = {f"run-1/m{i}": recorder_files(3, f"m{i}") for i in range(5)}
    for set_id, files in sets.items():
        put(bucket, f"{set_id}.zip", make_zip(files))
    tree = recorder_files(6, "t")
    put_tree(bucket, T, tree)
    sets[T] = tree
    folder = tmp_path / "r"
    env = _env(localcloud, bucket)
    faults("storage", "stall", 3, match="alt=media", seconds=1.5)  # hold the first downloads so the pulls overlap
    procs = [_popen(env, "--yes", "--json", "--settle", "0", "--dir", str(folder)) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    reports = [json.loads(o[0]) for o in outs]
    cleaned_by = {}
    for n, report in enumerate(reports):
        for o in report["outcomes"]:
            assert o["status"] in ("cleaned", "busy", "done"), o
            if o["status"] == "cleaned":
                assert o["id"] not in cleaned_by, f"{o['id']} pulled by both"
                cleaned_by[o["id"]] = n
    assert sorted(cleaned_by) == sorted(sets)  # each set pulled exactly once
    for set_id, files in sets.items():
        assert_same_files(folder / set_id, files)
    assert names(bucket) == []
    assert {v["status"] for v in Tracker(folder).sets().values()} == {"cleaned"}
