"""The build pipeline makes an opensees-hpc image that both a run VM and a run-staged VM then use; image commands."""

from __future__ import annotations

import uuid

import pytest

from lib import build, clients, compute, images, runjobs, storage
from lib.errors import OpsError
from tests.support.pipelines import jobs_file, quiet
from tests.support.vms import vm_config


def test_build_pipeline_image_is_used_by_a_run_vm_and_a_run_staged_vm(localcloud, tmp_path):
    bucket = localcloud.new_bucket("bld")
    cfg = vm_config(localcloud, tmp_path / "state", bucket=bucket.bucket_name, time_scale=30)
    steps: list[tuple[str, int, int]] = []
    logs: list[str] = []
    image = build.build_image(cfg, on_log=logs.append, on_progress=lambda *a: steps.append(a))
    assert [s[0] for s in steps] == list(build.STEPS) and steps[-1][1:] == (7, 7)
    assert image["family"] == "opensees-hpc" and image["labels"]["ops-hpc"] == "true"
    assert image["description"].startswith("opensees-hpc built") and image["status"] == "READY"
    build_vm = next(x.split()[3] for x in logs if x.startswith("creating build VM"))
    assert compute.get_vm(cfg, build_vm) is None  # the build VM was deleted
    assert any("stopped VM" in x for x in logs)  # imaged from a stopped disk

    # a run VM from that image runs real OpenSees through the launcher the build installed
    jobs = jobs_file(tmp_path / "jobs", ["quick timeout=5"], models=("quick",))
    run = runjobs.run_jobs(cfg, jobs, image=image["name"], on_log=quiet, on_line=quiet, push_method="curl")
    assert run.jobs[0].state == "finished" and compute.get_vm(cfg, run.vm) is None
    vm_image = [b.name for b in storage.list_blobs(cfg)]
    assert any(n.startswith("quick_") and n.endswith("/disp.out") for n in vm_image)

    # and so does run-staged, which boots from it with no ssh at all
    from lib import runstaged

    out = runstaged.run_staged(cfg, jobs, wait=True, image=image["name"], results_dir=tmp_path / "results",
                               on_log=quiet, tail=False)
    assert [r["state"] for r in out.rows] == ["ok"]
    assert (tmp_path / "results" / out.run_id / "quick" / "disp.out").stat().st_size > 0
    assert all(compute.get_vm(cfg, v) is None for v in out.vms)


def test_image_list_archive_restore_delete_and_refusals(localcloud, tmp_path):
    from google.cloud import compute_v1 as c

    cfg = clients.resolve(localcloud.config(image_family=f"fam-{uuid.uuid4().hex[:6]}"))
    ours = build.build_image(cfg, on_log=quiet)
    assert ours["family"] == cfg.image_family
    assert ours["name"] in [i["name"] for i in images.list_images(cfg)]
    family = clients.images(cfg).get_from_family(project=cfg.project, family=cfg.image_family)
    assert family.name == ours["name"]

    assert images.archive(cfg, ours["name"], on_log=quiet)["deprecated"] == "DEPRECATED"
    with pytest.raises(OpsError, match="not found"):  # the family no longer picks it: runs cannot boot it
        compute.resolve_image(cfg, "analysis")
    assert images.restore(cfg, ours["name"], on_log=quiet)["deprecated"] == ""
    assert compute.resolve_image(cfg, "analysis").name == ours["name"]

    # someone else's image (no label, another family) is listed with --all only and never deleted
    other = f"theirs-{uuid.uuid4().hex[:6]}"
    body = c.Image(name=other, family="someone-else",
                   source_image="projects/cloud-hpc-image-public/global/images/family/hpc-rocky-linux-8")
    clients.images(cfg).insert(project=cfg.project, image_resource=body).result(timeout=60)
    try:
        assert other not in [i["name"] for i in images.list_images(cfg)]
        assert other in [i["name"] for i in images.list_images(cfg, all_images=True)]
        for verb in (images.delete, images.archive):
            with pytest.raises(OpsError, match="not an ops-hpc image") as err:
                verb(cfg, other, on_log=quiet)
            assert err.value.code == 3
        assert images.get_image(cfg, other) is not None
    finally:
        clients.images(cfg).delete(project=cfg.project, image=other).result(timeout=60)

    assert not images.delete(cfg, ours["name"], on_log=quiet, on_confirm=lambda q: False)
    assert images.delete(cfg, ours["name"], on_log=quiet, on_confirm=lambda q: "delete image" in q)
    assert images.get_image(cfg, ours["name"]) is None
