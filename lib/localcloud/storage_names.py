"""Which objects a storage request names (path, query or JSON metadata): the door's name gate and locks use it."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, unquote, urlsplit


def unsafe_name(name: str) -> bool:
    """True when a filesystem store would resolve the name outside its bucket folder."""
    return any(part == ".." for part in name.replace("\\", "/").split("/"))


def object_target(method: str, raw_path: str, body_head: bytes) -> tuple[str, str] | None:
    """(bucket, object) a write or delete applies to, or None for reads and bucket calls."""
    parts = urlsplit(raw_path)
    segs = parts.path.split("/")
    if method == "DELETE" or method in ("PUT", "PATCH") and "upload_id" not in parts.query:
        # /storage/v1/b/B/o/NAME
        if len(segs) == 7 and segs[1:3] == ["storage", "v1"] and segs[3] == "b" and segs[5] == "o":
            return unquote(segs[4]), unquote(segs[6])
        return None
    if method == "POST" and parts.path.startswith("/upload/storage/v1/b/") and len(segs) >= 7:
        names = names_in_request(method, raw_path, body_head)
        return (unquote(segs[5]), names[0]) if names else None
    return None


def names_in_request(method: str, raw_path: str, body_head: bytes) -> list[str]:
    """Every object name a storage request refers to: in the path, the query, or the JSON metadata."""
    parts = urlsplit(raw_path)
    names = list(parse_qs(parts.query).get("name", []))
    segs = parts.path.split("/")
    # .../b/BUCKET/o/NAME[/copyTo|rewriteTo/b/B2/o/NAME2]; names are %-encoded single segments.
    for i, seg in enumerate(segs[:-1]):
        if seg == "o" and i >= 2 and segs[i - 2] == "b":
            names.append(unquote(segs[i + 1]))
    if body_head[:1] == b"{":
        try:
            meta = json.loads(body_head)
            if isinstance(meta, dict) and isinstance(meta.get("name"), str):
                names.append(meta["name"])
        except ValueError:
            pass
    elif b'"name"' in body_head[:65536]:  # multipart upload: the first part is the JSON metadata
        start = body_head.find(b"{")
        end = body_head.find(b"}", start)
        if start >= 0 and end > start:
            try:
                meta = json.loads(body_head[start : end + 1])
                if isinstance(meta.get("name"), str):
                    names.append(meta["name"])
            except ValueError:
                pass
    return names
