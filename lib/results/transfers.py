"""The transfer engine of a pull: thread pools for every object download, slice and delete.

Each download goes through `_ChecksummingWriter` (the shape of python-storage's
transfer_manager `_ChecksummingSparseFileWrapper`): it writes at the slice's
offset and keeps a running CRC32C of exactly the bytes written, so a finished
file is verified without reading it back. A large object is fetched in slices
in parallel; each slice returns its own CRC32C and length, and `crc32c_combine`
folds them, in offset order, into the whole object's CRC32C that GCS reports
(google-crc32c has no combine; the pure-Python one below is zlib's algorithm with
the Castagnoli polynomial, 24 small matrix squarings per slice).
"""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import google_crc32c

from lib import clients, manifest, retry, storage
from lib.config import Config
from lib.results.listing import Obj

WORKERS = 16  # parallel object / slice transfers
SMALL_OBJECT = 1 << 20  # objects up to this size (most recorder files) go to a wider pool ...
SMALL_PER_WORKER = 4  # ... of this many threads per worker: on a PC's line they wait on round trips, not bytes
SET_WORKERS = 4  # result sets handled at once
LARGE_OBJECT = 64 << 20  # objects at least this big are downloaded in slices ...
SLICE = 16 << 20  # ... of this size, in parallel
CHUNK = 1 << 20  # a small object's answer is read and checksummed in pieces of this size

ProgressFn = Callable[[str, int, int], None]


class SetFailed(Exception):
    """This set cannot be pulled now; `status` is failed (retry next poll) or deferred (still changing)."""

    def __init__(self, reason: str, status: str = "failed") -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Piece:
    """What one download task wrote: `length` bytes at `start`, with their CRC32C (an int)."""

    start: int
    length: int
    crc: int


class _ChecksummingWriter:
    """The file object handed to `download_to_file`: writes, counts progress, checksums, honours cancel."""

    def __init__(self, fh: BinaryIO, count: Callable[[int], None], cancel: threading.Event) -> None:
        self.fh, self.count, self.cancel = fh, count, cancel
        self.crc = google_crc32c.Checksum()
        self.written = 0

    def write(self, data: bytes) -> int:
        if self.cancel.is_set():
            raise SetFailed("interrupted")
        n = self.fh.write(data)
        self.crc.update(data)
        self.written += len(data)
        self.count(len(data))
        return n

    @property
    def value(self) -> int:
        return int.from_bytes(self.crc.digest(), "big")


# -- CRC32C combine (zlib's crc32_combine, for the reflected Castagnoli polynomial) --------------

