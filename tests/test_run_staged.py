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

from lib import compute, manifest, naming, results, runlog, runstaged, runstatus, stage, storage
from lib.demo import demo
from lib.errors import OpsError
from tests.support import wait_for
from tests.support.bins import run_bin
from tests.support.vms import SMALL, run_config, wait_gone

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


@pytest.fixture
def cfg(localcloud, tmp_path):
    c = run_config(localcloud, tmp_path / "state")
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


def _one_model(tmp_path: Path, tcl: str = "puts hi\n") -> tuple[Path, str, str]:
    """A batch of one model `m`, a fresh run id and its VM's name."""
    base = tmp_path / "batch"
    _tcl(base, "m", tcl)
    (base / "batch.txt").write_text("m timeout=10\n")  # roomy: the machine may be busy
    run_id = stage.new_run_id()
    return base / "batch.txt", run_id, naming.vm_name(run_id)


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
    run_id = out.run_id
    states = {r["model"]: r["state"] for r in out.rows}
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
        assert word in out.table
    # the VM deleted itself right after its last upload, not at its max run duration (1 h)
    (vm,) = out.vms
    assert compute.get_vm(cfg, vm) is None
    assert out.deleted_how[vm] == "delete"
    assert out.upload_to_delete_s[vm] is not None and out.upload_to_delete_s[vm] < 30
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
    assert len(one.vms) == 1 and len(three.vms) == 3
    used = set()
    for m in ("m0", "m1", "m2"):
        a = tmp_path / "one" / one.run_id / m
        b = tmp_path / "three" / three.run_id / m
        assert _files(a) == _files(b) and _files(a)
        assert manifest.read(a)["state"] == manifest.read(b)["state"] == "ok"
        used.add(manifest.read(b)["vm"])
    assert used == set(three.vms)
    assert all(how == "delete" for how in three.deleted_how.values())
    assert all(compute.get_vm(cfg, v) is None for v in three.vms)


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
    assert out.relaunches == 1 and not out.lost
    assert out.deleted_how[preempted[0]] == "compute.instances.preempted"
    got = tmp_path / "r" / out.run_id
    vm_of = {m: manifest.read(got / m)["vm"] for m in ("first", "second", "third")}
    assert vm_of["first"] == preempted[0]
    relaunched = vm_of["third"]
    assert relaunched != preempted[0] and relaunched in out.vms
    status = runstatus.read_statuses(cfg, out.run_id)[relaunched]
    assert "first" not in status["per_model"]  # finished models are never rerun
    assert all(manifest.read(got / m)["state"] == "ok" for m in vm_of)
    assert all(compute.get_vm(cfg, v) is None for v in out.vms)


def test_pc_switched_off_then_bin_pull_collects_everything(cfg, image, localcloud, tmp_path):
    base = tmp_path / "batch"
    _copy_example(base, "frame_pushover", "frame")
    _copy_example(base, "truss_transient", "truss")
    (base / "batch.txt").write_text("frame\ntruss\n")
    out = runstaged.run_staged(cfg, base / "batch.txt", wait=False, image=image)
    (vm,) = out.vms
    assert wait_gone(cfg, vm, 60), "the VM did not delete itself"
    dest = tmp_path / "later"
    env = localcloud.env(bucket=cfg.bucket_name, state_dir=str(tmp_path / "state"))
    pulled = run_bin("pull", "--yes", "--dir", str(dest), "--json", env=env)
    assert pulled.returncode == 0, pulled.stderr
    for model in ("frame", "truss"):
        folder = dest / out.run_id / model
        m = manifest.read(folder)
        assert m["state"] == "ok" and not manifest.compare(folder, manifest.expected(m))
        assert any(f["path"].startswith("output/") and f["size"] > 0 for f in m["files"])
    assert not results.list_sets(cfg).sets


