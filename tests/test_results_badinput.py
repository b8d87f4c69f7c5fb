"""Bad input never escapes --dir and never destroys: each case is refused, kept in GCS and marked failed.

Object names the filesystem store cannot hold ('..' segments, absolute names) live in the memory-store
cloud (`memcloud`); hostile zip members need no special store. Every test pulls into `parent/r` and then
checks that `parent` holds nothing but `r`.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

from lib import results
from lib.downloads import Tracker
from tests.support.results import assert_nothing_escaped, make_zip, names, put, recorder_files

T = "T_20260101-000000"
ESCAPE = "ops-hpc-escape-canary-7f3a"  # an absolute path that must never appear (fixed: xdist workers must collect the same ids)


@pytest.fixture
def hostile(memcloud):
    return memcloud.new_bucket("h")


def _pull_refused(cfg, tmp_path: Path, expect: str, *, kept: list[str] | None = None) -> results.Report:
    parent = tmp_path / "parent"
    folder = parent / "r"
    parent.mkdir()
    before = names(cfg)
    report = results.pull(cfg, folder, settle=0)
    failed = report.failed
    assert failed, report.to_dict()
    assert any(expect in o.reason for o in failed), [o.reason for o in failed]
    assert names(cfg) == (kept if kept is not None else before)  # nothing deleted from GCS
    state = Tracker(folder).sets()
    for o in failed:
        assert state[o.id]["status"] == "failed" and state[o.id]["reason"] == o.reason
    assert_nothing_escaped(parent, folder)
    assert not Path("/tmp", ESCAPE).exists() and not Path("/", ESCAPE).exists()
    assert not (folder / results.PARTIAL).exists()
    return report


# -- hostile object names ------------------------------------------------------------

@pytest.mark.parametrize("name, expect", [
    ("../evil.zip", "'..' segment"),
    ("run/../../evil.zip", "'..' segment"),
    (f"/tmp/{ESCAPE}/evil.zip", "absolute path"),
    (f"C:/{ESCAPE}.zip", "drive letter"),
    ("C:evil.zip", "drive letter"),
    ("run\\..\\..\\evil.zip", "backslash"),
    ("run/CON.zip", "reserved device name"),
    ("run/nul.txt.zip", "reserved device name"),
    ("run/x..zip", "ends with a dot"),
    ("run/what?.zip", "Windows cannot hold"),
    ("download_state.json.zip", "ops-hpc's own files"),
])
def test_hostile_zip_object_names_are_refused(hostile, tmp_path, name, expect):
    put(hostile, name, make_zip({"a.out": b"1"}))
    _pull_refused(hostile, tmp_path, expect)


@pytest.mark.parametrize("rel, expect", [
    ("../../evil.out", "'..' segment"),
    ("a/../../../evil.out", "'..' segment"),
    ("a\\..\\..\\evil.out", "backslash"),
    ("sub/AUX", "reserved device name"),
    ("trailing. ", "ends with a dot or space"),
    ('quote".out', "Windows cannot hold"),
])
def test_hostile_tree_object_names_refuse_the_whole_set(hostile, tmp_path, rel, expect):
    put(hostile, f"{T}/ok.out", b"fine")
    put(hostile, f"{T}/{rel}", b"evil")
    _pull_refused(hostile, tmp_path, expect)


def test_absolute_tree_member_is_refused(hostile, tmp_path):
    put(hostile, f"{T}//tmp/{ESCAPE}/evil.out", b"evil")
    _pull_refused(hostile, tmp_path, "absolute path")


def test_tree_names_differing_only_in_case_are_refused(bucket, tmp_path):
    put(bucket, f"{T}/Out.txt", b"upper")
    put(bucket, f"{T}/out.txt", b"lower")
    _pull_refused(bucket, tmp_path, "differ only in case")


def test_tree_file_that_is_also_a_folder_on_windows_is_refused(bucket, tmp_path):
    put(bucket, f"{T}/data", b"a file")
    put(bucket, f"{T}/DATA/x.out", b"in a folder of the same name, ignoring case")
    _pull_refused(bucket, tmp_path, "both a file and a folder")


def test_sets_differing_only_in_case_are_both_refused(bucket, tmp_path):
    put(bucket, "run-1/Frame.zip", make_zip({"a": b"1"}))
    put(bucket, "run-1/frame.zip", make_zip({"a": b"2"}))
    report = _pull_refused(bucket, tmp_path, "would land in the same folder")
    assert len(report.failed) == 2


def test_good_sets_beside_a_bad_one_are_still_pulled(hostile, tmp_path):
    put(hostile, "../evil.zip", make_zip({"a.out": b"1"}))
    put(hostile, "run-1/good.zip", make_zip({"a.out": b"good"}))
    report = _pull_refused(hostile, tmp_path, "'..' segment", kept=["../evil.zip"])
    assert [o.status for o in report.outcomes if o.id == "run-1/good"] == ["cleaned"]
    assert (tmp_path / "parent" / "r" / "run-1" / "good" / "a.out").read_bytes() == b"good"


# -- hostile zips ------------------------------------------------------------------------

def _symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = 0o120777 << 16
    return info, target.encode()


@pytest.mark.parametrize("member, expect", [
    ("../evil.out", "'..' segment"),
    ("ok/../../../evil.out", "'..' segment"),
    (f"/tmp/{ESCAPE}/evil.out", "absolute path"),
    (f"C:/{ESCAPE}/evil.out", "drive letter"),
    ("..\\..\\evil.out", "backslash"),
    ("sub/LPT1.out", "reserved device name"),
    ("name.", "ends with a dot"),
    ("a|b.out", "Windows cannot hold"),
])
def test_hostile_zip_members_refuse_the_set(bucket, tmp_path, member, expect):
    put(bucket, "run-1/frame.zip", make_zip(recorder_files(2), raw=[(member, b"evil")]))
    _pull_refused(bucket, tmp_path, expect)


def test_symlink_member_is_refused(bucket, tmp_path):
    put(bucket, "run-1/frame.zip", make_zip({"a.out": b"1"}, raw=[_symlink("link", "../../../../etc/passwd")]))
    _pull_refused(bucket, tmp_path, "symbolic link")


def test_zip_members_differing_only_in_case_are_refused(bucket, tmp_path):
    put(bucket, "run-1/frame.zip", make_zip({"Disp.out": b"1"}, raw=[("disp.out", b"2")]))
    _pull_refused(bucket, tmp_path, "differ only in case")


def test_duplicate_zip_members_are_refused(bucket, tmp_path):
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = make_zip({"a.out": b"1"}, raw=[("a.out", b"2")])
    put(bucket, "run-1/frame.zip", data)
    _pull_refused(bucket, tmp_path, "appears twice")


def test_empty_zip_object_is_refused(bucket, tmp_path):
    put(bucket, "run-1/frame.zip", b"")
    _pull_refused(bucket, tmp_path, "empty zip")


def test_zip_without_members_is_refused(bucket, tmp_path):
    put(bucket, "run-1/frame.zip", make_zip({}, with_manifest=False))
    _pull_refused(bucket, tmp_path, "empty zip")


@pytest.mark.parametrize("data", [b"this is not a zip at all", make_zip(recorder_files(3))[:-30]],
                         ids=["garbage", "truncated"])
def test_unreadable_zip_is_refused(bucket, tmp_path, data):
    put(bucket, "run-1/frame.zip", data)
    _pull_refused(bucket, tmp_path, "not a readable zip")


def test_member_with_bad_crc_is_caught_before_anything_reaches_the_folder(bucket, tmp_path):
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("first.out", b"fine")
        zf.writestr("second.out", b"A" * 1000)
    data = bytearray(buf.getvalue())
    at = bytes(data).index(b"A" * 1000)
    data[at + 500] ^= 0x01  # damaged inside the zip, so GCS's CRC32C of the object still matches
    put(bucket, "run-1/frame.zip", bytes(data))
    _pull_refused(bucket, tmp_path, "damaged")
    assert not (tmp_path / "parent" / "r" / "run-1").exists()  # not even the intact first member


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_symlinked_folder_inside_dir_cannot_be_used_to_escape(bucket, tmp_path):
    parent = tmp_path / "parent"
    outside = tmp_path / "outside"
    (parent / "r").mkdir(parents=True)
    outside.mkdir()
    (parent / "r" / "run-1").symlink_to(outside, target_is_directory=True)
    put(bucket, "run-1/frame.zip", make_zip({"a.out": b"1"}))
    report = results.pull(bucket, parent / "r", settle=0)
    assert report.failed and "resolves outside" in report.failed[0].reason
    assert list(outside.iterdir()) == []
    assert names(bucket) == ["run-1/frame.zip"]
