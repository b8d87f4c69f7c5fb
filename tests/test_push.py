"""vm push (push.sh on the VM over ssh) -> timestamped legacy trees that bin/pull collects; vm download; delete now (controls.delete_vm)."""

from __future__ import annotations

import json
import re

import pytest

from lib import compute, controls, push, ssh, storage
from lib.errors import OpsError
from tests.support.bins import needs_gcloud, run_bin
from tests.support.pipelines import boot, quiet
from tests.support.vms import unique, vm_config


def _seed(cfg, name: str) -> None:
    """Two analysis folders on the VM, one with a subfolder and a name with a space."""
    ssh.run(cfg, name, "mkdir -p {a}/out {b} && printf 'x%.0s' $(seq 1000) > {a}/out/disp.out && "
                       "echo done > {a}/'log file.txt' && echo w > {b}/wall.out".format(
                           a=ssh.rpath("/tmp/ops-hpc-analysis/TTFlat"), b=ssh.rpath("/tmp/ops-hpc-analysis/Wall")),
            on_line=quiet)


def test_vm_push_writes_a_timestamped_tree_that_bin_pull_collects(localcloud, tmp_path):
    bucket = localcloud.new_bucket("push")
    cfg = vm_config(localcloud, tmp_path / "state", bucket=bucket.bucket_name)
    name = unique("push")
    boot(cfg, name)
    try:
        _seed(cfg, name)
        out = run_bin("push", name, "TTFlat", "--with", "curl", "--json",
                      env=localcloud.env(state_dir=tmp_path / "state", bucket=bucket.bucket_name,
                                         machine_type="e2-standard-2"))
        assert out.returncode == 0, out.stderr
        pushed = json.loads(out.stdout)
        assert [p["folder"] for p in pushed] == ["TTFlat"] and pushed[0]["files"] == 2
        prefix = pushed[0]["prefix"]
        assert re.fullmatch(r"TTFlat_\d{8}-\d{6}/", prefix)
        names = sorted(b.name for b in storage.list_blobs(cfg))
        assert names == [f"{prefix}.ops-hpc-push.json", f"{prefix}MANIFEST.json", f"{prefix}log file.txt",
                         f"{prefix}out/disp.out"]  # not Wall
        assert storage.get_blob(cfg, f"{prefix}out/disp.out").size == 1000
        started = storage.get_blob(cfg, f"{prefix}.ops-hpc-push.json")  # the start marker, uploaded first
        assert started.generation < min(storage.get_blob(cfg, n).generation for n in names[1:])
        assert json.loads(storage.download_bytes(cfg, started.name))["files"] == 2
        seal = json.loads(storage.download_bytes(cfg, f"{prefix}MANIFEST.json"))  # what arrived, written last
        assert [(f["path"], f["size"]) for f in seal["files"] if f["path"] != ".ops-hpc-push.json"] == [
            ("log file.txt", 5), ("out/disp.out", 1000)]

        # No --settle 0: the seal says the tree is complete, so pull need not wait for it to settle.
        pulled = run_bin("pull", "--yes", "--dir", str(tmp_path / "results"),
                         env=localcloud.env(state_dir=tmp_path / "state", bucket=bucket.bucket_name))
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        assert "cleaned" in pulled.stdout and "deferred" not in pulled.stdout
        local = tmp_path / "results" / prefix.rstrip("/")
        assert (local / "out" / "disp.out").read_text() == "x" * 1000
        assert (local / "log file.txt").read_text() == "done\n"
        assert not (local / ".ops-hpc-push.json").exists()  # the marker is deleted with the set, not pulled
        assert storage.list_blobs(cfg) == []  # collected and cleaned
    finally:
        compute.delete_vm(cfg, name, on_log=quiet)


@needs_gcloud
def test_push_with_gcloud_storage_rsync(localcloud, tmp_path):
    bucket = localcloud.new_bucket("pushg")
    cfg = vm_config(localcloud, tmp_path / "state", bucket=bucket.bucket_name)
    name = unique("pushg")
    boot(cfg, name)
    try:
        _seed(cfg, name)
        pushed = push.push(cfg, name, on_log=quiet, method="gcloud", when="20260406-153012")
        assert {p["prefix"] for p in pushed} == {"TTFlat_20260406-153012/", "Wall_20260406-153012/"}
        assert sorted(b.name for b in storage.list_blobs(cfg)) == [
            "TTFlat_20260406-153012/.ops-hpc-push.json", "TTFlat_20260406-153012/MANIFEST.json",
            "TTFlat_20260406-153012/log file.txt", "TTFlat_20260406-153012/out/disp.out",
            "Wall_20260406-153012/.ops-hpc-push.json", "Wall_20260406-153012/MANIFEST.json",
            "Wall_20260406-153012/wall.out"]
    finally:
        compute.delete_vm(cfg, name, on_log=quiet)


def test_download_takes_small_files_and_refuses_folders_and_big_files(localcloud, tmp_path):
    cfg = vm_config(localcloud, tmp_path / "state")
    name = unique("dl")
    boot(cfg, name)
    try:
        _seed(cfg, name)
        got = push.download(cfg, name, "TTFlat/log file.txt", tmp_path, on_log=quiet)
        assert got == tmp_path / "log file.txt" and got.read_text() == "done\n"
        with pytest.raises(OpsError, match="is a folder.*bin/push") as err:
            push.download(cfg, name, "/tmp/ops-hpc-analysis/TTFlat", tmp_path, on_log=quiet)
        assert err.value.code == 3
        with pytest.raises(OpsError, match="over the 0 MB limit.*make pull"):
            push.download(cfg, name, "TTFlat/out/disp.out", tmp_path, limit=999, on_log=quiet)
        with pytest.raises(OpsError, match="no such file"):
            push.download(cfg, name, "TTFlat/nothing.txt", tmp_path, on_log=quiet)
        with pytest.raises(OpsError, match="must not contain"):
            push.download(cfg, name, "../etc/passwd", tmp_path, on_log=quiet)
        assert not (tmp_path / "disp.out").exists()
    finally:
        assert controls.delete_vm(cfg, name, on_log=quiet)
    assert compute.get_vm(cfg, name) is None
    assert not controls.delete_vm(cfg, name, on_log=quiet)  # already gone


def test_push_reports_a_missing_folder_and_still_pushes_the_rest(localcloud, tmp_path):
    bucket = localcloud.new_bucket("pushm")
    cfg = vm_config(localcloud, tmp_path / "state", bucket=bucket.bucket_name)
    name = unique("pushm")
    boot(cfg, name)
    try:
        _seed(cfg, name)
        with pytest.raises(OpsError, match="Nope \\(missing\\)"):
            push.push(cfg, name, ["Wall", "Nope"], on_log=quiet, method="curl")
        assert [b.name.split("/")[1] for b in storage.list_blobs(cfg)] == [".ops-hpc-push.json", "MANIFEST.json",
                                                                           "wall.out"]
        with pytest.raises(OpsError, match="folder"):
            push.push(cfg, name, ["../etc"], on_log=quiet)
    finally:
        compute.delete_vm(cfg, name, on_log=quiet)
