"""lib.results.pull against the local cloud: both formats, verification, faults, deferral, re-runs, watch."""

from __future__ import annotations

import json
import time

import pytest

from lib import results
from lib.downloads import Tracker
from tests.support.results import (
    assert_same_files,
    make_zip,
    manifest_for,
    names,
    put,
    put_tree,
    recorder_files,
    temp_leftovers,
)

TREE = "TTFlat_sanfran_20260406-153012"


def _pull(cfg, folder, **kw):
    kw.setdefault("settle", 0)
    logs: list[str] = []
    report = results.pull(cfg, folder, on_log=logs.append, **kw)
    report.logs = logs
    return report


def _status(report, set_id):
    return next(o for o in report.outcomes if o.id == set_id)


def test_both_formats_pulled_verified_extracted_and_cleaned(bucket, tmp_path):
    frame, wall, tree = recorder_files(4, "f"), recorder_files(3, "w"), recorder_files(6, "t")
    put(bucket, "run-20261121-101500-ab12/frame.zip", make_zip(frame))
    put(bucket, "wall.zip", make_zip(wall))
    put_tree(bucket, TREE, tree)
    folder = tmp_path / "results"
    progress = []
    report = _pull(bucket, folder, on_progress=lambda *a: progress.append(a))
    assert report.ok, report.to_dict()
    assert {o.id: o.status for o in report.outcomes} == {
        "run-20261121-101500-ab12/frame": "cleaned", "wall": "cleaned", TREE: "cleaned"}
    assert_same_files(folder / "run-20261121-101500-ab12" / "frame", frame)
    assert json.loads((folder / "run-20261121-101500-ab12/frame/MANIFEST.json").read_text())["model"] == "frame"
    assert_same_files(folder / "wall", wall)
    assert_same_files(folder / TREE, tree)
    assert names(bucket) == []  # cleaned only after verification
    state = Tracker(folder).sets()
    assert {k: v["status"] for k, v in state.items()} == {k: "cleaned" for k in state}
    assert state[TREE]["files"]["sub/Element_Force.out"][1]  # checksums recorded for bin/verify
    assert not temp_leftovers(folder) and not (folder / results.PARTIAL).exists()
    done = {p[0]: p for p in progress if p[1] == p[2]}
    assert set(done) == {o.id for o in report.outcomes}  # every set's progress reached 100%


def test_underscore_prefixes_and_other_objects_are_never_results(bucket, tmp_path):
    for name in ("_uploads/batch.zip", "_status/latest.txt", "_logs/run-1/frame.log", "_uploads/x_20260101-000000/a"):
        put(bucket, name, b"internal")
    put(bucket, "notes.txt", b"not a result")
    put(bucket, "m.zip", make_zip({"a.out": b"1"}))
    listing = results.list_sets(bucket)
    assert [s.id for s in listing.sets] == ["m"]
    assert listing.internal == 4 and listing.other == ["notes.txt"]
    report = _pull(bucket, tmp_path / "r")
    assert report.ok and [o.id for o in report.outcomes] == ["m"]
    assert names(bucket) == ["_logs/run-1/frame.log", "_status/latest.txt", "_uploads/batch.zip",
                             "_uploads/x_20260101-000000/a", "notes.txt"]
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["download_state.sqlite", "m"]


def test_corrupted_same_size_download_is_caught_by_the_hash_and_kept(bucket, tmp_path, faults):
    files = recorder_files(3)
    put_tree(bucket, TREE, files)
    faults("storage", "corrupt", 1, match=r"Node_Disp_1\.out.*alt=media")
    report = _pull(bucket, tmp_path / "r")
    outcome = _status(report, TREE)
    assert outcome.status == "failed" and "CRC32C" in outcome.reason, outcome
    assert not report.ok
    assert len(names(bucket)) == len(files)  # nothing deleted
    assert not (tmp_path / "r" / TREE / "Node_Disp_1.out").exists()  # the bad copy never got its final name
    entry = Tracker(tmp_path / "r").get(TREE)
    assert entry["status"] == "failed" and entry["attempts"] == 1 and "CRC32C" in entry["reason"]
    # The next poll retries and, the bytes now arriving intact, finishes.
    again = _pull(bucket, tmp_path / "r")
    assert again.ok and _status(again, TREE).status == "cleaned"
    assert_same_files(tmp_path / "r" / TREE, files)
    assert Tracker(tmp_path / "r").get(TREE)["attempts"] == 2
    assert names(bucket) == []


