"""System events GCE performs on its own: maxRunDuration, Spot preemption, plus the heartbeat."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from lib.localcloud import vms
from lib.localcloud.compute.exceptions import (
    ComputeError,
    InvalidValue,
    ResourceNotReady,
)
from lib.localcloud.compute.models.base import ModelBase
from lib.localcloud.compute.models.util import ACTIVE, REAP_S, STOP_GRACE, now_rfc3339, parse_rfc3339

PREEMPT_GRACE_MIN_S = 5.0


class SchedulerMixin(ModelBase):
    """What GCE does on its own: maxRunDuration, Spot preemption, reaping stray processes."""

    def preempt(self, project: str, zone: str, name: str) -> dict[str, Any]:
        """Spot preemption: preempted=TRUE, SIGTERM (30 s scaled grace), then the termination action.

        The grace is scaled like every other duration but never below PREEMPT_GRACE_MIN_S: the guest's shutdown
        work (a status file, a log upload) takes real seconds whatever the scale, and GCE gives it 30."""
        with self.lock:
            key, inst = self._instance(project, zone, name)
            sched = inst["scheduling"]
            if not sched.get("preemptible"):
                raise InvalidValue(f"Instance '{name}' is not a Spot or preemptible VM.")
            if inst["status"] != "RUNNING":
                raise ResourceNotReady(f"The resource 'projects/{project}/zones/{zone}/instances/{name}' is not "
                                       "running")
            self.local[key]["preempted"] = True
        return self._system_terminate(key, "compute.instances.preempted", sched.get("instanceTerminationAction", "STOP"),
                                      grace=max(PREEMPT_GRACE_MIN_S, 30.0 / self.time_scale))

    def _system_terminate(self, key: str, op_type: str, action: str, grace: float = STOP_GRACE) -> dict[str, Any]:
        project, zone, _ = key.split("/")
        with self.lock:
            inst = self.instances[key]
            started, iid, link = time.time(), inst["id"], inst["selfLink"]
            vms.console_append(self.disk_dir_of(inst), f"localcloud: {op_type}, action {action}\n")
        if not self._power_off(key, grace=grace):
            raise ResourceNotReady(f"The resource '{link}' is already stopping")
        if action == "DELETE":
            self._finish_delete(key)
        else:
            self._finish_stop(key)
        with self.lock:
            op = self._operation(project, zone, op_type, link, iid, user="system", started=started)
            self._save()
            return copy.deepcopy(op)

    def set_time_scale(self, scale: float) -> None:
        if scale <= 0:
            raise InvalidValue("time_scale must be > 0")
        with self.lock:
            self.time_scale = float(scale)
            self._wake.notify_all()

    def set_metrics_enabled(self, enabled: bool) -> None:
        with self.lock:
            self.metrics_enabled = bool(enabled)
            self._save()

    def _arm_termination(self, key: str) -> None:
        """At boot (lock held): the termination time GCE shows while the VM runs (lastStart + maxRunDuration).

        A stop clears it (_finish_stop): a stopped VM is never deleted by maxRunDuration, and a start counts
        the whole duration again. Locally the deadline comes time_scale times sooner (see _deadlines).
        """
        sched, local = self.instances[key]["scheduling"], self.local[key]
        mrd = sched.get("maxRunDuration")
        if mrd:
            sched["terminationTime"] = now_rfc3339(local["last_start"] + int(mrd["seconds"]))
        local["termination_at"] = parse_rfc3339(sched["terminationTime"]) if sched.get("terminationTime") else None

    def _deadlines(self) -> list[tuple[float, str]]:
        out = []
        for key, inst in self.instances.items():
            local = self.local.get(key, {})
            end = local.get("termination_at")
            if inst["status"] == "RUNNING" and end and not local.get("ending") and not local.get("expiring"):
                start = local.get("last_start", 0.0)
                out.append((start + (end - start) / self.time_scale, key))
        return sorted(out)

    def _schedule_loop(self) -> None:
        """Enforce maxRunDuration (deadline = lastStart + seconds / time_scale) and keep a heartbeat."""
        last_beat = last_reap = 0.0
        while True:
            with self.lock:
                if self._stopping:
                    return
                t = time.time()
                live = {i["id"] for k, i in self.instances.items()
                        if i["status"] in ACTIVE and not self.local.get(k, {}).get("ending")}
                due = [key for deadline, key in self._deadlines() if deadline <= t]
                for key in due:
                    self.local[key]["expiring"] = True
                pending = [deadline for deadline, _ in self._deadlines() if deadline > t]
                if t - last_beat > 30 and any(i["status"] == "RUNNING" for i in self.instances.values()):
                    self.heartbeat, last_beat = t, t
                    self._save()
            if t - last_reap > REAP_S:
                last_reap = t
                vms.reap_strays(self.root / "disks", live)
            for key in due:
                inst = self.instances.get(key)
                if inst is None:
                    continue
                action = inst["scheduling"].get("instanceTerminationAction", "STOP")
                threading.Thread(target=self._expire, args=(key, action), daemon=True).start()
            with self.lock:
                if self._stopping:
                    return
                wait = min([d - time.time() for d in pending] + [5.0])
                if not due:
                    self._wake.wait(timeout=max(wait, 0.01))
                else:
                    self._wake.wait(timeout=0.05)

    def _expire(self, key: str, action: str) -> None:
        try:
            self._system_terminate(key, "compute.instances.maxRunDurationExceeded", action)
        except (ComputeError, KeyError):
            pass  # deleted or stopped meanwhile
