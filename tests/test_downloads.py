"""The download state (download_state.sqlite): transitions, crash recovery, claims between processes, migration,
unwritable state, constant cost per set."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading

import psutil
import pytest

from lib import downloads
from lib.downloads import LEGACY_STATE_FILE, STATE_FILE, Tracker
from lib.procs import ProcessRef


def _owner_of(proc: subprocess.Popen) -> dict:
    import socket

    return {"pid": proc.pid, "host": socket.gethostname(), "create_time": psutil.Process(proc.pid).create_time(),
            "since": 0}


def test_lifecycle_pending_downloading_downloaded_cleaned(tmp_path):
    t = Tracker(tmp_path)
    t.seen_many([("s", "zip", 1, 10)])
    assert t.get("s")["status"] == "pending"
    assert t.claim("s", "r1") is None
    entry = t.get("s")
    assert entry["status"] == "downloading" and entry["attempts"] == 1 and entry["owner"]["pid"] > 0
    t.set_status("s", "downloaded", keep_owner=True, round="r1", files={"a": [1, "x"]})
    assert t.get("s")["owner"]  # held until cleaned, so nobody else cleans it meanwhile
    t.set_status("s", "cleaned", round="r1")
    entry = t.get("s")
    assert entry["status"] == "cleaned" and "owner" not in entry and entry["files"] == {"a": [1, "x"]}
    assert t.claim("s", "r1") == "already pulled and cleaned by another pull"
    assert t.claim("s", "r2") is None  # the same name uploaded again is a new round
    with sqlite3.connect(tmp_path / STATE_FILE) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == downloads.FORMAT
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failed_keeps_reason_and_counts_attempts(tmp_path):
    t = Tracker(tmp_path)
    for _ in range(3):
        assert t.claim("s", "r") is None
        t.set_status("s", "failed", "CRC32C mismatch")
    assert (t.get("s")["status"], t.get("s")["attempts"], t.get("s")["reason"]) == ("failed", 3, "CRC32C mismatch")


def test_recover_fails_sets_whose_owner_died_but_not_live_ones(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner = _owner_of(dead) if dead.poll() is None else {"pid": dead.pid, "host": "", "since": 0}
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live_owner = _owner_of(live)
        with open(tmp_path / LEGACY_STATE_FILE, "w") as fh:  # written by an earlier version: imported on open
            json.dump({"format": 1, "sets": {
                "crashed": {"status": "downloading", "attempts": 1, "owner": {**dead_owner, "host": live_owner["host"]}},
                "busy": {"status": "downloading", "attempts": 1, "owner": live_owner},
                "verified": {"status": "downloaded", "attempts": 1, "owner": {**dead_owner, "host": live_owner["host"]}},
            }}, fh)
        t = Tracker(tmp_path)
        assert t.recover() == ["crashed"]
        sets = t.sets()
        assert sets["crashed"]["status"] == "failed" and "stopped mid-download" in sets["crashed"]["reason"]
        assert sets["busy"]["status"] == "downloading"  # another pull is alive: not ours to reset
        assert sets["verified"]["status"] == "downloaded" and "owner" not in sets["verified"]
        assert "another pull" in t.claim("busy", "r")
        assert t.claim("crashed", "r") is None and t.get("crashed")["attempts"] == 2
    finally:
        live.kill()
        live.wait()
    assert Tracker(tmp_path).claim("busy", "r") is None  # its owner is gone now


def test_reused_pid_is_not_mistaken_for_the_owner():
    me = psutil.Process()
    import socket

    alive = downloads._alive
    assert alive({"pid": me.pid, "host": socket.gethostname(), "create_time": me.create_time()})
    assert not alive({"pid": me.pid, "host": socket.gethostname(), "create_time": me.create_time() - 100})
    assert not alive(None)
    assert alive({"pid": 1, "host": "another-pc", "since": __import__("time").time()})  # can't see it: assume alive
    assert not alive({"pid": 1, "host": "another-pc", "since": 0})  # ... until the claim is hours old
    assert ProcessRef.from_dict(Tracker(".").me).pid == psutil.Process().pid  # claims record a ProcessRef


def test_release_if_mine_on_interruption(tmp_path):
    t = Tracker(tmp_path)
    t.claim("s", "r")
    t.release_if_mine("s", "interrupted")
    assert t.get("s")["status"] == "failed" and "owner" not in t.get("s")


def test_concurrent_claims_let_exactly_one_process_win(tmp_path):
    code = ("import sys; sys.path.insert(0, %r); from lib.downloads import Tracker; "
            "print('won' if Tracker(sys.argv[1]).claim('s', 'r') is None else 'lost'); import time; time.sleep(3)")
    from tests.support.bins import REPO

    procs = [subprocess.Popen([sys.executable, "-c", code % str(REPO), str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outs == ["lost", "lost", "lost", "won"]


def test_many_threads_editing_never_lose_an_update(tmp_path):
    t = Tracker(tmp_path)
    threads = [threading.Thread(target=t.seen_many, args=([(f"s{i}", "zip", 1, i)],)) for i in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(t.sets()) == sorted(f"s{i}" for i in range(20))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_json_state_from_an_earlier_version_is_imported_once_and_kept_aside(tmp_path):
    (tmp_path / LEGACY_STATE_FILE).write_text(json.dumps({"format": 1, "sets": {
        "old": {"status": "cleaned", "attempts": 1, "round": "r", "files": {"a": [1, "x"]}}}}))
    t = Tracker(tmp_path)
    assert t.get("old")["files"] == {"a": [1, "x"]}
    assert t.claim("old", "r") == "already pulled and cleaned by another pull"
    assert not (tmp_path / LEGACY_STATE_FILE).exists() and (tmp_path / (LEGACY_STATE_FILE + ".migrated")).exists()
    t.set_status("old", "failed", "later")
    assert Tracker(tmp_path).get("old")["status"] == "failed"  # not imported a second time


def test_recover_creates_nothing_where_no_pull_ever_ran(tmp_path):
    assert downloads.recover(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_unwritable_state_is_one_clear_error(tmp_path, monkeypatch):
    t = Tracker(tmp_path)
    t.seen_many([("s", "zip", 1, 10)])
    real = sqlite3.Connection.execute

    class Full(sqlite3.Connection):
        pass

    def full(self, sql, *args):
        if sql.startswith("INSERT"):
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, sql, *args)

    t.close()
    t._db = sqlite3.connect(t.path, isolation_level=None, check_same_thread=False, factory=Full)
    monkeypatch.setattr(Full, "execute", full)
    monkeypatch.setattr(Full, "executemany", lambda self, sql, rows: full(self, sql))
    with pytest.raises(downloads.StateError, match="disk is full.*results stay in GCS"):
        t.set_status("s", "cleaned")
    assert Tracker(tmp_path).get("s")["status"] == "pending"  # rolled back, nothing half-written
    ro = tmp_path / "not-a-folder"
    ro.write_text("a file where the results folder should be")
    with pytest.raises(downloads.StateError, match="cannot use the download state"):
        Tracker(ro).claim("s", "r")


def test_a_status_change_writes_one_row_not_the_whole_state(tmp_path):
    t = Tracker(tmp_path)
    t.seen_many([(f"s{i}", "zip", 1, i) for i in range(3000)])
    writes: list[int] = []
    t._connect().set_trace_callback(lambda sql: writes.append(sql.count("?")) if sql.startswith("INSERT") else None)
    t.claim("s7", "r")
    t.set_status("s7", "cleaned", round="r")
    assert len(writes) == 2  # one row each, however many sets the folder holds
