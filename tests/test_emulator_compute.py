"""The Compute emulator through the real google-cloud-compute clients: instances, images, operations, local VMs."""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from lib.localcloud.compute import ComputeEmulator
from tests.support.emulator import FAMILY, PROJECT, ZONE, Cloud, instance, serve_cloud, vm_procs, wait_for


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from serve_cloud(tmp_path / "compute")


def names(cloud: Cloud, flt: str | None = None) -> list[str]:
    req = compute_v1.ListInstancesRequest(project=PROJECT, zone=ZONE, filter=flt)
    return [i.name for i in cloud.instances.list(request=req)]


def script_done(cloud: Cloud, name: str) -> dict[str, Any]:
    return wait_for(lambda: (v := cloud.admin(f"vms/{PROJECT}/{ZONE}/{name}"))["script_done"] and v, 20,
                    f"startup script of {name}")


# ----------------------------------------------------------------------------------------------- API


def test_spot_vm_lifecycle(cloud: Cloud) -> None:
    body = instance("vm-1", labels={"ops-hpc": "run", "batch": "b1"}, spot=True, max_run=3600, action="DELETE")
    op = cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=body)
    op.result(timeout=10)
    assert op.status == compute_v1.Operation.Status.DONE
    cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("vm-2")).result(timeout=10)

    got = cloud.instances.get(project=PROJECT, zone=ZONE, instance="vm-1")
    assert got.status == "RUNNING" and got.labels["batch"] == "b1"
    assert got.scheduling.provisioning_model == "SPOT" and got.scheduling.preemptible
    assert got.scheduling.max_run_duration.seconds == 3600
    assert got.scheduling.instance_termination_action == "DELETE"
    assert got.machine_type.endswith(f"zones/{ZONE}/machineTypes/e2-standard-2")
    assert got.disks[0].source.endswith(f"projects/{PROJECT}/zones/{ZONE}/disks/vm-1")
    assert got.network_interfaces[0].network_i_p == "127.0.0.1"
    assert got.id > 0 and got.creation_timestamp and got.label_fingerprint

    assert names(cloud, 'labels.ops-hpc = "run" AND labels.batch = b1') == ["vm-1"]
    assert names(cloud, "(labels.batch = b2)") == []
    assert names(cloud, "status = RUNNING") == ["vm-1", "vm-2"]
    agg = dict(cloud.instances.aggregated_list(project=PROJECT))
    assert sorted(i.name for i in agg[f"zones/{ZONE}"].instances) == ["vm-1", "vm-2"]

    cloud.instances.delete(project=PROJECT, zone=ZONE, instance="vm-1").result(timeout=10)
    with pytest.raises(gexc.NotFound, match="instances/vm-1' was not found"):
        cloud.instances.get(project=PROJECT, zone=ZONE, instance="vm-1")
    assert not (cloud.root / "disks" / PROJECT / ZONE / "vm-1").exists()
    ops = [o.operation_type for o in cloud.zone_ops.list(project=PROJECT, zone=ZONE)]
    assert ops.count("insert") == 2 and ops.count("delete") == 1


def test_request_id_is_idempotent(cloud: Cloud) -> None:
    rid = "5f0a1c52-0d8e-4b0c-9a57-1b2c3d4e5f60"
    req = compute_v1.InsertInstanceRequest(project=PROJECT, zone=ZONE, instance_resource=instance("vm-r"),
                                           request_id=rid)
    first = cloud.instances.insert(request=req)
    again = cloud.instances.insert(request=req)
    assert first.name == again.name
    again.result(timeout=5)
    assert names(cloud) == ["vm-r"]
    with pytest.raises(gexc.Conflict):
        cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("vm-r"))


