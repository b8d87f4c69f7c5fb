"""A minimal Cloud Quotas API (cloudquotas.googleapis.com v1), served on the compute port under /v1/.

regions.get reports only the metrics of Compute's Quota.metric enum, which has no H3, C3D, C4 or N4 family;
on GCP those limits are read through Cloud Quotas as QuotaInfo `CPUS-PER-VM-FAMILY-per-project-region`
(dimensions region and vm_family). This serves that QuotaInfo and the regional `CPUS-per-project-region` one,
with the limits the Compute model enforces, to `google-cloud-quotas`' REST transport (quotaInfos get and
list). The admin call `POST /_localcloud/apis {"cloudquotas": false}` disables the API, which then answers
403 SERVICE_DISABLED as GCP does for a project that never enabled it.
"""

from __future__ import annotations

import re
from typing import Any

from werkzeug import Request, Response

from lib.localcloud.compute.models import ComputeModel
from lib.localcloud.compute.models.util import FAMILIES, REGIONS
from lib.localcloud.http import error_body, google_error, json_response

SERVICE = "compute.googleapis.com"
FAMILY_QUOTA = "CPUS-PER-VM-FAMILY-per-project-region"
REGION_QUOTA = "CPUS-per-project-region"
PATH_RX = re.compile(r"/v1/projects/(?P<project>[^/]+)/locations/global/services/(?P<service>[^/]+)"
                     r"/quotaInfos(?:/(?P<quota>[^/]+))?")


class QuotasApi:
    """quotaInfos.get / quotaInfos.list for compute.googleapis.com's CPU quotas."""

    def __init__(self, model: ComputeModel) -> None:
        self.model = model
        self.enabled = True

    def __call__(self, request: Request) -> Response:
        m = PATH_RX.fullmatch(request.path)
        if m is None or request.method != "GET":
            return google_error(404, f"The requested URL {request.path} was not found on this server.", "notFound")
        project = m["project"]
        if not self.enabled:
            body = error_body(403, f"Cloud Quotas API has not been used in project {project} before or it is "
                                   "disabled. Enable it by visiting https://console.developers.google.com/apis/api/"
                                   f"cloudquotas.googleapis.com/overview?project={project} then retry.",
                              "accessNotConfigured")
            body["error"]["status"] = "PERMISSION_DENIED"
            body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                         "reason": "SERVICE_DISABLED", "domain": "googleapis.com",
                                         "metadata": {"service": "cloudquotas.googleapis.com",
                                                      "consumer": f"projects/{project}"}}]
            return json_response(body, status=403)
        infos = self.quota_infos(project) if m["service"] == SERVICE else {}
        if m["quota"] is None:
            return json_response({"quotaInfos": list(infos.values())})
        info = infos.get(m["quota"])
        if info is None:
            return google_error(404, f"QuotaInfo {request.path[4:]} not found.", "notFound")
        return json_response(info)

    def quota_infos(self, project: str) -> dict[str, dict[str, Any]]:
        families = sorted((f.upper(), metric) for f, (_, _, metric) in FAMILIES.items() if metric)
        per_family = [{"dimensions": {"region": r, "vm_family": family},
                       "details": {"value": str(int(self.model.quota_limit(r, metric)))}, "applicableLocations": [r]}
                      for r in sorted(REGIONS) for family, metric in families]
        regional = [{"dimensions": {"region": r}, "details": {"value": str(int(self.model.quota_limit(r, "CPUS")))},
                     "applicableLocations": [r]} for r in sorted(REGIONS)]
        return {
            FAMILY_QUOTA: self._info(project, FAMILY_QUOTA, "compute.googleapis.com/cpus_per_vm_family",
                                     "CPUs per VM family", ["region", "vm_family"], per_family),
            REGION_QUOTA: self._info(project, REGION_QUOTA, "compute.googleapis.com/cpus", "CPUs",
                                     ["region"], regional),
        }

    @staticmethod
    def _info(project: str, quota_id: str, metric: str, title: str, dimensions: list[str],
              infos: list[dict[str, Any]]) -> dict[str, Any]:
        return {"name": f"projects/{project}/locations/global/services/{SERVICE}/quotaInfos/{quota_id}",
                "quotaId": quota_id, "metric": metric, "service": SERVICE, "isPrecise": True,
                "containerType": "PROJECT", "dimensions": dimensions, "metricDisplayName": title,
                "quotaDisplayName": f"{title} per project per region", "metricUnit": "1",
                "quotaIncreaseEligibility": {"isEligible": True}, "isFixed": False, "isConcurrent": False,
                "dimensionsInfos": infos}
