"""The `log` command: where a run-staged run is, and the tail of its log.

Reads only the bucket (`_status/` and `_logs/`), so it works from any PC, while the run goes on or after
it ended, with the VMs already gone. Default run: the one `_status/latest.txt` names. A preempted VM is
shown with its unfinished models (and the command that reruns them); a VM whose result upload failed is
shown with the stranded results and how they are being rescued.
"""

from __future__ import annotations

from typing import Any

from lib import storage
from lib.config import Config
from lib.errors import Refused
from lib.runstatus import FINAL, latest_run_id, read_statuses, running_models, stranded, unfinished


def run_log(cfg: Config, run_id: str | None = None, *, tail: int = 20) -> dict[str, Any]:
    """{"run_id", "vms": {vm: status}, "models": {model: {"state", "seconds", "vm"}}, "log_model", "tail": [lines]}."""
    run_id = run_id or latest_run_id(cfg)
    if not run_id:
        raise Refused(f"no run-staged status in gs://{cfg.bucket_name}/_status/: nothing has run yet")
    vms = read_statuses(cfg, run_id)
    if not vms:
        raise Refused(f"no status for run {run_id} in gs://{cfg.bucket_name}/_status/{run_id}/")
    models: dict[str, dict[str, Any]] = {}
    for vm, status in sorted(vms.items(), key=lambda kv: kv[1].get("updated", "")):
        for name, info in status.get("per_model", {}).items():
            if name not in models or info["state"] != "pending":
                models[name] = {**info, "vm": vm}
    current = [m for s in vms.values() if s.get("state") == "running" for m in running_models(s)]
    log_model = current[0] if current else None
    if log_model is None:
        finished = [n for n, i in models.items() if i["state"] not in ("pending",)]
        log_model = finished[-1] if finished else None
    lines: list[str] = []
    if log_model:
        raw = storage.download_bytes(cfg, f"_logs/{run_id}/{log_model}.log")
        if raw is not None:
            lines = raw.decode("utf-8", "replace").splitlines()[-tail:] if tail > 0 else []
    return {"run_id": run_id, "vms": vms, "models": models, "log_model": log_model, "tail": lines, "running": current}


def format_log(info: dict[str, Any]) -> str:
    """Human-readable progress: one line per VM, one per model, then the log tail."""
    out = [f"run {info['run_id']}"]
    for vm, s in sorted(info["vms"].items()):
        running = running_models(s) if s.get("state") == "running" else []
        cores = f", {s.get('cores_busy')}/{s.get('cores')} cores busy" if s.get("cores") else ""
        out.append(f"  {vm}: {s.get('state', '?')}" + (f", started {s.get('current')}/{s.get('models')}{cores}, "
                                                       f"running {', '.join(running)}" if running else "")
                   + f"  (updated {s.get('updated', '?')})")
        if s.get("state") == "preempted":
            left = unfinished(s)
            out.append(f"    preempted before it finished: {', '.join(left) or 'none'}"
                       + (f"; rerun them with `make run-staged RERUN={info['run_id']}`" if left else ""))
        if stranded(s):
            out.append(f"    stranded result(s) {', '.join(stranded(s))} on the VM under {s.get('work') or '?'}: the VM "
                       f"retries the upload until its max run end; `make emergency NAME={vm}` copies them now")
        if s.get("error"):
            out.append(f"    error: {s['error']}")
    done = sum(1 for i in info["models"].values() if i["state"] in FINAL)
    out.append(f"  models: {done}/{len(info['models'])} finished")
    for name, i in info["models"].items():
        secs = f" {i['seconds']:.1f} s" if i.get("seconds") is not None else ""
        out.append(f"    {name:<24} {i['state']}{secs}  [{i['vm']}]")
    if info["log_model"]:
        out.append(f"--- last {len(info['tail'])} line(s) of {info['log_model']}.log ---")
        out += info["tail"]
    return "\n".join(out)
