"""The foundation's contract: the real Google clients, through lib/, against the local cloud."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid

import google_crc32c
import psutil
import pytest
from google.api_core import exceptions as gexc

from lib import clients, retry, storage
from lib.config import Config
from lib.errors import OpsError
from lib.localcloud import control
from tests.support.bins import REPO, needs_gcloud

ZONE = "us-central1-a"
PROJECT = "ops-hpc-local"


def _crc(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def _instance(name: str, *, image: str, script: str | None = None, spot: bool = False, max_run_s: int = 3600):
    from google.cloud import compute_v1

    items = [compute_v1.Items(key="startup-script", value=script)] if script else []
    return compute_v1.Instance(
        name=name,
        machine_type=f"zones/{ZONE}/machineTypes/e2-standard-2",
        labels={"ops-hpc": "true", "test": "contract"},
        disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True,
                                       initialize_params=compute_v1.AttachedDiskInitializeParams(source_image=image))],
        network_interfaces=[compute_v1.NetworkInterface(network="global/networks/default")],
        metadata=compute_v1.Metadata(items=items),
        scheduling=compute_v1.Scheduling(
            provisioning_model="SPOT" if spot else "STANDARD",
            instance_termination_action="DELETE",
            max_run_duration=compute_v1.Duration(seconds=max_run_s),
        ),
    )


def _insert(instances, resource):
    """insert with a requestId chosen up front: the idempotency key that makes a retried insert safe."""
    from google.cloud import compute_v1

    return instances.insert(request=compute_v1.InsertInstanceRequest(
        project=PROJECT, zone=ZONE, instance_resource=resource, request_id=str(uuid.uuid4())))


BASE_IMAGE = "projects/cloud-hpc-image-public/global/images/family/hpc-rocky-linux-8"


def _wait_gone(cfg: Config, name: str, timeout: float = 20) -> None:
    inst = clients.instances(clients.resolve(cfg))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            inst.get(project=PROJECT, zone=ZONE, instance=name, retry=None)
        except gexc.NotFound:
            return
        time.sleep(0.2)
    raise AssertionError(f"VM {name} still exists after {timeout} s")


def _vm_processes(localcloud, name: str) -> list[int]:
    for vm in localcloud.admin("vms"):
        if vm["name"] == name:
            return vm.get("pids") or []
    return []


# -- storage ------------------------------------------------------------------


def test_storage_upload_list_download_delete_with_crc32c(bucket, tmp_path):
    data = os.urandom(3_000_000)
    src = tmp_path / "disp.out"
    src.write_bytes(data)
    storage.upload_file(bucket, src, "run-1/frame/disp.out")
    storage.upload_bytes(bucket, "_status/latest.txt", b"model 1 of 2")

    listed = {b.name: b for b in storage.list_blobs(bucket)}
    assert set(listed) == {"run-1/frame/disp.out", "_status/latest.txt"}
    assert listed["run-1/frame/disp.out"].size == len(data)
    assert listed["run-1/frame/disp.out"].crc32c == _crc(data) == storage.crc32c_file(src)
    top = storage.list_blobs(bucket, "run-1/", delimiter="/")
    assert top == []  # only a "folder" at that level

    out = tmp_path / "back.out"
    storage.bucket(bucket).blob("run-1/frame/disp.out").download_to_filename(str(out), checksum="crc32c", retry=None)
    assert out.read_bytes() == data

    blob = listed["run-1/frame/disp.out"]
    assert storage.delete_many(bucket, [(blob.name, blob.generation + 1)]) == {blob.name: "kept"}  # wrong generation
    assert storage.get_blob(bucket, blob.name) is not None
    assert storage.delete_many(bucket, [(blob.name, blob.generation)]) == {blob.name: "deleted"}
    assert storage.get_blob(bucket, blob.name) is None


def test_upload_is_idempotent_and_never_clobbers_newer(bucket, tmp_path):
    src = tmp_path / "a.zip"
    src.write_bytes(b"first")
    first = storage.upload_file(bucket, src, "_uploads/r/a.zip")
    again = storage.upload_file(bucket, src, "_uploads/r/a.zip")
    assert again.generation == first.generation  # identical content: not rewritten


def test_bucket_is_created_with_uniform_access_and_public_access_prevention(httpserver):
    """fake-gcs-server does not keep IAM settings, so check the request Google would receive."""
    from werkzeug import Response

    seen = {}

    def handler(request):
        if request.method == "GET":
            return Response(json.dumps({"error": {"code": 404, "message": "Not Found"}}), 404, mimetype="application/json")
        seen.update(json.loads(request.data))
        return Response(json.dumps({"name": seen["name"]}), 200, mimetype="application/json")

    httpserver.expect_request("/storage/v1/b/acme-results").respond_with_handler(handler)
    httpserver.expect_request("/storage/v1/b", method="POST").respond_with_handler(handler)
    cfg = Config.load({"backend": "local", "bucket": "acme-results"}, env={}, path="").replace(
        storage_endpoint=httpserver.url_for("").rstrip("/"), compute_endpoint="http://unused", monitoring_endpoint="x:1")
    assert storage.ensure_bucket(cfg) is True
    assert seen["iamConfiguration"]["uniformBucketLevelAccess"]["enabled"] is True
    assert seen["iamConfiguration"]["publicAccessPrevention"] == "enforced"


def test_door_refuses_dotdot_names_on_the_filesystem_store(localcloud, bucket):
    root = localcloud.state_dir.parent
    with pytest.raises(gexc.BadRequest, match="refuses object name"):
        storage.upload_bytes(bucket, "a/../../../../escaped.txt", b"x")
    assert not list(root.rglob("escaped.txt"))


def test_memory_store_keeps_hostile_names_faithfully(memcloud):
    cfg = memcloud.new_bucket()
    storage.upload_bytes(cfg, "a/../../escaped.txt", b"x")
    assert [b.name for b in storage.list_blobs(cfg)] == ["a/../../escaped.txt"]


# -- compute ------------------------------------------------------------------


def test_compute_insert_spot_vm_from_family_and_delete_through_real_client(localcloud):
    cfg = clients.resolve(localcloud.config())
    instances = clients.instances(cfg)
    name = f"contract-{uuid.uuid4().hex[:8]}"
    op = _insert(instances, _instance(name, image=BASE_IMAGE, spot=True, max_run_s=7200))
    op.result(timeout=30)  # the client's own extended-operation polling, against our endpoint
    vm = instances.get(project=PROJECT, zone=ZONE, instance=name, retry=None)
    assert vm.status == "RUNNING"
    assert vm.scheduling.provisioning_model == "SPOT"
    assert vm.scheduling.max_run_duration.seconds == 7200
    assert vm.scheduling.instance_termination_action == "DELETE"
    assert vm.labels["ops-hpc"] == "true"
    listed = [i.name for i in instances.list(request={"project": PROJECT, "zone": ZONE,
                                                      "filter": "labels.test=contract"}, retry=None)]
    assert name in listed
    instances.delete(project=PROJECT, zone=ZONE, instance=name).result(timeout=30)
    with pytest.raises(gexc.NotFound):
        instances.get(project=PROJECT, zone=ZONE, instance=name, retry=None)


def test_monitoring_reads_cpu_series_of_a_local_vm(localcloud):
    from google.cloud import monitoring_v3

    cfg = clients.resolve(localcloud.config())
    instances = clients.instances(cfg)
    name = f"mon-{uuid.uuid4().hex[:8]}"
    script = "#!/bin/bash\nend=$((SECONDS+30)); while [ $SECONDS -lt $end ]; do :; done\n"
    _insert(instances, _instance(name, image=BASE_IMAGE, script=script)).result(timeout=30)
    try:
        vm = instances.get(project=PROJECT, zone=ZONE, instance=name, retry=None)
        client = clients.monitoring(cfg)
        now = time.time()
        interval = monitoring_v3.TimeInterval(end_time={"seconds": int(now) + 60}, start_time={"seconds": int(now) - 600})
        points = []
        deadline = time.monotonic() + 20
        # The first sample of a process's CPU is 0 by construction (psutil needs two readings): wait for a busy one.
        while not any(p.value.double_value > 0 for p in points) and time.monotonic() < deadline:
            series = retry.call(client.list_time_series, request={
                "name": f"projects/{PROJECT}",
                "filter": f'metric.type = "compute.googleapis.com/instance/cpu/utilization" '
                          f'AND resource.labels.instance_id = "{vm.id}"',
                "interval": interval,
            }, retry=None)
            points = [p for s in series for p in s.points]
            time.sleep(0.5)
        assert points, "no CPU points for a busy local VM"
        assert all(0.0 <= p.value.double_value <= 1.0 for p in points)
        assert max(p.value.double_value for p in points) > 0.0
    finally:
        instances.delete(project=PROJECT, zone=ZONE, instance=name).result(timeout=30)


def _processes_of_vm(name: str) -> list[psutil.Process]:
    """Every live process started inside the local VM `name` (they carry its disk folder in their environment)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("OPS_HPC_VM_ROOT", "").endswith(f"/{name}") and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


