"""The status-file protocol of run-staged VMs: what `_status/RUN_ID/VM.txt` says and how to read it.

The writer is vm-scripts/run_analysis.sh (`status_text`); the readers are the run-staged follower,
`make log` (lib/runlog.py) and anything else that asks "where is that run?". Status files are
`key=value` lines:

    format=1  run_id=  vm=  state=booting|running|done|error|preempted|upload_failed|self_delete_refused
    models=N  current=i  current_model=NAME  current_timeout_s=  started=  updated=  last_upload=EPOCH
    cores=N  cores_busy=N  running=NAME,NAME   (a packed VM runs several models at once: every one is here;
                                               current=i counts the models started, current_model is one of them)
    stranded=NAME,NAME   (results whose upload failed; their zips wait on the VM's disk under WORK)
    work=/opt/ops-hpc/work/RUN_ID   (where a stranded result waits)
    model.NAME=pending|running|uploading|ok|failed|timeout|interrupted|upload_failed [SECONDS]

`_status/RUN_ID.txt` and `_status/latest.txt` repeat the last VM's file, so `latest.txt` names the
newest run.
"""

from __future__ import annotations

from typing import Any

from lib import storage
from lib.config import Config

FINAL = ("ok", "failed", "timeout")  # a model with one of these has a result (in the bucket or pulled)
SELF_DELETE_REFUSED = "self_delete_refused"  # the VM finished but may not delete itself: it waits for the PC
VM_DONE = ("done", "error", "upload_failed", SELF_DELETE_REFUSED)  # ran its last model; deletes itself (or is kept)
UNFINISHED = ("pending", "running", "uploading", "interrupted")  # a model that still needs a VM


def parse_status(text: str) -> dict[str, Any]:
    """A status file as a dict of its keys; `per_model` maps each model to {"state", "seconds"}."""
    out: dict[str, Any] = {"per_model": {}}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key.startswith("model."):
            state, _, seconds = value.strip().partition(" ")
            try:
                secs = float(seconds) if seconds else None
            except ValueError:
                secs = None
            out["per_model"][key[6:]] = {"state": state, "seconds": secs}
        else:
            out[key.strip()] = value.strip()
    return out


def stranded(status: dict[str, Any]) -> list[str]:
    """Models whose result waits on the VM's disk because its upload failed."""
    named = [m for m in (status.get("stranded") or "").split(",") if m]
    per_model = [m for m, i in status.get("per_model", {}).items() if i["state"] == "upload_failed"]
    return sorted(set(named) | set(per_model))


def running_models(status: dict[str, Any]) -> list[str]:
    """Every model a VM runs now (a packed VM runs several; older VMs name one current_model)."""
    named = [m for m in (status.get("running") or "").split(",") if m]
    per_model = [m for m, i in status.get("per_model", {}).items() if i["state"] == "running"]
    out = list(dict.fromkeys(named + per_model))
    cur = status.get("current_model")
    return out or ([cur] if cur and status.get("state") == "running" else [])


def unfinished(status: dict[str, Any]) -> list[str]:
    """Models of a VM's shard that have no result yet (what a re-run must run again)."""
    return [m for m, i in status.get("per_model", {}).items() if i["state"] in UNFINISHED]


def read_statuses(cfg: Config, run_id: str, cache: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every VM's status of a run, by VM name; `cache` (generation -> parsed) avoids re-downloading unchanged files."""
    cache = {} if cache is None else cache
    out = {}
    for blob in storage.list_blobs(cfg, f"_status/{run_id}/"):
        vm = blob.name.rsplit("/", 1)[-1].removesuffix(".txt")
        key = f"{blob.name}#{blob.generation}"
        if key not in cache:
            raw = storage.download_bytes(cfg, blob.name)
            if raw is None:
                continue
            cache[key] = parse_status(raw.decode("utf-8", "replace"))
        out[vm] = cache[key]
    return out


def latest_run_id(cfg: Config) -> str | None:
    """The run `_status/latest.txt` names (the newest status any VM wrote), or None."""
    raw = storage.download_bytes(cfg, "_status/latest.txt")
    return parse_status(raw.decode("utf-8", "replace")).get("run_id") if raw else None
