"""Shared by the VM safety tests: isolated configs, unique names, an opensees-hpc image, and the 'no VM left' check."""

from __future__ import annotations

import uuid
from pathlib import Path

from lib import clients, compute, storage
from lib.config import Config
from lib.polling import poll_until

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL = "e2-standard-2"  # 2 vCPUs: cheap on quota in the local cloud


def vm_config(localcloud, state_dir: Path, **overrides) -> Config:
    """A local Config whose endpoints point at the session cloud but whose session state is the test's own."""
    base = clients.resolve(localcloud.config(machine_type=SMALL, build_machine_type=SMALL, **overrides))
    return base.replace(state_dir=str(state_dir))


def run_config(localcloud, state_dir: Path, **overrides) -> Config:
    """A run-staged test's config: a bucket of its own (created) and VM minutes scaled 30x."""
    cfg = vm_config(localcloud, state_dir, bucket=f"t-{uuid.uuid4().hex[:10]}", time_scale=30, **overrides)
    storage.ensure_bucket(cfg)
    return cfg


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ensure_opensees_image(cfg: Config) -> str:
    """An image in family opensees-hpc of the local project, made by the build pipeline itself (launcher included)."""
    from lib import build

    images = clients.images(cfg)
    try:
        return images.get_from_family(project=cfg.project, family=cfg.image_family).self_link
    except Exception:
        pass
    build.build_image(cfg, on_log=lambda _: None)
    return images.get_from_family(project=cfg.project, family=cfg.image_family).self_link


def wait_gone(cfg: Config, name: str, timeout: float = 20.0) -> bool:
    return bool(poll_until(lambda: compute.get_vm(cfg, name) is None, timeout, 0.1))


def reap(cfg: Config, prefix: str) -> list[str]:
    """Delete every VM whose name starts with `prefix` (test cleanup); returns the names that were still there."""
    left = [vm for vm in compute.list_vms_in_zones(cfg, ours_only=False) if vm.name.startswith(prefix)]
    for vm in left:
        compute.delete_vm(cfg.replace(zone=vm.zone), vm.name, force=True, on_log=lambda _: None)
    return [vm.name for vm in left]


class VmEnv:
    """A test's own config (session state in tmp) and name prefix; teardown checks no VM of it is left alive."""

    def __init__(self, localcloud, tmp_path: Path) -> None:
        self.cloud = localcloud
        self.cfg = vm_config(localcloud, tmp_path / "state")
        self.prefix = unique("t")
        self.count = 0
        self.logs: list[str] = []

    def name(self) -> str:
        self.count += 1
        return f"{self.prefix}-{self.count}"

    def log(self, line: str) -> None:
        self.logs.append(line)

    def create(self, *, kind: str = "build", script: str | None = "sleep 600", labels: bool = True, **plan) -> str:
        """A running VM of ours (or, with labels=False, one some other tool made) in the test's prefix."""
        name = plan.pop("name", None) or self.name()
        spec = compute.plan_vm(self.cfg, name=name, kind=kind, run_id=self.prefix, startup_script=script, **plan)
        if not labels:
            from dataclasses import replace

            spec = replace(spec, labels={"owner": "someone-else"})
            from google.cloud import compute_v1 as c

            clients.instances(self.cfg).insert(request=c.InsertInstanceRequest(
                project=spec.project, zone=spec.zone, instance_resource=compute.instance_resource(spec))).result(60)
            return name
        compute.create_vm(self.cfg, spec, on_log=self.log)
        return name

    def alive(self) -> list[str]:
        """Names of this test's VMs that exist and are not TERMINATED/STOPPED."""
        return [v.name for v in compute.list_vms_in_zones(self.cfg, ours_only=False)
                if v.name.startswith(self.prefix) and v.status not in compute.STOPPED_STATES]


def vm_env(localcloud, tmp_path):
    """Body of each test module's `vms` fixture: `yield from vm_env(localcloud, tmp_path)`."""
    env = VmEnv(localcloud, tmp_path)
    yield env
    left = reap(env.cfg, env.prefix)
    assert not left, f"the test left VMs behind: {left}"
