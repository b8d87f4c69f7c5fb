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