def test_corrupted_zip_download_is_caught_and_kept(bucket, tmp_path, faults):
    put(bucket, "run-1/frame.zip", make_zip(recorder_files(3)))
    faults("storage", "corrupt", 1, match="alt=media")
    report = _pull(bucket, tmp_path / "r")
    assert _status(report, "run-1/frame").status == "failed"
    assert "CRC32C" in _status(report, "run-1/frame").reason
    assert names(bucket) == ["run-1/frame.zip"]
    assert not (tmp_path / "r" / "run-1").exists()


@pytest.mark.parametrize("kind", ["http:503", "reset"])
def test_injected_503_and_reset_during_download_are_recovered(bucket, tmp_path, faults, no_retry_sleep, kind):
    files = recorder_files(3)
    put_tree(bucket, TREE, files)
    put(bucket, "run-1/frame.zip", make_zip(files))
    faults("storage", kind, 3, match="alt=media")
    report = _pull(bucket, tmp_path / "r")
    assert report.ok, report.to_dict()
    assert_same_files(tmp_path / "r" / TREE, files)
    assert_same_files(tmp_path / "r" / "run-1" / "frame", files)
    assert names(bucket) == []
    assert len(no_retry_sleep) >= 3  # the retry policy did the recovering


def test_sliced_download_of_a_large_object(bucket, tmp_path, monkeypatch, faults):
    monkeypatch.setattr(results.transfers, "LARGE_OBJECT", 100_000)
    monkeypatch.setattr(results.transfers, "SLICE", 30_000)
    import os

    big = os.urandom(250_001)
    files = {"big.out": big, **recorder_files(2)}
    put_tree(bucket, TREE, files)
    put(bucket, "run-1/big.zip", make_zip(files))
    faults("storage", "http:503", 2, match="alt=media")  # a slice fails and is retried alone
    report = _pull(bucket, tmp_path / "r")
    assert report.ok, report.to_dict()
    assert_same_files(tmp_path / "r" / TREE, files)
    assert_same_files(tmp_path / "r" / "run-1" / "big", files)


def test_rerun_fetches_only_what_is_not_yet_verified(bucket, tmp_path):
    files = recorder_files(5)
    put_tree(bucket, TREE, files)
    folder = tmp_path / "r"
    # An earlier pull got two files right, one wrong (same size), then died before cleaning.
    (folder / TREE).mkdir(parents=True)
    (folder / TREE / "Node_Disp_0.out").write_bytes(files["Node_Disp_0.out"])
    (folder / TREE / "Node_Disp_1.out").write_bytes(files["Node_Disp_1.out"])
    bad = bytearray(files["Node_Disp_2.out"])
    bad[3] ^= 0xFF
    (folder / TREE / "Node_Disp_2.out").write_bytes(bytes(bad))
    report = _pull(bucket, folder)
    outcome = _status(report, TREE)
    assert outcome.status == "cleaned"
    total = sum(len(d) for d in files.values())
    skipped = len(files["Node_Disp_0.out"]) + len(files["Node_Disp_1.out"])
    assert outcome.fetched_bytes == total - skipped
    assert_same_files(folder / TREE, files)


def test_zip_verified_but_not_cleaned_is_not_downloaded_again(bucket, tmp_path, monkeypatch):
    files = recorder_files(3)
    put(bucket, "run-1/frame.zip", make_zip(files))
    folder = tmp_path / "r"
    # First pull dies right after marking the set downloaded, before deleting anything.
    original = results.Transfers.delete

    def die(self, objs):
        raise KeyboardInterrupt

    monkeypatch.setattr(results.Transfers, "delete", die)
    with pytest.raises(KeyboardInterrupt):
        _pull(bucket, folder)
    assert names(bucket) == ["run-1/frame.zip"]
    assert Tracker(folder).get("run-1/frame")["status"] == "downloaded"
    monkeypatch.setattr(results.Transfers, "delete", original)
    report = _pull(bucket, folder)
    assert _status(report, "run-1/frame").status == "cleaned"
    assert _status(report, "run-1/frame").fetched_bytes == 0
    assert names(bucket) == []
    assert_same_files(folder / "run-1" / "frame", files)


