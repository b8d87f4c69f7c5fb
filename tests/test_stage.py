"""bin/stage: zips and uploads each model with the batch description; idempotent; a bad batch uploads nothing."""

from __future__ import annotations

import io
import json
import uuid
import zipfile

from lib import stage, storage
from lib.batches import parse_batch
from tests.support.bins import run_bin


def _batch(tmp_path):
    base = tmp_path / "models"
    for name in ("alpha", "beta"):
        folder = base / name
        (folder / "sub").mkdir(parents=True)
        (folder / "main.tcl").write_text(f"puts {name}\n")
        (folder / "ground.cdata").write_bytes(b"\x00\x01" * 100)
        (folder / "sub" / "section.tcl").write_text("# section\n")
        (folder / ".hidden").write_text("x")
        (folder / "old.zip").write_bytes(b"PK")
        (folder / "results" / "run-1").mkdir(parents=True)
        (folder / "results" / "run-1" / "x.out").write_text("old")
        (folder / "pulled").mkdir()
        (folder / "pulled" / "MANIFEST.json").write_text("{}")
    batch = base / "batch.txt"
    batch.write_text("alpha timeout=3\nbeta cores=4 timeout=7 name=Beta-2\n")
    return batch


def test_stage_uploads_models_scripts_and_description(localcloud, bucket, tmp_path):
    batch = parse_batch(_batch(tmp_path))
    staged = stage.stage(bucket, batch)
    run_id = staged.run_id
    assert run_id.startswith("run-") and stage.check_run_id(run_id)
    names = storage.bucket_names(storage.list_blobs(bucket, f"_uploads/{run_id}/"))
    assert names == sorted([f"_uploads/{run_id}/{n}" for n in
                            ("alpha.zip", "Beta-2.zip", "batch.json", "vm-scripts/lib.sh", "vm-scripts/ops_helpers.py",
                             "vm-scripts/run_analysis.sh")])
    desc = json.loads(storage.download_bytes(bucket, f"_uploads/{run_id}/batch.json"))
    assert desc["format"] == 1 and desc["run_id"] == run_id
    beta = desc["models"][1]
    assert (beta["name"], beta["main"], beta["cores"], beta["timeout_min"]) == ("Beta-2", "main.tcl", 4, 7)
    assert beta["crc32c"] == storage.get_blob(bucket, beta["zip"]).crc32c
    with zipfile.ZipFile(io.BytesIO(storage.download_bytes(bucket, beta["zip"]))) as zf:
        # earlier results, hidden files and zips are not inputs
        assert sorted(zf.namelist()) == ["ground.cdata", "main.tcl", "sub/section.tcl"]


def test_staging_twice_is_idempotent(localcloud, bucket, tmp_path):
    batch = parse_batch(_batch(tmp_path))
    first = stage.stage(bucket, batch)
    generations = {b.name: b.generation for b in storage.list_blobs(bucket, "_uploads/")}
    again = stage.stage(bucket, batch, run_id=first.run_id)
    assert again.uploaded == [] and len(again.unchanged) == 6
    assert {b.name: b.generation for b in storage.list_blobs(bucket, "_uploads/")} == generations


def test_bin_stage_prints_run_id_and_refuses_bad_batch(localcloud, tmp_path):
    name = f"t-{uuid.uuid4().hex[:10]}"
    env = localcloud.env(bucket=name)
    batch = _batch(tmp_path)
    ok = run_bin("stage", str(batch), env=env)
    assert ok.returncode == 0, ok.stderr
    run_id = ok.stdout.strip()
    assert stage.load_description(localcloud.config(bucket=name), run_id)["run_id"] == run_id
    batch.write_text(batch.read_text() + "gamma\nalpha timeout=x\n")
    bad = run_bin("stage", str(batch), env=env)
    assert bad.returncode == 2
    assert f"{batch}:3:" in bad.stderr and f"{batch}:4:" in bad.stderr
    assert len(storage.list_blobs(localcloud.config(bucket=name), "_uploads/")) == 6  # nothing more uploaded


def test_a_symlinked_main_inside_the_folder_is_staged_as_its_file(tmp_path):
    folder = tmp_path / "m"
    (folder / "variants").mkdir(parents=True)
    (folder / "variants" / "a.tcl").write_text("puts a\n")
    (folder / "main.tcl").symlink_to("variants/a.tcl")
    (folder / "elsewhere.tcl").symlink_to(tmp_path / "nowhere.tcl")  # dangling: skipped
    (folder / "loop").symlink_to(folder / "loop")  # a loop: skipped, no traceback
    files = dict(stage.model_files(folder))
    assert sorted(files) == ["main.tcl", "variants/a.tcl"]
    assert files["main.tcl"].read_text() == "puts a\n"


def _put(cfg, name: str, text: str = "x") -> None:
    storage.upload_bytes(cfg, name, text.encode())


def test_tidy_removes_bookkeeping_of_runs_that_are_over_and_keeps_the_rest(localcloud, bucket, monkeypatch):
    import time

    from lib import compute

    desc = json.dumps({"models": [{"name": "a", "timeout_min": 1}]})
    for run, state in (("run-done", "ok"), ("run-preempted", "interrupted"), ("run-unpulled", "ok"),
                       ("run-busy", "ok")):
        _put(bucket, f"_uploads/{run}/batch.json", desc)
        _put(bucket, f"_uploads/{run}/a.zip")
        _put(bucket, f"_status/{run}/vm.txt", f"format=1\nrun_id={run}\nstate=done\nmodel.a={state} 1.0\n")
        _put(bucket, f"_status/{run}.txt", "format=1\n")
        _put(bucket, f"_logs/{run}/a.log")
    _put(bucket, "run-unpulled/a.zip")  # a result still waiting for `bin/pull`
    _put(bucket, "_status/latest.txt", "run_id=run-done\n")
    monkeypatch.setattr(compute, "list_vms", lambda cfg: [compute.Vm(name="vm", status="RUNNING", zone="z", run_id="run-busy")])

    def left(run):
        return sorted(b.name for b in storage.list_blobs(bucket) if run in b.name)

    now = time.time()
    assert stage.tidy_finished_runs(bucket, now=now) == []  # within the grace: nothing yet
    assert stage.tidy_finished_runs(bucket, now=now + 2 * 3600) == ["run-done"]
    assert left("run-done") == [] and storage.get_blob(bucket, "_status/latest.txt") is not None
    assert left("run-preempted") and left("run-unpulled") and left("run-busy")  # rerun, pull and VM need them
    assert stage.tidy_finished_runs(bucket, now=now + 8 * 86400) == ["run-preempted"]  # abandoned after a week
    assert left("run-unpulled") and left("run-busy")


def test_tidy_removes_nothing_when_the_vms_cannot_be_listed(localcloud, bucket, monkeypatch):
    from lib import compute

    _put(bucket, "_status/run-x/vm.txt", "format=1\nmodel.a=ok 1\n")

    def broken(cfg):
        raise RuntimeError("403 compute.instances.list denied")

    monkeypatch.setattr(compute, "list_vms", broken)
    logs: list[str] = []
    assert stage.tidy_finished_runs(bucket, now=4e9, on_log=logs.append) == []
    assert storage.get_blob(bucket, "_status/run-x/vm.txt") is not None and "could not list VMs" in logs[0]
