"""VMGuard: every row of the guard table, against the local cloud (and a faked kernel32 for Windows)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import types

import pytest

from lib import compute, guard
from lib.guard import VMGuard
from lib.polling import poll_until
from lib.reconcile import reconcile
from lib.state import SessionState
from tests.support.vms import REPO_ROOT, vm_env

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX signals; the Windows path is unit-tested below")


@pytest.fixture
def vms(localcloud, tmp_path):
    yield from vm_env(localcloud, tmp_path)


def test_normal_exit_deletes_vm(vms):
    name = vms.create()
    with VMGuard(vms.cfg, name, on_log=vms.log) as g:
        assert compute.get_vm(vms.cfg, name).status == "RUNNING"
        assert SessionState(vms.cfg).vms()[name]["guarded"] is True
    assert g.deleted and compute.get_vm(vms.cfg, name) is None
    assert name not in SessionState(vms.cfg).vms()


def test_exception_in_block_deletes_vm_and_propagates(vms):
    name = vms.create()
    with pytest.raises(RuntimeError, match="boom"), VMGuard(vms.cfg, name, on_log=vms.log):
        raise RuntimeError("boom")
    assert compute.get_vm(vms.cfg, name) is None


def test_disarm_prevents_double_delete_and_handlers_restored(vms):
    name = vms.create()
    before = signal.getsignal(signal.SIGTERM)
    with VMGuard(vms.cfg, name, on_log=vms.log) as g:
        assert signal.getsignal(signal.SIGTERM) == g._on_signal
        assert compute.delete_vm(vms.cfg, name, on_log=vms.log)
        g.disarm()
    assert not g.deleted  # the guard did not try again
    assert signal.getsignal(signal.SIGTERM) == before
    assert not any("VMGuard: deleting" in line for line in vms.logs)


def test_atexit_handler_deletes_when_block_never_left(vms):
    name = vms.create()
    g = VMGuard(vms.cfg, name, on_log=vms.log).__enter__()
    try:
        g._at_exit()  # what atexit calls at interpreter exit
        assert compute.get_vm(vms.cfg, name) is None
    finally:
        g._uninstall()


def test_refuses_to_delete_a_vm_without_our_label(vms):
    name = vms.create(labels=False)
    with VMGuard(vms.cfg, name, on_log=vms.log) as g:
        pass
    assert not g.deleted and compute.get_vm(vms.cfg, name) is not None
    assert any("no ops-hpc=true label" in line for line in vms.logs)
    compute.delete_vm(vms.cfg, name, force=True, on_log=vms.log)


# Starts the child with SIGINT ignored, as a shell without job control starts a background command (`cmd &`
# in a script, a CI step): Python then installs no KeyboardInterrupt handler for the guard to chain to.
IGNORING_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                   "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")


def _child(vms, name, *, sigint_ignored=False):
    env = vms.cloud.env(state_dir=vms.cfg.state_dir, machine_type="e2-standard-2", build_machine_type="e2-standard-2")
    wrapper = [sys.executable, "-c", IGNORING_SIGINT] if sigint_ignored else [sys.executable]
    proc = subprocess.Popen([*wrapper, str(REPO_ROOT / "tests" / "guard_child.py"), name], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "ready", (line, proc.stderr.read() if proc.poll() is not None else "")
    assert compute.get_vm(vms.cfg, name).status == "RUNNING"
    return proc


@posix_only
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_real_child_deletes_vm(vms, sig):
    name = vms.name()
    proc = _child(vms, name)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert compute.get_vm(vms.cfg, name) is None, (out, err)
    assert f"deleting VM {name}" in out
    assert proc.returncode != 0  # the signal still ends the process (KeyboardInterrupt / exit 128+15)
    assert name not in SessionState(vms.cfg).vms()


@posix_only
def test_sigint_to_a_child_that_inherited_sigint_ignored_deletes_vm_and_ends_it(vms):
    """The guard replaced an inherited SIG_IGN: after deleting the VM the process must end, not carry on without it."""
    name = vms.name()
    proc = _child(vms, name, sigint_ignored=True)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert compute.get_vm(vms.cfg, name) is None, (out, err)
    assert f"deleting VM {name} (SIGINT received)" in out
    assert "KeyboardInterrupt" in err and proc.returncode != 0, (proc.returncode, err)


@posix_only
def test_sighup_ignored_by_nohup_stays_ignored(monkeypatch):
    """`nohup`: the run outlives its terminal, so the guard does not turn a hang-up into a delete."""
    monkeypatch.setattr(VMGuard, "_mark", lambda self, guarded: None)
    monkeypatch.setattr(compute, "delete_vm", lambda cfg, name, **kw: True)
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with VMGuard(object(), "vm-x", on_log=lambda _: None) as g:
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == g._on_signal
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with VMGuard(object(), "vm-y", on_log=lambda _: None) as g:
            assert signal.getsignal(signal.SIGHUP) == g._on_signal  # a terminal's hang-up still deletes
    finally:
        signal.signal(signal.SIGHUP, before)


@posix_only
def test_sigkill_leaves_vm_then_next_command_reconcile_deletes_it(vms):
    name = vms.name()
    proc = _child(vms, name)
    proc.kill()
    proc.wait(10)
    assert compute.get_vm(vms.cfg, name).status == "RUNNING"  # nothing ran in the child
    warnings: list[str] = []
    result = reconcile(vms.cfg, on_log=vms.log, on_warn=warnings.append)
    assert name in result.deleted
    assert any("died without cleaning up" in w for w in warnings)
    assert compute.get_vm(vms.cfg, name) is None and name not in SessionState(vms.cfg).vms()


# ----------------------------------------------------------------------------- Windows console handler


class FakeKernel32:
    def __init__(self):
        self.calls = []

    def SetConsoleCtrlHandler(self, handler, add):
        self.calls.append((handler, add))
        return 1


def fake_ctypes(kernel32):
    def winfunctype(restype, *argtypes):
        assert argtypes  # HandlerRoutine(DWORD) -> BOOL
        return lambda fn: fn

    return types.SimpleNamespace(WinDLL=lambda name, use_last_error=False: kernel32, WINFUNCTYPE=winfunctype,
                                 c_int=int, c_uint=int)


@pytest.mark.parametrize("event", [guard.CTRL_CLOSE_EVENT, guard.CTRL_LOGOFF_EVENT, guard.CTRL_SHUTDOWN_EVENT])
def test_windows_console_handler_registered_and_deletes(monkeypatch, event):
    kernel32 = FakeKernel32()
    monkeypatch.setattr(guard, "IS_WINDOWS", True)
    monkeypatch.setattr(guard, "_load_ctypes", lambda: fake_ctypes(kernel32))
    deleted = []
    monkeypatch.setattr(compute, "delete_vm", lambda cfg, name, **kw: deleted.append(name) or True)
    monkeypatch.setattr(VMGuard, "_mark", lambda self, guarded: None)
    g = VMGuard(object(), "vm-x", on_log=lambda _: None)
    g.__enter__()
    try:
        (handler, added), = kernel32.calls
        assert added is True
        assert handler(guard.CTRL_C_EVENT) == 0 and deleted == []  # Ctrl+C is left to the SIGINT handler
        assert handler(event) == 1
        assert deleted == ["vm-x"]
        assert handler(event) == 1 and deleted == ["vm-x"]  # once only
    finally:
        g._uninstall()
    assert kernel32.calls[-1] == (handler, False)  # unregistered on the way out


# -- an interrupt while the insert is in flight -------------------------------------------------------------------

INSERT = r"^POST /compute/v1/projects/[^/]+/zones/[^/]+/instances(\?|$)"


def _child_inserting(vms, name):
    """A child that enters its guard, then creates the VM; returns once the insert is recorded in session state."""
    env = vms.cloud.env(state_dir=vms.cfg.state_dir, machine_type="e2-standard-2", build_machine_type="e2-standard-2")
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "tests" / "guard_child.py"), name, "--guard-first"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "guarded"
    assert poll_until(lambda: (SessionState(vms.cfg).vms().get(name) or {}).get("insert"), 20, 0.05), \
        "the insert was not recorded in session state before it was sent"
    return proc


@posix_only
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_the_insert_deletes_what_the_insert_creates(vms, faults, sig):
    """Google has created the VM but its answer has not arrived when Ctrl+C lands: the guard waits for the
    insert (same requestId) and deletes the VM, instead of finding "nothing yet" and leaving it running."""
    name = vms.name()
    faults("compute", "delay", match=INSERT, seconds=8)
    proc = _child_inserting(vms, name)
    assert poll_until(lambda: compute.get_vm(vms.cfg, name), 20, 0.05), "the insert never reached the cloud"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert compute.get_vm(vms.cfg, name) is None, (out, err)
    assert "creation of VM" in out and f"deleted VM {name}" in out and "already gone" not in out, (out, err)
    assert name not in SessionState(vms.cfg).vms()


@posix_only
def test_sigkill_during_the_insert_then_status_keeps_the_entry_and_deletes_the_vm(vms, faults):
    """kill -9 while the insert is still queued: a reconcile (bin/status) before the VM appears keeps the entry
    (the insert may still land); once the VM exists, the dead guard's VM is deleted."""
    name = vms.name()
    faults("compute", "stall", match=INSERT, seconds=10)  # the insert is executed 10 s after it arrives
    proc = _child_inserting(vms, name)
    arrived = lambda: any(f["kind"] == "stall" and f["hits"] for f in vms.cloud.admin("faults"))  # noqa: E731
    assert poll_until(arrived, 20, 0.05), "the insert never reached the cloud"
    proc.kill()
    proc.wait(10)
    assert compute.get_vm(vms.cfg, name) is None  # not created yet
    early = reconcile(vms.cfg, on_log=vms.log, on_warn=vms.log)
    assert early.row(name).action == "none: its insert may still land" and name in SessionState(vms.cfg).vms()
    assert poll_until(lambda: compute.get_vm(vms.cfg, name), 30, 0.1), "the queued insert never landed"
    late = reconcile(vms.cfg, on_log=vms.log, on_warn=vms.log)
    assert name in late.deleted and compute.get_vm(vms.cfg, name) is None


