"""Where fake-gcs-server answers differently from GCS, the storage door answers as GCS does.

- A successful DELETE (object or bucket) is `204 No Content` with an empty body (fake-gcs-server: `200 null`).
- Error bodies carry Google's reasons (`notFound`, not `Not Found`), which clients such as gcloud match on.
- `GET /storage/v1/b/BUCKET/storageLayout` exists (gcloud storage asks it before rm, cp -r).
"""

from __future__ import annotations

import json
import re
from typing import Any

from lib.localcloud.http import REASONS, error_body

LAYOUT_RX = re.compile(r"/storage/v1/b/([^/?]+)/storageLayout")
DELETABLE_RX = re.compile(r"/storage/v1/b/[^/?]+(/o/[^?]+)?")


def is_resource_delete(method: str, path: str) -> bool:
    """A DELETE of a bucket or an object, which GCS answers with 204 and no body."""
    return method == "DELETE" and bool(DELETABLE_RX.fullmatch(path.split("?", 1)[0]))


def google_error_payload(status: int, payload: bytes) -> bytes:
    """fake-gcs-server's error body rewritten with Google's reason for the status; other bodies unchanged."""
    try:
        data = json.loads(payload or b"null")
    except ValueError:
        data = None
    message = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        message = data["error"].get("message")
    elif payload:
        message = payload.decode("utf-8", "replace").strip()
    reason = REASONS.get(status, "error")
    body = error_body(status, message or reason, reason)
    return json.dumps(body).encode()


def storage_layout(bucket: str, bucket_resource: dict[str, Any]) -> dict[str, Any]:
    """The storageLayout resource GCS returns for a flat (non-hierarchical) bucket."""
    location = bucket_resource.get("location", "US")
    return {"kind": "storage#storageLayout", "bucket": bucket, "location": location,
            "locationType": bucket_resource.get("locationType", "multi-region"),
            "hierarchicalNamespace": {"enabled": False}}
