"""The one retry policy, applied at one choke point: `call(fn, *args, **kwargs)`.

Every Google API call in lib/ goes through `call`, and the client libraries'
own retries are switched off (`retry=None`) so a failing call is retried in one
place, by one set of rules, and logged once. Mutations are only retried when they
are idempotent: Compute calls carry a `request_id` chosen before the first
attempt, storage writes carry a generation precondition.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
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


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection resets and timeouts, from every layer the clients use."""
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.timeout]
    try:
        import requests

        kinds += [requests.ConnectionError, requests.Timeout]
    except ImportError:  # pragma: no cover
        pass
    try:
        import urllib3.exceptions as u3

        kinds += [u3.ProtocolError, u3.ReadTimeoutError]
    except ImportError:  # pragma: no cover
        pass
    try:
        import google.auth.exceptions as gae

        kinds.append(gae.TransportError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


_TRANSPORT: tuple[type[BaseException], ...] | None = None


def is_retryable(exc: BaseException) -> bool:
    """True for the errors above; False for everything else (403, 404, 409, 412 surface at once)."""
    global _TRANSPORT
    if _TRANSPORT is None:
        _TRANSPORT = _transport_errors()
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code in RETRYABLE_HTTP_CODES:
        return True
    grpc_code = getattr(exc, "grpc_status_code", None)
    if grpc_code is not None and getattr(grpc_code, "name", "") in {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}:
        return True
    # google.resumable_media raises InvalidResponse carrying the HTTP response.
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int) and status in RETRYABLE_HTTP_CODES and type(exc).__name__ == "InvalidResponse":
        return True
    return isinstance(exc, _TRANSPORT)


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
    """Call `fn` under the policy; when it gives up, the original exception surfaces.

    For a composite attempt (several library calls that must be retried together);
    a single client method goes through `google` instead.
    """
    return policy()(fn, *args, **kwargs)


def google(method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call one Google client method under the policy, with the library's own retry off."""
    return call(method, *args, retry=None, **kwargs)


def listing(method: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
    """Call a paged list method and read every page inside one retried attempt."""
    return call(lambda: list(method(*args, retry=None, **kwargs)))
