"""Compute Engine VMs: plan, create, stop, delete, list. Every call goes through lib/retry.call.

Safety rules that hold for every VM created here:
- labels {ops-hpc: true, ops-hpc-run, ops-hpc-kind, ops-hpc-end} mark it as ours, so the sweeper and
  cleanup can find it, and nothing without them is ever deleted unless forced;
- scheduling.maxRunDuration is always set with instanceTerminationAction DELETE, so Google deletes the
  VM even if this PC, its guard, its session state and the sweeper all fail;
- on-demand unless spot is asked for (preemption loses work);
- machine type, image and regional CPU quota are checked before anything is created;
- mutations carry a request_id chosen before the first attempt, so a retry cannot create twice.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lib import clients, errors, paths, retry
from lib.config import Config
from lib.errors import OpsError, Refused, UsageError
from lib.log import Log

LABEL_KEY = "ops-hpc"
LABEL_RUN = "ops-hpc-run"
LABEL_KIND = "ops-hpc-kind"
LABEL_END = "ops-hpc-end"
KINDS = ("analysis", "build")
BUILD_MAX_RUN_S = 2 * 3600
MAX_RUN_LIMIT_S = 120 * 86400  # GCE's upper bound for maxRunDuration
OP_TIMEOUT_S = 900.0
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
STOPPED_STATES = ("STOPPED", "TERMINATED", "SUSPENDED")
_NAME_RX = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


# ----------------------------------------------------------------------------- arithmetic


def max_run_seconds(job_timeouts_min: Sequence[int], upload_timeout_min: int, *, kind: str = "analysis") -> int:
    """The hard limit Google enforces: build 2 h; analysis sum(timeouts) + upload + 1 min, rounded up to hours."""
    if kind == "build":
        return BUILD_MAX_RUN_S
    if kind != "analysis":
        raise UsageError(f"unknown VM kind {kind!r}: expected one of {', '.join(KINDS)}")
    if any(int(t) < 0 for t in job_timeouts_min) or upload_timeout_min < 0:
        raise UsageError("job and upload timeouts must be non-negative minutes")
    minutes = sum(int(t) for t in job_timeouts_min) + int(upload_timeout_min) + 1
    seconds = math.ceil(minutes / 60) * 3600
    if seconds > MAX_RUN_LIMIT_S:
        raise UsageError(f"the jobs' timeouts add up to {minutes} min, beyond Compute Engine's 120-day maximum run "
                       "duration: split the batch")
    return seconds


def expected_seconds(job_timeouts_min: Sequence[int], upload_timeout_min: int, *, kind: str = "analysis") -> int:
    """When the run should be over (before rounding up): what the ops-hpc-end label and the sweeper use."""
    if kind == "build" or not job_timeouts_min:
        return max_run_seconds(job_timeouts_min, upload_timeout_min, kind=kind)
    return (sum(int(t) for t in job_timeouts_min) + int(upload_timeout_min) + 1) * 60


def label_value(text: str) -> str:
    """A GCE label value: lowercase letters, digits, '-' and '_', at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", str(text).lower())[:63]


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class VmSpec:
    """Everything about a VM decided and validated before it is created (what --dry-run prints)."""

    name: str
    kind: str
    run_id: str
    project: str
    zone: str
    machine_type: str
    guest_cpus: int
    source_image: str
    image_name: str
    spot: bool
    max_run_s: int
    expected_end: int
    max_run_end: int
    labels: dict[str, str]
    metadata: dict[str, str]
    disk_size_gb: int
    service_account: str = "default"
    network: str = "default"
    subnetwork: str = ""
    external_ip: bool = True
    job_timeouts_min: tuple[int, ...] = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        """A printable view (the startup script shown by size only: it can be long)."""
        meta = {k: (f"<{len(v)} bytes>" if k == "startup-script" else v) for k, v in self.metadata.items()}
        return {
            "name": self.name, "kind": self.kind, "run_id": self.run_id, "project": self.project, "zone": self.zone,
            "machine_type": self.machine_type, "vcpus": self.guest_cpus, "image": self.image_name,
            "source_image": self.source_image, "spot": self.spot, "disk_size_gb": self.disk_size_gb,
            "max_run_duration_s": self.max_run_s, "max_run_hours": self.max_run_s / 3600,
            "termination_action": "DELETE", "expected_end": _iso(self.expected_end),
            "max_run_end": _iso(self.max_run_end), "labels": dict(self.labels), "metadata": meta,
        }


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _not_found(exc: BaseException) -> bool:
    from google.api_core import exceptions as gexc

    return isinstance(exc, gexc.NotFound)