def test_a_vm_that_never_reports_is_deleted_by_its_guard(cfg, image, tmp_path):
    from lib.state import SessionState

    run_id = naming.new_run_id()
    broken = cfg.replace(bucket=f"t-missing-{uuid.uuid4().hex[:8]}")  # the VM cannot read its batch: no status
    model = stage.StagedModel(name="m", main="main.tcl", cores=1, timeout_min=1)
    name = naming.vm_name(run_id)
    with pytest.raises(OpsError, match="did not report|startup script ended"):
        runstaged.launch(broken, run_id, [[model]], image=image, machine_type=SMALL, boot_timeout=3)
    assert compute.get_vm(cfg, name) is None
    assert name not in SessionState(cfg).vms()


def test_demo_pipeline_end_to_end_leaves_nothing_behind(tmp_path):
    """What `make demo` runs, in its own state folder: results verified, bucket empty, no process left."""
    out = demo(tmp_path / ".state", tmp_path / "results")
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
    report = Path(out["report"])  # make demo ends with the run's HTML report, next to its results
    assert report == tmp_path / "results" / out["run_id"] / "index.html" and "frame_pushover" in report.read_text()


def _status(cfg, run_id: str, vm: str) -> dict:
    return runstatus.read_statuses(cfg, run_id).get(vm, {})


