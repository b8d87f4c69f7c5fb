"""The VMs' least-privilege account: setup creates what is missing (and nothing twice), every VM runs as it with the
cloud-platform scope, and the local cloud gives a VM's token only that account's permissions."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from lib import compute, preflight, vmaccount
from lib.localcloud import iam
from tests.support.vms import vm_env


class FakeIam:
    """IAM and Resource Manager as far as vmaccount.ensure uses them: records every call."""

    def __init__(self, *, account: bool = False, role: list[str] | None = None, bindings: list | None = None) -> None:
        self.account, self.role, self.bindings = account, role, list(bindings or [])
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, url: str, json: dict | None = None, timeout: float = 0) -> SimpleNamespace:
        self.calls.append((method, url.split("/v1/", 1)[1]))
        status, body = 200, {}
        if method == "GET" and "/serviceAccounts/" in url:
            status = 200 if self.account else 404
        elif method == "POST" and url.endswith("/serviceAccounts"):
            self.account = True
        elif method == "GET" and "/roles/" in url:
            status, body = (200, {"includedPermissions": self.role}) if self.role is not None else (404, {})
        elif method in ("POST", "PATCH") and "/roles" in url:
            self.role = sorted(json["role"]["includedPermissions"] if method == "POST" else json["includedPermissions"])
        elif url.endswith(":getIamPolicy"):
            body = {"bindings": [dict(b) for b in self.bindings], "etag": "e1"}
        elif url.endswith(":setIamPolicy"):
            self.bindings, self.version = json["policy"]["bindings"], json["policy"]["version"]
        return SimpleNamespace(status_code=status, content=b"{}", text="", json=lambda: body)


def test_setup_creates_the_account_its_conditional_self_role_and_the_bucket_grant_once(localcloud, tmp_path):
    cfg = localcloud.config(project="my-proj", backend="gcp").replace(bucket="my-results")
    fake, granted = FakeIam(), []
    done = vmaccount.ensure(cfg, session=fake, bucket_policy=lambda member: granted.append(member) or True)
    account = "ops-hpc-vm@my-proj.iam.gserviceaccount.com"
    assert done[0] == f"created service account {account}" and len(done) == 4
    assert fake.role == ["compute.instances.delete", "compute.instances.get", "compute.instances.setLabels"]
    [binding] = fake.bindings
    assert binding["role"] == "projects/my-proj/roles/opsHpcVmSelf" and binding["members"] == [f"serviceAccount:{account}"]
    assert 'startsWith("ops-hpc-")' in binding["condition"]["expression"] and fake.version == 3
    assert granted == [f"serviceAccount:{account}"] and "gs://my-results" in done[3]
    again = FakeIam(account=True, role=fake.role, bindings=fake.bindings)
    assert vmaccount.ensure(cfg, session=again, bucket_policy=lambda member: False) == []
    assert [m for m, _ in again.calls] == ["GET", "GET", "POST"]  # read only: nothing created or set twice


@pytest.fixture
def vms(localcloud, tmp_path):
    yield from vm_env(localcloud, tmp_path)


def test_every_vm_runs_as_the_vm_account_with_the_cloud_platform_scope(vms):
    name = vms.create()
    spec = compute.plan_vm(vms.cfg, name="x", kind="build", run_id="r")
    account = f"ops-hpc-vm@{vms.cfg.project}.iam.gserviceaccount.com"
    [sa] = compute.instance_resource(spec).service_accounts
    assert sa.email == account and list(sa.scopes) == ["https://www.googleapis.com/auth/cloud-platform"]
    assert compute.plan_vm(vms.cfg.replace(service_account="mine@p.iam.gserviceaccount.com"), name="y", kind="build",
                           run_id="r").service_account == "mine@p.iam.gserviceaccount.com"
    host = vms.cloud.admin(f"vms/{vms.cfg.project}/{vms.cfg.zone}/{name}")["metadata_host"]
    req = urllib.request.Request(f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token",
                                 headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        token = json.loads(resp.read())["access_token"]
    claims = iam.token_claims(f"Bearer {token}")
    assert claims["email"] == account
    assert iam.permissions_of(claims, None) == set(iam.VM_ACCOUNT_PERMISSIONS)
    assert preflight.check_vm_account(vms.cfg).detail.startswith(f"VMs run as {account}")
    assert compute.delete_vm(vms.cfg, name)


def test_the_vm_accounts_token_cannot_do_what_the_account_lacks(vms):
    name = vms.create()
    host = vms.cloud.admin(f"vms/{vms.cfg.project}/{vms.cfg.zone}/{name}")["metadata_host"]
    req = urllib.request.Request(f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token",
                                 headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        token = json.loads(resp.read())["access_token"]
    base = f"{vms.cfg.compute_endpoint}/compute/v1/projects/{vms.cfg.project}/zones/{vms.cfg.zone}/instances/{name}"
    stop = urllib.request.Request(f"{base}/stop", method="POST", data=b"",
                                  headers={"Authorization": f"Bearer {token}"})
    with pytest.raises(urllib.error.HTTPError) as err:  # stop is no permission of the VM account
        urllib.request.urlopen(stop, timeout=10)
    assert err.value.code == 403 and "compute.instances.stop" in json.loads(err.value.read())["error"]["message"]
    with urllib.request.urlopen(urllib.request.Request(base, headers={"Authorization": f"Bearer {token}"}),
                                timeout=10) as resp:
        assert json.loads(resp.read())["name"] == name  # get is one
    assert compute.delete_vm(vms.cfg, name)
