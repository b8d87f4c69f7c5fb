"""A network like a PC's for the storage door: a round-trip delay per request and a shared bandwidth cap.

Loopback answers in microseconds at GB/s, so a benchmark there says nothing about a PC on a 30 ms, 100 Mbit
line, where the number of requests and their parallelism decide. `Line` paces bytes through one shared
link per direction (concurrent transfers split it, as on a real line); `round_trip` waits one RTT.
"""

from __future__ import annotations

import threading
import time


class Line:
    """One direction of a link of `mbit` Mbit/s shared by every connection (0: unlimited)."""

    def __init__(self, mbit: float) -> None:
        self.bytes_per_s = mbit * 1e6 / 8 if mbit > 0 else 0.0
        self._free_at = 0.0
        self._lock = threading.Lock()

    def pace(self, nbytes: int) -> None:
        """Block until `nbytes` more bytes have had time to cross the line after those already queued."""
        if not self.bytes_per_s or nbytes <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._free_at = max(self._free_at, now) + nbytes / self.bytes_per_s
            done = self._free_at
        delay = done - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class Shaper:
    """Round-trip delay plus an uplink and a downlink of the same capacity."""

    def __init__(self, rtt_ms: float = 0.0, mbit: float = 0.0) -> None:
        if rtt_ms < 0 or mbit < 0:
            raise ValueError("rtt_ms and mbit must be >= 0")
        self.rtt_s = rtt_ms / 1000.0
        self.mbit = mbit
        self.up = Line(mbit)
        self.down = Line(mbit)

    @property
    def active(self) -> bool:
        return bool(self.rtt_s or self.mbit)

    def round_trip(self) -> None:
        """The request travels up and the first byte of the answer back: one RTT per request."""
        if self.rtt_s:
            time.sleep(self.rtt_s)
