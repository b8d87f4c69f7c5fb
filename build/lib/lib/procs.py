"""Is the process that wrote a record still running? One answer for every state file.

A pid alone is not an identity (pids are reused), so a record carries the process's
start time too, and the host it ran on: a process on another host (a results folder
on a network share) cannot be checked and is presumed alive until `foreign_stale_after`.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

# A start time within this many seconds is the same process (create_time is a float of limited precision).
_SAME_START_S = 1.0


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    create_time: float | None
    host: str
    since: float

    @classmethod
    def current(cls) -> ProcessRef:
        """This process, now."""
        return cls(os.getpid(), _create_time(os.getpid()), socket.gethostname(), time.time())

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ProcessRef | None:
        """Read a record written by `to_dict` (None or a malformed one reads as None: nobody owns it)."""
        if not data:
            return None
        try:
            ct = data.get("create_time")
            return cls(int(data["pid"]), None if ct is None else float(ct), str(data.get("host", "")),
                       float(data.get("since", 0)))
        except (KeyError, TypeError, ValueError):
            return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def alive(self, *, foreign_stale_after: float | None = None, now: float | None = None) -> bool:
        """True while this process runs (same pid AND start time, not a zombie).

        On another host it cannot be checked: alive until `foreign_stale_after` seconds after `since`
        (never, when that is None).
        """
        if self.host and self.host != socket.gethostname():
            if foreign_stale_after is None:
                return False
            return (now if now is not None else time.time()) - self.since < foreign_stale_after
        import psutil

        try:
            proc = psutil.Process(self.pid)
            if self.create_time is not None and abs(proc.create_time() - self.create_time) > _SAME_START_S:
                return False
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def _create_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # psutil is a dependency, but a state record must never fail on it
        return None
