"""run-staged end to end on the local cloud, with real OpenSees on local VMs.

Each test uses its own bucket and session state; model timeouts run 30x faster through the config's
time_scale (the VM divides timeouts by its ops-hpc-time-scale metadata). Every test ends with no VM alive.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest
from helpers import run_bin
from vm_helpers import SMALL, vm_config

from lib import compute, manifest, naming, results, runlog, runstaged, storage
from lib.errors import OpsError

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "batches" / "examples"
FAIL_TCL = """file mkdir output
set f [open output/partial.out w]
puts $f "step 1 reached"
close $f
error "deliberate failure"
"""
SLOW_TCL = """file mkdir output
set f [open output/partial.out w]
puts $f "started"
close $f
after {ms}
set f [open output/done.out w]
puts $f "finished"
close $f
"""


@pytest.fixture(scope="module")
def image(localcloud, tmp_path_factory):
    cfg = vm_config(localcloud, tmp_path_factory.mktemp("image-state"))
    return runstaged.ensure_local_image(cfg)


@pytest.fixture
def cfg(localcloud, tmp_path):
    c = vm_config(localcloud, tmp_path / "state", bucket=f"t-{uuid.uuid4().hex[:10]}", time_scale=30)
    storage.ensure_bucket(c)
    yield c
    left = [v.name for v in compute.list_vms(c) if v.run_id.startswith("run-") and
            any(v.name == n for n in _names_of(c))]
    for name in left:
        compute.delete_vm(c, name, on_log=lambda _: None)
    assert not left, f"VMs left alive: {left}"


def _names_of(c) -> list[str]:
    return [b.name.rsplit("/", 1)[-1][:-4] for b in storage.list_blobs(c, "_status/") if b.name.count("/") == 2]


def _copy_example(base: Path, example: str, name: str) -> None:
    shutil.copytree(EXAMPLES / example, base / name)


def _tcl(base: Path, name: str, text: str) -> None:
    (base / name).mkdir(parents=True)
    (base / name / "main.tcl").write_text(text)


def _files(folder: Path) -> dict[str, str]:
    m = manifest.read(folder)
    return {f["path"]: f["crc32c"] for f in m["files"] if f["path"] != "opensees.log"}


def test_failed_and_timed_out_models_still_upload_and_the_vm_deletes_itself(cfg, image, tmp_path):
    base = tmp_path / "batch"
    _copy_example(base, "truss_transient", "truss")
    _tcl(base, "broken", FAIL_TCL)
    _tcl(base, "slow", SLOW_TCL.format(ms=60000))
    (base / "batch.txt").write_text("truss timeout=5\nbroken timeout=5\nslow timeout=1\n")
    logs: list[str] = []
    out = runstaged.run_staged(cfg, base / "batch.txt", wait=True, results_dir=tmp_path / "results", image=image,
                               on_log=logs.append)
    run_id = out["run_id"]
    states = {r["model"]: r["state"] for r in out["rows"]}
    assert states == {"truss": "ok", "broken": "failed", "slow": "timeout"}, "\n".join(logs)
    got = tmp_path / "results" / run_id
    assert (got / "truss" / "output" / "member_forces.out").stat().st_size > 0
    for model in ("broken", "slow"):  # partial results came back, verified against the manifest
        assert (got / model / "output" / "partial.out").exists()
        assert not manifest.compare(got / model, manifest.expected(manifest.read(got / model)))
    assert "deliberate failure" in (got / "broken" / "opensees.log").read_text()
    assert "timeout" in (got / "slow" / "opensees.log").read_text()
    assert not (got / "slow" / "output" / "done.out").exists()
    assert manifest.read(got / "broken")["exit_code"] != 0
    for word in ("truss", "broken", "slow", "ok", "failed", "timeout", "run time", "cost"):
        assert word in out["table"]
    # the VM deleted itself right after its last upload, not at its max run duration (1 h)
    (vm,) = out["vms"]
    assert compute.get_vm(cfg, vm) is None
    assert out["deleted_how"][vm] == "delete"
    assert out["upload_to_delete_s"][vm] is not None and out["upload_to_delete_s"][vm] < 30
    assert not [s for s in results.list_sets(cfg).sets if s.id.startswith(run_id)]
    assert not storage.list_blobs(cfg, f"_uploads/{run_id}/")  # inputs dropped once everything came back
    # the log command reads it all from the bucket
    info = runlog.run_log(cfg)
    assert info["run_id"] == run_id and info["vms"][vm]["state"] == "done"
    assert {m: i["state"] for m, i in info["models"].items()} == states
    assert info["tail"] and "slow" in runlog.format_log(info)


def test_fan_out_across_three_vms_gives_the_same_files_as_one(cfg, image, tmp_path):
    base = tmp_path / "batch"
    for i, example in enumerate(["frame_pushover", "truss_transient", "frame_pushover"]):
        _copy_example(base, example, f"m{i}")
    (base / "batch.txt").write_text("m0 timeout=4\nm1 timeout=3\nm2 timeout=2\n")
    one = runstaged.run_staged(cfg, base / "batch.txt", wait=True, results_dir=tmp_path / "one", image=image,
                               tail=False)
    three = runstaged.run_staged(cfg, base / "batch.txt", wait=True, vms=3, results_dir=tmp_path / "three",
                                 image=image, tail=False)
    assert len(one["vms"]) == 1 and len(three["vms"]) == 3
    used = set()
    for m in ("m0", "m1", "m2"):
        a = tmp_path / "one" / one["run_id"] / m
        b = tmp_path / "three" / three["run_id"] / m
        assert _files(a) == _files(b) and _files(a)
        assert manifest.read(a)["state"] == manifest.read(b)["state"] == "ok"
        used.add(manifest.read(b)["vm"])
    assert used == set(three["vms"])
    assert all(how == "delete" for how in three["deleted_how"].values())
    assert all(compute.get_vm(cfg, v) is None for v in three["vms"])


def test_preempted_spot_vm_relaunches_only_unfinished_models(cfg, image, localcloud, tmp_path):
    base = tmp_path / "batch"
    for name in ("first", "second", "third"):
        _tcl(base, name, SLOW_TCL.format(ms=1000))
    (base / "batch.txt").write_text("first timeout=5\nsecond timeout=5\nthird timeout=5\n")
    preempted: list[str] = []

    def on_log(line: str) -> None:
        if not preempted and "first: result pulled" in line:
            vm = line  # the first VM is the only one so far
            name = next(v.name for v in compute.list_vms(cfg) if v.name.startswith("ops-hpc-") and
                        "-r" not in v.name[-8:] and v.spot)
            preempted.append(name)
            threading.Thread(target=localcloud.admin, args=(f"preempt/{cfg.project}/{cfg.zone}/{name}", {}),
                             daemon=True).start()
            del vm

    out = runstaged.run_staged(cfg, base / "batch.txt", wait=True, spot=True, results_dir=tmp_path / "r",
                               image=image, on_log=on_log, tail=False)
    assert preempted, "the first result never landed"
    assert out["relaunches"] == 1 and not out["lost"]
    assert out["deleted_how"][preempted[0]] == "compute.instances.preempted"
    got = tmp_path / "r" / out["run_id"]
    vm_of = {m: manifest.read(got / m)["vm"] for m in ("first", "second", "third")}
    assert vm_of["first"] == preempted[0]
    relaunched = vm_of["third"]
    assert relaunched != preempted[0] and relaunched in out["vms"]
    status = runstaged.read_statuses(cfg, out["run_id"])[relaunched]
    assert "first" not in status["per_model"]  # finished models are never rerun
    assert all(manifest.read(got / m)["state"] == "ok" for m in vm_of)
    assert all(compute.get_vm(cfg, v) is None for v in out["vms"])


def test_pc_switched_off_then_bin_pull_collects_everything(cfg, image, localcloud, tmp_path):
    base = tmp_path / "batch"
    _copy_example(base, "frame_pushover", "frame")
    _copy_example(base, "truss_transient", "truss")
    (base / "batch.txt").write_text("frame\ntruss\n")
    out = runstaged.run_staged(cfg, base / "batch.txt", wait=False, image=image)
    (vm,) = out["vms"]
    deadline = time.monotonic() + 60
    while compute.get_vm(cfg, vm) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert compute.get_vm(cfg, vm) is None, "the VM did not delete itself"
    dest = tmp_path / "later"
    env = localcloud.env(bucket=cfg.bucket_name, state_dir=str(tmp_path / "state"))
    pulled = run_bin("pull", "--yes", "--dir", str(dest), "--json", env=env)
    assert pulled.returncode == 0, pulled.stderr
    for model in ("frame", "truss"):
        folder = dest / out["run_id"] / model
        m = manifest.read(folder)
        assert m["state"] == "ok" and not manifest.compare(folder, manifest.expected(m))
        assert any(f["path"].startswith("output/") and f["size"] > 0 for f in m["files"])
    assert not results.list_sets(cfg).sets


def test_a_vm_that_never_reports_is_deleted_by_its_guard(cfg, image, tmp_path):
    from lib.state import SessionState

    run_id = naming.new_run_id()
    broken = cfg.replace(bucket=f"t-missing-{uuid.uuid4().hex[:8]}")  # the VM cannot read its batch: no status
    description = {"models": [{"name": "m", "timeout_min": 1}]}
    name = naming.vm_name(run_id)
    with pytest.raises(OpsError, match="did not report"):
        runstaged.launch(broken, run_id, description, [["m"]], image=image, machine_type=SMALL, boot_timeout=3)
    assert compute.get_vm(cfg, name) is None
    assert name not in SessionState(cfg).vms()


def test_demo_pipeline_end_to_end_leaves_nothing_behind(tmp_path):
    """What `make demo` runs, in its own state folder: results verified, bucket empty, no process left."""
    out = runstaged.demo(tmp_path / ".state", tmp_path / "results")
    assert {r["model"]: r["state"] for r in out["rows"]} == {"frame_pushover": "ok", "truss_transient": "ok"}
    assert all(out["verified"].values()) and len(out["verified"]) == 2
    assert out["bucket_results_left"] == [] and out["leftover_processes"] == []
    for model, recorders in (("frame_pushover", ["roof_disp.out", "floor_disp.out", "base_reactions.out"]),
                             ("truss_transient", ["midspan_disp.out", "midspan_accel.out", "support_reactions.out",
                                                  "member_forces.out"])):
        folder = tmp_path / "results" / out["run_id"] / model
        for name in recorders:
            assert (folder / "output" / name).stat().st_size > 0
    (vm,) = out["vms"]
    assert out["upload_to_delete_s"][vm] < 30 and out["overhead_s"] >= 0
