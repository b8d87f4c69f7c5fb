"""Per-VM service-account permissions: what a local VM's token may do, and the 403 when it may not.

A VM's metadata server hands out a token that names the VM and its service account (stateless: the storage
door reads it without asking the Compute model). Calls made with such a token need the permission GCE would
check; the VM's account has the permissions a VM of ops-hpc uses unless a `deny:PERMISSION` fault withholds
one (faults.py), as in an organisation where the default compute account is not an Editor. Calls without a
VM token (the PC side: anonymous credentials) are not checked.
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

from lib.localcloud.faults import FaultRegistry
from lib.localcloud.http import error_body

TOKEN_PREFIX = "ya29.localcloud."
# ops-hpc's own VM account (lib/vmaccount.py): objectAdmin on the bucket and a custom role (get, label, delete)
# on instances; other accounts stand for the default compute account (Editor). Not modelled: the role's IAM
# condition (instances named ops-hpc-* only) and the grant being on the results bucket only.
VM_ACCOUNT_PREFIX = "ops-hpc-vm@"
VM_ACCOUNT_PERMISSIONS = frozenset({
    "compute.instances.get", "compute.instances.delete", "compute.instances.setLabels",
    "storage.objects.create", "storage.objects.get", "storage.objects.list", "storage.objects.delete",
})
VM_PERMISSIONS = frozenset({
    "compute.instances.get", "compute.instances.delete", "compute.instances.setLabels",
    "compute.instances.setMetadata", "compute.instances.stop", "compute.zoneOperations.get",
    "storage.objects.create", "storage.objects.get", "storage.objects.list", "storage.objects.delete",
    "storage.buckets.get",
})
_INSTANCE = r"/compute/v1/projects/[^/]+/zones/[^/]+/instances/[^/?]+"
_COMPUTE_RULES = [
    ("DELETE", re.compile(_INSTANCE), "compute.instances.delete"),
    ("POST", re.compile(_INSTANCE + "/setLabels"), "compute.instances.setLabels"),
    ("POST", re.compile(_INSTANCE + "/setMetadata"), "compute.instances.setMetadata"),
    ("POST", re.compile(_INSTANCE + "/stop"), "compute.instances.stop"),
    ("GET", re.compile(_INSTANCE), "compute.instances.get"),
    ("GET", re.compile(r"/compute/v1/projects/[^/]+/zones/[^/]+/operations/.+"), "compute.zoneOperations.get"),
]
_STORAGE_RULES = [
    ("POST", re.compile(r"/upload/storage/v1/b/[^/]+/o"), "storage.objects.create"),
    ("POST", re.compile(r"/storage/v1/b/[^/]+/o/.+/(copyTo|rewriteTo)/.+"), "storage.objects.create"),
    ("DELETE", re.compile(r"/storage/v1/b/[^/]+/o/.+"), "storage.objects.delete"),
    ("GET", re.compile(r"/storage/v1/b/[^/]+/o"), "storage.objects.list"),
    ("GET", re.compile(r"/storage/v1/b/[^/]+/o/.+"), "storage.objects.get"),
    ("GET", re.compile(r"/download/storage/v1/b/[^/]+/o/.+"), "storage.objects.get"),
    ("GET", re.compile(r"/storage/v1/b/[^/]+"), "storage.buckets.get"),
]


def vm_token(vm: str, email: str) -> str:
    """An access token for VM 'project/zone/name' acting as `email` (opaque to the VM, as Google's are)."""
    claims = base64.urlsafe_b64encode(json.dumps({"vm": vm, "email": email}).encode()).decode().rstrip("=")
    return f"{TOKEN_PREFIX}{claims}.{int(time.time())}"


def token_claims(authorization: str | None) -> dict[str, Any] | None:
    """{'vm', 'email'} of a VM token in an Authorization header; None for any other credential."""
    if not authorization or not authorization.startswith("Bearer " + TOKEN_PREFIX):
        return None
    claims = authorization[len("Bearer " + TOKEN_PREFIX):].split(".", 1)[0]
    try:
        data = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    except ValueError:
        return None
    return data if isinstance(data, dict) and "vm" in data else None


def required_permission(api: str, method: str, path: str) -> str | None:
    """The IAM permission GCE or GCS checks for this call (None: one this module does not model)."""
    rules = _COMPUTE_RULES if api == "compute" else _STORAGE_RULES
    bare = path.split("?", 1)[0]
    for rule_method, rx, permission in rules:
        if method == rule_method and rx.fullmatch(bare):
            return permission
    return None


def permissions_of(claims: dict[str, Any], faults: FaultRegistry | None) -> set[str]:
    """The VM account's permissions, minus those a deny:PERMISSION fault withholds from this VM."""
    withheld = faults.denied(f"{claims['vm']} {claims.get('email', '')}") if faults is not None else set()
    granted = VM_ACCOUNT_PERMISSIONS if str(claims.get("email", "")).startswith(VM_ACCOUNT_PREFIX) else VM_PERMISSIONS
    return set(granted) - withheld


def refusal(api: str, method: str, path: str, authorization: str | None,
            faults: FaultRegistry | None) -> tuple[int, dict[str, Any]] | None:
    """(403, Google's error body) when a VM token lacks the call's permission; None to let the call through."""
    claims = token_claims(authorization)
    if claims is None:
        return None
    permission = required_permission(api, method, path)
    if permission is None or permission in permissions_of(claims, faults):
        return None
    bare = path.split("?", 1)[0]
    if api == "compute":
        resource = bare.split("/compute/v1/", 1)[-1]
        message = f"Required '{permission}' permission for '{resource}'"
    else:
        message = (f"{claims.get('email', 'the caller')} does not have {permission} access to the Google Cloud "
                   "Storage object. Permission '" + permission + "' denied on resource (or it may not exist).")
    return 403, error_body(403, message, "forbidden")
