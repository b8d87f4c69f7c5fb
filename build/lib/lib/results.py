"""Result sets: find them in the bucket, bring them to the PC verified, then (and only then) delete them.

A result set is either a zip (`RUN_ID/MODEL.zip`, any `PREFIX/NAME.zip` or a
top-level `NAME.zip`; set id = the name without `.zip`, extracted into
`DIR/<set id>/`) or a legacy tree (a top-level `NAME_YYYYMMDD-HHMMSS/` prefix of
plain files, as `vm push` writes). Objects under `_`-prefixed top-level folders
(`_uploads/`, `_status/`, `_logs/`) are never results; anything else is reported
and left alone.

The order of a set's life is what keeps results safe:
  claim (download_state.json) -> download each object, at the generation we listed, to a temporary name
  -> check size and CRC32C (MD5 when there is no CRC32C) -> rename into place
  -> zips: every member's CRC while inflating into a staging folder, safe names, manifest -> rename into place
  -> re-list: anything changed meanwhile? defer, keep everything in GCS
  -> mark `downloaded` -> delete each object with if_generation_match -> mark `cleaned`.
A crash at any point leaves the objects in GCS and at worst a temporary file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lib import manifest, retry, safepaths, storage
from lib.config import Config
from lib.downloads import Tracker
from lib.errors import OpsError
from lib.log import Log, quiet
from lib.units import human

TREE_RE = re.compile(r".+_\d{8}-\d{6}")
SETTLE_S = 120.0  # a tree whose newest object is younger than this may still be uploading
WORKERS = 16  # parallel object / slice transfers
SET_WORKERS = 4  # result sets handled at once
LARGE_OBJECT = 64 << 20  # objects at least this big are downloaded in slices ...
SLICE = 16 << 20  # ... of this size, in parallel
PARTIAL = ".ops-hpc-partial"  # staging folder inside --dir: same disk, so renames are atomic

ProgressFn = Callable[[str, int, int], None]


def _noprogress(_: str, __: int, ___: int) -> None:
    pass


# -- what is in the bucket ------------------------------------------------------


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
    """Two sets landing in the same folder, or one inside the other, ignoring case: refuse both."""
    keys = {s.id: s.id.casefold() for s in sets}
    for a in sets:
        for b in sets:
            if a is not b and not a.problem and (keys[a.id] == keys[b.id] or keys[b.id].startswith(keys[a.id] + "/")
                                                 or keys[a.id].startswith(keys[b.id] + "/")):
                a.problem = f"set {a.id!r} and set {b.id!r} would land in the same folder"


def list_sets(cfg: Config) -> Listing:
    """Every result set in the bucket (one listing of all objects)."""
    return classify([Obj.from_blob(b) for b in storage.list_blobs(cfg)])


# -- what to do about them -----------------------------------------------------


@dataclass
class Outcome:
    """What happened to one set in one pull."""

    id: str
    kind: str
    status: str  # cleaned | downloaded | failed | deferred | busy | done
    reason: str = ""
    files: int = 0
    bytes: int = 0
    fetched_bytes: int = 0  # actually transferred (a re-run skips verified files)
    kept_in_gcs: int = 0  # objects not deleted (replaced meanwhile)
    model_state: str | None = None  # from the manifest: ok | failed | timeout


@dataclass
class Plan:
    listing: Listing
    todo: list[ResultSet]
    deferred: list[tuple[ResultSet, str]]
    refused: list[tuple[ResultSet, str]]

    @property
    def size(self) -> int:
        return sum(s.size for s in self.todo)


@dataclass
class Report:
    folder: str
    bucket: str
    outcomes: list[Outcome] = field(default_factory=list)
    confirmed: bool = True
    internal: int = 0
    other: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def _sealed(s: ResultSet) -> bool:
    """A tree whose MANIFEST.json was written after every other object (push.sh writes it last) is complete."""
    seal = next((o for o in s.objects if s.rel(o) == manifest.NAME), None)
    return seal is not None and all(o.updated <= seal.updated for o in s.objects)


def make_plan(listing: Listing, tracker: Tracker, *, settle: float = SETTLE_S, now: float | None = None) -> Plan:
    """Split the listing into sets to pull, sets still uploading (deferred), and sets refused outright."""
    now = time.time() if now is None else now
    todo, deferred, refused = [], [], []
    for s in listing.sets:
        if s.problem:
            refused.append((s, s.problem))
        elif s.kind == "tree" and now - s.newest < settle and not _sealed(s):
            deferred.append((s, f"still uploading? newest object is {max(0, now - s.newest):.0f} s old "
                                f"(waiting until {settle:.0f} s)"))
        else:
            todo.append(s)
    return Plan(listing, todo, deferred, refused)


def pull(
    cfg: Config,
    folder: Path,
    *,
    confirm: Callable[[Plan], bool] = lambda plan: True,
    on_log: Log = quiet,
    on_progress: ProgressFn = _noprogress,
    settle: float = SETTLE_S,
    workers: int = WORKERS,
    only: list[str] | None = None,
    now: Callable[[], float] = time.time,
) -> Report:
    """One pull: list, plan, ask `confirm`, then download, verify, extract and clean every set it can.

    Nothing raises for a bad set: it becomes a `failed` outcome (kept in GCS, retried next time).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(folder)
    report = Report(str(folder.resolve()), cfg.bucket_name)
    report.recovered = tracker.recover()
    for set_id in report.recovered:
        on_log(f"{set_id}: a previous pull stopped mid-download; retrying it")
    listing = list_sets(cfg)
    if only:
        listing.sets = [s for s in listing.sets if s.id in only]
    report.internal, report.other = listing.internal, listing.other
    plan = make_plan(listing, tracker, settle=settle, now=now())
    tracker.seen_many([(s.id, s.kind, len(s.objects), s.size) for s in listing.sets])
    for s, why in plan.refused:
        on_log(f"{s.id}: refused, kept in GCS: {why}")
        tracker.set_status(s.id, "failed", why)
        report.outcomes.append(Outcome(s.id, s.kind, "failed", why, len(s.objects), s.size))
    for s, why in plan.deferred:
        on_log(f"{s.id}: deferred, {why}")
        tracker.set_status(s.id, "pending", why)
        report.outcomes.append(Outcome(s.id, s.kind, "deferred", why, len(s.objects), s.size))
    if not plan.todo:
        return report
    if not confirm(plan):
        report.confirmed = False
        return report
    with Transfers(cfg, workers) as transfers:
        def one(s: ResultSet) -> Outcome:
            return _pull_set(cfg, folder, s, tracker, transfers, on_log, on_progress)

        with ThreadPoolExecutor(max_workers=min(SET_WORKERS, len(plan.todo)), thread_name_prefix="set") as pool:
            try:
                report.outcomes += list(pool.map(one, plan.todo))
            except KeyboardInterrupt:
                transfers.cancel.set()  # running downloads stop at their next block; their sets become failed
                raise
    report.outcomes.sort(key=lambda o: o.id)
    return report


