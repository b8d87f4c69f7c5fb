"""Name rules: the same verdict on every OS, so a set that pulls on Linux also pulls on Windows."""

from __future__ import annotations

import sys
import zipfile

import pytest

from lib import safepaths


@pytest.mark.parametrize("name", ["a.out", "run-1/frame/Node_Disp.out", "sub/dir/x.y.z", "CONFIG.txt", "nullable",
                                  "com10.out", "über/ä.out", ".hidden"])
def test_ordinary_names_are_fine(name):
    assert safepaths.problem(name) is None


@pytest.mark.parametrize("name, why", [
    ("", "empty"), ("../x", "'..'"), ("a/../../x", "'..'"), ("a/./b", "'.'"), ("a//b", "empty"),
    ("/etc/passwd", "absolute"), ("C:/x", "drive letter"), ("c:x", "drive letter"), ("a\\b", "backslash"),
    ("CON", "reserved"), ("con.txt", "reserved"), ("sub/Nul", "reserved"), ("LPT9.log", "reserved"),
    ("COM1", "reserved"), ("AUX .txt", "reserved"), ("x.", "dot or space"), ("x ", "dot or space"),
    ("a<b", "Windows"), ("a>b", "Windows"), ("ab:c", "Windows"), ('a"b', "Windows"), ("a|b", "Windows"),
    ("a?b", "Windows"), ("a*b", "Windows"), ("a\x00b", "Windows"), ("a\tb", "Windows"), ("x" * 256, "longer"),
])
def test_unsafe_names_say_why(name, why):
    assert why in safepaths.problem(name)
    with pytest.raises(safepaths.UnsafeName):
        safepaths.check(name)


def test_case_clashes():
    assert safepaths.case_clashes(["a.out", "b.out", "sub/a.out"]) == []
    assert "differ only in case" in safepaths.case_clashes(["Out.txt", "out.txt"])[0]
    assert "appears twice" in safepaths.case_clashes(["x", "x"])[0]
    assert "both a file and a folder" in safepaths.case_clashes(["data", "DATA/x"])[0]
    assert safepaths.case_clashes(["dir/", "dir/x"]) == []  # a zip's folder entry is not a clash


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_inside_resolves_and_refuses_escapes(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    assert safepaths.inside(root, "a/b.out") == (root / "a" / "b.out").resolve()
    (root / "link").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(safepaths.UnsafeName, match="resolves outside"):
        safepaths.inside(root, "link/x")
    with pytest.raises(safepaths.UnsafeName):
        safepaths.inside(root, "../x")


def test_zip_problems_find_symlinks_encryption_and_bad_names():
    link = zipfile.ZipInfo("link")
    link.external_attr = 0o120777 << 16
    secret = zipfile.ZipInfo("secret")
    secret.flag_bits |= 0x1
    ok = [zipfile.ZipInfo("a.out"), zipfile.ZipInfo("dir/")]
    assert safepaths.zip_problems(ok) == []
    problems = safepaths.zip_problems([*ok, link, secret, zipfile.ZipInfo("../x"), zipfile.ZipInfo("A.OUT")])
    text = "\n".join(problems)
    for expect in ("symbolic link", "encrypted", "'..'", "differ only in case"):
        assert expect in text
