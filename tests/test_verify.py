"""bin/verify and lib.manifest: every missing, extra or differing file, against GCS, the manifest, or the record."""

from __future__ import annotations

import json

import pytest

from lib import manifest, results
from tests.support.bins import run_bin
from tests.support.results import crc, make_zip, manifest_for, put, put_tree, recorder_files

T = "TTFlat_20260406-153012"


def test_manifest_parse_rejects_what_the_vm_must_not_write():
    good = manifest_for({"a.out": b"1"})
    assert manifest.parse(json.dumps(good))["model"] == "frame"
    for bad, why in [(b"{not json", "not valid JSON"), ({"format": 2, "files": []}, "format"),
                     ({"format": 1, "files": [{"path": "a"}]}, "each file needs"),
                     ({"format": 1, "files": [{"path": "../a", "size": 1, "crc32c": "x"}]}, "unsafe path"),
                     ({"format": 1, "files": [{"path": "a", "size": 1, "crc32c": "x"}] * 2}, "listed twice"),
                     ({"format": 1, "files": [], "state": "weird"}, "state")]:
        with pytest.raises(manifest.ManifestError, match=why):
            manifest.parse(bad)


def test_compare_reports_missing_extra_and_differing(tmp_path):
    (tmp_path / "same.out").write_bytes(b"same")
    (tmp_path / "size.out").write_bytes(b"longer than expected")
    (tmp_path / "content.out").write_bytes(b"abcd")
    (tmp_path / "extra.out").write_bytes(b"?")
    (tmp_path / manifest.NAME).write_text("{}")
    diffs = manifest.compare(tmp_path, [manifest.Expected("same.out", 4, crc(b"same")),
                                        manifest.Expected("size.out", 3, crc(b"abc")),
                                        manifest.Expected("content.out", 4, crc(b"abce")),
                                        manifest.Expected("gone.out", 1, crc(b"x"))])
    assert sorted((d.kind, d.path) for d in diffs) == [("differs", "content.out"), ("differs", "size.out"),
                                                      ("extra", "extra.out"), ("missing", "gone.out")]


def test_verify_tree_against_gcs_while_it_is_still_there(localcloud, bucket, tmp_path):
    files = recorder_files(3)
    put_tree(bucket, T, files)
    local = tmp_path / "r" / T
    (local / "sub").mkdir(parents=True)
    for rel, data in files.items():
        (local / rel).write_bytes(data)
    env = localcloud.env(bucket=bucket.bucket_name)
    ok = run_bin("verify", "--dir", str(tmp_path / "r"), T, env=env)
    assert ok.returncode == 0 and f"{T}: OK (against gcs)" in ok.stdout, ok.stderr
    (local / "Node_Disp_0.out").unlink()
    (local / "stray.txt").write_text("x")
    damaged = bytearray(files["Node_Disp_1.out"])
    damaged[0] ^= 1
    (local / "Node_Disp_1.out").write_bytes(bytes(damaged))
    bad = run_bin("verify", "--dir", str(tmp_path / "r"), "--json", T, env=env)
    assert bad.returncode == 1
    found = json.loads(bad.stdout)["sets"][0]
    assert found["source"] == "gcs"
    assert sorted(d.split()[0] + " " + d.split()[1] for d in found["differences"]) == [
        "differs Node_Disp_1.out", "extra stray.txt", "missing Node_Disp_0.out"]


def test_verify_zip_against_gcs_reads_only_the_central_directory(bucket, tmp_path):
    files = recorder_files(2)
    put(bucket, "run-1/frame.zip", make_zip(files))
    local = tmp_path / "r" / "run-1" / "frame"
    (local / "sub").mkdir(parents=True)
    for rel, data in files.items():
        (local / rel).write_bytes(data)
    (local / manifest.NAME).write_text(json.dumps(manifest_for(files)))
    [v] = results.verify(bucket, tmp_path / "r", ["run-1/frame"])
    assert v.source == "gcs" and v.differences == [], v
    (local / "sub" / "Element_Force.out").write_bytes(b"x" * len(files["sub/Element_Force.out"]))
    [v] = results.verify(bucket, tmp_path / "r", ["run-1/frame"])
    assert len(v.differences) == 1 and "CRC-32" in v.differences[0]


def test_verify_after_cleaning_uses_the_manifest_or_the_recorded_checksums(localcloud, bucket, tmp_path):
    files = recorder_files(3)
    put(bucket, "run-1/frame.zip", make_zip(files))
    put_tree(bucket, T, files)  # a legacy tree without a manifest
    folder = tmp_path / "r"
    assert results.pull(bucket, folder, settle=0).ok
    env = localcloud.env(bucket=bucket.bucket_name)
    ok = run_bin("verify", "--dir", str(folder), env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "run-1/frame: OK (against manifest)" in ok.stdout and f"{T}: OK (against recorded)" in ok.stdout
    (folder / "run-1/frame/Node_Disp_2.out").write_bytes(b"changed")
    (folder / T / "Node_Disp_0.out").unlink()
    bad = run_bin("verify", "--dir", str(folder), "--offline", env=env)
    assert bad.returncode == 1
    assert "differs  Node_Disp_2.out" in bad.stdout and "missing  Node_Disp_0.out" in bad.stdout


def test_unverifiable_set_is_reported_and_fails_only_with_strict(tmp_path, localcloud):
    (tmp_path / "r" / "old").mkdir(parents=True)
    (tmp_path / "r" / "old" / "a").write_text("1")
    env = localcloud.env()
    out = run_bin("verify", "--dir", str(tmp_path / "r"), "--offline", "old", env=env)
    assert out.returncode == 0 and "cannot verify" in out.stdout
    assert run_bin("verify", "--dir", str(tmp_path / "r"), "--offline", "--strict", "old", env=env).returncode == 1