def _image_ref(cfg: Config, kind: str, image: str | None) -> tuple[str, str | None, str | None]:
    """(project, family, name) for an image reference: None, NAME, family/F, projects/P/global/images/[family/]X, URL."""
    default_project = cfg.build_image_project if kind == "build" else cfg.image_project_id
    if not image:
        family = cfg.build_image_family if kind == "build" else cfg.image_family
        return default_project, family, None
    ref = image.split("/compute/v1/", 1)[-1].strip("/")
    m = re.fullmatch(r"projects/([^/]+)/global/images/(family/)?([^/]+)", ref)
    if m:
        return m.group(1), (m.group(3) if m.group(2) else None), (None if m.group(2) else m.group(3))
    m = re.fullmatch(r"family/([^/]+)", ref)
    if m:
        return default_project, m.group(1), None
    if "/" in ref:
        raise UsageError(f"image {image!r}: expected NAME, family/FAMILY or projects/P/global/images/[family/]NAME")
    return default_project, None, ref


def resolve_image(cfg: Config, kind: str = "analysis", image: str | None = None) -> Any:
    """The compute_v1.Image to boot from, or a one-line error saying how to get one."""
    project, family, name = _image_ref(cfg, kind, image)
    client = clients.images(clients.resolve(cfg))
    try:
        if family:
            return retry.google(client.get_from_family, project=project, family=family)
        return retry.google(client.get, project=project, image=name)
    except Exception as exc:
        if not _not_found(exc):
            raise
    what = f"image family {family!r}" if family else f"image {name!r}"
    hint = "build it with `make build`" if family == cfg.image_family and kind == "analysis" else "check the name"
    raise errors.Missing(f"{what} not found in project {project}: {hint} (nothing was created)")


def _machine_type(cfg: Config, machine_type: str) -> Any:
    client = clients.compute_client("MachineTypesClient", clients.resolve(cfg))
    try:
        return retry.google(client.get, project=cfg.project, zone=cfg.zone, machine_type=machine_type)
    except Exception as exc:
        if not _not_found(exc) and getattr(exc, "code", None) != 400:
            raise
    raise OpsError(f"machine type {machine_type!r} does not exist in zone {cfg.zone}: choose another machine_type "
                   f"(`gcloud compute machine-types list --zones {cfg.zone}`) (nothing was created)")


def cpu_quota(cfg: Config, machine_type: str, guest_cpus: int, spot: bool) -> list[dict[str, Any]]:
    """The regional quota rows that creating this VM counts against: [{metric, limit, usage, needed, ok}]."""
    client = clients.compute_client("RegionsClient", clients.resolve(cfg))
    region = retry.google(client.get, project=cfg.project, region=cfg.region_name)
    quotas = {q.metric: q for q in region.quotas}
    family_metric = machine_type.split("-", 1)[0].upper() + "_CPUS"
    metrics = ["CPUS"] + ([family_metric] if family_metric in quotas else [])
    if spot and "PREEMPTIBLE_CPUS" in quotas and quotas["PREEMPTIBLE_CPUS"].limit > 0:
        metrics = ["PREEMPTIBLE_CPUS"]  # granted preemptible quota replaces the standard one for Spot VMs
    rows = []
    for metric in metrics:
        q = quotas.get(metric)
        if q is None:
            continue
        rows.append({"metric": metric, "limit": float(q.limit), "usage": float(q.usage), "needed": guest_cpus,
                     "ok": float(q.usage) + guest_cpus <= float(q.limit)})
    return rows


