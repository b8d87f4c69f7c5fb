"""The Compute emulator refuses what GCE refuses (checked against the vendored discovery document) and its
answers conform to that document."""

from __future__ import annotations

import base64
import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lib.localcloud.compute import schema
from tests.support.emulator import FAMILY, PROJECT, ZONE, Cloud, serve_cloud

INSTANCES = f"projects/{PROJECT}/zones/{ZONE}/instances"


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from serve_cloud(tmp_path / "compute", op_delay=(0.0, 0.02))


def body(name: str = "v", **scheduling: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "machineType": f"zones/{ZONE}/machineTypes/e2-small",
                           "disks": [{"boot": True, "autoDelete": True, "initializeParams": {"sourceImage": FAMILY}}],
                           "networkInterfaces": [{"network": "global/networks/default"}]}
    if scheduling:
        out["scheduling"] = scheduling
    return out


def inserted(cloud: Cloud, resource: dict[str, Any], query: str = "") -> dict[str, Any]:
    code, op = cloud.rest("POST", f"{INSTANCES}{query}", resource)
    assert code == 200, op
    return cloud.rest("POST", f"projects/{PROJECT}/zones/{ZONE}/operations/{op['name']}/wait")[1]


def refused(cloud: Cloud, resource: dict[str, Any], query: str = "") -> str:
    """POST an insert that must be a 400 in Google's error shape; returns the message."""
    code, answer = cloud.rest("POST", f"{INSTANCES}{query}", resource)
    assert code == 400, answer
    err = answer["error"]
    assert err["code"] == 400 and err["errors"][0]["reason"] == "invalid" and err["errors"][0]["domain"] == "global"
    assert err["message"] == err["errors"][0]["message"]
    return err["message"]


def with_field(path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body())
    node = out
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[last] = value
    return out


@pytest.mark.parametrize("resource,needle", [
    (with_field("colour", "blue"), 'Unknown name "colour" at \'instance\''),
    (with_field("scheduling.autoRestart", True), 'Unknown name "autoRestart" at \'instance.scheduling\''),
    (with_field("disks.0.initializeParams.sizeGb", 20), 'Unknown name "sizeGb"'),
    (with_field("scheduling.automaticRestart", "yes"), "instance.scheduling.automatic_restart' (TYPE_BOOL)"),
    (with_field("scheduling.provisioningModel", "CHEAP"), "instance.scheduling.provisioning_model' (enum)"),
    (with_field("labels", ["a"]), "instance.labels'"),
    (with_field("disks.0.initializeParams.diskSizeGb", "twenty"), "disk_size_gb' (TYPE_INT64)"),
])
def test_unknown_fields_wrong_types_and_bad_enums_are_400(cloud: Cloud, resource: dict[str, Any],
                                                          needle: str) -> None:
    assert needle in refused(cloud, resource)
    assert cloud.rest("GET", INSTANCES)[1].get("items") is None  # nothing was created


@pytest.mark.parametrize("scheduling,needle", [
    ({"provisioningModel": "SPOT", "automaticRestart": True}, "automaticRestart"),
    ({"provisioningModel": "SPOT", "onHostMaintenance": "MIGRATE"}, "onHostMaintenance"),
    ({"provisioningModel": "STANDARD", "preemptible": True}, "preemptible"),
    ({"provisioningModel": "SPOT", "preemptible": False}, "preemptible"),
    ({"maxRunDuration": {"seconds": "29"}, "instanceTerminationAction": "DELETE"}, "maxRunDuration"),
    ({"maxRunDuration": {"seconds": str(120 * 86400 + 1)}, "instanceTerminationAction": "DELETE"}, "120 days"),
    ({"maxRunDuration": {"seconds": "3600"}}, "instanceTerminationAction must be set"),
    ({"maxRunDuration": {"seconds": "3600"}, "terminationTime": "2099-01-01T00:00:00Z",
      "instanceTerminationAction": "DELETE"}, "Only one of"),
])
def test_contradictory_scheduling_is_400(cloud: Cloud, scheduling: dict[str, Any], needle: str) -> None:
    assert needle in refused(cloud, body(**scheduling))


def test_limits_of_max_run_duration_and_spot_defaults_are_accepted(cloud: Cloud) -> None:
    assert "error" not in inserted(cloud, body("low", maxRunDuration={"seconds": "30"},
                                                instanceTerminationAction="DELETE"))
    assert "error" not in inserted(cloud, body("high", maxRunDuration={"seconds": str(120 * 86400)},
                                                instanceTerminationAction="STOP"))
    assert "error" not in inserted(cloud, body("spot", provisioningModel="SPOT", automaticRestart=False,
                                                onHostMaintenance="TERMINATE", instanceTerminationAction="DELETE"))
    sched = cloud.rest("GET", f"{INSTANCES}/spot")[1]["scheduling"]
    assert sched["preemptible"] is True and sched["automaticRestart"] is False


