"""One pull (list, plan, confirm, then every set it can, four at a time) and watch mode (pull on a timer).

What happens to each set, in the order that keeps results safe, is in oneset.py.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lib import storage
from lib.config import Config
from lib.downloads import Tracker
from lib.errors import OpsError, Refused, UsageError
from lib.log import Log, quiet
from lib.results import listing as _listing
from lib.results.listing import SETTLE_S, Plan, ResultSet, backoff, make_plan
from lib.results.oneset import Outcome, pull_set
from lib.results.transfers import SET_WORKERS, WORKERS, ProgressFn, Transfers

WATCH_BACKOFF_MAX_S = 600.0  # watch mode: failed polls back off (doubling) up to this


def _noprogress(_: str, __: int, ___: int) -> None:
    pass


@dataclass
class Report:
    folder: str
    bucket: str
    outcomes: list[Outcome] = field(default_factory=list)
    confirmed: bool = True
    internal: int = 0
    other: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    placeholders_removed: int = 0

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def incomplete(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "incomplete"]

    @property
    def ok(self) -> bool:
        """False while any set failed, waits to be retried after failing, or is an unfinished push."""
        return not any(o.status in ("failed", "incomplete", "waiting") for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def folder_for(cfg: Config, given: str | Path | None = None) -> Path:
    """The results folder: `given` (--dir) or `results_dir`; an empty one would mean 'here', so it is refused."""
    text = str(given) if given is not None and str(given) != "" else cfg.results_dir
    if not text.strip():
        raise UsageError("results_dir is empty: set results_dir in ops-hpc.toml (or OPS_HPC_RESULTS_DIR) "
                         "or pass --dir")
    return Path(text)


def _writable(folder: Path) -> Path:
    """Create the folder and prove a file can be made in it, before anything is claimed or downloaded."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ops-hpc-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OpsError(f"results folder {folder} is not writable ({exc.strerror or exc}): nothing downloaded, "
                       "every result stays in GCS; fix it or pass another --dir") from None
    return folder


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
    honour_backoff: bool = False,
) -> Report:
    """One pull: list, plan, ask `confirm`, then download, verify, extract and clean every set it can.

    Nothing raises for a bad set: it becomes a `failed` outcome (kept in GCS, retried next time; with
    `honour_backoff`, as watch mode and followers use, only once its backoff has passed: a set refused
    for its content is not downloaded again every poll). An unusable results folder or state file raises
    OpsError, before anything is deleted.
    """
    folder = _writable(Path(folder))
    tracker = Tracker(folder)
    try:
        return _pull(cfg, folder, tracker, confirm, on_log, on_progress, settle, workers, only, now, honour_backoff)
    finally:
        tracker.close()


