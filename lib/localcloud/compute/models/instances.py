"""Instance reads, insert (validate -> resource -> disk -> boot), metadata and labels."""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lib.localcloud import vms
from lib.localcloud.compute.exceptions import (
    AlreadyExists,
    ComputeError,
    ConditionNotMet,
    InvalidValue,
    QuotaExceeded,
    ResourceNotFound,
    ResourceNotReady,
    ZoneResourcePoolExhausted,
)
from lib.localcloud.compute.models.base import ModelBase
from lib.localcloud.compute.models.filters import compile_filter
from lib.localcloud.compute.models.util import (
    GOOGLE,
    check_labels,
    check_name,
    fingerprint,
    last_segment,
    new_id,
    now_rfc3339,
    numeric_project,
    parse_machine_type,
    parse_rfc3339,
    region_of,
    same_fingerprint,
)


@dataclass
class InsertPlan:
    """A validated instances.insert request: what to create, from which image, where."""

    project: str
    zone: str
    name: str
    body: dict[str, Any]
    mt_name: str
    shape: dict[str, Any]
    boot: dict[str, Any]
    image_project: str
    image: dict[str, Any]
    disk_gb: int
    disk_name: str
    labels: dict[str, str]
    scheduling: dict[str, Any]
    link: str

    @property
    def key(self) -> str:
        return f"{self.project}/{self.zone}/{self.name}"