# ----------------------------------------------------------------------------- uploads in flight hold the delete


@pytest.fixture
def held(monkeypatch):
    """A guard with no cloud: deletes are recorded with whether the stand-in push was still running."""
    import threading

    monkeypatch.setattr(VMGuard, "_mark", lambda self, guarded: None)
    monkeypatch.setattr(compute, "settle_insert", lambda name, **kw: None)
    release = threading.Event()
    push = threading.Thread(target=release.wait, args=(60,), name="push-job1", daemon=True)
    push.start()
    deletes: list[bool] = []  # push still running at the delete?
    monkeypatch.setattr(compute, "delete_vm", lambda cfg, name, **kw: deletes.append(push.is_alive()) or True)
    logs: list[str] = []
    yield types.SimpleNamespace(push=push, release=release, deletes=deletes, logs=logs)
    release.set()


@posix_only
def test_an_interrupt_lets_the_push_in_flight_finish_before_the_delete(held):
    import threading

    threading.Timer(0.5, held.release.set).start()  # the push ends half a second after the Ctrl+C
    with pytest.raises(KeyboardInterrupt), VMGuard(object(), "vm-x", on_log=held.logs.append,
                                                   pending=lambda: [held.push], hold_s=60) as g:
        g._on_signal(signal.SIGINT, None)
    assert held.deletes == [False], held.logs  # deleted once, after the push ended
    assert "VMGuard: waiting up to 60 s for 1 upload(s) in flight (push-job1) before deleting VM vm-x; Ctrl+C " \
           "again deletes it now" in held.logs


