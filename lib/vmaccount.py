"""The VMs' own service account: only what a VM of ops-hpc needs, so a VM (or a script on it) can do little harm.

`make setup` creates or checks `ops-hpc-vm@PROJECT.iam.gserviceaccount.com` with:
- roles/storage.objectAdmin on the results bucket only (write, read and delete its objects);
- a custom role `opsHpcVmSelf` (compute.instances.get, .delete, .setLabels) bound with an IAM condition that
  limits it to instances named `ops-hpc-*`: a VM can delete itself and write its own labels, and touch
  no other VM of the project.
Every VM runs as it (config `service_account` overrides) with the cloud-platform scope; IAM, not scopes,
decides. Without it, orgs where the default compute account is no Editor leave VMs that cannot delete
themselves. The local cloud has no IAM API: its VM tokens carry this account's permissions (lib/localcloud/iam.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lib.config import Config
from lib.errors import OpsError

ACCOUNT_ID = "ops-hpc-vm"
ROLE_ID = "opsHpcVmSelf"
ROLE_PERMISSIONS = ("compute.instances.delete", "compute.instances.get", "compute.instances.setLabels")
BUCKET_ROLE = "roles/storage.objectAdmin"
CONDITION = {
    "title": "ops-hpc VMs only",
    "description": "A VM of ops-hpc may get, label and delete instances named ops-hpc-* (itself), nothing else.",
    "expression": 'resource.type == "compute.googleapis.com/Instance" && '
                  'resource.name.extract("/instances/{name}").startsWith("ops-hpc-")',
}
IAM = "https://iam.googleapis.com/v1"
CRM = "https://cloudresourcemanager.googleapis.com/v1"


def email(cfg: Config) -> str:
    """The account every VM runs as: config `service_account`, else ops-hpc-vm@PROJECT.iam.gserviceaccount.com."""
    return cfg.service_account or f"{ACCOUNT_ID}@{cfg.project}.iam.gserviceaccount.com"


def _send(session: Any, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    """One IAM / Resource Manager call under the retry policy (429 and 5xx retried); the response otherwise."""
    from lib import retry

    def attempt() -> Any:
        resp = session.request(method, url, json=body, timeout=30)
        if resp.status_code in (429, 500, 502, 503, 504):
            from google.api_core import exceptions as gexc  # heavy: imported at first use

            raise gexc.from_http_status(resp.status_code, resp.text[:200])
        return resp

    return retry.call(attempt)


def _json(resp: Any, what: str) -> dict[str, Any]:
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except Exception:
            message = resp.text[:200]
        raise OpsError(f"{what}: HTTP {resp.status_code} {message}")
    return resp.json() if resp.content else {}


def ensure(cfg: Config, *, session: Any = None, bucket_policy: Callable[[str], bool] | None = None) -> list[str]:
    """Create what is missing (account, custom role, conditional binding, bucket grant); what was done, one line
    each (empty: everything was in place). `session` is an AuthorizedSession-like object (tests pass a fake)."""
    if session is None:
        from google.auth.transport.requests import AuthorizedSession  # heavy: imported at first use

        from lib import clients

        session = AuthorizedSession(clients.credentials(cfg))
    project, account, done = cfg.project, email(cfg), []
    resp = _send(session, "GET", f"{IAM}/projects/{project}/serviceAccounts/{account}")
    if resp.status_code == 404 and not cfg.service_account:
        _json(_send(session, "POST", f"{IAM}/projects/{project}/serviceAccounts", {
            "accountId": ACCOUNT_ID, "serviceAccount": {
                "displayName": "ops-hpc VMs", "description": "What ops-hpc's VMs run as: results bucket, self-delete"}}),
            f"creating service account {account}")
        done.append(f"created service account {account}")
    else:
        _json(resp, f"reading service account {account}")
    role = f"projects/{project}/roles/{ROLE_ID}"
    resp = _send(session, "GET", f"{IAM}/{role}")
    body = {"title": "ops-hpc VM self", "description": "Get, label and delete ops-hpc-* instances (with a condition)",
            "includedPermissions": list(ROLE_PERMISSIONS), "stage": "GA"}
    if resp.status_code == 404:
        _json(_send(session, "POST", f"{IAM}/projects/{project}/roles", {"roleId": ROLE_ID, "role": body}),
              f"creating custom role {ROLE_ID}")
        done.append(f"created custom role {ROLE_ID} ({', '.join(ROLE_PERMISSIONS)})")
    elif sorted(_json(resp, f"reading custom role {ROLE_ID}").get("includedPermissions", [])) != list(ROLE_PERMISSIONS):
        _json(_send(session, "PATCH", f"{IAM}/{role}?updateMask=includedPermissions", body),
              f"updating custom role {ROLE_ID}")
        done.append(f"updated custom role {ROLE_ID} to {', '.join(ROLE_PERMISSIONS)}")
    policy = _json(_send(session, "POST", f"{CRM}/projects/{project}:getIamPolicy",
                         {"options": {"requestedPolicyVersion": 3}}), "reading the project's IAM policy")
    member = f"serviceAccount:{account}"
    if not any(b.get("role") == role and member in b.get("members", []) and b.get("condition", {}).get("expression")
               == CONDITION["expression"] for b in policy.get("bindings", [])):
        policy.setdefault("bindings", []).append({"role": role, "members": [member], "condition": CONDITION})
        policy["version"] = 3  # conditions need policy version 3
        _json(_send(session, "POST", f"{CRM}/projects/{project}:setIamPolicy", {"policy": policy}),
              "granting the VM account its self-delete role")
        done.append(f"granted {ROLE_ID} on instances named ops-hpc-* to {account}")
    if (bucket_policy or (lambda m: _grant_bucket(cfg, m)))(member):
        done.append(f"granted {BUCKET_ROLE} on gs://{cfg.bucket_name} to {account}")
    return done


def _grant_bucket(cfg: Config, member: str) -> bool:
    """objectAdmin on the results bucket only; True if it was added now."""
    from lib import retry, storage

    bucket = storage.client(cfg).bucket(cfg.bucket_name)
    policy = retry.google(bucket.get_iam_policy, requested_policy_version=3)
    if any(b["role"] == BUCKET_ROLE and member in b["members"] for b in policy.bindings):
        return False
    policy.bindings.append({"role": BUCKET_ROLE, "members": {member}})
    retry.call(bucket.set_iam_policy, policy)
    return True
