"""Requests checked against Compute v1's discovery document, as Google's front end checks them.

The document is vendored in discovery/compute.v1.json (trimmed, with its revision; discovery/trim.py says how
to refresh it). Unknown fields, wrong JSON types and values outside an enum are 400s before any handler runs;
unknown query parameters too. `problems` is also what the tests use to hold the emulator's answers to the schema.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from pathlib import Path
from typing import Any

from lib.localcloud.compute.exceptions import InvalidValue

DOCUMENT = Path(__file__).with_name("discovery") / "compute.v1.json"
_INT_RX = re.compile(r"-?[0-9]+")


@functools.cache
def document() -> dict[str, Any]:
    return json.loads(DOCUMENT.read_text(encoding="utf-8"))


def revision() -> str:
    return document()["revision"]


def method(method_id: str) -> dict[str, Any]:
    """'instances.insert' -> its discovery entry (parameters, request and response schema)."""
    collection, name = method_id.split(".")
    return document()["methods"][collection][name]


def enum(schema: str, field: str) -> list[str]:
    """Allowed values of an enum field, e.g. enum('Quota', 'metric')."""
    return list(document()["schemas"][schema]["properties"][field]["enum"])


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def problems(schema: dict[str, Any] | str, value: Any, path: str) -> list[str]:
    """Every way `value` departs from the schema (a name, or an inline schema); [] when it conforms."""
    schemas = document()["schemas"]
    node = schemas[schema] if isinstance(schema, str) else schema
    if "$ref" in node:
        return problems(node["$ref"], value, path)
    kind = node.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return [f"Invalid value at '{path}' (type.googleapis.com/{node.get('id', 'object')}), {json.dumps(value)}"]
        out: list[str] = []
        props, extra = node.get("properties"), node.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                out += problems(props[key], item, f"{path}.{_snake(key)}")
            elif extra is not None:
                out += problems(extra, item, f"{path}[{key!r}]")
            else:
                out.append(f'Invalid JSON payload received. Unknown name "{key}" at \'{path}\': Cannot find field.')
        return out
    if kind == "array":
        if not isinstance(value, list):
            return [f"Invalid value at '{path}' (repeated), {json.dumps(value)}"]
        return [p for n, item in enumerate(value) for p in problems(node["items"], item, f"{path}[{n}]")]
    if kind == "boolean" and not isinstance(value, bool):
        return [f"Invalid value at '{path}' (TYPE_BOOL), {json.dumps(value)}"]
    if kind == "integer" and not (isinstance(value, int) and not isinstance(value, bool)
                                  or isinstance(value, str) and _INT_RX.fullmatch(value)):
        return [f"Invalid value at '{path}' (TYPE_INT32), {json.dumps(value)}"]
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return [f"Invalid value at '{path}' (TYPE_DOUBLE), {json.dumps(value)}"]
    if kind == "string":
        numeric = node.get("format") in ("int64", "uint64", "int32", "uint32")
        if numeric and not (isinstance(value, int) and not isinstance(value, bool)
                            or isinstance(value, str) and _INT_RX.fullmatch(value)):
            return [f"Invalid value at '{path}' (TYPE_INT64), {json.dumps(value)}"]
        if not numeric and not isinstance(value, str):
            return [f"Invalid value at '{path}' (TYPE_STRING), {json.dumps(value)}"]
        if "enum" in node and value not in node["enum"]:
            return [f"Invalid value at '{path}' (enum), {json.dumps(value)}"]
    return []


def check_request(method_id: str, query: dict[str, str], body: dict[str, Any] | None) -> None:
    """400 for a query parameter the method does not take, a bad enum or integer, a bad requestId or body."""
    spec = method(method_id)
    params = {**document()["parameters"], **spec.get("parameters", {})}
    for key, value in query.items():
        param = params.get(key)
        if param is None or param.get("location") != "query":
            raise InvalidValue(f'Invalid JSON payload received. Unknown name "{key}": Cannot bind query parameter. '
                               f"Field '{key}' could not be found in request message.")
        if "enum" in param and value not in param["enum"]:
            raise InvalidValue(f"Invalid value for field '{key}': '{value}'.")
        if param.get("type") == "integer" and not _INT_RX.fullmatch(value):
            raise InvalidValue(f"Invalid value for field '{key}': '{value}'. Not an integer.")
    if "requestId" in query:
        check_request_id(query["requestId"])
    request = spec.get("request")
    if request is not None and body is not None:
        found = problems(request["$ref"], body, _snake(request["$ref"][0].lower() + request["$ref"][1:]))
        if found:
            raise InvalidValue(found[0])


def check_request_id(value: str) -> None:
    """GCE takes only a UUID other than the all-zero one (it names the request for idempotent retries)."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.int == 0 or len(value) not in (32, 36):
        raise InvalidValue(f"Invalid value for field 'requestId': '{value}'. The request id must be a valid UUID "
                           "with the exception that zero UUID is not supported "
                           "(00000000-0000-0000-0000-000000000000).")
