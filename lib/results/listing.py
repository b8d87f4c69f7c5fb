"""What is in the bucket: objects grouped into result sets, each marked with why it must not be written, if so.

A result set is either a zip (`RUN_ID/MODEL.zip`, any `PREFIX/NAME.zip` or a
top-level `NAME.zip`; set id = the name without `.zip`, extracted into
`DIR/<set id>/`) or a tree (a top-level `NAME_YYYYMMDD-HHMMSS/` prefix of plain
files, as `vm push` writes). Objects under `_`-prefixed top-level folders
(`_uploads/`, `_status/`, `_logs/`) are never results; anything else is reported
and left alone. `bin/pull --list` and `bin/status` both count sets with `classify`.

Two kinds of objects travel with a set without being results (`ResultSet.control`:
deleted with the set, never downloaded): console-style folder placeholders (`NAME/`,
zero bytes), and the start marker `.ops-hpc-push.json` that ops-hpc's push uploads
before any file of a tree. A tree with that marker and no seal (the MANIFEST.json
push uploads last) is a push that never finished: *incomplete*, kept in GCS and
reported, never cleaned. Trees without the marker (written by other tools) are
taken once nothing has changed in them for the settle time.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

from lib import manifest, safepaths, storage
from lib.config import Config

TREE_RE = re.compile(r".+_\d{8}-\d{6}")
SETTLE_S = 120.0  # a tree whose newest object is younger than this may still be uploading
PUSH_MARKER = ".ops-hpc-push.json"  # vm-scripts/push.sh uploads it first, MANIFEST.json last
BACKOFF_S = 60.0  # a set that failed waits this long before its next try in watch mode, doubling ...
BACKOFF_MAX_S = 3600.0  # ... up to this


@dataclass(frozen=True)
class Obj:
    """A snapshot of one object's metadata; no client references, so it is safe to share between threads."""

    name: str
    size: int
    generation: int
    crc32c: str | None = None
    md5: str | None = None
    updated: float = 0.0

    @classmethod
    def from_blob(cls, blob: Any) -> Obj:
        updated = blob.updated.timestamp() if getattr(blob, "updated", None) else 0.0
        return cls(blob.name, int(blob.size or 0), int(blob.generation), blob.crc32c, blob.md5_hash, updated)


@dataclass
class ResultSet:
    id: str
    kind: str  # "zip" | "tree"
    objects: list[Obj]
    problem: str | None = None
    control: list[Obj] = field(default_factory=list)  # placeholders and the push marker: deleted, not pulled

    @property
    def marker(self) -> Obj | None:
        return next((o for o in self.control if self.rel(o) == PUSH_MARKER), None)

    @property
    def generation(self) -> int:
        """The newest object generation: a follower compares it to tell a new upload from the one that failed."""
        return max((o.generation for o in self.objects + self.control), default=0)

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def newest(self) -> float:
        return max((o.updated for o in self.objects), default=0.0)

    @property
    def prefix(self) -> str:
        return self.id + "/" if self.kind == "tree" else self.id + ".zip"

    def rel(self, obj: Obj) -> str:
        """Path of a tree object inside the set's folder."""
        return obj.name[len(self.id) + 1:]

    @property
    def round(self) -> str:
        """Identity of exactly these object generations: a re-upload is a new round."""
        text = "\n".join(f"{o.name}#{o.generation}" for o in sorted(self.objects, key=lambda o: o.name))
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "files": len(self.objects), "bytes": self.size,
                "generation": self.generation, **({"problem": self.problem} if self.problem else {})}


@dataclass
class Listing:
    sets: list[ResultSet]
    internal: int = 0  # objects under _-prefixed folders
    other: list[str] = field(default_factory=list)  # neither zip nor tree: left alone
    placeholders: list[Obj] = field(default_factory=list)  # folder placeholders with nothing under them

    @property
    def size(self) -> int:
        return sum(s.size for s in self.sets)


def _placeholder(obj: Obj) -> bool:
    return obj.name.endswith("/") and obj.size == 0


def classify(objects: list[Obj]) -> Listing:
    """Group objects into result sets and mark every set that must not be written, with the reason."""
    trees: dict[str, ResultSet] = {}
    zips: list[ResultSet] = []
    internal, other, loose = 0, [], []
    for obj in sorted(objects, key=lambda o: o.name):
        top, _, rest = obj.name.partition("/")
        if top.startswith("_"):
            internal += 1
        elif "/" in obj.name and TREE_RE.fullmatch(top):
            tree = trees.setdefault(top, ResultSet(top, "tree", []))
            (tree.control if _placeholder(obj) or rest == PUSH_MARKER else tree.objects).append(obj)
        elif _placeholder(obj):
            loose.append(obj)
        elif obj.name.lower().endswith(".zip"):
            zips.append(ResultSet(obj.name[:-4], "zip", [obj]))
        else:
            other.append(obj.name)
    for name in [n for n, t in trees.items() if not t.objects and not t.marker]:
        loose += trees.pop(name).control  # only placeholders: not a result set
    # a placeholder with objects under it goes when they have gone; then it is lone, and cleaned
    used = sorted(o.name for o in objects if not _placeholder(o))
    lone = [p for p in loose if not _has_prefix(used, p.name)]
    sets = zips + list(trees.values())
    for s in sets:
        s.problem = _set_problem(s)
    _mark_overlaps(sets)
    sets.sort(key=lambda s: s.id)
    return Listing(sets, internal, other, lone)


def _has_prefix(names: list[str], prefix: str) -> bool:
    """Does any of the sorted `names` start with `prefix`? (binary search: one listing may hold 100,000 names)"""
    import bisect

    i = bisect.bisect_left(names, prefix)
    return i < len(names) and names[i].startswith(prefix)


