"""Deciding a VM before it exists: its max run duration, expected end, labels, machine type, image and quota.

Nothing here creates anything: `plan_vm` returns a VmSpec (what `bin/launch --dry-run` prints) and
`instance_resource` the body lib/compute.py sends. Every check that can fail (machine type, image,
regional and family CPU quota) runs here, so a failure always ends "(nothing was created)"; the zones a
VM may be tried in (config `zones`, else the region's zones offering the machine type) are decided here too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lib import clients, errors, paths, pricing, retry, vmaccount
from lib import quotas as family_quota
from lib.config import Config
from lib.errors import OpsError, UsageError

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
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
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
    zones: tuple[str, ...] = ()  # tried in this order when a zone is out of capacity (zone is the first)
    notes: tuple[str, ...] = ()  # checks that could not be made (shown by launch, never counted as passed)

    def in_zone(self, zone: str, *, spot: bool | None = None) -> VmSpec:
        """The same VM placed in another zone (and on-demand when spot=False): what a failover sends."""
        return dataclasses.replace(self, zone=zone, spot=self.spot if spot is None else spot)

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
            "zones": list(self.zones or (self.zone,)), "service_account": self.service_account,
            "not_checked": list(self.notes),
        }


class ImageNotFound(errors.Missing):
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


def machine_type_info(cfg: Config, machine_type: str) -> Any:
    """The compute_v1.MachineType (vCPUs, memory), or a one-line error saying it does not exist here."""
    client = clients.compute_client("MachineTypesClient", clients.resolve(cfg))
    try:
        return retry.google(client.get, project=cfg.project, zone=cfg.zone, machine_type=machine_type)
    except Exception as exc:
        if not _not_found(exc) and getattr(exc, "code", None) != 400:
            raise
    raise OpsError(f"machine type {machine_type!r} does not exist in zone {cfg.zone}: choose another machine_type "
                   f"(`gcloud compute machine-types list --zones {cfg.zone}`) (nothing was created)")


@functools.lru_cache(maxsize=32)
def _offering(cfg: Config, machine_type: str) -> tuple[str, ...]:
    """Zones of the configured region whose machineTypes list has this machine type (one aggregated list)."""
    from google.cloud import compute_v1 as c  # heavy: imported at first use, keeps --help fast

    request = c.AggregatedListMachineTypesRequest(project=cfg.project, filter=f'name = "{machine_type}"')
    pages = retry.listing(clients.compute_client("MachineTypesClient", cfg).aggregated_list, request=request)
    return tuple(sorted(scope.rsplit("/", 1)[-1] for scope, scoped in pages if scoped.machine_types
                        and scope.rsplit("/", 1)[-1].rsplit("-", 1)[0] == cfg.region_name))


def candidate_zones(cfg: Config, machine_type: str) -> list[str]:
    """Where a VM of this machine type is tried, in order: config `zones` (those that offer it), else the
    configured zone first and then the region's other zones that offer the machine type."""
    offered = _offering(clients.resolve(cfg), machine_type)
    if cfg.zone_list:  # a listed zone without the machine type would fail its insert for nothing
        return [z for z in cfg.zone_list if z in offered] or cfg.zone_list
    return [cfg.zone] + [z for z in offered if z != cfg.zone] if cfg.zone in offered or not offered else list(offered)


def cpu_quota(cfg: Config, machine_type: str, guest_cpus: int, spot: bool) -> list[dict[str, Any]]:
    """The quota rows that creating this VM counts against: [{metric, limit, usage, needed, ok, checked[, note]}].

    Regional metrics from regions.get; the family's (H3, C3D, ...) from Cloud Quotas when regions.get has no
    row for it (quotas.family_row: checked=False with a note when that API could not be asked).
    """
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
                     "ok": float(q.usage) + guest_cpus <= float(q.limit), "checked": True})
    if metrics != ["PREEMPTIBLE_CPUS"] and family_metric not in quotas:
        row = family_quota.family_row(cfg, machine_type, guest_cpus)
        if row is not None:
            rows.append(row)
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
    max_run_s: int | None = None,
) -> VmSpec:
    """Decide and validate a VM (machine type, image, CPU quota) without creating anything.

    reports_status: the VM publishes `_status/RUN/VM.txt` once up (run-staged's startup script); if it never
    does and no live process guards it, status and the sweeper delete it (lib/reconcile.py).
    max_run_s: a tighter max run duration than the serial sum of the timeouts (a packed VM: lib/packing.py).
    """
    cfg = clients.resolve(cfg)
    if kind not in KINDS:
        raise UsageError(f"unknown VM kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not _NAME_RX.fullmatch(name or ""):
        raise UsageError(f"VM name {name!r}: use 1-63 lowercase letters, digits and '-', starting with a letter")
    spot = cfg.spot if spot is None else spot
    machine_type = machine_type or (cfg.build_machine_type if kind == "build" else cfg.machine_type)
    timeouts = tuple(int(t) for t in job_timeouts_min)
    serial = max_run_seconds(timeouts, cfg.upload_timeout_min, kind=kind)
    max_run_s = serial if max_run_s is None else min(int(max_run_s), serial)
    now = time.time() if now is None else now
    expected_end = int(now + min(expected_seconds(timeouts, cfg.upload_timeout_min, kind=kind), max_run_s))

    zones = candidate_zones(cfg, machine_type)
    mt = machine_type_info(cfg.replace(zone=zones[0]), machine_type)
    img = resolve_image(cfg, kind, image)
    rows = cpu_quota(cfg, machine_type, int(mt.guest_cpus), spot)
    for row in rows:
        if not row["ok"]:
            raise OpsError(
                f"not enough {row['metric']} quota in {cfg.region_name} for {machine_type}: limit {row['limit']:g}, "
                f"in use {row['usage']:g}, needs {row['needed']} more; request an increase at "
                f"https://console.cloud.google.com/iam-admin/quotas?project={cfg.project} or choose a smaller "
                "machine_type (nothing was created)")

    meta = dict(metadata or {})
    if startup_script is not None:
        meta["startup-script"] = paths.vm_text(startup_script)  # a CRLF script would die on the VM
    labels = {LABEL_KEY: "true", LABEL_RUN: label_value(run_id), LABEL_KIND: kind, LABEL_END: str(expected_end),
              LABEL_HOST: this_host(), LABEL_LAUNCHED: str(int(now))}
    if reports_status:
        labels[LABEL_REPORTS] = "status"
    disk = max(int(cfg.disk_size_gb), int(img.disk_size_gb or 0))
    return VmSpec(
        name=name, kind=kind, run_id=run_id, project=cfg.project, zone=zones[0], machine_type=machine_type,
        guest_cpus=int(mt.guest_cpus), source_image=img.self_link, image_name=img.name, spot=bool(spot),
        max_run_s=max_run_s, expected_end=expected_end, max_run_end=int(now + max_run_s), labels=labels,
        metadata=meta, disk_size_gb=disk, service_account=vmaccount.email(cfg), network=cfg.network,
        subnetwork=cfg.subnetwork, external_ip=not cfg.use_iap, job_timeouts_min=timeouts, zones=tuple(zones),
        notes=tuple(row["note"] for row in rows if not row.get("checked", True)),
    )


def worst_case_cost(cfg: Config, spec: VmSpec) -> float:
    """USD if the VM runs until Google deletes it at maxRunDuration: machine + boot disk for that long."""
    hours = spec.max_run_s / 3600
    return round(pricing.vm_hourly(cfg, spec.machine_type, spot=spec.spot, disk_gb=spec.disk_size_gb) * hours, 2)


# ----------------------------------------------------------------------------- the insert body


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
