"""Operation resources and requestId idempotency (a retried mutation gets the first operation back)."""

from __future__ import annotations

import copy
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from lib.localcloud.compute.exceptions import (
    ComputeError,
    ResourceNotFound,
)
from lib.localcloud.compute.models.base import ModelBase
from lib.localcloud.compute.models.filters import compile_filter
from lib.localcloud.compute.models.util import GOOGLE, new_id, now_rfc3339


class OperationsMixin(ModelBase):
    """Every mutation answers with an Operation; a repeated requestId returns the first one."""

    def _operation(self, project: str, zone: str | None, op_type: str, target: str, target_id: str,
                   error: ComputeError | None = None, user: str = "localcloud-user@localcloud",
                   started: float | None = None, status: str = "DONE") -> dict[str, Any]:
        """Record an operation; DONE for system events recorded after the fact, PENDING for work still to do."""
        t = time.time()
        name = f"operation-{int(t * 1000)}-{random.getrandbits(52):013x}-{random.getrandbits(32):08x}-" \
               f"{random.getrandbits(32):08x}"
        scope = f"zones/{zone}" if zone else "global"
        op: dict[str, Any] = {
            "kind": "compute#operation", "id": new_id(), "name": name, "operationType": op_type,
            "targetLink": target, "targetId": target_id, "status": status, "user": user,
            "progress": 100 if status == "DONE" else 0, "insertTime": now_rfc3339(started or t),
            "selfLink": f"{GOOGLE}/projects/{project}/{scope}/operations/{name}",
        }
        if status == "DONE":
            op.update({"startTime": now_rfc3339(started or t), "endTime": now_rfc3339(t)})
        if zone:
            op["zone"] = self.zone_link(project, zone)
        if error is not None:
            _fail(op, error)
        self.operations[f"{project}/{scope}/{name}"] = op
        return op

    def _step_delay(self) -> float:
        """How long the next step of an operation takes: uniform in the configured range (GCE takes seconds)."""
        low, high = self.op_delay
        return random.uniform(low, high) if high > 0 else 0.0

    def _pending(self, project: str, zone: str | None, op_type: str, target: str, target_id: str,
                 steps: list[Callable[[], None]], on_error: Callable[[ComputeError], None] | None = None,
                 ) -> dict[str, Any]:
        """A PENDING operation whose steps run in the background, each after a delay (lock held or not).

        The first step moves it to RUNNING; a step raising ComputeError ends it DONE with that error (after
        `on_error` undoes what needs undoing); after the last step it is DONE. Callers wait for it, as on GCE.
        """
        with self.lock:
            op = self._operation(project, zone, op_type, target, target_id, status="PENDING")

        def run() -> None:
            error: ComputeError | None = None
            try:
                for n, step in enumerate(steps or [lambda: None]):
                    if not self._pause(self._step_delay()):
                        return  # the host is shutting down: the operation stays unfinished (see _load)
                    if n == 0:
                        with self.lock:
                            op.update({"status": "RUNNING", "startTime": now_rfc3339(), "progress": 10})
                    step()
                    with self.lock:
                        op["progress"] = max(op["progress"], int(100 * (n + 1) / (len(steps) + 1)))
            except ComputeError as exc:
                error = exc
                if on_error is not None:
                    on_error(exc)
            with self.lock:
                op.update({"status": "DONE", "progress": 100, "endTime": now_rfc3339()})
                op.setdefault("startTime", op["endTime"])
                if error is not None:
                    _fail(op, error)
                self._save()
                self._wake.notify_all()

        threading.Thread(target=run, name=f"compute-{op_type}", daemon=True).start()
        return op

    def _pause(self, seconds: float) -> bool:
        """Sleep `seconds` unless the model shuts down first (then False)."""
        deadline = time.monotonic() + seconds
        with self.lock:
            while not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                self._wake.wait(timeout=left)
            return False

    def wait(self, op: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        """The operation `op` (as a mutation returned it) once DONE: for callers inside this process."""
        project = op["selfLink"].split("/projects/", 1)[1].split("/", 1)[0]
        zone = op["zone"].rsplit("/", 1)[-1] if op.get("zone") else None
        return self.wait_operation(project, zone, op["name"], timeout=timeout)

    def wait_operation(self, project: str, zone: str | None, name: str, timeout: float = 120.0) -> dict[str, Any]:
        """operations.wait: the operation once DONE, or as it is after `timeout` (GCE returns after ~2 minutes)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                op = self.get_operation(project, zone, name)
                left = deadline - time.monotonic()
                if op["status"] == "DONE" or left <= 0 or self._stopping:
                    return op
                self._wake.wait(timeout=min(left, 1.0))

    def _idempotent(self, project: str, request_id: str | None, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """requestId: a retried mutation returns the first attempt's operation and does nothing again."""
        if request_id:
            with self.lock:
                known = self.request_ids.get(f"{project}/{request_id}")
                if known and known in self.operations:
                    return copy.deepcopy(self.operations[known])
        op = fn()
        with self.lock:
            if request_id:
                scope = f"zones/{op['zone'].rsplit('/', 1)[-1]}" if "zone" in op else "global"
                self.request_ids[f"{project}/{request_id}"] = f"{project}/{scope}/{op['name']}"
            self._save()
            return copy.deepcopy(op)

    def get_operation(self, project: str, zone: str | None, name: str) -> dict[str, Any]:
        scope = f"zones/{zone}" if zone else "global"
        with self.lock:
            op = self.operations.get(f"{project}/{scope}/{name}")
            if op is None:
                raise ResourceNotFound(f"projects/{project}/{scope}/operations/{name}")
            return copy.deepcopy(op)

    def list_operations(self, project: str, zone: str | None, flt: str | None = None, *,
                        every_scope: bool = False) -> list[dict[str, Any]]:
        """Operations of a zone, of the global scope (zone None), or of every scope (aggregated list)."""
        scope = f"{project}/" if every_scope else f"{project}/zones/{zone}/" if zone else f"{project}/global/"
        match = compile_filter(flt)
        with self.lock:
            ops = [copy.deepcopy(o) for k, o in self.operations.items() if k.startswith(scope) and match(o)]
        return sorted(ops, key=lambda o: o["insertTime"])

    def delete_operation(self, project: str, zone: str | None, name: str) -> None:
        scope = f"zones/{zone}" if zone else "global"
        with self.lock:
            if self.operations.pop(f"{project}/{scope}/{name}", None) is None:
                raise ResourceNotFound(f"projects/{project}/{scope}/operations/{name}")
            self._save()


def _fail(op: dict[str, Any], error: ComputeError) -> None:
    op["error"] = {"errors": [{"code": error.op_code, "message": error.message}]}
    op["httpErrorStatusCode"] = error.code
    op["httpErrorMessage"] = error.http_message