def test_tree_still_uploading_is_deferred_and_kept(bucket, tmp_path):
    put_tree(bucket, TREE, recorder_files(2))
    report = _pull(bucket, tmp_path / "r", settle=120)
    outcome = _status(report, TREE)
    assert outcome.status == "deferred" and "still uploading" in outcome.reason
    assert report.ok  # not a failure: it will be pulled when it settles
    assert len(names(bucket)) == 3
    assert Tracker(tmp_path / "r").get(TREE)["status"] == "pending"
    assert not (tmp_path / "r" / TREE).exists()
    later = _pull(bucket, tmp_path / "r", settle=120, now=lambda: time.time() + 121)
    assert _status(later, TREE).status == "cleaned"


def test_tree_changing_while_downloading_is_deferred_and_kept(bucket, tmp_path, monkeypatch):
    files = recorder_files(2)
    put_tree(bucket, TREE, files)
    real_fetch = results.Transfers.fetch_range
    uploaded = []

    def fetch_and_upload_more(self, obj, dest, start, end, count):
        if not uploaded:
            uploaded.append(put(bucket, f"{TREE}/late.out", b"arrived late"))
        return real_fetch(self, obj, dest, start, end, count)

    monkeypatch.setattr(results.Transfers, "fetch_range", fetch_and_upload_more)
    report = _pull(bucket, tmp_path / "r")
    outcome = _status(report, TREE)
    assert outcome.status == "deferred" and "changed while downloading" in outcome.reason
    assert len(names(bucket)) == len(files) + 1  # everything kept in GCS
    assert Tracker(tmp_path / "r").get(TREE)["status"] == "pending"
    monkeypatch.setattr(results.Transfers, "fetch_range", real_fetch)
    again = _pull(bucket, tmp_path / "r")
    assert _status(again, TREE).status == "cleaned"
    assert (tmp_path / "r" / TREE / "late.out").read_bytes() == b"arrived late"
    assert names(bucket) == []


def test_every_delete_carries_the_verified_generation(bucket, tmp_path, monkeypatch):
    from lib import storage

    gens = {"run-1/frame.zip": put(bucket, "run-1/frame.zip", make_zip(recorder_files(2)))}
    for rel in ("a.out", "b/c.out"):
        gens[f"{TREE}/{rel}"] = put(bucket, f"{TREE}/{rel}", rel.encode())
    deletes = {}
    real = storage.delete_many

    def recording(cfg, pairs):
        deletes.update(pairs)
        return real(cfg, pairs)

    monkeypatch.setattr(storage, "delete_many", recording)
    assert _pull(bucket, tmp_path / "r").ok
    assert deletes == gens and all(isinstance(g, int) and g > 0 for g in deletes.values())
    assert storage.list_blobs(bucket) == []


def test_zip_replaced_between_listing_and_delete_is_not_deleted(bucket, tmp_path, monkeypatch):
    put(bucket, "run-1/frame.zip", make_zip(recorder_files(2, "old")))
    newer = make_zip(recorder_files(2, "new"))
    real_delete = results.Transfers.delete

    def replace_then_delete(self, objs):
        put(bucket, "run-1/frame.zip", newer)
        return real_delete(self, objs)

    monkeypatch.setattr(results.Transfers, "delete", replace_then_delete)
    report = _pull(bucket, tmp_path / "r")
    outcome = _status(report, "run-1/frame")
    assert outcome.status == "cleaned" and outcome.kept_in_gcs == 1
    assert names(bucket) == ["run-1/frame.zip"]  # the generation precondition kept the newer upload
    from lib import storage

    assert storage.download_bytes(bucket, "run-1/frame.zip") == newer


def test_manifest_mismatch_fails_and_keeps_the_set(bucket, tmp_path):
    files = recorder_files(2)
    wrong = manifest_for({**files, "missing.out": b"never written"})
    put(bucket, "run-1/frame.zip", make_zip(files, manifest=wrong))
    report = _pull(bucket, tmp_path / "r")
    outcome = _status(report, "run-1/frame")
    assert outcome.status == "failed" and "missing.out" in outcome.reason
    assert names(bucket) == ["run-1/frame.zip"]
    assert not (tmp_path / "r" / "run-1" / "frame").exists()


def test_failed_model_state_is_reported_but_results_still_pulled(bucket, tmp_path):
    files = recorder_files(2)
    put(bucket, "run-1/frame.zip", make_zip(files, manifest=manifest_for(files, state="timeout")))
    report = _pull(bucket, tmp_path / "r")
    outcome = _status(report, "run-1/frame")
    assert outcome.status == "cleaned" and outcome.model_state == "timeout"
    assert any("timeout" in line for line in report.logs)


