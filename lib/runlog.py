"""The `log` command: where a run-staged run is, and the tail of its log.

Reads only the bucket (`_status/` and `_logs/`), so it works from any PC, while the run goes on or after
it ended, with the VMs already gone. Default run: the one `_status/latest.txt` names. `follow` (`log -f`)
prints the logs as they grow until the run is over. A preempted VM is
shown with its unfinished models (and the command that reruns them); a VM whose result upload failed is
shown with the stranded results and how they are being rescued.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from lib import storage
from lib.config import Config
from lib.errors import Refused
from lib.log import Log, quiet
from lib.runstatus import FINAL, VM_DONE, latest_run_id, read_statuses, running_models, stranded, unfinished


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


OVERLAP = 64  # bytes re-read before the new ones, to tell a grown log from a replaced one


def run_over(statuses: dict[str, dict[str, Any]], alive: set[str] | None) -> bool:
    """Will nothing more be written to the run's logs? Pure (table-tested).

    Over when every VM that reported has finished (done, error, upload_failed, preempted) and no VM
    without a status exists (a relaunch still booting), or when the run's VMs are all gone whatever
    their last status said (killed hard). `alive` None: the VMs could not be listed; statuses decide.
    """
    if not statuses:
        return False
    finished = all(s.get("state") in VM_DONE + ("preempted",) for s in statuses.values())
    if alive is None:
        return finished
    if not alive:
        return True
    return finished and alive <= set(statuses)


def _alive(cfg: Config, run_id: str) -> set[str] | None:
    from lib import compute

    try:
        return {v.name for v in compute.list_vms(cfg) if v.run_id == run_id and v.status not in ("TERMINATED", "STOPPED")}
    except Exception:  # without the VM list the status files alone say when the run is over
        return None


def follow(cfg: Config, run_id: str | None = None, model: str | None = None, *, on_line: Log,
           on_event: Log = quiet, poll: float = 1.0, vm_check_s: float = 5.0,
           sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Print a run's logs as they grow in `_logs/RUN/` until the run is over: one model, or all as `MODEL| line`.

    Each poll lists the run's logs (one call: sizes) and reads only the bytes past what was shown, plus
    OVERLAP bytes before them (ranged reads), so a long log costs nothing per poll; an incomplete last
    line waits for its end. A log whose overlap differs (or that shrank) was replaced (a relaunched
    model starts over) and is read again from its start.
    Nothing is changed anywhere: Ctrl+C (KeyboardInterrupt, exit 130) leaves the run as it is.
    Returns {"run_id", "models": {model: state}, "bytes": shown}.
    """
    from lib import clients

    cfg = clients.resolve(cfg)
    run_id = run_id or latest_run_id(cfg)
    if not run_id:
        raise Refused(f"no run-staged status in gs://{cfg.bucket_name}/_status/: nothing has run yet")
    offsets: dict[str, int] = {}
    tails: dict[str, bytes] = {}  # the last bytes shown of each log: a read overlaps them to notice a new log
    partial: dict[str, bytes] = {}
    states: dict[str, str] = {}
    cache: dict[str, Any] = {}
    alive: set[str] | None = None
    checked = -math.inf
    shown = 0

    def emit(name: str, data: bytes, final: bool = False) -> None:
        nonlocal shown
        buf = partial.pop(name, b"") + data
        lines = buf.split(b"\n")
        rest = lines.pop()
        if rest and not final:
            partial[name] = rest
        elif rest:
            lines.append(rest)
        for raw in lines:
            text = raw.decode("utf-8", "replace").rstrip("\r")
            on_line(text if model else f"{name}| {text}")
            shown += len(raw) + 1

    def read_logs(final: bool = False) -> None:
        for blob in storage.list_blobs(cfg, f"_logs/{run_id}/"):
            leaf = blob.name.rsplit("/", 1)[-1]
            name = leaf[:-4]
            if not leaf.endswith(".log") or leaf.startswith("_") or (model and name != model):
                continue
            size, offset, tail = int(blob.size or 0), offsets.get(name, 0), tails.get(name, b"")
            if size == offset:
                continue
            data = storage.download_range(cfg, blob.name, offset - len(tail), size - 1) if size > offset else b""
            if data is None:
                continue
            if not data.startswith(tail):  # shorter, or different where it overlaps: a new log (a rerun)
                on_event(f"{name}: its log started over (the model is running again)")
                data, partial[name] = storage.download_range(cfg, blob.name, 0, size - 1) or b"", b""
                tail = b""
            data = data[len(tail):]
            offsets[name] = size
            tails[name] = (tail + data)[-OVERLAP:]
            emit(name, data)
        if final:
            for name in list(partial):
                emit(name, b"", final=True)

    while True:
        statuses = read_statuses(cfg, run_id, cache)
        if time.monotonic() - checked >= vm_check_s:
            checked, alive = time.monotonic(), _alive(cfg, run_id)
        if not statuses and alive is not None and not alive:
            raise Refused(f"no status for run {run_id} in gs://{cfg.bucket_name}/_status/{run_id}/ and no VM of it")
        models = {n: i["state"] for s in statuses.values() for n, i in s.get("per_model", {}).items()}
        if model and models and model not in models:
            raise Refused(f"run {run_id} has no model {model!r}: its models are {', '.join(sorted(models))}")
        for name, state in sorted(models.items()):
            if states.get(name) != state and (not model or name == model):
                if name in states or state != "pending":
                    on_event(f"{name}: {state}")
                states[name] = state
        over = run_over(statuses, alive)
        if over and alive:  # finished VMs delete themselves: one more look, so their last upload is read
            alive = _alive(cfg, run_id)
        read_logs(final=over)
        if over:
            return {"run_id": run_id, "models": states, "bytes": shown}
        sleep(poll)
