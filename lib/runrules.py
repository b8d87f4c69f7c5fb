"""The rules of `ops-hpc runs`, pure: one run's facts (status files, launch records, live VMs, downloads) -> its row.

Kept apart from the reading (lib/runs.py) so the rules are table-tested without a cloud
(tests/unit/test_runs_rules.py): what state a model is in, what a VM shows, what a run cost at list
prices, which results this PC pulled and verified.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lib.errors import UsageError

FINAL = ("ok", "failed", "timeout")
VM_FINISHED = ("done", "error", "upload_failed", "preempted")
JOB_STATES = {"finished": "ok", "failed": "failed", "timeout": "timeout"}  # `make run` jobs -> model states
_STAMP = re.compile(r"(\d{8})-(\d{6})")
_SINCE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def run_time(run_id: str) -> float | None:
    """The launch time a run id carries (run-YYYYMMDD-HHMMSS-xxxx, UTC), as epoch seconds; None for other ids."""
    m = _STAMP.search(run_id)
    if not m:
        return None
    try:
        return dt.datetime.strptime("".join(m.groups()), "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        return None


def parse_since(text: str, now: float) -> float:
    """--since: `7d`, `12h`, `30m`, `2w`, or a date / time (`2026-12-01`, `2026-12-01T08:00`, UTC)."""
    text = text.strip()
    m = _SINCE.fullmatch(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise UsageError(f"--since {text!r}: give an age like 7d, 12h, 30m or a date like 2026-12-01") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()


def iso_epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RunFacts:
    """Everything known about one run, before it is judged."""

    run_id: str
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # VM -> parsed status file
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # VM -> _runs/RUN/VM.json (or local history)
    alive: dict[str, str] | None = field(default_factory=dict)  # VM -> GCE status of VMs that exist; None: unknown
    in_bucket: set[str] = field(default_factory=set)  # models whose RUN/MODEL.zip waits in the bucket
    pulled: dict[str, str] = field(default_factory=dict)  # model -> download state status on this PC
    pulled_states: dict[str, str] = field(default_factory=dict)  # model -> state its pulled MANIFEST.json says
    sources: set[str] = field(default_factory=set)


def model_states(f: RunFacts) -> dict[str, str]:
    """Each model's state: ok / failed / timeout (it has a result), running (a VM still works on it), lost.

    The newest status file wins per model, a finished state over an unfinished one (a relaunch that
    finished a preempted VM's model); a pulled manifest has the last word. `make run` jobs come from
    their launch record. A model without a result is running while a VM of its run exists (or nobody
    can tell from what its VMs last said), lost once none does.
    """
    states: dict[str, str] = {}
    for _vm, status in sorted(f.statuses.items(), key=lambda kv: kv[1].get("updated", "")):
        for name, info in status.get("per_model", {}).items():
            if name not in states or states[name] not in FINAL:
                states[name] = info["state"]
    for record in f.records.values():
        for name, state in (record.get("jobs") or {}).items():
            if states.get(name) not in FINAL:
                states[name] = JOB_STATES.get(state, state)
        for name in record.get("models") or []:
            states.setdefault(name, "pending")
    states.update(f.pulled_states)
    if f.alive is None:  # nobody listed the VMs: what they last said decides
        working = any(reported(f, vm) not in VM_FINISHED for vm in set(f.statuses) | set(f.records))
    else:
        working = any(not _vm_finished(f, vm) for vm in f.alive)
    return {name: s if s in FINAL else ("running" if working else "lost") for name, s in sorted(states.items())}


def reported(f: RunFacts, vm: str) -> str:
    """A VM's last word: its status file's state, else its launch record's (`make run` writes done at the end)."""
    return str((f.statuses.get(vm) or {}).get("state") or (f.records.get(vm) or {}).get("state") or "")


def needs_vm_list(f: RunFacts) -> bool:
    """Only a run with a VM that has not said it finished needs the VM list (its import alone takes seconds)."""
    return any(reported(f, vm) not in VM_FINISHED for vm in set(f.statuses) | set(f.records))


def _vm_finished(f: RunFacts, vm: str) -> bool:
    """An existing VM whose status says it finished (it is deleting itself) no longer works on anything."""
    return (f.statuses.get(vm) or {}).get("state") in VM_FINISHED


def vm_rows(f: RunFacts) -> list[dict[str, Any]]:
    """One row per VM of the run: its last reported state, whether it exists now, what it is and costs per hour."""
    rows = []
    for name in sorted(set(f.statuses) | set(f.records) | set(f.alive or {})):
        status, record = f.statuses.get(name) or {}, f.records.get(name) or {}
        reported = status.get("state") or record.get("state") or ""
        if f.alive is None:
            exists: bool | None = None
            shown = reported or "unknown"
        else:
            exists = name in f.alive
            shown = (reported or "up") if exists else (f"{reported}, gone" if reported not in ("", "done") else
                                                      "deleted" if reported == "done" else "gone")
        rows.append({"name": name, "state": shown, "exists": exists, "reported": reported,
                     "machine_type": record.get("machine_type", ""), "spot": record.get("spot"),
                     "zone": record.get("zone", ""), "host": record.get("host", ""),
                     "launched": _num(record.get("launched")), "hourly": _num(record.get("hourly")),
                     "last_seen": _last_seen(status, record)})
    return rows


def _num(value: Any) -> float | None:
    """A number from a record written by any version (or by hand): anything else is unknown."""
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _last_seen(status: Mapping[str, Any], record: Mapping[str, Any]) -> float | None:
    """When the VM was last known to work: its last status write, or the end its launcher recorded."""
    times = [t for t in (iso_epoch(status.get("updated")), _num(record.get("ended"))) if t]
    return max(times) if times else None


def summarize(f: RunFacts, *, now: float, hourly: Any = None, results_dir: str = "") -> dict[str, Any]:
    """One run's row: started, VMs, model counts, duration, cost at list prices, results pulled here.

    `hourly(machine_type, spot)` prices a VM that has no recorded rate (None: unpriced). A VM's cost
    runs from its launch to its last status (or now while it exists).
    """
    states = model_states(f)
    counts = {k: 0 for k in ("ok", "failed", "timeout", "running", "lost")}
    for s in states.values():
        counts[s] += 1
    vms = vm_rows(f)
    starts = [t for t in ([v["launched"] for v in vms] + [iso_epoch(s.get("started")) for s in f.statuses.values()])
              if t]
    started = min(starts) if starts else run_time(f.run_id)
    running = counts["running"] > 0 or any(v["exists"] and v["reported"] not in VM_FINISHED for v in vms)
    seen = [v["last_seen"] for v in vms if v["last_seen"]]
    ended = None if running else (max(seen) if seen else None)
    cost, priced = 0.0, bool(vms)
    for v in vms:
        rate = v["hourly"] if v["hourly"] is not None else (hourly(v["machine_type"], bool(v["spot"]))
                                                            if hourly and v["machine_type"] else None)
        until = now if v["exists"] else v["last_seen"]
        if rate is None or not v["launched"] or until is None:
            priced = False
            continue
        cost += float(rate) * max(0.0, until - v["launched"]) / 3600
    results = [m for m, s in states.items() if s in FINAL]
    here = [m for m in results if f.pulled.get(m) in ("downloaded", "cleaned")]
    elsewhere = [m for m in results if m not in here and m not in f.in_bucket and m not in f.pulled]
    state = ("running" if running else "lost" if counts["lost"] else "failed" if counts["failed"] + counts["timeout"]
             else "ok" if states else "unknown")
    return {
        "run_id": f.run_id, "kind": "run" if any(r.get("kind") == "run" for r in f.records.values()) else "run-staged",
        "state": state, "started": _iso(started), "started_epoch": started, "ended": _iso(ended),
        "duration_s": None if started is None else round((ended or now) - started, 1),
        "vms": vms, "models": counts, "model_states": states,
        "cost_usd": round(cost, 6) if vms else None, "cost_complete": priced, "cost_basis": "list prices",
        "results": {"total": len(results), "pulled_verified": len(here), "in_bucket": len(set(results) & f.in_bucket),
                    "elsewhere": len(elsewhere), "folder": results_dir},
        "sources": sorted(f.sources),
    }


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _models(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "-"


def _vms(rows: list[dict[str, Any]]) -> str:
    by: dict[str, int] = {}
    for v in rows:
        by[v["state"]] = by.get(v["state"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in by.items()) or "-"


def _results(r: Mapping[str, Any]) -> str:
    res = r["results"]
    if not res["total"]:
        return "-"
    parts = [f"{res['pulled_verified']}/{res['total']} pulled+verified here"]
    if res["in_bucket"]:
        parts.append(f"{res['in_bucket']} in bucket")
    if res["elsewhere"]:
        parts.append(f"{res['elsewhere']} pulled elsewhere")
    return ", ".join(parts)


def format_runs(rows: list[dict[str, Any]], note: str = "") -> str:
    """The rows as a fixed-width table, newest first, with the price note under it."""
    if not rows:
        return "no runs known: nothing in the bucket's _status/ or _runs/, and none in this PC's session history"
    head = ("run", "started (UTC)", "state", "VMs", "models", "duration", "cost*", "results")
    body = [(r["run_id"], (r["started"] or "-").replace("T", " ")[:16], r["state"], _vms(r["vms"]),
             _models(r["models"]), _span(r["duration_s"]),
             "-" if r["cost_usd"] is None else f"${r['cost_usd']:.{4 if r['cost_usd'] >= 0.001 else 6}f}"
             + ("" if r["cost_complete"] else "+"),
             _results(r)) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in body]
    lines.append("* cost at list prices, from each VM's launch to its last status (or now); '+' means a VM could "
                 "not be priced" + (f"; {note}" if note else ""))
    return "\n".join(lines)
