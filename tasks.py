"""ops-hpc's pipelines, composed from lib/ and bin/. `invoke --list` shows them; each docstring is its help.

On Windows this file is the front door (`.venv\\Scripts\\invoke demo`); on Linux/macOS the
Makefile's targets call these. Logic lives in lib/: a task parses, calls, prints, and
raises Exit with a one-line message when something is wrong.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from invoke import Exit, task

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from lib import cli  # noqa: E402
from lib.config import Config  # noqa: E402

PY = sys.executable
cli.quiet_library_warnings()


def ops_task(*args, interrupted: str = "interrupted", **kwargs):
    """invoke's @task with the toolkit's error boundary (the same as bin/'s cli.run).

    An OpsError, Google API, credential, network or file error becomes Exit with one line and its
    documented exit code; Ctrl+C exits 130 with `interrupted`; anything else is a bug and keeps its traceback.
    """

    def wrap(fn):
        @functools.wraps(fn)
        def body(c, *a, **kw):
            try:
                return fn(c, *a, **kw)
            except Exit:
                raise
            except (Exception, KeyboardInterrupt) as exc:
                line, code = cli.boundary(exc, verbose=cli.verbose_requested(), interrupted=interrupted)
                raise Exit(line, code=code) from None

        return task(*args, **kwargs)(body)

    if len(args) == 1 and callable(args[0]) and not kwargs:  # bare @ops_task
        fn, args = args[0], ()
        return wrap(fn)
    return wrap


WAIT_INTERRUPTED = ("interrupted: the VMs keep running, finish their models, upload the results and delete "
                    "themselves; follow them with `make log` (ops-hpc log), fetch results with `make pull` "
                    "(ops-hpc pull)")


def _cfg(**overrides) -> Config:
    return Config.load(overrides)


def _bin(c, name: str, *args: str, warn: bool = False):
    """Run a bin/ script with this interpreter; quoting is left to the shell-free list form on every OS."""
    import subprocess

    result = subprocess.run([PY, str(REPO / "bin" / name), *args])
    if result.returncode and not warn:
        raise Exit(code=result.returncode)
    return result.returncode


# --- local cloud (foundation) ------------------------------------------------


@ops_task
def localcloud_up(c):
    """Start the local cloud in the background."""
    _bin(c, "localcloud", "up")


@ops_task
def localcloud_down(c):
    """Stop the local cloud and every process it started."""
    _bin(c, "localcloud", "down")


# --- results: pull, watch, verify (issue 3) ---------------------------------


def _results_args(dir: str, json: bool = False) -> list[str]:
    return [*(["--dir", dir] if dir else []), *(["--json"] if json else [])]


@ops_task(help={"dir": "results folder (default ./results)", "yes": "do not ask first", "json": "machine-readable"})
def pull(c, dir="", yes=False, json=False):
    """Download, verify, extract and clean every result set in the bucket (asks first unless --yes)."""
    _bin(c, "pull", *(["--yes"] if yes else []), *_results_args(dir, json))


@ops_task(help={"dir": "results folder (default ./results)", "interval": "seconds between polls (default 60)"})
def watch(c, dir="", interval=60):
    """Keep pulling every INTERVAL seconds until Ctrl+C: each new set is pulled as soon as it appears."""
    _bin(c, "pull", "--yes", "--watch", "--interval", str(interval), *_results_args(dir))


@ops_task(help={"dir": "results folder (default ./results)", "offline": "manifests and recorded checksums only"})
def verify(c, dir="", offline=False, json=False):
    """Re-check pulled sets file by file against GCS, their MANIFEST.json, or what pull recorded."""
    _bin(c, "verify", *(["--offline"] if offline else []), *_results_args(dir, json))


# --- VM safety: status, setup, cleanup, sweep (issue 4) ---------------------


@ops_task(help={"usage": "per-VM cost over the last 30 days", "json": "print JSON"})
def status(c, usage=False, json=False):
    """Image, ops-hpc VMs (uptime, time left, cost so far), bucket, and with --usage 30 days of costs."""
    _bin(c, "status", *(["--usage"] if usage else []), *(["--json"] if json else []))


@ops_task
def setup(c):
    """Check credentials, project, APIs, OS Login, bucket (created if missing), IAM permissions and CPU quota."""
    from lib import preflight

    checks = preflight.run_checks(_cfg())
    failed = [ch for ch in checks if ch.status == "fail"]
    if failed:
        raise Exit(f"{len(failed)} check(s) failed: fix the lines marked FAIL and rerun `make setup`", code=1)
    print("setup: all checks passed")


@ops_task(help={"yes": "do not ask (scripts)"})
def cleanup(c, yes=False):
    """Delete every ops-hpc VM and wipe the bucket, after you type 'yes'."""
    from lib import sweep as sweep_mod

    def confirm(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise Exit("cleanup needs a typed 'yes' on a terminal, or --yes", code=3)
        return input(f"{question}\ntype 'yes' to continue: ").strip() == "yes"

    result = sweep_mod.cleanup(_cfg(), confirm=confirm)
    if result.get("failed"):
        raise Exit(code=1)


@ops_task(help={"dry_run": "show, change nothing", "grace": "minutes past expected end", "pull": "also pull results"})
def sweep(c, dry_run=False, grace=None, pull=False):
    """Delete stopped or overdue ops-hpc VMs now (what the cron/Task Scheduler job runs)."""
    args = [*(["--dry-run"] if dry_run else []), *(["--grace", str(grace)] if grace is not None else []),
            *(["--pull"] if pull else [])]
    _bin(c, "sweep", *args)


@ops_task(help={"kind": "analysis or build", "timeouts": "job timeouts in minutes, e.g. 30,60", "spot": "Spot VM",
            "dry_run": "print the VM and worst-case cost only", "delete": "delete VM NAME instead"})
def launch(c, kind="analysis", timeouts="", spot=False, dry_run=False, delete=""):
    """Create an ops-hpc VM (or --delete NAME); see bin/launch --help for every option."""
    if delete:
        _bin(c, "launch", "--delete", delete)
        return
    args = ["--kind", kind, *(["--timeouts", timeouts] if timeouts else []), *(["--spot"] if spot else []),
            *(["--dry-run"] if dry_run else [])]
    _bin(c, "launch", *args)


# --- run-staged, log, demo (issue 5) -----------------------------------------


def _print_run(out: dict) -> None:
    if "table" in out:
        print(out["table"])
        for vm, secs in out["upload_to_delete_s"].items():
            when = f"{secs:.1f} s" if secs is not None else "(time unknown)"
            print(f"{vm}: deleted {when} after its last result upload ({out['deleted_how'].get(vm) or '?'})")
        print(f"wall time {out['wall_s']:.1f} s, OpenSees time {out['opensees_s']:.1f} s, "
              f"orchestration overhead {out['overhead_s']:.1f} s")


@ops_task(name="run-staged", help={"batch": "batch file (default batches/example.txt)", "wait": "follow, pull, summarise",
                               "vms": "shard the models across N VMs (balanced by timeout)",
                               "spot": "spot VMs (with --wait a preempted VM's unfinished models are relaunched)",
                               "dir": "results folder for --wait", "run_id": "stage into this run id",
                               "no_fallback": "after the spot retries, do not fall back to an on-demand VM"})
def run_staged(c, batch="batches/example.txt", wait=False, vms=1, spot=False, dir=None, run_id=None,
               no_fallback=False):
    """Stage BATCH, launch self-deleting VM(s) that run it; --wait follows, pulls each result and summarises."""
    from lib import cli, runstaged

    try:
        out = runstaged.run_staged(_cfg(), batch, wait=wait, vms=int(vms), spot=spot or None, results_dir=dir,
                                   run_id=run_id, on_demand_fallback=not no_fallback, on_log=cli.err)
    except KeyboardInterrupt:
        if not wait:
            raise
        raise Exit(WAIT_INTERRUPTED, code=cli.EXIT_INTERRUPTED) from None
    print(out["run_id"])
    _print_run(out)
    if out.get("lost"):
        raise Exit(code=1)


@ops_task(help={"batch": "batch file", "run_id": "stage into this run id (default: a new one)"})
def stage(c, batch="batches/example.txt", run_id=None):
    """Zip and upload BATCH's models to _uploads/RUN_ID/ (same as bin/stage)."""
    _bin(c, "stage", batch, *(["--run-id", run_id] if run_id else []))


@ops_task(help={"run_id": "run id (default: the latest run)", "tail": "log lines to show"})
def log(c, run_id=None, tail=20):
    """Progress of a run-staged run and the tail of its current (or last) model's log."""
    from lib import runlog

    print(runlog.format_log(runlog.run_log(_cfg(), run_id, tail=int(tail))))


@ops_task(help={"tail": "also print the models' log lines while they run"})
def demo(c, tail=False):
    """The whole run-staged pipeline on the local cloud with real OpenSees; results in ./results/."""
    from lib import cli, runstaged

    out = runstaged.demo(REPO / ".state", REPO / "results", on_log=cli.err, tail=tail)
    _print_run(out)
    print(f"results verified against their manifests in {out['results_dir']}; bucket holds no results; "
          f"local cloud stopped, no process left; demo took {out['demo_wall_s']:.1f} s")


# --- ssh pipelines: build, run, push, monitor, controls (issue 6) ------------


def _need_name(name: str) -> str:
    if not name:
        raise Exit("error: which VM? pass --name NAME (make ... NAME=vm-name); `make status` lists them", code=2)
    return name


@ops_task(help={"image_name": "image name (default opensees-hpc-YYYYMMDD-HHMMSS-xxxx)"})
def build(c, image_name=None):
    """Build the opensees-hpc image: spot VM, build OpenSees/OpenSeesMP, image from its disk, VM deleted."""
    from lib import build as build_lib

    image = build_lib.build_image(_cfg(), on_log=print, image_name=image_name)
    print(f"built image {image['name']} in family {image['family']}")


@ops_task(help={"jobs": "jobs file (batch format: FOLDER [main=] [cores=] [timeout=MINUTES])", "name": "VM name"})
def run(c, jobs="batches/jobs.txt", name=None):
    """Run JOBS on one VM over ssh: per-job deadlines (make extend), output streamed, results pushed per job."""
    from lib import runjobs

    result = runjobs.run_jobs(_cfg(), jobs, on_log=print, on_line=print, name=name)
    if not result.ok:
        raise Exit("some jobs did not finish or their results were not pushed (see above)", code=1)


@ops_task(help={"name": "VM name", "folder": "folder(s) under /tmp/ops-hpc-analysis, comma-separated (default: all)",
            "method": "auto, curl or gcloud"})
def push(c, name="", folder="", method="auto"):
    """Push VM NAME's analysis folders to gs://BUCKET/<folder>_YYYYMMDD-HHMMSS/ (then `make pull`)."""
    from lib import push as push_lib

    folders = [f for f in folder.split(",") if f]
    push_lib.push(_cfg(), _need_name(name), folders, on_log=print, on_line=print, method=method)


@ops_task(help={"name": "VM name", "path": "file on the VM (relative = under /tmp/ops-hpc-analysis)", "dest": "local folder"})
def download(c, name="", path="", dest="."):
    """Copy ONE small file from VM NAME by scp (folders and files over 50 MB: push, then pull)."""
    from lib import push as push_lib

    if not path:
        raise Exit("error: pass --path FILE", code=2)
    push_lib.download(_cfg(), _need_name(name), path, Path(dest), on_log=print)


@ops_task(help={"name": "VM name"})
def terminate(c, name=""):
    """Delete VM NAME now (ops-hpc VMs only)."""
    from lib import push as push_lib

    push_lib.terminate(_cfg(), _need_name(name), on_log=print)


@ops_task(help={"action": "list, archive, restore or delete", "name": "image name (archive/restore/delete)",
            "all": "list: every image of the project, not only ops-hpc's", "yes": "delete without asking"})
def image(c, action="list", name="", all=False, yes=False):
    """The opensees-hpc images: list, archive (deprecate), restore, delete."""
    from lib import images

    cfg = _cfg()
    if action == "list":
        rows = images.list_images(cfg, all_images=all)
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
        images.delete(cfg, name, on_log=print, on_confirm=confirm)
    else:
        getattr(images, action)(cfg, name, on_log=print)


@ops_task(help={"name": "VM name", "follow": "keep sampling until Ctrl+C or the VM is gone", "interval": "seconds"})
def monitor(c, name="", follow=False, interval=10):
    """CPU, memory and disk of VM NAME (Monitoring API; /proc over ssh while it has no points)."""
    from lib import monitor as monitor_lib

    cfg, name = _cfg(), _need_name(name)

    def show(sample):
        print(monitor_lib.format_sample(sample), flush=True)

    if follow:
        try:
            monitor_lib.follow(cfg, name, on_metrics=show, interval=float(interval))
        except KeyboardInterrupt:
            pass
    else:
        show(monitor_lib.sample(cfg, name))


@ops_task(help={"minutes": "minutes to add to the running job's deadline", "name": "VM (default: every running job)"})
def extend(c, minutes=30, name=""):
    """Give the running job of `make run` MINUTES more (works from any terminal)."""
    from lib import deadline

    deadline.request_extension(_cfg(), float(minutes), name=name or None, on_log=print)


@ops_task(help={"name": "VM name"})
def abort(c, name=""):
    """Kill OpenSees on VM NAME; the VM keeps running."""
    from lib import controls

    controls.abort(_cfg(), _need_name(name), on_log=print)


@ops_task(help={"name": "VM name"})
def emergency(c, name=""):
    """Kill OpenSees on VM NAME and push whatever is on its disk to the bucket now; the VM stays."""
    from lib import controls

    controls.emergency(_cfg(), _need_name(name), on_log=print)


@ops_task(help={"name": "VM name"})
def stop_vm(c, name=""):
    """Delete VM NAME now: anything not pushed is lost."""
    from lib import controls

    controls.stop_vm(_cfg(), _need_name(name), on_log=print)