_POLY = 0x82F63B78


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC32C of A+B from crc(A), crc(B) and len(B)."""
    if len2 <= 0:
        return crc1
    if crc1 == 0:  # the operator below is linear, so it maps 0 to 0: a whole object costs no squarings
        return crc2
    odd = [_POLY] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:  # apply len2 zero bytes to crc1, one bit of len2 at a time
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def whole_crc(pieces: list[Piece]) -> str:
    """The base64 CRC32C (as GCS reports it) of the file the pieces make, in offset order."""
    crc = 0
    for p in sorted(pieces, key=lambda p: p.start):
        crc = crc32c_combine(crc, p.crc, p.length)
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


class Transfers:
    """The thread pools of a pull: `pool` for slices, larger objects and deletes; `small_pool` for small objects."""

    def __init__(self, cfg: Config, workers: int) -> None:
        self.cfg = cfg
        self.client = storage.client(cfg)
        small = workers * SMALL_PER_WORKER
        _widen_pool(self.client, workers + SET_WORKERS + 2)  # slices, larger objects, deletes, listings
        self.bucket = self.client.bucket(cfg.bucket_name)
        resolved = clients.resolve(cfg)  # the local cloud's endpoints filled in
        self.http = clients.storage_http(resolved, small)  # small objects only
        self.endpoint = (resolved.storage_endpoint or clients.STORAGE_API).rstrip("/")
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xfer")
        # Small objects hold at most SMALL_OBJECT bytes each: many in flight cost little memory and hide the
        # 30 ms or so each request waits on a real line (2,000 recorder files at 30 ms: 12.6 s with 16 threads,
        # 4.0 s with 48 and 3.7 s with 64; 96 was slower again, on 2 cores).
        self.small_pool = ThreadPoolExecutor(max_workers=small, thread_name_prefix="xfer-small")
        self.cancel = threading.Event()
        self._large = threading.Lock()

    def take_large(self) -> Callable[[], None]:
        """Wait for the line's large-object turn; returns the release (any thread may call it, once or more).

        One large object downloads at a time, a few slices in flight: its slices then arrive in order at
        the line's full rate, so a zip is inflated as it arrives (streaming.py) and each set is finished,
        checked and cleaned before the next large one ends, instead of all of them sharing the line and
        finishing together. A zip gives the turn back when its last slice lands, before its last inflate.
        """
        self._large.acquire()
        guard = threading.Lock()
        held = [True]

        def release() -> None:
            with guard:
                if held:
                    held.clear()
                    self._large.release()

        if self.cancel.is_set():
            release()
            raise SetFailed("interrupted")
        return release

    @contextlib.contextmanager
    def large_slot(self) -> Iterator[None]:
        """`take_large` for the length of a block."""
        release = self.take_large()
        try:
            yield
        finally:
            release()

    def __enter__(self) -> Transfers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.small_pool.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)

    def pool_for(self, obj: Obj) -> ThreadPoolExecutor:
        """Where a whole-object download of `obj` runs: the wide pool for small objects."""
        return self.small_pool if obj.size <= SMALL_OBJECT else self.pool

    def blob(self, obj: Obj) -> Any:
        return self.bucket.blob(obj.name, generation=obj.generation)

    def fetch_range(self, obj: Obj, dest: Path, start: int, end: int | None, count: Callable[[int], None]) -> Piece:
        """Bytes [start, end] of exactly generation `obj.generation` into `dest` at `start`; retried whole."""

        def attempt() -> Piece:
            # The library streams in 8 KB reads, a Python-level loop per 8 KB: a piece of at most SLICE
            # bytes is read in one go instead (bounded memory: workers x SLICE).
            size = (end - start + 1) if end is not None else obj.size
            with open(dest, "r+b" if end is not None else "wb") as fh:
                fh.seek(start)
                writer = _ChecksummingWriter(fh, count, self.cancel)
                try:
                    if end is None and obj.size <= SMALL_OBJECT:
                        self._get_small(obj, writer)
                    else:
                        ranged = {} if end is None else {"start": start, "end": end}
                        self.blob(obj).download_to_file(writer, raw_download=True, checksum=None, retry=None,
                                                        single_shot_download=size <= SLICE, **ranged)
                except BaseException:
                    count(-writer.written)
                    raise
            return Piece(start, writer.written, writer.value)

        return retry.call(attempt)

    def _get_small(self, obj: Obj, writer: _ChecksummingWriter) -> None:
        """One GET of exactly generation `obj.generation`, bytes as stored (what `raw_download` asks for).

        Through `clients.storage_http`: most of a pull of recorder files is this call, and the storage
        client's path costs three times the CPU. An error answer raises what the client would raise.
        """
        url = (f"{self.endpoint}/download/storage/v1/b/{quote(self.cfg.bucket_name, safe='')}/o/"
               f"{quote(obj.name, safe='')}?alt=media&generation={obj.generation}")
        resp = self.http.request("GET", url, headers={"accept-encoding": "gzip"}, preload_content=False,
                                 decode_content=False)
        try:
            if resp.status != 200:
                from google.api_core import exceptions as gexc

                raise gexc.from_http_status(resp.status, f"GET {obj.name}: {resp.data[:300].decode('utf-8', 'replace')}")
            for chunk in resp.stream(CHUNK, decode_content=False):
                writer.write(chunk)
        finally:
            resp.release_conn()

    def fetch(self, obj: Obj, dest: Path, count: Callable[[int], None]) -> list[Future]:
        """Start downloading `obj` to `dest`: one task, or one per slice for a large object.

        Each future's result is a `Piece`. Call it only from a thread outside the pool (a set thread):
        pool threads must never wait on the pool.
        """
        if obj.size < LARGE_OBJECT:
            return [self.pool.submit(self.fetch_range, obj, dest, 0, None, count)]
        with open(dest, "wb") as fh:
            fh.truncate(obj.size)
        return [self.pool.submit(self.fetch_range, obj, dest, start, end, count) for start, end in slices(obj.size)]

    def delete(self, objs: list[Obj]) -> int:
        """Delete each object only at the generation we verified; returns how many were kept (replaced meanwhile).

        Batch requests of 100 deletes, several in parallel: one request per file made cleaning cost as much
        as downloading for sets of thousands of small recorder files.
        """
        pairs = [(o.name, o.generation) for o in objs]
        step = storage.BATCH_MAX
        futures = [self.pool.submit(storage.delete_many, self.cfg, pairs[i : i + step]) for i in range(0, len(pairs), step)]
        return sum(1 for f in futures for state in f.result().values() if state == "kept")


def slices(size: int) -> list[tuple[int, int]]:
    """The (first, last) byte of each SLICE-sized piece of an object of `size` bytes, in offset order."""
    return [(start, min(start + SLICE, size) - 1) for start in range(0, size, SLICE)]


def _widen_pool(client: Any, size: int) -> None:
    """requests keeps 10 connections per host by default; more threads than that would reconnect constantly."""
    try:
        clients.widen_pool(client, size)
    except Exception:  # pragma: no cover - only a performance tweak (tests/test_clients.py fails loudly on a library change)
        pass


def check_file(path: Path, obj: Obj) -> str | None:
    """Why the local file does not hold exactly `obj`'s content, or None if it does (reads the file)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != obj.size:
        return f"size {size}, GCS says {obj.size}"
    if obj.crc32c:
        crc = storage.crc32c_file(path)
        return None if crc == obj.crc32c else f"CRC32C {crc}, GCS says {obj.crc32c}"
    if obj.md5:
        md5 = manifest.md5_file(path)
        return None if md5 == obj.md5 else f"MD5 {md5}, GCS says {obj.md5}"
    return "GCS reports neither CRC32C nor MD5: the content cannot be verified"


