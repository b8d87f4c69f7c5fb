"""run-staged: stage a batch, launch self-deleting VMs that run it, and (optionally) follow them to the end.

    stage -> plan every VM (validated before anything is created) -> create each under a VMGuard
          -> wait until each VM writes its first status (it booted, read its metadata, reached the bucket)
          -> disarm: from here the VM runs on its own and deletes itself after its last upload
          -> with wait: follow _status/ and _logs/, pull each model's result as it lands (lib/results),
             relaunch a preempted spot VM's unfinished models, measure, summarise.

Without wait the PC may be switched off once the launch returns: results stay in the bucket until
`bin/pull` collects them. Fan-out (`vms` > 1) shards the models by timeout (lib/batches.shard_by_timeout);
each VM gets its shard in the `ops-hpc-models` metadata and writes `_status/RUN_ID/VM.txt`.

Status files are `key=value` lines (see vm-scripts/run_analysis.sh and README "run-staged"):
    format=1  run_id=  vm=  state=booting|running|done|error|preempted|upload_failed
    models=N  current=i  current_model=NAME  current_timeout_s=  started=  updated=  last_upload=EPOCH
    model.NAME=pending|running|uploading|ok|failed|timeout|interrupted|upload_failed [SECONDS]
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib import clients, compute, paths, retry, stage, storage
from lib.batches import parse_batch, shard_by_timeout
from lib.config import Config
from lib.errors import OpsError, UsageError
from lib.log import Log, quiet
from lib.units import human

FINAL = ("ok", "failed", "timeout")
VM_DONE = ("done", "error", "upload_failed")
LOCAL_IMAGE_LABEL = "ops-hpc-image"
BUILT_BY = "opensees-hpc built"  # BUILD_INFO line that build_opensees_full.sh writes; the build pipeline's image description


# ----------------------------------------------------------------------------- status files


def parse_status(text: str) -> dict[str, Any]:
    """A status file as a dict of its keys; `per_model` maps each model to {"state", "seconds"}."""
    out: dict[str, Any] = {"per_model": {}}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key.startswith("model."):
            state, _, seconds = value.strip().partition(" ")
            out["per_model"][key[6:]] = {"state": state, "seconds": float(seconds) if seconds else None}
        else:
            out[key.strip()] = value.strip()
    return out


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
    raw = storage.download_bytes(cfg, "_status/latest.txt")
    return parse_status(raw.decode("utf-8", "replace")).get("run_id") if raw else None


# ----------------------------------------------------------------------------- the local image


def ensure_local_image(cfg: Config, *, on_log: Log = quiet, boot_timeout: float = 120.0) -> str:
    """Name of an opensees-hpc image on the local cloud that has the `openseesmp` launcher, building one if needed.

    Uses issue 6's build pipeline (lib/build.py) when it exists; until then does the same steps itself: a VM
    from the HPC Rocky base whose startup script is vm-scripts/build_opensees_full.sh, wait for it, stop,
    image the disk into family opensees-hpc, delete the VM. Images from elsewhere in the family are not
    trusted blindly (a test may have made one without the launcher): ours carry the label ops-hpc-image.
    """
    cfg = clients.resolve(cfg)
    if not cfg.local:
        raise UsageError("ensure_local_image is for the local cloud; on GCP build the image with `make build`")
    images = clients.images(cfg)
    found = [i for i in retry.listing(images.list, project=cfg.project)
             if i.family == cfg.image_family and i.status == "READY" and not i.deprecated.state
             and (dict(i.labels).get(LOCAL_IMAGE_LABEL) == "launcher" or (i.description or "").startswith(BUILT_BY))]
    if found:
        return max(found, key=lambda i: i.creation_timestamp).name
    try:
        from lib import build
    except ImportError:
        build = None
    if build is not None and hasattr(build, "build_image"):
        on_log("building the local opensees-hpc image with the build pipeline (lib/build.py)")
        return build.build_image(cfg, on_log=on_log, on_line=lambda _: None)["name"]
    from google.cloud import compute_v1 as c

    from lib.guard import VMGuard

    name = f"ops-hpc-build-{uuid.uuid4().hex[:8]}"
    script = paths.vm_script("build_opensees_full.sh").read_text(encoding="utf-8")
    spec = compute.plan_vm(cfg, name=name, kind="build", run_id=f"image-{name[-8:]}", startup_script=script)
    image_name = f"{cfg.image_family}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    on_log(f"building the local opensees-hpc image ({image_name}) with vm-scripts/build_opensees_full.sh")
    with VMGuard(cfg, name, on_log=on_log) as guard:
        compute.create_vm(cfg, spec, on_log=on_log)
        _wait_startup_exit(cfg, name, boot_timeout)
        compute.stop_vm(cfg, name, on_log=on_log)
        body = c.Image(name=image_name, family=cfg.image_family, source_disk=f"zones/{cfg.zone}/disks/{name}",
                       labels={LOCAL_IMAGE_LABEL: "launcher"},
                       description="opensees-hpc (local cloud stand-in: openseesmp runs python -m opensees)")
        request = c.InsertImageRequest(project=cfg.project, image_resource=body, request_id=str(uuid.uuid4()))
        op = retry.google(images.insert, request=request)
        op.result(timeout=120)
        compute.delete_vm(cfg, name, on_log=on_log)
        guard.disarm()
    on_log(f"image {image_name} ready (family {cfg.image_family})")
    return image_name


def _wait_startup_exit(cfg: Config, name: str, timeout: float) -> None:
    """Wait for the startup script's exit line in the serial console (GCE's script runner writes the same)."""
    client = clients.instances(cfg)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = retry.google(client.get_serial_port_output, project=cfg.project, zone=cfg.zone, instance=name)
        text = out.contents or ""
        if "startup-script exit status" in text:
            if "startup-script exit status 0" not in text:
                raise OpsError(f"the image build on {name} failed: {text.strip().splitlines()[-5:]}")
            return
        time.sleep(0.3)
    raise OpsError(f"the image build on {name} did not finish within {timeout:.0f} s")


# ----------------------------------------------------------------------------- launch


@dataclass
class VmRun:
    """One VM of a run, as the PC follows it."""

    name: str
    models: list[str]
    spot: bool
    machine_type: str
    attempt: int = 0
    id: str = ""
    created: float = 0.0
    confirmed: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)
    gone: bool = False
    gone_at: float | None = None
    how: str = ""  # delete (itself or someone) | compute.instances.preempted | ...maxRunDurationExceeded | unknown
    hourly: float | None = None

    @property
    def state(self) -> str:
        return self.status.get("state", "launching")


def _metadata(cfg: Config, run_id: str, models: list[str], all_models: int) -> dict[str, str]:
    meta = {"ops-hpc-run-id": run_id, "ops-hpc-bucket": cfg.bucket_name}
    if len(models) != all_models:
        meta["ops-hpc-models"] = ",".join(models)
    if cfg.local and cfg.time_scale != 1.0:
        meta["ops-hpc-time-scale"] = f"{cfg.time_scale:g}"
    return meta


def launch(cfg: Config, run_id: str, description: dict[str, Any], shards: list[list[str]], *, spot: bool = False,
           image: str | None = None, machine_type: str | None = None, names: list[str] | None = None,
           boot_timeout: float | None = None, on_log: Log = quiet, state: Any = None) -> list[VmRun]:
    """Create one VM per shard, each guarded until it reports its first status; then they run on their own.

    Every VM is planned (machine type, image, quota) before any is created. If one fails to come up, every
    VM of this launch is deleted (the guards) and OpsError says why: a launch leaves all or nothing.
    """
    from lib.guard import VMGuard
    from lib.state import SessionState

    cfg = clients.resolve(cfg)
    state = state or SessionState(cfg)
    timeouts = {m["name"]: int(m["timeout_min"]) for m in description["models"]}
    names = names or [stage.vm_name(run_id, i + 1 if len(shards) > 1 else None) for i in range(len(shards))]
    script = paths.vm_script("startup.sh").read_text(encoding="utf-8")
    specs = [compute.plan_vm(cfg, name=name, kind="analysis", run_id=run_id, image=image, spot=spot,
                             machine_type=machine_type, job_timeouts_min=[timeouts[m] for m in shard],
                             startup_script=script,
                             metadata=_metadata(cfg, run_id, shard, len(description["models"])))
             for name, shard in zip(names, shards, strict=True)]
    runs = [VmRun(name=s.name, models=list(shard), spot=s.spot, machine_type=s.machine_type, hourly=_hourly(cfg, s))
            for s, shard in zip(specs, shards, strict=True)]
    timeout = boot_timeout or (90.0 if cfg.local else 600.0)
    with contextlib.ExitStack() as stack:
        guards = []
        for spec, run in zip(specs, runs, strict=True):
            guards.append(stack.enter_context(VMGuard(cfg, spec.name, on_log=on_log, state=state)))
            vm = compute.create_vm(cfg, spec, on_log=on_log, state=state)
            run.id, run.created = vm.get("id", ""), time.time()
            on_log(f"{spec.name}: {len(run.models)} model(s) ({', '.join(run.models)}); "
                   f"deleted by Google after {spec.max_run_s // 3600} h at the latest")
        _confirm_up(cfg, run_id, runs, timeout, on_log)
        for guard in guards:
            guard.disarm()
    return runs


def _hourly(cfg: Config, spec: Any) -> float | None:
    try:
        from lib import pricing

        return pricing.vm_hourly(cfg, spec.machine_type, spot=spec.spot, disk_gb=spec.disk_size_gb)
    except Exception:  # a missing price must not stop a run
        return None


def _confirm_up(cfg: Config, run_id: str, runs: list[VmRun], timeout: float, on_log: Log) -> None:
    """Wait until every VM has written _status/RUN_ID/VM.txt; raises OpsError (guards then delete the VMs)."""
    pending = {r.name: r for r in runs}
    deadline = time.monotonic() + timeout
    checked = 0.0
    while pending:
        for name in list(pending):
            if storage.get_blob(cfg, f"_status/{run_id}/{name}.txt") is not None:
                pending.pop(name).confirmed = time.time()
                on_log(f"{name}: up and running the batch")
        if not pending:
            return
        if time.monotonic() > deadline:
            raise OpsError(f"VM(s) {', '.join(pending)} did not report within {timeout:.0f} s of creation: deleting "
                           "the run's VMs (see the VM's serial console for why)")
        if time.monotonic() - checked > 5:
            checked = time.monotonic()
            for name in list(pending):
                if compute.get_vm(cfg, name) is None:
                    raise OpsError(f"VM {name} disappeared before it reported (preempted or deleted)")
        time.sleep(0.25)


# ----------------------------------------------------------------------------- follow (wait)


@dataclass
class Followed:
    """What following a run observed."""

    run_id: str
    vms: list[VmRun]
    pulled: dict[str, str] = field(default_factory=dict)  # model -> pull status
    lost: dict[str, str] = field(default_factory=dict)  # model -> why it has no result
    relaunches: int = 0

    @property
    def complete(self) -> bool:
        return not self.lost


def _deletion(cfg: Config, vm: VmRun) -> tuple[float | None, str]:
    """When and how a VM went away, from its zone operations (GCE and the local cloud record them alike)."""
    if not vm.id:
        return None, "unknown"
    from google.cloud import compute_v1 as c

    request = c.ListZoneOperationsRequest(project=cfg.project, zone=cfg.zone, filter=f'targetId = "{vm.id}"')
    try:
        ops = retry.listing(clients.zone_operations(cfg).list, request=request)
    except Exception:
        return None, "unknown"
    ends = [o for o in ops if o.operation_type in ("delete", "compute.instances.preempted",
                                                     "compute.instances.maxRunDurationExceeded")]
    if not ends:
        return None, "unknown"
    op = max(ends, key=lambda o: o.end_time or o.insert_time)
    return compute._epoch(op.end_time or op.insert_time), op.operation_type


def follow(cfg: Config, run_id: str, description: dict[str, Any], runs: list[VmRun], *, results_dir: Path,
           spot_retries: int = 2, on_demand_fallback: bool = True, poll: float = 0.5, log_every: float = 2.0,
           image: str | None = None, on_log: Log = quiet, tail: bool = True, deadline_s: float | None = None,
           state: Any = None) -> Followed:
    """Follow a launched run to its end: progress, log tails, pull each result as it lands, handle preemption.

    A VM that disappears before its status says done had its unfinished models (no result in the bucket or
    on the PC) relaunched when it was a spot VM, at most `spot_retries` times per model chain, then on demand
    if `on_demand_fallback`; finished models are never rerun. Other losses are reported in `lost`.
    """
    from lib import results
    from lib.state import SessionState

    cfg = clients.resolve(cfg)
    state = state or SessionState(cfg)
    results_dir = Path(results_dir)
    out = Followed(run_id=run_id, vms=list(runs))
    expected = [m["name"] for m in description["models"]]
    cache: dict[str, Any] = {}
    log_lines: dict[str, int] = {}
    last_tail = 0.0
    shown: dict[str, str] = {}
    started: set[str] = set()
    checked: dict[str, float] = {}
    limit = time.monotonic() + (deadline_s if deadline_s is not None else
                                sum(int(m["timeout_min"]) for m in description["models"]) * 60 / max(cfg.time_scale, 1e-9)
                                + 600)
    while True:
        statuses = read_statuses(cfg, run_id, cache)
        for vm in out.vms:
            vm.status = statuses.get(vm.name, vm.status)
            line = f"{vm.state} {vm.status.get('current')}/{vm.status.get('models')} {vm.status.get('current_model')}"
            if vm.status and shown.get(vm.name) != line:
                shown[vm.name] = line
                cur = vm.status.get("current_model")
                on_log(f"{vm.name}: {vm.state}" + (f", model {vm.status.get('current')}/{vm.status.get('models')} "
                                                   f"{cur}" if cur else ""))
            for model, info in vm.status.get("per_model", {}).items():
                key = f"{vm.name}/{model}"
                if info["state"] == "running" and key not in started:
                    started.add(key)
                    state.job_started(vm.name, model)
                elif info["state"] in FINAL and key in started:
                    started.discard(key)
                    state.job_finished(vm.name, model, info["state"])
        # results that landed: pull them now
        landed = {b.name[len(run_id) + 1:-4] for b in storage.list_blobs(cfg, f"{run_id}/") if b.name.endswith(".zip")}
        todo = sorted(m for m in landed if m in expected and m not in out.pulled)
        if todo:
            report = results.pull(cfg, results_dir, only=[f"{run_id}/{m}" for m in todo], on_log=on_log)
            for o in report.outcomes:
                model = o.id.split("/", 1)[1]
                if o.status in ("cleaned", "downloaded", "done"):
                    out.pulled[model] = o.status
                    on_log(f"{model}: result pulled into {results_dir / run_id / model} ({o.model_state or '?'})")
                else:
                    on_log(f"{model}: pull {o.status}: {o.reason} (kept in the bucket, retried)")
        # log tails of running models
        if tail and time.monotonic() - last_tail > log_every:
            last_tail = time.monotonic()
            for vm in out.vms:
                cur = vm.status.get("current_model")
                if cur and vm.state == "running":
                    _tail(cfg, run_id, cur, log_lines, on_log)
        # VMs that went away
        for vm in out.vms:
            if vm.gone:
                continue
            # a VM that says it is done is watched closely (its deletion is timed); others every 2 s
            if vm.state not in VM_DONE + ("preempted",) and time.monotonic() - checked.get(vm.name, 0.0) < 2.0:
                continue
            checked[vm.name] = time.monotonic()
            if compute.get_vm(cfg, vm.name) is not None:
                continue
            vm.gone = True
            vm.gone_at, vm.how = _deletion(cfg, vm)
            vm.gone_at = vm.gone_at or time.time()
            state.unregister_vm(vm.name)
            status = read_statuses(cfg, run_id, cache).get(vm.name, vm.status)
            vm.status = status
            if vm.state in VM_DONE:
                on_log(f"{vm.name}: deleted itself ({_since_upload(vm)})")
                continue
            unfinished = [m for m in vm.models if m not in out.pulled and m not in _landed(cfg, run_id)]
            on_log(f"{vm.name}: gone while {vm.state} ({vm.how}); unfinished: {', '.join(unfinished) or 'none'}")
            if not unfinished:
                continue
            if vm.spot and (vm.attempt < spot_retries or on_demand_fallback):
                use_spot = vm.attempt < spot_retries
                name = f"{stage.vm_name(run_id)}-r{vm.attempt + 1}-{uuid.uuid4().hex[:3]}"
                on_log(f"relaunching {', '.join(unfinished)} on {'spot' if use_spot else 'on-demand'} VM {name}")
                new = launch(cfg, run_id, description, [unfinished], spot=use_spot, image=image,
                             machine_type=vm.machine_type, names=[name], on_log=on_log, state=state)[0]
                new.attempt = vm.attempt + 1
                out.vms.append(new)
                out.relaunches += 1
            else:
                for m in unfinished:
                    out.lost[m] = f"VM {vm.name} went away ({vm.how}) before it finished"
        accounted = set(out.pulled) | set(out.lost)
        if all(m in accounted for m in expected) and all(vm.gone for vm in out.vms):
            return out
        if time.monotonic() > limit:
            for m in expected:
                if m not in accounted:
                    out.lost[m] = "no result before the follow deadline (it may still come: `bin/pull` later)"
            on_log("giving up following: " + ", ".join(out.lost))
            return out
        time.sleep(poll)


def _landed(cfg: Config, run_id: str) -> set[str]:
    return {b.name[len(run_id) + 1:-4] for b in storage.list_blobs(cfg, f"{run_id}/") if b.name.endswith(".zip")}


def _since_upload(vm: VmRun) -> str:
    seconds = upload_to_delete_s(vm)
    return f"{seconds:.1f} s after its last result upload" if seconds is not None else "no upload recorded"


def upload_to_delete_s(vm: VmRun) -> float | None:
    """Seconds between the VM's last result upload (its own clock) and its deletion."""
    try:
        last = float(vm.status.get("last_upload") or "")
    except ValueError:
        return None
    return None if vm.gone_at is None else max(0.0, vm.gone_at - last)


