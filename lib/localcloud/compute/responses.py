"""Thin HTTP layer of the Compute emulator: route a werkzeug Request, call the model, shape JSON like Compute v1.

Paths arrive as /compute/v1/projects/... (the Python clients with api_endpoint=http://127.0.0.1:PORT, and
curl from VMs at $OPS_HPC_COMPUTE_API). Admin calls live under /_localcloud/.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from werkzeug import Request, Response

from lib.localcloud import iam
from lib.localcloud.compute import batch, schema
from lib.localcloud.compute.exceptions import ComputeError, InvalidValue, ResourceNotFound
from lib.localcloud.compute.models import GOOGLE, ComputeModel
from lib.localcloud.compute.models.filters import compile_filter
from lib.localcloud.compute.models.util import check_op_delay
from lib.localcloud.http import apply_fault, delayed, google_error, json_response

Handler = Callable[[Request, dict[str, str]], Any]
P = r"projects/(?P<project>[^/]+)"
Z = P + r"/zones/(?P<zone>[^/]+)"
INST = Z + r"/instances/(?P<name>[^/]+)"


def _body(request: Request) -> dict[str, Any]:
    data = request.get_data()
    if not data:
        return {}
    try:
        body = json.loads(data)
    except ValueError:
        raise InvalidValue("Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise InvalidValue("Invalid JSON payload received. Expected an object.")
    return body


# Query parameters real clients send that the discovery document does not list, which Google accepts:
# the Python clients' REST transport ($alt=json;enum-encoding=int), gcloud's list calls (returnPartialSuccess,
# dropped from the aggregatedList documents but still honoured).
CLIENT_ONLY_PARAMS = ("$alt", "returnPartialSuccess")


def _rid(request: Request) -> str | None:
    return request.args.get("requestId") or None


def _page(request: Request, items: list[dict[str, Any]], kind: str, self_link: str, list_id: str) -> dict[str, Any]:
    """One page of a list answer; pageToken is an offset, as opaque to the client as Google's."""
    try:
        max_results = min(int(request.args.get("maxResults", 500)), 500)
        offset = int(request.args.get("pageToken") or 0)
    except ValueError:
        raise InvalidValue("Invalid value for field 'pageToken' or 'maxResults'.") from None
    order = request.args.get("orderBy", "")
    if order.startswith("creationTimestamp"):
        items = sorted(items, key=lambda i: i.get("creationTimestamp", ""), reverse=order.endswith("desc"))
    page = items[offset:offset + max_results]
    out: dict[str, Any] = {"kind": kind, "id": list_id, "selfLink": self_link}
    if page:
        out["items"] = page
    if offset + max_results < len(items):
        out["nextPageToken"] = str(offset + max_results)
    return out


def _aggregated(kind: str, project: str, what: str, items: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "id": f"projects/{project}/aggregated/{what}", "items": items,
            "selfLink": f"{GOOGLE}/projects/{project}/aggregated/{what}"}


