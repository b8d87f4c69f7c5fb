"""Parametric batch lines: args=, sweep tables, shared folders, and how they expand into model entries."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib import parametric
from lib.batches import BatchError, parse_batch
from lib.parametric import ParamError, parse_sweep, sanitize, split_args
from lib.stage import StagedModel

REPO = Path(__file__).resolve().parents[2]


def _helpers():
    spec = importlib.util.spec_from_file_location("ops_helpers_param", REPO / "vm-scripts" / "ops_helpers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model(folder: Path, main: str = "main.tcl") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / main).write_text("puts hi\n")


def _batch(base: Path, lines: list[str], tables: dict[str, str] | None = None) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    for name, text in (tables or {}).items():
        (base / name).write_text(text, encoding="utf-8")
    (base / "batch.txt").write_text("\n".join(lines) + "\n")
    return base / "batch.txt"


def _problems(path: Path) -> list[str]:
    with pytest.raises(BatchError) as err:
        parse_batch(path)
    return err.value.problems


# -- args= ---------------------------------------------------------------------------------------------

def test_args_are_split_like_a_shell_line_without_expansion():
    assert split_args("-scale 1.5 -title 'two words' $HOME *.tcl") == ("-scale", "1.5", "-title", "two words",
                                                                       "$HOME", "*.tcl")


def test_empty_args_give_no_arguments():
    assert split_args("") == ()


@pytest.mark.parametrize("text", ["-title 'open", '-a "b', "x 'y\""])
def test_unbalanced_quotes_in_args_are_refused_with_what_to_do(text):
    with pytest.raises(ParamError, match="no closing quotation; balance the quotes"):
        split_args(text)


def test_args_reach_the_model_entry_after_the_line_is_parsed(tmp_path):
    _model(tmp_path / "m")
    batch = parse_batch(_batch(tmp_path, ["m args=\"-scale 1.5 -title 'two words'\""]))
    (model,) = batch.models
    assert model.name == "m" and model.args == ("-scale", "1.5", "-title", "two words") and model.group == ""


def test_unbalanced_quotes_on_the_line_itself_say_what_to_do(tmp_path):
    _model(tmp_path / "m")
    (problem,) = _problems(_batch(tmp_path, ["m args=\"-a b"]))
    assert problem == (f"{tmp_path / 'batch.txt'}:1: no closing quotation; balance the quotes on the line "
                       "(a value with spaces in double quotes: args=\"-title 'a b'\")")


def test_bad_args_name_the_batch_line(tmp_path):
    _model(tmp_path / "m")
    problems = _problems(_batch(tmp_path, ["m", "m name=x args=\"-a 'b\""]))
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'batch.txt'}:2: args=")


# -- sweep tables ----------------------------------------------------------------------------------------

def test_each_row_is_a_run_named_by_the_name_column():
    runs = parse_sweep("name,scale,record\nlow,0.5,gm1.txt\nhigh,2.0,gm2.txt\n", "t.csv")
    assert [r.name for r in runs] == ["low", "high"]
    assert runs[0].args == ("-scale", "0.5", "-record", "gm1.txt") and runs[0].env == ()
    assert [r.line for r in runs] == [2, 3]


def test_the_name_column_is_found_anywhere_and_in_any_case():
    (run,) = parse_sweep("scale,NAME\n2,big\n", "t.csv")
    assert run.name == "big" and run.args == ("-scale", "2")


def test_without_a_name_column_the_first_column_names_the_run_and_stays_an_argument():
    runs = parse_sweep("record,scale\ngm1.txt,1\ngm2.txt,2\n", "t.csv")
    assert [r.name for r in runs] == ["gm1.txt", "gm2.txt"]
    assert runs[1].args == ("-record", "gm2.txt", "-scale", "2")


def test_env_columns_become_environment_variables():
    (run,) = parse_sweep("name,env:GM_FILE,scale,env:Tag_2\nr1,a.txt,3,x y\n", "t.csv")
    assert run.env == (("GM_FILE", "a.txt"), ("Tag_2", "x y")) and run.args == ("-scale", "3")


def test_empty_cells_leave_the_argument_out_for_that_row():
    runs = parse_sweep("name,scale,env:X\na,,\nb,2,y\n", "t.csv")
    assert runs[0].args == () and runs[0].env == ()
    assert runs[1].args == ("-scale", "2") and runs[1].env == (("X", "y"),)


def test_names_are_sanitized_for_folders():
    runs = parse_sweep("name\nGM 1/x2\n..hidden\nä-ß\n-lead\n", "t.csv")
    assert [r.name for r in runs] == ["GM_1_x2", "hidden", "row3", "lead"]
    assert all(sanitize(r.name, "x") == r.name for r in runs)


@pytest.mark.parametrize(("text", "want"), [
    ("a b", "a_b"), ("../up", "up"), ("", "row1"), ("...", "row1"), ("x" * 80, "x" * 63), ("ok.", "ok"),
    ("C:\\rec\\gm1", "C_rec_gm1"), ("tab\there", "tab_here")])
def test_sanitize_rules(text, want):
    assert sanitize(text, "row1") == want


def test_an_empty_name_cell_gets_a_row_name():
    runs = parse_sweep("name,x\n,1\n,2\n", "t.csv")
    assert [r.name for r in runs] == ["row1", "row2"]


def test_repeated_names_from_the_first_column_are_numbered():
    runs = parse_sweep("record,scale\ngm1,1\ngm1,2\nGM1,3\ngm1-2,4\n", "t.csv")
    assert [r.name for r in runs] == ["gm1", "gm1-2", "GM1-3", "gm1-2-2"]
    assert len({r.name.lower() for r in runs}) == 4


def test_repeated_names_in_a_name_column_are_an_error_naming_both_lines():
    with pytest.raises(ParamError, match=r"t.csv:3: run name 'A' repeats line 2; give every row its own 'name'"):
        parse_sweep("name,x\na,1\nA,2\n", "t.csv")


def test_names_equal_after_sanitizing_are_duplicates_too():
    with pytest.raises(ParamError, match="t.csv:3: run name 'a_b' repeats line 2"):
        parse_sweep("name\na b\na/b\n", "t.csv")


def test_a_short_row_names_the_file_line_and_the_columns():
    with pytest.raises(ParamError, match=r"t.csv:3: 1 cell\(s\) but the header has 2 column\(s\) \(name, scale\)"):
        parse_sweep("name,scale\na,1\nb\n", "t.csv")


def test_a_long_row_is_refused_too():
    with pytest.raises(ParamError, match="t.csv:2: 3 cell"):
        parse_sweep("name,scale\na,1,9\n", "t.csv")


def test_malformed_csv_quoting_is_refused_with_the_line():
    with pytest.raises(ParamError, match=r"t.csv:\d+: not a valid CSV table"):
        parse_sweep('name,x\na,"1"2\n', "t.csv")


def test_a_header_only_table_and_an_empty_table_are_refused():
    with pytest.raises(ParamError, match="no runs"):
        parse_sweep("name,x\n", "t.csv")
    with pytest.raises(ParamError, match="empty sweep table"):
        parse_sweep("\n\n", "t.csv")


def test_blank_lines_and_a_byte_order_mark_are_ignored():
    runs = parse_sweep("\ufeffname,x\r\n\r\na,1\r\n,\r\nb,2\r\n", "t.csv")
    assert [r.name for r in runs] == ["a", "b"] and runs[1].line == 5


def test_quoted_cells_keep_commas_and_quotes():
    (run,) = parse_sweep('name,title\na,"x, ""y"""\n', "t.csv")
    assert run.args == ("-title", 'x, "y"')


