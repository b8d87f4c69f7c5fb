"""Compute operations take time, as on GCE: PENDING -> RUNNING -> DONE, PROVISIONING -> STAGING -> RUNNING,
STOPPING -> TERMINATED, and a delete that is not instant. Code that forgets to wait sees the in-between states."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import compute_v1

from tests.support.emulator import FAMILY, PROJECT, ZONE, Cloud, instance, serve_cloud, wait_for

STEP = 0.4  # seconds per operation step in these tests: long enough to observe, short enough to stay fast


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from serve_cloud(tmp_path / "compute", op_delay=(STEP, STEP))


def insert_body(name: str) -> dict:
    return {"name": name, "machineType": f"zones/{ZONE}/machineTypes/e2-small",
            "disks": [{"boot": True, "initializeParams": {"sourceImage": FAMILY}}]}


def statuses_until(cloud: Cloud, name: str, final: str | None, timeout: float = 10.0) -> list[str]:
    """Distinct statuses an instance passes through until `final` (None: until it is gone)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, body = cloud.rest("GET", f"projects/{PROJECT}/zones/{ZONE}/instances/{name}")
        status = body["status"] if code == 200 else None
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == final:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{name} never reached {final}: {seen}")


def test_insert_answers_pending_and_the_instance_provisions_then_stages_then_runs(cloud: Cloud) -> None:
    code, op = cloud.rest("POST", f"projects/{PROJECT}/zones/{ZONE}/instances?requestId={uuid.uuid4()}",
                          insert_body("slow"))
    assert code == 200 and op["status"] == "PENDING" and op["progress"] == 0 and "endTime" not in op
    seen = statuses_until(cloud, "slow", "RUNNING")
    assert seen == ["PROVISIONING", "STAGING", "RUNNING"], seen
    done = cloud.rest("GET", f"projects/{PROJECT}/zones/{ZONE}/operations/{op['name']}")[1]
    assert done["status"] == "DONE" and done["progress"] == 100 and "error" not in done


def test_operation_passes_running_before_done_and_wait_blocks_until_done(cloud: Cloud) -> None:
    op = cloud.rest("POST", f"projects/{PROJECT}/zones/{ZONE}/instances", insert_body("w"))[1]
    path = f"projects/{PROJECT}/zones/{ZONE}/operations/{op['name']}"
    wait_for(lambda: cloud.rest("GET", path)[1]["status"] == "RUNNING", 5, "operation RUNNING")
    t0 = time.monotonic()
    waited = cloud.rest("POST", path + "/wait")[1]
    assert waited["status"] == "DONE" and time.monotonic() - t0 >= STEP * 0.5
    assert cloud.rest("GET", f"projects/{PROJECT}/zones/{ZONE}/instances/w")[1]["status"] == "RUNNING"


def test_the_python_client_waits_for_done(cloud: Cloud) -> None:
    """ExtendedOperation.result() polls until DONE: after it the instance runs (what lib.compute relies on)."""
    op = cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("py"))
    assert cloud.instances.get(project=PROJECT, zone=ZONE, instance="py").status != "RUNNING"
    op.result(timeout=30)
    assert cloud.instances.get(project=PROJECT, zone=ZONE, instance="py").status == "RUNNING"


def test_stop_passes_stopping_and_delete_takes_time(cloud: Cloud) -> None:
    cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("s")).result(timeout=30)
    code, op = cloud.rest("POST", f"projects/{PROJECT}/zones/{ZONE}/instances/s/stop")
    assert code == 200 and op["status"] == "PENDING"
    assert statuses_until(cloud, "s", "TERMINATED") == ["RUNNING", "STOPPING", "TERMINATED"]

    code, op = cloud.rest("DELETE", f"projects/{PROJECT}/zones/{ZONE}/instances/s")
    assert code == 200 and op["status"] == "PENDING"
    assert cloud.rest("GET", f"projects/{PROJECT}/zones/{ZONE}/instances/s")[0] == 200  # not gone yet
    assert statuses_until(cloud, "s", None)[-1] is None


def test_start_goes_through_provisioning_and_staging(cloud: Cloud) -> None:
    cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("st")).result(timeout=30)
    cloud.instances.stop(project=PROJECT, zone=ZONE, instance="st").result(timeout=30)
    op = cloud.rest("POST", f"projects/{PROJECT}/zones/{ZONE}/instances/st/start")[1]
    assert op["status"] == "PENDING"
    assert statuses_until(cloud, "st", "RUNNING") == ["PROVISIONING", "STAGING", "RUNNING"]


def test_delete_during_provisioning_fails_the_insert_and_leaves_nothing(cloud: Cloud) -> None:
    insert = cloud.rest("POST", f"projects/{PROJECT}/zones/{ZONE}/instances", insert_body("gone"))[1]
    cloud.rest("DELETE", f"projects/{PROJECT}/zones/{ZONE}/instances/gone")
    ins = cloud.rest("POST", f"projects/{PROJECT}/zones/{ZONE}/operations/{insert['name']}/wait")[1]
    assert ins["status"] == "DONE" and ins["error"]["errors"][0]["code"] in ("RESOURCE_NOT_FOUND", "RESOURCE_NOT_READY")
    wait_for(lambda: cloud.rest("GET", f"projects/{PROJECT}/zones/{ZONE}/instances/gone")[0] == 404, 10, "gone")
    assert not (cloud.root / "disks" / PROJECT / ZONE / "gone").exists()


def test_set_labels_applies_when_the_operation_is_done(cloud: Cloud) -> None:
    cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("l")).result(timeout=30)
    inst = cloud.instances.get(project=PROJECT, zone=ZONE, instance="l")
    body = compute_v1.InstancesSetLabelsRequest(labels={"a": "b"}, label_fingerprint=inst.label_fingerprint)
    op = cloud.instances.set_labels(project=PROJECT, zone=ZONE, instance="l", instances_set_labels_request_resource=body)
    assert dict(cloud.instances.get(project=PROJECT, zone=ZONE, instance="l").labels) == {}
    op.result(timeout=30)
    assert dict(cloud.instances.get(project=PROJECT, zone=ZONE, instance="l").labels) == {"a": "b"}
