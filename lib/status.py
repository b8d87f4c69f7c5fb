"""What runs and what it costs: the image, ops-hpc's VMs, the bucket, and (--usage) 30 days of uptime x prices.

Returns data; bin/status formats it. Costs are list prices from lib/prices.toml (or cfg.price_table),
always printed with the date they were taken.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from lib import clients, compute, errors, pricing, retry, storage
from lib.compute import Vm
from lib.config import Config
from lib.errors import OpsError
from lib.log import Log, quiet
from lib.reconcile import reconcile
from lib.state import SessionState

UPTIME = "compute.googleapis.com/instance/uptime"


def image_info(cfg: Config) -> dict[str, Any] | None:
    """Newest image of the analysis family, or None if there is none (yet)."""
    try:
        img = compute.resolve_image(cfg, "analysis")
    except errors.Missing:
        return None
    return {"family": cfg.image_family, "project": cfg.image_project_id, "name": img.name,
            "created": img.creation_timestamp, "disk_size_gb": int(img.disk_size_gb or 0),
            "archive_size_bytes": int(img.archive_size_bytes or 0), "status": img.status}


def vm_rows(cfg: Config, vms: list[Vm], *, now: float | None = None) -> list[dict[str, Any]]:
    """Each VM with uptime, minutes left before its expected end and before its max run duration, cost so far."""
    now = time.time() if now is None else now
    rows = []
    for vm in vms:
        running = vm.status == "RUNNING" and vm.last_start_epoch is not None
        uptime = max(0.0, now - vm.last_start_epoch) if running and vm.last_start_epoch is not None else 0.0
        hourly = pricing.hourly(cfg, vm.machine_type, spot=vm.spot)
        rows.append({
            "name": vm.name, "status": vm.status, "zone": vm.zone, "machine_type": vm.machine_type, "spot": vm.spot,
            "kind": vm.kind, "run_id": vm.run_id, "uptime_s": int(uptime),
            "left_expected_s": int(vm.expected_end - now) if vm.expected_end else None,
            "left_max_run_s": int(vm.max_run_end - now) if vm.max_run_end and running else None,
            "usd_per_hour": hourly, "cost_so_far_usd": None if hourly is None else round(hourly * uptime / 3600, 2),
        })
    return rows


def bucket_info(cfg: Config, *, now: float | None = None) -> dict[str, Any]:
    """Result sets waiting in the bucket, counted as `bin/pull --list` counts them (results.classify), with sizes
    and storage USD/month; objects under `_`-prefixed folders are not results but are stored (and billed) too."""
    from lib import results

    blobs = storage.list_blobs(cfg)
    total = sum(int(b.size or 0) for b in blobs)
    listing = results.classify([results.Obj.from_blob(b) for b in blobs])
    now = time.time() if now is None else now
    sets = []
    for s in listing.sets:
        state, why = results.decide(s, None, now)  # pending | deferred (uploading) | refused | incomplete
        sets.append({"name": s.id, "kind": s.kind, "objects": len(s.objects), "bytes": s.size,
                     "state": "pending" if state == "todo" else state, **({"why": why} if why else {})})
    return {"bucket": cfg.bucket_name, "result_sets": sets, "other_objects": len(listing.other),
            "total_bytes": total, "usd_per_month": round(pricing.storage_monthly(cfg, total), 4)}


def usage(cfg: Config, *, days: int = 30, now: float | None = None) -> dict[str, Any]:
    """Per-VM uptime over the last `days` from Monitoring's uptime metric, priced by machine type."""
    from google.cloud import monitoring_v3  # heavy: imported at first use, keeps --help fast

    cfg = clients.resolve(cfg)
    now = time.time() if now is None else now
    start = now - days * 86400
    client = clients.monitoring(cfg)
    request = monitoring_v3.ListTimeSeriesRequest(
        name=f"projects/{cfg.project}",
        filter=f'metric.type = "{UPTIME}"',
        interval=monitoring_v3.TimeInterval(start_time=dt.datetime.fromtimestamp(start, dt.timezone.utc),
                                            end_time=dt.datetime.fromtimestamp(now, dt.timezone.utc)),
        aggregation=monitoring_v3.Aggregation(alignment_period={"seconds": 86400},
                                              per_series_aligner=monitoring_v3.Aggregation.Aligner.ALIGN_SUM),
        view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
    )
    series = retry.listing(client.list_time_series, request=request)
    known: dict[str, dict[str, Any]] = {}
    try:
        known.update(SessionState(cfg).history())
    except OpsError:  # an unreadable state file: machine types of live VMs only
        pass
    for vm in compute.list_vms_in_zones(cfg, ours_only=False):  # the run id as launched (history) beats its label value
        known[vm.name] = {"run_id": vm.run_id, **known.get(vm.name, {}), "machine_type": vm.machine_type,
                          "spot": vm.spot}
    per_vm: dict[str, dict[str, Any]] = {}
    for ts in series:
        name = ts.metric.labels.get("instance_name", ts.resource.labels.get("instance_id", "?"))
        seconds = sum(p.value.double_value or p.value.int64_value for p in ts.points)
        info = known.get(name, {})
        # Monitoring's metadata says machine type and labels even when neither this PC nor Compute knows the VM
        system = dict(ts.metadata.system_labels or {}) if ts.metadata else {}
        labels = dict(ts.metadata.user_labels or {}) if ts.metadata else {}
        machine = info.get("machine_type") or str(system.get("machine_type") or "")
        run_id = info.get("run_id") or labels.get(compute.LABEL_RUN, "")
        row = per_vm.setdefault(name, {"name": name, "run_id": run_id, "machine_type": machine or "unknown",
                                       "spot": bool(info.get("spot")), "seconds": 0.0, "hours": 0.0,
                                       "cost_usd": None})
        row["seconds"] += seconds
    total = 0.0
    for row in per_vm.values():
        row["seconds"] = round(row["seconds"], 1)
        row["hours"] = round(row["seconds"] / 3600, 4)
        price = pricing.hourly(cfg, row["machine_type"], spot=row["spot"]) if row["machine_type"] != "unknown" else None
        if price is not None:
            row["cost_usd"] = round(price * row["seconds"] / 3600, 4)
            total += row["cost_usd"]
    vm_list = sorted(per_vm.values(), key=lambda r: r["name"])
    return {"days": days, "vms": vm_list, "runs": usage_by_run(vm_list), "total_usd": round(total, 2),
            "prices": pricing.note(cfg)}


