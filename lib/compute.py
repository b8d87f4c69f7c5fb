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
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lib import clients, pricing, retry
from lib.config import Config
from lib.errors import OpsError, Refused, UsageError
from lib.log import Log, quiet
from lib.state import SessionState

LABEL_KEY = "ops-hpc"
LABEL_RUN = "ops-hpc-run"
LABEL_KIND = "ops-hpc-kind"
LABEL_END = "ops-hpc-end"
LABEL_HOST = "ops-hpc-host"
LABEL_LAUNCHED = "ops-hpc-launched"
LABEL_REPORTS = "ops-hpc-reports"
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


def this_host() -> str:
    """This PC's name as a label value (label ops-hpc-host): who launched a VM, for the safety nets."""
    return label_value(socket.gethostname()) or "unknown"


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


class ImageNotFound(OpsError):
    """No such image or image family (yet)."""


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _not_found(exc: BaseException) -> bool:
    from google.api_core import exceptions as gexc  # heavy: imported at first use, keeps --help fast

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
    raise ImageNotFound(f"{what} not found in project {project}: {hint} (nothing was created)")


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
    reports_status: bool = False,
    now: float | None = None,
) -> VmSpec:
    """Decide and validate a VM (machine type, image, CPU quota) without creating anything.

    reports_status: the VM publishes `_status/RUN/VM.txt` once up (run-staged's startup script); if it never
    does and no live process guards it, status and the sweeper delete it (lib/reconcile.py).
    """
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
        meta["startup-script"] = startup_script
    labels = {LABEL_KEY: "true", LABEL_RUN: label_value(run_id), LABEL_KIND: kind, LABEL_END: str(expected_end),
              LABEL_HOST: this_host(), LABEL_LAUNCHED: str(int(now))}
    if reports_status:
        labels[LABEL_REPORTS] = "status"
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
    hours = spec.max_run_s / 3600
    return round(pricing.vm_hourly(cfg, spec.machine_type, spot=spec.spot, disk_gb=spec.disk_size_gb) * hours, 2)


# ----------------------------------------------------------------------------- instances


def instance_resource(spec: VmSpec) -> Any:
    """The compute_v1.Instance body for a spec."""
    from google.cloud import compute_v1 as c  # heavy: imported at first use, keeps --help fast

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


@dataclass(frozen=True)
class Vm:
    """A VM as the rest of ops-hpc sees it: typed, so a misspelt field is an error, not a silent None."""

    name: str
    status: str
    zone: str
    machine_type: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    ours: bool = False
    run_id: str = ""
    kind: str = ""
    expected_end: int | None = None
    spot: bool = False
    created_epoch: float | None = None
    max_run_s: int | None = None
    max_run_end: float | None = None
    id: str = ""
    created: str = ""
    last_start_epoch: float | None = None
    termination_action: str = ""
    self_link: str = ""
    owner_host: str = ""  # label ops-hpc-host: the PC that launched it
    launched: int | None = None  # label ops-hpc-launched: when the insert was sent (epoch s)
    reports_status: bool = False  # label ops-hpc-reports=status: it publishes _status/RUN/VM.txt once up
    bucket: str = ""  # metadata ops-hpc-bucket: where it publishes its status and results

    @classmethod
    def from_instance(cls, inst: Any) -> Vm:
        """A compute_v1.Instance as a Vm."""
        labels = dict(inst.labels)
        meta = {i.key: i.value for i in inst.metadata.items} if inst.metadata else {}
        sched = inst.scheduling
        max_run = (int(sched.max_run_duration.seconds)
                   if sched.max_run_duration and sched.max_run_duration.seconds else None)
        end = labels.get(LABEL_END, "")
        launched = labels.get(LABEL_LAUNCHED, "")
        last_start = _epoch(inst.last_start_timestamp)
        termination = _epoch(getattr(sched, "termination_time", "") or "")
        if termination is None and max_run and last_start:
            termination = last_start + max_run
        return cls(
            name=inst.name, id=str(inst.id), status=inst.status, zone=inst.zone.rsplit("/", 1)[-1],
            machine_type=inst.machine_type.rsplit("/", 1)[-1], labels=labels, ours=labels.get(LABEL_KEY) == "true",
            run_id=labels.get(LABEL_RUN, ""), kind=labels.get(LABEL_KIND, ""),
            expected_end=int(end) if end.isdigit() else None,
            spot=sched.provisioning_model == "SPOT" or bool(sched.preemptible),
            created=inst.creation_timestamp, created_epoch=_epoch(inst.creation_timestamp),
            last_start_epoch=last_start, max_run_s=max_run, max_run_end=termination,
            termination_action=sched.instance_termination_action or "", self_link=inst.self_link,
            owner_host=labels.get(LABEL_HOST, ""), launched=int(launched) if launched.isdigit() else None,
            reports_status=labels.get(LABEL_REPORTS) == "status", bucket=meta.get("ops-hpc-bucket", ""),
        )

    def to_dict(self) -> dict[str, Any]:
        """For JSON output (--json)."""
        data = asdict(self)
        data["labels"] = dict(self.labels)
        return data


