"""lib/deadline: the thread-safe Deadline, the watchdog, and extensions arriving from another process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from lib import deadline as dl
from lib.config import Config
from lib.errors import OpsError
from tests.support.bins import REPO


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_deadline_counts_down_extends_and_expires():
    clock = Clock()
    d = dl.Deadline(1, clock=clock)
    assert d.remaining_s == 60 and not d.expired
    clock.t += 59
    assert d.remaining_s == pytest.approx(1)
    d.extend(0.5)
    clock.t += 30
    assert not d.expired and d.remaining_s == pytest.approx(1)
    clock.t += 1
    assert d.expired and d.remaining_s == 0
    assert d.extended_min == 0.5
    with pytest.raises(ValueError):
        d.extend(0)


def test_extend_is_thread_safe():
    clock = Clock()
    d = dl.Deadline(1, clock=clock)
    threads = [threading.Thread(target=lambda: [d.extend(1) for _ in range(500)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert d.remaining_s == pytest.approx(60 + 8 * 500 * 60)
    assert d.extended_min == 4000


def test_watchdog_fires_once_and_applies_channel_requests(tmp_path):
    cfg = Config.load({"backend": "local", "state_dir": str(tmp_path)}, env={}, path="")
    clock = Clock()
    d = dl.Deadline(1, clock=clock, time_scale=6)  # a minute lasts 10 s
    fired: list[int] = []
    logs: list[str] = []
    channel = dl.Channel(cfg, "vm-a", "job-1", max_run_end=time.time() + 15)
    dog = dl.Watchdog(d, lambda: fired.append(1), channel=channel, on_log=logs.append)
    channel.publish(d)
    done = dl.request_extension(cfg, 2, on_log=logs.append)
    assert done[0]["past_max_run"] and any("max run duration" in x for x in logs)
    dog.check()
    assert d.extended_min == 2 and d.remaining_s == pytest.approx(30)
    dog.check()  # the same request is never applied twice
    assert d.extended_min == 2
    clock.t += 30
    dog.check()
    dog.check()
    assert fired == [1]
    channel.withdraw()
    with pytest.raises(OpsError) as err:
        dl.request_extension(cfg, 5)
    assert err.value.code == 3 and "no running job" in str(err.value)


def test_extension_from_another_process_reaches_the_watchdog_thread(tmp_path):
    """`invoke extend --minutes N` in another terminal: the running watchdog picks it up within its period."""
    cfg = Config.load({"backend": "local", "state_dir": str(tmp_path)}, env={}, path="")
    d = dl.Deadline(1, time_scale=20)  # 3 s
    fired = threading.Event()
    dog = dl.Watchdog(d, fired.set, channel=dl.Channel(cfg, "vm-b", "job-2"), interval=0.1).start()
    try:
        env = {"PATH": "/usr/bin:/bin", "OPS_HPC_BACKEND": "local", "OPS_HPC_STATE_DIR": str(tmp_path),
               "OPS_HPC_CONFIG": str(tmp_path / "none.toml")}
        (tmp_path / "none.toml").write_text("")
        out = subprocess.run([sys.executable, "-m", "invoke", "extend", "--minutes", "2", "--name", "vm-b"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "asked job job-2 on vm-b for 2 more minute(s)" in out.stdout
        time.sleep(0.5)
        assert d.extended_min == 2 and not fired.is_set()
        assert d.remaining_s > 3
    finally:
        dog.stop()
    assert not (tmp_path / "deadlines" / "vm-b.json").exists()


def test_a_reused_pid_is_not_a_running_job(tmp_path):
    """The channel names its runner by pid AND start time: a new process that got the pid is not the runner."""
    from lib import jsonfile

    cfg = Config.load({"backend": "local", "state_dir": str(tmp_path)}, env={}, path="")
    channel = dl.Channel(cfg, "vm-1", "model-a")
    channel.publish(dl.Deadline(5))
    assert [j["job"] for j in dl.running_jobs(cfg)] == ["model-a"]
    with jsonfile.edit(channel.path, {}) as data:
        data["owner"]["create_time"] -= 100  # same pid, another process
    assert dl.running_jobs(cfg) == []


def test_time_scale_is_the_one_clock_knob():
    clock = Clock()
    d = dl.Deadline(2, time_scale=60, clock=clock)  # two minutes pass in two seconds
    assert d.minute_s == 1.0 and d.remaining_s == 2.0
    with pytest.raises(ValueError):
        dl.Deadline(1, time_scale=0)