@posix_only
def test_a_second_interrupt_deletes_at_once(held):
    import threading
    import time

    threading.Timer(0.5, os.kill, args=(os.getpid(), signal.SIGINT)).start()  # the second Ctrl+C
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt), VMGuard(object(), "vm-x", on_log=held.logs.append,
                                                   pending=lambda: [held.push], hold_s=600) as g:
        g._on_signal(signal.SIGINT, None)
    assert held.deletes == [True] and time.monotonic() - t0 < 30, held.logs  # not the 600 s hold
    assert any("second interrupt: deleting VM vm-x now; upload(s) push-job1 will not finish" in x for x in held.logs)


def test_the_hold_is_bounded_by_the_upload_timeout(held):
    with VMGuard(object(), "vm-x", on_log=held.logs.append, pending=lambda: [held.push], hold_s=1):
        pass  # normal exit: the same hold
    assert held.deletes == [True]
    assert any("still running after 1 s: deleting VM vm-x now" in x for x in held.logs), held.logs


def test_nothing_in_flight_deletes_at_once(held):
    held.release.set()
    held.push.join()
    with VMGuard(object(), "vm-x", on_log=held.logs.append, pending=lambda: [held.push], hold_s=600):
        pass
    assert held.deletes == [False] and not any("waiting" in x for x in held.logs)