@pytest.mark.parametrize(("header", "why"), [
    ("name,,x", "a column has no header"),
    ("name,scale,Scale", "column 'Scale' appears twice"),
    ("name,2x", "cannot be an argument name"),
    ("name,a b", "cannot be an argument name"),
    ("name,env:1X", "env:VAR needs a variable name"),
    ("name,env:", "env:VAR needs a variable name"),
    ("name,env:PATH", "PATH is set by the VM"),
    ("name,env:OPS_HPC_SHARED", "set by the VM"),
    ("name;scale", "semicolons"),
])
def test_bad_headers_are_refused_with_what_to_do(header, why):
    with pytest.raises(ParamError, match=f"t.csv:1: .*{why}"):
        parse_sweep(f"{header}\na,1,2\n", "t.csv")


def test_too_many_rows_are_refused(monkeypatch):
    monkeypatch.setattr(parametric, "MAX_RUNS", 3)
    with pytest.raises(ParamError, match="4 runs, at most 3"):
        parse_sweep("name\na\nb\nc\nd\n", "t.csv")


def test_a_table_that_is_not_utf8_is_refused(tmp_path):
    (tmp_path / "t.csv").write_bytes(b"name\n\xff\xfe\n")
    with pytest.raises(ParamError, match="not UTF-8 text; save it as CSV UTF-8"):
        parametric.read_sweep(tmp_path / "t.csv", "t.csv")


# -- sweep lines in a batch --------------------------------------------------------------------------------