def watch(
    cfg: Config,
    folder: Path,
    *,
    interval: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    max_polls: int | None = None,
    on_log: Log = quiet,
    on_report: Callable[[Report], None] = lambda report: None,
    **pull_options: Any,
) -> list[Report]:
    """Poll and pull every `interval` seconds until Ctrl+C (or `max_polls`); a failing poll does not stop it."""
    reports: list[Report] = []
    polls = 0
    while True:
        try:
            report = pull(cfg, folder, on_log=on_log, **pull_options)
            reports.append(report)
            on_report(report)
        except OpsError as exc:
            on_log(f"poll failed: {exc}; trying again in {interval:g} s")
        polls += 1
        if max_polls is not None and polls >= max_polls:
            return reports
        sleep(interval)


# -- transfers -----------------------------------------------------------------


class Transfers:
    """One thread pool for every object and slice download and every delete of a pull."""

    def __init__(self, cfg: Config, workers: int) -> None:
        self.cfg = cfg
        self.client = storage.client(cfg)
        _widen_pool(self.client, workers + SET_WORKERS + 2)
        self.bucket = self.client.bucket(cfg.bucket_name)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xfer")
        self.cancel = threading.Event()

    def __enter__(self) -> Transfers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def blob(self, obj: Obj) -> Any:
        return self.bucket.blob(obj.name, generation=obj.generation)

    def fetch_range(self, obj: Obj, dest: Path, start: int, end: int | None, count: Callable[[int], None]) -> None:
        """Bytes [start, end] of exactly generation `obj.generation` into `dest` at `start`; retried whole."""
        cancel = self.cancel

        def attempt() -> None:
            written = 0

            class Counting:
                def __init__(self, fh: Any) -> None:
                    self.fh = fh

                def write(self, data: bytes) -> int:
                    nonlocal written
                    if cancel.is_set():
                        raise SetFailed("interrupted")
                    n = self.fh.write(data)
                    written += len(data)
                    count(len(data))
                    return n

            try:
                # The library streams in 8 KB reads, a Python-level loop per 8 KB: a piece of at most SLICE
                # bytes is read in one go instead (bounded memory: workers x SLICE).
                size = (end - start + 1) if end is not None else obj.size
                one_go = size <= SLICE
                with open(dest, "r+b" if end is not None else "wb") as fh:
                    fh.seek(start)
                    if end is None:
                        self.blob(obj).download_to_file(Counting(fh), raw_download=True, checksum=None, retry=None,
                                                        single_shot_download=one_go)
                    else:
                        self.blob(obj).download_to_file(Counting(fh), start=start, end=end, raw_download=True,
                                                        checksum=None, retry=None, single_shot_download=one_go)
            except BaseException:
                count(-written)
                raise

        retry.call(attempt)

    def fetch(self, obj: Obj, dest: Path, count: Callable[[int], None]) -> list[Future]:
        """Start downloading `obj` to `dest`: one task, or one per slice for a large object.

        Call it only from a thread outside the pool (a set thread): pool threads must never wait on the pool.
        """
        if obj.size < LARGE_OBJECT:
            return [self.pool.submit(self.fetch_range, obj, dest, 0, None, count)]
        with open(dest, "wb") as fh:
            fh.truncate(obj.size)
        return [self.pool.submit(self.fetch_range, obj, dest, start, min(start + SLICE, obj.size) - 1, count)
                for start in range(0, obj.size, SLICE)]

    def delete(self, objs: list[Obj]) -> int:
        """Delete each object only at the generation we verified; returns how many were kept (replaced meanwhile).

        Batch requests of 100 deletes, several in parallel: one request per file made cleaning cost as much
        as downloading for sets of thousands of small recorder files.
        """
        pairs = [(o.name, o.generation) for o in objs]
        step = storage.BATCH_MAX
        futures = [self.pool.submit(storage.delete_many, self.cfg, pairs[i : i + step]) for i in range(0, len(pairs), step)]
        return sum(1 for f in futures for state in f.result().values() if state == "kept")


