"""Per-family CPU quota (H3, C3D, C4, N2, ...) through the Cloud Quotas API.

Compute's regions.get reports only the metrics of its Quota.metric enum, which has no H3 (or C3D, C4, N4)
family, so the regional rows alone cannot see the shortfall that stops an 88-vCPU H3 VM. Cloud Quotas
(cloudquotas.googleapis.com) reports the limit as QuotaInfo `CPUS-PER-VM-FAMILY-per-project-region`
(dimensions region, vm_family); it says nothing about usage, so usage is the vCPUs of the family's VMs in
the region (one aggregated instance list). When the API cannot be asked (disabled, no permission), the
row says so and how to enable it: a check that did not happen is never reported as passed.
"""

from __future__ import annotations

import re
from typing import Any

from lib import clients, retry
from lib.config import Config

FAMILY_QUOTA = "CPUS-PER-VM-FAMILY-per-project-region"
SERVICE = "compute.googleapis.com"
ENABLE = "gcloud services enable cloudquotas.googleapis.com"
_CPUS_RX = re.compile(r"(?:custom-(\d+)-\d+)|(?:-(\d+)(?:-lssd|-metal)?$)")


def family_of(machine_type: str) -> str:
    """The Cloud Quotas vm_family of a machine type: h3-standard-88 -> H3, n2-custom-8-32768 -> N2."""
    head = machine_type.split("-", 1)[0]
    return ("N1" if head == "custom" else head).upper()


def vcpus_of(machine_type: str) -> int:
    """vCPUs from a predefined or custom machine type's name (0 for shared-core types, which count as 1 or less)."""
    m = _CPUS_RX.search(machine_type)
    return int(m.group(1) or m.group(2)) if m else 0


def family_limit(cfg: Config, family: str) -> float | None:
    """The family's CPU limit in the configured region from Cloud Quotas; None when it has no family quota.

    Raises what the client raises (google.api_core exceptions) when the API cannot be asked.
    """
    name = f"projects/{cfg.project}/locations/global/services/{SERVICE}/quotaInfos/{FAMILY_QUOTA}"
    info = retry.google(clients.quotas(cfg).get_quota_info, name=name)
    best: tuple[int, float] | None = None
    for d in info.dimensions_infos:
        dims = dict(d.dimensions)
        if dims.get("region", cfg.region_name) != cfg.region_name or dims.get("vm_family", family) != family:
            continue
        rank = ("region" in dims) + ("vm_family" in dims)  # the most specific entry wins
        if "vm_family" in dims and (best is None or rank > best[0]):
            best = (rank, float(d.details.value))
    return None if best is None else best[1]


def family_usage(cfg: Config, family: str) -> int:
    """vCPUs of the family's VMs (not stopped) in the configured region, from one aggregated list."""
    from lib import compute  # compute imports vmplan, which imports this module

    region = cfg.region_name
    return sum(vcpus_of(vm.machine_type) for vm in compute.list_vms_in_zones(cfg, ours_only=False)
               if vm.zone.rsplit("-", 1)[0] == region and family_of(vm.machine_type) == family
               and vm.status not in compute.STOPPED_STATES)


def unchecked_reason(exc: BaseException) -> str:
    """Why the family quota could not be read, as one line ending in what to do."""
    text = str(getattr(exc, "message", None) or exc)
    if "SERVICE_DISABLED" in text or "has not been used" in text or "is disabled" in text:
        return f"the Cloud Quotas API is disabled in this project; enable it: {ENABLE}"
    if getattr(exc, "code", None) == 403:
        return ("no permission to read Cloud Quotas (cloudquotas.quotas.get, e.g. roles/cloudquotas.viewer); "
                f"if the API is off: {ENABLE}")
    return f"Cloud Quotas did not answer ({text.splitlines()[0][:120]}); if the API is off: {ENABLE}"


def family_row(cfg: Config, machine_type: str, needed: int) -> dict[str, Any] | None:
    """The family quota row for `needed` more vCPUs: {metric, limit, usage, needed, ok, checked[, note]}.

    None when the family has no quota of its own (E2, N1, shared-core). checked=False (and ok=True, with a
    note saying why and how to enable the API) when Cloud Quotas could not be asked.
    """
    family = family_of(machine_type)
    metric = f"{family} family CPUs"
    try:
        limit = family_limit(cfg, family)
    except Exception as exc:
        return {"metric": metric, "limit": None, "usage": None, "needed": needed, "ok": True, "checked": False,
                "note": f"{metric} quota in {cfg.region_name} not checked: {unchecked_reason(exc)}"}
    if limit is None:
        return None
    usage = float(family_usage(cfg, family))
    return {"metric": metric, "limit": limit, "usage": usage, "needed": needed, "ok": usage + needed <= limit,
            "checked": True}
