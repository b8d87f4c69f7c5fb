"""The Compute emulator served over HTTP, with the real google-cloud-compute clients wired to it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from lib.localcloud.compute import ComputeEmulator
from lib.localcloud.faults import FaultRegistry
from lib.localcloud.http import AppServer
from lib.localcloud.vms import VM_MARKER
from tests.support import wait_for

PROJECT = "test-proj"
ZONE = "us-central1-a"
FAMILY = "projects/cloud-hpc-image-public/global/images/family/hpc-rocky-linux-8"


class Cloud:
    """One emulator served over HTTP plus real clients wired to it."""

    def __init__(self, root: Path, faults: FaultRegistry | None = None, **options: Any) -> None:
        self.root = root
        self.faults = faults or FaultRegistry()
        self.emu = ComputeEmulator(root, faults=self.faults, **options)
        self.server = AppServer(self.emu)
        self.server.start()
        self.url = self.server.url
        self.emu.vm_env.update({"OPS_HPC_COMPUTE_API": f"{self.url}/compute/v1"})
        opts = {"api_endpoint": self.url}
        creds = AnonymousCredentials()
        self.zone_ops = compute_v1.ZoneOperationsClient(credentials=creds, client_options=opts)
        self.global_ops = compute_v1.GlobalOperationsClient(credentials=creds, client_options=opts)
        self.instances = compute_v1.InstancesClient(credentials=creds, client_options=opts)
        self.instances._transport._extended_operations_services["zone_operations"] = self.zone_ops
        self.images = compute_v1.ImagesClient(credentials=creds, client_options=opts)
        self.images._transport._extended_operations_services["global_operations"] = self.global_ops
        self.regions = compute_v1.RegionsClient(credentials=creds, client_options=opts)
        self.machine_types = compute_v1.MachineTypesClient(credentials=creds, client_options=opts)

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/_localcloud/{path}", data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def rest(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """A raw Compute v1 call (path after /compute/v1/), as curl or gcloud sends it: (status, JSON body)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/compute/v1/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def close(self) -> None:
        self.emu.shutdown()
        if self.server.is_running():
            self.server.stop()


def instance(name: str, *, machine: str = "e2-standard-2", script: str | None = None, image: str = FAMILY,
             labels: dict[str, str] | None = None, spot: bool = False, max_run: int | None = None,
             action: str | None = None, attrs: dict[str, str] | None = None) -> compute_v1.Instance:
    items = [compute_v1.Items(key=k, value=v) for k, v in (attrs or {}).items()]
    if script is not None:
        items.append(compute_v1.Items(key="startup-script", value=script))
    sched = compute_v1.Scheduling()
    if spot:
        sched.provisioning_model = "SPOT"
    if action:
        sched.instance_termination_action = action
    if max_run:
        sched.max_run_duration = compute_v1.Duration(seconds=max_run)
    return compute_v1.Instance(
        name=name, machine_type=f"zones/{ZONE}/machineTypes/{machine}", labels=labels or {},
        disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True,
                                       initialize_params=compute_v1.AttachedDiskInitializeParams(source_image=image))],
        network_interfaces=[compute_v1.NetworkInterface(network="global/networks/default")],
        metadata=compute_v1.Metadata(items=items), scheduling=sched)


def vm_procs(root: Path) -> list[psutil.Process]:
    """Processes of local VMs whose disks live under `root` (other suites may run VMs concurrently)."""
    out = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if VM_MARKER in env and env.get("OPS_HPC_VM_ROOT", "").startswith(str(root)) \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def serve_cloud(root: Path, **kwargs: Any) -> Iterator[Cloud]:
    """Body of each module's `cloud` fixture: one emulator, closed and its VM processes gone afterwards."""
    c = Cloud(root, **kwargs)
    try:
        yield c
    finally:
        c.close()
        wait_for(lambda: not vm_procs(c.root), 5, "VM processes to end")
