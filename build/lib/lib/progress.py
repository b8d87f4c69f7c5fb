"""Progress for transfers: a tqdm bar per set (bytes, rate, ETA) on a terminal, plain "NN%" lines otherwise.

Plain lines exist for cron, Task Scheduler and CI logs, where a redrawn bar is
noise. Calls come from many download threads at once, so everything is locked.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

ProgressFn = Callable[[str, int, int], None]  # (set id, bytes done, bytes total)


class Progress:
    """Callable `(set_id, done, total)`; call `close()` when the pull ends."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, step: int = 10) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.step = step
        self._lock = threading.Lock()
        self._bars: dict[str, Any] = {}
        self._last: dict[str, int] = {}

    def __call__(self, set_id: str, done: int, total: int) -> None:
        with self._lock:
            if self.tty:
                self._bar(set_id, done, total)
            else:
                self._line(set_id, done, total)

    def _bar(self, set_id: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self._bars.get(set_id)
        if bar is None:
            bar = self._bars[set_id] = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                            desc=set_id[-40:], file=self.stream, leave=True, dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self._bars[set_id]

    def _line(self, set_id: str, done: int, total: int) -> None:
        pct = 100 if total <= 0 else min(100, done * 100 // total)
        shown = pct - pct % self.step
        if shown <= self._last.get(set_id, -1):
            return
        self._last[set_id] = shown
        print(f"{set_id}: {shown}%", file=self.stream, flush=True)

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
            self._last.clear()


def factory(stream: TextIO | None = None, *, enabled: bool = True, tty: bool | None = None) -> Progress | ProgressFn:
    """The progress callback for a command: a `Progress`, or a no-op when disabled (`--json`, `--quiet`)."""
    if not enabled:
        return lambda set_id, done, total: None
    return Progress(stream, tty=tty)