class ComputeResponses:
    """Route table + handlers. Each handler returns a JSON-able dict (or a Response).

    Each route names its discovery method: the request is checked against it (schema.py) before the handler.
    """

    def __init__(self, model: ComputeModel) -> None:
        self.model = model
        self.routes: list[tuple[str, re.Pattern[str], Handler, str]] = []
        add = self._add
        add("GET", P, "projects.get", lambda r, a: model.project(a["project"]))
        add("GET", Z + "/instances", "instances.list", self.list_instances)
        add("POST", Z + "/instances", "instances.insert",
            lambda r, a: model.insert_instance(a["project"], a["zone"], _body(r), _rid(r)))
        add("GET", P + "/aggregated/instances", "instances.aggregatedList", self.aggregated_instances)
        add("GET", INST, "instances.get", lambda r, a: model.get_instance(a["project"], a["zone"], a["name"]))
        add("DELETE", INST, "instances.delete",
            lambda r, a: model.delete_instance(a["project"], a["zone"], a["name"], _rid(r)))
        add("POST", INST + "/stop", "instances.stop",
            lambda r, a: model.stop_instance(a["project"], a["zone"], a["name"], _rid(r)))
        add("POST", INST + "/start", "instances.start",
            lambda r, a: model.start_instance(a["project"], a["zone"], a["name"], _rid(r)))
        add("POST", INST + "/setMetadata", "instances.setMetadata",
            lambda r, a: model.set_metadata(a["project"], a["zone"], a["name"], _body(r), _rid(r)))
        add("POST", INST + "/setLabels", "instances.setLabels",
            lambda r, a: model.set_labels(a["project"], a["zone"], a["name"], _body(r), _rid(r)))
        add("GET", INST + "/serialPort", "instances.getSerialPortOutput", self.serial_port)
        add("GET", P + "/global/images", "images.list", self.list_images)
        add("POST", P + "/global/images", "images.insert", self.insert_image)
        add("GET", P + r"/global/images/family/(?P<family>[^/]+)", "images.getFromFamily",
            lambda r, a: model.image_from_family(a["project"], a["family"]))
        add("GET", P + r"/global/images/(?P<name>[^/]+)", "images.get",
            lambda r, a: model.get_image(a["project"], a["name"]))
        add("DELETE", P + r"/global/images/(?P<name>[^/]+)", "images.delete",
            lambda r, a: model.delete_image(a["project"], a["name"], _rid(r)))
        add("POST", P + r"/global/images/(?P<name>[^/]+)/deprecate", "images.deprecate",
            lambda r, a: model.deprecate_image(a["project"], a["name"], _body(r), _rid(r)))
        add("POST", P + r"/global/images/(?P<name>[^/]+)/setLabels", "images.setLabels",
            lambda r, a: model.set_image_labels(a["project"], a["name"], _body(r), _rid(r)))
        add("GET", P + "/regions", "regions.list", self._lister("compute#regionList", "regions",
                                                                lambda a: model.list_regions(a["project"])))
        add("GET", P + r"/regions/(?P<region>[^/]+)", "regions.get", lambda r, a: model.region(a["project"], a["region"]))
        add("GET", P + "/zones", "zones.list", self._lister("compute#zoneList", "zones",
                                                            lambda a: model.list_zones(a["project"])))
        add("GET", Z, "zones.get", lambda r, a: model.zone(a["project"], a["zone"]))
        add("GET", Z + "/machineTypes", "machineTypes.list",
            self._lister("compute#machineTypeList", "zones/{zone}/machineTypes",
                         lambda a: model.list_machine_types(a["project"], a["zone"])))
        add("GET", P + "/aggregated/machineTypes", "machineTypes.aggregatedList", self.aggregated_machine_types)
        add("GET", Z + r"/machineTypes/(?P<mt>[^/]+)", "machineTypes.get",
            lambda r, a: model.machine_type(a["project"], a["zone"], a["mt"]))
        add("GET", P + "/aggregated/operations", "globalOperations.aggregatedList", self.aggregated_operations)
        for scope, zone, ops in ((Z, True, "zoneOperations"), (P + "/global", False, "globalOperations")):
            add("GET", scope + "/operations", f"{ops}.list", self._ops_list(zone))
            add("GET", scope + r"/operations/(?P<op>[^/]+)", f"{ops}.get",
                lambda r, a: model.get_operation(a["project"], a.get("zone"), a["op"]))
            add("POST", scope + r"/operations/(?P<op>[^/]+)/wait", f"{ops}.wait",
                lambda r, a: model.wait_operation(a["project"], a.get("zone"), a["op"]))
            add("DELETE", scope + r"/operations/(?P<op>[^/]+)", f"{ops}.delete", self.delete_operation)

    def _add(self, method: str, pattern: str, method_id: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(pattern), handler, method_id))

    def dispatch(self, request: Request, path: str) -> Response:
        """Serve one /compute/v1 request (path without that prefix); ComputeErrors become Google errors."""
        known_path = False
        for method, rx, handler, method_id in self.routes:
            m = rx.fullmatch(path)
            if not m:
                continue
            known_path = True
            if method != request.method:
                continue
            try:
                query = {k: v for k, v in request.args.items() if k not in CLIENT_ONLY_PARAMS}
                schema.check_request(method_id, query, _body(request) if method == "POST" else None)
                result = handler(request, m.groupdict())
            except ComputeError as exc:
                return google_error(exc.code, exc.message, exc.reason)
            return result if isinstance(result, Response) else json_response(result)
        if known_path:
            return google_error(405, f"Method {request.method} not allowed for {path}", "httpMethodNotAllowed")
        return google_error(404, f"The requested URL /compute/v1/{path} was not found on this server.", "notFound")

    # ------------------------------------------------------------------ handlers with shaping

    def list_instances(self, request: Request, a: dict[str, str]) -> dict[str, Any]:
        items = self.model.list_instances(a["project"], a["zone"], request.args.get("filter"))
        base = f"{GOOGLE}/projects/{a['project']}/zones/{a['zone']}/instances"
        return _page(request, items, "compute#instanceList", base, f"projects/{a['project']}/zones/{a['zone']}/instances")

    def aggregated_instances(self, request: Request, a: dict[str, str]) -> dict[str, Any]:
        """aggregatedList: items keyed 'zones/Z' (only zones holding instances; Google adds empty-zone warnings)."""
        items = self.model.list_instances(a["project"], None, request.args.get("filter"))
        grouped: dict[str, dict[str, Any]] = {}
        for inst in items:
            grouped.setdefault("zones/" + inst["zone"].rsplit("/", 1)[-1], {"instances": []})["instances"].append(inst)
        return _aggregated("compute#instanceAggregatedList", a["project"], "instances", grouped)

    def _lister(self, kind: str, scope: str, items: Callable[[dict[str, str]], list[dict[str, Any]]]) -> Handler:
        def handler(request: Request, a: dict[str, str]) -> dict[str, Any]:
            found = [i for i in items(a) if compile_filter(request.args.get("filter"))(i)]
            where = f"projects/{a['project']}/" + scope.format(**a)
            return _page(request, found, kind, f"{GOOGLE}/{where}", where)

        return handler

    def aggregated_machine_types(self, request: Request, a: dict[str, str]) -> dict[str, Any]:
        match = compile_filter(request.args.get("filter"))
        items = {f"zones/{z['name']}": {"machineTypes": [m for m in self.model.list_machine_types(a["project"],
                                                                                                  z["name"])
                                                           if match(m)]}
                 for z in self.model.list_zones(a["project"])}
        return _aggregated("compute#machineTypeAggregatedList", a["project"], "machineTypes", items)

    def aggregated_operations(self, request: Request, a: dict[str, str]) -> dict[str, Any]:
        """Every zone's and the global operations, keyed 'zones/Z' and 'global' (gcloud compute operations list)."""
        items: dict[str, dict[str, Any]] = {}
        for op in self.model.list_operations(a["project"], None, request.args.get("filter"), every_scope=True):
            scope = "zones/" + op["zone"].rsplit("/", 1)[-1] if op.get("zone") else "global"
            items.setdefault(scope, {"operations": []})["operations"].append(op)
        return _aggregated("compute#operationAggregatedList", a["project"], "operations", items)

    def serial_port(self, request: Request, a: dict[str, str]) -> dict[str, Any]:
        try:
            start = int(request.args.get("start", 0))
            port = int(request.args.get("port", 1))
        except ValueError:
            raise InvalidValue("Invalid value for field 'start'.") from None
        if not 1 <= port <= 4:
            raise InvalidValue(f"Invalid value for field 'port': '{port}'. Must be between 1 and 4.")
        return self.model.serial_port_output(a["project"], a["zone"], a["name"], start)

    def list_images(self, request: Request, a: dict[str, str]) -> dict[str, Any]:
        items = self.model.list_images(a["project"], request.args.get("filter"))
        return _page(request, items, "compute#imageList", f"{GOOGLE}/projects/{a['project']}/global/images",
                     f"projects/{a['project']}/global/images")

    def insert_image(self, request: Request, a: dict[str, str]) -> dict[str, Any]:
        force = request.args.get("forceCreate", "false").lower() == "true"
        return self.model.insert_image(a["project"], _body(request), force_create=force, request_id=_rid(request))

    def _ops_list(self, zonal: bool) -> Handler:
        def handler(request: Request, a: dict[str, str]) -> dict[str, Any]:
            zone = a.get("zone") if zonal else None
            items = self.model.list_operations(a["project"], zone, request.args.get("filter"))
            scope = f"zones/{zone}" if zone else "global"
            return _page(request, items, "compute#operationList",
                         f"{GOOGLE}/projects/{a['project']}/{scope}/operations",
                         f"projects/{a['project']}/{scope}/operations")

        return handler

    def delete_operation(self, request: Request, a: dict[str, str]) -> Response:
        self.model.delete_operation(a["project"], a.get("zone"), a["op"])
        return Response("", status=204)


