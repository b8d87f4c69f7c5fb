"""Saving and loading the Compute state, the public seed image, recovery after a host restart, paths."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil

from lib.localcloud import vms
from lib.localcloud.compute.models.base import ModelBase
from lib.localcloud.compute.models.util import (
    ACTIVE,
    GOOGLE,
    MAX_OPERATIONS,
    PUBLIC_IMAGE_PROJECT,
    SEED_FAMILY,
    SEED_IMAGE,
    USAGE_KEEP_SECONDS,
    disk_parts,
    now_rfc3339,
)
from lib.localcloud.files import write_atomic


class PersistenceMixin(ModelBase):
    """State in <root>/compute.json, the seed image, and what survives a host restart."""

    def _load(self) -> None:
        if not self.state_path.exists():
            return
        data = json.loads(self.state_path.read_text(encoding="utf-8"))
        self.instances = data.get("instances", {})
        self.local = data.get("local", {})
        self.images = data.get("images", {})
        self.operations = data.get("operations", {})
        self.request_ids = data.get("request_ids", {})
        self.quotas = data.get("quotas", self.quotas)
        self.usage = data.get("usage", {})
        self.heartbeat = float(data.get("heartbeat", 0.0))
        self.metrics_enabled = bool(data.get("metrics_enabled", True))
        for op in self.operations.values():
            if op["status"] != "DONE":  # its worker ended with the previous daemon
                op.update({"status": "DONE", "progress": 100, "endTime": now_rfc3339(self.heartbeat or None),
                           "error": {"errors": [{"code": "INTERNAL_ERROR", "message": "The local host restarted "
                                                 "while the operation ran."}]},
                           "httpErrorStatusCode": 500, "httpErrorMessage": "INTERNAL SERVER ERROR"})

    def _save(self) -> None:
        with self.lock:
            self._prune()
            data = {"instances": self.instances, "local": self.local, "images": self.images,
                    "operations": self.operations, "request_ids": self.request_ids, "quotas": self.quotas,
                    "usage": self.usage, "heartbeat": self.heartbeat, "metrics_enabled": self.metrics_enabled}
            write_atomic(self.state_path, data)

    def _prune(self) -> None:
        if len(self.operations) > MAX_OPERATIONS:
            for key in sorted(self.operations, key=lambda k: self.operations[k]["insertTime"])[:-MAX_OPERATIONS]:
                del self.operations[key]
            live = set(self.operations)
            self.request_ids = {k: v for k, v in self.request_ids.items() if v in live}
        horizon = time.time() - USAGE_KEEP_SECONDS
        for iid in list(self.usage):
            rec = self.usage[iid]
            rec["intervals"] = [iv for iv in rec["intervals"] if iv[1] is None or iv[1] >= horizon]
            if not rec["intervals"] and not rec.get("live"):
                del self.usage[iid]

    def _seed(self) -> None:
        """The public base image every ops-hpc image build starts from (a near-empty Rocky Linux 8 stand-in)."""
        key = f"{PUBLIC_IMAGE_PROJECT}/{SEED_IMAGE}"
        if key in self.images:
            return
        folder = self.image_dir(PUBLIC_IMAGE_PROJECT, SEED_IMAGE)
        (folder / "etc").mkdir(parents=True, exist_ok=True)
        (folder / "etc" / "os-release").write_text(
            'NAME="Rocky Linux"\nVERSION="8.10 (Green Obsidian)"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
            'VERSION_ID="8.10"\nPLATFORM_ID="platform:el8"\nPRETTY_NAME="Rocky Linux 8.10 (Green Obsidian)"\n'
            "# localcloud stand-in: a folder, not a real OS image\n")
        self.images[key] = self._image_resource(PUBLIC_IMAGE_PROJECT, SEED_IMAGE, family=SEED_FAMILY, disk_gb=20,
                                                folder=folder, description="Rocky Linux 8 for HPC (localcloud)")

    def _recover(self) -> None:
        """Apply the host lifecycle rules (module docstring) to instances recorded as running."""
        boot = psutil.boot_time()
        stop_at = min(time.time(), self.heartbeat or time.time())
        for key, inst in self.instances.items():
            local = self.local.setdefault(key, {})
            local.pop("ending", None)
            if inst["status"] not in ACTIVE:
                continue
            started = local.get("last_start", 0.0)
            alive = vms.process(local.get("pid"), local.get("create_time")) is not None
            if inst["status"] != "RUNNING" or boot > started or (not alive and local.get("pid")
                                                                 and not local.get("script_done")):
                if alive:
                    vms.end_tree(local.get("pid"), local.get("create_time"), inst["id"], grace=1.0)
                inst["status"] = "TERMINATED"
                inst["lastStopTimestamp"] = now_rfc3339(stop_at)
                self._close_usage(inst["id"], stop_at)
                disk = self.disk_dir_of(inst)
                if disk.exists():
                    vms.console_append(disk, "localcloud: the local host restarted; instance TERMINATED\n")
                local["pid"] = None
                continue
            if "termination_at" not in local:  # state saved before termination times were kept
                self._arm_termination(key)
            self._start_metadata(key, local.get("metadata_port", 0))
            if alive:
                vms.watch(None, local["pid"], local["create_time"], self._exit_callback(key, local["pid"]))

    # ------------------------------------------------------------------ paths and links

    def disk_dir(self, project: str, zone: str, name: str) -> Path:
        return self.root / "disks" / project / zone / name

    def image_dir(self, project: str, name: str) -> Path:
        return self.root / "images" / project / name

    def disk_dir_of(self, inst: dict[str, Any]) -> Path:
        boot = self._boot_disk(inst)
        project, zone, name = disk_parts(boot["source"])
        return self.disk_dir(project, zone, name)

    @staticmethod
    def _boot_disk(inst: dict[str, Any]) -> dict[str, Any]:
        return next((d for d in inst["disks"] if d.get("boot")), inst["disks"][0])

    @staticmethod
    def zone_link(project: str, zone: str) -> str:
        return f"{GOOGLE}/projects/{project}/zones/{zone}"

    def instance_link(self, project: str, zone: str, name: str) -> str:
        return f"{self.zone_link(project, zone)}/instances/{name}"
