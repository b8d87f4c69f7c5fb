"""The status file of a packed VM: every running model is named, and `make log` shows them all."""

from __future__ import annotations

from lib.runlog import format_log
from lib.runstatus import parse_status, running_models

PACKED = """format=1
run_id=run-1
vm=vm-a
state=running
models=5
current=4
current_model=c
cores=4
cores_busy=3
running=a,c
model.a=running
model.b=ok 2.5
model.c=running
model.d=uploading 1.0
model.e=pending
"""


def test_every_running_model_is_named():
    status = parse_status(PACKED)
    assert running_models(status) == ["a", "c"]
    older = parse_status("state=running\ncurrent_model=x\nmodel.x=pending\n")  # a VM from before packing
    assert running_models(older) == ["x"]
    assert running_models(parse_status("state=done\nmodel.x=ok 1\n")) == []


def test_make_log_shows_every_running_model_and_the_busy_cores():
    status = parse_status(PACKED)
    info = {"run_id": "run-1", "vms": {"vm-a": status}, "log_model": None, "tail": [],
            "models": {m: {**i, "vm": "vm-a"} for m, i in status["per_model"].items()}}
    text = format_log(info)
    assert "vm-a: running, started 4/5, 3/4 cores busy, running a, c" in text
    assert "models: 1/5 finished" in text
