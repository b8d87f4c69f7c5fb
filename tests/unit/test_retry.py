"""The one retry policy: what it retries, what it does not, and that it gives up with the real error."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc

from lib import retry


class Flaky:
    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


@pytest.mark.parametrize(
    "error",
    [
        gexc.TooManyRequests("slow down"),
        gexc.InternalServerError("oops"),
        gexc.BadGateway("bad gateway"),
        gexc.ServiceUnavailable("unavailable"),
        gexc.GatewayTimeout("timeout"),
        ConnectionResetError("reset by peer"),
        TimeoutError("read timed out"),
    ],
)
def test_transient_errors_are_retried(error, no_retry_sleep):
    fn = Flaky(error, error)
    assert retry.call(fn) == "ok"
    assert fn.calls == 3
    assert len(no_retry_sleep) == 2  # waited twice, without sleeping for real


@pytest.mark.parametrize("error", [gexc.Forbidden("no"), gexc.NotFound("gone"), gexc.Conflict("exists"),
                                   gexc.PreconditionFailed("changed"), ValueError("bug")])
def test_non_transient_errors_surface_at_once(error, no_retry_sleep):
    fn = Flaky(error)
    with pytest.raises(type(error)):
        retry.call(fn)
    assert fn.calls == 1 and no_retry_sleep == []


def test_gives_up_after_the_attempt_bound_with_the_original_exception(no_retry_sleep):
    errors = [gexc.ServiceUnavailable(f"attempt {i}") for i in range(10)]
    fn = Flaky(*errors)
    with pytest.raises(gexc.ServiceUnavailable, match="attempt 5"):
        retry.call(fn)
    assert fn.calls == retry.ATTEMPTS
    assert all(0 <= w <= 20 for w in no_retry_sleep)


def test_total_time_bound(monkeypatch):
    """Each failed attempt here takes 50 s of (fake) clock: the 120 s bound ends it before the attempt bound."""
    now = [0.0]

    def slow_failure():
        now[0] += 50.0
        raise gexc.ServiceUnavailable(f"at {now[0]:.0f} s")

    monkeypatch.setattr(retry.tenacity.time, "monotonic", lambda: now[0])
    with pytest.raises(gexc.ServiceUnavailable, match="at 150 s"):
        retry.call(slow_failure)
    assert now[0] == 150.0  # three attempts, not ATTEMPTS


def test_backoff_grows(no_retry_sleep, monkeypatch):
    monkeypatch.setattr(retry.tenacity.wait.random, "uniform", lambda a, b: b)  # take the top of each jitter window
    fn = Flaky(*[gexc.ServiceUnavailable("x") for _ in range(4)])
    retry.call(fn)
    assert no_retry_sleep == sorted(no_retry_sleep) and no_retry_sleep[-1] > no_retry_sleep[0]


def test_grpc_codes_are_classified():
    assert retry.is_retryable(gexc.ServiceUnavailable("x"))  # gRPC UNAVAILABLE maps here
    assert retry.is_retryable(gexc.ResourceExhausted("x"))  # 429
    assert retry.is_retryable(gexc.DeadlineExceeded("x"))  # 504
    assert not retry.is_retryable(gexc.PermissionDenied("x"))


# -- the choke point is enforced: no Google client call in lib/ bypasses lib/retry.py --------------------

import ast  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

LIB = Path(__file__).resolve().parents[2] / "lib"
# Method names that plain Python objects have too: a call to one counts only on a Google-looking receiver.
GENERIC = {"get", "list", "insert", "delete", "update", "open", "reload", "exists", "patch", "reset", "start", "stop",
           "copy", "create", "upload", "download", "result", "close", "wait", "withdraw", "announce", "move", "add",
           "remove", "send", "cancel", "abandon", "resume", "suspend", "simulate_maintenance_event"}
GOOGLE_RECEIVER = re.compile(r"\bclients\.|\bstorage\.(client|bucket)\(|\.(bucket|blob|get_blob|get_bucket)\(|\bgcs\b")


@functools.lru_cache(maxsize=1)
def google_methods() -> frozenset[str]:
    """Every public method of the Google clients lib/ uses that takes `retry`: exactly the ones that call the API."""
    from google.cloud import compute_v1, monitoring_v3, storage
    from google.cloud.storage.batch import Batch

    classes = [getattr(compute_v1, n) for n in dir(compute_v1) if n.endswith("Client")]
    classes += [storage.Client, storage.Bucket, storage.Blob, Batch, monitoring_v3.MetricServiceClient]
    names = set()
    for cls in classes:
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if not name.startswith("_") and "retry" in inspect.signature(fn).parameters:
                names.add(name)
    return frozenset(names)


def _is_retry_call(node: ast.AST, names: tuple[str, ...] = ("call",)) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "retry")


def choke_point_violations(source: str, filename: str = "<src>") -> list[str]:
    """Calls of Google client methods that neither go through retry.google/listing/mutation nor sit, with
    retry=None, inside a function that retry.call runs (a composite attempt)."""
    tree = ast.parse(source)
    assigned: dict[str, list[str]] = {}
    attempts: set[str] = set()
    attempt_lambdas: set[int] = set()
    ours: set[str] = set()  # lib's own modules (storage.list_blobs is our wrapper, not the client's method)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lib":
            ours.update(alias.asname or alias.name for alias in node.names)
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(ast.unparse(node.value))
        if _is_retry_call(node) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Name):
                attempts.add(first.id)
            elif isinstance(first, ast.Lambda):
                attempt_lambdas.add(id(first))

    def googleish(receiver: ast.AST) -> bool:
        if isinstance(receiver, ast.Name) and receiver.id in ours:
            return False
        text = ast.unparse(receiver)
        if GOOGLE_RECEIVER.search(text):
            return True
        root = receiver
        while isinstance(root, (ast.Attribute, ast.Call, ast.Subscript)):
            root = root.value if not isinstance(root, ast.Call) else root.func
        return isinstance(root, ast.Name) and any(GOOGLE_RECEIVER.search(v) for v in assigned.get(root.id, []))

    found = []

    def visit(node: ast.AST, inside_attempt: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside_attempt = inside_attempt or node.name in attempts
        if isinstance(node, ast.Lambda):
            inside_attempt = inside_attempt or id(node) in attempt_lambdas
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            receiver = node.func.value
            ours_called = isinstance(receiver, ast.Name) and receiver.id in ours
            if name in google_methods() and not ours_called and (name not in GENERIC or googleish(receiver)):
                retry_kw = [k for k in node.keywords if k.arg == "retry"]
                off = bool(retry_kw) and isinstance(retry_kw[0].value, ast.Constant) and retry_kw[0].value.value is None
                if not (off and inside_attempt):
                    found.append(f"{filename}:{node.lineno}: {ast.unparse(node.func)}(...) "
                                 f"{'outside retry.call' if off else 'without retry=None / not via retry.google'}")
        for child in ast.iter_child_nodes(node):
            visit(child, inside_attempt)

    visit(tree, False)
    return found


def test_every_google_call_in_lib_goes_through_the_choke_point():
    files = [p for p in LIB.rglob("*.py") if "localcloud" not in p.parts]
    assert len(files) > 20
    violations = [v for p in files for v in choke_point_violations(p.read_text(encoding="utf-8"), str(p.relative_to(LIB.parent)))]
    assert violations == [], "\n".join(violations)


@pytest.mark.parametrize("snippet", [
    "def f(cfg):\n    return clients.instances(cfg).get(project='p', zone='z', instance='x')\n",
    "def f(cfg):\n    client = clients.images(cfg)\n    return client.list(project='p')\n",
    "def f(cfg):\n    return storage.bucket(cfg).get_blob('x')\n",
    "def f(b):\n    b.blob('x').upload_from_filename('f', retry=None)\n",  # retry off but nothing retries it
    "def f(cfg):\n    def attempt():\n        return clients.instances(cfg).get(project='p')\n    return retry.call(attempt)\n",
])
def test_the_scan_catches_a_bypass(snippet):
    assert choke_point_violations(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "def f(cfg):\n    return retry.google(clients.instances(cfg).get, project='p')\n",
    "def f(cfg):\n    def attempt():\n        return clients.instances(cfg).get(project='p', retry=None)\n"
    "    return retry.call(attempt)\n",
    "def f(d):\n    return d.get('x')\n",  # a dict, not a client
])
def test_the_scan_accepts_the_choke_point(snippet):
    assert choke_point_violations(snippet) == []


# -- mutations are retried only when they prove idempotency ---------------------------------------------


class Mutating:
    """A client method named like a mutation, failing transiently first."""

    def __init__(self, name, *errors):
        self.__name__ = name
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, *args, retry="default", **kwargs):
        assert retry is None  # the library's own retry is always off
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


class Request:
    def __init__(self, request_id=""):
        self.request_id = request_id


@pytest.mark.parametrize(("name", "kwargs"), [
    ("insert", {"request": Request("3f1c-uuid")}),
    ("upload_from_filename", {"if_generation_match": 0}),
    ("delete", {"if_generation_match": 1234}),
    ("create_bucket", {}),  # a repeat answers 409, which ensure_bucket takes as done
])
def test_idempotent_mutations_are_retried(name, kwargs, no_retry_sleep):
    method = Mutating(name, gexc.ServiceUnavailable("blip"))
    assert retry.google(method, **kwargs) == "done"
    assert method.calls == 2


@pytest.mark.parametrize(("name", "kwargs"), [
    ("insert", {"request": Request("")}),
    ("upload_from_string", {"if_generation_match": None}),
    ("delete", {}),
])
def test_mutations_without_proof_get_one_attempt(name, kwargs, no_retry_sleep):
    method = Mutating(name, gexc.ServiceUnavailable("blip"))
    with pytest.raises(gexc.ServiceUnavailable):
        retry.google(method, **kwargs)
    assert method.calls == 1 and no_retry_sleep == []


def test_reads_are_retried_whatever_they_carry(no_retry_sleep):
    method = Mutating("get", gexc.ServiceUnavailable("blip"))
    assert retry.google(method, project="p") == "done" and method.calls == 2


# -- retryability by type, not by class-name strings ----------------------------------------------------


def _invalid_response(module, status):
    import requests

    response = requests.Response()
    response.status_code = status
    return module.InvalidResponse(response, "bad")


@pytest.mark.parametrize(("status", "expected"), [(503, True), (429, True), (404, False), (412, False)])
def test_resumable_media_invalid_response_by_status(status, expected):
    import google.resumable_media.common as media
    from google.cloud.storage import exceptions as gcs

    assert retry.is_retryable(_invalid_response(media, status)) is expected
    assert retry.is_retryable(_invalid_response(gcs, status)) is expected


def test_an_unrelated_class_named_invalid_response_is_not_retried():
    class InvalidResponse(Exception):
        response = type("R", (), {"status_code": 503})()

    assert retry.is_retryable(InvalidResponse()) is False


def test_auth_transport_error_is_judged_by_what_it_wraps():
    import requests
    from google.auth.exceptions import TransportError

    assert retry.is_retryable(TransportError(requests.ConnectionError("refused"))) is True
    assert retry.is_retryable(TransportError(ValueError("bad url"))) is False
    assert retry.is_retryable(TransportError("no details")) is True


def test_grpc_style_errors_by_type():
    assert retry.is_retryable(gexc.DeadlineExceeded("slow")) is True
    assert retry.is_retryable(gexc.ResourceExhausted("quota")) is True
    assert retry.is_retryable(gexc.PermissionDenied("no")) is False
