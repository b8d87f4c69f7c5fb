"""Compute Engine's own errors, one class per error a caller may meet, with Google's code, reason and message.

The model raises them; responses.py renders them with http.google_error (synchronous HTTP errors) or
puts them in a failed Operation (errors GCE reports asynchronously, like quota).
"""

from __future__ import annotations


class ComputeError(Exception):
    """Base: HTTP status `code`, Google `reason`, human `message`; `op_code` is the Operation error code."""

    code = 400
    reason = "invalid"
    op_code = "INVALID"
    http_message = "BAD REQUEST"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ResourceNotFound(ComputeError):
    code = 404
    reason = "notFound"
    op_code = "RESOURCE_NOT_FOUND"
    http_message = "NOT FOUND"

    def __init__(self, resource: str) -> None:
        super().__init__(f"The resource '{resource}' was not found")


class AlreadyExists(ComputeError):
    code = 409
    reason = "alreadyExists"
    op_code = "RESOURCE_ALREADY_EXISTS"
    http_message = "CONFLICT"

    def __init__(self, resource: str) -> None:
        super().__init__(f"The resource '{resource}' already exists")


class ConditionNotMet(ComputeError):
    """412: a fingerprint (optimistic lock) did not match; the caller must re-read and retry."""

    code = 412
    reason = "conditionNotMet"
    op_code = "CONDITION_NOT_MET"
    http_message = "PRECONDITION FAILED"


class QuotaExceeded(ComputeError):
    code = 403
    reason = "quotaExceeded"
    op_code = "QUOTA_EXCEEDED"
    http_message = "FORBIDDEN"

    def __init__(self, metric: str, limit: float, region: str) -> None:
        super().__init__(f"Quota '{metric}' exceeded.  Limit: {float(limit)} in region {region}.")
        self.metric = metric


class InvalidValue(ComputeError):
    code = 400
    reason = "invalid"
    op_code = "INVALID_FIELD_VALUE"


class ResourceInUse(ComputeError):
    code = 400
    reason = "resourceInUseByAnotherResource"
    op_code = "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE"


class ResourceNotReady(ComputeError):
    """400 resourceNotReady: the instance is in a transitional state (e.g. STOPPING) for this call."""

    code = 400
    reason = "resourceNotReady"
    op_code = "RESOURCE_NOT_READY"
