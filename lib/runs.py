"""`ops-hpc runs`: every run this bucket or this PC knows, newest first, with its VMs, models, cost and results.

Where each fact comes from (the bucket is the source of truth, so a second PC, or this one after it was
off, sees the same list):

    _status/RUN/VM.txt     what each run-staged VM last said (per-model states, started, updated)
    _runs/RUN/VM.json      what the launch recorded: machine type, zone, spot, launch time, launching host
                           (written by lib/runstaged/launch.py and lib/runjobs.py; nothing secret)
    RUN/MODEL.zip          results still waiting in the bucket
    the VMs                which VMs of a run exist now (labels ops-hpc-run), asked only when a VM of a
                           listed run has not said it finished (importing the Compute client takes seconds)
    session_state.json     this PC's history of the VMs it created (40 days): runs whose bucket
                           bookkeeping was tidied away are still listed from here
    download_state.sqlite  which results this PC pulled and verified (results folder)

`gather` does the reading (status files in parallel; the run id's timestamp orders and filters runs
before anything is downloaded); lib/runrules.py's `summarize` turns one run's facts into its row.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lib.config import Config
from lib.log import Log, quiet
from lib.runrules import FINAL, RunFacts, needs_vm_list, run_time, summarize

RECORDS = "_runs"


# -- reading ---------------------------------------------------------------------------------------------


def record_vm(cfg: Config, run_id: str, vm: str, *, on_log: Log = quiet, **facts: Any) -> None:
    """Write (or update) `_runs/RUN/VM.json`: the launch's facts a later `runs` needs once the VM is gone.

    Machine type, zone, spot, launch time, host, models, hourly list price, and for `make run` its jobs'
    states: nothing secret. A failure is one log line: the record is for listing, never worth a run.
    """
    from lib import storage

    name = f"{RECORDS}/{run_id}/{vm}.json"
    try:
        old = json.loads(storage.download_bytes(cfg, name) or b"{}")
        record = {"format": 1, "run_id": run_id, "vm": vm, "host": socket.gethostname(), **old, **facts}
        storage.upload_bytes(cfg, name, json.dumps(record, indent=1, sort_keys=True).encode(),
                             content_type="application/json")
    except Exception as exc:  # listing runs is a convenience; the run goes on
        on_log(f"could not write the run record gs://{cfg.bucket_name}/{name}: {exc}")


def gather(cfg: Config, *, results_dir: Path | None = None, since: float | None = None, limit: int | None = None,
           now: float | None = None, workers: int = 16) -> list[RunFacts]:
    """The facts of every run known from the bucket and this PC, newest first (filtered before downloading)."""
    from lib import storage
    from lib.runstatus import parse_status

    now = time.time() if now is None else now
    runs: dict[str, RunFacts] = {}

    def run(run_id: str, source: str) -> RunFacts:
        f = runs.setdefault(run_id, RunFacts(run_id))
        f.sources.add(source)
        return f

    wanted: list[tuple[str, str]] = []  # (object, kind) to download
    for blob in storage.list_blobs(cfg, "_status/"):
        parts = blob.name.split("/")
        if len(parts) == 3 and parts[1] and parts[2].endswith(".txt"):
            run(parts[1], "bucket")
            wanted.append((blob.name, "status"))
    for blob in storage.list_blobs(cfg, f"{RECORDS}/"):
        parts = blob.name.split("/")
        if len(parts) == 3 and parts[1] and parts[2].endswith(".json"):
            run(parts[1], "bucket")
            wanted.append((blob.name, "record"))
    for blob in storage.list_blobs(cfg, "run-"):
        run_id, _, rest = blob.name.partition("/")
        if rest.endswith(".zip") and "/" not in rest:
            run(run_id, "bucket").in_bucket.add(rest[:-4])
    _local_history(cfg, run)
    folder = Path(results_dir or cfg.results_dir)
    _downloads(folder, run)
    order = sorted(runs, key=lambda r: (run_time(r) or 0.0, r), reverse=True)
    if since is not None:
        order = [r for r in order if (run_time(r) or now) >= since]
    order = order[:limit] if limit else order
    keep = set(order)
    wanted = [(name, kind) for name, kind in wanted if name.split("/")[1] in keep]

    def fetch(item: tuple[str, str]) -> tuple[str, str, bytes | None]:
        return item[0], item[1], storage.download_bytes(cfg, item[0])

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(wanted) or 1))) as pool:
        for name, kind, raw in pool.map(fetch, wanted):
            if raw is None:
                continue
            _, run_id, leaf = name.split("/")
            text = raw.decode("utf-8", "replace")
            if kind == "status":
                runs[run_id].statuses[leaf[:-4]] = parse_status(text)
            else:
                try:
                    runs[run_id].records[leaf[:-5]] = {**runs[run_id].records.get(leaf[:-5], {}), **json.loads(text)}
                except (ValueError, TypeError):  # not a JSON object: that record says nothing
                    continue
    unsure = [runs[r] for r in order if needs_vm_list(runs[r])]  # the others' VMs all said they finished
    alive = _alive(cfg) if unsure else None
    for run_id in order:
        f = runs[run_id]
        f.alive = None if alive is None or f not in unsure else alive.get(run_id, {})
        _manifest_states(folder, f)
    return [runs[r] for r in order]


def _local_history(cfg: Config, run: Any) -> None:
    """Runs this PC launched (session state's 40-day VM history and its live entries)."""
    from lib.state import SessionState

    try:
        state = SessionState(cfg)
        history, live = state.history(), state.vms()
    except Exception:  # a corrupt state file hides only this PC's memory of runs; the bucket still answers
        return
    for name, h in list(history.items()) + list(live.items()):
        run_id = h.get("run_id") or ""
        if not run_id or h.get("kind") not in ("analysis", None) or run_time(run_id) is None:
            continue
        rec = run(run_id, "this PC").records.setdefault(name, {})
        for key in ("machine_type", "spot", "zone"):
            if h.get(key) not in (None, "") and key not in rec:
                rec[key] = h[key]
        if h.get("created") and "launched" not in rec:
            rec["launched"] = float(h["created"])


def _downloads(folder: Path, run: Any) -> None:
    """What this PC pulled: the results folder's download state (read only; never created here)."""
    from lib.downloads import STATE_FILE, Tracker

    if not (folder / STATE_FILE).is_file():
        return
    tracker = Tracker(folder)
    try:
        sets = tracker.sets()
    except Exception:  # an unreadable state says nothing about what was pulled
        return
    finally:
        tracker.close()
    for set_id, entry in sets.items():
        run_id, _, model = set_id.partition("/")
        if model and "/" not in model and run_time(run_id) is not None:
            run(run_id, "this PC").pulled[model] = entry.get("status", "")


def _manifest_states(folder: Path, f: RunFacts) -> None:
    """The state each pulled model's MANIFEST.json records (the only record left once the bucket is tidied)."""
    for model, status in f.pulled.items():
        if status not in ("downloaded", "cleaned"):
            continue
        try:
            state = json.loads((folder / f.run_id / model / "MANIFEST.json").read_text(encoding="utf-8")).get("state")
        except (OSError, ValueError, AttributeError):
            continue
        if state in FINAL:
            f.pulled_states[model] = state


def _alive(cfg: Config) -> dict[str, dict[str, str]] | None:
    """run id -> {VM: GCE status} of the VMs that exist, in every zone (one aggregated list: a failover or
    another PC's zone may have put them anywhere)."""
    from lib import compute

    out: dict[str, dict[str, str]] = {}
    try:
        for vm in compute.list_vms_in_zones(cfg):
            if vm.run_id and vm.status not in ("TERMINATED", "STOPPED"):
                out.setdefault(vm.run_id, {})[vm.name] = vm.status
    except Exception:  # no Compute access (a PC with only storage rights): VMs' liveness is unknown
        return None
    return out


def list_runs(cfg: Config, *, results_dir: Path | None = None, since: float | None = None, limit: int | None = None,
              now: float | None = None) -> list[dict[str, Any]]:
    """Every run, newest first, as the rows `ops-hpc runs` prints (or --json gives)."""
    from lib import clients, pricing

    cfg = clients.resolve(cfg)
    now = time.time() if now is None else now
    folder = Path(results_dir or cfg.results_dir)

    def hourly(machine_type: str, spot: bool) -> float | None:
        try:
            return pricing.vm_hourly(cfg, machine_type, spot=spot, disk_gb=cfg.disk_size_gb)
        except Exception:  # an unpriced machine type leaves that VM's cost unknown
            return None

    facts = gather(cfg, results_dir=folder, since=since, limit=limit, now=now)
    return [summarize(f, now=now, hourly=hourly, results_dir=str(folder)) for f in facts]

