"""The invoke side of the error boundary: one decorator turns every known error into Exit with one line."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from invoke import Context, Exit

import tasks
from lib import errors


def _task(raising):
    @tasks.ops_task
    def job(c):
        raise raising

    return job


@pytest.mark.parametrize(("exc", "code", "words"), [
    (errors.Refused("not ours"), 3, "not ours"),
    (errors.UsageError("bad batch"), 2, "bad batch"),
    (gexc.Forbidden("Required 'compute.instances.list' permission for 'projects/p'"), 2, "compute.instances.list"),
    (ConnectionRefusedError(111, "Connection refused"), 1, "cannot reach"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_ops_task_turns_errors_into_one_line_exit(exc, code, words):
    with pytest.raises(Exit) as info:
        _task(exc)(Context())
    assert info.value.code == code
    assert words in info.value.message and "\n" not in info.value.message


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        _task(ZeroDivisionError("bug"))(Context())


def test_ops_task_keeps_the_signature_invoke_parses():
    """invoke reads flags from the wrapped function's signature: the decorator must not hide them."""
    assert {"name", "follow", "interval"} <= {a.name for a in tasks.monitor.get_arguments()}


def test_run_staged_wait_interrupted_says_the_vms_keep_running(monkeypatch):
    from lib import runstaged

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runstaged, "run_staged", interrupted)
    monkeypatch.setattr(tasks, "_cfg", lambda **kw: None)
    with pytest.raises(Exit) as info:
        tasks.run_staged(Context(), wait=True)
    assert info.value.code == 130 and "delete themselves" in info.value.message and "log" in info.value.message