def test_insert_validation_creates_nothing(cloud: Cloud) -> None:
    cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("keep")).result(timeout=10)
    with pytest.raises(gexc.NotFound, match="projects/nope/global/images/family/none"):
        cloud.instances.insert(project=PROJECT, zone=ZONE,
                               instance_resource=instance("a", image="projects/nope/global/images/family/none"))
    with pytest.raises(gexc.BadRequest, match="Machine type with name 'e2-standard-3' does not exist"):
        cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("b", machine="e2-standard-3"))
    with pytest.raises(gexc.Conflict):
        cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("keep"))
    cloud.admin("quota", {"metric": "CPUS", "limit": 8, "region": "us-central1"})
    with pytest.raises(gexc.Forbidden) as err:
        cloud.instances.insert(project=PROJECT, zone=ZONE,
                               instance_resource=instance("c", machine="c2d-standard-8")).result(timeout=10)
    assert err.value.errors[0].message == "Quota 'CPUS' exceeded.  Limit: 8.0 in region us-central1."
    assert names(cloud) == ["keep"]
    assert sorted(p.name for p in (cloud.root / "disks" / PROJECT / ZONE).iterdir()) == ["keep"]
    region = cloud.regions.get(project=PROJECT, region="us-central1")
    quotas = {q.metric: (q.limit, q.usage) for q in region.quotas}
    assert quotas["CPUS"] == (8.0, 2.0) and "C2D_CPUS" in quotas
    assert "H3_CPUS" not in quotas and "C3D_CPUS" not in quotas  # not in the API's enum: Cloud Quotas reports them
    mt = cloud.machine_types.get(project=PROJECT, zone=ZONE, machine_type="h3-standard-88")
    assert mt.guest_cpus == 88
    with pytest.raises(gexc.NotFound):
        cloud.machine_types.get(project=PROJECT, zone=ZONE, machine_type="h3-standard-4")


def test_set_metadata_needs_current_fingerprint(cloud: Cloud) -> None:
    cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("vm-m", attrs={"a": "1"})).result()
    inst = cloud.instances.get(project=PROJECT, zone=ZONE, instance="vm-m")
    stale = compute_v1.Metadata(fingerprint="c3RhbGVmcA==", items=[compute_v1.Items(key="a", value="2")])
    with pytest.raises(gexc.PreconditionFailed):
        cloud.instances.set_metadata(project=PROJECT, zone=ZONE, instance="vm-m", metadata_resource=stale)
    fresh = compute_v1.Metadata(fingerprint=inst.metadata.fingerprint, items=[compute_v1.Items(key="a", value="2")])
    cloud.instances.set_metadata(project=PROJECT, zone=ZONE, instance="vm-m", metadata_resource=fresh).result()
    after = cloud.instances.get(project=PROJECT, zone=ZONE, instance="vm-m")
    assert after.metadata.items[0].value == "2" and after.metadata.fingerprint != inst.metadata.fingerprint
    labels = compute_v1.InstancesSetLabelsRequest(labels={"x": "y"}, label_fingerprint=after.label_fingerprint)
    cloud.instances.set_labels(project=PROJECT, zone=ZONE, instance="vm-m",
                               instances_set_labels_request_resource=labels).result()
    assert cloud.instances.get(project=PROJECT, zone=ZONE, instance="vm-m").labels == {"x": "y"}


SCRIPT_METADATA = r"""
set -e
MD="http://$GCE_METADATA_HOST/computeMetadata/v1"
name=$(curl -sf -H 'Metadata-Flavor: Google' "$MD/instance/name")
batch=$(curl -sf -H 'Metadata-Flavor: Google' "$MD/instance/attributes/batch")
mkdir -p "$OPS_HPC_VM_ROOT/var/ops-hpc"
echo "$name $batch" > "$OPS_HPC_VM_ROOT/var/ops-hpc/who"
echo "hello from $name"
echo "oops" >&2
"""


