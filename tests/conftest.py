"""Shared fixtures: one real local cloud per test session, fault injection, no real retry sleeps."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from lib import retry
from lib.config import Config
from lib.localcloud import admin, control, shell_env

REPO = Path(__file__).resolve().parents[1]


@dataclass
class LocalCloud:
    """Handle on the session's local cloud daemon (started exactly as `bin/localcloud up` does)."""

    state_dir: Path
    endpoints: dict[str, str]
    config_file: Path
    buckets: list[str] = field(default_factory=list)

    def config(self, **overrides: Any) -> Config:
        """A local Config isolated from the developer's environment and ops-hpc.toml."""
        return Config.load({"backend": "local", "state_dir": str(self.state_dir), **overrides}, env={}, path="")

    def admin(self, path: str, body: dict | None = None, method: str | None = None) -> Any:
        return admin(self.endpoints["compute"], path, body, method)

    def fault(self, api: str, kind: str, count: int = 1, match: str = "", seconds: float = 5.0) -> dict:
        """Arm a fault: the next `count` calls to `api` matching `match` fail as `kind`."""
        return self.admin("faults", {"api": api, "kind": kind, "count": count, "match": match, "seconds": seconds})

    def clear_faults(self) -> None:
        self.admin("faults", method="DELETE")

    def env(self, **config: str) -> dict[str, str]:
        """Environment for a bin/ script subprocess pointed at this local cloud."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPS_HPC_", "CLOUDSDK_", "STORAGE_EMULATOR"))}
        env.update(shell_env(self.state_dir, "ops-hpc-local"))
        env["OPS_HPC_CONFIG"] = str(self.config_file)
        env["PYTHONPATH"] = str(REPO)
        for key, value in config.items():
            env[f"OPS_HPC_{key.upper()}"] = str(value)
        return env

    def new_bucket(self, prefix: str = "t") -> Config:
        """A fresh bucket (uniform access, public access prevention) and a Config naming it."""
        from lib import storage

        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        cfg = self.config(bucket=name)
        storage.ensure_bucket(cfg)
        self.buckets.append(name)
        return cfg


def _start(tmp: Path, backend: str, **options: Any) -> LocalCloud:
    state_dir = tmp / "state"
    endpoints = control.up(state_dir, storage_backend=backend, **options)
    config_file = tmp / "ops-hpc.toml"
    config_file.write_text("# empty: tests configure through the environment\n")
    return LocalCloud(state_dir=state_dir, endpoints=endpoints, config_file=config_file)


def _stop(cloud: LocalCloud) -> None:
    info = control.status(cloud.state_dir)
    control.down(cloud.state_dir)
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(cloud.state_dir) in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, f"local cloud processes left behind: {leftovers} ({info})"


@pytest.fixture(scope="session")
def localcloud(tmp_path_factory) -> LocalCloud:
    """The session's local cloud with the filesystem store, as a user runs it."""
    cloud = _start(tmp_path_factory.mktemp("localcloud"), "filesystem")
    yield cloud
    _stop(cloud)


@pytest.fixture(scope="session")
def memcloud(tmp_path_factory) -> LocalCloud:
    """A second local cloud with fake-gcs-server's memory store, which keeps hostile object names faithfully."""
    cloud = _start(tmp_path_factory.mktemp("memcloud"), "memory")
    yield cloud
    _stop(cloud)


@pytest.fixture
def faults(localcloud):
    """Arm faults on the session cloud; they are cleared after the test whatever happens."""
    localcloud.clear_faults()
    yield localcloud.fault
    localcloud.clear_faults()


@pytest.fixture(autouse=True)
def no_retry_sleep(monkeypatch) -> list[float]:
    """Retries never sleep for real in tests; the waits they would have taken are recorded."""
    waits: list[float] = []
    monkeypatch.setattr(retry, "sleep", waits.append)
    return waits


@pytest.fixture
def bucket(localcloud) -> Config:
    return localcloud.new_bucket()


@pytest.fixture(scope="module")
def image(localcloud, tmp_path_factory) -> str:
    """The opensees-hpc image VM tests launch from: the real build pipeline, once per local cloud (checked
    again per module, so a test that deletes images cannot leave a later module without one)."""
    from lib import build
    from tests.support.vms import vm_config

    return build.ensure_image(vm_config(localcloud, tmp_path_factory.mktemp("image-state")))


# The longest tests (15-100 s, mostly waiting on local VMs), started first: with `--dist load --maxschedchunk 1`
# each worker takes the next test when it is free, so long ones first is longest-processing-time-first
# scheduling and the suite does not end waiting on a long test picked up last.
LONG_FIRST = (
    "test_run_staged.py::test_a_result_stranded_by_a_503_storm",
    "test_emulator_gcloud.py::test_gcloud_against_the_local_cloud",
    "test_packing_vm.py::test_a_packed_vm_runs_models_side_by_side",
    "test_packing_vm.py::test_a_preempted_packed_vm",
    "test_runs.py::test_two_runs_two_pcs_one_bucket",
    "test_runjobs.py::test_sigint_while_a_push_uploads",
    "test_sweeps.py::test_the_example_sweep_runs",
    "test_notify.py::test_the_vm_posts_a_failure",
    "test_run_staged.py::test_fan_out_across_three_vms",
    "test_guard.py::test_sigkill_during_the_insert",
)


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        return next((i for i, key in enumerate(LONG_FIRST) if key in item.nodeid), len(LONG_FIRST))

    items.sort(key=rank)  # stable: everything else keeps its order