def test_a_sweep_line_expands_into_one_model_per_row_named_model_slash_row(tmp_path):
    _model(tmp_path / "frame")
    path = _batch(tmp_path, ["frame sweep=ida.csv args=\"-period 0.5\" cores=2 timeout=7"],
                  {"ida.csv": "name,scale,env:TAG\nlow,0.5,a\nhigh,2,b\n"})
    models = parse_batch(path).models
    assert [m.name for m in models] == ["frame/low", "frame/high"]
    assert models[0].args == ("-period", "0.5", "-scale", "0.5") and models[1].env == (("TAG", "b"),)
    assert all(m.group == "frame" and m.cores == 2 and m.timeout_min == 7 and m.line == 1 for m in models)


def test_two_sweeps_of_one_folder_need_their_own_names(tmp_path):
    _model(tmp_path / "frame")
    tables = {"t.csv": "name\na\n"}
    problems = _problems(_batch(tmp_path, ["frame sweep=t.csv", "frame sweep=t.csv"], tables))
    assert len(problems) == 1 and "duplicate model name 'frame'" in problems[0]
    models = parse_batch(_batch(tmp_path, ["frame sweep=t.csv", "frame sweep=t.csv name=frame2"], tables)).models
    assert [m.name for m in models] == ["frame/a", "frame2/a"]


def test_a_missing_table_names_the_batch_line_and_nothing_else_is_read(tmp_path):
    _model(tmp_path / "m")
    problems = _problems(_batch(tmp_path, ["m sweep=nope.csv"]))
    assert problems == [f"{tmp_path / 'batch.txt'}:1: sweep table 'nope.csv' does not exist "
                        "(paths are relative to the batch file)"]


def test_a_bad_table_names_both_the_batch_line_and_the_table_line(tmp_path):
    _model(tmp_path / "m")
    problems = _problems(_batch(tmp_path, ["", "m sweep=t.csv"], {"t.csv": "name,x\na,1\nb\n"}))
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'batch.txt'}:2: t.csv:3: 1 cell(s)")


def test_empty_sweep_and_shared_values_are_refused(tmp_path):
    _model(tmp_path / "m")
    problems = _problems(_batch(tmp_path, ["m sweep=", "m name=b shared="]))
    assert "sweep= needs a CSV table" in problems[0] and "shared= needs a folder" in problems[1]


# -- shared folders ----------------------------------------------------------------------------------------

def test_a_shared_folder_is_resolved_against_the_batch_file(tmp_path):
    _model(tmp_path / "m")
    (tmp_path / "records").mkdir()
    (model,) = parse_batch(_batch(tmp_path, ["m shared=records"])).models
    assert model.shared == (tmp_path / "records").resolve()


def test_a_missing_shared_folder_is_refused(tmp_path):
    _model(tmp_path / "m")
    (problem,) = _problems(_batch(tmp_path, ["m shared=records"]))
    assert problem.endswith(":1: shared folder 'records' does not exist (paths are relative to the batch file)")


def test_a_shared_folder_inside_the_model_folder_is_refused(tmp_path):
    _model(tmp_path / "m")
    (tmp_path / "m" / "records").mkdir()
    (problem,) = _problems(_batch(tmp_path, ["m shared=m/records"]))
    assert "inside the model folder" in problem


def test_a_model_folder_holding_the_shared_folders_name_is_refused(tmp_path):
    _model(tmp_path / "m")
    (tmp_path / "m" / "records.txt").write_text("x")
    (tmp_path / "lib" / "records.txt").mkdir(parents=True)
    (problem,) = _problems(_batch(tmp_path, ["m shared=lib/records.txt"]))
    assert "already holds 'records.txt'" in problem


def test_shared_keys_are_unique_per_folder(tmp_path):
    a, b, c = tmp_path / "x" / "records", tmp_path / "y" / "records", tmp_path / "gm 1"
    assert parametric.shared_keys([a, b, a, c]) == {a: "records", b: "records-2", c: "gm_1"}


def test_every_bad_parametric_line_is_reported_at_once(tmp_path):
    _model(tmp_path / "m")
    lines = ["m name=a args=\"'x\"", "m name=b sweep=no.csv", "m name=c shared=none", "m name=d sweep=t.csv",
             "m name=e argz=1"]
    problems = _problems(_batch(tmp_path, lines, {"t.csv": "name\nx\nX\n"}))
    assert [p.split(":")[1] for p in problems] == ["1", "2", "3", "4", "5"]


def test_the_example_sweep_batch_parses():
    models = parse_batch(REPO / "batches" / "sweep.txt").models
    assert len(models) == 8 and {m.group for m in models} == {"sdof", "sdof-py"}
    assert {m.main for m in models} == {"main.tcl", "model.py"}
    assert {m.shared for m in models} == {(REPO / "batches" / "examples" / "records").resolve()}