def test_startup_script_reads_metadata_and_logs_to_console(cloud: Cloud) -> None:
    cloud.instances.insert(project=PROJECT, zone=ZONE,
                           instance_resource=instance("vm-s", script=SCRIPT_METADATA, attrs={"batch": "b7"})).result()
    info = script_done(cloud, "vm-s")
    assert info["exit_code"] == 0
    disk = Path(info["disk"])
    assert (disk / "var" / "ops-hpc" / "who").read_text() == "vm-s b7\n"
    out = cloud.instances.get_serial_port_output(project=PROJECT, zone=ZONE, instance="vm-s")
    assert "hello from vm-s" in out.contents and "oops" in out.contents
    assert "startup-script exit status 0" in out.contents
    more = cloud.instances.get_serial_port_output(request=compute_v1.GetSerialPortOutputInstanceRequest(
        project=PROJECT, zone=ZONE, instance="vm-s", start=out.next_))
    assert more.contents == "" and more.start == out.next_
    assert cloud.instances.get(project=PROJECT, zone=ZONE, instance="vm-s").status == "RUNNING"


def test_delete_ends_the_whole_process_tree(cloud: Cloud) -> None:
    script = "sleep 300 &\n( sleep 301 & wait ) &\nsleep 302\n"
    cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("vm-t", script=script)).result()
    pids = wait_for(lambda: len(p := cloud.admin(f"vms/{PROJECT}/{ZONE}/vm-t")["pids"]) >= 5 and p, 10, "tree")
    roots = [p for p, _ in cloud.emu.vm_processes()]
    assert len(roots) == 1 and roots[0] in pids
    cloud.instances.delete(project=PROJECT, zone=ZONE, instance="vm-t").result()
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert names(cloud) == [] and cloud.emu.vm_processes() == []


def test_vm_deletes_itself(cloud: Cloud) -> None:
    script = ("sleep 300 &\n"
              f'curl -sf -X DELETE "$OPS_HPC_COMPUTE_API/projects/{PROJECT}/zones/{ZONE}/instances/vm-self"\n'
              "sleep 300\n")
    cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("vm-self", script=script)).result()
    wait_for(lambda: names(cloud) == [], 15, "self-deletion")
    wait_for(lambda: not vm_procs(cloud.root), 5, "VM processes to end")
    ops = [o for o in cloud.zone_ops.list(project=PROJECT, zone=ZONE) if o.operation_type == "delete"]
    assert len(ops) == 1 and ops[0].target_link.endswith("/instances/vm-self")


def test_max_run_duration_deletes_or_stops(cloud: Cloud) -> None:
    cloud.admin("time_scale", {"time_scale": 60})
    for name, action in (("vm-del", "DELETE"), ("vm-stop", "STOP")):
        body = instance(name, script="sleep 300\n", max_run=60, action=action)
        cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=body).result()
    wait_for(lambda: names(cloud) == ["vm-stop"], 10, "max run duration delete")
    wait_for(lambda: cloud.instances.get(project=PROJECT, zone=ZONE, instance="vm-stop").status == "TERMINATED", 10,
             "max run duration stop")
    kinds = [o.operation_type for o in cloud.zone_ops.list(project=PROJECT, zone=ZONE)]
    assert kinds.count("compute.instances.maxRunDurationExceeded") == 2
    assert not vm_procs(cloud.root)


def test_preempt_spot_vm(cloud: Cloud) -> None:
    script = 'trap "echo got SIGTERM; exit 0" TERM\nsleep 300 & wait\n'
    cloud.instances.insert(project=PROJECT, zone=ZONE,
                           instance_resource=instance("vm-p", script=script, spot=True)).result()
    wait_for(lambda: cloud.admin(f"vms/{PROJECT}/{ZONE}/vm-p")["pids"], 10, "VM process")
    op = cloud.admin(f"preempt/{PROJECT}/{ZONE}/vm-p", {})
    assert op["operationType"] == "compute.instances.preempted" and op["user"] == "system"
    got = cloud.instances.get(project=PROJECT, zone=ZONE, instance="vm-p")
    assert got.status == "TERMINATED"
    console = cloud.instances.get_serial_port_output(project=PROJECT, zone=ZONE, instance="vm-p").contents
    assert "got SIGTERM" in console
    cloud.instances.start(project=PROJECT, zone=ZONE, instance="vm-p").result()
    assert cloud.instances.get(project=PROJECT, zone=ZONE, instance="vm-p").status == "RUNNING"
    cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("vm-std")).result()
    with pytest.raises(urllib.error.HTTPError):
        cloud.admin(f"preempt/{PROJECT}/{ZONE}/vm-std", {})


