"""Benchmark: how long a VM lives past its purpose when a safety net has to act. Goal: <= 30 s.

Run with `pytest -q -s tests/bench/bench_safety_nets.py` (not part of `make test`).

Insert race: the local cloud's insert is executed at once but its answer held (fault "delay", 8 s), so the
interrupt lands while Google has created the VM and the client has not heard back. Figures are seconds from
the interrupt (or, after a kill -9, from the next `status`) until the VM no longer exists.
Corrupt state file: seconds from the start of `bin/sweep` until an overdue VM no longer exists.
"""

from __future__ import annotations

import signal
import time

import pytest

from lib import compute, status
from lib.polling import poll_until
from lib.state import STATE_FILE
from tests.support.bins import run_bin
from tests.support.vms import vm_env
from tests.test_guard import INSERT, _child_inserting


@pytest.fixture
def vms(localcloud, tmp_path):
    yield from vm_env(localcloud, tmp_path)


def _gone_after(vms, name: str, start: float) -> float:
    assert poll_until(lambda: compute.get_vm(vms.cfg, name) is None, 120, 0.05)
    return time.monotonic() - start


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL+status"])
def test_seconds_past_purpose(vms, faults, how):
    name = vms.name()
    faults("compute", "delay", match=INSERT, seconds=8)
    proc = _child_inserting(vms, name)
    assert poll_until(lambda: compute.get_vm(vms.cfg, name), 20, 0.05)
    if how == "SIGKILL+status":
        proc.kill()
        proc.wait(10)
        start = time.monotonic()
        status.status(vms.cfg, on_log=vms.log, on_warn=vms.log)
    else:
        start = time.monotonic()
        proc.send_signal(getattr(signal, how))
        proc.communicate(timeout=60)
    seconds = _gone_after(vms, name, start)
    print(f"\n{how}: VM {name} gone {seconds:.1f} s after the interrupt (goal <= 30 s)")
    assert seconds <= 30


def test_overdue_vm_with_a_corrupt_state_file(vms, localcloud):
    name = vms.create()
    compute.set_expected_end(vms.cfg, name, time.time() - 7200)
    (vms.cfg.state_path / STATE_FILE).write_text('{"vms": {')
    start = time.monotonic()
    proc = run_bin("sweep", env=localcloud.env(state_dir=vms.cfg.state_dir))
    assert proc.returncode == 0, proc.stderr
    seconds = _gone_after(vms, name, start)
    print(f"\ncorrupt state: overdue VM {name} gone {seconds:.1f} s after bin/sweep started (goal <= 30 s)")
    assert seconds <= 30
