"""The Compute batch endpoint (`POST /batch/compute/v1`), which gcloud uses for most commands.

Each part of the multipart/mixed body is one HTTP request ("GET /compute/v1/... HTTP/1.1", headers, body); each
runs through the same handler as a lone request (faults and validation included), and the answers come back as
the parts of a multipart/mixed response with Content-ID `<response-ID>`, as Google's batch front end does.
"""

from __future__ import annotations

import email.parser
import email.policy
import secrets
from collections.abc import Callable
from urllib.parse import urlsplit

from werkzeug import Request, Response
from werkzeug.test import EnvironBuilder

from lib.localcloud.http import google_error

PATH = "/batch/compute/v1"


def serve(request: Request, handle_one: Callable[[Request], Response]) -> Response:
    ctype = request.headers.get("Content-Type", "")
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + request.get_data())
    if not msg.is_multipart():
        return google_error(400, "Batch request is not multipart/mixed.")
    boundary = f"batch_{secrets.token_hex(8)}"
    out = []
    for index, part in enumerate(msg.get_payload()):
        raw = part.get_payload()
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        raw = raw.replace("\r\n", "\n")
        head, _, body = raw.partition("\n\n")
        request_line, *header_lines = head.split("\n")
        method, uri, _version = request_line.split(" ", 2)
        target = urlsplit(uri)
        headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
        headers.pop("Host", None)
        sub = Request(EnvironBuilder(method=method, path=target.path, query_string=target.query,
                                     headers=headers, data=body.encode()).get_environ())
        answer = handle_one(sub)
        payload = answer.get_data(as_text=True)
        content_id = (part.get("Content-ID") or f"<item{index}>").strip("<>")
        out.append(f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <response-{content_id}>\r\n\r\n"
                   f"HTTP/1.1 {answer.status}\r\nContent-Type: application/json; charset=UTF-8\r\n"
                   f"Content-Length: {len(payload.encode())}\r\n\r\n{payload}\r\n")
    data = "".join(out) + f"--{boundary}--\r\n"
    return Response(data, status=200, content_type=f"multipart/mixed; boundary={boundary}")
