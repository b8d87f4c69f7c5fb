"""The build pipeline: a spot VM from HPC Rocky Linux 8 builds OpenSees/OpenSeesMP; its disk becomes the image.

    plan + create spot VM -> VMGuard -> wait_for_ssh -> upload build_opensees_full.sh
    -> run it with the VM's core count -> stop -> image in family opensees-hpc -> delete VM -> disarm

Spot, because a build is cheap to repeat and runs ~30 min; the VM's max run duration is 2 h. On the
local cloud the same pipeline runs and the script's stand-in step installs the launcher over the
`opensees` PyPI package, so the demo's image is made by this code too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lib import clients, compute, images, paths, retry, ssh
from lib.config import Config
from lib.errors import OpsError, UsageError
from lib.guard import VMGuard
from lib.log import Log, quiet
from lib.naming import new_run_id, vm_name

BUILD_SCRIPT = paths.vm_script("build_opensees_full.sh")
BUILT_BY = "opensees-hpc built"  # first words of BUILD_INFO (build_opensees_full.sh): the image's description
LAUNCHER_LABEL = "ops-hpc-image"  # label value "launcher": an image known to carry the openseesmp launcher
REMOTE_DIR = "/tmp/ops-hpc-build"
STEPS = ("create VM", "wait for ssh", "upload script", "build", "stop VM", "create image", "delete VM")

Progress = Callable[[str, int, int], None]


def build_image(cfg: Config, *, on_log: Log = print, on_progress: Progress | None = None,
                image_name: str | None = None, on_line: Log | None = None, ssh_timeout: float = 600.0,
                state: Any = None) -> dict[str, Any]:
    """Build the opensees-hpc image and return it as a dict (name, family, created, size, ...)."""
    cfg = clients.resolve(cfg)
    run_id = new_run_id()
    stamp = run_id.removeprefix("run-")  # YYYYMMDD-HHMMSS-xxxx
    name = vm_name(run_id, "build")
    image_name = image_name or f"{cfg.image_family}-{stamp}"
    line = on_line or (lambda text: on_log(f"  | {text}"))

    def step(i: int) -> None:
        on_log(f"[{i + 1}/{len(STEPS)}] {STEPS[i]}")
        if on_progress is not None:
            on_progress(STEPS[i], i + 1, len(STEPS))

    if images.get_image(cfg, image_name) is not None:
        raise UsageError(f"image {image_name} already exists: choose another name")
    step(0)
    spec = compute.plan_vm(cfg, name=name, kind="build", run_id=f"build-{stamp}", spot=True)
    with VMGuard(cfg, name, on_log=on_log, state=state) as guard:  # entered first: it covers the creation too
        vm = compute.create_vm(cfg, spec, on_log=on_log, state=state)
        cfg = cfg.replace(zone=vm.zone)  # where it landed: a zone out of capacity moves it on
        step(1)
        ssh.wait_for_ssh(cfg, name, ssh_timeout, on_log=on_log)
        step(2)
        ssh.upload(cfg, name, [BUILD_SCRIPT], REMOTE_DIR, on_log=on_log)
        step(3)
        script = ssh.rpath(f"{REMOTE_DIR}/{BUILD_SCRIPT.name}")
        code = ssh.run(cfg, name, ssh.sudo(f"bash {script} {spec.guest_cpus}", cfg), on_line=line)
        if code:
            gone = compute.get_vm(cfg, name) is None
            why = "the spot VM was preempted or deleted: run the build again" if gone else "see the output above"
            raise OpsError(f"build script failed on {name} (exit {code}): {why}")
        _, info = ssh.capture(cfg, name, f"cat {ssh.rpath('/opt/ops-hpc/BUILD_INFO')}")
        step(4)
        compute.stop_vm(cfg, name, on_log=on_log)
        step(5)
        disk = _boot_disk(cfg, name) or f"projects/{cfg.project}/zones/{cfg.zone}/disks/{name}"
        image = images.create_from_disk(cfg, disk, image_name, description=info.strip()[:250], on_log=on_log)
        step(6)
        compute.delete_vm(cfg, name, on_log=on_log, state=state)
        guard.disarm()
    on_log(f"image {image['name']} is the newest in family {image['family']} (built on {vm.machine_type or '?'})")
    return image


def ensure_image(cfg: Config, *, on_log: Log = quiet) -> str:
    """Name of the newest READY image of the family that has the `openseesmp` launcher, building one if none.

    An image elsewhere in the family is not trusted blindly (a hand-made one may lack the launcher):
    only images this pipeline made (description from BUILD_INFO) or labelled as launcher-bearing count.
    """

    cfg = clients.resolve(cfg)
    found = [i for i in retry.listing(clients.images(cfg).list, project=cfg.project)
             if i.family == cfg.image_family and i.status == "READY" and not i.deprecated.state
             and (dict(i.labels).get(LAUNCHER_LABEL) == "launcher" or (i.description or "").startswith(BUILT_BY))]
    if found:
        return max(found, key=lambda i: i.creation_timestamp).name
    on_log(f"no opensees-hpc image with the launcher in family {cfg.image_family}: building one")
    return build_image(cfg, on_log=on_log, on_line=lambda _: None)["name"]


def _boot_disk(cfg: Config, name: str) -> str | None:

    inst = retry.google(clients.instances(cfg).get, project=cfg.project, zone=cfg.zone, instance=name)
    for disk in inst.disks:
        if disk.boot and disk.source:
            return disk.source.split("/compute/v1/", 1)[-1]
    return None
