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


def test_large_downloads_take_turns_and_small_zips_wait_for_them(tmp_path):
    """One large object on the line at a time (each extracted while the next downloads); a small zip goes last."""
    import threading
    import time

    import pytest

    from lib.config import Config

    cfg = Config.load({"backend": "local", "compute_endpoint": "http://127.0.0.1:9", "storage_endpoint":
                       "http://127.0.0.1:9", "monitoring_endpoint": "127.0.0.1:9"}, env={}, path="")
    entered: list[str] = []
    release = {name: threading.Event() for name in ("A", "B", "S")}

    def download(name: str, size: int, xfer: transfers.Transfers) -> None:
        with xfer.zip_slot(size):
            entered.append(name)
            release[name].wait(10)

    def settle(expected: list[str]) -> None:
        deadline = time.monotonic() + 5
        while entered != expected and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # and nobody else gets in meanwhile
        assert entered == expected

    large = transfers.LARGE_OBJECT
    with transfers.Transfers(cfg, 2) as xfer:
        for _ in range(8):  # who wakes first when A ends is up to the scheduler: B must win every time
            entered.clear()
            release.update({name: threading.Event() for name in ("A", "B", "S")})
            threads = [threading.Thread(target=download, args=("A", large, xfer))]
            threads[0].start()
            settle(["A"])
            threads += [threading.Thread(target=download, args=("S", 5 << 20, xfer)),
                        threading.Thread(target=download, args=("B", large + 1, xfer))]
            for t in threads[1:]:
                t.start()
            settle(["A"])  # B waits for A; S waits while a large one is in flight or waiting
            release["A"].set()
            settle(["A", "B"])
            release["B"].set()
            settle(["A", "B", "S"])
            release["S"].set()
            for t in threads:
                t.join(5)

        # Ctrl+C: a set waiting for its turn gives up instead of starting a download
        hold, release["C"] = threading.Event(), threading.Event()
        first = threading.Thread(target=download, args=("C", large, xfer))
        first.start()
        settle(["A", "B", "S", "C"])
        errors: list[BaseException] = []

        def waiter() -> None:
            try:
                with xfer.zip_slot(large):
                    hold.set()
            except transfers.SetFailed as exc:
                errors.append(exc)

        second = threading.Thread(target=waiter)
        second.start()
        xfer.cancel.set()
        second.join(5)
        assert not hold.is_set() and [str(e) for e in errors] == ["interrupted"]
        release["C"].set()
        first.join(5)
        with pytest.raises(transfers.SetFailed, match="interrupted"), xfer.zip_slot(1000):
            pass