def _tail(cfg: Config, run_id: str, model: str, seen: dict[str, int], on_log: Log) -> None:
    raw = storage.download_bytes(cfg, f"_logs/{run_id}/{model}.log")
    if raw is None:
        return
    lines = raw.decode("utf-8", "replace").splitlines()
    for line in lines[seen.get(model, 0):]:
        on_log(f"  [{model}] {line}")
    seen[model] = len(lines)


# ----------------------------------------------------------------------------- summary


def summarize(cfg: Config, run_id: str, description: dict[str, Any], followed: Followed,
              results_dir: Path) -> list[dict[str, Any]]:
    """One row per model from its pulled MANIFEST.json: state, run time, files, size, cost (VM rate x run time)."""
    from lib import manifest

    by_model = {}
    for vm in followed.vms:
        for m in vm.models:
            by_model[m] = vm  # the last VM that had it (relaunches come later in the list)
    rows = []
    for m in description["models"]:
        name = m["name"]
        folder = Path(results_dir) / run_id / name
        man = None
        with contextlib.suppress(Exception):
            man = manifest.read(folder)
        vm = by_model.get(name)
        seconds = float(man["seconds"]) if man and man.get("seconds") is not None else None
        rate = vm.hourly if vm else None
        rows.append({
            "model": name, "vm": vm.name if vm else "", "state": (man or {}).get("state") or
            ("lost" if name in followed.lost else "?"),
            "seconds": seconds, "files": len(man["files"]) if man else 0,
            "bytes": sum(f["size"] for f in man["files"]) if man else 0,
            "cost": round(rate * seconds / 3600, 4) if rate is not None and seconds is not None else None,
            "folder": str(folder) if man else "", "note": followed.lost.get(name, ""),
        })
    return rows


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


