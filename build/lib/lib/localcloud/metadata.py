"""Per-VM GCE metadata server: what a VM's scripts and google-auth read at http://$GCE_METADATA_HOST.

Each local VM gets its own server on an ephemeral port (a real VM reaches 169.254.169.254, which here
cannot tell VMs apart). Values come live from the Compute model through `view()`, so setMetadata and
preemption show up at once, as on GCE.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from werkzeug import Request, Response

from lib.localcloud.faults import FaultRegistry
from lib.localcloud.http import AppServer, apply_fault

PREFIX = "/computeMetadata/v1"
HEADERS = {"Metadata-Flavor": "Google", "Server": "Metadata Server for VM"}
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]

# view() -> {"project", "numeric_project", "zone", "name", "id", "machine_type", "attributes": {...},
#            "preempted": bool, "email", "scopes"} or None when the instance is gone.
View = Callable[[], "dict[str, Any] | None"]


def _tree(v: dict[str, Any]) -> dict[str, Any]:
    """The metadata directory tree of one VM; dicts are directories, everything else a leaf."""
    num = v["numeric_project"]
    account = {"aliases": ["default"], "email": v["email"], "scopes": v.get("scopes") or SCOPES,
               "token": None, "identity": None}
    return {
        "instance": {
            "attributes": dict(v["attributes"]),
            "hostname": f"{v['name']}.{v['zone']}.c.{v['project']}.internal",
            "id": int(v["id"]),
            "machine-type": f"projects/{num}/machineTypes/{v['machine_type']}",
            "maintenance-event": "NONE",
            "name": v["name"],
            "preempted": "TRUE" if v["preempted"] else "FALSE",
            "service-accounts": {"default": account, v["email"]: account},
            "zone": f"projects/{num}/zones/{v['zone']}",
            "network-interfaces": {"0": {"ip": "127.0.0.1"}},
        },
        "project": {"project-id": v["project"], "numeric-project-id": int(num), "attributes": {}},
    }


def _camel(key: str) -> str:
    head, *rest = key.split("-")
    return head + "".join(p.title() for p in rest)


def _jsonable(node: Any, raw_keys: bool = False) -> Any:
    """Recursive JSON as GCE renders it: hyphenated keys camelCased, except attribute names."""
    if isinstance(node, dict):
        return {(k if raw_keys else _camel(k)): _jsonable(v, raw_keys or k == "attributes")
                for k, v in node.items() if v is not None}
    return node


def _text(node: Any) -> str:
    if isinstance(node, (dict, list)):
        return json.dumps(node)
    return str(node)


def _answer(body: str, status: int = 200, mimetype: str = "application/text") -> Response:
    return Response(body, status=status, mimetype=mimetype, headers=HEADERS)


def metadata_app(view: View, faults: FaultRegistry | None = None) -> Callable[[Request], Response]:
    """The werkzeug app of one VM's metadata server."""

    def lookup(path: str, v: dict[str, Any]) -> tuple[bool, Any]:
        node: Any = _tree(v)
        for part in [p for p in path.split("/") if p]:
            if not isinstance(node, dict) or part not in node:
                return False, None
            node = node[part]
        return True, node

    def app(request: Request) -> Response:
        fault = apply_fault(faults, "metadata", request)
        if fault is not None:
            return fault
        if request.headers.get("Metadata-Flavor") != "Google":
            return _answer("Missing required header: Metadata-Flavor: Google\n", 403)
        if request.path in ("", "/"):
            return _answer("computeMetadata/\n")
        if not request.path.startswith(PREFIX):
            return _answer("Not found\n", 404)
        path = request.path[len(PREFIX):]
        v = view()
        if v is None:
            return _answer("instance is gone\n", 503)
        if request.args.get("wait_for_change") == "true":
            v = _wait_for_change(view, path, v, float(request.args.get("timeout_sec", "60")))
        tail = path.rstrip("/").rsplit("/", 1)[-1]
        if tail in ("token", "identity") and "/service-accounts/" in path:
            return _credentials(tail, request, v)
        found, node = lookup(path, v)
        if not found:
            return _answer("Not found\n", 404)
        recursive = request.args.get("recursive") == "true"
        as_json = request.args.get("alt") == "json" or (recursive and request.args.get("alt") != "text")
        if isinstance(node, dict):
            if not path.endswith("/") and not recursive:
                return Response("", status=301, headers={**HEADERS, "Location": request.path + "/"})
            if as_json:
                return _answer(json.dumps(_jsonable(node, path.strip("/").endswith("attributes"))),
                               mimetype="application/json")
            return _answer("".join(f"{k}/\n" if isinstance(n, dict) else f"{k}\n" for k, n in node.items()))
        if as_json:
            return _answer(json.dumps(node), mimetype="application/json")
        return _answer(_text(node))

    return app


def _wait_for_change(view: View, path: str, first: dict[str, Any], timeout: float) -> dict[str, Any]:
    """`?wait_for_change=true`: hold the answer until the value changes (shutdown scripts watch `preempted`)."""
    def value(v: dict[str, Any]) -> str:
        node: Any = _tree(v)
        for part in [p for p in path.split("/") if p]:
            node = node.get(part) if isinstance(node, dict) else None
        return json.dumps(node, sort_keys=True, default=str)

    before = value(first)
    deadline = time.monotonic() + max(0.0, min(timeout, 3600))
    while time.monotonic() < deadline:
        time.sleep(0.1)
        v = view()
        if v is None:
            return first
        if value(v) != before:
            return v
    return first


def _credentials(kind: str, request: Request, v: dict[str, Any]) -> Response:
    """Local tokens: opaque strings; the local cloud's APIs accept any credential."""
    if kind == "token":
        body = {"access_token": f"ya29.localcloud-{v['name']}-{int(time.time())}", "expires_in": 3599,
                "token_type": "Bearer"}
        return _answer(json.dumps(body), mimetype="application/json")
    audience = request.args.get("audience")
    if not audience:
        return _answer("non-empty audience parameter required\n", 400)
    return _answer(f"localcloud-identity-token.{v['name']}.{audience}")


class MetadataServer:
    """One VM's metadata server; `host` is what the VM gets as GCE_METADATA_HOST."""

    def __init__(self, view: View, faults: FaultRegistry | None = None, port: int = 0) -> None:
        self._app = metadata_app(view, faults)
        self._wanted_port = port
        self._server: AppServer | None = None

    def start(self) -> MetadataServer:
        """Bind the wanted port (a restarted daemon re-serves a surviving VM where it looked before), else any."""
        try:
            self._server = AppServer(self._app, port=self._wanted_port)
            self._server.start()
        except OSError:
            self._server = AppServer(self._app, port=0)
            self._server.start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, wait: bool = False) -> None:
        """Stop serving; by default in the background (werkzeug needs up to 0.5 s to notice)."""
        server, self._server = self._server, None
        if server is None or not server.is_running():
            return
        if wait:
            server.stop()
        else:
            threading.Thread(target=server.stop, name="metadata-stop", daemon=True).start()
