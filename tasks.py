"""ops-hpc's pipelines, composed from lib/ and bin/. `invoke --list` shows them; each docstring is its help.

On Windows this file is the front door (`.venv\\Scripts\\invoke demo`); on Linux/macOS the
Makefile's targets call these. Logic lives in lib/: a task parses, calls, prints, and
raises Exit with a one-line message when something is wrong.
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Exit, task

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from lib.config import Config  # noqa: E402
from lib.errors import OpsError  # noqa: E402

PY = sys.executable


def _cfg(**overrides) -> Config:
    try:
        return Config.load(overrides)
    except OpsError as exc:
        raise Exit(f"error: {exc}", code=exc.code) from None


def _bin(c, name: str, *args: str, warn: bool = False):
    """Run a bin/ script with this interpreter; quoting is left to the shell-free list form on every OS."""
    import subprocess

    result = subprocess.run([PY, str(REPO / "bin" / name), *args])
    if result.returncode and not warn:
        raise Exit(code=result.returncode)
    return result.returncode


# --- local cloud (foundation) ------------------------------------------------


@task
def localcloud_up(c):
    """Start the local cloud in the background."""
    _bin(c, "localcloud", "up")


@task
def localcloud_down(c):
    """Stop the local cloud and every process it started."""
    _bin(c, "localcloud", "down")


# --- results: pull, watch, verify (issue 3) ---------------------------------

# --- VM safety: status, setup, cleanup, sweep (issue 4) ---------------------

# --- run-staged, log, demo (issue 5) -----------------------------------------

# --- ssh pipelines: build, run, push, monitor, controls (issue 6) ------------


def _ops(fn, *args, **kwargs):
    """Call a lib function; an OpsError becomes invoke's Exit with its one-line message and exit code."""
    try:
        return fn(*args, **kwargs)
    except OpsError as exc:
        raise Exit(f"error: {exc}", code=exc.code) from None


def _need_name(name: str) -> str:
    if not name:
        raise Exit("error: which VM? pass --name NAME (make ... NAME=vm-name); `make status` lists them", code=2)
    return name


@task(help={"image_name": "image name (default opensees-hpc-YYYYMMDD-HHMMSS-xxxx)"})
def build(c, image_name=None):
    """Build the opensees-hpc image: spot VM, build OpenSees/OpenSeesMP, image from its disk, VM deleted."""
    from lib import build as build_lib

    image = _ops(build_lib.build_image, _cfg(), on_log=print, image_name=image_name)
    print(f"built image {image['name']} in family {image['family']}")


@task(help={"jobs": "jobs file (batch format: FOLDER [main=] [cores=] [timeout=MINUTES])", "name": "VM name"})
def run(c, jobs="batches/jobs.txt", name=None):
    """Run JOBS on one VM over ssh: per-job deadlines (make extend), output streamed, results pushed per job."""
    from lib import runjobs

    result = _ops(runjobs.run_jobs, _cfg(), jobs, on_log=print, on_line=print, name=name)
    if not result.ok:
        raise Exit("some jobs did not finish or their results were not pushed (see above)", code=1)


@task(help={"name": "VM name", "folder": "folder(s) under /tmp/ops-hpc-analysis, comma-separated (default: all)",
            "method": "auto, curl or gcloud"})
def push(c, name="", folder="", method="auto"):
    """Push VM NAME's analysis folders to gs://BUCKET/<folder>_YYYYMMDD-HHMMSS/ (then `make pull`)."""
    from lib import push as push_lib

    folders = [f for f in folder.split(",") if f]
    _ops(push_lib.push, _cfg(), _need_name(name), folders, on_log=print, on_line=print, method=method)


@task(help={"name": "VM name", "path": "file on the VM (relative = under /tmp/ops-hpc-analysis)", "dest": "local folder"})
def download(c, name="", path="", dest="."):
    """Copy ONE small file from VM NAME by scp (folders and files over 50 MB: push, then pull)."""
    from lib import push as push_lib

    if not path:
        raise Exit("error: pass --path FILE", code=2)
    _ops(push_lib.download, _cfg(), _need_name(name), path, Path(dest), on_log=print)


@task(help={"name": "VM name"})
def terminate(c, name=""):
    """Delete VM NAME now (ops-hpc VMs only)."""
    from lib import push as push_lib

    _ops(push_lib.terminate, _cfg(), _need_name(name), on_log=print)


@task(help={"action": "list, archive, restore or delete", "name": "image name (archive/restore/delete)",
            "all": "list: every image of the project, not only ops-hpc's", "yes": "delete without asking"})
def image(c, action="list", name="", all=False, yes=False):
    """The opensees-hpc images: list, archive (deprecate), restore, delete."""
    from lib import images

    cfg = _cfg()
    if action == "list":
        rows = _ops(images.list_images, cfg, all_images=all)
        for i in rows:
            print(f"{i['name']:45} {i['family'] or '-':16} {i['created'][:19]} {i['size'] / 1e9:8.2f} GB "
                  f"{i['deprecated'] or 'ACTIVE'}{'' if i['ours'] else '  (not ops-hpc)'}")
        if not rows:
            print("no ops-hpc images: build one with `make build`")
        return
    if action not in ("archive", "restore", "delete"):
        raise Exit("error: action must be list, archive, restore or delete", code=2)
    if not name:
        raise Exit(f"error: image {action} needs --name IMAGE (`invoke image` lists them)", code=2)
    if action == "delete":
        confirm = None if yes else (lambda q: sys.stdin.isatty() and input(f"{q} [y/N] ").strip().lower() == "y")
        _ops(images.delete, cfg, name, on_log=print, on_confirm=confirm)
    else:
        _ops(getattr(images, action), cfg, name, on_log=print)


@task(help={"name": "VM name", "follow": "keep sampling until Ctrl+C or the VM is gone", "interval": "seconds"})
def monitor(c, name="", follow=False, interval=10):
    """CPU, memory and disk of VM NAME (Monitoring API; /proc over ssh while it has no points)."""
    from lib import monitor as monitor_lib

    cfg, name = _cfg(), _need_name(name)

    def show(sample):
        print(monitor_lib.format_sample(sample), flush=True)

    if follow:
        try:
            _ops(monitor_lib.follow, cfg, name, on_metrics=show, interval=float(interval))
        except KeyboardInterrupt:
            pass
    else:
        show(_ops(monitor_lib.sample, cfg, name))


@task(help={"minutes": "minutes to add to the running job's deadline", "name": "VM (default: every running job)"})
def extend(c, minutes=30, name=""):
    """Give the running job of `make run` MINUTES more (works from any terminal)."""
    from lib import deadline

    _ops(deadline.request_extension, _cfg(), float(minutes), name=name or None, on_log=print)


@task(help={"name": "VM name"})
def abort(c, name=""):
    """Kill OpenSees on VM NAME; the VM keeps running."""
    from lib import controls

    _ops(controls.abort, _cfg(), _need_name(name), on_log=print)


@task(help={"name": "VM name"})
def emergency(c, name=""):
    """Kill OpenSees on VM NAME and push whatever is on its disk to the bucket now; the VM stays."""
    from lib import controls

    _ops(controls.emergency, _cfg(), _need_name(name), on_log=print)


@task(help={"name": "VM name"})
def stop_vm(c, name=""):
    """Delete VM NAME now: anything not pushed is lost."""
    from lib import controls

    _ops(controls.stop_vm, _cfg(), _need_name(name), on_log=print)