def plan_vm(
    cfg: Config,
    *,
    name: str,
    kind: str,
    run_id: str,
    job_timeouts_min: Sequence[int] = (),
    image: str | None = None,
    startup_script: str | None = None,
    metadata: Mapping[str, str] | None = None,
    spot: bool | None = None,
    machine_type: str | None = None,
    now: float | None = None,
) -> VmSpec:
    """Decide and validate a VM (machine type, image, CPU quota) without creating anything."""
    cfg = clients.resolve(cfg)
    if kind not in KINDS:
        raise UsageError(f"unknown VM kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not _NAME_RX.fullmatch(name or ""):
        raise UsageError(f"VM name {name!r}: use 1-63 lowercase letters, digits and '-', starting with a letter")
    spot = cfg.spot if spot is None else spot
    machine_type = machine_type or (cfg.build_machine_type if kind == "build" else cfg.machine_type)
    timeouts = tuple(int(t) for t in job_timeouts_min)
    max_run_s = max_run_seconds(timeouts, cfg.upload_timeout_min, kind=kind)
    now = time.time() if now is None else now
    expected_end = int(now + expected_seconds(timeouts, cfg.upload_timeout_min, kind=kind))

    mt = _machine_type(cfg, machine_type)
    img = resolve_image(cfg, kind, image)
    for row in cpu_quota(cfg, machine_type, int(mt.guest_cpus), spot):
        if not row["ok"]:
            raise OpsError(
                f"not enough {row['metric']} quota in {cfg.region_name} for {machine_type}: limit {row['limit']:g}, "
                f"in use {row['usage']:g}, needs {row['needed']} more; request an increase at "
                f"https://console.cloud.google.com/iam-admin/quotas?project={cfg.project} or choose a smaller "
                "machine_type (nothing was created)")

    meta = dict(metadata or {})
    if startup_script is not None:
        meta["startup-script"] = paths.vm_text(startup_script)  # a CRLF script would die on the VM
    labels = {LABEL_KEY: "true", LABEL_RUN: label_value(run_id), LABEL_KIND: kind, LABEL_END: str(expected_end)}
    disk = max(int(cfg.disk_size_gb), int(img.disk_size_gb or 0))
    return VmSpec(
        name=name, kind=kind, run_id=run_id, project=cfg.project, zone=cfg.zone, machine_type=machine_type,
        guest_cpus=int(mt.guest_cpus), source_image=img.self_link, image_name=img.name, spot=bool(spot),
        max_run_s=max_run_s, expected_end=expected_end, max_run_end=int(now + max_run_s), labels=labels,
        metadata=meta, disk_size_gb=disk, service_account=cfg.service_account or "default", network=cfg.network,
        subnetwork=cfg.subnetwork, external_ip=not cfg.use_iap, job_timeouts_min=timeouts,
    )


def worst_case_cost(cfg: Config, spec: VmSpec) -> float:
    """USD if the VM runs until Google deletes it at maxRunDuration: machine + boot disk for that long."""
    from lib import pricing

    hours = spec.max_run_s / 3600
    return round(pricing.vm_hourly(cfg, spec.machine_type, spot=spec.spot, disk_gb=spec.disk_size_gb) * hours, 2)


# ----------------------------------------------------------------------------- instances


def instance_resource(spec: VmSpec) -> Any:
    """The compute_v1.Instance body for a spec."""
    from google.cloud import compute_v1 as c

    zone = spec.zone
    nic = c.NetworkInterface(network=f"global/networks/{spec.network}")
    if spec.subnetwork:
        nic.subnetwork = f"regions/{zone.rsplit('-', 1)[0]}/subnetworks/{spec.subnetwork}"
    if spec.external_ip:
        nic.access_configs = [c.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")]
    scheduling = c.Scheduling(
        provisioning_model="SPOT" if spec.spot else "STANDARD",
        instance_termination_action="DELETE",
        max_run_duration=c.Duration(seconds=spec.max_run_s),
        automatic_restart=False,
        on_host_maintenance="TERMINATE" if spec.spot else "MIGRATE",
    )
    return c.Instance(
        name=spec.name,
        machine_type=f"zones/{zone}/machineTypes/{spec.machine_type}",
        labels=dict(spec.labels),
        metadata=c.Metadata(items=[c.Items(key=k, value=v) for k, v in spec.metadata.items()]),
        disks=[c.AttachedDisk(boot=True, auto_delete=True, initialize_params=c.AttachedDiskInitializeParams(
            source_image=spec.source_image, disk_size_gb=spec.disk_size_gb,
            disk_type=f"zones/{zone}/diskTypes/pd-balanced"))],
        network_interfaces=[nic],
        service_accounts=[c.ServiceAccount(email=spec.service_account, scopes=SCOPES)],
        scheduling=scheduling,
    )


def _epoch(stamp: str) -> float | None:
    if not stamp:
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def to_dict(inst: Any) -> dict[str, Any]:
    """A compute_v1.Instance as the plain dict the rest of ops-hpc uses."""
    labels = dict(inst.labels)
    sched = inst.scheduling
    max_run = int(sched.max_run_duration.seconds) if sched.max_run_duration and sched.max_run_duration.seconds else None
    end = labels.get(LABEL_END, "")
    last_start = _epoch(inst.last_start_timestamp)
    termination = _epoch(getattr(sched, "termination_time", "") or "")
    if termination is None and max_run and last_start:
        termination = last_start + max_run
    return {
        "name": inst.name,
        "id": str(inst.id),
        "status": inst.status,
        "zone": inst.zone.rsplit("/", 1)[-1],
        "machine_type": inst.machine_type.rsplit("/", 1)[-1],
        "labels": labels,
        "ours": labels.get(LABEL_KEY) == "true",
        "run_id": labels.get(LABEL_RUN, ""),
        "kind": labels.get(LABEL_KIND, ""),
        "expected_end": int(end) if end.isdigit() else None,
        "spot": sched.provisioning_model == "SPOT" or bool(sched.preemptible),
        "created": inst.creation_timestamp,
        "created_epoch": _epoch(inst.creation_timestamp),
        "last_start_epoch": last_start,
        "max_run_s": max_run,
        "max_run_end": termination,
        "termination_action": sched.instance_termination_action or "",
        "self_link": inst.self_link,
    }


def wait_operation(op: Any, what: str, *, timeout: float = OP_TIMEOUT_S) -> None:
    """Wait for a zone or global operation; a failed one becomes a one-line OpsError."""
    from google.api_core import exceptions as gexc

    try:
        op.result(timeout=timeout)
    except gexc.GoogleAPICallError as exc:
        raise errors.explain(exc, what=f"{what} failed") from None
    if getattr(op, "error_code", None):
        raise OpsError(f"{what} failed: {op.error_message or op.error_code}")


def get_vm(cfg: Config, name: str) -> dict[str, Any] | None:
    """The VM as a dict, or None if it does not exist."""
    cfg = clients.resolve(cfg)
    try:
        return to_dict(retry.google(clients.instances(cfg).get, project=cfg.project, zone=cfg.zone, instance=name))
    except Exception as exc:
        if _not_found(exc):
            return None
        raise


def list_vms(cfg: Config, *, ours_only: bool = True) -> list[dict[str, Any]]:
    """VMs of the configured zone; only ops-hpc's unless ours_only=False (filtered here: no server filter dialect)."""
    cfg = clients.resolve(cfg)

    def fetch() -> list[Any]:
        return list(clients.instances(cfg).list(project=cfg.project, zone=cfg.zone, retry=None))

    vms = [to_dict(i) for i in retry.call(fetch)]
    return [v for v in vms if v["ours"]] if ours_only else vms


def create_vm(cfg: Config, spec: VmSpec, *, on_log: Log = print, state: Any = None) -> dict[str, Any]:
    """Create the VM (registered in session state first, so a crash mid-create is recoverable); returns get_vm()."""
    from lib.state import SessionState

    cfg = clients.resolve(cfg)
    state = state or SessionState(cfg)
    state.register_vm(spec.name, run_id=spec.run_id, kind=spec.kind, zone=spec.zone, expected_end=spec.expected_end,
                      max_run_end=spec.max_run_end, phase="creating", machine_type=spec.machine_type, spot=spec.spot)
    request_id = str(uuid.uuid4())  # chosen once: every retry of this insert is the same request
    on_log(f"creating {spec.kind} VM {spec.name} ({spec.machine_type}, {'spot' if spec.spot else 'on-demand'}, "
           f"image {spec.image_name}, deleted by Google after {spec.max_run_s // 3600} h at the latest)")
    try:
        from google.cloud import compute_v1 as c

        request = c.InsertInstanceRequest(project=spec.project, zone=spec.zone, request_id=request_id,
                                          instance_resource=instance_resource(spec))
        op = retry.google(clients.instances(cfg).insert, request=request)
        wait_operation(op, f"creating VM {spec.name}")
    except Exception as exc:
        from google.api_core import exceptions as gexc

        vm = None
        try:
            vm = get_vm(cfg, spec.name)
        except Exception:
            pass
        if vm is None:
            state.unregister_vm(spec.name)
        if isinstance(exc, gexc.Conflict):
            raise OpsError(f"a VM named {spec.name} already exists in {spec.zone}: choose another name") from None
        if isinstance(exc, gexc.GoogleAPICallError):
            raise errors.explain(exc, what=f"creating VM {spec.name} failed") from None
        raise
    state.register_vm(spec.name, run_id=spec.run_id, kind=spec.kind, zone=spec.zone, expected_end=spec.expected_end,
                      max_run_end=spec.max_run_end, phase="running")
    vm = get_vm(cfg, spec.name) or {"name": spec.name, "status": "UNKNOWN", "zone": spec.zone}
    on_log(f"VM {spec.name} is {vm['status']}")
    return vm


def _check_ours(vm: dict[str, Any], force: bool, verb: str) -> None:
    if not vm["ours"] and not force:
        raise Refused(f"refusing to {verb} VM {vm['name']}: it has no {LABEL_KEY}=true label, so ops-hpc did not "
                       "create it; pass --force if you are sure")


def delete_vm(cfg: Config, name: str, *, force: bool = False, on_log: Log = print, state: Any = None) -> bool:
    """Delete a VM of ours (idempotent): False if it was already gone; OpsError for a VM without our label."""
    from lib.state import SessionState

    cfg = clients.resolve(cfg)
    state = state or SessionState(cfg)
    vm = get_vm(cfg, name)
    if vm is None:
        state.unregister_vm(name)
        return False
    _check_ours(vm, force, "delete")
    from google.cloud import compute_v1 as c

    request = c.DeleteInstanceRequest(project=cfg.project, zone=cfg.zone, instance=name, request_id=str(uuid.uuid4()))
    try:
        op = retry.google(clients.instances(cfg).delete, request=request)
        wait_operation(op, f"deleting VM {name}")
    except Exception as exc:
        if not _not_found(exc):
            raise
        state.unregister_vm(name)
        return False
    state.unregister_vm(name)
    on_log(f"deleted VM {name}")
    return True


def stop_vm(cfg: Config, name: str, *, force: bool = False, on_log: Log = print) -> None:
    """Stop a VM of ours (its disk stays and still bills; image builds stop before imaging)."""
    cfg = clients.resolve(cfg)
    vm = get_vm(cfg, name)
    if vm is None:
        raise OpsError(f"VM {name} does not exist in {cfg.zone}")
    _check_ours(vm, force, "stop")
    from google.cloud import compute_v1 as c

    request = c.StopInstanceRequest(project=cfg.project, zone=cfg.zone, instance=name, request_id=str(uuid.uuid4()))
    op = retry.google(clients.instances(cfg).stop, request=request)
    wait_operation(op, f"stopping VM {name}")
    on_log(f"stopped VM {name}")


def set_expected_end(cfg: Config, name: str, expected_end: float) -> None:
    """Move the ops-hpc-end label and the session state entry (a deadline extension), so the sweeper does not
    delete a run given more time. It cannot move maxRunDuration: Google's hard limit stays."""
    from google.api_core import exceptions as gexc
    from google.cloud import compute_v1 as c

    from lib.state import SessionState

    cfg = clients.resolve(cfg)
    client = clients.instances(cfg)

    def attempt() -> None:
        inst = client.get(project=cfg.project, zone=cfg.zone, instance=name, retry=None)
        labels = dict(inst.labels)
        if labels.get(LABEL_KEY) != "true":
            raise Refused(f"VM {name} is not an ops-hpc VM")
        labels[LABEL_END] = str(int(expected_end))
        body = c.InstancesSetLabelsRequest(labels=labels, label_fingerprint=inst.label_fingerprint)
        # the fingerprint makes this idempotent: a lost response followed by a retry gets 412 and re-reads
        request = c.SetLabelsInstanceRequest(project=cfg.project, zone=cfg.zone, instance=name,
                                             instances_set_labels_request_resource=body, request_id=str(uuid.uuid4()))
        wait_operation(client.set_labels(request=request, retry=None), f"labelling VM {name}")

    for _ in range(5):
        try:
            retry.call(attempt)
            SessionState(cfg).set_expected_end(name, expected_end)
            return
        except gexc.PreconditionFailed:
            continue
    raise OpsError(f"could not update the expected end of VM {name}: its labels kept changing")
