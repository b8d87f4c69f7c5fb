"""Parametric sweeps end to end on the local cloud: arguments reach Tcl and Python, shared files are staged
once and present on the VM, results land as RESULTS/RUN/MODEL/ROW, and bad input uploads nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lib import compute, manifest, report, runstaged, stage, storage
from lib.batches import parse_batch
from lib.errors import UsageError
from tests.support.vms import run_config

REPO = Path(__file__).resolve().parents[1]

PROBE_TCL = """file mkdir output
set f [open output/argv.txt w]; puts $f "$argc|$argv"; close $f
set f [open output/env.txt w]
puts $f "[expr {[info exists env(OPS_HPC_SHARED)] ? $env(OPS_HPC_SHARED) : {-}}]|[expr {[info exists env(TAG)] ? $env(TAG) : {-}}]"
close $f
set f [open output/shared.txt w]
if {[file isdirectory records]} {
  puts $f [lsort [glob -tails -directory records *]]
  set g [open records/gm1.txt]; puts $f [string trim [read $g]]; close $g
  puts $f [file attributes records/gm1.txt -permissions]
} else { puts $f "no records" }
close $f
"""
PROBE_PY = """import json, os, sys
import openseespy.opensees as ops

ops.wipe()
ops.model("basic", "-ndm", 1, "-ndf", 1)
ops.node(1, 0.0)
ops.node(2, 0.0)
ops.fix(1, 1)
ops.uniaxialMaterial("Elastic", 1, 100.0)
ops.element("zeroLength", 1, 1, 2, "-mat", 1, "-dir", 1)
ops.timeSeries("Linear", 1)
ops.pattern("Plain", 1, 1)
ops.load(2, 5.0)
ops.system("FullGeneral"); ops.numberer("Plain"); ops.constraints("Plain")
ops.integrator("LoadControl", 1.0); ops.algorithm("Linear"); ops.analysis("Static")
ok = ops.analyze(1)
shared = os.environ.get("OPS_HPC_SHARED", "")
os.makedirs("output", exist_ok=True)
with open("output/probe.json", "w") as fh:
    json.dump({"argv": sys.argv, "tag": os.environ.get("TAG"), "shared": shared, "ok": ok,
               "disp": ops.nodeDisp(2, 1), "gm1": open(os.path.join("records", "gm1.txt")).read().strip(),
               "listing": sorted(os.listdir(shared))}, fh)
