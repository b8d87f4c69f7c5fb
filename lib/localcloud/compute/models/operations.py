"""Operation resources and requestId idempotency (a retried mutation gets the first operation back)."""

from __future__ import annotations

import copy
import random
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
                   started: float | None = None) -> dict[str, Any]:
        t = time.time()
        name = f"operation-{int(t * 1000)}-{random.getrandbits(52):013x}-{random.getrandbits(32):08x}-" \
               f"{random.getrandbits(32):08x}"
        scope = f"zones/{zone}" if zone else "global"
        op: dict[str, Any] = {
            "kind": "compute#operation", "id": new_id(), "name": name, "operationType": op_type,
            "targetLink": target, "targetId": target_id, "status": "DONE", "user": user, "progress": 100,
            "insertTime": now_rfc3339(started or t), "startTime": now_rfc3339(started or t),
            "endTime": now_rfc3339(t), "selfLink": f"{GOOGLE}/projects/{project}/{scope}/operations/{name}",
        }
        if zone:
            op["zone"] = self.zone_link(project, zone)
        if error is not None:
            op["error"] = {"errors": [{"code": error.op_code, "message": error.message}]}
            op["httpErrorStatusCode"] = error.code
            op["httpErrorMessage"] = error.http_message
        self.operations[f"{project}/{scope}/{name}"] = op
        return op

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

    def list_operations(self, project: str, zone: str | None, flt: str | None = None) -> list[dict[str, Any]]:
        scope = f"{project}/zones/{zone}/" if zone else f"{project}/global/"
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
