"""Pulling one result set: the order of a set's life is what keeps results safe.

  claim (the download state) -> download each object, at the generation we listed, to a temporary name
  -> check size and CRC32C (taken while writing; MD5 when there is no CRC32C) -> rename into place
  -> zips: checked from the central directory (names, size, ratio, space), every member's CRC while
     inflating into a staging folder, manifest -> rename into place
  -> re-list: anything changed meanwhile? defer, keep everything in GCS
  -> mark `downloaded` -> delete each object with if_generation_match -> mark `cleaned`.
A crash at any point leaves the objects in GCS and at worst a temporary file. A failure is recorded
with the generations it failed for and when to try again (listing.backoff).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib import manifest, safepaths, storage
from lib.config import Config
from lib.downloads import StateError, Tracker
from lib.log import Log
from lib.results import streaming
from lib.results import transfers as xfer
from lib.results.extract import extract, reserve
from lib.results.listing import PUSH_MARKER, Obj, ResultSet, backoff
from lib.results.transfers import (
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


@dataclass
class Outcome:
    """What happened to one set in one pull."""

    id: str
    kind: str
    status: str  # cleaned | downloaded | failed | deferred | incomplete | waiting | busy | done
    reason: str = ""
    files: int = 0
    bytes: int = 0
    fetched_bytes: int = 0  # actually transferred (a re-run skips verified files)
    kept_in_gcs: int = 0  # objects not deleted (replaced meanwhile)
    model_state: str | None = None  # from the manifest: ok | failed | timeout
    generation: int = 0  # newest object generation of the set as listed
    retry_at: float | None = None  # waiting: when the set that failed will be tried again


def pull_set(cfg: Config, folder: Path, s: ResultSet, tracker: Tracker, transfers: Transfers,
             on_log: Log, on_progress: ProgressFn, max_bytes: int, now: Callable[[], float]) -> Outcome:
    out = Outcome(s.id, s.kind, "failed", files=len(s.objects), bytes=s.size, generation=s.generation)
    busy = tracker.claim(s.id, s.round)
    if busy:
        out.status, out.reason = ("done", busy) if busy.startswith("already") else ("busy", busy)
        on_log(f"{s.id}: skipped, {busy}")
        return out
    staging = folder / PARTIAL / hashlib.sha256(s.id.encode()).hexdigest()[:16]
    counter = Counter(s.id, s.size, on_progress)
    entry = tracker.get(s.id) or {}
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if s.kind == "zip":
            files, model_state = _zip_set(folder, s, staging, transfers, counter, entry, max_bytes,
                                          lambda: _unchanged(cfg, s))
            versions: list[str] = []
        else:
            files, model_state, versions = _tree_set(folder, s, staging, transfers, counter, entry)
            _unchanged(cfg, s)  # zips are checked in _zip_set, before their folder is put in place
            files = {**(entry.get("files") or {}), **files}  # earlier rounds' files stay verifiable
        out.model_state = model_state
        out.fetched_bytes = counter.fetched
        tracker.set_status(s.id, "downloaded", round=s.round, files=files, keep_owner=True,
                           model_state=model_state, generation=s.generation)
        kept = transfers.delete(s.objects + s.control)
        out.kept_in_gcs = kept
        notes = [f"{kept} object(s) replaced meanwhile were kept in GCS" if kept else "",
                 f"{len(versions)} file(s) replaced in GCS after an earlier pull verified them were kept as new "
                 f"versions beside them ({', '.join(versions[:3])})" if versions else ""]
        note = "; ".join(n for n in notes if n)
        tracker.set_status(s.id, "cleaned", note, round=s.round)
        out.status, out.reason = "cleaned", note
        if model_state and model_state != "ok":
            on_log(f"{s.id}: note: the model's run ended '{model_state}' (see its MANIFEST.json)")
        on_log(f"{s.id}: pulled {len(s.objects)} file(s), {human(s.size)}, verified and deleted from GCS"
               + (f" ({note})" if note else ""))
    except SetFailed as exc:
        out.reason = str(exc)
        out.fetched_bytes = counter.fetched
        if exc.status == "deferred":
            out.status = "deferred"
            tracker.set_status(s.id, "pending", out.reason)
            on_log(f"{s.id}: deferred, kept in GCS: {out.reason}")
        else:
            _failed(tracker, s, entry, out, now(), on_log)
    except StateError:
        raise  # the state file cannot be written: the whole pull stops, with one line
    except Exception as exc:  # any other error: this set failed, the others go on
        out.reason = f"{type(exc).__name__}: {exc}"
        _failed(tracker, s, entry, out, now(), on_log)
    finally:
        try:
            tracker.release_if_mine(s.id, "interrupted")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            _remove_empty(folder / PARTIAL)
    return out


def _failed(tracker: Tracker, s: ResultSet, entry: dict[str, Any], out: Outcome, now: float, on_log: Log) -> None:
    retry = backoff(entry, s, now)
    tracker.set_status(s.id, "failed", out.reason, **retry)
    out.retry_at = retry["next_try"]
    on_log(f"{s.id}: FAILED, kept in GCS, will retry: {out.reason}")


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
        now = {b.name: int(b.generation) for b in storage.list_blobs(cfg, s.prefix)}
    before = {o.name: o.generation for o in s.objects + s.control}
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
        with transfers.large_slot() if obj.size >= xfer.LARGE_OBJECT else contextlib.nullcontext():
            pieces = wait(transfers.fetch(obj, part, counter), obj.name)
    why = check_pieces(part, obj, pieces)
    if why:
        raise SetFailed(f"{obj.name}: downloaded content does not match GCS ({why})")


def _stream_zip(obj: Obj, part: Path, tree: Path, folder: Path, transfers: Transfers, counter: Counter,
                max_bytes: int) -> dict[str, list]:
    """Download a large zip and inflate it into `tree` as its slices arrive (streaming.py).

    The extraction counts only once the whole object's CRC32C matches GCS; until then `tree` is staging.
    """
    release = transfers.take_large()
    try:
        arriving = streaming.Arriving(transfers, obj, part, counter, on_landed=release)
        try:
            with arriving.reader() as src:
                files = extract(src, tree, folder, max_bytes=max_bytes)
            pieces = arriving.finish()
        except BaseException:
            arriving.stop()  # nothing may still write into staging when it is removed
            raise
    finally:
        release()
    why = check_pieces(part, obj, pieces)
    if why:
        raise SetFailed(f"{obj.name}: downloaded content does not match GCS ({why})")
    return files


def _new_version(final: Path, obj: Obj) -> Path:
    """`disp.out` -> `disp.new-<generation>.out`: where a later generation of a verified file goes."""
    return final.with_name(f"{final.stem}.new-{obj.generation}{final.suffix}")


def _replaced_after_pull(final: Path, rel: str, entry: dict[str, Any]) -> bool:
    """Is the local file exactly the one an earlier pull of this set verified (so it must be kept)?"""
    recorded = (entry.get("files") or {}).get(rel)
    if not recorded or not final.is_file() or final.stat().st_size != recorded[0]:
        return False
    return recorded[1] is not None and storage.crc32c_file(final) == recorded[1]


def _tree_set(folder: Path, s: ResultSet, staging: Path, transfers: Transfers, counter: Counter,
              entry: dict[str, Any]) -> tuple[dict[str, list], str | None, list[str]]:
    """Download a tree's files; each lands under its final name only once its checksum matches.

    A file an earlier pull verified and GCS now holds a newer generation of (re-uploaded between that
    pull's check and its delete) is kept; the newer one lands beside it as `NAME.new-GENERATION.EXT`.
    Returns the files, the model's state and the new versions' paths.
    """
    targets = {o.name: safepaths.inside(folder, f"{s.id}/{s.rel(o)}") for o in s.objects}
    versions: dict[str, str] = {}
    for o in s.objects:
        final = targets[o.name]
        if final.is_file() and check_file(final, o) is not None and _replaced_after_pull(final, s.rel(o), entry):
            targets[o.name] = _new_version(final, o)
            versions[o.name] = targets[o.name].relative_to(safepaths.inside(folder, s.id)).as_posix()

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
    with reserve(folder, s.size):
        futures = [transfers.pool_for(o).submit(ensure, o, p) for o, p in small]
        for o, p in large:  # slices go to the pool from here, so pool threads never wait on the pool
            ensure(o, p)
        errors = [exc for exc in (f.exception() for f in futures) if exc is not None]  # all done: none writing
    if errors:
        exc = errors[0]
        raise exc if isinstance(exc, SetFailed) else SetFailed(f"{type(exc).__name__}: {exc}")
    root = safepaths.inside(folder, s.id)
    files = {versions.get(o.name, s.rel(o)): [o.size, o.crc32c] for o in s.objects}
    known = {s.rel(o) for o in s.objects if o.name not in versions}
    return files, _check_manifest(root, ignore_extra=False, known=known), sorted(versions.values())


def _check_manifest(root: Path, *, ignore_extra: bool, known: set[str] | None = None,
                    computed: dict[str, list] | None = None) -> str | None:
    """Compare a set's folder with its MANIFEST.json, if it has one; returns the model's state."""
    try:
        m = manifest.read(root)
    except manifest.ManifestError as exc:
        raise SetFailed(str(exc)) from None
    if m is None:
        return None
    expected = [e for e in manifest.expected(m) if e.path != PUSH_MARKER]  # the marker is deleted, not pulled
    diffs = manifest.compare(root, expected, computed=computed)
    if known is not None:  # a tree folder may hold files from an earlier round; judge only this round's
        diffs = [d for d in diffs if d.kind != "extra" or d.path in known]
    if ignore_extra:
        diffs = [d for d in diffs if d.kind != "extra"]
    if diffs:
        listed = "; ".join(str(d) for d in diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        raise SetFailed(f"does not match its {manifest.NAME}: {listed}")
    return m.get("state")


def _zip_set(folder: Path, s: ResultSet, staging: Path, transfers: Transfers, counter: Counter,
             entry: dict[str, Any], max_bytes: int,
             unchanged: Callable[[], None]) -> tuple[dict[str, list], str | None]:
    """Download, verify and extract one zip set; the set's folder appears only complete and checked."""
    obj = s.objects[0]
    target = safepaths.inside(folder, s.id)
    recorded = entry.get("files") if entry.get("round") == s.round else None
    if recorded and target.is_dir():
        expected = [manifest.Expected(p, size, crc) for p, (size, crc) in recorded.items()]
        if not manifest.compare(target, expected, ignore=()):
            counter(obj.size, fetched=False)  # extracted and verified by an earlier pull that stopped before cleaning
            return recorded, entry.get("model_state")
    part, tree = staging / "set.zip.part", staging / "x"
    with reserve(folder, obj.size):
        if obj.size >= xfer.LARGE_OBJECT:
            files = _stream_zip(obj, part, tree, folder, transfers, counter, max_bytes)
        else:
            _download(obj, part, transfers, counter, inline=False)
            files = extract(part, tree, folder, max_bytes=max_bytes)
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
