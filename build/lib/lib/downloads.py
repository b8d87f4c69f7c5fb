"""download_state.json: where each result set is on its way from the bucket to this PC.

  pending -> downloading -> downloaded -> cleaned
                        \\-> failed (reason, attempts; retried on the next pull)

The file lives in the results folder, is written atomically and edited under a
lock (lib/jsonfile), so a pull killed at any instant leaves either the old or the
new state. `downloading` doubles as a claim: it records the owner process, and a
second pull on the same folder skips a set whose owner is still alive, so two
pulls never download the same set. A claim whose owner is dead (SIGKILL, power
cut) is turned into `failed` by `recover()`, which every pull runs first, and the
set is retried.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib import jsonfile

STATE_FILE = "download_state.json"
STATUSES = ("pending", "downloading", "downloaded", "cleaned", "failed")
# A claim made on another host (results folder on a network share) is only presumed dead after this long.
FOREIGN_CLAIM_STALE_S = 6 * 3600


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _me() -> dict[str, Any]:
    import psutil

    return {"pid": os.getpid(), "host": socket.gethostname(), "create_time": psutil.Process().create_time(),
            "since": time.time()}


def owner_alive(owner: dict[str, Any] | None) -> bool:
    """True if the process that claimed a set still runs (same pid and start time), or may on another host."""
    if not owner:
        return False
    if owner.get("host") != socket.gethostname():
        return time.time() - float(owner.get("since", 0)) < FOREIGN_CLAIM_STALE_S
    import psutil

    try:
        proc = psutil.Process(int(owner["pid"]))
        if abs(proc.create_time() - float(owner.get("create_time", 0))) > 1.0:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, ValueError, TypeError):
        return False


class Tracker:
    """The state file of one results folder. Every method is one locked read-modify-write."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / STATE_FILE
        self.me = _me()

    # -- reading ------------------------------------------------------------
    def sets(self) -> dict[str, dict[str, Any]]:
        data = jsonfile.read(self.path, None) or {}
        return dict(data.get("sets", {}))

    def get(self, set_id: str) -> dict[str, Any] | None:
        return self.sets().get(set_id)

    # -- writing ------------------------------------------------------------
    def _edit(self, fn: Callable[[dict[str, dict[str, Any]]], Any]) -> Any:
        with jsonfile.edit(self.path, {}) as data:
            data.setdefault("format", 1)
            sets = data.setdefault("sets", {})
            return fn(sets)

    def recover(self) -> list[str]:
        """Sets left `downloading` by a process that died become `failed`; returns their ids."""
        def fix(sets: dict[str, dict[str, Any]]) -> list[str]:
            fixed = []
            for set_id, entry in sets.items():
                if entry.get("status") == "downloaded" and entry.get("owner") and not owner_alive(entry["owner"]):
                    entry.pop("owner", None)  # verified but not cleaned: the next pull cleans it
                elif entry.get("status") == "downloading" and not owner_alive(entry.get("owner")):
                    pid = (entry.get("owner") or {}).get("pid")
                    entry.update(status="failed", reason=f"interrupted: pull (pid {pid}) stopped mid-download",
                                 updated=_now())
                    entry.pop("owner", None)
                    fixed.append(set_id)
            return fixed

        return self._edit(fix)

    def seen_many(self, found: list[tuple[str, str, int, int]]) -> None:
        """Record sets found in the bucket as (id, kind, objects, bytes); new ones start `pending`."""
        def note(sets: dict[str, dict[str, Any]]) -> None:
            for set_id, kind, objects, size in found:
                entry = sets.setdefault(set_id, {"status": "pending", "attempts": 0, "reason": "",
                                                 "first_seen": _now()})
                entry.update(kind=kind, objects=objects, bytes=size, last_seen=_now())

        if found:
            self._edit(note)

    def claim(self, set_id: str, round_id: str) -> str | None:
        """Mark `set_id` downloading by this process; None on success, else why not.

        Refused while a live process holds it (downloading or cleaning), and when this
        exact round (same object generations) was already cleaned by someone else.
        """
        def take(sets: dict[str, dict[str, Any]]) -> str | None:
            entry = sets.setdefault(set_id, {"status": "pending", "attempts": 0, "reason": "", "first_seen": _now()})
            owner = entry.get("owner")
            if entry.get("status") in ("downloading", "downloaded") and owner_alive(owner) and owner != self.me:
                return f"another pull (pid {owner.get('pid')}) is working on it"
            if entry.get("status") == "cleaned" and entry.get("round") == round_id:
                return "already pulled and cleaned by another pull"
            entry.update(status="downloading", owner=self.me, attempts=int(entry.get("attempts", 0)) + 1,
                         reason="", updated=_now())
            return None

        return self._edit(take)

    def set_status(self, set_id: str, status: str, reason: str = "", *, keep_owner: bool = False,
                   **extra: Any) -> None:
        """Move a set to `status`, releasing our claim unless `keep_owner` (downloaded, about to clean)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")

        def put(sets: dict[str, dict[str, Any]]) -> None:
            entry = sets.setdefault(set_id, {"attempts": 0, "first_seen": _now()})
            entry.update(status=status, reason=reason, updated=_now(), **extra)
            if not keep_owner:
                entry.pop("owner", None)

        self._edit(put)

    def release_if_mine(self, set_id: str, reason: str) -> None:
        """On an unexpected exit (Ctrl+C, a bug): our `downloading` set becomes `failed`; any claim is released."""
        def put(sets: dict[str, dict[str, Any]]) -> None:
            entry = sets.get(set_id)
            if not entry or entry.get("owner") != self.me:
                return
            if entry.get("status") == "downloading":
                entry.update(status="failed", reason=reason, updated=_now())
            entry.pop("owner", None)

        self._edit(put)
