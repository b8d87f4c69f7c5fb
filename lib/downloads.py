"""The download state of a results folder: where each result set is on its way from the bucket to this PC.

  pending -> downloading -> downloaded -> cleaned
                        \\-> failed (reason, attempts, next_try; retried later)
  incomplete: a tree ops-hpc's own push started and never sealed (kept in GCS, never cleaned)

It lives in `download_state.sqlite` in the results folder: SQLite with a write-ahead
log, one row per set, so a status change costs one row write however many sets the
folder has seen (the JSON file it replaces was rewritten whole about four times per
set: pulling 10,000 sets took an hour). Every method is one transaction, opened with
`BEGIN IMMEDIATE`, which serialises writers across threads and processes; a pull
killed at any instant leaves the last committed state (synchronous=FULL: committed
means on disk).

`downloading` doubles as a claim: it records the owner process (lib/procs.ProcessRef),
and a second pull on the same folder skips a set whose owner is still alive, so two
pulls never download the same set. A claim whose owner is dead (SIGKILL, power cut)
is turned into `failed` by `recover()`, which every pull runs first, and the set is
retried. A `download_state.json` from an earlier version is imported on first open
and renamed to `download_state.json.migrated`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lib import jsonfile
from lib.errors import OpsError
from lib.procs import ProcessRef

STATE_FILE = "download_state.sqlite"
LEGACY_STATE_FILE = "download_state.json"
FORMAT = 2  # PRAGMA user_version; 1 was the JSON file
STATUSES = ("pending", "downloading", "downloaded", "cleaned", "failed", "incomplete")
# A claim made on another host (results folder on a network share) is only presumed dead after this long.
FOREIGN_CLAIM_STALE_S = 6 * 3600
Entry = dict[str, Any]


class StateError(OpsError):
    """The state file cannot be read or written (read-only folder, full disk, corrupt file)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _alive(owner: dict[str, Any] | None) -> bool:
    ref = ProcessRef.from_dict(owner)
    return ref is not None and ref.alive(foreign_stale_after=FOREIGN_CLAIM_STALE_S)