def _widen_pool(client: Any, size: int) -> None:
    """requests keeps 10 connections per host by default; more threads than that would reconnect constantly."""
    try:
        import requests.adapters

        session = client._http
        if getattr(session, "_ops_hpc_pool", 0) >= size:
            return
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=size)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session._ops_hpc_pool = size
    except Exception:  # pragma: no cover - only a performance tweak
        pass


def check_file(path: Path, obj: Obj) -> str | None:
    """Why the local file does not hold exactly `obj`'s content, or None if it does."""
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


class SetFailed(Exception):
    """This set cannot be pulled now; `status` is failed (retry next poll) or deferred (still changing)."""

    def __init__(self, reason: str, status: str = "failed") -> None:
        super().__init__(reason)
        self.status = status


class _Counter:
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


def _pull_set(cfg: Config, folder: Path, s: ResultSet, tracker: Tracker, transfers: Transfers,
              on_log: Log, on_progress: ProgressFn) -> Outcome:
    out = Outcome(s.id, s.kind, "failed", files=len(s.objects), bytes=s.size)
    busy = tracker.claim(s.id, s.round)
    if busy:
        out.status, out.reason = ("done", busy) if busy.startswith("already") else ("busy", busy)
        on_log(f"{s.id}: skipped, {busy}")
        return out
    staging = folder / PARTIAL / hashlib.sha256(s.id.encode()).hexdigest()[:16]
    counter = _Counter(s.id, s.size, on_progress)
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        entry = tracker.get(s.id) or {}
        if s.kind == "zip":
            files, model_state = _zip_set(folder, s, staging, transfers, counter, entry,
                                          lambda: _unchanged(cfg, s))
        else:
            files, model_state = _tree_set(folder, s, staging, transfers, counter)
        out.model_state = model_state
        out.fetched_bytes = counter.fetched
        if s.kind == "tree":
            _unchanged(cfg, s)  # zips are checked in _zip_set, before their folder is put in place
        tracker.set_status(s.id, "downloaded", round=s.round, files=files, keep_owner=True,
                           model_state=model_state)
        kept = transfers.delete(s.objects)
        out.kept_in_gcs = kept
        note = f"{kept} object(s) replaced meanwhile were kept in GCS" if kept else ""
        tracker.set_status(s.id, "cleaned", note, round=s.round)
        out.status, out.reason = "cleaned", note
        if model_state and model_state != "ok":
            on_log(f"{s.id}: note: the model's run ended '{model_state}' (see its MANIFEST.json)")
        on_log(f"{s.id}: pulled {len(files)} file(s), {human(s.size)}, verified and deleted from GCS"
               + (f" ({note})" if note else ""))
    except SetFailed as exc:
        out.reason = str(exc)
        out.fetched_bytes = counter.fetched
        if exc.status == "deferred":
            out.status = "deferred"
            tracker.set_status(s.id, "pending", out.reason)
            on_log(f"{s.id}: deferred, kept in GCS: {out.reason}")
        else:
            tracker.set_status(s.id, "failed", out.reason)
            on_log(f"{s.id}: FAILED, kept in GCS, will retry: {out.reason}")
    except Exception as exc:  # any other error: this set failed, the others go on
        out.reason = f"{type(exc).__name__}: {exc}"
        tracker.set_status(s.id, "failed", out.reason)
        on_log(f"{s.id}: FAILED, kept in GCS, will retry: {out.reason}")
    finally:
        tracker.release_if_mine(s.id, "interrupted")
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(folder / PARTIAL)
    return out


