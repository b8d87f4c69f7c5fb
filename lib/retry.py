"""The one retry policy, applied at one choke point.

Every Google API call in lib/ goes through this module and the client libraries' own
retries are switched off (`retry=None`), so a failing call is retried in one place, by
one set of rules, and logged once:

  google(method, ...)    one client method (the usual case)
  listing(method, ...)   a paged list, all pages read inside one attempt
  mutation(method, ...)  a change: retried only if the request proves it is idempotent
                         (a Compute `request_id` chosen before the first attempt, or a GCS
                         generation / metageneration precondition), else exactly one attempt.
                         `google` routes the methods in MUTATIONS here by itself.
  call(fn, ...)          a composite attempt: several library calls (each with retry=None)
                         that must be retried together

tests/test_retry.py scans lib/ and fails on a client call that bypasses these.
Deliberate exceptions: an operation's `.result()` polls through the library's own
operation client (with its own retry), and `blob.open()` streams inside `call`.

The two retry policies of the toolkit, side by side:

| side | where | retried | attempts | backoff |
|---|---|---|---|---|
| PC   | lib/retry.py (this)           | 429, 500, 502, 503, 504, connection resets, timeouts | 6, within 120 s | random exponential, 0.5 s x 2^n, at most 20 s |
| VM   | vm-scripts/lib.sh `ops_curl`  | curl failure (000), 408, 429, every 5xx            | 8 (OPS_ATTEMPTS) | 1, 2, 4, ... s, at most 30 s |

They differ on purpose: the VM is unattended and must get its results out, so it waits
longer and also retries 408 and the rarer 5xx; the PC has a person waiting for an answer.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import tenacity

log = logging.getLogger("ops_hpc.retry")
T = TypeVar("T")

# Why each is retried:
#   429 - rate limited (Compute per-minute quotas, GCS per-object mutation rate): backoff is the cure.
#   500, 502, 504 - transient backend failures; Google's guidance is to retry them with backoff.
#   503 - service unavailable, GCS's "please slow down" and Compute's brief outages.
RETRYABLE_HTTP_CODES = frozenset({429, 500, 502, 503, 504})

# Bounds: at most ATTEMPTS tries and at most MAX_SECONDS in total, whichever comes first.
ATTEMPTS = 6
MAX_SECONDS = 120.0
# Tests replace this to record waits instead of sleeping.
sleep: Callable[[float], None] = time.sleep

# Client methods that change something: `google` sends them through `mutation`.
MUTATIONS = frozenset({
    "insert", "delete", "stop", "start", "reset", "set_labels", "set_metadata", "deprecate", "patch", "update",
    "resize", "attach_disk", "detach_disk", "upload_from_filename", "upload_from_string", "upload_from_file",
    "compose", "rewrite", "copy_blob", "delete_blob", "delete_blobs", "make_public", "make_private",
})
# Creations whose repeat after a lost answer fails with 409 Conflict, which the caller takes as done.
SAFE_BY_CONFLICT = frozenset({"create_bucket"})
# Keyword arguments that make a storage write conditional on what it saw (python-storage's ConditionalRetryPolicy).
PRECONDITIONS = ("if_generation_match", "if_metageneration_match", "if_source_generation_match")


def _retryable_types() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(always transient, transient only with a retryable HTTP status): isinstance targets from every layer."""
    from google.api_core import exceptions as api

    always: list[type[BaseException]] = [
        api.TooManyRequests, api.InternalServerError, api.BadGateway, api.ServiceUnavailable, api.GatewayTimeout,
        ConnectionError, TimeoutError, socket.timeout,
    ]
    by_status: list[type[BaseException]] = []
    try:
        import requests

        always += [requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError]
    except ImportError:  # pragma: no cover
        pass
    try:
        import urllib3.exceptions as u3

        always += [u3.ProtocolError, u3.ReadTimeoutError]
    except ImportError:  # pragma: no cover
        pass
    try:  # resumable uploads/downloads raise InvalidResponse carrying the HTTP response
        import google.resumable_media.common as media

        by_status.append(media.InvalidResponse)
    except ImportError:  # pragma: no cover
        pass
    try:
        from google.cloud.storage import exceptions as gcs

        by_status.append(gcs.InvalidResponse)
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    return tuple(always), tuple(by_status)


_TYPES: tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]] | None = None


def is_retryable(exc: BaseException) -> bool:
    """True for the errors above; False for everything else (403, 404, 409, 412 surface at once)."""
    global _TYPES
    if _TYPES is None:
        _TYPES = _retryable_types()
    always, by_status = _TYPES
    from google.auth import exceptions as auth

    if isinstance(exc, auth.TransportError):  # google-auth wraps the transport's own error (python-storage does this too)
        inner = exc.args[0] if exc.args else None
        return is_retryable(inner) if isinstance(inner, BaseException) else True
    if isinstance(exc, always):
        return True
    if isinstance(exc, by_status):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return status in RETRYABLE_HTTP_CODES
    return False


def _log_retry(state: tenacity.RetryCallState) -> None:
    """Log only what will be retried, and only from the second retry on: one blip is not news."""
    if state.attempt_number >= 2 and state.outcome is not None:
        exc = state.outcome.exception()
        name = getattr(state.fn, "__qualname__", "call")
        log.warning("retrying %s after %s (attempt %d)", name, type(exc).__name__, state.attempt_number)


def policy(**overrides: Any) -> tenacity.Retrying:
    """The policy as a tenacity object; `overrides` exist for the few callers that need a longer bound."""
    options: dict[str, Any] = dict(
        retry=tenacity.retry_if_exception(is_retryable),
        stop=tenacity.stop_after_attempt(ATTEMPTS) | tenacity.stop_after_delay(MAX_SECONDS),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=20),
        reraise=True,
        before_sleep=_log_retry,
        sleep=lambda seconds: sleep(seconds),
    )
    options.update(overrides)
    return tenacity.Retrying(**options)


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn` under the policy; when it gives up, the last exception itself surfaces.

    For a composite attempt (several library calls that must be retried together);
    a single client method goes through `google` instead.
    """
    return policy()(fn, *args, **kwargs)


def _method_name(method: Callable[..., Any]) -> str:
    return getattr(method, "__name__", "")


def is_idempotent(request: Any = None, kwargs: Mapping[str, Any] | None = None) -> bool:
    """True if repeating this change cannot do it twice: a Compute request_id, or a storage precondition."""
    kwargs = kwargs or {}
    if getattr(request, "request_id", None) or kwargs.get("request_id"):
        return True
    if isinstance(request, Mapping) and (request.get("request_id") or request.get("requestId")):
        return True
    return any(kwargs.get(name) is not None for name in PRECONDITIONS)


def mutation(method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a client method that changes something: under the policy if idempotent, else exactly once."""
    if is_idempotent(kwargs.get("request"), kwargs) or _method_name(method) in SAFE_BY_CONFLICT:
        return call(method, *args, retry=None, **kwargs)
    log.debug("%s carries no request_id or precondition: one attempt, no retry", _method_name(method))
    return method(*args, retry=None, **kwargs)


def google(method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call one Google client method under the policy, with the library's own retry off (changes via `mutation`)."""
    if _method_name(method) in MUTATIONS:
        return mutation(method, *args, **kwargs)
    return call(method, *args, retry=None, **kwargs)


def listing(method: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
    """Call a paged list method and read every page inside one retried attempt."""
    return call(lambda: list(method(*args, retry=None, **kwargs)))