class Tracker:
    """The state of one results folder. Every method is one transaction."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / STATE_FILE
        self.me = ProcessRef.current().to_dict()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    # -- the database -------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")  # stays the rollback journal where WAL cannot work
                db.execute("PRAGMA synchronous=FULL")
                db.execute("CREATE TABLE IF NOT EXISTS sets (id TEXT PRIMARY KEY, status TEXT NOT NULL, "
                           "entry TEXT NOT NULL)")
                db.execute("CREATE INDEX IF NOT EXISTS sets_status ON sets(status)")
                db.execute(f"PRAGMA user_version={FORMAT}")
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            self._migrate(db)
            self._db = db
        return self._db

    def _error(self, exc: BaseException) -> StateError:
        return StateError(f"cannot use the download state {self.path}: {exc}; results stay in GCS: "
                          "make the folder writable or free some space, or pull into another --dir")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    def _read(self, db: sqlite3.Connection, ids: list[str] | None = None) -> dict[str, Entry]:
        if ids is None:
            rows = db.execute("SELECT id, entry FROM sets").fetchall()
        else:
            rows = []
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                rows += db.execute(f"SELECT id, entry FROM sets WHERE id IN ({','.join('?' * len(chunk))})",
                                   chunk).fetchall()
        return {set_id: json.loads(text) for set_id, text in rows}

    @staticmethod
    def _write(db: sqlite3.Connection, entries: dict[str, Entry]) -> None:
        db.executemany("INSERT OR REPLACE INTO sets (id, status, entry) VALUES (?, ?, ?)",
                       [(k, v.get("status", "pending"), json.dumps(v, sort_keys=True)) for k, v in entries.items()])

    def _edit(self, set_id: str, fn: Callable[[Entry], Any]) -> Any:
        """Read-modify-write of one row: `fn(entry)` edits the entry in place (empty when new); written if changed."""
        with self._tx() as db:
            entry = self._read(db, [set_id]).get(set_id, {})
            before = json.dumps(entry, sort_keys=True)
            result = fn(entry)
            if entry and json.dumps(entry, sort_keys=True) != before:
                self._write(db, {set_id: entry})
            return result

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Import a download_state.json of an earlier version once, then rename it aside."""
        legacy = self.folder / LEGACY_STATE_FILE
        if not legacy.exists():
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if legacy.exists():  # another process may have migrated it meanwhile
                    data = jsonfile.read(legacy, None) or {}
                    known = self._read(db)
                    self._write(db, {k: v for k, v in dict(data.get("sets", {})).items() if k not in known})
                    legacy.replace(legacy.with_name(LEGACY_STATE_FILE + ".migrated"))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            raise self._error(exc) from None

    # -- reading ------------------------------------------------------------
    def _nothing_yet(self) -> bool:
        """No state here yet: reading must not create the file (`pull --list`, `verify`)."""
        return self._db is None and not self.path.exists() and not (self.folder / LEGACY_STATE_FILE).exists()

    def sets(self) -> dict[str, Entry]:
        if self._nothing_yet():
            return {}
        with self._tx() as db:
            return self._read(db)

    def get(self, set_id: str) -> Entry | None:
        if self._nothing_yet():
            return None
        with self._tx() as db:
            return self._read(db, [set_id]).get(set_id)

    # -- writing ------------------------------------------------------------
    def recover(self) -> list[str]:
        """Sets left `downloading` by a process that died become `failed`; returns their ids."""
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM sets WHERE status IN ('downloading', 'downloaded')")]
            entries = self._read(db, ids)
            fixed, changed = [], {}
            for set_id, entry in entries.items():
                if entry.get("status") == "downloaded" and entry.get("owner") and not _alive(entry["owner"]):
                    entry.pop("owner", None)  # verified but not cleaned: the next pull cleans it
                    changed[set_id] = entry
                elif entry.get("status") == "downloading" and not _alive(entry.get("owner")):
                    pid = (entry.get("owner") or {}).get("pid")
                    entry.update(status="failed", reason=f"interrupted: pull (pid {pid}) stopped mid-download",
                                 updated=_now())
                    entry.pop("owner", None)
                    changed[set_id] = entry
                    fixed.append(set_id)
            self._write(db, changed)
            return sorted(fixed)

    def seen_many(self, found: list[tuple[str, str, int, int]]) -> dict[str, Entry]:
        """Record sets found in the bucket as (id, kind, objects, bytes); new ones start `pending`.

        Returns their entries, so a pull reads the state of what it found in the same transaction.
        """
        if not found:
            return {}
        with self._tx() as db:
            entries = self._read(db, [f[0] for f in found])
            for set_id, kind, objects, size in found:
                entry = entries.setdefault(set_id, {"status": "pending", "attempts": 0, "reason": "",
                                                    "first_seen": _now()})
                entry.update(kind=kind, objects=objects, bytes=size, last_seen=_now())
            self._write(db, entries)
            return entries

    def claim(self, set_id: str, round_id: str) -> str | None:
        """Mark `set_id` downloading by this process; None on success, else why not.

        Refused while a live process holds it (downloading or cleaning), and when this
        exact round (same object generations) was already cleaned by someone else.
        """
        def take(entry: Entry) -> str | None:
            if not entry:
                entry.update(status="pending", attempts=0, reason="", first_seen=_now())
            owner = entry.get("owner")
            if entry.get("status") in ("downloading", "downloaded") and _alive(owner) and owner != self.me:
                return f"another pull (pid {owner.get('pid')}) is working on it"
            if entry.get("status") == "cleaned" and entry.get("round") == round_id:
                return "already pulled and cleaned by another pull"
            entry.update(status="downloading", owner=self.me, attempts=int(entry.get("attempts", 0)) + 1,
                         reason="", updated=_now())
            return None

        return self._edit(set_id, take)

    def set_status(self, set_id: str, status: str, reason: str = "", *, keep_owner: bool = False,
                   **extra: Any) -> None:
        """Move a set to `status`, releasing our claim unless `keep_owner` (downloaded, about to clean)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")

        def put(entry: Entry) -> None:
            if not entry:
                entry.update(attempts=0, first_seen=_now())
            entry.update(status=status, reason=reason, updated=_now(), **extra)
            if not keep_owner:
                entry.pop("owner", None)

        self._edit(set_id, put)

    def release_if_mine(self, set_id: str, reason: str) -> None:
        """On an unexpected exit (Ctrl+C, a bug): our `downloading` set becomes `failed`; any claim is released."""
        def put(entry: Entry) -> None:
            if not entry or entry.get("owner") != self.me:
                return
            if entry.get("status") == "downloading":
                entry.update(status="failed", reason=reason, updated=_now())
            entry.pop("owner", None)

        self._edit(set_id, put)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def recover(folder: Path) -> list[str]:
    """`Tracker(folder).recover()` for reconcile and status; creates nothing where no pull ever ran."""
    folder = Path(folder)
    if not ((folder / STATE_FILE).exists() or (folder / LEGACY_STATE_FILE).exists()):
        return []
    tracker = Tracker(folder)
    try:
        return tracker.recover()
    finally:
        tracker.close()