class OperationFailed(OpsError):
    """Google answered: the operation ended in an error (so it will not complete later)."""


def wait_operation(op: Any, what: str, *, timeout: float = OP_TIMEOUT_S) -> None:
    """Wait for a zone or global operation; a failed one becomes a one-line OperationFailed."""
    from google.api_core import exceptions as gexc  # heavy: imported at first use, keeps --help fast

    try:
        op.result(timeout=timeout)
    except gexc.GoogleAPICallError as exc:
        raise OperationFailed(f"{what} failed: {getattr(exc, 'message', exc)}") from None
    if getattr(op, "error_code", None):
        raise OperationFailed(f"{what} failed: {op.error_message or op.error_code}")


def get_vm(cfg: Config, name: str) -> Vm | None:
    """The VM, or None if it does not exist."""
    cfg = clients.resolve(cfg)
    try:
        return Vm.from_instance(retry.google(clients.instances(cfg).get, project=cfg.project, zone=cfg.zone, instance=name))
    except Exception as exc:
        if _not_found(exc):
            return None
        raise


def list_vms(cfg: Config, *, ours_only: bool = True) -> list[Vm]:
    """VMs of the configured zone; only ops-hpc's unless ours_only=False (filtered here: no server filter dialect)."""
    cfg = clients.resolve(cfg)

    def fetch() -> list[Any]:
        return list(clients.instances(cfg).list(project=cfg.project, zone=cfg.zone, retry=None))

    vms = [Vm.from_instance(i) for i in retry.call(fetch)]
    return [v for v in vms if v.ours] if ours_only else vms


# Inserts sent by this process and not yet answered, by VM name: a VMGuard that fires meanwhile (Ctrl+C during
# the insert) re-sends the same request (same requestId: Google answers with the first one's operation, or
# creates the VM if the first never arrived), waits for it and deletes what it created.
_IN_FLIGHT: dict[str, tuple[Config, Any]] = {}
_IN_FLIGHT_LOCK = threading.RLock()  # re-entrant: a signal handler may run while the main thread holds it


def insert_in_flight(name: str) -> bool:
    with _IN_FLIGHT_LOCK:
        return name in _IN_FLIGHT


def _landed(name: str) -> None:
    with _IN_FLIGHT_LOCK:
        _IN_FLIGHT.pop(name, None)


def settle_insert(name: str, *, timeout: float = OP_TIMEOUT_S, on_log: Log = quiet) -> bool:
    """If this process has an insert of `name` in flight, wait for its operation; True if there was one."""
    with _IN_FLIGHT_LOCK:
        pending = _IN_FLIGHT.get(name)
    if pending is None:
        return False
    cfg, request = pending
    on_log(f"waiting for the creation of VM {name} in flight (request {request.request_id}) to finish")
    try:
        op = retry.google(clients.instances(cfg).insert, request=request)
        wait_operation(op, f"creating VM {name}", timeout=timeout)
    except Exception as exc:  # it failed or timed out: the caller's get/delete decides what is left
        on_log(f"the creation of VM {name} in flight ended: {exc}")
    finally:
        _landed(name)
    return True


