"""Regions, zones, machine types, the project resource and regional quotas."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from lib.localcloud.compute import schema
from lib.localcloud.compute.exceptions import (
    ResourceNotFound,
)
from lib.localcloud.compute.models.base import ModelBase
from lib.localcloud.compute.models.util import (
    DEFAULT_CPUS_LIMIT,
    FAMILY_METRICS,
    GOOGLE,
    REGIONS,
    ZONE_RX,
    fingerprint,
    last_segment,
    numeric_project,
    offered_in,
    parse_machine_type,
    predefined_machine_types,
    region_of,
)

REGION_METRICS = frozenset(schema.enum("Quota", "metric"))


class RegionsMixin(ModelBase):
    """Regions, zones, machine types and quotas, computed from the instances that hold vCPUs."""

    def check_zone(self, project: str, zone: str) -> None:
        if not ZONE_RX.fullmatch(zone):
            raise ResourceNotFound(f"projects/{project}/zones/{zone}")

    def machine_type(self, project: str, zone: str, name: str) -> dict[str, Any]:
        self.check_zone(project, zone)
        shape = parse_machine_type(name)
        if shape is None or not offered_in(shape["family"], zone):
            raise ResourceNotFound(f"projects/{project}/zones/{zone}/machineTypes/{name}")
        return {"kind": "compute#machineType", "id": str(int(hashlib.md5(name.encode()).hexdigest()[:12], 16)),
                "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": name,
                "description": f"{shape['guestCpus']} vCPUs, {shape['memoryMb'] / 1024:g} GB RAM",
                "guestCpus": shape["guestCpus"], "memoryMb": shape["memoryMb"], "maximumPersistentDisks": 128,
                "maximumPersistentDisksSizeGb": "263168", "zone": zone, "isSharedCpu": shape["isSharedCpu"],
                "selfLink": f"{self.zone_link(project, zone)}/machineTypes/{name}", "architecture": "X86_64"}

    def list_machine_types(self, project: str, zone: str) -> list[dict[str, Any]]:
        self.check_zone(project, zone)
        return [self.machine_type(project, zone, n) for n in predefined_machine_types()
                if offered_in(n.split("-")[0], zone)]

    def list_regions(self, project: str) -> list[dict[str, Any]]:
        return [self.region(project, r) for r in sorted(REGIONS)]

    def list_zones(self, project: str) -> list[dict[str, Any]]:
        return [self.zone(project, f"{r}-{s}") for r in sorted(REGIONS) for s in REGIONS[r]]

    def quota_limit(self, region: str, metric: str) -> float:
        with self.lock:
            regional = self.quotas["regions"].get(region, {})
            if metric in regional:
                return float(regional[metric])
            return float(self.quotas["default"].get(metric, DEFAULT_CPUS_LIMIT))

    def set_quota(self, metric: str, limit: float, region: str | None = None) -> None:
        with self.lock:
            if region:
                self.quotas["regions"].setdefault(region, {})[metric] = float(limit)
            else:
                self.quotas["default"][metric] = float(limit)
            self._save()

    def quota_usage(self, project: str, region: str) -> dict[str, float]:
        """vCPUs held by non-TERMINATED instances of the region, by metric (CPUS counts everything)."""
        usage: dict[str, float] = {"CPUS": 0.0, "INSTANCES": 0.0}
        with self.lock:
            for key, inst in self.instances.items():
                p, zone, _ = key.split("/")
                if p != project or region_of(zone) != region or inst["status"] == "TERMINATED":
                    continue
                shape = parse_machine_type(last_segment(inst["machineType"], "machineTypes")) or {}
                cpus = float(shape.get("guestCpus", 0))
                usage["CPUS"] += cpus
                usage["INSTANCES"] += 1
                if shape.get("metric"):
                    usage[shape["metric"]] = usage.get(shape["metric"], 0.0) + cpus
        return usage

    def region(self, project: str, region: str) -> dict[str, Any]:
        if not re.fullmatch(r"[a-z]+-[a-z]+[0-9]+", region):
            raise ResourceNotFound(f"projects/{project}/regions/{region}")
        usage = self.quota_usage(project, region)
        # Only metrics of the API's Quota.metric enum: families like H3 are not there (the Cloud Quotas API has them)
        quotas = [{"metric": m, "limit": self.quota_limit(region, m), "usage": usage.get(m, 0.0)}
                  for m in ["CPUS", *FAMILY_METRICS] if m in REGION_METRICS]
        quotas.append({"metric": "INSTANCES", "limit": self.quota_limit(region, "INSTANCES") if
                       "INSTANCES" in self.quotas["default"] else 6000.0, "usage": usage["INSTANCES"]})
        quotas.append({"metric": "PREEMPTIBLE_CPUS", "limit": 0.0, "usage": 0.0})
        base = f"{GOOGLE}/projects/{project}"
        return {"kind": "compute#region", "id": str(int(hashlib.md5(region.encode()).hexdigest()[:10], 16)),
                "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": region, "description": region,
                "status": "UP", "zones": [f"{base}/zones/{region}-{s}" for s in REGIONS.get(region, "abcf")],
                "quotas": quotas,
                "selfLink": f"{base}/regions/{region}", "supportsPzs": False}

    def zone(self, project: str, zone: str) -> dict[str, Any]:
        self.check_zone(project, zone)
        base = f"{GOOGLE}/projects/{project}"
        return {"kind": "compute#zone", "id": str(int(hashlib.md5(zone.encode()).hexdigest()[:10], 16)),
                "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": zone, "description": zone,
                "status": "UP", "region": f"{base}/regions/{region_of(zone)}", "selfLink": f"{base}/zones/{zone}",
                "availableCpuPlatforms": ["Intel Sapphire Rapids", "AMD Milan", "Intel Cascade Lake"],
                "supportsPzs": False}

    def project(self, project: str) -> dict[str, Any]:
        return {"kind": "compute#project", "id": numeric_project(project), "name": project,
                "creationTimestamp": "2020-01-01T00:00:00.000-08:00",
                "commonInstanceMetadata": {"kind": "compute#metadata", "fingerprint": fingerprint([])},
                "defaultServiceAccount": self.default_sa(project), "xpnProjectStatus": "UNSPECIFIED_XPN_PROJECT_STATUS",
                "selfLink": f"{GOOGLE}/projects/{project}"}

    @staticmethod
    def default_sa(project: str) -> str:
        return f"{numeric_project(project)}-compute@developer.gserviceaccount.com"