# ----------------------------------------------------------------------------- the pipeline


def run_staged(cfg: Config, batch_path: str | Path, *, wait: bool = False, vms: int = 1, spot: bool | None = None,
               results_dir: Path | None = None, image: str | None = None, machine_type: str | None = None,
               run_id: str | None = None, spot_retries: int = 2, on_demand_fallback: bool = True,
               boot_timeout: float | None = None, tail: bool = True, on_log: Log = quiet) -> dict[str, Any]:
    """stage -> launch (guarded until up) -> optional follow + pull + summary; returns everything measured.

    Returns {"run_id", "vms": [names], "wait", and with wait: "rows", "table", "lost", "relaunches",
    "wall_s", "opensees_s", "overhead_s", "upload_to_delete_s": {vm: s}}.
    """
    t0 = time.time()
    batch = parse_batch(batch_path)  # every bad line is reported before anything is uploaded or created
    cfg = clients.resolve(cfg)
    spot = cfg.spot if spot is None else spot
    if cfg.local and image is None:
        image = ensure_local_image(cfg, on_log=on_log)
    staged = stage.stage(cfg, batch, run_id=run_id, on_log=on_log)
    run_id = staged.run_id
    on_log(f"run {run_id}: {len(staged.models)} model(s) staged in gs://{cfg.bucket_name}/_uploads/{run_id}/")
    shards = [[m["name"] for m in shard] for shard in shard_by_timeout(staged.models, vms)]
    runs = launch(cfg, run_id, staged.description, shards, spot=spot, image=image, machine_type=machine_type,
                  boot_timeout=boot_timeout, on_log=on_log)
    out: dict[str, Any] = {"run_id": run_id, "vms": [r.name for r in runs], "wait": wait}
    if not wait:
        on_log(f"launched: the VM(s) run on their own and delete themselves; follow with `make log RUN={run_id}`, "
               "collect with `make pull`")
        return out
    results_dir = Path(results_dir or cfg.results_dir)
    followed = follow(cfg, run_id, staged.description, runs, results_dir=results_dir, spot_retries=spot_retries,
                      on_demand_fallback=on_demand_fallback, image=image, on_log=on_log, tail=tail)
    if followed.complete:
        stage.unstage(cfg, run_id)  # every result is on the PC: the inputs are too, drop the bucket copy
    rows = summarize(cfg, run_id, staged.description, followed, results_dir)
    wall = time.time() - t0
    opensees = sum(r["seconds"] or 0.0 for r in rows)
    out.update({
        "vms": [v.name for v in followed.vms], "rows": rows, "table": format_table(rows, followed.vms),
        "lost": followed.lost, "relaunches": followed.relaunches, "wall_s": round(wall, 2),
        "opensees_s": round(opensees, 2), "overhead_s": round(wall - opensees, 2),
        "upload_to_delete_s": {v.name: upload_to_delete_s(v) for v in followed.vms},
        "deleted_how": {v.name: v.how for v in followed.vms}, "results_dir": str(results_dir),
    })
    return out