def test_existing_folder_with_different_content_is_never_overwritten(bucket, tmp_path):
    put(bucket, "frame.zip", make_zip(recorder_files(2)))
    folder = tmp_path / "r"
    (folder / "frame").mkdir(parents=True)
    (folder / "frame" / "mine.txt").write_text("the user's own notes")
    report = _pull(bucket, folder)
    assert _status(report, "frame").status == "failed" and "already exists" in _status(report, "frame").reason
    assert (folder / "frame" / "mine.txt").read_text() == "the user's own notes"
    assert names(bucket) == ["frame.zip"]


def test_watch_picks_up_a_set_that_appears_mid_poll(bucket, tmp_path):
    first, second = recorder_files(2, "a"), recorder_files(2, "b")
    put(bucket, "run-1/a.zip", make_zip(first))
    naps: list[float] = []
    appeared = {}

    def nap(seconds):  # the watch loop sleeps here between polls: that is when the VM uploads
        naps.append(seconds)
        if len(naps) == 1:
            put(bucket, "run-1/b.zip", make_zip(second))
            appeared["at"] = len(naps)

    seen = []
    reports = results.watch(bucket, tmp_path / "r", interval=45, sleep=nap, max_polls=3, settle=0,
                            on_report=lambda r: seen.append([o.id for o in r.outcomes]))
    assert naps == [45, 45]
    assert seen == [["run-1/a"], ["run-1/b"], []]
    assert all(r.ok for r in reports)
    assert_same_files(tmp_path / "r" / "run-1" / "a", first)
    assert_same_files(tmp_path / "r" / "run-1" / "b", second)
    assert names(bucket) == []


def test_watch_survives_a_failing_poll(bucket, tmp_path, monkeypatch):
    from lib.errors import OpsError

    calls = []
    real = results.list_sets

    def flaky(cfg):
        calls.append(1)
        if len(calls) == 1:
            raise OpsError("network down")
        return real(cfg)

    monkeypatch.setattr(results.listing, "list_sets", flaky)
    put(bucket, "x.zip", make_zip({"a": b"1"}))
    logs = []
    reports = results.watch(bucket, tmp_path / "r", interval=1, sleep=lambda s: None, max_polls=2, settle=0,
                            on_log=logs.append)
    assert any("poll failed: network down" in line for line in logs)
    assert [o.status for o in reports[-1].outcomes] == ["cleaned"]


def test_zip_replaced_while_downloading_is_deferred_and_nothing_placed(bucket, tmp_path, monkeypatch):
    put(bucket, "run-1/frame.zip", make_zip(recorder_files(2, "old")))
    newer_files = recorder_files(2, "new")
    real = results.Transfers.fetch_range
    done = []

    def replace_first(self, obj, dest, start, end, count):
        if not done:
            done.append(put(bucket, "run-1/frame.zip", make_zip(newer_files)))
        return real(self, obj, dest, start, end, count)

    monkeypatch.setattr(results.Transfers, "fetch_range", replace_first)
    report = _pull(bucket, tmp_path / "r")
    assert _status(report, "run-1/frame").status == "deferred"
    assert not (tmp_path / "r" / "run-1" / "frame").exists()
    assert names(bucket) == ["run-1/frame.zip"]
    monkeypatch.setattr(results.Transfers, "fetch_range", real)
    assert _status(_pull(bucket, tmp_path / "r"), "run-1/frame").status == "cleaned"
    assert_same_files(tmp_path / "r" / "run-1" / "frame", newer_files)


def test_a_sealed_tree_is_pulled_without_waiting_to_settle(tmp_path):
    """push.sh uploads MANIFEST.json last; a tree whose manifest is its newest object is complete."""
    def tree(seal_at: float) -> results.ResultSet:
        objs = [results.Obj(f"{TREE}/a.out", 1, 1, updated=100.0), results.Obj(f"{TREE}/b.out", 1, 2, updated=101.0),
                results.Obj(f"{TREE}/MANIFEST.json", 1, 3, updated=seal_at)]
        return results.ResultSet(TREE, "tree", objs)

    sealed = results.make_plan(results.Listing(sets=[tree(102.0)]), {}, settle=120, now=103.0)
    assert [s.id for s in sealed.todo] == [TREE]
    # an object newer than the manifest: something was written after the seal, so wait for the settle time
    unsealed = results.make_plan(results.Listing(sets=[tree(100.5)]), {}, settle=120, now=103.0)
    assert [s.id for s, _ in unsealed.deferred] == [TREE]