def check_pieces(path: Path, obj: Obj, pieces: list[Piece]) -> str | None:
    """Like `check_file`, from the checksums taken while writing (reads the file only for MD5-only objects)."""
    written = sum(p.length for p in pieces)
    if written != obj.size:
        return f"size {written}, GCS says {obj.size}"
    if obj.crc32c:
        crc = whole_crc(pieces)
        return None if crc == obj.crc32c else f"CRC32C {crc}, GCS says {obj.crc32c}"
    return check_file(path, obj)


class Counter:
    """Bytes done for one set's progress callback; `fetched` counts only bytes actually transferred."""

    def __init__(self, set_id: str, total: int, on_progress: ProgressFn) -> None:
        self.set_id, self.total, self.on_progress = set_id, total, on_progress
        self.done = 0
        self.fetched = 0
        self.lock = threading.Lock()

    def __call__(self, n: int, fetched: bool = True) -> None:
        with self.lock:
            self.done += n
            if fetched:
                self.fetched += n
            done = self.done
        self.on_progress(self.set_id, max(0, min(done, self.total)), self.total)


def wait(futures: list[Future], what: str) -> list[Any]:
    """Wait for every future (none still writing afterwards); the results, or the first error as SetFailed."""
    errors = []
    for f in as_completed(futures):
        exc = f.exception()
        if exc is not None:
            errors.append(exc)
    if errors:
        raise_download_error(errors, what)
    return [f.result() for f in futures]


def raise_download_error(errors: list[BaseException], what: str) -> None:
    if isinstance(errors[0], SetFailed):
        raise errors[0]
    from google.api_core import exceptions as gexc

    if any(isinstance(e, gexc.NotFound) for e in errors):
        raise SetFailed(f"{what}: an object was replaced or deleted while downloading", status="deferred")
    first = errors[0]
    raise SetFailed(f"{what}: download failed after retries: {type(first).__name__}: {first}")