class InstancesMixin(ModelBase):
    """Instance resources: reads, insert, metadata and labels (with fingerprints as optimistic locks)."""

    def _instance(self, project: str, zone: str, name: str) -> tuple[str, dict[str, Any]]:
        key = f"{project}/{zone}/{name}"
        inst = self.instances.get(key)
        if inst is None:
            self.check_zone(project, zone)
            raise ResourceNotFound(f"projects/{project}/zones/{zone}/instances/{name}")
        return key, inst

    def get_instance(self, project: str, zone: str, name: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._instance(project, zone, name)[1])

    def list_instances(self, project: str, zone: str | None, flt: str | None = None) -> list[dict[str, Any]]:
        """Instances of a zone (or, with zone None, of every zone) that match the filter, by name."""
        if zone:
            self.check_zone(project, zone)
        match = compile_filter(flt)
        with self.lock:
            items = [copy.deepcopy(i) for k, i in self.instances.items()
                     if k.split("/")[0] == project and (zone is None or k.split("/")[1] == zone) and match(i)]
        return sorted(items, key=lambda i: (i["zone"], i["name"]))

    def serial_port_output(self, project: str, zone: str, name: str, start: int = 0) -> dict[str, Any]:
        """The VM console (boot lines + startup script stdout/stderr); GCE keeps the last 1 MiB."""
        with self.lock:
            _, inst = self._instance(project, zone, name)
            path = vms.console_path(self.disk_dir_of(inst))
        data = path.read_bytes() if path.exists() else b""
        size = len(data)
        start = max(start, size - (1 << 20), 0) if start >= 0 else max(size + start, 0)
        start = min(start, size)
        return {"kind": "compute#serialPortOutput", "contents": data[start:].decode("utf-8", "replace"),
                "start": str(start), "next": str(size),
                "selfLink": f"{self.instance_link(project, zone, name)}/serialPort"}

    # ------------------------------------------------------------------ instances: insert

    def insert_instance(self, project: str, zone: str, body: dict[str, Any],
                        request_id: str | None = None) -> dict[str, Any]:
        """Validate everything, then create the boot disk from the image and boot the VM.

        Quota exhaustion is reported in a failed operation (as GCE does); the other errors are HTTP errors.
        """

        def work() -> dict[str, Any]:
            plan = self._validate_insert(project, zone, body)
            with self.lock:
                if plan.key in self.instances:
                    raise AlreadyExists(f"projects/{project}/zones/{zone}/instances/{plan.name}")
                refusal = self._quota_shortfall(project, zone, plan.shape) or self._stockout(zone)
                if refusal is not None:  # GCE reports these in the operation, not as an HTTP error
                    return self._pending(project, zone, "insert", plan.link, new_id(), [_raiser(refusal)])
                if self._disk_owner(project, zone, plan.disk_name):
                    raise AlreadyExists(f"projects/{project}/zones/{zone}/disks/{plan.disk_name}")
                inst = self._instance_resource(plan)
                self.instances[plan.key] = inst  # PROVISIONING holds the name and the quota from now on
                self.local[plan.key] = {"image": plan.image["selfLink"]}
            return self._pending(project, zone, "insert", plan.link, inst["id"],
                                 [lambda: self._provision_disk(plan, inst),
                                  lambda: self._advance(plan.key, inst, "PROVISIONING", "STAGING"),
                                  lambda: self._advance(plan.key, inst, "STAGING", "RUNNING")])

        return self._idempotent(project, request_id, work)

    def _validate_insert(self, project: str, zone: str, body: dict[str, Any]) -> InsertPlan:
        """Every check that needs no lock: name, machine type, boot disk and image, labels, scheduling."""
        self.check_zone(project, zone)
        name = body.get("name") or ""
        check_name(name, "resource.name")
        mt_ref = body.get("machineType") or ""
        mt_name = last_segment(mt_ref, "machineTypes")
        shape = parse_machine_type(mt_name)
        if shape is None:
            raise InvalidValue(f"Invalid value for field 'resource.machineType': '{mt_ref}'. Machine type with "
                               f"name '{mt_name}' does not exist in zone '{zone}'.")
        disks = body.get("disks") or []
        boot = next((d for d in disks if d.get("boot")), disks[0] if disks else None)
        if boot is None:
            raise InvalidValue("Invalid value for field 'resource.disks': ''. Boot disk must be specified.")
        params = boot.get("initializeParams") or {}
        if boot.get("source") or not params.get("sourceImage"):
            raise InvalidValue("Invalid value for field 'resource.disks[0].initializeParams.sourceImage': ''. "
                               "The local cloud creates boot disks from images only.")
        image_project, image = self.resolve_image(params["sourceImage"])
        disk_gb = int(params.get("diskSizeGb") or image["diskSizeGb"])
        if disk_gb < int(image["diskSizeGb"]):
            raise InvalidValue(f"Invalid value for field 'resource.disks[0].initializeParams.diskSizeGb': "
                               f"'{disk_gb}'. Requested disk size cannot be smaller than the image size "
                               f"({image['diskSizeGb']} GB)")
        return InsertPlan(project=project, zone=zone, name=name, body=body, mt_name=mt_name, shape=shape, boot=boot,
                          image_project=image_project, image=image, disk_gb=disk_gb,
                          disk_name=params.get("diskName") or name, labels=check_labels(body.get("labels") or {}),
                          scheduling=scheduling_of(body.get("scheduling") or {}),
                          link=self.instance_link(project, zone, name))

    def _stockout(self, zone: str) -> ComputeError | None:
        """An armed 'stockout' fault for this zone: GCE has no capacity for the machine type right now."""
        if self.faults is None or self.faults.take("compute", "POST", f"zones/{zone}/instances", kinds=("stockout",)) is None:
            return None
        return ZoneResourcePoolExhausted(zone)

    def _quota_shortfall(self, project: str, zone: str, shape: dict[str, Any]) -> QuotaExceeded | None:
        """The first regional quota (CPUS, then the family's) that `shape` more vCPUs would exceed (lock held)."""
        region = region_of(zone)
        usage = self.quota_usage(project, region)
        for metric in ["CPUS"] + ([shape["metric"]] if shape.get("metric") else []):
            limit = self.quota_limit(region, metric)
            if usage.get(metric, 0.0) + shape.get("guestCpus", 0) > limit:
                return QuotaExceeded(metric, limit, region)
        return None

    def _instance_resource(self, plan: InsertPlan) -> dict[str, Any]:
        """The instance as GCE returns it right after insert (status PROVISIONING)."""
        project, zone, body = plan.project, plan.zone, plan.body
        t = now_rfc3339()
        items = [{"key": i["key"], "value": i.get("value", "")} for i in
                 (body.get("metadata") or {}).get("items", [])]
        nics = copy.deepcopy(body.get("networkInterfaces") or [{}])
        for n, nic in enumerate(nics):
            nic.setdefault("network", f"{GOOGLE}/projects/{project}/global/networks/default")
            nic.setdefault("subnetwork", f"{GOOGLE}/projects/{project}/regions/{region_of(zone)}/subnetworks/default")
            nic.setdefault("stackType", "IPV4_ONLY")
            nic.update({"kind": "compute#networkInterface", "name": f"nic{n}", "networkIP": "127.0.0.1",
                        "fingerprint": fingerprint(n)})
            for ac in nic.get("accessConfigs", []):
                ac.update({"kind": "compute#accessConfig", "natIP": "127.0.0.1"})
                ac.setdefault("type", "ONE_TO_ONE_NAT")
                ac.setdefault("name", "External NAT")
        zone_link = self.zone_link(project, zone)
        inst = {
            "kind": "compute#instance", "id": new_id(), "creationTimestamp": t, "name": plan.name,
            "description": body.get("description", ""), "tags": body.get("tags") or {"fingerprint": ""},
            "machineType": f"{zone_link}/machineTypes/{plan.mt_name}", "status": "PROVISIONING",
            "zone": zone_link, "canIpForward": False, "networkInterfaces": nics,
            "disks": [{"kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": "READ_WRITE",
                       "source": f"{zone_link}/disks/{plan.disk_name}",
                       "deviceName": plan.boot.get("deviceName") or plan.disk_name, "index": 0, "boot": True,
                       "autoDelete": plan.boot.get("autoDelete", True) is not False, "interface": "SCSI",
                       "diskSizeGb": str(plan.disk_gb), "architecture": "X86_64",
                       "licenses": [], "guestOsFeatures": []}],
            "metadata": {"kind": "compute#metadata", "fingerprint": fingerprint(items), "items": items},
            "serviceAccounts": body.get("serviceAccounts") or [],
            "selfLink": plan.link, "scheduling": plan.scheduling, "cpuPlatform": "Intel Cascade Lake",
            "labels": plan.labels, "labelFingerprint": fingerprint(plan.labels), "startRestricted": False,
            "deletionProtection": bool(body.get("deletionProtection", False)),
            "fingerprint": fingerprint([plan.name, t]), "satisfiesPzi": False,
            "shieldedInstanceConfig": {"enableSecureBoot": False, "enableVtpm": True,
                                       "enableIntegrityMonitoring": True, **(body.get("shieldedInstanceConfig") or {})},
            "shieldedInstanceIntegrityPolicy": {"updateAutoLearnPolicy": True},
        }
        if not items:
            del inst["metadata"]["items"]
        return inst

    def _provision_disk(self, plan: InsertPlan, inst: dict[str, Any]) -> None:
        """Copy the image folder to the boot disk folder (without the lock: images can be large).

        On failure the instance is forgotten; if it was deleted meanwhile, the copy is removed.
        """
        disk = self.disk_dir(plan.project, plan.zone, plan.disk_name)
        self._expect(plan.key, inst, "PROVISIONING")
        try:
            if disk.exists():
                shutil.rmtree(disk)
            disk.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(self.image_dir(plan.image_project, plan.image["name"]), disk, symlinks=True)
        except OSError as exc:
            with self.lock:
                if self.instances.get(plan.key) is inst:
                    del self.instances[plan.key]
                    self.local.pop(plan.key, None)
            shutil.rmtree(disk, ignore_errors=True)
            raise InvalidValue(f"Could not create the boot disk of '{plan.name}' from the image: {exc}") from None
        with self.lock:
            if self.instances.get(plan.key) is not inst:
                shutil.rmtree(disk, ignore_errors=True)
        self._expect(plan.key, inst, "PROVISIONING")

    def _expect(self, key: str, inst: dict[str, Any], status: str) -> None:
        """Raise if the instance was deleted, stopped or replaced while an operation on it was under way."""
        with self.lock:
            if self.instances.get(key) is not inst:
                project, zone, name = key.split("/")
                raise ResourceNotFound(f"projects/{project}/zones/{zone}/instances/{name}")
            if inst["status"] != status:
                raise ResourceNotReady(f"The resource '{inst['selfLink']}' is {inst['status']}, not {status}")

    def _advance(self, key: str, inst: dict[str, Any], before: str, after: str) -> None:
        """One lifecycle step: PROVISIONING -> STAGING, or STAGING -> RUNNING (which boots the VM)."""
        with self.lock:
            self._expect(key, inst, before)
            inst["status"] = after
            if after == "RUNNING":
                inst["lastStartTimestamp"] = now_rfc3339()
                self._boot(key)
                self._arm_termination(key)
                self._wake.notify_all()

    # ------------------------------------------------------------------ instances: metadata and labels

    def set_metadata(self, project: str, zone: str, name: str, body: dict[str, Any],
                     request_id: str | None = None) -> dict[str, Any]:
        """Replace the metadata if `fingerprint` still matches (412 otherwise); applied when the operation runs."""
        items = [{"key": i["key"], "value": i.get("value", "")} for i in body.get("items") or []]
        keys = [i["key"] for i in items]
        if len(set(keys)) != len(keys):
            raise InvalidValue("Invalid value for field 'metadata.items': duplicate keys.")

        def check(inst: dict[str, Any]) -> None:
            if not same_fingerprint(body.get("fingerprint"), inst["metadata"]["fingerprint"]):
                raise ConditionNotMet("Supplied fingerprint does not match current metadata fingerprint.")

        def apply(inst: dict[str, Any]) -> None:
            inst["metadata"] = {"kind": "compute#metadata", "fingerprint": fingerprint(items)}
            if items:
                inst["metadata"]["items"] = items

        return self._update_instance(project, zone, name, "setMetadata", check, apply, request_id)

    def set_labels(self, project: str, zone: str, name: str, body: dict[str, Any],
                   request_id: str | None = None) -> dict[str, Any]:
        """Replace the labels if `labelFingerprint` still matches (412 otherwise); applied when the operation runs."""
        labels = check_labels(body.get("labels") or {})

        def check(inst: dict[str, Any]) -> None:
            if not same_fingerprint(body.get("labelFingerprint"), inst["labelFingerprint"]):
                raise ConditionNotMet("Labels fingerprint either invalid or resource labels have changed")

        def apply(inst: dict[str, Any]) -> None:
            inst["labels"] = dict(labels)
            inst["labelFingerprint"] = fingerprint(labels)

        return self._update_instance(project, zone, name, "setLabels", check, apply, request_id)

    def _update_instance(self, project: str, zone: str, name: str, op_type: str,
                         check: Callable[[dict[str, Any]], None], apply: Callable[[dict[str, Any]], None],
                         request_id: str | None) -> dict[str, Any]:
        """Check the precondition now (an HTTP 412) and again when the operation applies the change."""

        def work() -> dict[str, Any]:
            with self.lock:
                key, inst = self._instance(project, zone, name)
                check(inst)

            def step() -> None:
                with self.lock:
                    current = self.instances.get(key)
                    if current is None:
                        raise ResourceNotFound(f"projects/{project}/zones/{zone}/instances/{name}")
                    check(current)
                    apply(current)

            return self._pending(project, zone, op_type, inst["selfLink"], inst["id"], [step])

        return self._idempotent(project, request_id, work)

    def metadata_view(self, key: str) -> dict[str, Any] | None:
        """What the VM's metadata server shows, read live."""
        with self.lock:
            inst, local = self.instances.get(key), self.local.get(key)
            if inst is None or local is None:
                return None
            project, zone, name = key.split("/")
            accounts = inst.get("serviceAccounts") or []
            return {"project": project, "numeric_project": numeric_project(project), "zone": zone, "name": name,
                    "id": inst["id"], "machine_type": last_segment(inst["machineType"], "machineTypes"),
                    "attributes": {i["key"]: i.get("value", "") for i in inst["metadata"].get("items", [])},
                    "preempted": bool(local.get("preempted")),
                    "email": accounts[0]["email"] if accounts and accounts[0].get("email") != "default"
                    else self.default_sa(project),
                    "scopes": accounts[0].get("scopes") if accounts else None}