def _remove_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _unchanged(cfg: Config, s: ResultSet) -> None:
    """Re-list the set after downloading: any new, replaced or vanished object means it is still being written."""
    if s.kind == "zip":
        blob = storage.get_blob(cfg, s.objects[0].name)
        now = {blob.name: int(blob.generation)} if blob is not None else {}
    else:
        now = {b.name: int(b.generation) for b in storage.list_blobs(cfg, s.prefix)
               if not (b.name.endswith("/") and not b.size)}
    before = {o.name: o.generation for o in s.objects}
    if now != before:
        changed = sorted(set(now.items()) ^ set(before.items()))
        raise SetFailed(f"objects changed while downloading (e.g. {changed[0][0]!r}); "
                        "it will be pulled once it stops changing", status="deferred")


def _wait(futures: list[Future], what: str) -> None:
    errors = []
    for f in as_completed(futures):
        exc = f.exception()
        if exc is not None:
            errors.append(exc)
    if errors:
        _raise_download_error(errors, what)


def _raise_download_error(errors: list[BaseException], what: str) -> None:
    if isinstance(errors[0], SetFailed):
        raise errors[0]
    from google.api_core import exceptions as gexc

    if any(isinstance(e, gexc.NotFound) for e in errors):
        raise SetFailed(f"{what}: an object was replaced or deleted while downloading", status="deferred")
    first = errors[0]
    raise SetFailed(f"{what}: download failed after retries: {type(first).__name__}: {first}")


def _tree_set(folder: Path, s: ResultSet, staging: Path, transfers: Transfers,
              counter: _Counter) -> tuple[dict[str, list], str | None]:
    """Download a tree's files; each lands under its final name only once its checksum matches."""
    targets = {o.name: safepaths.inside(folder, f"{s.id}/{s.rel(o)}") for o in s.objects}
    _need_space(folder, s.size)

    def ensure(obj: Obj, part: Path) -> None:
        final = targets[obj.name]
        if final.is_file() and check_file(final, obj) is None:
            counter(obj.size, fetched=False)  # verified earlier: a re-run does not fetch it again
            return
        if obj.size < LARGE_OBJECT:  # runs on a pool thread: download inline, never wait on the pool from it
            try:
                transfers.fetch_range(obj, part, 0, None, counter)
            except Exception as exc:
                _raise_download_error([exc], obj.name)
        else:
            _wait(transfers.fetch(obj, part, counter), obj.name)
        why = check_file(part, obj)
        if why:
            raise SetFailed(f"{obj.name}: downloaded content does not match GCS ({why})")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)

    small = [(o, staging / f"{i}.part") for i, o in enumerate(s.objects) if o.size < LARGE_OBJECT]
    large = [(o, staging / f"{i}.part") for i, o in enumerate(s.objects) if o.size >= LARGE_OBJECT]
    futures = [transfers.pool.submit(ensure, o, p) for o, p in small]
    for o, p in large:  # slices go to the pool from here, so pool threads never wait on the pool
        ensure(o, p)
    errors = [exc for exc in (f.exception() for f in futures) if exc is not None]  # all done: none still writing
    if errors:
        exc = errors[0]
        raise exc if isinstance(exc, SetFailed) else SetFailed(f"{type(exc).__name__}: {exc}")
    root = safepaths.inside(folder, s.id)
    files = {s.rel(o): [o.size, o.crc32c] for o in s.objects}
    return files, _check_manifest(root, ignore_extra=False, known=set(files))


