"""One pull (list, plan, confirm, then each set: download, verify, extract, clean) and watch mode (pull on a timer).

The order of a set's life is what keeps results safe:
  claim (the download state) -> download each object, at the generation we listed, to a temporary name
  -> check size and CRC32C (taken while writing; MD5 when there is no CRC32C) -> rename into place
  -> zips: every member's CRC while inflating into a staging folder, safe names, manifest -> rename into place
  -> re-list: anything changed meanwhile? defer, keep everything in GCS
  -> mark `downloaded` -> delete each object with if_generation_match -> mark `cleaned`.
A crash at any point leaves the objects in GCS and at worst a temporary file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lib import manifest, safepaths, storage
from lib.config import Config
from lib.downloads import Tracker
from lib.errors import OpsError
from lib.log import Log, quiet
from lib.results import listing as _listing
from lib.results import transfers as xfer
from lib.results.extract import extract, need_space
from lib.results.listing import SETTLE_S, Obj, Plan, ResultSet, make_plan
from lib.results.transfers import (
    SET_WORKERS,
    WORKERS,
    Counter,
    ProgressFn,
    SetFailed,
    Transfers,
    check_file,
    check_pieces,
    raise_download_error,
    wait,
)
from lib.units import human

PARTIAL = ".ops-hpc-partial"  # staging folder inside --dir: same disk, so renames are atomic


def _noprogress(_: str, __: int, ___: int) -> None:
    pass


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
    try:
        return _pull(cfg, folder, tracker, confirm, on_log, on_progress, settle, workers, only, now)
    finally:
        tracker.close()


def _pull(cfg: Config, folder: Path, tracker: Tracker, confirm: Callable[[Plan], bool], on_log: Log,
          on_progress: ProgressFn, settle: float, workers: int, only: list[str] | None,
          now: Callable[[], float]) -> Report:
    report = Report(str(folder.resolve()), cfg.bucket_name)
    report.recovered = tracker.recover()
    for set_id in report.recovered:
        on_log(f"{set_id}: a previous pull stopped mid-download; retrying it")
    listing = _listing.list_sets(cfg)
    if only:
        wanted = set(only)
        listing.sets = [s for s in listing.sets if s.id in wanted]
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


def _pull_set(cfg: Config, folder: Path, s: ResultSet, tracker: Tracker, transfers: Transfers,
              on_log: Log, on_progress: ProgressFn) -> Outcome:
    out = Outcome(s.id, s.kind, "failed", files=len(s.objects), bytes=s.size)
    busy = tracker.claim(s.id, s.round)
    if busy:
        out.status, out.reason = ("done", busy) if busy.startswith("already") else ("busy", busy)
        on_log(f"{s.id}: skipped, {busy}")
        return out
    staging = folder / PARTIAL / hashlib.sha256(s.id.encode()).hexdigest()[:16]
    counter = Counter(s.id, s.size, on_progress)
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


def _download(obj: Obj, part: Path, transfers: Transfers, counter: Counter, *, inline: bool) -> None:
    """Download `obj` to `part` and check it from the checksums taken while writing.

    `inline` (on a pool thread, small objects only): download here, never wait on the pool from it.
    """
    if inline:
        try:
            pieces = [transfers.fetch_range(obj, part, 0, None, counter)]
        except Exception as exc:
            raise_download_error([exc], obj.name)
    else:
        pieces = wait(transfers.fetch(obj, part, counter), obj.name)
    why = check_pieces(part, obj, pieces)
    if why:
        raise SetFailed(f"{obj.name}: downloaded content does not match GCS ({why})")


def _tree_set(folder: Path, s: ResultSet, staging: Path, transfers: Transfers,
              counter: Counter) -> tuple[dict[str, list], str | None]:
    """Download a tree's files; each lands under its final name only once its checksum matches."""
    targets = {o.name: safepaths.inside(folder, f"{s.id}/{s.rel(o)}") for o in s.objects}
    need_space(folder, s.size)

    def ensure(obj: Obj, part: Path) -> None:
        final = targets[obj.name]
        if final.is_file() and check_file(final, obj) is None:
            counter(obj.size, fetched=False)  # verified earlier: a re-run does not fetch it again
            return
        _download(obj, part, transfers, counter, inline=obj.size < xfer.LARGE_OBJECT)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)

    small = [(o, staging / f"{i}.part") for i, o in enumerate(s.objects) if o.size < xfer.LARGE_OBJECT]
    large = [(o, staging / f"{i}.part") for i, o in enumerate(s.objects) if o.size >= xfer.LARGE_OBJECT]
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


def _zip_set(folder: Path, s: ResultSet, staging: Path, transfers: Transfers, counter: Counter,
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
    need_space(folder, obj.size)
    part = staging / "set.zip.part"
    _download(obj, part, transfers, counter, inline=False)
    tree = staging / "x"
    files = extract(part, tree, folder)
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
