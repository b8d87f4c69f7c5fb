"""The transfer engine: CRC32C taken while writing (no file read back), slices combined into the object's CRC32C."""

from __future__ import annotations

import os
import random

import google_crc32c

from lib import results, storage
from lib.results import transfers
from tests.support.results import crc, make_zip, names, put, put_tree, recorder_files


def test_crc32c_combine_matches_the_whole_object_crc():
    rnd = random.Random(3)
    data = rnd.randbytes(300_001)
    for cuts in ([], [1], [150_000], [7, 8, 9, 299_999], sorted(rnd.sample(range(1, len(data)), 20))):
        edges = [0, *cuts, len(data)]
        pieces = [transfers.Piece(a, b - a, int.from_bytes(google_crc32c.Checksum(data[a:b]).digest(), "big"))
                  for a, b in zip(edges, edges[1:], strict=False)]
        rnd.shuffle(pieces)  # slices finish in any order
        assert transfers.whole_crc(pieces) == crc(data), cuts


def test_empty_pieces_and_a_wrong_slice_are_told_apart():
    data = b"abc" * 1000
    good = [transfers.Piece(0, 1500, int.from_bytes(google_crc32c.Checksum(data[:1500]).digest(), "big")),
            transfers.Piece(1500, 1500, int.from_bytes(google_crc32c.Checksum(data[1500:]).digest(), "big"))]
    obj = results.Obj("x", len(data), 1, crc32c=crc(data))
    assert transfers.check_pieces(None, obj, good) is None
    bad = [good[0], transfers.Piece(1500, 1500, good[1].crc ^ 1)]
    assert "CRC32C" in transfers.check_pieces(None, obj, bad)
    assert "size" in transfers.check_pieces(None, obj, good[:1])


def test_downloads_are_verified_without_reading_the_files_back(bucket, tmp_path, monkeypatch):
    def no_reread(path):
        raise AssertionError(f"{path} was read back to checksum it")

    monkeypatch.setattr(storage, "crc32c_file", no_reread)
    tree = recorder_files(4, "t")
    put_tree(bucket, "Frame_20261121-101500", tree)
    put(bucket, "run-1/a.zip", make_zip(recorder_files(2, "z"), with_manifest=False))
    report = results.pull(bucket, tmp_path / "r", settle=0)
    assert report.ok and {o.status for o in report.outcomes} == {"cleaned"}, report.to_dict()
    assert names(bucket) == []