def test_image_from_stopped_disk_and_families(cloud: Cloud) -> None:
    script = 'mkdir -p "$OPS_HPC_VM_ROOT/opt/opensees" && echo built > "$OPS_HPC_VM_ROOT/opt/opensees/VERSION"\n'
    cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("builder", script=script)).result()
    script_done(cloud, "builder")
    image = compute_v1.Image(name="opensees-hpc-v1", family="opensees-hpc",
                             source_disk=f"projects/{PROJECT}/zones/{ZONE}/disks/builder")
    with pytest.raises(gexc.BadRequest, match="already being used"):
        cloud.images.insert(project=PROJECT, image_resource=image)
    cloud.instances.stop(project=PROJECT, zone=ZONE, instance="builder").result()
    cloud.images.insert(project=PROJECT, image_resource=image).result()
    got = cloud.images.get_from_family(project=PROJECT, family="opensees-hpc")
    assert got.name == "opensees-hpc-v1" and got.status == "READY" and int(got.archive_size_bytes) > 0
    assert got.source_disk.endswith("/disks/builder")

    family = f"projects/{PROJECT}/global/images/family/opensees-hpc"
    cloud.instances.insert(project=PROJECT, zone=ZONE, instance_resource=instance("worker", image=family)).result()
    disk = Path(cloud.admin(f"vms/{PROJECT}/{ZONE}/worker")["disk"])
    assert (disk / "opt" / "opensees" / "VERSION").read_text() == "built\n"
    assert (disk / "etc" / "os-release").exists()

    time.sleep(0.01)  # distinct creationTimestamp (ms)
    image2 = compute_v1.Image(name="opensees-hpc-v2", family="opensees-hpc", source_image=family)
    cloud.images.insert(project=PROJECT, image_resource=image2).result()
    assert cloud.images.get_from_family(project=PROJECT, family="opensees-hpc").name == "opensees-hpc-v2"
    dep = compute_v1.DeprecationStatus(state="DEPRECATED", replacement="opensees-hpc-v1")
    cloud.images.deprecate(project=PROJECT, image="opensees-hpc-v2", deprecation_status_resource=dep).result()
    assert cloud.images.get_from_family(project=PROJECT, family="opensees-hpc").name == "opensees-hpc-v1"
    assert cloud.images.get(project=PROJECT, image="opensees-hpc-v2").deprecated.state == "DEPRECATED"
    listed = [i.name for i in cloud.images.list(request=compute_v1.ListImagesRequest(
        project=PROJECT, filter="family = opensees-hpc"))]
    assert listed == ["opensees-hpc-v1", "opensees-hpc-v2"]
    cloud.images.delete(project=PROJECT, image="opensees-hpc-v1").result()
    with pytest.raises(gexc.NotFound):
        cloud.images.get_from_family(project=PROJECT, family="opensees-hpc")