def _pull(cfg: Config, folder: Path, tracker: Tracker, confirm: Callable[[Plan], bool], on_log: Log,
          on_progress: ProgressFn, settle: float, workers: int, only: list[str] | None,
          now: Callable[[], float], honour_backoff: bool) -> Report:
    report = Report(str(folder.resolve()), cfg.bucket_name)
    report.recovered = tracker.recover()
    for set_id in report.recovered:
        on_log(f"{set_id}: a previous pull stopped mid-download; retrying it")
    listing = _listing.list_sets(cfg)
    if only:
        wanted = set(only)
        listing.sets = [s for s in listing.sets if s.id in wanted]
        listing.placeholders = []
    report.internal, report.other = listing.internal, listing.other
    entries = tracker.seen_many([(s.id, s.kind, len(s.objects), s.size) for s in listing.sets])
    t = now()
    plan = make_plan(listing, entries, settle=settle, now=t, honour_backoff=honour_backoff)
    for s, why in plan.refused:
        entry = entries.get(s.id) or {}
        if not (entry.get("status") == "failed" and entry.get("failed_round") == s.round):
            on_log(f"{s.id}: refused, kept in GCS: {why}")  # once per new generation, not every poll
        tracker.set_status(s.id, "failed", why, **backoff(entry, s, t))
        report.outcomes.append(_outcome(s, "failed", why))
    for s, why in plan.incomplete:
        entry = entries.get(s.id) or {}
        if not (entry.get("status") == "incomplete" and entry.get("round") == s.round):
            on_log(f"{s.id}: {why}{_marker_note(cfg, s)}")
            tracker.set_status(s.id, "incomplete", why, round=s.round, generation=s.generation)
        report.outcomes.append(_outcome(s, "incomplete", why))
    for s, why, at in plan.waiting:
        report.outcomes.append(_outcome(s, "waiting", why, retry_at=at))
    for s, why in plan.deferred:
        on_log(f"{s.id}: deferred, {why}")
        tracker.set_status(s.id, "pending", why)
        report.outcomes.append(_outcome(s, "deferred", why))
    if plan.todo and not confirm(plan):
        report.confirmed = False
        return report
    # Zero-byte folder objects with nothing under them hold no result: removed without a question
    # (at the generation listed), unless the user just said no.
    old_placeholders = [p for p in listing.placeholders if t - p.updated >= settle]
    if old_placeholders:
        done = storage.delete_many(cfg, [(p.name, p.generation) for p in old_placeholders])
        report.placeholders_removed = sum(1 for v in done.values() if v == "deleted")
        on_log(f"removed {report.placeholders_removed} empty folder placeholder object(s)")
    if not plan.todo:
        return report
    max_bytes = int(cfg.max_unzipped_gb * (1 << 30))
    with Transfers(cfg, workers) as transfers:
        def one(s: ResultSet) -> Outcome:
            return pull_set(cfg, folder, s, tracker, transfers, on_log, on_progress, max_bytes, now)

        with ThreadPoolExecutor(max_workers=min(SET_WORKERS, len(plan.todo)), thread_name_prefix="set") as pool:
            try:
                report.outcomes += list(pool.map(one, plan.todo))
            except KeyboardInterrupt:
                transfers.cancel.set()  # running downloads stop at their next block; their sets become failed
                raise
    report.outcomes.sort(key=lambda o: o.id)
    return report


def _outcome(s: ResultSet, status: str, reason: str = "", **extra: Any) -> Outcome:
    return Outcome(s.id, s.kind, status, reason, len(s.objects), s.size, generation=s.generation, **extra)


def _marker_note(cfg: Config, s: ResultSet) -> str:
    """'(40 of 301 files)' from the push's start marker, when it can be read."""
    try:
        import json

        data = json.loads(storage.download_bytes(cfg, s.marker.name) or b"{}") if s.marker else {}
        return f" ({len(s.objects)} of {int(data['files'])} files)" if "files" in data else ""
    except Exception:  # only a detail of a message
        return ""


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
    """Poll and pull every `interval` seconds until Ctrl+C (or `max_polls`).

    A failing poll (an outage, a 503 storm, a full disk) is one log line, then the next poll waits
    twice as long, up to WATCH_BACKOFF_MAX_S; a good poll returns to `interval`. Only bad input
    (UsageError) and a refusal stop it. Sets that failed are retried with their own backoff.
    """
    pull_options.setdefault("honour_backoff", True)
    reports: list[Report] = []
    polls, delay = 0, interval
    while True:
        try:
            report = pull(cfg, folder, on_log=on_log, **pull_options)
            reports.append(report)
            on_report(report)
            delay = interval
        except (UsageError, Refused):
            raise
        except Exception as exc:
            text = str(exc) if isinstance(exc, OpsError) else f"{type(exc).__name__}: {exc}"
            on_log(f"poll failed: {text.splitlines()[0][:300] if text else type(exc).__name__}; "
                   f"trying again in {delay:g} s")
            wait_s, delay = delay, min(delay * 2, max(interval, WATCH_BACKOFF_MAX_S))
        else:
            wait_s = delay
        polls += 1
        if max_polls is not None and polls >= max_polls:
            return reports
        sleep(wait_s)
