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

from lib.localcloud.compute.exceptions import ComputeError, InvalidValue, ResourceNotFound
from lib.localcloud.compute.models import GOOGLE, ComputeModel
from lib.localcloud.http import apply_fault, google_error, json_response

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


class ComputeResponses:
    """Route table + handlers. Each handler returns a JSON-able dict (or a Response)."""

    def __init__(self, model: ComputeModel) -> None:
        self.model = model
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        add = self._add
        add("GET", P, lambda r, a: model.project(a["project"]))
        add("GET", Z + "/instances", self.list_instances)
        add("POST", Z + "/instances", lambda r, a: model.insert_instance(a["project"], a["zone"], _body(r), _rid(r)))
        add("GET", P + "/aggregated/instances", self.aggregated_instances)
        add("GET", INST, lambda r, a: model.get_instance(a["project"], a["zone"], a["name"]))
        add("DELETE", INST, lambda r, a: model.delete_instance(a["project"], a["zone"], a["name"], _rid(r)))
        add("POST", INST + "/stop", lambda r, a: model.stop_instance(a["project"], a["zone"], a["name"], _rid(r)))
        add("POST", INST + "/start", lambda r, a: model.start_instance(a["project"], a["zone"], a["name"], _rid(r)))
        add("POST", INST + "/setMetadata",
            lambda r, a: model.set_metadata(a["project"], a["zone"], a["name"], _body(r), _rid(r)))
        add("POST", INST + "/setLabels",
            lambda r, a: model.set_labels(a["project"], a["zone"], a["name"], _body(r), _rid(r)))
        add("GET", INST + "/serialPort", self.serial_port)
        add("GET", P + "/global/images", self.list_images)
        add("POST", P + "/global/images", self.insert_image)
        add("GET", P + r"/global/images/family/(?P<family>[^/]+)",
            lambda r, a: model.image_from_family(a["project"], a["family"]))
        add("GET", P + r"/global/images/(?P<name>[^/]+)", lambda r, a: model.get_image(a["project"], a["name"]))
        add("DELETE", P + r"/global/images/(?P<name>[^/]+)",
            lambda r, a: model.delete_image(a["project"], a["name"], _rid(r)))
        add("POST", P + r"/global/images/(?P<name>[^/]+)/deprecate",
            lambda r, a: model.deprecate_image(a["project"], a["name"], _body(r), _rid(r)))
        add("POST", P + r"/global/images/(?P<name>[^/]+)/setLabels",
            lambda r, a: model.set_image_labels(a["project"], a["name"], _body(r), _rid(r)))
        add("GET", P + r"/regions/(?P<region>[^/]+)", lambda r, a: model.region(a["project"], a["region"]))
        add("GET", Z, lambda r, a: model.zone(a["project"], a["zone"]))
        add("GET", Z + r"/machineTypes/(?P<mt>[^/]+)",
            lambda r, a: model.machine_type(a["project"], a["zone"], a["mt"]))
        for scope, zone in ((Z, True), (P + "/global", False)):
            add("GET", scope + "/operations", self._ops_list(zone))
            add("GET", scope + r"/operations/(?P<op>[^/]+)",
                lambda r, a: model.get_operation(a["project"], a.get("zone"), a["op"]))
            add("POST", scope + r"/operations/(?P<op>[^/]+)/wait",
                lambda r, a: model.get_operation(a["project"], a.get("zone"), a["op"]))
            add("DELETE", scope + r"/operations/(?P<op>[^/]+)", self.delete_operation)

    def _add(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(pattern), handler))

    def dispatch(self, request: Request, path: str) -> Response:
        """Serve one /compute/v1 request (path without that prefix); ComputeErrors become Google errors."""
        known_path = False
        for method, rx, handler in self.routes:
            m = rx.fullmatch(path)
            if not m:
                continue
            known_path = True
            if method != request.method:
                continue
            try:
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
        return {"kind": "compute#instanceAggregatedList", "id": f"projects/{a['project']}/aggregated/instances",
                "items": grouped, "selfLink": f"{GOOGLE}/projects/{a['project']}/aggregated/instances"}

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

    def __init__(self, model: ComputeModel) -> None:
        self.model = model

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
           request: Request) -> Response:
    """Entry point: faults first for the Compute API, then routing."""
    path = request.path
    if path.startswith("/compute/v1/"):
        fault = apply_fault(faults, "compute", request)
        if fault is not None:
            return fault
        return compute.dispatch(request, path[len("/compute/v1/"):].rstrip("/"))
    if path.startswith("/_localcloud/"):
        return admin.dispatch(request, path[len("/_localcloud/"):])
    return google_error(404, f"The requested URL {path} was not found on this server.", "notFound")
