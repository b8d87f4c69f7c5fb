"""What is in the bucket: objects grouped into result sets, each marked with why it must not be written, if so.

A result set is either a zip (`RUN_ID/MODEL.zip`, any `PREFIX/NAME.zip` or a
top-level `NAME.zip`; set id = the name without `.zip`, extracted into
`DIR/<set id>/`) or a tree (a top-level `NAME_YYYYMMDD-HHMMSS/` prefix of plain
files, as `vm push` writes). Objects under `_`-prefixed top-level folders
(`_uploads/`, `_status/`, `_logs/`) are never results; anything else is reported
and left alone. `bin/pull --list` and `bin/status` both count sets with `classify`.
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
                **({"problem": self.problem} if self.problem else {})}


@dataclass
class Listing:
    sets: list[ResultSet]
    internal: int = 0  # objects under _-prefixed folders
    other: list[str] = field(default_factory=list)  # neither zip nor tree: left alone

    @property
    def size(self) -> int:
        return sum(s.size for s in self.sets)


def classify(objects: list[Obj]) -> Listing:
    """Group objects into result sets and mark every set that must not be written, with the reason."""
    trees: dict[str, list[Obj]] = {}
    zips: list[ResultSet] = []
    internal, other = 0, []
    for obj in sorted(objects, key=lambda o: o.name):
        top, _, rest = obj.name.partition("/")
        if top.startswith("_"):
            internal += 1
        elif rest and TREE_RE.fullmatch(top):
            if obj.name.endswith("/") and obj.size == 0:
                continue  # a folder placeholder some tools create
            trees.setdefault(top, []).append(obj)
        elif obj.name.lower().endswith(".zip"):
            zips.append(ResultSet(obj.name[:-4], "zip", [obj]))
        else:
            other.append(obj.name)
    sets = zips + [ResultSet(name, "tree", objs) for name, objs in trees.items()]
    for s in sets:
        s.problem = _set_problem(s)
    _mark_overlaps(sets)
    sets.sort(key=lambda s: s.id)
    return Listing(sets, internal, other)


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

    @property
    def size(self) -> int:
        return sum(s.size for s in self.todo)


def sealed(s: ResultSet) -> bool:
    """A tree whose MANIFEST.json was written after every other object (push.sh writes it last) is complete."""
    seal = next((o for o in s.objects if s.rel(o) == manifest.NAME), None)
    return seal is not None and all(o.updated <= seal.updated for o in s.objects)


def make_plan(listing: Listing, tracker: Any = None, *, settle: float = SETTLE_S, now: float | None = None) -> Plan:
    """Split the listing into sets to pull, sets still uploading (deferred), and sets refused outright."""
    now = time.time() if now is None else now
    todo, deferred, refused = [], [], []
    for s in listing.sets:
        if s.problem:
            refused.append((s, s.problem))
        elif s.kind == "tree" and now - s.newest < settle and not sealed(s):
            deferred.append((s, f"still uploading? newest object is {max(0, now - s.newest):.0f} s old "
                                f"(waiting until {settle:.0f} s)"))
        else:
            todo.append(s)
    return Plan(listing, todo, deferred, refused)
