"""Per-VM metadata servers: GCE's paths, the Metadata-Flavor rule, live values, google-auth tokens."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from lib.localcloud.compute import ComputeEmulator
from lib.localcloud.faults import FaultRegistry
from lib.localcloud.vms import VM_MARKER

PROJECT = "test-proj"
ZONE = "europe-west1-b"
FLAVOR = {"Metadata-Flavor": "Google"}


def body(name: str, attrs: dict[str, str], spot: bool = False) -> dict[str, Any]:
    return {"name": name, "machineType": f"zones/{ZONE}/machineTypes/n2-standard-4",
            "disks": [{"boot": True, "autoDelete": True, "initializeParams": {
                "sourceImage": "projects/cloud-hpc-image-public/global/images/family/hpc-rocky-linux-8"}}],
            "metadata": {"items": [{"key": k, "value": v} for k, v in attrs.items()]},
            "scheduling": {"provisioningModel": "SPOT"} if spot else {},
            "serviceAccounts": [{"email": "runner@test-proj.iam.gserviceaccount.com",
                                 "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}]}


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[tuple[ComputeEmulator, str, FaultRegistry]]:
    """One VM without a startup script (so no process) and the base URL of its metadata server."""
    faults = FaultRegistry()
    emu = ComputeEmulator(tmp_path / "compute", faults=faults)
    try:
        emu.model.wait(emu.model.insert_instance(PROJECT, ZONE, body("md-vm", {"batch": "b1", "note": "x y"}, spot=True)))
        host = emu.model.vm_info(f"{PROJECT}/{ZONE}/md-vm")["metadata_host"]
        yield emu, f"http://{host}/computeMetadata/v1", faults
    finally:
        emu.shutdown()
        assert not [p for p in psutil.process_iter() if _is_vm(p, tmp_path)]


def _is_vm(proc: psutil.Process, root: Path) -> bool:
    """A local VM process of this test (other suites may run VMs concurrently)."""
    try:
        env = proc.environ()
        return VM_MARKER in env and env.get("OPS_HPC_VM_ROOT", "").startswith(str(root))
    except psutil.Error:
        return False


def test_requires_flavor_header(vm: tuple[ComputeEmulator, str, FaultRegistry]) -> None:
    _, base, _ = vm
    resp = requests.get(f"{base}/instance/name", timeout=5)
    assert resp.status_code == 403
    resp = requests.get(f"{base}/instance/name", headers=FLAVOR, timeout=5)
    assert resp.status_code == 200 and resp.text == "md-vm" and resp.headers["Metadata-Flavor"] == "Google"


def test_paths(vm: tuple[ComputeEmulator, str, FaultRegistry]) -> None:
    emu, base, _ = vm

    def get(path: str) -> requests.Response:
        return requests.get(f"{base}/{path}", headers=FLAVOR, timeout=5)

    inst = emu.model.get_instance(PROJECT, ZONE, "md-vm")
    assert get("instance/id").text == inst["id"]
    num = get("project/numeric-project-id").text
    assert get("instance/zone").text == f"projects/{num}/zones/{ZONE}"
    assert get("project/project-id").text == PROJECT
    assert get("instance/machine-type").text.endswith("/machineTypes/n2-standard-4")
    assert get("instance/hostname").text.startswith("md-vm.")
    assert get("instance/attributes/").text.split() == ["batch", "note"]
    assert get("instance/attributes/note").text == "x y"
    assert get("instance/attributes/missing").status_code == 404
    assert get("instance/preempted").text == "FALSE"
    assert "default/" in get("instance/service-accounts/").text
    assert get("instance/service-accounts/default/email").text == "runner@test-proj.iam.gserviceaccount.com"
    whole = get("instance/?recursive=true").json()
    assert whole["name"] == "md-vm" and whole["attributes"] == {"batch": "b1", "note": "x y"}
    assert get("instance/attributes/?recursive=true&alt=json").json()["batch"] == "b1"

    fp = inst["metadata"]["fingerprint"]
    emu.model.wait(emu.model.set_metadata(PROJECT, ZONE, "md-vm", {"fingerprint": fp, "items": [{"key": "batch", "value": "b2"}]}))
    assert get("instance/attributes/batch").text == "b2"
    assert get("instance/attributes/note").status_code == 404


def test_preempted_and_wait_for_change(vm: tuple[ComputeEmulator, str, FaultRegistry]) -> None:
    emu, base, _ = vm
    t0 = time.monotonic()
    resp = requests.get(f"{base}/instance/preempted?wait_for_change=true&timeout_sec=1", headers=FLAVOR, timeout=5)
    assert resp.text == "FALSE" and time.monotonic() - t0 >= 0.9
    emu.model.local[f"{PROJECT}/{ZONE}/md-vm"]["preempted"] = True  # what preempt() sets before SIGTERM
    assert requests.get(f"{base}/instance/preempted", headers=FLAVOR, timeout=5).text == "TRUE"


def test_google_auth_token(vm: tuple[ComputeEmulator, str, FaultRegistry], monkeypatch: pytest.MonkeyPatch) -> None:
    import google.auth.transport.requests
    from google.auth import compute_engine
    from google.auth.compute_engine import _metadata

    _, base, _ = vm
    host = base.split("//")[1].split("/")[0]
    monkeypatch.setenv("GCE_METADATA_HOST", host)
    monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", host)  # read at import; a VM process imports it fresh
    creds = compute_engine.Credentials()
    creds.refresh(google.auth.transport.requests.Request())
    assert creds.token.startswith("ya29.") and creds.valid
    assert creds.service_account_email == "runner@test-proj.iam.gserviceaccount.com"
    token = requests.get(f"{base}/instance/service-accounts/default/token", headers=FLAVOR, timeout=5).json()
    assert token["token_type"] == "Bearer" and token["expires_in"] > 0


def test_metadata_fault_and_gone_instance(vm: tuple[ComputeEmulator, str, FaultRegistry]) -> None:
    emu, base, faults = vm
    faults.add("metadata", "http:503", match="attributes")
    resp = requests.get(f"{base}/instance/attributes/batch", headers=FLAVOR, timeout=5)
    assert resp.status_code == 503 and json.loads(resp.text)["error"]["code"] == 503
    assert requests.get(f"{base}/instance/attributes/batch", headers=FLAVOR, timeout=5).text == "b1"
    emu.model.wait(emu.model.delete_instance(PROJECT, ZONE, "md-vm"))
    with pytest.raises(requests.RequestException):
        for _ in range(20):  # the server stops in the background within ~0.5 s
            requests.get(f"{base}/instance/name", headers=FLAVOR, timeout=1)
            time.sleep(0.1)