class AdminResponses:
    """/_localcloud/ calls tests and bin/localcloud use to drive what Google would do on its own."""

    def __init__(self, model: ComputeModel, quotas_api: Any = None) -> None:
        self.model = model
        self.quotas_api = quotas_api  # the Cloud Quotas emulation, which `apis` can disable

    def dispatch(self, request: Request, path: str) -> Response:
        try:
            return json_response(self._route(request, path.strip("/")))
        except ComputeError as exc:
            return google_error(exc.code, exc.message, exc.reason)
        except (ValueError, TypeError, KeyError) as exc:
            return google_error(400, f"bad admin request: {exc}")

    def _route(self, request: Request, path: str) -> Any:
        model, method = self.model, request.method
        parts = path.split("/")
        if method == "POST" and parts[0] == "preempt" and len(parts) == 4:
            return model.preempt(parts[1], parts[2], parts[3])
        if method == "POST" and path == "time_scale":
            model.set_time_scale(float(_body(request)["time_scale"]))
            return {"time_scale": model.time_scale}
        if method == "POST" and path == "op_delay":
            body = _body(request)
            model.op_delay = check_op_delay((body["min"], body["max"]))
            return {"min": model.op_delay[0], "max": model.op_delay[1]}
        if method == "POST" and path == "apis" and self.quotas_api is not None:
            self.quotas_api.enabled = bool(_body(request).get("cloudquotas", True))
            return {"cloudquotas": self.quotas_api.enabled}
        if method == "POST" and path == "quota":
            body = _body(request)
            model.set_quota(body.get("metric", "CPUS"), float(body["limit"]), body.get("region"))
            return {"quotas": model.quotas}
        if method == "POST" and path == "metrics":
            model.set_metrics_enabled(bool(_body(request)["enabled"]))
            return {"enabled": model.metrics_enabled}
        if method == "GET" and path == "vms":
            return model.vms_info()
        if method == "GET" and parts[0] == "vms" and len(parts) == 4:
            key = "/".join(parts[1:])
            if key not in model.instances:
                raise ResourceNotFound(f"projects/{parts[1]}/zones/{parts[2]}/instances/{parts[3]}")
            return model.vm_info(key)
        raise ResourceNotFound(f"/_localcloud/{path}")


def handle(model: ComputeModel, compute: ComputeResponses, admin: AdminResponses, faults: Any,
           request: Request, quotas: Callable[[Request], Response] | None = None) -> Response:
    """Entry point: faults first for the Compute API, then routing."""
    path = request.path
    if path == batch.PATH and request.method == "POST":
        return batch.serve(request, lambda sub: handle(model, compute, admin, faults, sub, quotas))
    if path.startswith("/compute/v1/"):
        fault = apply_fault(faults, "compute", request)
        if fault is not None:
            return fault
        refused = iam.refusal("compute", request.method, path, request.headers.get("Authorization"), faults)
        if refused is not None:
            return json_response(refused[1], status=refused[0])
        return delayed(request, compute.dispatch(request, path[len("/compute/v1/"):].rstrip("/")))
    if path.startswith("/_localcloud/"):
        return admin.dispatch(request, path[len("/_localcloud/"):])
    if path.startswith("/v1/projects/") and quotas is not None:
        return quotas(request)
    return google_error(404, f"The requested URL {path} was not found on this server.", "notFound")
