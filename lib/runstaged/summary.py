"""The end-of-run summary: one row per model from its pulled MANIFEST.json, and the table `--wait` prints."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from lib.runstaged.follow import Followed
from lib.runstaged.launch import VmRun
from lib.stage import StagedModel
from lib.units import human


def summarize(run_id: str, models: list[StagedModel], followed: Followed, results_dir: Path) -> list[dict[str, Any]]:
    """One row per model from its pulled MANIFEST.json: state, run time, files, size, cost (VM rate x run time)."""
    from lib import manifest

    by_model: dict[str, VmRun] = {}
    for run in followed.vms:
        for name in run.models:
            by_model[name] = run  # the last VM that had it (relaunches come later in the list)
    rows = []
    for m in models:
        folder = Path(results_dir) / run_id / m.name
        man = None
        with contextlib.suppress(Exception):
            man = manifest.read(folder)
        vm = by_model.get(m.name)
        seconds = float(man["seconds"]) if man and man.get("seconds") is not None else None
        rate = vm.hourly if vm else None
        rows.append({
            "model": m.name, "vm": vm.name if vm else "", "state": (man or {}).get("state") or
            ("lost" if m.name in followed.lost else "?"),
            "seconds": seconds, "files": len(man["files"]) if man else 0,
            "bytes": sum(f["size"] for f in man["files"]) if man else 0,
            "cost": round(rate * seconds / 3600, 4) if rate is not None and seconds is not None else None,
            "folder": str(folder) if man else "", "note": followed.lost.get(m.name, "") or _retried(man, m),
            "attempts": int((man or {}).get("attempts") or 1),
        })
    return rows


def _retried(man: dict[str, Any] | None, model: StagedModel) -> str:
    """The note of a model its VM ran more than once (retries=N re-runs a failed model)."""
    attempts = int((man or {}).get("attempts") or 1)
    if attempts < 2:
        return ""
    return f"ran {attempts} times (retries={model.retries}: failed {attempts - 1} time(s), then {man.get('state')})" \
        if man else ""


def format_table(rows: list[dict[str, Any]], vms: list[VmRun] | None = None) -> str:
    """The summary as a fixed-width text table (plus the VMs' total cost when known)."""
    head = ("model", "state", "run time", "files", "size", "cost")
    body = [(r["model"], r["state"], f"{r['seconds']:.1f} s" if r["seconds"] is not None else "-", str(r["files"]),
             human(r["bytes"]), f"${r['cost']:.4f}" if r["cost"] is not None else "-") for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    for r in rows:
        if r["note"]:
            lines.append(f"{r['model']}: {r['note']}")
    if vms:
        total = 0.0
        known = True
        for vm in vms:
            if vm.hourly is None or not vm.created:
                known = False
                continue
            total += vm.hourly * max(0.0, (vm.gone_at or time.time()) - vm.created) / 3600
        if known:
            lines.append(f"VM cost: ${total:.4f} for {len(vms)} VM(s) from creation to deletion "
                         "(list prices; the models' costs above are their share of it)")
    return "\n".join(lines)
