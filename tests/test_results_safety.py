"""Pull-side safety: unfinished pushes, zip bombs and disk space, late re-uploads, placeholders, failing sets' backoff."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections import namedtuple

import pytest

from lib import results, status
from lib.downloads import Tracker
from lib.results import extract, listing
from tests.support.results import assert_same_files, make_zip, manifest_for, names, put, put_tree, recorder_files

TREE = "Frame_20261121-101500"
MARKER = f"{TREE}/.ops-hpc-push.json"


def _status(report, set_id):
    return next(o for o in report.outcomes if o.id == set_id)


# -- a push that started and never finished ------------------------------------------------

def test_a_push_that_never_sealed_its_tree_is_incomplete_never_cleaned(bucket, tmp_path):
    files = recorder_files(3, "p")
    put(bucket, MARKER, json.dumps({"format": 1, "kind": "push-started", "files": 301}).encode())
    put_tree(bucket, TREE, files)  # 4 of 301 arrived, then the VM was deleted: no MANIFEST.json
    before = names(bucket)
    logs: list[str] = []
    report = results.pull(bucket, tmp_path / "r", settle=0, on_log=logs.append)
    o = _status(report, TREE)
    assert o.status == "incomplete" and "never sealed" in o.reason and not report.ok
    assert names(bucket) == before  # everything kept in GCS
    assert not (tmp_path / "r" / TREE).exists()
    assert any("INCOMPLETE" in line and "4 of 301 files" in line for line in logs)
    assert Tracker(tmp_path / "r").get(TREE)["status"] == "incomplete"
    later = time.time() + 2 * results.SETTLE_S
    row = next(r for r in status.bucket_info(bucket, now=later)["result_sets"] if r["name"] == TREE)
    assert row["state"] == "incomplete"  # bin/status says so too
    logs.clear()
    again = results.pull(bucket, tmp_path / "r", settle=0, on_log=logs.append)
    assert _status(again, TREE).status == "incomplete" and not again.ok and not logs  # loud once, flagged always


def test_a_push_in_progress_is_deferred_not_incomplete(bucket, tmp_path):
    put(bucket, MARKER, b"{}")
    put_tree(bucket, TREE, recorder_files(2))
    report = results.pull(bucket, tmp_path / "r", settle=3600)
    assert _status(report, TREE).status == "deferred" and "push in progress" in _status(report, TREE).reason
    assert report.ok


def test_a_sealed_push_is_pulled_and_its_marker_deleted_not_downloaded(bucket, tmp_path):
    files = recorder_files(3, "s")
    put(bucket, MARKER, b'{"format": 1, "files": 4}')
    put_tree(bucket, TREE, files)
    seal = manifest_for(files)
    seal["files"].append({"path": ".ops-hpc-push.json", "size": 25, "crc32c": "x"})  # push's seal lists it
    put(bucket, f"{TREE}/MANIFEST.json", json.dumps(seal).encode())
    report = results.pull(bucket, tmp_path / "r", settle=3600)
    assert _status(report, TREE).status == "cleaned", report.to_dict()
    assert_same_files(tmp_path / "r" / TREE, files)
    assert not (tmp_path / "r" / TREE / ".ops-hpc-push.json").exists()
    assert names(bucket) == []


def test_a_tree_without_any_marker_keeps_the_settle_rule(bucket, tmp_path):
    put_tree(bucket, TREE, recorder_files(2))
    assert _status(results.pull(bucket, tmp_path / "r", settle=3600), TREE).status == "deferred"
    assert _status(results.pull(bucket, tmp_path / "r", settle=0), TREE).status == "cleaned"


# -- zip bombs and disk space -----------------------------------------------------------------

def _zeros_zip(n: int, name: str = "zeros.out") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr(name, b"\0" * n)
    return buf.getvalue()


def _refused_and_kept(cfg, folder, set_id, expect):
    before = names(cfg)
    report = results.pull(cfg, folder, settle=0)
    o = _status(report, set_id)
    assert o.status == "failed" and expect in o.reason, o
    assert names(cfg) == before and not (folder / set_id).exists()
    assert Tracker(folder).get(set_id)["status"] == "failed"
    assert not [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("download_state")]
    return o


def test_a_zip_larger_than_max_unzipped_gb_is_refused_before_inflating(bucket, tmp_path):
    put(bucket, "run-1/big.zip", _zeros_zip(3 << 20))
    _refused_and_kept(bucket.replace(max_unzipped_gb=0.002), tmp_path / "r", "run-1/big", "max_unzipped_gb")


def test_a_zip_bomb_is_refused_by_its_compression_ratio(bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(extract, "RATIO_FLOOR", 1 << 20)
    put(bucket, "run-1/bomb.zip", _zeros_zip(20 << 20))  # ~20 KB that inflates to 20 MB (~1,000:1)
    _refused_and_kept(bucket, tmp_path / "r", "run-1/bomb", "zip bomb")


def test_a_zip_whose_directory_understates_a_member_is_refused(bucket, tmp_path):
    data = bytearray(_zeros_zip(1 << 20))
    cd = data.rfind(b"PK\x01\x02")  # the central directory entry: uncompressed size at offset 24
    data[cd + 24:cd + 28] = (1000).to_bytes(4, "little")
    put(bucket, "run-1/liar.zip", bytes(data))
    _refused_and_kept(bucket, tmp_path / "r", "run-1/liar", "zip member 'zeros.out'")


Usage = namedtuple("Usage", "total used free")


def _small_disk(monkeypatch, folder, total):
    """The results folder behaves as a `total`-byte filesystem: free space drops as files land in it."""
    def size(p):
        try:
            return p.stat().st_size if p.is_file() else 0
        except FileNotFoundError:  # a parallel set renamed or removed it while we were counting
            return 0

    def usage(_path):
        for _ in range(10):  # a staging folder can vanish mid-walk too: count again
            try:
                used = sum(size(p) for p in folder.rglob("*")) if folder.exists() else 0
                break
            except FileNotFoundError:
                continue
        return Usage(total, used, max(0, total - used))

    monkeypatch.setattr(extract.shutil, "disk_usage", usage)


def test_free_space_keeps_a_margin(bucket, tmp_path, monkeypatch):
    folder = tmp_path / "r"
    _small_disk(monkeypatch, folder, 3 << 20)
    put(bucket, "run-1/fill.zip", _zeros_zip((3 << 20) - (40 << 10)))  # a few KB that fill the disk to 99 %
    o = _refused_and_kept(bucket, folder, "run-1/fill", "not enough disk space")
    assert "kept free" in o.reason


def test_parallel_sets_cannot_all_pass_the_same_free_space_check(bucket, tmp_path, monkeypatch):
    folder = tmp_path / "r"
    _small_disk(monkeypatch, folder, 3 << 20)
    for i in range(4):
        put(bucket, f"run-1/m{i}.zip", make_zip({"d.out": bytes([i + 1]) * (1200 << 10)}, with_manifest=False))
    report = results.pull(bucket, folder, settle=0)
    cleaned = [o for o in report.outcomes if o.status == "cleaned"]
    assert len(cleaned) <= 2 and len(report.failed) >= 2, report.to_dict()
    assert all("not enough disk space" in o.reason for o in report.failed), [o.reason for o in report.failed]
    assert len(names(bucket)) == 4 - len(cleaned)  # the rest wait in GCS


# -- a file re-uploaded after verification, before its delete ---------------------------------

def test_a_file_replaced_between_verification_and_delete_ends_as_a_new_version(bucket, tmp_path, monkeypatch):
    files = recorder_files(2, "v1")
    put_tree(bucket, TREE, files)
    put(bucket, f"{TREE}/MANIFEST.json", json.dumps(manifest_for(files)).encode())
    rel = "Node_Disp_0.out"
    real_delete = results.Transfers.delete

    def replace_then_delete(self, objs):
        if not getattr(replace_then_delete, "done", False):
            replace_then_delete.done = put(bucket, f"{TREE}/{rel}", b"newer content\n")
        return real_delete(self, objs)

    monkeypatch.setattr(results.Transfers, "delete", replace_then_delete)
    folder = tmp_path / "r"
    first = results.pull(bucket, folder, settle=0)
    assert _status(first, TREE).status == "cleaned" and _status(first, TREE).kept_in_gcs == 1
    monkeypatch.setattr(results.Transfers, "delete", real_delete)
    second = results.pull(bucket, folder, settle=0)
    o = _status(second, TREE)
    assert o.status == "cleaned" and "new versions" in o.reason, second.to_dict()
    assert (folder / TREE / rel).read_bytes() == files[rel]  # the verified file is kept as it was
    gen = replace_then_delete.done
    assert (folder / TREE / f"Node_Disp_0.new-{gen}.out").read_bytes() == b"newer content\n"
    assert names(bucket) == []
    assert results.pull(bucket, folder, settle=0).outcomes == []  # nothing left: no loop
    assert not [v for v in results.verify(None, folder, [TREE]) if v.differences]


# -- folder placeholders ------------------------------------------------------------------------

def test_folder_placeholders_go_with_their_set_and_are_never_counted_as_sets(memcloud, tmp_path):
    bucket = memcloud.new_bucket("ph")  # the memory store keeps names ending in '/', as GCS does
    put(bucket, f"{TREE}/", b"")
    put(bucket, f"{TREE}/sub/", b"")
    put_tree(bucket, TREE, {"sub/a.out": b"1\n"})
    put(bucket, "Lone_20260101-000000/", b"")
    put(bucket, "run-9/", b"")
    found = results.list_sets(bucket)
    assert [s.id for s in found.sets] == [TREE] and found.other == []
    assert sorted(p.name for p in found.placeholders) == ["Lone_20260101-000000/", "run-9/"]
    assert [r["name"] for r in status.bucket_info(bucket)["result_sets"]] == [TREE]
    report = results.pull(bucket, tmp_path / "r", settle=0)
    assert [o.status for o in report.outcomes] == ["cleaned"] and report.placeholders_removed == 2
    assert names(bucket) == []


# -- a set that is refused for its content -------------------------------------------------------

def test_a_refused_zip_is_not_downloaded_again_every_poll_but_retried_with_backoff(bucket, tmp_path, monkeypatch):
    put(bucket, "run-1/evil.zip", make_zip({}, raw=[("../escape.out", b"x")]))
    fetched: list[str] = []
    real = results.Transfers.fetch_range

    def counting(self, obj, *args):
        fetched.append(obj.name)
        return real(self, obj, *args)

    monkeypatch.setattr(results.Transfers, "fetch_range", counting)
    clock = [1000.0]
    logs: list[str] = []
    reports = []
    for _ in range(4):  # four polls within the first backoff
        reports.append(results.pull(bucket, tmp_path / "r", settle=0, honour_backoff=True, now=lambda: clock[0],
                                    on_log=logs.append))
        clock[0] += 10
    assert fetched == ["run-1/evil.zip"]  # downloaded and inflated once
    assert [_status(r, "run-1/evil").status for r in reports] == ["failed", "waiting", "waiting", "waiting"]
    assert sum("FAILED" in line for line in logs) == 1 and not any(r.ok for r in reports)
    first_retry = reports[0].outcomes[0].retry_at
    assert first_retry == 1000.0 + listing.BACKOFF_S
    clock[0] = first_retry + 1
    again = results.pull(bucket, tmp_path / "r", settle=0, honour_backoff=True, now=lambda: clock[0])
    assert len(fetched) == 2 and _status(again, "run-1/evil").retry_at == clock[0] + 2 * listing.BACKOFF_S
    put(bucket, "run-1/evil.zip", make_zip({"a.out": b"fixed\n"}))  # a new generation is tried at once
    fixed = results.pull(bucket, tmp_path / "r", settle=0, honour_backoff=True, now=lambda: clock[0])
    assert _status(fixed, "run-1/evil").status == "cleaned" and names(bucket) == []


def test_a_one_off_pull_retries_a_failed_set_at_once(bucket, tmp_path):
    put(bucket, "run-1/evil.zip", make_zip({}, raw=[("../escape.out", b"x")]))
    for _ in range(2):
        report = results.pull(bucket, tmp_path / "r", settle=0)
        assert _status(report, "run-1/evil").status == "failed"


def test_decide_is_a_pure_table():
    objs = [results.Obj(f"{TREE}/a.out", 1, 5, updated=100.0)]
    marker = results.Obj(MARKER, 1, 4, updated=99.0)
    legacy = results.ResultSet(TREE, "tree", objs)
    ours = results.ResultSet(TREE, "tree", objs, control=[marker])
    failed = {"status": "failed", "failed_round": ours.round, "next_try": 500.0, "reason": "bad"}
    assert results.decide(legacy, None, 110.0, settle=60)[0] == "deferred"
    assert results.decide(legacy, None, 200.0, settle=60)[0] == "todo"
    assert results.decide(ours, None, 110.0, settle=60)[0] == "deferred"
    assert results.decide(ours, None, 200.0, settle=60)[0] == "incomplete"
    assert results.decide(ours, failed, 200.0, settle=60, honour_backoff=True)[0] == "waiting"
    assert results.decide(ours, failed, 600.0, settle=60, honour_backoff=True)[0] == "incomplete"
    assert results.decide(ours, dict(failed, failed_round="other"), 200.0, settle=60, honour_backoff=True)[0] != "waiting"


@pytest.mark.parametrize("value", ["0", "-1", "lots"])
def test_max_unzipped_gb_is_validated(value):
    from lib.config import Config
    from lib.errors import ConfigError

    with pytest.raises(ConfigError, match="max_unzipped_gb"):
        Config.load(env={"OPS_HPC_MAX_UNZIPPED_GB": value}, path="")
