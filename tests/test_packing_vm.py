"""Packed VMs on the local cloud: models run side by side within the usable cores, retries, refusals, preemption.

Model timeouts run 30x faster through the config's time_scale. Every test ends with no VM alive.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lib import compute, manifest, runstaged, runstatus, stage, storage
from lib.errors import Refused, UsageError
from tests.support.vms import SMALL, run_config

WAIT_TCL = "file mkdir output\nafter {ms}\nset f [open output/done.out w]\nputs $f ok\nclose $f\n"
FLAKY_TCL = """# fails on its first attempt only: the marker lives next to the model folder, which each attempt recreates
if {![file exists ../flaky.tried]} { close [open ../flaky.tried w]; error "first attempt fails" }
file mkdir output
close [open output/done.out w]
"""


@pytest.fixture
def cfg(localcloud, tmp_path):
    c = run_config(localcloud, tmp_path / "state")
    yield c
    left = [v.name for v in compute.list_vms(c) if v.run_id.startswith("run-")
            and storage.get_blob(c, f"_status/{v.run_id}/{v.name}.txt") is not None]
    for name in left:
        compute.delete_vm(c, name, on_log=lambda _: None)
    assert not left, f"VMs left alive: {left}"


def _model(base: Path, name: str, text: str) -> None:
    (base / name).mkdir(parents=True)
    (base / name / "main.tcl").write_text(text)


def _peak(mans: list[dict]) -> int:
    """The most models whose OpenSees runs overlapped in time (from the manifests' end and seconds)."""
    events = sorted([(m["ended_at"] - m["seconds"], 1) for m in mans] + [(m["ended_at"], -1) for m in mans])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_a_packed_vm_runs_models_side_by_side_within_its_cores_and_retries_failures(cfg, image, tmp_path):
    base = tmp_path / "batch"
    for i in range(4):
        _model(base, f"w{i}", WAIT_TCL.format(ms=2500))
    _model(base, "flaky", FLAKY_TCL)
    _model(base, "broken", "error {always fails}\n")
    _model(base, "endless", "after 600000\n")
    (base / "batch.txt").write_text("#cores 2\n" + "".join(f"w{i} timeout=5\n" for i in range(4))
                                    + "flaky timeout=5\nbroken timeout=5 retries=2\nendless timeout=1 retries=2\n")
    logs: list[str] = []
    out = runstaged.run_staged(cfg, base / "batch.txt", wait=True, results_dir=tmp_path / "r", image=image,
                               retries=1, on_log=logs.append, tail=False)
    assert not out.lost
    got = tmp_path / "r" / out.run_id
    mans = {m: manifest.read(got / m) for m in ("w0", "w1", "w2", "w3", "flaky", "broken", "endless")}
    assert _peak(list(mans.values())) == 2  # packed: two at a time on `#cores 2`, never three
    assert [mans[f"w{i}"]["state"] for i in range(4)] == ["ok"] * 4
    assert (mans["flaky"]["state"], mans["flaky"]["attempts"]) == ("ok", 2)  # --retries 1 for lines without retries=
    assert (mans["broken"]["state"], mans["broken"]["attempts"]) == ("failed", 3)
    assert (mans["endless"]["state"], mans["endless"]["attempts"]) == ("timeout", 1)  # a timeout is not retried
    rows = {r["model"]: r for r in out.rows}
    assert rows["flaky"]["attempts"] == 2 and "ran 2 times" in rows["flaky"]["note"]
    assert "broken: ran 3 times" in out.table
    status = next(iter(runstatus.read_statuses(cfg, out.run_id).values()))
    assert status["state"] == "done" and status["cores"] == "2"
    assert any(", running " in line and "," in line.split(", running ", 1)[1] for line in logs), \
        "the follower never showed two running models"


def test_a_model_larger_than_the_vm_is_refused_before_anything_is_staged(cfg, tmp_path):
    base = tmp_path / "batch"
    _model(base, "wide", "puts hi\n")
    (base / "batch.txt").write_text("wide cores=4 timeout=1\n")
    with pytest.raises(UsageError, match=rf"wide \(cores=4\): more cores than {SMALL} has \(1 usable\)"):
        runstaged.run_staged(cfg, base / "batch.txt", image="unused")
    (base / "batch.txt").write_text("wide mem=64 timeout=1\n")
    with pytest.raises(UsageError, match=rf"wide \(mem=64\): more memory than {SMALL} has \(8 GB\)"):
        runstaged.run_staged(cfg, base / "batch.txt", image="unused")
    with pytest.raises(Refused, match=r"model wide needs mem=64 GB"):  # the launch's own check, if called directly
        runstaged.plan_vms(cfg, "run-20260101-000000-abcd", [[stage.StagedModel("wide", "main.tcl", 1, 1, mem_gb=64)]],
                           total=1, image="unused")
    assert not storage.list_blobs(cfg, "_uploads/")


def test_a_preempted_packed_vm_relaunches_only_its_unfinished_models(cfg, image, localcloud, tmp_path):
    base = tmp_path / "batch"
    names = ["quick"] + [f"slow{i}" for i in range(3)]
    _model(base, "quick", WAIT_TCL.format(ms=200))
    for name in names[1:]:
        _model(base, name, WAIT_TCL.format(ms=4000))
    (base / "batch.txt").write_text("#cores 2\n" + "".join(f"{n} timeout=5\n" for n in names))
    preempted: list[str] = []

    def on_log(line: str) -> None:
        if not preempted and "quick: result pulled" in line:
            name = next(v.name for v in compute.list_vms(cfg) if v.spot and v.name.startswith("ops-hpc-"))
            preempted.append(name)
            threading.Thread(target=localcloud.admin, args=(f"preempt/{cfg.project}/{cfg.zone}/{name}", {}),
                             daemon=True).start()

    out = runstaged.run_staged(cfg, base / "batch.txt", wait=True, spot=True, results_dir=tmp_path / "r",
                               image=image, on_log=on_log, tail=False)
    assert preempted and out.relaunches == 1 and not out.lost
    got = tmp_path / "r" / out.run_id
    vm_of = {m: manifest.read(got / m)["vm"] for m in names}
    assert vm_of["quick"] == preempted[0]
    relaunched = [v for v in out.vms if v != preempted[0]]
    status = runstatus.read_statuses(cfg, out.run_id)[relaunched[0]]
    assert "quick" not in status["per_model"]  # a finished model is never run again
    assert {m for m in names if vm_of[m] != preempted[0]} <= set(status["per_model"])
    assert all(manifest.read(got / m)["state"] == "ok" for m in names)