@pytest.mark.parametrize("request_id", ["abc", "00000000-0000-0000-0000-000000000000", "123e4567-e89b-12d3-a456"])
def test_request_id_must_be_a_nonzero_uuid(cloud: Cloud, request_id: str) -> None:
    assert "requestId" in refused(cloud, body(), f"?requestId={request_id}")


def test_unknown_query_parameter_is_400_and_a_uuid_request_id_is_fine(cloud: Cloud) -> None:
    code, answer = cloud.rest("GET", f"{INSTANCES}?colour=blue")
    assert code == 400 and "Cannot bind query parameter" in answer["error"]["message"]
    assert "error" not in inserted(cloud, body(), f"?requestId={uuid.uuid4()}")


def test_label_fingerprint_is_compared_as_bytes(cloud: Cloud) -> None:
    """gcloud sends URL-safe base64; the Python clients standard base64: both name the same fingerprint."""
    inserted(cloud, body())
    current = cloud.rest("GET", f"{INSTANCES}/v")[1]["labelFingerprint"]
    raw = base64.b64decode(current)
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    code, op = cloud.rest("POST", f"{INSTANCES}/v/setLabels", {"labels": {"k": "v"}, "labelFingerprint": urlsafe})
    assert code == 200
    cloud.rest("POST", f"projects/{PROJECT}/zones/{ZONE}/operations/{op['name']}/wait")
    assert cloud.rest("GET", f"{INSTANCES}/v")[1]["labels"] == {"k": "v"}
    code, _ = cloud.rest("POST", f"{INSTANCES}/v/setLabels", {"labels": {}, "labelFingerprint": urlsafe})
    assert code == 412  # the fingerprint moved on


def test_every_answer_conforms_to_the_discovery_document(cloud: Cloud) -> None:
    inserted(cloud, body("a", provisioningModel="SPOT", instanceTerminationAction="DELETE",
                         maxRunDuration={"seconds": "3600"}))
    inserted(cloud, body("b"))
    calls = {
        f"{INSTANCES}/a": "instances.get", INSTANCES: "instances.list",
        f"projects/{PROJECT}/aggregated/instances": "instances.aggregatedList",
        f"projects/{PROJECT}/zones/{ZONE}/operations": "zoneOperations.list",
        f"projects/{PROJECT}/aggregated/operations": "globalOperations.aggregatedList",
        f"projects/{PROJECT}/global/images": "images.list",
        "projects/cloud-hpc-image-public/global/images/family/hpc-rocky-linux-8": "images.getFromFamily",
        f"projects/{PROJECT}/regions": "regions.list", f"projects/{PROJECT}/regions/us-central1": "regions.get",
        f"projects/{PROJECT}/zones": "zones.list", f"projects/{PROJECT}/zones/{ZONE}": "zones.get",
        f"projects/{PROJECT}/zones/{ZONE}/machineTypes": "machineTypes.list",
        f"projects/{PROJECT}/zones/{ZONE}/machineTypes/h3-standard-88": "machineTypes.get",
        f"projects/{PROJECT}": "projects.get", f"{INSTANCES}/a/serialPort": "instances.getSerialPortOutput",
    }
    for path, method_id in calls.items():
        code, answer = cloud.rest("GET", path)
        assert code == 200, (path, answer)
        assert schema.problems(schema.method(method_id)["response"]["$ref"], answer, "response") == [], path
    inst = cloud.rest("GET", f"{INSTANCES}/a")[1]
    for field in ("id", "creationTimestamp", "status", "machineType", "zone", "selfLink", "labelFingerprint",
                  "fingerprint", "cpuPlatform", "lastStartTimestamp", "shieldedInstanceConfig", "satisfiesPzi"):
        assert field in inst, field
    assert inst["networkInterfaces"][0]["stackType"] == "IPV4_ONLY"
    assert inst["scheduling"]["terminationTime"]  # shown while it runs


def test_schema_problems_catches_what_it_should() -> None:
    assert schema.problems("Scheduling", {"preemptible": "no"}, "s")
    assert schema.problems("Scheduling", {"bogus": 1}, "s")
    assert schema.problems("Operation", {"status": "WAITING"}, "op")
    assert schema.problems("Operation", {"status": "DONE", "progress": 100}, "op") == []
    assert schema.revision() == "20261106"
