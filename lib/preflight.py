"""`setup`: one line per check, each failing line saying what to do. Checks never stop at the first failure,
so a new user sees everything to fix at once; the bucket is created (uniform access, PAP enforced) if missing."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lib import clients, compute, quotas, retry, storage, vmaccount, vmplan
from lib.config import Config

# What ops-hpc does with the project, for testIamPermissions.
PERMISSIONS = (
    "compute.instances.create", "compute.instances.delete", "compute.instances.list", "compute.instances.setMetadata",
    "compute.images.create", "compute.images.useReadOnly", "compute.disks.create", "iam.serviceAccounts.actAs",
    "storage.buckets.get", "storage.objects.create", "storage.objects.delete", "storage.objects.list",
    "monitoring.timeSeries.list",
)


@dataclass
class Check:
    name: str
    status: str  # "ok", "fail", "skip"
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = {"ok": "ok  ", "fail": "FAIL", "skip": "skip"}[self.status]
        return f"[{mark}] {self.name}: {self.detail}" + (f" -> {self.fix}" if self.fix else "")


def _msg(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc).splitlines()[0][:200]


def check_credentials(cfg: Config) -> Check:
    try:
        clients.credentials(cfg)
    except Exception as exc:
        return Check("credentials", "fail", _msg(exc), "gcloud auth application-default login")
    return Check("credentials", "ok", "anonymous (local cloud)" if cfg.local else "application default credentials found")


def check_project(cfg: Config) -> tuple[Check, Any]:
    if not cfg.project:
        return Check("project", "fail", "no project configured", "set project in ops-hpc.toml or OPS_HPC_PROJECT"), None
    try:
        proj = retry.google(clients.compute_client("ProjectsClient", cfg).get, project=cfg.project)
    except Exception as exc:
        return Check("project", "fail", f"{cfg.project}: {_msg(exc)}",
                     "check the project id, and enable the Compute Engine API: "
                     "gcloud services enable compute.googleapis.com"), None
    return Check("project", "ok", f"{cfg.project}"), proj


def check_apis(cfg: Config) -> list[Check]:
    out = []
    try:
        compute.list_vms(cfg, ours_only=False)
        out.append(Check("Compute Engine API", "ok", f"reachable, zone {cfg.zone}"))
    except Exception as exc:
        out.append(Check("Compute Engine API", "fail", _msg(exc), "gcloud services enable compute.googleapis.com"))
    try:
        retry.listing(storage.client(cfg).list_buckets, max_results=1)
        out.append(Check("Cloud Storage API", "ok", "reachable"))
    except Exception as exc:
        out.append(Check("Cloud Storage API", "fail", _msg(exc), "gcloud services enable storage.googleapis.com"))
    try:
        from google.cloud import monitoring_v3  # heavy: imported at first use, keeps --help fast

        now = time.time()
        request = monitoring_v3.ListTimeSeriesRequest(
            name=f"projects/{cfg.project}", filter='metric.type = "compute.googleapis.com/instance/uptime"',
            interval=monitoring_v3.TimeInterval(start_time=dt.datetime.fromtimestamp(now - 300, dt.timezone.utc),
                                                end_time=dt.datetime.fromtimestamp(now, dt.timezone.utc)),
            view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.HEADERS)
        client = clients.monitoring(cfg)
        retry.listing(client.list_time_series, request=request, timeout=30)
        out.append(Check("Cloud Monitoring API", "ok", "reachable"))
    except Exception as exc:
        out.append(Check("Cloud Monitoring API", "fail", _msg(exc), "gcloud services enable monitoring.googleapis.com"))
    return out


def check_oslogin(cfg: Config, project: Any) -> Check:
    if cfg.local:
        return Check("OS Login", "skip", "skipped on local cloud (local VMs have no ssh)")
    if project is None:
        return Check("OS Login", "skip", "project not readable")
    items = {i.key: i.value for i in project.common_instance_metadata.items}
    if items.get("enable-oslogin", "").upper() == "TRUE":
        return Check("OS Login", "ok", "enable-oslogin=TRUE in project metadata")
    return Check("OS Login", "fail", "enable-oslogin is not TRUE in project metadata",
                 "gcloud compute project-info add-metadata --metadata enable-oslogin=TRUE")


def check_bucket(cfg: Config) -> Check:
    try:
        created = storage.ensure_bucket(cfg)
        b = retry.google(storage.client(cfg).get_bucket, cfg.bucket_name)
    except Exception as exc:
        return Check("bucket", "fail", f"gs://{cfg.bucket_name}: {_msg(exc)}", "choose another name with OPS_HPC_BUCKET")
    verb = "created" if created else "exists"
    if cfg.local:  # fake-gcs-server does not store iamConfiguration: what was requested cannot be read back
        return Check("bucket", "ok", f"gs://{cfg.bucket_name} {verb} (uniform access and public access prevention "
                                     "requested; the local cloud does not report them back)")
    iam = b.iam_configuration
    problems = []
    if not iam.uniform_bucket_level_access_enabled:
        problems.append("uniform bucket-level access is off")
    if iam.public_access_prevention != "enforced":
        problems.append("public access prevention is not enforced")
    if problems:
        return Check("bucket", "fail", f"gs://{cfg.bucket_name}: {', '.join(problems)}",
                     f"gcloud storage buckets update gs://{cfg.bucket_name} --uniform-bucket-level-access "
                     "--public-access-prevention")
    return Check("bucket", "ok", f"gs://{cfg.bucket_name} {verb} (uniform access, public access prevention enforced)")


def check_iam(cfg: Config) -> Check:
    if cfg.local:
        return Check("IAM permissions", "skip", "skipped on local cloud (no IAM)")
    try:
        from google.auth.transport.requests import AuthorizedSession  # heavy: imported at first use, keeps --help fast

        session = AuthorizedSession(clients.credentials(cfg))
        url = f"https://cloudresourcemanager.googleapis.com/v1/projects/{cfg.project}:testIamPermissions"

        def ask() -> Any:
            resp = session.post(url, json={"permissions": list(PERMISSIONS)}, timeout=30)
            if resp.status_code in (429, 500, 502, 503, 504):
                from google.api_core import exceptions as gexc  # heavy: imported at first use, keeps --help fast

                raise gexc.from_http_status(resp.status_code, resp.text[:200])
            resp.raise_for_status()
            return resp.json()

        granted = set(retry.call(ask).get("permissions", []))
    except Exception as exc:
        return Check("IAM permissions", "fail", f"testIamPermissions failed: {_msg(exc)}",
                     "enable cloudresourcemanager.googleapis.com, or ask the project owner for roles/compute.admin, "
                     "roles/storage.admin, roles/monitoring.viewer, roles/iam.serviceAccountUser")
    missing = [p for p in PERMISSIONS if p not in granted]
    if missing:
        return Check("IAM permissions", "fail", f"missing {', '.join(missing)}",
                     "ask the project owner for roles/compute.admin, roles/storage.admin, roles/monitoring.viewer "
                     "and roles/iam.serviceAccountUser")
    return Check("IAM permissions", "ok", f"all {len(PERMISSIONS)} needed permissions granted")


def check_quota(cfg: Config) -> list[Check]:
    """The regional CPU quota line, and the family's (Cloud Quotas) line: 'skip' with the enable command when
    that API could not be asked, so a check that did not happen never reads as passed."""
    try:
        mt = vmplan.machine_type_info(cfg.replace(zone=vmplan.candidate_zones(cfg, cfg.machine_type)[0]),
                                      cfg.machine_type)
        rows = vmplan.cpu_quota(cfg, cfg.machine_type, int(mt.guest_cpus), cfg.spot)
    except Exception as exc:
        return [Check("CPU quota", "fail", _msg(exc), "check machine_type and zone in ops-hpc.toml")]
    cpus, where = int(mt.guest_cpus), cfg.region_name
    fix = f"request more at https://console.cloud.google.com/iam-admin/quotas?project={cfg.project}"
    out = []
    for name, group in (("CPU quota", [r for r in rows if "family" not in r["metric"]]),
                        ("family CPU quota", [r for r in rows if "family" in r["metric"]])):
        unchecked = [r for r in group if not r.get("checked", True)]
        if unchecked:
            out.append(Check(name, "skip", f"could not check: {unchecked[0]['note']}", quotas.ENABLE))
            continue
        if not group:
            if name == "family CPU quota":
                out.append(Check(name, "ok", f"{cfg.machine_type}: its family has no CPU quota of its own"))
            continue
        text = ", ".join(f"{r['metric']} {r['usage']:g}/{r['limit']:g}" for r in group)
        if any(not r["ok"] for r in group):
            out.append(Check(name, "fail", f"{cfg.machine_type} needs {cpus} vCPUs in {where}; {text}", fix))
        else:
            out.append(Check(name, "ok", f"{cfg.machine_type} ({cpus} vCPUs) fits in {where}: {text}"))
    return out


def check_vm_account(cfg: Config) -> Check:
    """The account VMs run as (lib/vmaccount.py): created or completed on GCP; emulated by the local cloud."""
    account = vmaccount.email(cfg)
    if cfg.local:
        return Check("VM service account", "ok", f"VMs run as {account} (the local cloud emulates its permissions; "
                                                 "nothing to create)")
    try:
        done = vmaccount.ensure(cfg)
    except Exception as exc:
        return Check("VM service account", "fail", f"{account}: {_msg(exc)}",
                     "ask the project owner for roles/iam.serviceAccountAdmin, roles/iam.roleAdmin and "
                     "roles/resourcemanager.projectIamAdmin once, or set service_account in ops-hpc.toml")
    return Check("VM service account", "ok", f"{account}: " + ("; ".join(done) if done else
                 "objectAdmin on the bucket, self-delete on ops-hpc-* instances (all in place)"))


def run_checks(cfg: Config, *, on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """Every check, in order, each reported as it finishes; returns them all."""
    checks: list[Check] = []

    def add(check: Check) -> None:
        checks.append(check)
        if on_check is not None:
            on_check(check)

    add(check_credentials(cfg))
    if checks[-1].status == "fail":
        return checks
    try:
        cfg = clients.resolve(cfg)
    except Exception as exc:
        add(Check("endpoints", "fail", _msg(exc), "start the local cloud: bin/localcloud up"))
        return checks
    project_check, project = check_project(cfg)
    add(project_check)
    for check in check_apis(cfg):
        add(check)
    add(check_oslogin(cfg, project))
    add(check_bucket(cfg))
    add(check_iam(cfg))
    if checks[-2].status == "ok":  # the VM account's bucket grant needs the bucket
        add(check_vm_account(cfg))
    for check in check_quota(cfg):
        add(check)
    return checks
