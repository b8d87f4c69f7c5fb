"""A large zip checked and inflated while it downloads.

A zip can be inflated only from a complete file, so a pull of big zips used to end with the line quiet
and the last zip still being inflated: on real recorder output, which deflates about 4:1, that is four
bytes written for every byte the line brought. Here the slices of a large object are fetched in offset
order, a few at a time (`WINDOW`), the last one first (a zip keeps its directory at the end), and
`Arriving.reader()` reads the part file as the slices land: each read waits for the slices it covers.
Nothing is placed from it until the whole object's CRC32C matches GCS (oneset.py), so a bad slice costs
a retry, never a wrong file.
"""

from __future__ import annotations

import io
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from lib.results import transfers as xfer
from lib.results.listing import Obj
from lib.results.transfers import Piece, SetFailed, Transfers, raise_download_error

WINDOW = 4  # slices of one object in flight: enough to fill a PC's line, few enough to arrive in order


class Arriving:
    """`obj` being fetched into `dest`, slice by slice, readable as it arrives."""

    def __init__(self, transfers: Transfers, obj: Obj, dest: Path, count: Callable[[int], None],
                 window: int = WINDOW, on_landed: Callable[[], None] = lambda: None) -> None:
        """`on_landed` is called (from a pool thread) once no slice is left to fetch or in flight."""
        self.transfers, self.obj, self.dest, self.count = transfers, obj, dest, count
        self.on_landed = on_landed
        self.ranges = xfer.slices(obj.size)
        self._todo = deque([len(self.ranges) - 1, *range(len(self.ranges) - 1)])  # the zip's directory first
        self._done: set[int] = set()
        self._pieces: list[Piece] = []
        self._error: BaseException | None = None
        self._running = 0
        self._stopped = False
        self._cond = threading.Condition()
        with open(dest, "wb") as fh:
            fh.truncate(obj.size)
        with self._cond:
            for _ in range(min(window, len(self.ranges))):
                self._start_next()

    def _start_next(self) -> None:
        """Under the lock: hand the next slice to the pool (from a pool thread too: submit never waits)."""
        index = self._todo.popleft()
        start, end = self.ranges[index]
        try:
            future = self.transfers.pool.submit(self.transfers.fetch_range, self.obj, self.dest, start, end, self.count)
        except RuntimeError as exc:  # the pool is shutting down (Ctrl+C)
            self._error = self._error or SetFailed(f"interrupted ({exc})")
            return
        self._running += 1
        future.add_done_callback(lambda f: self._finished(index, f))

    def _finished(self, index: int, future: Future) -> None:
        with self._cond:
            self._running -= 1
            exc = future.exception() if not future.cancelled() else SetFailed("interrupted")
            if exc is not None:
                self._error = self._error or exc
            else:
                self._done.add(index)
                self._pieces.append(future.result())
            if self._todo and self._error is None and not self._stopped and not self.transfers.cancel.is_set():
                self._start_next()
            landed = not self._running
            self._cond.notify_all()
        if landed:
            self.on_landed()

    def _raise_error(self) -> None:
        """Under the lock: the download's failure, as `wait` reports it."""
        assert self._error is not None
        raise_download_error([self._error], self.obj.name)

    def wait_some(self, start: int, end: int) -> int:
        """Block until the slice holding byte `start` is on disk; how far from there (up to `end`) can be read.

        The download's error (or Ctrl+C) instead. A short read is what a raw file may return: the buffer
        above asks again, so a read never waits for more than the next slice.
        """
        with self._cond:
            while start // xfer.SLICE not in self._done:
                if self._error is not None:
                    self._raise_error()
                if self.transfers.cancel.is_set():
                    raise SetFailed("interrupted")
                self._cond.wait(0.5)
            index = start // xfer.SLICE
            while index + 1 in self._done and (index + 1) * xfer.SLICE < end:
                index += 1
            return min(end, self.ranges[index][1] + 1)

    def finish(self) -> list[Piece]:
        """Wait for every slice (none still writing afterwards); their pieces, or the download's error."""
        with self._cond:
            while self._running or (self._todo and self._error is None and not self._stopped):
                self._cond.wait(0.5)
            if self._error is not None:
                self._raise_error()
            if self._stopped:
                raise SetFailed("interrupted")
            return list(self._pieces)

    def stop(self) -> None:
        """Start no more slices and wait for those in flight (so nothing writes to `dest` afterwards)."""
        with self._cond:
            self._stopped = True
            while self._running:
                self._cond.wait(0.5)

    def reader(self) -> io.BufferedReader:
        return io.BufferedReader(_Reader(self), buffer_size=1 << 20)


class _Reader(io.RawIOBase):
    """The part file as a seekable file whose reads wait for their bytes (what zipfile.ZipFile reads)."""

    def __init__(self, arriving: Arriving) -> None:
        self.arriving = arriving
        self.size = arriving.obj.size
        self.fh = open(arriving.dest, "rb")  # noqa: SIM115 - closed by close()
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.pos)
        if n <= 0:
            return 0
        n = self.arriving.wait_some(self.pos, self.pos + n) - self.pos
        self.fh.seek(self.pos)
        got = self.fh.readinto(memoryview(buffer)[:n])
        self.pos += got or 0
        return got or 0

    def close(self) -> None:
        self.fh.close()
        super().close()