def test_refused_or_interrupted_runs_leave_no_staged_inputs(cfg, image, tmp_path, monkeypatch):
    from lib.errors import UsageError

    base = tmp_path / "batch"
    _tcl(base, "m", "puts hi\n")
    _tcl(base, "n", "puts hi\n")
    (base / "batch.txt").write_text("m timeout=1\nn timeout=1\n")
    with pytest.raises(UsageError, match="at least 1"):
        runstaged.run_staged(cfg, base / "batch.txt", vms=0, image=image)
    (base / "long.txt").write_text("m timeout=200000\n")  # beyond Compute Engine's 120-day max run duration
    with pytest.raises(UsageError, match="120-day"):
        runstaged.run_staged(cfg, base / "long.txt", image=image)
    assert not storage.list_blobs(cfg, "_uploads/")
    zipped: list[str] = []
    real = stage.zip_folder

    def ctrl_c_on_the_second(folder, dest):
        zipped.append(folder.name)
        if len(zipped) == 2:
            raise KeyboardInterrupt
        return real(folder, dest)

    monkeypatch.setattr(stage, "zip_folder", ctrl_c_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        runstaged.run_staged(cfg, base / "batch.txt", image=image)
    assert zipped == ["m", "n"] and not storage.list_blobs(cfg, "_uploads/")  # the first model's upload is gone


def test_a_startup_script_that_dies_gets_its_vm_deleted_within_seconds(cfg, image):
    run_id = stage.new_run_id()  # never staged: startup.sh finds no vm-scripts to run
    model = stage.StagedModel(name="m", main="main.tcl", cores=1, timeout_min=1)
    name = naming.vm_name(run_id)
    t0 = time.monotonic()
    with pytest.raises(OpsError, match="failed to start the run|startup script ended"):
        runstaged.launch(cfg, run_id, [[model]], image=image, machine_type=SMALL, boot_timeout=60)
    lived = time.monotonic() - t0
    assert compute.get_vm(cfg, name) is None
    status = _status(cfg, run_id, name)
    assert status["state"] == "error" and "vm-scripts/lib.sh" in status["error"]
    print(f"\nFIGURE startup script died: launch returned and VM deleted {lived:.1f} s after the launch began")
    assert lived < 30


def test_a_vm_whose_self_delete_is_refused_is_deleted_by_the_follower(cfg, image, tmp_path, faults):
    batch, run_id, name = _one_model(tmp_path)
    faults("metadata", "deny:compute.instances.delete", match=f"/{name} ")  # its account lacks the permission
    logs: list[str] = []
    out = runstaged.run_staged(cfg, batch, wait=True, run_id=run_id, results_dir=tmp_path / "r",
                               image=image, on_log=logs.append, tail=False)
    assert {r["model"]: r["state"] for r in out.rows} == {"m": "ok"}
    assert any(f"{name}: reports its self-delete was refused: deleting it" in line for line in logs), "\n".join(logs)
    assert compute.get_vm(cfg, name) is None and out.deleted_how[name] == "delete"
    print(f"\nFIGURE self-delete refused: VM deleted {out.upload_to_delete_s[name]:.1f} s after its last upload")
    assert out.upload_to_delete_s[name] < 30


@pytest.mark.parametrize("net", ["status", "sweep"])
def test_a_vm_whose_self_delete_is_refused_is_deleted_by_status_or_sweep(cfg, image, tmp_path, faults, net):
    from lib import status as status_mod
    from lib import sweep as sweep_mod

    batch, run_id, name = _one_model(tmp_path)
    faults("metadata", "deny:compute.instances.delete", match=f"/{name} ")  # its account lacks the permission
    runstaged.run_staged(cfg, batch, run_id=run_id, image=image)  # no wait: nobody follows it
    warned: list[str] = []
    call = {"status": lambda: status_mod.status(cfg, on_warn=warned.append),
            "sweep": lambda: sweep_mod.sweep(cfg, on_warn=warned.append)}[net]
    wait_for(lambda: call() is not None and compute.get_vm(cfg, name) is None, 120, f"{net} to delete the VM", interval=0.25)
    gone_at = time.time()
    status = _status(cfg, run_id, name)
    assert status["state"] == "self_delete_refused" and status["per_model"]["m"]["state"] == "ok"
    assert any(f"VM {name} " in w and "reports self_delete_refused" in w for w in warned), warned
    assert storage.get_blob(cfg, f"{run_id}/m.zip") is not None
    print(f"\nFIGURE self-delete refused, no follower: {net} deleted the VM "
          f"{gone_at - float(status['last_upload']):.1f} s after its last upload")


def test_a_result_stranded_by_a_503_storm_is_reported_then_rescued_by_the_sweep(cfg, image, tmp_path, faults):
    from lib import sweep as sweep_mod

    batch, run_id, name = _one_model(tmp_path)
    faults("storage", "http:503", count=10_000, match=f"uploadType=media&name={run_id}%2Fm\\.zip")
    t0 = time.time()
    runstaged.run_staged(cfg, batch, run_id=run_id, image=image)  # no wait: nobody follows it
    status = wait_for(lambda: (s := _status(cfg, run_id, name)).get("stranded") == "m" and s, 240,
                       "the VM to report m stranded", interval=0.25)
    started = time.time()
    print(f"\nFIGURE 503 storm: result reported stranded {started - t0:.1f} s after the launch began "
          f"(the model's upload gave up after one round of backoff)")
    assert status["per_model"]["m"]["state"] == "upload_failed"
    warned, logs = [], []
    wait_for(lambda: sweep_mod.sweep(cfg, on_warn=warned.append, on_log=logs.append) is not None and
              compute.get_vm(cfg, name) is None, 120, "the sweep to rescue and delete the VM", interval=0.25)
    assert any("reports stranded result(s) m on its disk: copying them" in w for w in warned), warned
    assert any(f"rescued {name}:" in line for line in logs), logs
    assert storage.get_blob(cfg, f"{run_id}/m.zip") is not None  # the PC's upload went through the storm
    print(f"FIGURE 503 storm: the sweep rescued the result and deleted the VM {time.time() - started:.1f} s later")


def test_a_result_whose_upload_fails_for_good_is_rescued_before_the_vm_is_deleted(cfg, image, tmp_path, faults):
    batch, run_id, name = _one_model(tmp_path, SLOW_TCL.format(ms=200))
    faults("storage", "http:403", count=10_000, match=f"uploadType=media&name={run_id}%2Fm\\.zip")
    logs: list[str] = []
    seen: dict[str, float] = {}

    def on_log(line: str) -> None:
        logs.append(line)
        for key, text in (("stranded", "reports stranded result"), ("gone", f"{name}: was deleted by ops-hpc")):
            if text in line:
                seen.setdefault(key, time.time())

    out = runstaged.run_staged(cfg, batch, wait=True, run_id=run_id, results_dir=tmp_path / "r",
                               image=image, on_log=on_log, tail=False)
    assert {r["model"]: r["state"] for r in out.rows} == {"m": "ok"}, "\n".join(logs)
    assert (tmp_path / "r" / run_id / "m" / "output" / "done.out").exists()
    print(f"\nFIGURE stranded result: VM deleted {seen['gone'] - seen['stranded']:.1f} s after it reported the "
          "stranded result (rescued first)")
    assert any(f"rescued {name}:" in line for line in logs), "\n".join(logs)
    assert compute.get_vm(cfg, name) is None and not out.lost
    stranded_at = next(i for i, line in enumerate(logs) if "reports stranded result" in line)
    assert stranded_at < next(i for i, line in enumerate(logs) if f"deleting VM {name}" in line or
                              f"deleted VM {name}" in line or f"{name}: was deleted" in line)


def test_a_stranded_result_is_retried_by_the_vm_until_it_uploads(cfg, image, localcloud, tmp_path, faults):
    batch, run_id, name = _one_model(tmp_path)
    faults("storage", "http:403", count=10_000, match=f"uploadType=media&name={run_id}%2Fm\\.zip")
    runstaged.run_staged(cfg, batch, run_id=run_id, image=image)  # no wait: nobody rescues it
    wait_for(lambda: _status(cfg, run_id, name).get("stranded") == "m", 60, "the VM to report m stranded", interval=0.25)
    shown = runlog.format_log(runlog.run_log(cfg, run_id))
    assert "stranded result(s) m on the VM under /opt/ops-hpc/work/" in shown
    localcloud.clear_faults()  # the bucket takes uploads again: the VM's next retry gets through
    wait_for(lambda: compute.get_vm(cfg, name) is None, 60, "the VM to upload and delete itself", interval=0.25)
    assert storage.get_blob(cfg, f"{run_id}/m.zip") is not None
    assert _status(cfg, run_id, name)["state"] == "done"


def test_a_preempted_run_without_wait_says_so_and_reruns_only_its_unfinished_models(cfg, image, localcloud,
                                                                                     tmp_path):
    base = tmp_path / "batch"
    for model in ("first", "second", "third"):
        _tcl(base, model, SLOW_TCL.format(ms=1500))
    (base / "batch.txt").write_text("first timeout=5\nsecond timeout=5\nthird timeout=5\n")
    out = runstaged.run_staged(cfg, base / "batch.txt", spot=True, image=image)
    (vm,) = out.vms
    wait_for(lambda: _status(cfg, out.run_id, vm).get("per_model", {}).get("first", {}).get("state") == "ok" and
              _status(cfg, out.run_id, vm).get("current_model") == "second", 60, "the second model to start", interval=0.25)
    t0 = time.monotonic()
    localcloud.admin(f"preempt/{cfg.project}/{cfg.zone}/{vm}", {})
    try:
        status = wait_for(lambda: (s := _status(cfg, out.run_id, vm)).get("state") == "preempted" and s, 45,
                           "the preempted status", interval=0.25)
    except AssertionError:
        log = storage.download_bytes(cfg, f"_logs/{out.run_id}/_vm-{vm}.log") or b"(no VM log)"
        raise AssertionError(f"status {_status(cfg, out.run_id, vm)}; VM log:\n{log.decode()}") from None
    print(f"\nFIGURE preemption: status says preempted {time.monotonic() - t0:.1f} s after the preempt call")
    assert runstatus.unfinished(status) == ["second", "third"]
    shown = runlog.format_log(runlog.run_log(cfg, out.run_id))
    assert "preempted before it finished: second, third" in shown and f"RERUN={out.run_id}" in shown
    again = runstaged.run_staged(cfg, None, rerun=out.run_id, wait=True, results_dir=tmp_path / "r", image=image,
                                 tail=False)
    assert sorted(again.models) == ["second", "third"] and not again.lost
    assert {r["model"]: r["state"] for r in again.rows} == {"second": "ok", "third": "ok"}
    assert all(compute.get_vm(cfg, v) is None for v in again.vms)
