"""Powering instances on and off: VM process trees, metadata servers, stop/start/delete."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

import psutil

from lib.localcloud import LocalCloudError, vms
from lib.localcloud.compute.exceptions import (
    InvalidValue,
    ResourceNotReady,
)
from lib.localcloud.compute.models.base import ModelBase
from lib.localcloud.compute.models.instances import _raiser
from lib.localcloud.compute.models.util import (
    STOP_GRACE,
    disk_parts,
    last_segment,
    metadata_value,
    now_rfc3339,
    parse_machine_type,
)
from lib.localcloud.metadata import MetadataServer


class PowerMixin(ModelBase):
    """Power transitions of an instance and the VM process tree behind it."""

    def _boot(self, key: str) -> None:
        """Power on (lock held): metadata server, uptime record, startup script as a process tree."""
        inst, local = self.instances[key], self.local[key]
        disk = self.disk_dir_of(inst)
        vms.prepare_disk(disk)
        t = time.time()
        local.update({"last_start": t, "preempted": False, "expiring": False, "script_done": False, "exit_code": None, "pid": None,
                      "create_time": None})
        project, zone, name = key.split("/")
        rec = self.usage.setdefault(inst["id"], {"project": project, "zone": zone, "name": name, "intervals": []})
        rec.update({"machineType": last_segment(inst["machineType"], "machineTypes"), "live": True,
                    "labels": dict(inst.get("labels") or {})})  # Monitoring's metadata.user_labels
        rec["intervals"].append([t, None])
        vms.console_append(disk, f"localcloud: booting {name} ({now_rfc3339(t)})\n")
        md = self._start_metadata(key, 0)
        script = metadata_value(inst, "startup-script")
        if script is None:
            return
        try:
            env = vms.vm_environment(disk, md.host, inst["id"], self.vm_env)
            popen = vms.launch(disk, script, env)
        except LocalCloudError as exc:  # no Git Bash on Windows: the VM boots, its script cannot run
            vms.console_append(disk, f"localcloud: startup-script not run: {exc}\n")
            local.update({"script_done": True, "exit_code": 127})
            return
        try:
            ctime = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            ctime = t
        local.update({"pid": popen.pid, "create_time": ctime})
        self._runtime[key]["popen"] = popen
        vms.watch(popen, popen.pid, ctime, self._exit_callback(key, popen.pid))

    def _start_metadata(self, key: str, port: int) -> MetadataServer:
        rt = self._runtime.setdefault(key, {})
        if rt.get("metadata") is None:
            rt["metadata"] = MetadataServer(lambda: self.metadata_view(key), self.faults, port=port).start()
            self.local[key]["metadata_port"] = rt["metadata"].port
        return rt["metadata"]

    def _exit_callback(self, key: str, pid: int) -> Callable[[int | None], None]:
        def on_exit(code: int | None) -> None:
            with self.lock:
                local, inst = self.local.get(key), self.instances.get(key)
                if not local or not inst or local.get("pid") != pid or local.get("ending") or self._stopping:
                    return
                local.update({"script_done": True, "exit_code": code})
                vms.console_append(self.disk_dir_of(inst), f"localcloud: startup-script exit status {code}\n")
                self._save()

        return on_exit

    def _power_off(self, key: str, grace: float = STOP_GRACE) -> bool:
        """End the VM's process tree and metadata server. False if someone else is already ending it.

        The lock is released while processes end: the caller may be a request made by this very VM.
        """
        with self.lock:
            inst, local = self.instances.get(key), self.local.get(key)
            if inst is None or local is None or local.get("ending"):
                return False
            local["ending"] = True
            if inst["status"] != "TERMINATED":
                inst["status"] = "STOPPING"
            pid, ctime, vm_id = local.get("pid"), local.get("create_time"), inst["id"]
            rt = self._runtime.pop(key, {})
        vms.end_tree(pid, ctime, vm_id, grace=grace)
        if rt.get("metadata") is not None:
            rt["metadata"].stop()
        with self.lock:
            local["pid"] = None
            self._close_usage(vm_id, time.time())
        return True

    def _close_usage(self, instance_id: str, t: float) -> None:
        rec = self.usage.get(instance_id)
        if rec:
            rec["live"] = False
            if rec["intervals"] and rec["intervals"][-1][1] is None:
                rec["intervals"][-1][1] = max(t, rec["intervals"][-1][0])

    def _finish_delete(self, key: str) -> str:
        """Remove a powered-off instance and its auto-delete disks; returns its self link."""
        with self.lock:
            inst = self.instances.pop(key)
            self.local.pop(key, None)
            for d in inst["disks"]:
                if d.get("autoDelete"):
                    shutil.rmtree(self.disk_dir(*disk_parts(d["source"])), ignore_errors=True)
            return inst["selfLink"]

    def _finish_stop(self, key: str) -> None:
        with self.lock:
            inst, local = self.instances[key], self.local[key]
            inst["status"] = "TERMINATED"
            inst["lastStopTimestamp"] = now_rfc3339()
            inst["scheduling"].pop("terminationTime", None)  # a stop clears it (GCE's "limit VM runtime")
            local.pop("ending", None)
            local["termination_at"] = None

    def delete_instance(self, project: str, zone: str, name: str, request_id: str | None = None) -> dict[str, Any]:
        """STOPPING (the VM's processes end), then gone with its auto-delete disks; the operation says when."""

        def work() -> dict[str, Any]:
            with self.lock:
                key, inst = self._instance(project, zone, name)
                if inst.get("deletionProtection"):
                    raise InvalidValue("Invalid resource usage: 'Resource cannot be deleted if it's protected "
                                       "against deletion.'.")
                link, iid = inst["selfLink"], inst["id"]

            def remove() -> None:
                with self.lock:
                    if key in self.instances and self.local.get(key, {}).get("ending"):
                        self._finish_delete(key)

            return self._pending(project, zone, "delete", link, iid, [lambda: self._power_off_or_wait(key), remove])

        return self._idempotent(project, request_id, work)

    def _power_off_or_wait(self, key: str, grace: float = STOP_GRACE) -> None:
        """Power off; if another operation is already ending the VM, wait for it and power off what is left."""
        while not self._power_off(key, grace=grace):
            self._wait_not_ending(key)
            with self.lock:
                if key not in self.instances:
                    return

    def _wait_not_ending(self, key: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                local = self.local.get(key)
                if local is None or not local.get("ending"):
                    return
            time.sleep(0.05)

    def stop_instance(self, project: str, zone: str, name: str, request_id: str | None = None) -> dict[str, Any]:
        """STOPPING (the VM's processes end), then TERMINATED; the disk stays."""

        def work() -> dict[str, Any]:
            with self.lock:
                key, inst = self._instance(project, zone, name)
                if inst["status"] == "TERMINATED":
                    return self._pending(project, zone, "stop", inst["selfLink"], inst["id"], [])
                link, iid = inst["selfLink"], inst["id"]

            def finish() -> None:
                with self.lock:
                    if key in self.instances and self.local.get(key, {}).get("ending"):
                        self._finish_stop(key)

            return self._pending(project, zone, "stop", link, iid, [lambda: self._power_off_or_wait(key), finish])

        return self._idempotent(project, request_id, work)

    def start_instance(self, project: str, zone: str, name: str, request_id: str | None = None) -> dict[str, Any]:
        """A TERMINATED instance goes PROVISIONING -> STAGING -> RUNNING (a no-op for one already running)."""

        def work() -> dict[str, Any]:
            with self.lock:
                key, inst = self._instance(project, zone, name)
                if inst["status"] == "STOPPING":
                    raise ResourceNotReady(f"The resource 'projects/{project}/zones/{zone}/instances/{name}' is not "
                                           "ready")
                if inst["status"] != "TERMINATED":
                    return self._pending(project, zone, "start", inst["selfLink"], inst["id"], [])
                shape = parse_machine_type(last_segment(inst["machineType"], "machineTypes")) or {}
                refusal = self._quota_shortfall(project, zone, shape) or self._stockout(zone)
                if refusal is not None:
                    return self._pending(project, zone, "start", inst["selfLink"], inst["id"], [_raiser(refusal)])
                inst["status"] = "PROVISIONING"
                return self._pending(project, zone, "start", inst["selfLink"], inst["id"],
                                     [lambda: self._advance(key, inst, "PROVISIONING", "STAGING"),
                                      lambda: self._advance(key, inst, "STAGING", "RUNNING")])

        return self._idempotent(project, request_id, work)
