"""Regenerate compute.v1.json here from Google's full discovery document (kept small: what the emulator serves).

    pip download --no-deps google-api-python-client==2.202.0 -d /tmp/g && cd /tmp/g && unzip -o *.whl \\
        'googleapiclient/discovery_cache/documents/compute.v1.json'
    python -m lib.localcloud.compute.discovery.trim /tmp/g/googleapiclient/discovery_cache/documents/compute.v1.json

Kept: the revision, the schemas reachable from the resources below (descriptions dropped), and the methods of
the collections the emulator routes, with their parameters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = ["Instance", "Image", "Metadata", "InstancesSetLabelsRequest", "GlobalSetLabelsRequest", "DeprecationStatus",
         "InstanceList", "InstanceAggregatedList", "ImageList", "Operation", "OperationList",
         "OperationAggregatedList", "Region", "RegionList", "Zone", "ZoneList", "MachineType", "MachineTypeList",
         "MachineTypeAggregatedList", "Project", "SerialPortOutput"]
COLLECTIONS = ["instances", "images", "zoneOperations", "globalOperations", "regions", "zones", "machineTypes",
               "projects"]
DROP = ("description", "enumDescriptions", "enumDeprecated")
OUT = Path(__file__).with_name("compute.v1.json")


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        # a key in DROP is prose, unless its value is a schema (a field named "description")
        return {k: _strip(v) for k, v in node.items() if k not in DROP or isinstance(v, dict)}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def trim(doc: dict[str, Any]) -> dict[str, Any]:
    schemas, keep = doc["schemas"], set(ROOTS)
    todo = list(ROOTS)
    while todo:
        stack: list[Any] = [schemas[todo.pop()]]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                ref = node.get("$ref")
                if ref and ref not in keep:
                    keep.add(ref)
                    todo.append(ref)
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    methods = {c: _strip(doc["resources"][c]["methods"]) for c in COLLECTIONS}
    return {"name": doc["name"], "version": doc["version"], "revision": doc["revision"],
            "parameters": _strip(doc["parameters"]), "schemas": {k: _strip(schemas[k]) for k in sorted(keep)},
            "methods": methods}


if __name__ == "__main__":
    full = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    OUT.write_text(json.dumps(trim(full), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUT} (revision {full['revision']})")
