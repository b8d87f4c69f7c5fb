"""Per-job deadlines that the operator can extend, from this process or from another terminal.

`Deadline` is the thread-safe clock (`extend`, `remaining_s`, `expired`). `Watchdog` is a thread that
checks it every 2 s, applies extensions arriving through the *channel*, and kills the job once.

The channel is one small JSON file per running job under `<state_path>/deadlines/<vm>.json`, written
atomically under a lock. The run pipeline publishes it; `make extend MINUTES=30` (another process,
maybe hours later) adds to its `requested_min` counter; the watchdog applies the difference. A counter
rather than a queue means a request is never lost or applied twice, whoever crashes when.

An extension cannot move the VM's max run duration (Google deletes the VM then, whatever we want),
so both sides warn when a deadline passes it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib import jsonfile
from lib.config import Config
from lib.errors import OpsError, Refused, UsageError
from lib.log import Log, quiet

CHECK_S = 2.0


class Deadline:
    """A job's time limit; `minute_s` scales minutes to seconds (60 in production, small in tests)."""

    def __init__(self, minutes: float, *, minute_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if minutes <= 0:
            raise ValueError("a deadline needs a positive number of minutes")
        self.minute_s = float(minute_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._end = self._start + minutes * self.minute_s
        self.minutes = float(minutes)
        self.extended_min = 0.0

    def extend(self, minutes: float) -> float:
        """Add minutes (thread-safe; also revives an expired deadline that has not been acted on). Returns remaining_s."""
        if minutes <= 0:
            raise ValueError("extend by a positive number of minutes")
        with self._lock:
            self._end += minutes * self.minute_s
            self.extended_min += minutes
            return self._end - self._clock()

    @property
    def remaining_s(self) -> float:
        with self._lock:
            return max(0.0, self._end - self._clock())

    @property
    def expired(self) -> bool:
        with self._lock:
            return self._clock() >= self._end

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._start

    def end_epoch(self) -> float:
        """The deadline as wall-clock time (for the channel file and the extend command)."""
        return time.time() + self.remaining_s


# ----------------------------------------------------------------------------- the channel


def channel_dir(cfg: Config) -> Path:
    return cfg.state_path / "deadlines"


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Channel:
    """The running job's side of the file: publish, pick up requested minutes, withdraw."""

    def __init__(self, cfg: Config, vm: str, job: str, *, max_run_end: float | None = None) -> None:
        self.path = channel_dir(cfg) / f"{vm}.json"
        self.vm, self.job, self.max_run_end = vm, job, max_run_end

    def publish(self, deadline: Deadline) -> None:
        jsonfile.write_atomic(self.path, {
            "vm": self.vm, "job": self.job, "pid": os.getpid(), "requested_min": 0, "applied_min": 0,
            "minute_s": deadline.minute_s, "end": deadline.end_epoch(), "max_run_end": self.max_run_end,
        })
        # the lock is taken for every later edit; creating the file above happens before anyone can see it

    def take(self, deadline: Deadline) -> float:
        """Minutes requested since the last call (0 if none); records them as applied and the new end."""
        if not self.path.exists():
            return 0.0
        with jsonfile.edit(self.path, {}) as data:
            new = float(data.get("requested_min", 0)) - float(data.get("applied_min", 0))
            if new > 0:
                deadline.extend(new)
                data["applied_min"] = data.get("requested_min", 0)
            data["end"] = deadline.end_epoch()
        return max(new, 0.0)

    def withdraw(self) -> None:
        try:
            with jsonfile.lock_for(self.path):
                self.path.unlink(missing_ok=True)
        except Exception:  # never let cleanup hide the job's outcome
            self.path.unlink(missing_ok=True)


def running_jobs(cfg: Config) -> list[dict[str, Any]]:
    """Jobs whose runner process is alive, as published in the channel files."""
    out = []
    folder = channel_dir(cfg)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = jsonfile.read(path, None)
        if data and _alive(int(data.get("pid", 0))):
            out.append({**data, "path": str(path)})
    return out


def request_extension(cfg: Config, minutes: float, *, name: str | None = None, on_log: Log = print,
                      on_warn: Log | None = None) -> list[dict[str, Any]]:
    """Ask the running job(s) (of VM `name`, or every one) for `minutes` more; returns what was asked of whom."""
    if minutes <= 0:
        raise UsageError("--minutes must be above 0")
    warn = on_warn or on_log
    jobs = [j for j in running_jobs(cfg) if name in (None, "", j["vm"])]
    if not jobs:
        where = f" on VM {name}" if name else ""
        raise Refused(f"no running job{where} to extend (nothing under {channel_dir(cfg)})")
    done = []
    for job in jobs:
        with jsonfile.edit(Path(job["path"]), {}) as data:
            data["requested_min"] = float(data.get("requested_min", 0)) + minutes
            pending = data["requested_min"] - float(data.get("applied_min", 0))
            new_end = float(data.get("end", time.time())) + pending * float(data.get("minute_s", 60))
            max_end = data.get("max_run_end")
        on_log(f"asked job {job['job']} on {job['vm']} for {minutes:g} more minute(s): new deadline "
               f"{time.strftime('%H:%M:%S', time.localtime(new_end))} (the watchdog applies it within {CHECK_S:g} s)")
        if max_end and new_end > float(max_end):
            warn(f"warning: that is past VM {job['vm']}'s max run duration "
                 f"({time.strftime('%H:%M:%S', time.localtime(float(max_end)))}), which cannot grow: Google deletes "
                 "the VM then; push results before it (`make emergency NAME=...`)")
        done.append({"vm": job["vm"], "job": job["job"], "minutes": minutes, "new_end": new_end,
                     "past_max_run": bool(max_end and new_end > float(max_end))})
    return done


# ----------------------------------------------------------------------------- the watchdog


class Watchdog:
    """Checks a Deadline every `interval` s; applies channel extensions; calls on_expire once when it runs out."""

    def __init__(self, deadline: Deadline, on_expire: Callable[[], None], *, channel: Channel | None = None,
                 interval: float = CHECK_S, on_log: Log = quiet, on_warn: Log | None = None) -> None:
        self.deadline = deadline
        self.on_expire = on_expire
        self.channel = channel
        self.interval = interval
        self.on_log = on_log
        self.on_warn = on_warn or on_log
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="deadline-watchdog", daemon=True)

    def start(self) -> Watchdog:
        if self.channel is not None:
            self.channel.publish(self.deadline)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        if self.channel is not None:
            self.channel.withdraw()

    def check(self) -> None:
        """One watchdog tick (public so tests can drive it without threads)."""
        if self.channel is not None:
            try:
                added = self.channel.take(self.deadline)
            except OpsError as exc:
                self.on_warn(f"deadline channel unreadable: {exc}")
                added = 0.0
            if added:
                self.on_log(f"deadline extended by {added:g} min: {self.deadline.remaining_s:.0f} s left")
                end = self.channel.max_run_end
                if end and self.deadline.end_epoch() > end:
                    self.on_warn("warning: the extended deadline is past the VM's max run duration, which cannot grow")
        if not self.fired and self.deadline.expired:
            self.fired = True
            self.on_expire()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.check()
            if self.fired:
                return
            self._stop.wait(min(self.interval, max(0.05, self.deadline.remaining_s)))