def _set_problem(s: ResultSet) -> str | None:
    why = safepaths.problem(s.id)
    if why:
        return f"set name {s.id!r}: {why}"
    if s.id.split("/")[0] in safepaths.RESERVED_TOP:
        return f"set name {s.id!r} would overwrite ops-hpc's own files in the results folder"
    if s.kind == "zip":
        return "empty zip (0 bytes)" if s.objects[0].size == 0 else None
    for obj in s.objects:
        why = safepaths.problem(s.rel(obj))
        if why:
            return f"object {obj.name!r}: {why}"
    clashes = safepaths.case_clashes(s.rel(o) for o in s.objects)
    return f"objects {clashes[0]}" if clashes else None


def _mark_overlaps(sets: list[ResultSet]) -> None:
    """Two sets landing in the same folder, or one inside the other, ignoring case: refuse both.

    One pass over each id's ancestors (a dict lookup each), not a comparison of every pair: a bucket
    of 10,000 sets must not cost 100 million comparisons per poll.
    """
    by_key: dict[str, list[ResultSet]] = {}
    for s in sets:
        by_key.setdefault(s.id.casefold(), []).append(s)
    for key, same in by_key.items():
        parts = key.split("/")
        ancestors = [a for i in range(1, len(parts)) for a in by_key.get("/".join(parts[:i]), [])]
        for s in same:
            others = [o for o in same if o is not s] + ancestors
            if others and not s.problem:
                s.problem = f"set {s.id!r} and set {others[0].id!r} would land in the same folder"
        for a in ancestors:
            if not a.problem:
                a.problem = f"set {a.id!r} and set {same[0].id!r} would land in the same folder"


def list_sets(cfg: Config) -> Listing:
    """Every result set in the bucket (one listing of all objects)."""
    return classify([Obj.from_blob(b) for b in storage.list_blobs(cfg)])


@dataclass
class Plan:
    listing: Listing
    todo: list[ResultSet]
    deferred: list[tuple[ResultSet, str]]
    refused: list[tuple[ResultSet, str]]
    incomplete: list[tuple[ResultSet, str]] = field(default_factory=list)
    waiting: list[tuple[ResultSet, str, float]] = field(default_factory=list)  # failed before; next try at

    @property
    def size(self) -> int:
        return sum(s.size for s in self.todo)


def sealed(s: ResultSet) -> bool:
    """A tree whose MANIFEST.json was written after every other object (push.sh writes it last) is complete."""
    seal = next((o for o in s.objects if s.rel(o) == manifest.NAME), None)
    return seal is not None and all(o.updated <= seal.updated for o in s.objects + s.control)


def retry_at(entry: dict[str, Any] | None, s: ResultSet) -> float | None:
    """When a set that failed for exactly these generations may be tried again (None: now, or never failed)."""
    if not entry or entry.get("status") != "failed" or entry.get("failed_round") != s.round:
        return None
    return float(entry.get("next_try") or 0) or None


def backoff(entry: dict[str, Any] | None, s: ResultSet, now: float) -> dict[str, Any]:
    """What to record about a failure: the round it failed for, how often in a row, when to try again."""
    fails = int(entry.get("fails", 0)) + 1 if entry and entry.get("failed_round") == s.round else 1
    return {"failed_round": s.round, "fails": fails, "generation": s.generation,
            "next_try": now + min(BACKOFF_S * 2 ** (fails - 1), BACKOFF_MAX_S)}


def decide(s: ResultSet, entry: dict[str, Any] | None, now: float, *, settle: float = SETTLE_S,
           honour_backoff: bool = False) -> tuple[str, str]:
    """(state, why) of one set in one poll: todo, deferred, refused, incomplete or waiting. Pure."""
    if honour_backoff:
        at = retry_at(entry, s)
        if at is not None and now < at:
            return "waiting", f"failed earlier ({(entry or {}).get('reason', '')}); next try in {at - now:.0f} s"
    if s.problem:
        return "refused", s.problem
    if s.kind == "tree" and not sealed(s):
        age = max(0.0, now - s.newest) if s.objects else max(0.0, now - (s.marker.updated if s.marker else now))
        if age < settle:
            what = "ops-hpc push in progress" if s.marker else "still uploading?"
            return "deferred", f"{what} newest object is {age:.0f} s old (waiting until {settle:.0f} s)"
        if s.marker:
            return "incomplete", (f"INCOMPLETE: ops-hpc's push started this tree and never sealed it (no "
                                  f"{manifest.NAME}); {len(s.objects)} file(s) arrived, nothing for {age:.0f} s; "
                                  "kept in GCS: rescue the rest from the VM (make emergency) or pull it by hand")
    return "todo", ""


def make_plan(listing: Listing, entries: dict[str, dict[str, Any]] | None = None, *, settle: float = SETTLE_S,
              now: float | None = None, honour_backoff: bool = False) -> Plan:
    """Split the listing into sets to pull, still uploading (deferred), refused, incomplete, and waiting."""
    now = time.time() if now is None else now
    entries = entries or {}
    plan = Plan(listing, [], [], [], [], [])
    for s in listing.sets:
        state, why = decide(s, entries.get(s.id), now, settle=settle, honour_backoff=honour_backoff)
        if state == "todo":
            plan.todo.append(s)
        elif state == "waiting":
            plan.waiting.append((s, why, retry_at(entries.get(s.id), s) or now))
        else:
            {"deferred": plan.deferred, "refused": plan.refused, "incomplete": plan.incomplete}[state].append((s, why))
    return plan
