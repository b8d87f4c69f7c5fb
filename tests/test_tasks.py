"""The invoke side of the error boundary: one decorator turns every known error into Exit with one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from invoke import Context, Exit

from lib import errors, tasks


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


# -- the namespace ---------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def _task_flags(path: str) -> set[str]:
    task = tasks.ns[path]
    return {name.replace("_", "-") for arg in task.get_arguments() for name in arg.names}


def test_namespaces_hold_the_areas():
    for path in ("localcloud.up", "localcloud.down", "results.pull", "results.watch", "results.verify",
                 "vm.launch", "vm.delete", "vm.abort", "vm.emergency", "vm.monitor", "vm.extend",
                 "image.list", "image.archive", "image.build", "run.staged", "run.jobs", "run.log", "run.demo"):
        assert tasks.ns[path].body is not None, path


def test_every_make_target_names_an_invoke_task_and_its_flags():
    """The Makefile keeps flat names: each `$(INVOKE) TASK --flag` must resolve in the namespace."""
    calls = re.findall(r"\$\(INVOKE\) ([\w.-]+)((?: [^\n]*)?)", (REPO / "Makefile").read_text())
    assert len(calls) >= 12
    for name, rest in calls:
        flags = set(re.findall(r"--([a-z][\w-]*)", rest))
        assert flags <= _task_flags(name), (name, flags - _task_flags(name))


def test_pull_task_offers_the_flags_of_bin_pull(monkeypatch):
    seen = []
    monkeypatch.setattr(tasks, "script", lambda name, *argv: seen.append((name, argv)))
    tasks.pull(Context(), list=True)
    tasks.pull(Context(), yes=True, watch=True, interval=5, set="TTFlat_20260406-153012", dir="out")
    assert seen[0] == ("pull", ("--list",))
    name, argv = seen[1]
    assert name == "pull" and {"--yes", "--watch", "--set", "--dir"} <= set(argv) and argv[argv.index("--interval") + 1] == "5"
    assert argv[argv.index("--set") + 1] == "TTFlat_20260406-153012"
    parse = tasks.load_script("pull")._parse_arguments  # and bin/pull accepts them as given
    for _, given in seen:
        parse(list(given))


def test_stop_vm_stays_an_alias_of_delete_vm():
    assert tasks.ns["stop-vm"] is tasks.ns["delete-vm"] is tasks.ns["vm.delete"]


@pytest.mark.parametrize(("job", "module", "function"), [("build", "build", "build_image"),
                                                         ("run_jobs", "runjobs", "run_jobs")])
def test_missing_gcloud_is_found_before_any_vm_is_created(monkeypatch, job, module, function):
    import importlib
    import shutil

    from lib.config import Config

    created = []
    monkeypatch.setattr(importlib.import_module(f"lib.{module}"), function, lambda *a, **k: created.append(a))
    monkeypatch.setattr(tasks, "_cfg", lambda **kw: Config.load({"project": "my-project-1"}, env={}, path=""))
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(Exit) as info:
        getattr(tasks, job)(Context())
    assert "gcloud CLI is needed" in info.value.message and info.value.code != 0
    assert created == []
