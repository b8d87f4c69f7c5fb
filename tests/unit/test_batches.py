"""Batch files: every bad line reported with file and line before anything happens; sharding by timeout."""

from __future__ import annotations

import pytest

from lib.batches import BatchError, parse_batch


def _model(folder, main="main.tcl"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / main).write_text("puts hi\n")


def test_example_batch_parses():
    batch = parse_batch("batches/example.txt")
    assert [m.name for m in batch.models] == ["frame_pushover", "truss_transient"]
    assert all(m.main == "main.tcl" and m.cores == 1 and m.timeout_min == 5 for m in batch.models)


def test_default_jobs_file_of_make_run_parses():
    batch = parse_batch("batches/jobs.txt")
    assert [m.name for m in batch.models] == ["frame_pushover", "truss_transient"]
    assert batch.timeouts_min == [10, 10]


def test_every_bad_line_is_reported_with_file_and_line(tmp_path):
    base = tmp_path / "b"
    _model(base / "good")
    _model(base / "other")
    (base / "nomain").mkdir(parents=True)
    outside = tmp_path / "outside"
    _model(outside)
    text = "\n".join([
        "# comment line",
        "good timeout=5",          # 2 ok
        "missing",                 # 3 missing folder
        "nomain",                  # 4 no main script
        "other timeout=ten",       # 5 non-numeric timeout
        "other name=good",         # 6 duplicate name
        "../outside",              # 7 outside the base
        "other cores=0",           # 8 cores not above 0
        "other colour=red",        # 9 unknown option
        "",
    ])
    batch = base / "batch.txt"
    batch.write_text(text)
    with pytest.raises(BatchError) as err:
        parse_batch(batch)
    problems = err.value.problems
    assert err.value.code == 2
    lines = sorted(int(p.split(":")[1]) for p in problems)
    assert lines == [3, 4, 5, 6, 7, 8, 9]
    joined = "\n".join(problems)
    for words in ("does not exist", "no main script", "timeout='ten'", "duplicate model name", "outside the batch",
                  "cores='0'", "unknown option"):
        assert words in joined
    assert all(p.startswith(f"{batch}:") for p in problems)


def test_symlink_loop_in_the_batch_folder_is_one_problem_line_not_a_traceback(tmp_path):
    base = tmp_path / "b"
    _model(base / "good")
    (base / "loop").symlink_to(base / "loop")
    (base / "batch.txt").write_text("good\nloop\n")
    with pytest.raises(BatchError) as info:
        parse_batch(base / "batch.txt")
    (problem,) = info.value.problems  # "cannot be resolved" (a loop) or "does not exist" (Python 3.13+)
    assert problem.startswith(f"{base / 'batch.txt'}:2: folder 'loop' ")


def test_symlinked_main_outside_the_folder_is_refused_inside_it_is_accepted(tmp_path):
    base = tmp_path / "b"
    (base / "inside" / "variants").mkdir(parents=True)
    (base / "inside" / "variants" / "a.tcl").write_text("puts a\n")
    (base / "inside" / "main.tcl").symlink_to("variants/a.tcl")
    (base / "outside").mkdir()
    (base / "shared.tcl").write_text("puts shared\n")
    (base / "outside" / "main.tcl").symlink_to("../shared.tcl")
    (base / "batch.txt").write_text("inside\noutside\n")
    with pytest.raises(BatchError) as info:
        parse_batch(base / "batch.txt")
    (problem,) = info.value.problems
    assert ":2: main script 'main.tcl' in 'outside' is a symlink to a file outside the folder" in problem
    (base / "batch.txt").write_text("inside\n")
    assert [m.name for m in parse_batch(base / "batch.txt").models] == ["inside"]


def test_cores_header_mem_and_retries(tmp_path):
    for name in ("a", "b", "c"):
        _model(tmp_path / name)
    path = tmp_path / "batch.txt"
    path.write_text("#cores 8\n# a comment\na mem=1.5 retries=2\nb cores=8\nc\n")
    batch = parse_batch(path)
    assert batch.cores == 8
    a, b, c = batch.models
    assert (a.mem_gb, a.retries, b.cores, c.retries) == (1.5, 2, 8, None)
    assert a.to_json()["mem_gb"] == 1.5 and c.to_json()["retries"] == 0


def test_a_model_wider_than_the_cores_header_and_bad_values_are_refused(tmp_path):
    for name in ("a", "b", "c"):
        _model(tmp_path / name)
    path = tmp_path / "batch.txt"
    path.write_text("#cores 4\na cores=6\nb mem=lots\nc retries=-1\n")
    with pytest.raises(BatchError) as err:
        parse_batch(path)
    text = str(err.value)
    assert f"{path}:2: cores=6 is more than the batch's #cores 4" in text
    assert f"{path}:3: mem='lots'" in text and f"{path}:4: retries='-1'" in text
    path.write_text("#cores many\na\n")
    with pytest.raises(BatchError, match="#cores 'many'"):
        parse_batch(path)
