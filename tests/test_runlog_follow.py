"""`ops-hpc log -f`: following `_logs/` while a model writes, on the local cloud.

The first tests drive the bucket by hand between polls (the follower's `sleep` writes the next piece), so
every byte boundary is exercised; the last ones follow a real VM running a real OpenSees model, and
interrupt a follower: the run goes on.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib import compute, runlog, runstaged, storage
from lib.errors import Refused
from tests.support.vms import run_config, wait_gone

REPO = Path(__file__).resolve().parents[1]
RUN = "run-20261206-101500-f00d"


def _status(cfg, vm: str, state: str, **models: str) -> None:
    lines = [f"format=1\nrun_id={RUN}\nvm={vm}\nstate={state}\nupdated=2026-12-06T10:15:0{len(models)}Z"]
    lines += [f"model.{m}={s}" for m, s in models.items()]
    storage.upload_bytes(cfg, f"_status/{RUN}/{vm}.txt", "\n".join(lines).encode())


def _log(cfg, model: str, text: str) -> None:
    storage.upload_bytes(cfg, f"_logs/{RUN}/{model}.log", text.encode())


@pytest.fixture
def nobody_lists_vms(monkeypatch):
    """These runs have no VM: let the status files alone say when the run is over."""
    monkeypatch.setattr(runlog, "_alive", lambda cfg, run_id: None)


def test_follow_shows_each_line_once_as_it_lands_and_reads_only_new_bytes(bucket, nobody_lists_vms, monkeypatch):
    reads: list[tuple[int, int | None]] = []
    real = storage.download_range

    def spy(cfg, name, start, end=None):
        reads.append((start, end))
        return real(cfg, name, start, end)

    monkeypatch.setattr(storage, "download_range", spy)
    text = ""
    pieces = ["step 1\nstep 2\nst", "ep 3\n", "", "step 4\r\nstep 5\n", "analysis complete"]
    _status(bucket, "vm1", "running", frame="running")
    _log(bucket, "frame", "")
    steps = iter(pieces)
    shown: list[str] = []
    seen_at_step: list[int] = []

    def next_piece(_seconds: float) -> None:
        nonlocal text
        seen_at_step.append(len(shown))
        piece = next(steps, None)
        if piece is None:
            _status(bucket, "vm1", "done", frame="ok 3.0")
            return
        text += piece
        _log(bucket, "frame", text)

    out = runlog.follow(bucket, RUN, "frame", on_line=shown.append, sleep=next_piece, poll=0)
    assert shown == ["step 1", "step 2", "step 3", "step 4", "step 5", "analysis complete"]
    assert seen_at_step[:4] == [0, 2, 3, 3]  # lines appear as they land; a half line waits for its end
    assert out["models"] == {"frame": "ok"}
    fetched = sum((end or 0) - start + 1 for start, end in reads)
    assert fetched <= len(text.encode()) + runlog.OVERLAP * len(reads)  # only new bytes (and a short overlap)


def test_follow_all_models_prefixes_each_line_and_a_restarted_log_is_read_again(bucket, nobody_lists_vms):
    _status(bucket, "vm1", "running", a="running", b="pending")
    _log(bucket, "a", "a1\na2\n")
    storage.upload_bytes(bucket, f"_logs/{RUN}/_vm-vm1.log", b"the VM's own log is not a model\n")
    shown: list[str] = []
    events: list[str] = []
    script = iter([
        lambda: (_log(bucket, "b", "b1\n"), _status(bucket, "vm1", "running", a="ok 1", b="running")),
        lambda: _log(bucket, "b", "again, longer than before\n"),  # a new log: the model started over
        lambda: _status(bucket, "vm1", "done", a="ok 1", b="ok 2"),
    ])
    runlog.follow(bucket, RUN, on_line=shown.append, on_event=events.append, sleep=lambda s: next(script)(), poll=0)
    assert shown == ["a| a1", "a| a2", "b| b1", "b| again, longer than before"]
    assert "b: its log started over (the model is running again)" in events and "b: ok" in events


def test_follow_names_a_model_the_run_does_not_have(bucket, nobody_lists_vms):
    _status(bucket, "vm1", "running", frame="running")
    with pytest.raises(Refused, match="no model 'truss'.*frame"):
        runlog.follow(bucket, RUN, "truss", on_line=print, sleep=lambda s: None)


# -- a real VM --------------------------------------------------------------------------------------------

CHATTY_TCL = """for {set i 1} {$i <= 16} {incr i} {
    puts "line $i"
    flush stdout
    after 500
}
puts "done writing"
"""


@pytest.fixture
def cfg(localcloud, tmp_path):
    c = run_config(localcloud, tmp_path / "state")
    yield c
    for vm in compute.list_vms(c):
        if vm.name.startswith("ops-hpc-") and storage.list_blobs(c, f"_status/{vm.run_id}/"):
            compute.delete_vm(c, vm.name, on_log=lambda _: None)


def _batch(tmp_path: Path) -> Path:
    base = tmp_path / "batch"
    (base / "chatty").mkdir(parents=True)
    (base / "chatty" / "main.tcl").write_text(CHATTY_TCL)
    shutil.copytree(REPO / "batches" / "examples" / "frame_pushover", base / "frame")
    (base / "batch.txt").write_text("chatty timeout=10\nframe\n")
    return base / "batch.txt"


def test_follow_a_real_model_while_it_writes_until_the_run_ends(cfg, image, tmp_path):
    out = runstaged.run_staged(cfg, _batch(tmp_path), wait=False, image=image)
    arrivals: list[tuple[float, str]] = []
    result = runlog.follow(cfg, out.run_id, "chatty", on_line=lambda line: arrivals.append((time.monotonic(), line)),
                           poll=0.3)
    lines = [line for _, line in arrivals]
    assert lines[:16] == [f"line {i}" for i in range(1, 17)] and "done writing" in lines
    assert len(lines) == len(set(lines))  # nothing shown twice
    assert arrivals[-1][0] - arrivals[0][0] > 2.0, "every line arrived at once: it was not followed live"
    assert result["models"]["chatty"] == "ok"
    final = storage.download_bytes(cfg, f"_logs/{out.run_id}/chatty.log").decode()
    assert [line for line in final.splitlines() if line] == lines


def test_ctrl_c_stops_following_with_130_and_leaves_the_run_alone(cfg, image, tmp_path, localcloud):
    out = runstaged.run_staged(cfg, _batch(tmp_path), wait=False, image=image)
    (vm,) = out.vms
    env = localcloud.env(bucket=cfg.bucket_name, state_dir=cfg.state_dir, time_scale="30",
                         machine_type=cfg.machine_type)
    proc = subprocess.Popen([sys.executable, "-m", "lib.console", "log", "-f", out.run_id, "chatty"], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # following: a line of the model arrived
        assert first.startswith("line "), first
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert code == 130, proc.stderr.read() if proc.stderr else ""
    assert compute.get_vm(cfg, vm) is not None or storage.get_blob(cfg, f"{out.run_id}/chatty.zip") is not None
    assert wait_gone(cfg, vm, 90), "the run did not finish on its own"
    assert {b.name for b in storage.list_blobs(cfg, f"{out.run_id}/")} == {f"{out.run_id}/chatty.zip",
                                                                          f"{out.run_id}/frame.zip"}
