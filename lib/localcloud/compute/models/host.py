"""What the daemon, the admin API and the Monitoring fake read about the local VMs; host shutdown."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import psutil

from lib.localcloud import vms
from lib.localcloud.compute.models.base import ModelBase
from lib.localcloud.compute.models.util import last_segment, parse_machine_type


class HostMixin(ModelBase):
    """Read-only views for the daemon, the admin API and the Monitoring fake; host shutdown."""

    def vm_info(self, key: str) -> dict[str, Any]:
        with self.lock:
            inst, local = self.instances[key], self.local.get(key, {})
            project, zone, name = key.split("/")
            disk = self.disk_dir_of(inst)
            md = self._runtime.get(key, {}).get("metadata")
            host = md.host if md is not None else None
            pid, ctime, iid = local.get("pid"), local.get("create_time"), inst["id"]
        members = vms.vm_members(pid, ctime, iid, deep=False) if pid else []
        env = vms.vm_environment(disk, host or "", iid, self.vm_env) if host else {}
        return {"project": project, "zone": zone, "name": name, "id": iid, "status": inst["status"],
                "disk": str(disk), "metadata_host": host, "pids": sorted(p.pid for p in members), "env": env,
                "script_done": bool(local.get("script_done")), "exit_code": local.get("exit_code"),
                "preempted": bool(local.get("preempted"))}

    def vms_info(self) -> list[dict[str, Any]]:
        with self.lock:
            keys = sorted(self.instances)
        return [self.vm_info(k) for k in keys if k in self.instances]

    def vm_processes(self) -> list[tuple[int, float]]:
        """(pid, create_time) of each live VM root process (or its orphans once the root script exited)."""
        out: list[tuple[int, float]] = []
        with self.lock:
            roots = [(loc.get("pid"), loc.get("create_time"), self.instances[k]["id"])
                     for k, loc in self.local.items() if loc.get("pid") and k in self.instances]
        for pid, ctime, iid in roots:
            if vms.process(pid, ctime) is not None:
                out.append((pid, ctime))
                continue
            for proc in vms.vm_members(pid, ctime, iid, deep=False):
                try:
                    out.append((proc.pid, proc.create_time()))
                except psutil.Error:
                    pass
        return out

    def monitored(self) -> list[dict[str, Any]]:
        """Snapshot for the monitoring fake: running instances with their shape, disk and process root."""
        out = []
        with self.lock:
            for key, inst in self.instances.items():
                if inst["status"] != "RUNNING":
                    continue
                project, zone, name = key.split("/")
                local = self.local.get(key, {})
                shape = parse_machine_type(last_segment(inst["machineType"], "machineTypes")) or {}
                out.append({"key": key, "project": project, "zone": zone, "name": name, "id": inst["id"],
                            "guestCpus": shape.get("guestCpus", 1), "memoryMb": shape.get("memoryMb", 1024),
                            "disk": self.disk_dir_of(inst), "diskSizeGb": int(self._boot_disk(inst)["diskSizeGb"]),
                            "pid": local.get("pid"), "create_time": local.get("create_time")})
        return out

    def usage_records(self) -> dict[str, dict[str, Any]]:
        """Per instance id: project, zone, name, machineType and running intervals [[start, end|None]]."""
        with self.lock:
            return copy.deepcopy(self.usage)

    def shutdown(self) -> None:
        """Daemon stop = host power off: end every VM tree and metadata server; statuses stay (see module doc)."""
        with self.lock:
            self._stopping = True
            self._wake.notify_all()
            jobs = []
            for key, local in self.local.items():
                inst = self.instances.get(key)
                if inst is None:
                    continue
                jobs.append((local.get("pid"), local.get("create_time"), inst["id"]))
            runtimes, self._runtime = self._runtime, {}
            self.heartbeat = time.time()
        threads = [threading.Thread(target=vms.end_tree, args=job, daemon=True) for job in jobs]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=10)
        for rt in runtimes.values():
            if rt.get("metadata") is not None:
                rt["metadata"].stop()
        with self.lock:
            self._save()