UPLOADERS = {
    "curl": 'curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H "Content-Type: text/plain" --data-binary "from $ME" '
            '"$OPS_HPC_STORAGE_API/upload/storage/v1/b/$BUCKET/o?uploadType=media&name=selftest/by-curl.txt"',
    "gcloud": 'echo -n "from $ME" > up.txt && gcloud storage cp up.txt gs://$BUCKET/selftest/by-gcloud.txt',
}


@pytest.mark.parametrize("tool", ["curl", pytest.param("gcloud", marks=needs_gcloud)])
def test_startup_script_uploads_then_deletes_its_own_vm(localcloud, bucket, tool):
    cfg = clients.resolve(localcloud.config(bucket=bucket.bucket))
    name = f"selfdel-{tool}-{uuid.uuid4().hex[:8]}"
    script = f"""#!/bin/bash
set -euo pipefail
BUCKET={bucket.bucket}
MD=http://$GCE_METADATA_HOST/computeMetadata/v1
ME=$(curl -sf -H 'Metadata-Flavor: Google' $MD/instance/name)
ZONE=$(curl -sf -H 'Metadata-Flavor: Google' $MD/instance/zone); ZONE=${{ZONE##*/}}
PROJECT=$(curl -sf -H 'Metadata-Flavor: Google' $MD/project/project-id)
TOKEN=$(curl -sf -H 'Metadata-Flavor: Google' $MD/instance/service-accounts/default/token | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
{UPLOADERS[tool]}
sleep 300 &
curl -s -X DELETE -H "Authorization: Bearer $TOKEN" "$OPS_HPC_COMPUTE_API/projects/$PROJECT/zones/$ZONE/instances/$ME" || true
sleep 300
"""
    _insert(clients.instances(cfg), _instance(name, image=BASE_IMAGE, script=script)).result(timeout=30)
    assert _vm_processes(localcloud, name) or storage.get_blob(bucket, f"selftest/by-{tool}.txt"), "the VM never ran"
    _wait_gone(cfg, name, timeout=60)
    assert storage.download_bytes(bucket, f"selftest/by-{tool}.txt") == f"from {name}".encode()
    deadline = time.monotonic() + 10
    while _processes_of_vm(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_of_vm(name), "a process of the deleted VM (the background sleep) is still alive"


# -- retries against injected faults ---------------------------------------------


@pytest.mark.parametrize("kind", ["http:429", "http:503", "reset"])
def test_storage_calls_recover_from_injected_faults(bucket, faults, kind, no_retry_sleep):
    storage.upload_bytes(bucket, "x.txt", b"hello")
    faults("storage", kind, count=2, match=r"GET /storage/v1/b/[^/]+/o\?")
    assert [b.name for b in storage.list_blobs(bucket)] == ["x.txt"]
    assert len(no_retry_sleep) == 2


@pytest.mark.parametrize("kind", ["http:429", "http:503", "reset"])
def test_compute_calls_recover_from_injected_faults(localcloud, faults, kind, no_retry_sleep):
    cfg = clients.resolve(localcloud.config())
    faults("compute", kind, count=2, match="GET /compute/v1/projects/ops-hpc-local/zones/us-central1-a/instances")
    result = retry.call(lambda: list(clients.instances(cfg).list(project=PROJECT, zone=ZONE, retry=None)))
    assert isinstance(result, list)
    assert len(no_retry_sleep) == 2


@pytest.mark.parametrize("kind", ["http:429", "http:503"])
def test_monitoring_calls_recover_from_injected_faults(localcloud, faults, kind, no_retry_sleep):
    cfg = clients.resolve(localcloud.config())
    faults("monitoring", kind, count=2)
    client = clients.monitoring(cfg)
    now = int(time.time())
    series = retry.call(client.list_time_series, request={
        "name": f"projects/{PROJECT}", "filter": 'metric.type = "compute.googleapis.com/instance/uptime"',
        "interval": {"end_time": {"seconds": now}, "start_time": {"seconds": now - 60}}}, retry=None)
    assert list(series) is not None
    assert len(no_retry_sleep) == 2


def test_non_transient_errors_surface_at_once(localcloud, bucket, faults, no_retry_sleep):
    cfg = clients.resolve(localcloud.config())
    with pytest.raises(gexc.NotFound, match="not found"):
        retry.call(clients.instances(cfg).get, project=PROJECT, zone=ZONE, instance="no-such-vm", retry=None)
    faults("storage", "http:403", count=1)
    with pytest.raises(gexc.Forbidden):
        storage.list_blobs(bucket)
    assert no_retry_sleep == []


def test_missing_credentials_give_the_login_hint(monkeypatch):
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    def no_adc(*a, **k):
        raise DefaultCredentialsError("Could not automatically determine credentials")

    monkeypatch.setattr(google.auth, "default", no_adc)
    cfg = Config.load({"backend": "gcp", "project": "acme-structures"}, env={}, path="")
    with pytest.raises(OpsError, match="gcloud auth application-default login"):
        clients.credentials(cfg)


def test_local_backend_without_a_running_cloud_says_how_to_start_it(tmp_path):
    cfg = Config.load({"backend": "local", "state_dir": str(tmp_path)}, env={}, path="")
    with pytest.raises(OpsError, match="bin/localcloud up"):
        clients.resolve(cfg)


# -- bin/localcloud from a shell ------------------------------------------------


def test_localcloud_cli_up_env_status_down_from_a_shell(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPS_HPC_", "CLOUDSDK_", "STORAGE_EMULATOR"))}
    env["OPS_HPC_STATE_DIR"] = str(tmp_path / "state")
    lc = f"{sys.executable} bin/localcloud"
    script = f"""set -e
{lc} up
{lc} up 2>&1 | grep -q 'already running'
eval "$({lc} env)"
test "$OPS_HPC_BACKEND" = local
{lc} status
{lc} status --json > {tmp_path}/status.json
{lc} down
{lc} down 2>&1 | grep -q 'not running'
"""
    result = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "local cloud: running" in result.stdout
    status = json.loads((tmp_path / "status.json").read_text())
    pids = [status["pid"]]
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not leftovers


def test_stale_state_after_a_crash_is_cleaned_and_no_second_server_starts(tmp_path):
    state_dir = tmp_path / "state"
    control.up(state_dir)
    info = control.status(state_dir)
    daemon = psutil.Process(info["pid"])
    children = daemon.children(recursive=True)
    daemon.kill()  # the crash: its fake-gcs-server child is orphaned, the state file stays
    daemon.wait(10)
    assert control.status(state_dir)["stale"] is True
    messages = []
    control.up(state_dir, on_log=messages.append)
    assert any("stale" in m for m in messages)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    new = control.status(state_dir)
    assert new["running"] and new["pid"] != info["pid"]
    messages.clear()
    control.up(state_dir, on_log=messages.append)
    assert any("already running" in m for m in messages)
    assert control.status(state_dir)["pid"] == new["pid"]
    control.down(state_dir)
    assert not control.status(state_dir)["running"]


def test_objects_survive_a_restart(tmp_path):
    state_dir = tmp_path / "state"
    control.up(state_dir)
    try:
        cfg = Config.load({"backend": "local", "state_dir": str(state_dir), "bucket": "persist"}, env={}, path="")
        storage.ensure_bucket(cfg)
        storage.upload_bytes(cfg, "r/a.txt", b"kept")
        control.down(state_dir)
        control.up(state_dir)
        clients.storage.cache_clear()
        assert storage.download_bytes(cfg, "r/a.txt") == b"kept"
    finally:
        control.down(state_dir)


def test_generation_preconditions_hold_on_the_local_cloud(bucket):
    """GCS refuses a create-only upload over an existing object; the local cloud must too (fake-gcs-server alone does not)."""
    storage.upload_bytes(bucket, "p.txt", b"v1")
    blob = storage.bucket(bucket).blob("p.txt")
    with pytest.raises(gexc.PreconditionFailed):
        blob.upload_from_string(b"v2", if_generation_match=0, retry=None)
    current = storage.get_blob(bucket, "p.txt")
    with pytest.raises(gexc.PreconditionFailed):
        blob.upload_from_string(b"v2", if_generation_match=current.generation + 7, retry=None)
    blob.upload_from_string(b"v2", if_generation_match=current.generation, retry=None)
    assert storage.download_bytes(bucket, "p.txt") == b"v2"


def test_a_stalled_call_times_out_and_is_retried(bucket, faults, no_retry_sleep):
    """A stall (server holds the answer) is a client timeout, which the policy treats as transient."""
    storage.upload_bytes(bucket, "s.txt", b"late")
    faults("storage", "stall", count=1, match=r"GET /storage/v1/b/[^/]+/o/s\.txt", seconds=3)
    started = time.monotonic()
    blob = retry.call(storage.bucket(bucket).get_blob, "s.txt", retry=None, timeout=0.5)
    assert blob.size == 4
    assert len(no_retry_sleep) == 1  # one timeout, one retry
    assert time.monotonic() - started < 3  # the retry did not wait for the stalled answer


def test_batch_deletes_honour_each_generation(bucket, faults, no_retry_sleep):
    """GCS's batch endpoint (emulated by the door): 100 deletes per request, each with its own precondition."""
    for i in range(150):
        storage.upload_bytes(bucket, f"many/{i:03d}.out", b"x")
    blobs = storage.list_blobs(bucket)
    pairs = [(b.name, b.generation + (1 if b.name == "many/007.out" else 0)) for b in blobs]
    pairs.append(("many/never-existed.out", 1))
    faults("storage", "http:503", count=1, match="POST /batch/storage/v1")  # the whole batch request fails once
    outcome = storage.delete_many(bucket, pairs)
    assert outcome["many/007.out"] == "kept"  # wrong generation: left in place
    assert outcome["many/never-existed.out"] == "gone"
    assert sum(state == "deleted" for state in outcome.values()) == 149
    assert [b.name for b in storage.list_blobs(bucket)] == ["many/007.out"]
    assert len(no_retry_sleep) == 1


def test_door_gates_names_in_large_streamed_multipart_uploads(localcloud, bucket):
    """A multipart upload too big to buffer still names its object in its first part: the gate reads that part."""
    import requests

    boundary = "ops-hpc-boundary"
    meta = json.dumps({"name": "big/../../../../escaped-big.bin"}).encode()
    body = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode() + meta +
            f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode() + os.urandom(20 << 20) +
            f"\r\n--{boundary}--\r\n".encode())
    url = f"{localcloud.endpoints['storage']}/upload/storage/v1/b/{bucket.bucket}/o?uploadType=multipart"
    answer = requests.post(url, data=body, headers={"Content-Type": f"multipart/related; boundary={boundary}"},
                           timeout=60)
    assert answer.status_code == 400 and "refuses object name" in answer.text
    assert not list(localcloud.state_dir.parent.rglob("escaped-big.bin"))
    ok = requests.post(url, data=body.replace(b"big/../../../../escaped-big.bin", b"big/fine-big-12345678.bin"),
                       headers={"Content-Type": f"multipart/related; boundary={boundary}"}, timeout=60)
    assert ok.status_code == 200, ok.text  # the streamed body arrives whole after the inspected head
    assert storage.get_blob(bucket, "big/fine-big-12345678.bin").size == 20 << 20