def _check_manifest(root: Path, *, ignore_extra: bool, known: set[str] | None = None,
                    computed: dict[str, list] | None = None) -> str | None:
    """Compare a set's folder with its MANIFEST.json, if it has one; returns the model's state."""
    try:
        m = manifest.read(root)
    except manifest.ManifestError as exc:
        raise SetFailed(str(exc)) from None
    if m is None:
        return None
    diffs = manifest.compare(root, manifest.expected(m), computed=computed)
    if known is not None:  # a tree folder may hold files from an earlier round; judge only this round's
        diffs = [d for d in diffs if d.kind != "extra" or d.path in known]
    if ignore_extra:
        diffs = [d for d in diffs if d.kind != "extra"]
    if diffs:
        listed = "; ".join(str(d) for d in diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        raise SetFailed(f"does not match its {manifest.NAME}: {listed}")
    return m.get("state")


def _need_space(folder: Path, size: int) -> None:
    free = shutil.disk_usage(folder).free
    if size > free:
        raise SetFailed(f"not enough disk space: needs {human(size)}, {human(free)} free in {folder}")


def _zip_set(folder: Path, s: ResultSet, staging: Path, transfers: Transfers, counter: _Counter,
             entry: dict[str, Any], unchanged: Callable[[], None]) -> tuple[dict[str, list], str | None]:
    """Download, verify and extract one zip set; the set's folder appears only complete and checked."""
    obj = s.objects[0]
    target = safepaths.inside(folder, s.id)
    recorded = entry.get("files") if entry.get("round") == s.round else None
    if recorded and target.is_dir():
        expected = [manifest.Expected(p, size, crc) for p, (size, crc) in recorded.items()]
        if not manifest.compare(target, expected, ignore=()):
            counter(obj.size, fetched=False)  # extracted and verified by an earlier pull that stopped before cleaning
            return recorded, entry.get("model_state")
    _need_space(folder, obj.size)
    part = staging / "set.zip.part"
    _wait(transfers.fetch(obj, part, counter), obj.name)
    why = check_file(part, obj)
    if why:
        raise SetFailed(f"{obj.name}: downloaded content does not match GCS ({why})")
    tree = staging / "x"
    files = _extract(part, tree, folder)
    part.unlink()
    model_state = _check_manifest(tree, ignore_extra=False, computed=files)  # CRC32Cs taken while inflating
    unchanged()  # replaced meanwhile? then this copy is not the one to keep: defer before placing anything
    if target.exists():
        expected = [manifest.Expected(p, size, crc) for p, (size, crc) in files.items()]
        diffs = manifest.compare(target, expected, ignore=())
        if diffs:
            raise SetFailed(f"{target} already exists with different content ({diffs[0]}): "
                            "move it aside and pull again")
        return files, model_state  # identical: an earlier pull placed it
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tree, target)
    return files, model_state


def _extract(zip_path: Path, into: Path, folder: Path) -> dict[str, list]:
    """Check the member list, then inflate every member (zipfile checks each CRC-32 at its end).

    Returns {path: [size, crc32c]} of the extracted files, computed while writing them.
    """
    import base64

    import google_crc32c

    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SetFailed(f"not a readable zip ({exc})") from None
    with zf:
        infos = zf.infolist()
        if not infos:
            raise SetFailed("empty zip (no members)")
        problems = safepaths.zip_problems(infos)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise SetFailed(f"unsafe zip: {problems[0]}{more}")
        _need_space(folder, sum(i.file_size for i in infos))
        files: dict[str, list] = {}
        into.mkdir(parents=True, exist_ok=True)
        for info in infos:
            dest = safepaths.inside(into, info.filename.rstrip("/"))
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            crc = google_crc32c.Checksum()
            try:
                with zf.open(info) as src, open(dest, "wb") as out:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        crc.update(block)
                        out.write(block)
            except (zipfile.BadZipFile, OSError, RuntimeError, EOFError, ValueError) as exc:
                raise SetFailed(f"zip member {info.filename!r} is damaged ({exc})") from None
            files[info.filename] = [info.file_size, base64.b64encode(crc.digest()).decode()]
    return files