def usage_by_run(vms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-VM usage rows added up per run (VMs without a run label under run_id ''); unpriced VMs are counted."""
    runs: dict[str, dict[str, Any]] = {}
    for row in vms:
        run = runs.setdefault(row.get("run_id", ""), {"run_id": row.get("run_id", ""), "vms": [], "seconds": 0.0,
                                                      "hours": 0.0, "cost_usd": 0.0, "unpriced_vms": 0})
        run["vms"].append(row["name"])
        run["seconds"] = round(run["seconds"] + row["seconds"], 1)
        run["hours"] = round(run["seconds"] / 3600, 4)
        if row["cost_usd"] is None:
            run["unpriced_vms"] += 1
        else:
            run["cost_usd"] = round(run["cost_usd"] + row["cost_usd"], 4)
    return sorted(runs.values(), key=lambda r: r["run_id"])


CSV_COLUMNS = ("level", "name", "run_id", "machine_type", "spot", "hours", "cost_usd", "note")


def usage_csv(u: dict[str, Any]) -> str:
    """`status --usage --csv`: one row per VM, per run and the total, for a spreadsheet."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in u["vms"]:
        writer.writerow(["vm", r["name"], r.get("run_id", ""), r["machine_type"], str(r["spot"]).lower(), r["hours"],
                         "" if r["cost_usd"] is None else r["cost_usd"], ""])
    for r in u.get("runs", []):
        note = f"{r['unpriced_vms']} VM(s) not in the price table" if r["unpriced_vms"] else ""
        writer.writerow(["run", r["run_id"], r["run_id"], "", "", r["hours"], r["cost_usd"], note])
    writer.writerow(["total", f"last {u['days']} days", "", "", "", round(sum(r["hours"] for r in u["vms"]), 4),
                     u["total_usd"], u["prices"]])
    return out.getvalue()


def quarantine_state(cfg: Config, *, on_warn: Log = quiet) -> str:
    """A corrupt session state file is moved aside with a timestamp (never deleted); the path, or ''."""
    try:
        moved = SessionState(cfg).quarantine()
    except OSError as exc:
        on_warn(f"warning: session state is unreadable and could not be moved aside: {exc}")
        return ""
    if moved is None:
        return ""
    on_warn(f"warning: session state {SessionState(cfg).path} was not valid JSON: moved aside to {moved} "
            "(kept for inspection); starting a new one, the VMs' labels say what runs")
    return str(moved)


def status(cfg: Config, *, with_usage: bool = False, on_log: Log = quiet, on_warn: Log = quiet,
           first_status_s: float | None = None) -> dict[str, Any]:
    """Everything `status` shows; sections that fail are reported as errors, not fatal (so the rest still shows).

    Runs reconcile, which can delete VMs (a dead guard's, or one that never reported): see lib/reconcile.py.
    """
    cfg = clients.resolve(cfg)
    out: dict[str, Any] = {"project": cfg.project, "zone": cfg.zone, "prices": pricing.note(cfg), "errors": []}
    out["state_moved_aside"] = quarantine_state(cfg, on_warn=on_warn)
    vms = compute.list_vms_in_zones(cfg, ours_only=False)  # every zone: a failover may have moved a VM
    rec = reconcile(cfg, on_log=on_log, on_warn=on_warn, vms=vms, first_status_s=first_status_s)
    out["reconcile"] = rec.to_dict()
    gone = set(rec.deleted)
    ours = [v for v in vms if v.ours and v.name not in gone]
    out["vms"] = vm_rows(cfg, ours)
    out["other_vms"] = sorted(v.name for v in vms if not v.ours)
    for key, fn in (("image", image_info), ("bucket", bucket_info)):
        try:
            out[key] = fn(cfg)
        except Exception as exc:  # a missing bucket must not hide the VMs that bill
            out[key] = None
            known = errors.explain(exc)
            if known is None:
                raise
            out["errors"].append(str(known) if known is not exc else f"{key}: {exc}")
    if with_usage:
        out["usage"] = usage(cfg)
    return out


def _dur(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    return f"{sign}{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_status(info: dict[str, Any]) -> list[str]:
    """Lines for a terminal."""
    lines = [f"project {info['project']}  zone {info['zone']}"]
    img = info.get("image")
    lines.append(f"image: {img['family']} -> {img['name']} created {img['created']}, {img['disk_size_gb']} GB disk, "
                 f"{img['archive_size_bytes'] / 1e9:.2f} GB stored" if img else "image: none yet (make build)")
    lines.append(f"VMs: {len(info['vms'])} ops-hpc" + (f", {len(info['other_vms'])} others (not ours, not shown)"
                                                       if info["other_vms"] else ""))
    for r in info["vms"]:
        cost = "?" if r["cost_so_far_usd"] is None else f"{r['cost_so_far_usd']:.2f} USD"
        where = f"  in {r['zone']}" if r.get("zone") and r["zone"] != info["zone"] else ""  # a failover moved it
        lines.append(f"  {r['name']}  {r['status']}{where}  {r['machine_type']}{' spot' if r['spot'] else ''}  "
                     f"up {_dur(r['uptime_s'])}  to expected end {_dur(r['left_expected_s'])}  "
                     f"to max run {_dur(r['left_max_run_s'])}  cost so far {cost}")
    b = info.get("bucket")
    if b:
        lines.append(f"bucket gs://{b['bucket']}: {len(b['result_sets'])} pending result set(s), "
                     f"{b['total_bytes'] / 1e6:.1f} MB, {b['usd_per_month']:.4f} USD/month")
        for s in b["result_sets"]:
            flag = {"incomplete": "  INCOMPLETE push, kept in GCS", "refused": "  REFUSED by pull"}.get(s.get("state"), "")
            lines.append(f"  {s['name']}  {s['objects']} object(s)  {s['bytes'] / 1e6:.1f} MB{flag}")
    u = info.get("usage")
    if u:
        lines.append(f"usage, last {u['days']} days (Monitoring uptime x price table): {u['total_usd']:.2f} USD")
        for r in u["vms"]:
            cost = "?" if r["cost_usd"] is None else f"{r['cost_usd']:.2f} USD"
            lines.append(f"  {r['name']}  {r['machine_type']}{' spot' if r['spot'] else ''}  {r['hours']:.2f} h  {cost}")
        if not u["vms"]:
            lines.append("  no uptime recorded")
        for r in u.get("runs", []):
            unpriced = f" (+{r['unpriced_vms']} VM(s) unpriced)" if r["unpriced_vms"] else ""
            lines.append(f"  run {r['run_id'] or '(no run)'}: {len(r['vms'])} VM(s), {r['hours']:.2f} h, "
                         f"{r['cost_usd']:.2f} USD{unpriced}")
    lines += [f"error: {e}" for e in info["errors"]]
    lines.append(info["prices"])
    return lines
