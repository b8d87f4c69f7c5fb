"""The storage door: a small streaming proxy in front of fake-gcs-server.

Three reasons it exists:
- fake-gcs-server's filesystem backend maps an object named `a/../../x` (a legal
  GCS name) to a path outside its root. The door refuses names with `..` segments
  when the store is a filesystem, so rehearsing a hostile bucket cannot write on
  the user's disk. (Tests of hostile names use the memory backend, which keeps
  such names faithfully, and the door lets them through there.)
- fake-gcs-server ignores generation preconditions (measured: a delete or an
  upload with a wrong `ifGenerationMatch` succeeds). ops-hpc's safety rests on
  them (never delete an object re-uploaded meanwhile), so the door enforces
  `ifGenerationMatch` / `ifGenerationNotMatch` on object writes and deletes, as GCS
  does, holding a per-object lock across check and write.
- fake-gcs-server has no JSON batch endpoint (`POST /batch/storage/v1`), which
  GCS has and pull uses to delete a verified set in a few requests instead of one
  per file. The door runs each part of a batch as its own request, with the
  same name gate and preconditions, and answers in GCS's multipart/mixed form.
- It is where storage faults are injected: HTTP errors, connection resets,
  stalls, and same-size corruption of downloaded bytes.
- It answers as GCS where fake-gcs-server differs (storage_compat.py: DELETE 204, error reasons,
  storageLayout), and it can shape the network like a PC's line (shaping.py: RTT and bandwidth).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

from lib.localcloud import iam, storage_compat
from lib.localcloud.faults import Fault, FaultRegistry
from lib.localcloud.http import error_body, reset_socket
from lib.localcloud.shaping import Shaper
from lib.localcloud.storage_names import names_in_request, object_target, unsafe_name

CHUNK = 1 << 20
HEAD = 64 << 10  # how much of a streamed request body is inspected for object names
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class StorageDoor:
    """A threaded HTTP proxy from `host:port` to fake-gcs-server at `upstream` (host, port)."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        faults: FaultRegistry | None = None,
        gate_names: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        shaper: Shaper | None = None,
    ) -> None:
        door = self

        class Handler(_DoorHandler):
            pass

        Handler.door = door
        self.upstream = upstream
        self.faults = faults
        self.gate_names = gate_names
        self.shaper = shaper or Shaper()
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.host, self.port = self.server.server_address[:2]
        self._thread: threading.Thread | None = None
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def object_lock(self, target: tuple[str, str]) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(target, threading.Lock())

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> StorageDoor:
        self._thread = threading.Thread(target=self.server.serve_forever, name="storage-door", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Upstream(http.client.HTTPConnection):
    """The door's connection to fake-gcs-server, without Nagle (the same 40 ms, one hop further)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _DoorHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: with Nagle on, the body waited for the client's delayed ACK
    # (40 ms on Linux), so every request took 44 ms on loopback and a 30 ms line behaved like 74 ms.
    disable_nagle_algorithm = True
    door: StorageDoor

    def log_message(self, format: str, *args: object) -> None:
        pass

    # every method goes through one path
    def do_GET(self) -> None:
        self._proxy()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _upstream(self) -> http.client.HTTPConnection:
        conn = getattr(self, "_conn", None)
        if conn is None:
            conn = _Upstream(*self.door.upstream, timeout=600)
            self._conn = conn
        return conn

    def _send_json(self, code: int, message: str) -> None:
        body = json.dumps(error_body(code, message)).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        self.close_connection = True
        reset_socket(self.connection)

    def _read_body(self) -> bytes | None:
        """The request body: small ones are buffered (to inspect names); None means stream it."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 16 * CHUNK:
            return self.rfile.read(length) if length else b""
        self._head = self.rfile.read(HEAD)  # a streamed body's start, where a multipart upload names its object
        return None

    def _proxy(self) -> None:
        door = self.door
        fault = door.faults.take("storage", self.command, self.path) if door.faults else None
        length = int(self.headers.get("Content-Length") or 0)
        body = self._read_body()
        if fault is not None:
            if fault.kind.startswith("http:"):
                self._send_json(int(fault.kind[5:]), f"injected fault: HTTP {fault.kind[5:]}")
                return
            if fault.kind == "reset":
                self._reset()
                return
            if fault.kind == "stall":
                time.sleep(fault.seconds)
        door.shaper.round_trip()
        refused = iam.refusal("storage", self.command, self.path, self.headers.get("Authorization"), door.faults)
        if refused is not None:
            self.close_connection = body is None  # the unread rest of a streamed upload
            self._send_raw(refused[0], json.dumps(refused[1]).encode())
            return
        if body is not None:
            door.shaper.up.pace(len(body))
        layout = storage_compat.LAYOUT_RX.fullmatch(urlsplit(self.path).path)
        if self.command == "GET" and layout:
            self._storage_layout(unquote(layout.group(1)))
            return
        if self.command == "POST" and urlsplit(self.path).path == "/batch/storage/v1" and body is not None:
            self._batch(body)
            return
        refused = self._refused_name(self.command, self.path, body)
        if refused:
            self._send_json(400, refused)
            return
        target = self._precondition_target(self.command, self.path, body if body is not None else self._head)
        if target is None:
            self._forward(body, length, fault)
            return
        with door.object_lock(target):
            problem = self._precondition_problem(self.command, target, parse_qs(urlsplit(self.path).query))
            if problem:
                self._send_json(412, problem)
                return
            self._forward(body, length, fault)

    def _storage_layout(self, bucket: str) -> None:
        conn = self._upstream()
        conn.request("GET", f"/storage/v1/b/{quote(bucket, safe='')}")
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            self._send_raw(resp.status, storage_compat.google_error_payload(resp.status, raw))
            return
        self._send_raw(200, json.dumps(storage_compat.storage_layout(bucket, json.loads(raw))).encode())

    def _send_raw(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refused_name(self, method: str, path: str, body: bytes | None) -> str | None:
        if not self.door.gate_names:
            return None
        head = body if body is not None else getattr(self, "_head", b"")
        bad = [n for n in names_in_request(method, path, head[:HEAD]) if unsafe_name(n)]
        if not bad:
            return None
        return (f"the local cloud refuses object name {bad[0]!r}: its filesystem store cannot hold '..' "
                "segments safely (use the memory backend to rehearse such names)")

    @staticmethod
    def _precondition_target(method: str, path: str, body: bytes | None) -> tuple[str, str] | None:
        query = parse_qs(urlsplit(path).query)
        if "ifGenerationMatch" in query or "ifGenerationNotMatch" in query:
            return object_target(method, path, (body or b"")[:65536])
        return None

    def _batch(self, body: bytes) -> None:
        """Run each part of a GCS JSON batch as its own request; answer multipart/mixed like GCS."""
        import email.parser
        import email.policy

        ctype = self.headers.get("Content-Type", "")
        msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + body)
        if not msg.is_multipart():
            self._send_json(400, "batch request is not multipart/mixed")
            return
        boundary = f"batch_{secrets.token_hex(8)}"
        out = []
        for index, part in enumerate(msg.get_payload()):
            raw = part.get_payload().replace("\r\n", "\n")
            head, _, sub_body = raw.partition("\n\n")
            request_line, *header_lines = head.split("\n")
            method, uri, _version = request_line.split(" ", 2)
            target = urlsplit(uri)
            path = target.path + (f"?{target.query}" if target.query else "")
            headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
            status, reason, payload = self._sub_request(method, path, headers, sub_body.encode())
            content_id = (part.get("Content-ID") or f"<item{index}>").strip("<>")
            out.append(f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <response-{content_id}>\r\n\r\n"
                       f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=UTF-8\r\n"
                       f"Content-Length: {len(payload)}\r\n\r\n{payload}\r\n")
        data = ("".join(out) + f"--{boundary}--\r\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/mixed; boundary={boundary}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sub_request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, str]:
        """One part of a batch, with the same gate and preconditions as a lone request; buffered."""
        refused = self._refused_name(method, path, body)
        if refused:
            return 400, "Bad Request", json.dumps(error_body(400, refused))
        target = self._precondition_target(method, path, body)
        lock = self.door.object_lock(target) if target else contextlib.nullcontext()
        with lock:
            if target:
                problem = self._precondition_problem(method, target, parse_qs(urlsplit(path).query))
                if problem:
                    return 412, "Precondition Failed", json.dumps(error_body(412, problem))
            keep = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
            keep["Content-Length"] = str(len(body))
            conn = self._upstream()
            try:
                conn.request(method, path, body=body or None, headers=keep)
                resp = conn.getresponse()
                payload = resp.read()
            except (OSError, http.client.HTTPException):
                self._conn = None
                conn.close()
                return 503, "Service Unavailable", json.dumps(error_body(503, "backend unavailable"))
        if resp.status >= 400:
            payload = storage_compat.google_error_payload(resp.status, payload)
        elif storage_compat.is_resource_delete(method, path):
            return 204, "No Content", ""
        return resp.status, resp.reason, payload.decode("utf-8", "replace")

    def _precondition_problem(self, method: str, target: tuple[str, str], query: dict[str, list[str]]) -> str | None:
        """GCS's semantics: generation 0 means 'does not exist'; deleting or patching a missing object is a 404."""
        bucket, name = target
        conn = self._upstream()
        try:
            conn.request("GET", f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}?fields=generation")
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            self._conn = None
            conn.close()
            raise
        current = int(json.loads(raw)["generation"]) if resp.status == 200 else 0
        if current == 0 and method in ("DELETE", "PATCH", "PUT"):
            return None  # fake-gcs-server answers the 404 itself
        match = query.get("ifGenerationMatch", [None])[0]
        not_match = query.get("ifGenerationNotMatch", [None])[0]
        if match is not None and int(match) != current:
            return f"At least one of the pre-conditions you specified did not hold. (generation is {current})"
        if not_match is not None and int(not_match) == current:
            return "At least one of the pre-conditions you specified did not hold."
        return None

    def _forward(self, body: bytes | None, length: int, fault: Fault | None) -> None:
        door = self.door
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
        headers["Host"] = f"{door.upstream[0]}:{door.upstream[1]}"
        conn = self._upstream()
        try:
            if body is not None:
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
            else:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers.items():
                    conn.putheader(k, v)
                conn.endheaders()
                conn.send(self._head)
                remaining = length - len(self._head)
                while remaining:
                    chunk = self.rfile.read(min(CHUNK, remaining))
                    if not chunk:
                        break
                    door.shaper.up.pace(len(chunk))
                    conn.send(chunk)
                    remaining -= len(chunk)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException):
            self._conn = None
            conn.close()
            self._send_json(503, "local cloud: storage backend unavailable")
            return
        corrupt = fault is not None and fault.kind == "corrupt"
        self._relay(resp, corrupt)

    def _relay(self, resp: http.client.HTTPResponse, corrupt: bool) -> None:
        if resp.status >= 400 and self.command != "HEAD":
            self._send_raw(resp.status, storage_compat.google_error_payload(resp.status, resp.read()))
            return
        if 200 <= resp.status < 300 and storage_compat.is_resource_delete(self.command, self.path):
            resp.read()
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(resp.status, resp.reason)
        known_length = resp.getheader("Content-Length")
        payload = None if known_length is not None or self.command == "HEAD" else resp.read()
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        size = int(known_length) if known_length is not None else len(payload or b"")
        if self.command != "HEAD" or known_length is not None:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        if payload is not None:
            self.door.shaper.down.pace(len(payload))
            self.wfile.write(_flip(payload) if corrupt else payload)
            return
        first = True
        while True:
            chunk = resp.read(CHUNK)
            if not chunk:
                break
            if corrupt and first:
                chunk = _flip(chunk)
            first = False
            self.door.shaper.down.pace(len(chunk))
            self.wfile.write(chunk)


def _flip(data: bytes) -> bytes:
    """Same size, different content: what a bad disk or a bad middlebox does."""
    if not data:
        return data
    mid = len(data) // 2
    return data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
