"""HTTP plumbing shared by the local cloud's emulators: one server class, Google's error shape, faults."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from pytest_httpserver.httpserver import HTTPServerBase
from werkzeug import Request, Response

from lib.localcloud.faults import FaultRegistry

REASONS = {
    400: "invalid", 401: "required", 403: "forbidden", 404: "notFound", 409: "alreadyExists",
    412: "conditionNotMet", 429: "rateLimitExceeded", 500: "backendError", 503: "backendError",
}


class AppServer(HTTPServerBase):
    """pytest-httpserver's threaded werkzeug server around one app function.

    The base class's request log is skipped: the daemon runs for hours.
    """

    def __init__(self, app: Callable[[Request], Response], host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port, threaded=True)
        self._app = app

    def dispatch(self, request: Request) -> Response:
        return self._app(request)

    def application(self, request: Request) -> Response:
        request.get_data()
        return self.dispatch(request)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


def error_body(code: int, message: str, reason: str | None = None) -> dict[str, Any]:
    """Google's JSON error body, which google-api-core turns into the matching exception class."""
    reason = reason or REASONS.get(code, "error")
    return {"error": {"code": code, "message": message, "errors": [{"message": message, "domain": "global", "reason": reason}]}}


def google_error(code: int, message: str, reason: str | None = None) -> Response:
    return json_response(error_body(code, message, reason), status=code)


def reset_socket(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN, as a flaky network drops a connection."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def reset_connection(request: Request) -> None:
    """Drop a werkzeug request's TCP connection with an RST."""
    sock = request.environ.get("werkzeug.socket")
    if sock is not None:
        reset_socket(sock)


class ConnectionDropped(Exception):
    """Raised after reset_connection so the server abandons the request."""


def apply_fault(faults: FaultRegistry | None, api: str, request: Request) -> Response | None:
    """Answer for an armed fault, or None to carry on. 'stall' waits, then carries on."""
    if faults is None:
        return None
    target = request.full_path.rstrip("?")
    fault = faults.take(api, request.method, target)
    if fault is None:
        return None
    if fault.kind.startswith("http:"):
        code = int(fault.kind[5:])
        return google_error(code, f"injected fault: HTTP {code}")
    if fault.kind == "reset":
        reset_connection(request)
        raise ConnectionDropped(target)
    if fault.kind == "stall":
        time.sleep(fault.seconds)
    return None
