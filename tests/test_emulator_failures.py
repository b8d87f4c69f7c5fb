"""The local cloud fails the way Google fails: quotas as GCP reports them, stockouts, a VM account that lacks a
permission, a stop that clears the termination time, and a network like a PC's."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import cloudquotas_v1

from lib.localcloud import iam
from lib.localcloud.faults import FaultRegistry
from lib.localcloud.shaping import Line, Shaper
from lib.localcloud.storage_door import StorageDoor
from tests.support.emulator import FAMILY, PROJECT, ZONE, Cloud, instance, serve_cloud, wait_for

FAMILY_QUOTA = f"projects/{PROJECT}/locations/global/services/compute.googleapis.com/quotaInfos/" \
               "CPUS-PER-VM-FAMILY-per-project-region"


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from serve_cloud(tmp_path / "compute", op_delay=(0.0, 0.02))


def quotas_client(cloud: Cloud) -> cloudquotas_v1.CloudQuotasClient:
    return cloudquotas_v1.CloudQuotasClient(credentials=AnonymousCredentials(), transport="rest",
                                            client_options={"api_endpoint": cloud.url})


def wait_op(cloud: Cloud, op: dict) -> dict:
    return cloud.rest("POST", f"projects/{PROJECT}/zones/{op['zone'].rsplit('/', 1)[-1]}/operations/"
                              f"{op['name']}/wait")[1]


def insert(cloud: Cloud, name: str, zone: str = ZONE, machine: str = "e2-small", **scheduling: object) -> dict:
    body = {"name": name, "machineType": f"zones/{zone}/machineTypes/{machine}",
            "disks": [{"boot": True, "initializeParams": {"sourceImage": FAMILY}}]}
    if scheduling:
        body["scheduling"] = scheduling
    code, op = cloud.rest("POST", f"projects/{PROJECT}/zones/{zone}/instances?requestId={uuid.uuid4()}", body)
    assert code == 200, op
    return wait_op(cloud, op)


# ----------------------------------------------------------------------------------------------- quotas


def test_family_cpu_quota_is_read_through_cloud_quotas_not_regions_get(cloud: Cloud) -> None:
    cloud.admin("quota", {"metric": "H3_CPUS", "limit": 80, "region": "us-central1"})
    metrics = {q.metric for q in cloud.regions.get(project=PROJECT, region="us-central1").quotas}
    assert "CPUS" in metrics and "H3_CPUS" not in metrics
    info = quotas_client(cloud).get_quota_info(name=FAMILY_QUOTA)
    limits = {(d.dimensions["region"], d.dimensions["vm_family"]): d.details.value for d in info.dimensions_infos}
    assert limits[("us-central1", "H3")] == 80 and limits[("us-east1", "H3")] == 1024
    assert list(info.dimensions) == ["region", "vm_family"]
    listed = [q.quota_id for q in quotas_client(cloud).list_quota_infos(
        parent=f"projects/{PROJECT}/locations/global/services/compute.googleapis.com")]
    assert "CPUS-PER-VM-FAMILY-per-project-region" in listed and "CPUS-per-project-region" in listed
    done = insert(cloud, "big", machine="h3-standard-88")  # the limit Cloud Quotas shows is the one enforced
    assert done["error"]["errors"][0]["code"] == "QUOTA_EXCEEDED" and "H3_CPUS" in done["error"]["errors"][0]["message"]


def test_a_disabled_cloud_quotas_api_answers_service_disabled(cloud: Cloud) -> None:
    cloud.admin("apis", {"cloudquotas": False})
    with pytest.raises(gexc.Forbidden) as err:
        quotas_client(cloud).get_quota_info(name=FAMILY_QUOTA)
    assert "has not been used in project" in err.value.message and "cloudquotas.googleapis.com" in err.value.message
    cloud.admin("apis", {"cloudquotas": True})
    assert quotas_client(cloud).get_quota_info(name=FAMILY_QUOTA).quota_id


# ----------------------------------------------------------------------------------------------- stockouts


def test_stockout_fails_the_insert_operation_and_leaves_nothing_in_that_zone(cloud: Cloud) -> None:
    cloud.faults.add("compute", "stockout", count=1, match="zones/us-central1-a/")
    code, op = cloud.rest("POST", f"projects/{PROJECT}/zones/{ZONE}/instances",
                          {"name": "h", "machineType": f"zones/{ZONE}/machineTypes/e2-small",
                           "disks": [{"boot": True, "initializeParams": {"sourceImage": FAMILY}}]})
    assert code == 200 and op["status"] != "DONE"  # accepted first, as GCE does; the operation fails
    done = wait_op(cloud, op)
    assert done["error"]["errors"][0]["code"] == "ZONE_RESOURCE_POOL_EXHAUSTED"
    assert done["httpErrorStatusCode"] == 503
    assert cloud.rest("GET", f"projects/{PROJECT}/zones/{ZONE}/instances/h")[0] == 404
    assert "error" not in insert(cloud, "h", zone="us-central1-b")  # another zone has capacity
    assert "error" not in insert(cloud, "h2")  # the fault fired once


def test_stockout_is_what_the_python_client_reports(cloud: Cloud) -> None:
    cloud.faults.add("compute", "stockout", match=f"zones/{ZONE}/")
    op = cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("spot-h", spot=True))
    with pytest.raises(gexc.GoogleAPICallError) as err:
        op.result(timeout=30)
    assert "does not have enough resources available" in str(err.value)


# ----------------------------------------------------------------------------------------------- VM account


def vm_token(cloud: Cloud, name: str) -> str:
    host = cloud.admin(f"vms/{PROJECT}/{ZONE}/{name}")["metadata_host"]
    req = urllib.request.Request(f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token",
                                 headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["access_token"]


def delete_with(cloud: Cloud, name: str, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"{cloud.url}/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/{name}",
                                 method="DELETE", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_vm_whose_account_lacks_delete_gets_403_and_stays(cloud: Cloud) -> None:
    insert(cloud, "self")
    token = vm_token(cloud, "self")
    cloud.faults.add("metadata", "deny:compute.instances.delete", match=f"{PROJECT}/{ZONE}/self ")
    code, answer = delete_with(cloud, "self", token)
    assert code == 403 and answer["error"]["errors"][0]["reason"] == "forbidden"
    assert "compute.instances.delete" in answer["error"]["message"]
    assert cloud.rest("GET", f"projects/{PROJECT}/zones/{ZONE}/instances/self")[1]["status"] == "RUNNING"
    assert delete_with(cloud, "self", "anonymous")[0] == 200  # the PC side (no VM token) is not checked
    cloud.faults.clear()


def test_other_vms_keep_their_permissions(cloud: Cloud) -> None:
    insert(cloud, "other")
    cloud.faults.add("metadata", "deny:compute.instances.delete", match=f"{PROJECT}/{ZONE}/self ")
    code, op = delete_with(cloud, "other", vm_token(cloud, "other"))
    assert code == 200 and wait_op(cloud, op).get("error") is None


def test_withheld_storage_create_is_a_403_at_the_storage_door(localcloud) -> None:
    faults = FaultRegistry()
    host, port = localcloud.endpoints["storage_direct"].rsplit(":", 1)
    door = StorageDoor((host.split("//")[-1], int(port)), faults=faults).start()
    try:
        faults.add("metadata", "deny:storage.objects.create", match="/vm-1 ")
        token = iam.vm_token(f"{PROJECT}/{ZONE}/vm-1", "sa@example.iam.gserviceaccount.com")
        req = urllib.request.Request(f"{door.url}/upload/storage/v1/b/any-bucket/o?uploadType=media&name=x",
                                     data=b"data", method="POST", headers={"Authorization": f"Bearer {token}"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        body = json.loads(err.value.read())
        assert err.value.code == 403 and "storage.objects.create" in body["error"]["message"]
        assert body["error"]["errors"][0]["reason"] == "forbidden"
    finally:
        door.stop()


def test_required_permissions_follow_the_call() -> None:
    assert iam.required_permission("compute", "DELETE", "/compute/v1/projects/p/zones/z/instances/v") \
        == "compute.instances.delete"
    assert iam.required_permission("compute", "POST", "/compute/v1/projects/p/zones/z/instances/v/setLabels") \
        == "compute.instances.setLabels"
    assert iam.required_permission("storage", "GET", "/storage/v1/b/b/o?prefix=x") == "storage.objects.list"
    assert iam.required_permission("storage", "DELETE", "/storage/v1/b/b/o/a%2Fb") == "storage.objects.delete"
    assert iam.token_claims("Bearer " + iam.vm_token("p/z/v", "e"))["vm"] == "p/z/v"
    assert iam.token_claims("Bearer ya29.something-else") is None


# ----------------------------------------------------------------------------------------------- termination


def test_a_stop_clears_the_termination_time_so_max_run_duration_never_deletes(tmp_path: Path) -> None:
    with contextmanager(serve_cloud)(tmp_path / "compute", op_delay=(0.0, 0.02), time_scale=30.0) as c:  # 30 s: 1 s
        sched = {"maxRunDuration": {"seconds": "30"}, "instanceTerminationAction": "DELETE"}
        insert(c, "kept", **sched)
        insert(c, "runs", **sched)
        assert c.rest("GET", f"projects/{PROJECT}/zones/{ZONE}/instances/kept")[1]["scheduling"]["terminationTime"]
        wait_op(c, c.rest("POST", f"projects/{PROJECT}/zones/{ZONE}/instances/kept/stop")[1])
        stopped = c.rest("GET", f"projects/{PROJECT}/zones/{ZONE}/instances/kept")[1]
        assert stopped["status"] == "TERMINATED" and "terminationTime" not in stopped["scheduling"]
        wait_for(lambda c=c: c.rest("GET", f"projects/{PROJECT}/zones/{ZONE}/instances/runs")[0] == 404, 10,
                 "the running VM's max run duration")
        time.sleep(0.5)
        assert c.rest("GET", f"projects/{PROJECT}/zones/{ZONE}/instances/kept")[1]["status"] == "TERMINATED"


# ----------------------------------------------------------------------------------------------- network


def test_line_paces_bytes_to_its_capacity_shared_between_callers() -> None:
    line = Line(mbit=80)  # 10 MB/s
    t0 = time.monotonic()
    line.pace(500_000)
    line.pace(500_000)
    assert time.monotonic() - t0 >= 0.095  # 1 MB at 10 MB/s, whoever sends it
    unlimited = Line(mbit=0)
    t0 = time.monotonic()
    unlimited.pace(10**9)
    assert time.monotonic() - t0 < 0.05


def test_storage_door_adds_round_trips_and_caps_bandwidth(localcloud, bucket) -> None:
    from lib import storage

    blob = storage.client(bucket).bucket(bucket.bucket).blob("shaped.bin")
    blob.upload_from_string(b"x" * 1_000_000)
    host, port = localcloud.endpoints["storage_direct"].rsplit(":", 1)
    door = StorageDoor((host.split("//")[-1], int(port)), shaper=Shaper(rtt_ms=100, mbit=40)).start()
    try:
        url = f"{door.url}/storage/v1/b/{bucket.bucket}/o/shaped.bin?alt=media"
        t0 = time.monotonic()
        with urllib.request.urlopen(url, timeout=30) as resp:
            data = resp.read()
        took = time.monotonic() - t0
        assert data == b"x" * 1_000_000
        assert took >= 0.1 + 0.19  # one round trip + 1 MB at 5 MB/s
        t0 = time.monotonic()
        with urllib.request.urlopen(f"{door.url}/storage/v1/b/{bucket.bucket}/o/shaped.bin", timeout=30):
            pass
        assert time.monotonic() - t0 >= 0.1  # a small request still costs a round trip
    finally:
        door.stop()


def test_storage_door_sends_without_nagle_on_both_hops(localcloud, bucket) -> None:
    """Headers and body leave the door in two writes: with Nagle on, the body waited for the client's delayed
    ACK and every request took 44 ms on loopback, so a shaped 30 ms line behaved like a 74 ms one."""
    import socket

    from lib import storage

    storage.client(bucket).bucket(bucket.bucket).blob("small.out").upload_from_string(b"1 2 3\n")
    host, port = localcloud.endpoints["storage_direct"].rsplit(":", 1)
    door = StorageDoor((host.split("//")[-1], int(port))).start()
    handler = door.server.RequestHandlerClass  # the door's own subclass: patching it touches no other door
    seen: list[tuple[int, int]] = []
    proxy = handler._proxy

    def spy(self) -> None:
        proxy(self)
        opt = (socket.IPPROTO_TCP, socket.TCP_NODELAY)
        seen.append((self.connection.getsockopt(*opt), self._conn.sock.getsockopt(*opt)))

    handler._proxy = spy
    try:
        with urllib.request.urlopen(f"{door.url}/storage/v1/b/{bucket.bucket}/o/small.out?alt=media", timeout=30) as r:
            assert r.read() == b"1 2 3\n"
    finally:
        door.stop()
    assert seen and all(to_client and to_upstream for to_client, to_upstream in seen), seen