def create_vm(cfg: Config, spec: VmSpec, *, on_log: Log = quiet, state: SessionState | None = None) -> Vm:
    """Create the VM; returns get_vm().

    Session state records the VM and the insert's requestId BEFORE the insert is sent, so a process killed
    mid-insert leaves an entry that reconcile keeps until the insert can no longer land.
    """
    from google.api_core import exceptions as gexc  # heavy: imported at first use, keeps --help fast
    from google.cloud import compute_v1 as c  # heavy: imported at first use, keeps --help fast

    cfg = clients.resolve(cfg)
    state = state or SessionState(cfg)
    request_id = str(uuid.uuid4())  # chosen once: every retry of this insert is the same request
    state.register_vm(spec.name, run_id=spec.run_id, kind=spec.kind, zone=spec.zone, expected_end=spec.expected_end,
                      max_run_end=spec.max_run_end, phase="creating", machine_type=spec.machine_type, spot=spec.spot,
                      request_id=request_id)
    on_log(f"creating {spec.kind} VM {spec.name} ({spec.machine_type}, {'spot' if spec.spot else 'on-demand'}, "
           f"image {spec.image_name}, deleted by Google after {spec.max_run_s // 3600} h at the latest)")
    request = c.InsertInstanceRequest(project=spec.project, zone=spec.zone, request_id=request_id,
                                      instance_resource=instance_resource(spec))
    with _IN_FLIGHT_LOCK:
        _IN_FLIGHT[spec.name] = (cfg, request)
    # Ctrl+C or a kill arriving now leaves the record in _IN_FLIGHT on purpose: the guard settles it.
    try:
        op = retry.google(clients.instances(cfg).insert, request=request)
        wait_operation(op, f"creating VM {spec.name}")
    except Exception as exc:
        _landed(spec.name)
        # A definite refusal (4xx) created nothing: forget the entry. Anything else (timeout, 5xx after the
        # retries) may still land: the entry stays, and reconcile deletes or drops it once that is known.
        refused = isinstance(exc, (gexc.ClientError, OperationFailed))
        if refused and _quiet_get(cfg, spec.name) is None:
            state.unregister_vm(spec.name)
        if isinstance(exc, gexc.Conflict):
            raise OpsError(f"a VM named {spec.name} already exists in {spec.zone}: choose another name") from None
        if isinstance(exc, gexc.GoogleAPICallError):
            raise OpsError(f"creating VM {spec.name} failed: {getattr(exc, 'message', exc)}") from None
        raise
    _landed(spec.name)
    state.register_vm(spec.name, run_id=spec.run_id, kind=spec.kind, zone=spec.zone, expected_end=spec.expected_end,
                      max_run_end=spec.max_run_end, phase="running")
    vm = get_vm(cfg, spec.name) or Vm(name=spec.name, status="UNKNOWN", zone=spec.zone)
    on_log(f"VM {spec.name} is {vm.status}")
    return vm


def _quiet_get(cfg: Config, name: str) -> Vm | None:
    try:
        return get_vm(cfg, name)
    except Exception:
        return None


def _check_ours(vm: Vm, force: bool, verb: str) -> None:
    if not vm.ours and not force:
        raise Refused(f"refusing to {verb} VM {vm.name}: it has no {LABEL_KEY}=true label, so ops-hpc did not "
                       "create it; pass --force if you are sure")


def _forget(state: SessionState, name: str, on_log: Log) -> None:
    """Drop the entry of a deleted VM; an unreadable state file must not undo (or hide) the delete."""
    try:
        state.unregister_vm(name)
    except OpsError as exc:
        on_log(f"warning: session state not updated: {exc}")


def delete_vm(cfg: Config, name: str, *, force: bool = False, on_log: Log = quiet,
              state: SessionState | None = None) -> bool:
    """Delete a VM of ours (idempotent): False if it was already gone; Refused for a VM without our label.

    Works from labels alone: a corrupt session state file is reported, never a reason not to delete.
    """
    from google.cloud import compute_v1 as c  # heavy: imported at first use, keeps --help fast

    cfg = clients.resolve(cfg)
    state = state or SessionState(cfg)
    vm = get_vm(cfg, name)
    if vm is None:
        _forget(state, name, on_log)
        return False
    _check_ours(vm, force, "delete")
    request = c.DeleteInstanceRequest(project=cfg.project, zone=cfg.zone, instance=name, request_id=str(uuid.uuid4()))
    try:
        op = retry.google(clients.instances(cfg).delete, request=request)
        wait_operation(op, f"deleting VM {name}")
    except Exception as exc:
        if not _not_found(exc):
            raise
        _forget(state, name, on_log)
        return False
    _forget(state, name, on_log)
    on_log(f"deleted VM {name}")
    return True


def stop_vm(cfg: Config, name: str, *, force: bool = False, on_log: Log = quiet) -> None:
    """Stop a VM of ours (its disk stays and still bills; image builds stop before imaging)."""
    cfg = clients.resolve(cfg)
    vm = get_vm(cfg, name)
    if vm is None:
        raise OpsError(f"VM {name} does not exist in {cfg.zone}")
    _check_ours(vm, force, "stop")
    from google.cloud import compute_v1 as c  # heavy: imported at first use, keeps --help fast

    request = c.StopInstanceRequest(project=cfg.project, zone=cfg.zone, instance=name, request_id=str(uuid.uuid4()))
    op = retry.google(clients.instances(cfg).stop, request=request)
    wait_operation(op, f"stopping VM {name}")
    on_log(f"stopped VM {name}")


def set_expected_end(cfg: Config, name: str, expected_end: float) -> None:
    """Move the ops-hpc-end label and the session state entry (a deadline extension), so the sweeper does not
    delete a run given more time. It cannot move maxRunDuration: Google's hard limit stays."""
    from google.api_core import exceptions as gexc  # heavy: imported at first use, keeps --help fast
    from google.cloud import compute_v1 as c  # heavy: imported at first use, keeps --help fast

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