def test_restart_keeps_state_and_terminates_dead_vms(tmp_path: Path) -> None:
    root = tmp_path / "compute"
    first = Cloud(root)
    try:
        first.instances.insert(project=PROJECT, zone=ZONE,
                               instance_resource=instance("idle", script="echo done\n")).result()
        first.instances.insert(project=PROJECT, zone=ZONE,
                               instance_resource=instance("busy", script="sleep 300\n")).result()
        script_done(first, "idle")
    finally:
        first.close()  # the local host powers off: VM processes end, statuses stay as recorded
    assert not vm_procs(root)
    second = Cloud(root)
    try:
        assert second.instances.get(project=PROJECT, zone=ZONE, instance="idle").status == "RUNNING"
        busy = second.instances.get(project=PROJECT, zone=ZONE, instance="busy")
        assert busy.status == "TERMINATED" and busy.last_stop_timestamp
        assert second.images.get_from_family(project="cloud-hpc-image-public", family="hpc-rocky-linux-8")
        usage = second.emu.model.usage_records()
        assert {r["name"] for r in usage.values()} == {"idle", "busy"}
        busy_rec = next(r for r in usage.values() if r["name"] == "busy")
        assert busy_rec["intervals"][-1][1] is not None
        second.instances.start(project=PROJECT, zone=ZONE, instance="busy").result()
        assert second.emu.vm_processes()
    finally:
        second.close()
    shutil.rmtree(root)


def test_injected_compute_fault(cloud: Cloud) -> None:
    cloud.faults.add("compute", "http:503", count=1, match="GET .*/instances")
    with pytest.raises(gexc.ServiceUnavailable):
        cloud.instances.get(project=PROJECT, zone=ZONE, instance="x", retry=None)
    with pytest.raises(gexc.NotFound):
        cloud.instances.get(project=PROJECT, zone=ZONE, instance="x", retry=None)


def test_admin_unknown_paths_are_404(cloud: Cloud) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        cloud.admin("nope")
    assert err.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as err:
        cloud.admin(f"vms/{PROJECT}/{ZONE}/missing")
    assert err.value.code == 404
    assert cloud.admin("vms") == []


def test_restart_adopts_a_vm_that_outlived_a_crashed_daemon(tmp_path: Path) -> None:
    root = tmp_path / "compute"
    first = ComputeEmulator(root)
    second = None
    try:
        first.model.wait(first.model.insert_instance(PROJECT, ZONE, {
            "name": "survivor", "machineType": f"zones/{ZONE}/machineTypes/e2-small",
            "disks": [{"boot": True, "initializeParams": {"sourceImage": FAMILY}}],
            "metadata": {"items": [{"key": "startup-script", "value": "sleep 300\n"}]}}))
        before = first.vm_processes()
        port = first.model.local[f"{PROJECT}/{ZONE}/survivor"]["metadata_port"]
        # the daemon dies without ending its VMs: only its threads and servers go away
        with first.model.lock:
            first.model._stopping = True
            for rt in first.model._runtime.values():
                rt["metadata"].stop(wait=True)
        second = ComputeEmulator(root)
        assert second.vm_processes() == before
        assert second.model.get_instance(PROJECT, ZONE, "survivor")["status"] == "RUNNING"
        assert second.model.vm_info(f"{PROJECT}/{ZONE}/survivor")["metadata_host"] == f"127.0.0.1:{port}"
    finally:
        (second or first).shutdown()
        first.shutdown()
    assert not vm_procs(root)


def test_a_process_that_outlives_its_deleted_vm_is_reaped(tmp_path):
    """A command started with a VM's environment just after the VM was deleted must not run on."""
    import subprocess as sp

    from lib.localcloud import vms

    disks = tmp_path / "disks"
    disk = disks / "p" / "z" / "gone"
    disk.mkdir(parents=True)
    env = vms.vm_environment(disk, "127.0.0.1:1", "12345", {})
    stray = sp.Popen(["sleep", "60"], env=env)
    other = sp.Popen(["sleep", "60"], env=vms.vm_environment(tmp_path / "elsewhere", "127.0.0.1:1", "999", {}))
    try:
        assert vms.reap_strays(disks, live_ids={"12345"}) == []  # its VM still exists: left alone
        assert vms.reap_strays(disks, live_ids=set()) == [stray.pid]  # VM gone: killed
        assert stray.wait(5) != 0
        assert other.poll() is None  # another cloud's VM (other disks folder) is never touched
    finally:
        for p in (stray, other):
            p.kill()
            p.wait()