# -- verify --------------------------------------------------------------------


@dataclass
class Verified:
    id: str
    source: str  # gcs | manifest | recorded | none
    differences: list[str] = field(default_factory=list)
    note: str = ""


def verify(cfg: Config | None, folder: Path, set_ids: list[str] | None = None) -> list[Verified]:
    """Re-check local sets against GCS (while there), else their MANIFEST.json, else what the pull recorded.

    `cfg=None` means offline: manifests and recorded checksums only.
    """
    folder = Path(folder)
    state = Tracker(folder).sets()
    ids = set_ids or sorted(k for k, v in state.items() if v.get("status") in ("downloaded", "cleaned"))
    listing = list_sets(cfg) if cfg is not None else Listing([])
    in_gcs = {s.id: s for s in listing.sets}
    results = []
    for set_id in ids:
        try:
            root = safepaths.inside(folder, set_id)
        except safepaths.UnsafeName as exc:
            results.append(Verified(set_id, "none", [str(exc)]))
            continue
        results.append(_verify_one(cfg, root, set_id, in_gcs.get(set_id), state.get(set_id) or {}))
    return results


def _verify_one(cfg: Config | None, root: Path, set_id: str, s: ResultSet | None, entry: dict[str, Any]) -> Verified:
    if s is not None and s.kind == "tree":
        expected = [manifest.Expected(s.rel(o), o.size, o.crc32c, o.md5) for o in s.objects]
        return Verified(set_id, "gcs", [str(d) for d in manifest.compare(root, expected, ignore=())])
    if s is not None and cfg is not None:
        return Verified(set_id, "gcs", [str(d) for d in _compare_zip(cfg, root, s.objects[0])])
    try:
        m = manifest.read(root)
    except manifest.ManifestError as exc:
        return Verified(set_id, "manifest", [str(exc)])
    if m is not None:
        return Verified(set_id, "manifest", [str(d) for d in manifest.compare(root, manifest.expected(m))])
    if entry.get("files"):
        expected = [manifest.Expected(p, size, crc) for p, (size, crc) in entry["files"].items()]
        return Verified(set_id, "recorded", [str(d) for d in manifest.compare(root, expected, ignore=())])
    if not root.is_dir():
        return Verified(set_id, "none", ["missing  (no local folder, not in GCS, nothing recorded)"])
    return Verified(set_id, "none", note="not in GCS, no MANIFEST.json and nothing recorded: cannot verify")


def _compare_zip(cfg: Config, root: Path, obj: Obj) -> list[manifest.Difference]:
    """Compare a local folder with a zip still in GCS, reading only the zip's central directory (ranged reads)."""
    import zlib

    blob = storage.bucket(cfg).blob(obj.name, generation=obj.generation)

    def members() -> list[zipfile.ZipInfo]:
        with blob.open("rb", chunk_size=1 << 20, retry=None) as fh, zipfile.ZipFile(fh) as zf:
            return zf.infolist()

    try:
        infos = [i for i in retry.call(members) if not i.is_dir()]
    except zipfile.BadZipFile as exc:
        return [manifest.Difference(obj.name, "differs", f"not a readable zip in GCS ({exc})")]
    diffs = []
    have = set(manifest.local_files(root)) if root.is_dir() else set()
    for info in infos:
        local = root / Path(*info.filename.split("/"))
        if info.filename not in have:
            diffs.append(manifest.Difference(info.filename, "missing"))
            continue
        size = local.stat().st_size
        if size != info.file_size:
            diffs.append(manifest.Difference(info.filename, "differs", f"size {size}, zip says {info.file_size}"))
            continue
        crc = 0
        with open(local, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                crc = zlib.crc32(block, crc)
        if crc != info.CRC:
            diffs.append(manifest.Difference(info.filename, "differs", f"CRC-32 {crc:08x}, zip says {info.CRC:08x}"))
    names = {i.filename for i in infos}
    diffs += [manifest.Difference(p, "extra") for p in sorted(have - names)]
    return diffs