def test_sliced_download_is_checked_from_its_slices(bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(transfers, "LARGE_OBJECT", 1 << 20)
    monkeypatch.setattr(transfers, "SLICE", 256 << 10)
    monkeypatch.setattr(storage, "crc32c_file", lambda path: (_ for _ in ()).throw(AssertionError("read back")))
    big = os.urandom((3 << 20) + 12345)
    put(bucket, "Big_20261121-101500/big.bin", big)
    report = results.pull(bucket, tmp_path / "r", settle=0)
    assert report.ok, report.to_dict()
    assert (tmp_path / "r" / "Big_20261121-101500" / "big.bin").read_bytes() == big


def test_large_downloads_take_turns_and_a_waiting_one_gives_up_on_ctrl_c():
    """One large object on the line at a time, so each set finishes (and is cleaned) before the next starts."""
    import threading
    import time

    import pytest

    from lib.config import Config

    cfg = Config.load({"backend": "local", "compute_endpoint": "http://127.0.0.1:9", "storage_endpoint":
                       "http://127.0.0.1:9", "monitoring_endpoint": "127.0.0.1:9"}, env={}, path="")
    entered: list[str] = []
    errors: list[str] = []
    release = {name: threading.Event() for name in ("A", "B", "D")}

    def download(name: str, xfer: transfers.Transfers) -> None:
        try:
            with xfer.large_slot():
                entered.append(name)
                release[name].wait(10)
        except transfers.SetFailed as exc:
            errors.append(f"{name}: {exc}")

    def settle(expected: list[str]) -> None:
        deadline = time.monotonic() + 5
        while entered != expected and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # and nobody else gets in meanwhile
        assert entered == expected

    with transfers.Transfers(cfg, 2) as xfer:
        threads = {name: threading.Thread(target=download, args=(name, xfer)) for name in release}
        threads["A"].start()
        settle(["A"])
        threads["B"].start()
        settle(["A"])  # B waits for A
        release["A"].set()
        settle(["A", "B"])
        threads["D"].start()
        xfer.cancel.set()  # Ctrl+C while D waits: it must not start its download
        release["B"].set()
        threads["D"].join(5)
        assert entered == ["A", "B"] and errors == ["D: interrupted"]
        with pytest.raises(transfers.SetFailed, match="interrupted"), xfer.large_slot():
            pass
        for name in ("A", "B"):
            threads[name].join(5)


# ----------------------------------------------------------------- a large zip inflated while it downloads


def _big_zip(bucket, monkeypatch, name: str = "run-1/big.zip") -> dict[str, bytes]:
    """A zip of about 330 KB that pulls as a large object in 30 KB slices, first member (random) on top."""
    monkeypatch.setattr(transfers, "LARGE_OBJECT", 100_000)
    monkeypatch.setattr(transfers, "SLICE", 30_000)
    files = {"a_first.out": os.urandom(150_000), **recorder_files(3), "z_big.out": os.urandom(150_000)}
    put(bucket, name, make_zip(files))
    return files


def test_a_large_zip_is_inflated_while_its_last_slices_download(bucket, tmp_path, monkeypatch):
    import threading

    files = _big_zip(bucket, monkeypatch)
    size = storage.list_blobs(bucket, "run-1/")[0].size
    last_fetched = (size - 1) // transfers.SLICE - 1  # the tail slice comes first, then offset order
    inflated = threading.Event()
    seen: dict[str, bool] = {}
    fetch = transfers.Transfers.fetch_range

    def held(self, obj, dest, start, end, count):
        if end is not None and start // transfers.SLICE == last_fetched:
            seen["inflating_before_the_end"] = inflated.wait(10)  # released once a member is out
        return fetch(self, obj, dest, start, end, count)

    def watch() -> None:
        while not inflated.is_set() and not seen:
            if any(p.is_file() for p in (tmp_path / "r").glob(".ops-hpc-partial/*/x/*")):
                inflated.set()

    monkeypatch.setattr(transfers.Transfers, "fetch_range", held)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    report = results.pull(bucket, tmp_path / "r", settle=0)
    watcher.join(5)
    assert report.ok, report.to_dict()
    assert seen == {"inflating_before_the_end": True}
    for rel, data in files.items():
        assert (tmp_path / "r" / "run-1" / "big" / rel).read_bytes() == data
    assert storage.list_blobs(bucket, "run-1/") == []


def test_a_slice_that_keeps_failing_fails_the_zip_and_places_nothing(bucket, tmp_path, monkeypatch):
    from google.api_core import exceptions as gexc

    _big_zip(bucket, monkeypatch)
    fetch = transfers.Transfers.fetch_range

    def forbidden(self, obj, dest, start, end, count):
        if end is not None and start == transfers.SLICE:  # the second slice of the file
            raise gexc.Forbidden("no")
        return fetch(self, obj, dest, start, end, count)

    monkeypatch.setattr(transfers.Transfers, "fetch_range", forbidden)
    report = results.pull(bucket, tmp_path / "r", settle=0)
    outcome = report.outcomes[0]
    assert outcome.status == "failed" and "download failed after retries: Forbidden" in outcome.reason, outcome
    assert names(bucket) == ["run-1/big.zip"]
    assert not (tmp_path / "r" / "run-1").exists() and not list((tmp_path / "r").glob(".ops-hpc-partial/*"))


def test_a_corrupted_slice_of_a_large_zip_is_caught_and_kept(bucket, tmp_path, monkeypatch, faults):
    _big_zip(bucket, monkeypatch)
    faults("storage", "corrupt", 1, match="alt=media")  # the first slice asked for: the zip's directory
    report = results.pull(bucket, tmp_path / "r", settle=0)
    assert report.outcomes[0].status == "failed", report.to_dict()
    assert names(bucket) == ["run-1/big.zip"]
    assert not (tmp_path / "r" / "run-1").exists()


def test_ctrl_c_during_a_streamed_zip_stops_it_and_places_nothing(bucket, tmp_path, monkeypatch):
    """The cancel flag (what Ctrl+C sets) stops the slices and the inflating; the zip stays in GCS."""
    _big_zip(bucket, monkeypatch)
    fetch = transfers.Transfers.fetch_range
    started: list[int] = []

    def interrupted(self, obj, dest, start, end, count):
        started.append(start)
        if end is not None and start == 2 * transfers.SLICE:
            self.cancel.set()  # as pulling.pull does on KeyboardInterrupt
        return fetch(self, obj, dest, start, end, count)

    monkeypatch.setattr(transfers.Transfers, "fetch_range", interrupted)
    report = results.pull(bucket, tmp_path / "r", settle=0)
    outcome = report.outcomes[0]
    assert outcome.status == "failed" and "interrupted" in outcome.reason, outcome
    slices = -(-outcome.bytes // transfers.SLICE)
    assert len(started) < slices  # no slice started after the flag was set
    assert names(bucket) == ["run-1/big.zip"]
    assert not (tmp_path / "r" / "run-1").exists() and not list((tmp_path / "r").glob(".ops-hpc-partial/*"))
