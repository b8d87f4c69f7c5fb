"""Compute Engine emulator of the local cloud (moto style: models.py state, responses.py HTTP, exceptions.py errors).

The real google-cloud-compute clients talk to it over REST; its VMs are local process trees (see vms.py).
"""

from __future__ import annotations

from pathlib import Path

from werkzeug import Request, Response

from lib.localcloud.compute.models import ComputeModel
from lib.localcloud.compute.responses import AdminResponses, ComputeResponses, handle
from lib.localcloud.faults import FaultRegistry

__all__ = ["ComputeEmulator", "ComputeModel"]


class ComputeEmulator:
    """A werkzeug app serving /compute/v1/... and /_localcloud/... over a ComputeModel rooted at `root`."""

    def __init__(self, root: Path, *, faults: FaultRegistry | None = None, time_scale: float = 1.0) -> None:
        self.faults = faults
        self.model = ComputeModel(Path(root), faults=faults, time_scale=time_scale)
        self._compute = ComputeResponses(self.model)
        self._admin = AdminResponses(self.model)

    @property
    def vm_env(self) -> dict[str, str]:
        """Endpoints every VM process gets (OPS_HPC_COMPUTE_API, STORAGE_EMULATOR_HOST, ...); set by the daemon."""
        return self.model.vm_env

    @vm_env.setter
    def vm_env(self, value: dict[str, str]) -> None:
        self.model.vm_env = value

    def __call__(self, request: Request) -> Response:
        return handle(self.model, self._compute, self._admin, self.faults, request)

    def vm_processes(self) -> list[tuple[int, float]]:
        """(pid, create_time) of every live VM process root, for `bin/localcloud down` after a daemon crash."""
        return self.model.vm_processes()

    def shutdown(self) -> None:
        """End all VM process trees, stop the per-VM metadata servers, persist state."""
        self.model.shutdown()
