"""abort / emergency / stop-vm each do exactly what they say, on real local VMs running real OpenSees."""

from __future__ import annotations

from pathlib import Path

from lib import compute, controls, ssh, storage
from tests.support.bins import REPO
from tests.support.pipelines import boot, quiet, start_job, wait_for
from tests.support.vms import unique, vm_config


def _opensees_pids(cfg, name: str) -> list[int]:
    """OpenSees processes of this VM (its env marks them), seen from the host."""
    import psutil

    root = ssh.local_vm(cfg, name)["disk"]
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "opensees" in " ".join(proc.info["cmdline"] or []) and proc.environ().get("OPS_HPC_VM_ROOT") == root:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def _progress(cfg, name: str, model: str) -> Path:
    return Path(ssh.local_vm(cfg, name)["disk"]) / "tmp/ops-hpc-analysis" / model / "progress.txt"


def test_abort_kills_opensees_on_that_vm_only_and_the_vm_stays(localcloud, tmp_path):
    cfg = vm_config(localcloud, tmp_path / "state")
    a, b = unique("abrt"), unique("abrt")
    boot(cfg, a)
    boot(cfg, b)
    try:
        start_job(cfg, a, "endless")
        start_job(cfg, b, "endless")
        assert _opensees_pids(cfg, a) and _opensees_pids(cfg, b)
        assert controls.abort(cfg, a, on_log=quiet) >= 1
        wait_for(lambda: not _opensees_pids(cfg, a), timeout=10)
        assert compute.get_vm(cfg, a).status == "RUNNING"  # the VM stays
        assert _opensees_pids(cfg, b)  # another VM's OpenSees is untouched
        size = _progress(cfg, b, "endless").stat().st_size
        wait_for(lambda: _progress(cfg, b, "endless").stat().st_size > size, timeout=10)
        assert controls.abort(cfg, a, on_log=quiet) == 0  # nothing left to kill
    finally:
        compute.delete_vm(cfg, a, on_log=quiet)
        compute.delete_vm(cfg, b, on_log=quiet)


def _strand(cfg, name: str) -> bytes:
    """A run-staged result whose upload failed, as run_analysis.sh leaves it, plus what is not a result."""
    import io
    import zipfile

    work = Path(ssh.local_vm(cfg, name)["disk"]) / "opt/ops-hpc/work/run-x"
    work.mkdir(parents=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("output/disp.out", "1 2 3\n")
        zf.writestr("MANIFEST.json", '{"format": 1, "state": "ok", "files": []}')
    (work / "m.zip").write_bytes(buf.getvalue())
    (work / "n.in.zip").write_bytes(buf.getvalue())  # a staged input being unpacked: not a result
    (work / "broken.zip").write_bytes(b"PK not really")  # never uploaded as a result
    return buf.getvalue()


def test_emergency_pushes_what_is_on_the_disk_now_and_keeps_the_vm(localcloud, tmp_path):
    bucket = localcloud.new_bucket("emer")
    cfg = vm_config(localcloud, tmp_path / "state", bucket=bucket.bucket_name)
    name = unique("emer")
    boot(cfg, name)
    try:
        stranded = _strand(cfg, name)
        start_job(cfg, name, "endless")
        wait_for(lambda: _progress(cfg, name, "endless").read_text().count("\n") >= 3, timeout=15)
        result = controls.emergency(cfg, name, on_log=quiet, method="curl")
        assert result["killed"] >= 1 and not _opensees_pids(cfg, name)
        prefix = result["pushed"][0]["prefix"]
        assert prefix.startswith("endless_")
        on_disk = _progress(cfg, name, "endless").read_text()
        assert storage.download_bytes(cfg, prefix + "progress.txt").decode() == on_disk  # exactly what was there
        assert {b.name for b in storage.list_blobs(cfg)} >= {prefix + "progress.txt", prefix + "disp.out"}
        assert compute.get_vm(cfg, name).status == "RUNNING"
        assert result["rescued"] == ["run-x/m.zip"]  # the stranded run-staged result went to the bucket too
        assert storage.download_bytes(cfg, "run-x/m.zip") == stranded
        assert storage.get_blob(cfg, "run-x/broken.zip") is None and storage.get_blob(cfg, "run-x/n.in.zip") is None
    finally:
        compute.delete_vm(cfg, name, on_log=quiet)


def test_delete_vm_deletes_the_vm_now(localcloud, tmp_path):
    cfg = vm_config(localcloud, tmp_path / "state")
    name = unique("stop")
    boot(cfg, name)
    start_job(cfg, name, "endless")
    disk = Path(ssh.local_vm(cfg, name)["disk"])
    logs: list[str] = []
    assert controls.delete_vm(cfg, name, on_log=logs.append)
    assert compute.get_vm(cfg, name) is None and not disk.exists()
    assert f"deleted VM {name}" in logs
    assert not controls.delete_vm(cfg, name, on_log=quiet)


def test_make_targets_call_the_invoke_tasks_with_these_flags():
    makefile = (REPO / "Makefile").read_text()
    for target in ("abort", "emergency", "delete-vm", "monitor"):
        assert f"$(INVOKE) {target} --name $(NAME)" in makefile
    assert "stop-vm: delete-vm" in makefile  # the older name stays an alias
    assert "$(INVOKE) extend --minutes $(MINUTES)" in makefile
    tasks = (REPO / "lib" / "tasks.py").read_text()
    for fn in ("def abort(c, name=", "def emergency(c, name=", "def delete(c, name=", "def extend(c, minutes=",
               "def monitor(c, name=", "def run_jobs(c, jobs=", "def build(c"):
        assert fn in tasks
