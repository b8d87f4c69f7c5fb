"""monitor: figures from the Monitoring API, and from /proc over ssh when it has no points."""

from __future__ import annotations

import pytest

from lib import compute, monitor
from lib.errors import OpsError
from tests.support.pipelines import boot, quiet, start_job
from tests.support.vms import unique, vm_config

PROC = """cpu  100 0 100 800 0 0 0 0 0 0
cpu  150 0 150 850 0 0 0 0 0 0
MemTotal:       16000000 kB
MemAvailable:    4000000 kB
/dev/sda1 100000 42000 58000 42% /
"""


def test_parse_proc():
    assert monitor.parse_proc(PROC) == {"cpu_percent": 66.7, "memory_percent": 75.0, "disk_percent": 42.0}


@pytest.fixture
def running_vm(localcloud, tmp_path):
    cfg = vm_config(localcloud, tmp_path / "state")
    name = unique("mon")
    boot(cfg, name)
    start_job(cfg, name, "endless")
    yield cfg, name
    compute.delete_vm(cfg, name, on_log=quiet)


def test_monitor_reads_the_monitoring_api(running_vm):
    cfg, name = running_vm
    s = monitor.sample(cfg, name, sample_s=0.2)
    assert s["source"] == dict.fromkeys(("cpu_percent", "memory_percent", "disk_percent"), "monitoring")
    assert all(0 <= s[k] <= 100 for k in ("cpu_percent", "memory_percent", "disk_percent"))
    assert "(monitoring)" in monitor.format_sample(s)


def test_monitor_falls_back_to_proc_over_ssh_without_points(localcloud, running_vm):
    cfg, name = running_vm
    localcloud.admin("metrics", {"enabled": False})
    try:
        s = monitor.sample(cfg, name, sample_s=0.2)
        seen: list[dict] = []
        sleeps: list[float] = []
        assert monitor.follow(cfg, name, on_metrics=seen.append, interval=7, count=2, sleep=sleeps.append,
                              sample_s=0.1) == 2
    finally:
        localcloud.admin("metrics", {"enabled": True})
    assert s["source"] == dict.fromkeys(("cpu_percent", "memory_percent", "disk_percent"), "ssh")
    assert 0 <= s["cpu_percent"] <= 100 and 0 < s["memory_percent"] <= 100 and 0 < s["disk_percent"] <= 100
    assert len(seen) == 2 and sleeps == [7]


def test_follow_ends_when_the_vm_is_deleted(running_vm):
    cfg, name = running_vm
    seen: list[dict] = []
    assert monitor.follow(cfg, name, on_metrics=seen.append, interval=1, count=None, sample_s=0.1,
                          sleep=lambda s: compute.delete_vm(cfg, name, on_log=quiet)) == 1
    with pytest.raises(OpsError, match="does not exist"):
        monitor.sample(cfg, name)