"""


@pytest.fixture
def cfg(localcloud, tmp_path):
    return run_config(localcloud, tmp_path / "state")


def _probes(base: Path) -> None:
    (base / "probe").mkdir(parents=True)
    (base / "probe" / "main.tcl").write_text(PROBE_TCL)
    (base / "probe_py").mkdir()
    (base / "probe_py" / "model.py").write_text(PROBE_PY)
    (base / "records").mkdir()
    (base / "records" / "gm1.txt").write_text("0.1\n0.2\n")
    (base / "records" / "gm2.txt").write_text("0.3\n")
    (base / "table.csv").write_text("name,scale,env:TAG\nA/1,1.5,alpha\nb,2,beta\n")


def test_a_sweep_of_tcl_and_python_models_with_shared_records(cfg, image, tmp_path, monkeypatch):
    base = tmp_path / "batch"
    _probes(base)
    (base / "batch.txt").write_text("\n".join([
        "probe     name=tcl  sweep=table.csv  shared=records  args=\"-title 'two words'\"  timeout=10",
        "probe_py  name=py   main=model.py  sweep=table.csv  shared=records  timeout=10",
        "probe     name=plain  args=\"-x 1\"  timeout=10",
    ]) + "\n")
    bucket: dict[str, list[str]] = {}
    unstage = stage.unstage

    def listing_then_unstage(c, run_id):  # the staged inputs, seen just before the run drops them
        bucket["names"] = [b.name for b in storage.list_blobs(c, f"_uploads/{run_id}/")]
        return unstage(c, run_id)

    monkeypatch.setattr(stage, "unstage", listing_then_unstage)
    logs: list[str] = []
    out = runstaged.run_staged(cfg, base / "batch.txt", wait=True, results_dir=tmp_path / "results", image=image,
                               on_log=logs.append, tail=False)
    run = tmp_path / "results" / out.run_id
    states = {r["model"]: r["state"] for r in out.rows}
    assert states == {"tcl/A_1": "ok", "tcl/b": "ok", "py/A_1": "ok", "py/b": "ok", "plain": "ok"}, "\n".join(logs)

    # staged once: one object for the shared folder, one zip per line (not per row)
    prefix = f"_uploads/{out.run_id}/"
    assert [n for n in bucket["names"] if n.startswith(prefix + "shared/")] == [prefix + "shared/records.zip"]
    assert sorted(n for n in bucket["names"] if n.endswith(".zip") and n.count("/") == 2) == [
        prefix + "plain.zip", prefix + "py.zip", prefix + "tcl.zip"]

    # arguments reach Tcl's argv / argc: the line's args first, then the row's columns
    assert (run / "tcl" / "A_1" / "output" / "argv.txt").read_text().strip() == "4|-title {two words} -scale 1.5"
    assert (run / "tcl" / "b" / "output" / "argv.txt").read_text().strip() == "4|-title {two words} -scale 2"
    assert (run / "plain" / "output" / "argv.txt").read_text().strip() == "2|-x 1"
    shared_dir, tag = (run / "tcl" / "b" / "output" / "env.txt").read_text().strip().split("|")
    assert tag == "beta" and shared_dir.endswith("/shared/records")
    listing, *gm1, perms = (run / "tcl" / "A_1" / "output" / "shared.txt").read_text().splitlines()
    assert listing == "gm1.txt gm2.txt" and gm1 == ["0.1", "0.2"]
    assert not int(perms, 8) & 0o222  # read-only on the VM
    assert (run / "plain" / "output" / "shared.txt").read_text().strip() == "no records"
    assert (run / "plain" / "output" / "env.txt").read_text().strip() == "-|-"

    # Python's sys.argv, the environment, OpenSeesPy and the shared files
    probe = json.loads((run / "py" / "A_1" / "output" / "probe.json").read_text())
    assert probe["argv"] == ["model.py", "-scale", "1.5"] and probe["tag"] == "alpha"
    assert probe["ok"] == 0 and probe["disp"] == pytest.approx(0.05)
    assert probe["listing"] == ["gm1.txt", "gm2.txt"] and probe["gm1"] == "0.1\n0.2"

    # the shared files are not zipped back with each result
    for name in ("tcl/A_1", "tcl/b", "py/A_1", "py/b"):
        files = {f["path"] for f in manifest.read(run / name)["files"]}
        assert not [f for f in files if f.startswith("records")], (name, files)
        assert manifest.read(run / name)["model"] == name
    assert not (run / "tcl" / "A_1" / "records").exists()

    # the report lists each run of the sweep
    page = report.write_report(tmp_path / "results", out.run_id).read_text()
    for name in ("tcl/A_1", "tcl/b", "py/A_1", "py/b", "plain"):
        assert f">{name}<" in page
    assert report.latest_run(tmp_path / "results") == out.run_id
    assert all(compute.get_vm(cfg, v) is None for v in out.vms)


def test_staging_a_sweep_twice_uploads_nothing_the_second_time(cfg, tmp_path):
    base = tmp_path / "batch"
    _probes(base)
    (base / "batch.txt").write_text("probe name=tcl sweep=table.csv shared=records args=\"-x 'a b'\"\n"
                                    "probe_py name=py main=model.py shared=records\n")
    batch = parse_batch(base / "batch.txt")
    first = stage.stage(cfg, batch, run_id="run-20260101-000000-aaaa")
    again = stage.stage(cfg, batch, run_id="run-20260101-000000-aaaa")
    assert not again.uploaded and again.description == first.description
    d = first.description
    assert d["shared"] == {"records": {"zip": "_uploads/run-20260101-000000-aaaa/shared/records.zip",
                                       "crc32c": d["shared"]["records"]["crc32c"], "size": d["shared"]["records"]["size"],
                                       "files": 2}}
    tcl = [m for m in first.models if m.name.startswith("tcl/")]
    assert [m.name for m in tcl] == ["tcl/A_1", "tcl/b"] and len({m.zip for m in tcl}) == 1
    assert tcl[0].args == ("-x", "a b", "-scale", "1.5") and tcl[1].env == (("TAG", "beta"),)
    assert {m.shared for m in first.models} == {"records"} and {m.shared_link for m in first.models} == {"records"}
    assert len([n for n in first.uploaded if "/shared/" in n]) == 1


def test_the_example_sweep_runs_and_its_tcl_and_openseespy_twins_agree(cfg, image, tmp_path):
    base = tmp_path / "batches"
    shutil.copytree(REPO / "batches" / "examples", base / "examples")
    for name in ("sweep.txt", "sweep.csv"):
        shutil.copy(REPO / "batches" / name, base / name)
    out = runstaged.run_staged(cfg, base / "sweep.txt", wait=True, results_dir=tmp_path / "results", image=image,
                               tail=False)
    run = tmp_path / "results" / out.run_id
    rows = ("pulse-x1", "pulse-x2", "chirp-x1", "chirp-x2")
    assert {r["model"]: r["state"] for r in out.rows} == {f"{m}/{r}": "ok" for m in ("sdof", "sdof-py") for r in rows}
    peaks = {(m, r): float((run / m / r / "output" / "peak.txt").read_text()) for m in ("sdof", "sdof-py")
             for r in rows}
    for r in rows:
        assert peaks[("sdof", r)] == pytest.approx(peaks[("sdof-py", r)], rel=1e-6) and peaks[("sdof", r)] > 0
    assert peaks[("sdof", "pulse-x2")] > peaks[("sdof", "pulse-x1")]  # the scale column reached the model
    assert "tag b" in (run / "sdof" / "pulse-x2" / "opensees.log").read_text()  # and the env:RUN_TAG column


@pytest.mark.parametrize(("files", "line", "message"), [
    ({"t.csv": "name,x\na,1\nb\n"}, "probe sweep=t.csv", "t.csv:3: 1 cell(s) but the header has 2"),
    ({"t.csv": "name,x\na,1\nA,2\n"}, "probe sweep=t.csv", "t.csv:3: run name 'A' repeats line 2"),
    ({"t.csv": 'name,x\na,"1\n'}, "probe sweep=t.csv", "t.csv:"),
    ({}, "probe sweep=none.csv", "sweep table 'none.csv' does not exist"),
    ({}, "probe shared=nothere", "shared folder 'nothere' does not exist"),
    ({}, "probe args=\"-a 'b\"", "no closing quotation"),
])
def test_bad_sweep_input_is_one_line_and_uploads_nothing(cfg, tmp_path, files, line, message):
    base = tmp_path / "batch"
    _probes(base)
    for name, text in files.items():
        (base / name).write_text(text)
    (base / "batch.txt").write_text(line + "\n")
    with pytest.raises(UsageError) as err:
        runstaged.run_staged(cfg, base / "batch.txt", wait=True, results_dir=tmp_path / "results")
    text = str(err.value)
    assert message in text and "\n" not in text and text.startswith(f"{base / 'batch.txt'}:1: ")
    assert not storage.list_blobs(cfg, "")
