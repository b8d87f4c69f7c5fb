"""Batch files as Windows tools write them: backslash paths, Notepad's UTF-8 BOM, PowerShell 5's UTF-16,
CRLF, and absolute model folders (`D:\\FEM\\wall_test` in job files written for a Windows desktop tool)."""

from __future__ import annotations

import codecs
import os

import pytest

from lib.batches import BatchError, folder_spec, parse_batch, read_text, split_line
from lib.errors import UsageError

LINES = "# models written on Windows\r\nmodels\\wall_test timeout=5\r\nmodels\\frame cores=2\r\n"


def _model(folder, main="main.tcl"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / main).write_text("puts hi\n")
    return folder


@pytest.fixture
def base(tmp_path):
    _model(tmp_path / "models" / "wall_test")
    _model(tmp_path / "models" / "frame")
    return tmp_path


def _names(batch):
    return [(m.name, m.folder.relative_to(batch.base).as_posix(), m.cores, m.timeout_min) for m in batch.models]


EXPECTED = [("wall_test", "models/wall_test", 1, 5), ("frame", "models/frame", 2, 60)]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_every_encoding_windows_writes_reads_the_same(base, encoding):
    """Plain UTF-8, Notepad's UTF-8 BOM, PowerShell 5 `>` (UTF-16 LE with BOM), BOM-less UTF-16, UTF-32."""
    path = base / "batch.txt"
    path.write_bytes(LINES.encode(encoding))
    assert _names(parse_batch(path)) == EXPECTED


def test_powershell_5_redirect_bytes(base):
    """The exact bytes `Get-Content ... > batch.txt` leaves in Windows PowerShell 5.1: FF FE, then UTF-16 LE."""
    path = base / "batch.txt"
    path.write_bytes(codecs.BOM_UTF16_LE + LINES.encode("utf-16-le"))
    assert read_text(path).startswith("# models written on Windows")
    assert _names(parse_batch(path)) == EXPECTED


def test_a_bom_is_not_part_of_the_first_folder(base):
    path = base / "batch.txt"
    path.write_bytes(codecs.BOM_UTF8 + b"models\\wall_test\n")
    assert [m.name for m in parse_batch(path).models] == ["wall_test"]


def test_non_ascii_names_survive_utf16(base):
    _model(base / "modèles" / "mur_béton")
    path = base / "batch.txt"
    path.write_bytes("modèles\\mur_béton name=mur\r\n".encode("utf-16"))
    assert parse_batch(path).models[0].folder == (base / "modèles" / "mur_béton").resolve()


def test_binary_junk_is_one_line_saying_to_save_as_utf8(tmp_path):
    path = tmp_path / "batch.txt"
    path.write_bytes(b"models\\wall \xe9\xff\xfe\n")
    with pytest.raises(UsageError, match="UTF-8") as info:
        parse_batch(path)
    assert "\n" not in str(info.value)


def test_backslashes_are_separators_not_escapes():
    assert split_line(r"models\wall_test main=run.tcl") == [r"models\wall_test", "main=run.tcl"]
    assert split_line(r'"My Models\wall test" cores=4') == [r"My Models\wall test", "cores=4"]
    assert split_line(r"'C:\FEM\frame'") == [r"C:\FEM\frame"]


def test_quoted_backslash_folder_with_spaces(base):
    _model(base / "My Models" / "wall test")
    path = base / "batch.txt"
    path.write_text('"My Models\\wall test" name=wall\n', encoding="utf-8")
    assert parse_batch(path).models[0].folder == (base / "My Models" / "wall test").resolve()


def test_backslash_path_out_of_the_base_is_still_refused(base, tmp_path):
    _model(tmp_path.parent / f"{tmp_path.name}-outside")
    path = base / "batch.txt"
    path.write_text(f"..\\{tmp_path.name}-outside\n", encoding="utf-8")
    with pytest.raises(BatchError, match="outside the batch's base"):
        parse_batch(path)


def test_absolute_folder_elsewhere_on_disk_is_accepted(tmp_path):
    """`/data/wall_test` (the Linux form of `D:\\FEM\\wall_test`): an absolute folder is the user's choice."""
    folder = _model(tmp_path / "FEM" / "wall_test")
    batches = tmp_path / "batches"
    batches.mkdir()
    path = batches / "jobs.txt"
    path.write_text(f"{folder} timeout=10\n", encoding="utf-8")
    model = parse_batch(path).models[0]
    assert (model.name, model.folder, model.timeout_min) == ("wall_test", folder.resolve(), 10)


def test_absolute_folder_that_does_not_exist_is_reported(tmp_path):
    path = tmp_path / "jobs.txt"
    path.write_text(f"{tmp_path / 'nowhere'}\n", encoding="utf-8")
    with pytest.raises(BatchError, match="does not exist"):
        parse_batch(path)


@pytest.mark.parametrize(("text", "expected"), [
    (r"D:\FEM\wall_test", (r"D:\FEM\wall_test", True)),
    ("D:/FEM/wall_test", ("D:/FEM/wall_test", True)),
    (r"\\fileserver\fem\wall_test", (r"\\fileserver\fem\wall_test", True)),
    (r"models\wall_test", (r"models\wall_test", False)),
])
def test_folder_spec_on_windows(text, expected):
    assert folder_spec(text, windows=True) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (r"models\wall_test", ("models/wall_test", False)),
    ("/data/FEM/wall_test", ("/data/FEM/wall_test", True)),
    ("models/wall_test", ("models/wall_test", False)),
])
def test_folder_spec_elsewhere(text, expected):
    assert folder_spec(text, windows=False) == expected


@pytest.mark.skipif(os.name == "nt", reason="a drive path is a real folder on Windows")
def test_a_windows_drive_path_on_linux_says_what_to_write_instead(base):
    path = base / "jobs.txt"
    path.write_text("D:\\FEM\\wall_test timeout=5\r\nmodels\\frame\r\n", encoding="utf-8-sig")
    with pytest.raises(BatchError) as info:
        parse_batch(path)
    assert info.value.problems == [f"{path}:1: folder 'D:\\\\FEM\\\\wall_test' is a Windows path: on this machine name "
                                   "the folder relative to the batch file or as an absolute path like /data/wall_test"]