def scheduling_of(raw: dict[str, Any]) -> dict[str, Any]:
    """Scheduling as GCE stores it, with the defaults GCE fills in, refusing the combinations GCE refuses."""
    field = "Invalid value for field 'resource.scheduling."
    preemptible = raw.get("preemptible")
    model = raw.get("provisioningModel") or ("SPOT" if preemptible else "STANDARD")
    if model not in ("SPOT", "STANDARD"):
        raise InvalidValue(f"{field}provisioningModel': '{model}'. The local cloud supports SPOT and STANDARD.")
    spot = model == "SPOT"
    if preemptible is True and not spot:
        raise InvalidValue(f"{field}preemptible': 'true'. Preemptible VMs must use provisioningModel SPOT "
                           "(or leave it unset).")
    if preemptible is False and spot:
        raise InvalidValue(f"{field}preemptible': 'false'. Spot VMs are preemptible.")
    if spot and raw.get("automaticRestart") is True:
        raise InvalidValue(f"{field}automaticRestart': 'true'. Spot VMs cannot restart automatically; "
                           "set automaticRestart to false.")
    if spot and raw.get("onHostMaintenance", "TERMINATE") != "TERMINATE":
        raise InvalidValue(f"{field}onHostMaintenance': '{raw['onHostMaintenance']}'. Spot VMs must use "
                           "onHostMaintenance TERMINATE.")
    out: dict[str, Any] = {
        "provisioningModel": model, "preemptible": spot,
        "onHostMaintenance": raw.get("onHostMaintenance") or ("TERMINATE" if spot else "MIGRATE"),
        "automaticRestart": False if spot else raw.get("automaticRestart", True),
    }
    action = raw.get("instanceTerminationAction")
    if action and action not in ("STOP", "DELETE"):
        raise InvalidValue(f"{field}instanceTerminationAction': '{action}'.")
    mrd, until = raw.get("maxRunDuration"), raw.get("terminationTime")
    if mrd and until:
        raise InvalidValue(f"{field}terminationTime': '{until}'. Only one of maxRunDuration and terminationTime "
                           "can be set.")
    if (mrd or until) and not action:
        raise InvalidValue(f"{field}instanceTerminationAction': ''. instanceTerminationAction must be set when "
                           "maxRunDuration or terminationTime is set.")
    if mrd:
        seconds = int(mrd.get("seconds", 0))
        if not 30 <= seconds <= 120 * 86400 or int(mrd.get("nanos", 0)):
            raise InvalidValue(f"{field}maxRunDuration.seconds': '{seconds}'. Must be between 30 seconds and "
                               "120 days, in whole seconds.")
        out["maxRunDuration"] = {"seconds": str(seconds)}
    if until:
        try:
            end = parse_rfc3339(until)
        except ValueError:
            raise InvalidValue(f"{field}terminationTime': '{until}'. Must be an RFC 3339 timestamp.") from None
        if end < time.time() + 30:
            raise InvalidValue(f"{field}terminationTime': '{until}'. Must be at least 30 seconds in the future.")
        out["terminationTime"] = until
    if spot or action:
        out["instanceTerminationAction"] = action or "STOP"
    return out


def _raiser(error: ComputeError) -> Callable[[], None]:
    def step() -> None:
        raise error

    return step
