"""Shared by the ssh pipeline tests: one opensees-hpc image built by the real build pipeline per session,
VMs booted from it, jobs files of the small real OpenSees models in tests/data/models."""

from __future__ import annotations

import shutil
from pathlib import Path

from lib import build, compute, ssh
from lib.config import Config
from tests.support import wait_for

MODELS = Path(__file__).resolve().parents[1] / "data" / "models"
_IMAGES: dict[str, str] = {}


def quiet(_: str) -> None:
    pass


def opensees_image(cfg: Config) -> str:
    """The name of an image made by lib.build.build_image (once per session and local cloud)."""
    key = cfg.compute_endpoint
    if key not in _IMAGES:
        _IMAGES[key] = build.build_image(cfg, on_log=quiet)["name"]
    return _IMAGES[key]


def boot(cfg: Config, name: str, *, minutes: int = 10) -> dict:
    """An analysis VM from the built image (launcher installed), ready for ssh."""
    spec = compute.plan_vm(cfg, name=name, kind="analysis", run_id="t-" + name, job_timeouts_min=[minutes],
                           image=opensees_image(cfg))
    vm = compute.create_vm(cfg, spec, on_log=quiet)
    ssh.wait_for_ssh(cfg, name, 30)
    return vm


def jobs_file(folder: Path, lines: list[str], models: tuple[str, ...] = ("quick", "slow", "endless")) -> Path:
    """Copy the models next to a jobs file with `lines` (batch format)."""
    folder.mkdir(parents=True, exist_ok=True)
    for model in models:
        shutil.copytree(MODELS / model, folder / model, dirs_exist_ok=True)
    path = folder / "jobs.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_job(cfg: Config, name: str, model: str) -> None:
    """Upload a model to the VM and start it in the background (as a job runs), returning at once."""
    import threading

    ssh.upload(cfg, name, [MODELS / model], "/tmp/ops-hpc-analysis")
    command = f"cd {ssh.rpath('/tmp/ops-hpc-analysis/' + model)} && exec openseesmp 1 main.tcl"
    threading.Thread(target=ssh.run, args=(cfg, name, command), kwargs={"on_line": quiet}, daemon=True).start()
    disk = Path(ssh.local_vm(cfg, name)["disk"])
    wait_for(lambda: (disk / "tmp/ops-hpc-analysis" / model / "progress.txt").exists())
