"""The errors a user ever sees: a one-line message and an exit code.

Exit codes (the same for every bin/ script, invoke task and the `ops-hpc` command):
0 ok, 1 something failed, 2 bad input or config (`UsageError`), 3 refused or nothing
to act on (`Refused`), 130 interrupted. lib/ raises these classes and never passes
a numeric code itself, so the meaning of a code lives here only.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class OpsError(Exception):
    """A failure the user can act on. bin/ scripts print `str(err)` and exit with `err.code`."""

    code = EXIT_FAILED

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(OpsError):
    """Bad input: a flag, a file, a name the user gave; exit 2 like argparse's usage errors."""

    code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration value is missing or wrong (exit 2)."""


class Refused(OpsError):
    """Refused on purpose, or nothing to act on: not ours, no terminal to confirm on, no such run (exit 3)."""

    code = EXIT_REFUSED


class Missing(OpsError):
    """A named thing (image, VM, bucket, run) does not exist; callers that can live without it catch this type."""


# -- translating what the libraries raise --------------------------------------------------------------
#
# `explain(exc)` is the one mapping from a Google, credential, network or file error to what the user
# should do. cli.run, the invoke tasks and lib code that must translate an error in place
# (storage.ensure_bucket, compute.create_vm) all call it, so one failure reads the same everywhere.
# Errors are recognised by type, HTTP status, ErrorInfo reason and request URL, never by message text.

LOGIN_HINT = "run `gcloud auth application-default login` (a service account: check GOOGLE_APPLICATION_CREDENTIALS)"
SETUP_HINT = "`make setup` (or `ops-hpc setup`) lists what is missing"
NETWORK_HINT = "check the network connection, VPN or proxy (HTTPS_PROXY), then retry"
_SERVICES = {"compute": "Compute Engine API", "storage": "Cloud Storage", "monitoring": "Cloud Monitoring API",
             "oauth2": "Google sign-in", "token": "Google sign-in"}
_STOCKOUT = {"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "RESOURCE_POOL_EXHAUSTED"}
_QUOTA = {"QUOTA_EXCEEDED", "RATE_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "rateLimitExceeded",
          "userRateLimitExceeded", "quotaExceeded"}


def _request_url(exc: BaseException) -> str:
    """The URL of the request that failed, when the exception carries its HTTP response or request."""
    for holder in (getattr(exc, "response", None), exc):
        request = getattr(holder, "request", None)
        url = getattr(request, "url", None)
        if isinstance(url, str):
            return url
    return ""


def _service(url: str, fallback: str = "Google API") -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    words = [parts.hostname or ""] + [p for p in parts.path.split("/") if p]
    for word in words:
        head = word.split(".", 1)[0]
        if head in _SERVICES:
            return _SERVICES[head]
    return fallback


def _bucket_of(url: str) -> tuple[str, bool]:
    """(bucket, whole-bucket request) from a Cloud Storage JSON API URL: a 404 on the bucket or its listing/upload means no bucket."""
    from urllib.parse import unquote, urlsplit

    path = [p for p in urlsplit(url).path.split("/") if p]
    if "b" not in path:
        return "", False
    rest = path[path.index("b") + 1 :]
    if not rest:
        return "", False
    return unquote(rest[0]), len(rest) == 1 or (len(rest) == 2 and rest[1] == "o")


def _project_of(url: str) -> str:
    path = url.split("?", 1)[0].split("/")
    return path[path.index("projects") + 1] if "projects" in path and path.index("projects") + 1 < len(path) else ""


def _operation_codes(exc: BaseException) -> set[str]:
    """Error codes of a failed Compute operation (ZONE_RESOURCE_POOL_EXHAUSTED, QUOTA_EXCEEDED, ...)."""
    codes: set[str] = set()
    for item in getattr(exc, "errors", None) or ():
        code = item.get("reason") if isinstance(item, dict) else getattr(item, "code", None)
        if isinstance(code, str):
            codes.add(code)
    error = getattr(getattr(exc, "response", None), "error", None)
    for item in getattr(error, "errors", None) or ():
        if isinstance(getattr(item, "code", None), str):
            codes.add(item.code)
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        codes.add(reason)
    return codes


def is_stockout(exc: BaseException) -> bool:
    """A failed insert whose zone has no capacity (ZONE_RESOURCE_POOL_EXHAUSTED and kin): another zone may have."""
    return bool(_operation_codes(exc) & _STOCKOUT)


def _short(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _api_error(exc: BaseException, what: str) -> OpsError | None:
    try:
        from google.api_core import exceptions as gexc
    except ImportError:  # pragma: no cover - the toolkit always has it
        return None
    if not isinstance(exc, gexc.GoogleAPICallError):
        return None
    url = _request_url(exc)
    service = _service(url)
    prefix = f"{what}: " if what else ""
    metadata = getattr(exc, "metadata", None) or {}
    reason = getattr(exc, "reason", None)
    codes = _operation_codes(exc)
    message = _short(getattr(exc, "message", "") or str(exc))
    if reason == "SERVICE_DISABLED" or "accessNotConfigured" in codes:
        api = metadata.get("service") or {"Compute Engine API": "compute.googleapis.com",
                                          "Cloud Storage": "storage.googleapis.com",
                                          "Cloud Monitoring API": "monitoring.googleapis.com"}.get(service, "")
        project = (metadata.get("consumer") or "").removeprefix("projects/") or _project_of(url)
        where = f" --project {project}" if project else ""
        name = metadata.get("serviceTitle") or service
        return UsageError(f"{prefix}the {name} is not enabled in the project: run `gcloud services enable "
                          f"{api or 'SERVICE'}{where}`, wait a minute, then retry")
    if isinstance(exc, gexc.Unauthorized):
        return UsageError(f"{prefix}{service} refused the Google credentials (expired or revoked): {LOGIN_HINT}")
    if isinstance(exc, gexc.Forbidden) and not codes & _QUOTA:
        permission = metadata.get("permission") or _permission_in(message)
        missing = f"the permission {permission}" if permission else "a permission"
        return UsageError(f"{prefix}{service}: permission denied, you lack {missing}: ask the project owner for it; "
                          f"{SETUP_HINT}")
    if isinstance(exc, gexc.NotFound):
        bucket, whole = _bucket_of(url) if service == "Cloud Storage" else ("", False)
        if bucket and whole:
            return Missing(f"{prefix}bucket gs://{bucket} does not exist: run `make setup` (or `ops-hpc setup`) to "
                           "create it, or set the right bucket in ops-hpc.toml", code=EXIT_USAGE)
        return Missing(f"{prefix}{service}: not found: {message}")
    if codes & _STOCKOUT:
        return OpsError(f"{prefix}the zone has no capacity for this machine type right now (stockout): retry later, "
                        "or list more zones (zones in ops-hpc.toml) or choose a smaller machine_type")
    if isinstance(exc, (gexc.TooManyRequests, gexc.ResourceExhausted)) or codes & _QUOTA:
        return OpsError(f"{prefix}{service}: quota or rate limit exceeded ({message}): wait a few minutes and retry; "
                        "for CPU quota see `make setup` and request more in the console (IAM & Admin > Quotas), "
                        "or use another region")
    return OpsError(f"{prefix}{service} failed: {exc.code or ''} {message}".replace("  ", " "))


def _permission_in(message: str) -> str:
    """The IAM permission a 403 names ('compute.instances.list'): extracted for the hint, never used to classify."""
    import re

    found = re.search(r"\b([a-z]+\.[a-zA-Z]+\.[a-zA-Z]+)\b", message)
    return found.group(1) if found else ""


def _auth_error(exc: BaseException, what: str) -> OpsError | None:
    try:
        from google.auth import exceptions as gae
    except ImportError:  # pragma: no cover
        return None
    prefix = f"{what}: " if what else ""
    if isinstance(exc, gae.TransportError):
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        return _network_error(inner, what) if inner is not None else OpsError(
            f"{prefix}cannot reach Google's sign-in service: {NETWORK_HINT}")
    if isinstance(exc, gae.DefaultCredentialsError):
        return UsageError(f"{prefix}no Google credentials found: {LOGIN_HINT}, or rehearse locally with `make demo`")
    if isinstance(exc, gae.RefreshError):
        body = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        kind = body.get("error") or "refused"
        return UsageError(f"{prefix}Google login {'expired or was revoked' if kind == 'invalid_grant' else kind}: "
                          f"{LOGIN_HINT}")
    if isinstance(exc, gae.GoogleAuthError):
        return UsageError(f"{prefix}Google credentials unusable ({_short(str(exc), 120)}): {LOGIN_HINT}")
    return None


def _network_error(exc: BaseException, what: str) -> OpsError | None:
    import ssl
    from urllib.parse import urlsplit

    prefix = f"{what}: " if what else ""
    kinds: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    tls: tuple[type[BaseException], ...] = (ssl.SSLError,)
    try:
        import requests

        kinds += (requests.ConnectionError, requests.Timeout)
        tls += (requests.exceptions.SSLError,)
    except ImportError:  # pragma: no cover
        pass
    try:
        import urllib3.exceptions as u3

        kinds += (u3.HTTPError,)
        tls += (u3.SSLError,)
    except ImportError:  # pragma: no cover
        pass
    import socket

    kinds += (socket.gaierror,)
    if not isinstance(exc, kinds + tls):
        return None
    url = _request_url(exc)
    host = urlsplit(url).netloc if url else ""
    where = f" {host}" if host else " Google"
    if isinstance(exc, tls):
        return OpsError(f"{prefix}secure connection to{where} failed (TLS certificate): behind a company proxy, "
                        "point REQUESTS_CA_BUNDLE at its CA certificate")
    return OpsError(f"{prefix}cannot reach{where}: {NETWORK_HINT}")


def _file_error(exc: BaseException, what: str) -> OpsError | None:
    if not isinstance(exc, OSError):
        return None
    prefix = f"{what}: " if what else ""
    name = exc.filename if exc.filename is not None else ""
    strerror = exc.strerror or _short(str(exc))
    if isinstance(exc, PermissionError):
        return OpsError(f"{prefix}{name}: permission denied: choose a folder you may write to, or close the program "
                        "holding the file")
    if isinstance(exc, NotADirectoryError):
        return UsageError(f"{prefix}{name}: a file is in the way where a folder is expected: give a folder path")
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, FileExistsError)):
        return UsageError(f"{prefix}{name}: {strerror}")
    return OpsError(f"{prefix}{name + ': ' if name else ''}{strerror}")


# Packages only the [local] extra installs (the local cloud and its VMs).
LOCAL_ONLY = frozenset({"werkzeug", "fake_gcs_server", "opensees"})


def _module_error(exc: BaseException, what: str) -> OpsError | None:
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    prefix = f"{what}: " if what else ""
    root = exc.name.split(".")[0]
    if root in LOCAL_ONLY:
        return UsageError(f"{prefix}the local cloud needs the package {root}, from the [local] extra: "
                          "`pip install 'ops-hpc[local]'` (a checkout: `make venv`)")
    return UsageError(f"{prefix}the package {root} is missing from this Python ({exc}): reinstall with "
                      "`pip install .` (a checkout: `make venv`)")


def explain(exc: BaseException, *, what: str = "") -> OpsError | None:
    """A one-line OpsError saying what failed and what to do, or None when `exc` is not a known kind (a bug).

    `what` names the step ("creating VM x"), prefixed to the line. Exit codes: the user must change
    something in the setup (login, API, permission, bucket, a path) -> 2; try again later or elsewhere
    (network, quota, stockout, server error) -> 1. An OpsError passes through unchanged.
    """
    if isinstance(exc, OpsError):
        return exc
    for translate in (_api_error, _auth_error, _network_error, _module_error, _file_error):
        found = translate(exc, what)
        if found is not None:
            return found
    return None
