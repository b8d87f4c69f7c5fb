"""Benchmark: how long a VM lives past its purpose when its launcher is interrupted during the insert.

Run with `pytest -q -s tests/bench/bench_insert_race.py` (not part of `make test`). Goal: <= 30 s.

The local cloud's insert is executed at once but its answer held (fault "delay", 8 s), so the interrupt
lands while Google has created the VM and the client has not heard back. Figures are seconds from the
interrupt (or, after a kill -9, from the next `status`) until the VM no longer exists.
"""

from __future__ import annotations

import signal
import time

import pytest

from lib import compute, status
from lib.polling import poll_until
from tests.test_guard import INSERT, _child_inserting
from tests.vm_helpers import vm_env


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