# -- batch.json entries and the VM's launcher ----------------------------------------------------------------

def test_staged_entries_round_trip_and_plain_models_keep_the_old_shape():
    plain = StagedModel("m", "main.tcl", 1, 5, "z", "c", 1, 1)
    assert set(plain.to_json()) == {"name", "main", "cores", "timeout_min", "zip", "crc32c", "size", "files"}
    swept = StagedModel("m/r", "model.py", 1, 5, "z", "c", 1, 1, args=("-a", "1"), env=(("X", "y"),),
                        shared="records", shared_link="records")
    again = StagedModel.from_json(json.loads(json.dumps(swept.to_json())))
    assert again == swept


def test_the_vm_runs_tcl_through_openseesmp_and_python_with_its_python():
    h = _helpers()
    tcl = {"name": "m/r", "main": "main.tcl", "args": ["-title", "two words"]}
    py = {"name": "m/r", "main": "Model.PY", "args": ["-a", "1"]}
    assert h.launch_argv(tcl, "4", "/py") == ["openseesmp", "4", "main.tcl", "-title", "two words"]
    assert h.launch_argv(py, "1", "/usr/bin/opensees-python") == ["/usr/bin/opensees-python", "-u", "Model.PY",
                                                                   "-a", "1"]
    assert h.launch_argv({"main": "main.tcl"}, 1, "/py") == ["openseesmp", "1", "main.tcl"]


def test_the_vm_fetches_each_shared_folder_its_models_use_once(tmp_path):
    h = _helpers()
    shared = {"rec": {"zip": "_uploads/r/shared/rec.zip", "crc32c": "c1"},
              "lib": {"zip": "_uploads/r/shared/lib.zip", "crc32c": "c2"}}
    models = [{"name": "a/1", "shared": "rec"}, {"name": "a/2", "shared": "rec"}, {"name": "b", "shared": "lib"},
              {"name": "c"}]
    (tmp_path / "batch.json").write_text(json.dumps({"models": models, "shared": shared}))
    assert h.shared(str(tmp_path / "batch.json"), "") == ["lib\t_uploads/r/shared/lib.zip\tc2",
                                                          "rec\t_uploads/r/shared/rec.zip\tc1"]
    assert h.shared(str(tmp_path / "batch.json"), "a/1,a/2 c") == ["rec\t_uploads/r/shared/rec.zip\tc1"]
    assert h.shared(str(tmp_path / "batch.json"), "c") == []


def _launch(tmp_path: Path, model: dict, *, shared_root: Path) -> subprocess.CompletedProcess:
    (tmp_path / "batch.json").write_text(json.dumps({"models": [model]}))
    work = tmp_path / "model"
    work.mkdir(exist_ok=True)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run([sys.executable, str(REPO / "vm-scripts" / "ops_helpers.py"), "launch",
                           str(tmp_path / "batch.json"), model["name"], "1", str(shared_root)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.name == "nt", reason="the VM side runs on Linux")
def test_launch_becomes_the_model_with_its_arguments_environment_and_shared_link(tmp_path):
    (tmp_path / "shared" / "records").mkdir(parents=True)
    (tmp_path / "shared" / "records" / "gm1.txt").write_text("0.1\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "probe.py").write_text(
        "import json, os, sys\n"
        "print(json.dumps({'argv': sys.argv, 'tag': os.environ.get('TAG'), 'shared': os.environ['OPS_HPC_SHARED'],"
        " 'gm1': open('lib/gm1.txt').read(), 'pid': os.getpid()}))\n")
    model = {"name": "m/r1", "main": "probe.py", "args": ["-title", "two words"], "env": {"TAG": "x y"},
             "shared": "records", "shared_link": "lib"}
    done = _launch(tmp_path, model, shared_root=tmp_path / "shared")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["argv"] == ["probe.py", "-title", "two words"] and out["tag"] == "x y"
    assert out["shared"] == str(tmp_path / "shared" / "records") and out["gm1"] == "0.1\n"
    assert (tmp_path / "model" / "lib").is_symlink()


@pytest.mark.skipif(os.name == "nt", reason="the VM side runs on Linux")
def test_launch_fails_the_model_in_one_line_when_its_shared_folder_was_not_fetched(tmp_path):
    done = _launch(tmp_path, {"name": "m", "main": "main.tcl", "shared": "records", "shared_link": "records"},
                   shared_root=tmp_path / "nothing")
    assert done.returncode != 0 and done.stderr.strip() == (
        "ops-hpc: the shared folder records was not fetched onto this VM (see the VM log)")