# ----------------------------------------------------------------------------- the demo


def demo(state_dir: Path, results_dir: Path, batch: Path | str = paths.REPO / "batches" / "example.txt", *,
         on_log: Log = quiet, tail: bool = False) -> dict[str, Any]:
    """`make demo`: local cloud up -> image -> run-staged with wait -> verify ./results -> local cloud down.

    Uses its own state folder (the repo's .state/), never the user's, and no ops-hpc.toml or OPS_HPC_*
    variables, so it behaves the same on every fresh clone. Returns the run's figures plus "verified",
    "bucket_results_left", "leftover_processes" and "demo_wall_s"; raises OpsError if any check fails.
    """
    import psutil

    from lib import results
    from lib.localcloud import control

    t0 = time.time()
    state_dir, results_dir = Path(state_dir).resolve(), Path(results_dir).resolve()
    control.up(state_dir, on_log=on_log)
    try:
        cfg = clients.resolve(Config.load({"backend": "local", "state_dir": str(state_dir)}, env={}, path=""))
        out = run_staged(cfg, batch, wait=True, results_dir=results_dir, on_log=on_log, tail=tail)
        sets = [f"{out['run_id']}/{r['model']}" for r in out["rows"]]
        checks = results.verify(None, results_dir, sets)
        out["verified"] = {v.id: (not v.differences and v.source != "none") for v in checks}
        out["bucket_results_left"] = [s.id for s in results.list_sets(cfg).sets]
    finally:
        control.down(state_dir, on_log=on_log)
    out["leftover_processes"] = [p.pid for p in psutil.process_iter(["cmdline"])
                                 if str(state_dir) in " ".join(p.info["cmdline"] or [])]
    out["demo_wall_s"] = round(time.time() - t0, 2)
    problems = [f"{k} not verified" for k, ok in out["verified"].items() if not ok]
    problems += [f"model {m}: {why}" for m, why in out["lost"].items()]
    problems += [f"result {s} still in the bucket" for s in out["bucket_results_left"]]
    problems += [f"process {p} of the local cloud still running" for p in out["leftover_processes"]]
    if problems:
        raise OpsError("demo failed: " + "; ".join(problems))
    return out
