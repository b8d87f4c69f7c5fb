"""ops-hpc's jobs as invoke tasks, in namespaces: `invoke --list` (repo) or `ops-hpc --help` (installed).

  localcloud.up|down|status      the local cloud
  results.pull|watch|verify      results from the bucket to this PC (= bin/pull, bin/verify)
  vm.launch|delete|abort|emergency|monitor|extend|push|download   one VM
  image.list|archive|restore|delete|build                         the opensees-hpc images
  run.staged|jobs|stage|log|demo|runs                             the pipelines
  setup, status, cleanup, sweep, build, demo, test, pull, run-staged, log   the everyday ones, also at the top

One calling idiom: everything runs in this process. A job that has a bin/ script runs that
script's `main(argv)` (so the flags and output are the script's own); the others call lib/.
`ops_task` is the error boundary, the same as bin/'s `cli.run`. Logic lives in lib/: a task
parses, calls, prints. (Over 400 lines on purpose: some 35 short tasks, each a few lines, read best
as one list; they hold no logic to split out.)
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from invoke import Collection, Exit, task

from lib import cli, paths
from lib.config import Config

cli.quiet_library_warnings()

WAIT_INTERRUPTED = ("interrupted: the VMs keep running, finish their models, upload the results and delete "
                    "themselves; follow them with `make log` (ops-hpc log), fetch results with `make pull` "
                    "(ops-hpc pull)")


def ops_task(*args: Any, interrupted: str = "interrupted", **kwargs: Any) -> Any:
    """invoke's @task with the toolkit's error boundary (the same as bin/'s cli.run).

    An OpsError, Google API, credential, network or file error becomes Exit with one line and its
    documented exit code; Ctrl+C exits 130 with `interrupted`; anything else is a bug and keeps its traceback.
    """

    def wrap(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def body(c: Any, *a: Any, **kw: Any) -> Any:
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


def _cfg(**overrides: Any) -> Config:
    return Config.load(overrides)


def load_script(name: str) -> Any:
    """A bin/ script as a module (they have no .py suffix), so its main(argv) runs in this process."""
    import importlib.machinery
    import importlib.util

    path = paths.BIN / name
    loader = importlib.machinery.SourceFileLoader(f"ops_hpc_bin_{name.replace('-', '_')}", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    if spec is None:  # only for a file the loader cannot read
        raise cli.OpsError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def script(name: str, *argv: str) -> None:
    """Run bin/NAME's main in this process; a non-zero exit code becomes Exit with that code."""
    code = load_script(name).main(list(argv))
    if code:
        raise Exit(code=code)


def _flag(on: Any, name: str) -> list[str]:
    return [name] if on else []


def _opt(value: Any, name: str) -> list[str]:
    return [name, str(value)] if value not in (None, "") else []


def _need_gcloud(cfg: Config) -> None:
    """The ssh pipelines reach GCP VMs through the gcloud CLI: find out before a VM is created and billed."""
    if not cfg.local:
        from lib import ssh

        ssh.gcloud_executable()


def _need_name(name: str) -> str:
    if not name:
        raise Exit("error: which VM? pass --name NAME (make ... NAME=vm-name); `make status` lists them", code=2)
    return name


# -- localcloud.* ----------------------------------------------------------------------------------------


@ops_task(name="up")
def localcloud_up(c):
    """Start the local cloud in the background."""
    script("localcloud", "up")


@ops_task(name="down")
def localcloud_down(c):
    """Stop the local cloud and every process it started."""
    script("localcloud", "down")


@ops_task(name="status")
def localcloud_status(c):
    """What the local cloud runs: pids, endpoints, local VMs."""
    script("localcloud", "status")


# -- results.* -------------------------------------------------------------------------------------------


@ops_task(help={"dir": "results folder (default ./results)", "yes": "do not ask first", "json": "machine-readable",
                "list": "only list the result sets in the bucket", "watch": "keep polling until Ctrl+C",
                "interval": "seconds between polls with --watch (default 60)", "set": "pull only this set id",
                "no_report": "do not rebuild the runs' HTML reports"})
def pull(c, dir="", yes=False, json=False, list=False, watch=False, interval=60, set=None, no_report=False):
    """Download, verify, extract and clean every result set in the bucket (asks first unless --yes)."""
    script("pull", *_opt(dir, "--dir"), *_flag(yes, "--yes"), *_flag(json, "--json"), *_flag(list, "--list"),
           *_flag(watch, "--watch"), *(["--interval", str(interval)] if watch else []), *_opt(set, "--set"),
           *_flag(no_report, "--no-report"))


@ops_task(help={"dir": "results folder (default ./results)", "interval": "seconds between polls (default 60)"})
def watch(c, dir="", interval=60):
    """Keep pulling every INTERVAL seconds until Ctrl+C: each new set is pulled as soon as it appears."""
    script("pull", "--yes", "--watch", "--interval", str(interval), *_opt(dir, "--dir"))


@ops_task(help={"dir": "results folder (default ./results)", "offline": "manifests and recorded checksums only",
                "json": "machine-readable"})
def verify(c, dir="", offline=False, json=False):
    """Re-check pulled sets file by file against GCS, their MANIFEST.json, or what pull recorded."""
    script("verify", *_flag(offline, "--offline"), *_opt(dir, "--dir"), *_flag(json, "--json"))


# -- VM safety: status, setup, cleanup, sweep ------------------------------------------------------------


@ops_task(help={"usage": "per-VM and per-run cost over the last 30 days", "json": "print JSON",
                "csv": "print the 30-day usage as CSV (per VM, per run, total)"})
def status(c, usage=False, json=False, csv=False):
    """Image, ops-hpc VMs (uptime, time left, cost so far), bucket, and with --usage 30 days of costs."""
    script("status", *_flag(usage, "--usage"), *_flag(json, "--json"), *_flag(csv, "--csv"))


@ops_task
def setup(c):
    """Check credentials, project, APIs, OS Login, bucket (created if missing), IAM permissions and CPU quota."""
    from lib import preflight

    checks = preflight.run_checks(_cfg(), on_check=lambda check: print(check.line()))
    failed = [ch for ch in checks if ch.status == "fail"]
    if failed:
        raise Exit(f"{len(failed)} check(s) failed: fix the lines marked FAIL and rerun `make setup`", code=1)
    unchecked = [ch.name for ch in checks if ch.status == "skip" and ch.fix]  # could not check: said, not passed
    print("setup: all checks passed" + (f"; not checked: {', '.join(unchecked)} (see its line)" if unchecked else ""))


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

    result = sweep_mod.cleanup(_cfg(), confirm=confirm, on_log=print)
    if result.get("failed"):
        raise Exit(code=1)


@ops_task(help={"dry_run": "show, change nothing", "grace": "minutes past expected end", "pull": "also pull results",
                "install": "print the cron/schtasks entry (with --yes: install or replace it)", "yes": "with --install"})
def sweep(c, dry_run=False, grace=None, pull=False, install=False, yes=False):
    """Delete stopped or overdue ops-hpc VMs now (what the cron/Task Scheduler job runs)."""
    script("sweep", *_flag(dry_run, "--dry-run"), *_opt(grace, "--grace"), *_flag(pull, "--pull"),
           *_flag(install, "--install"), *_flag(yes, "--yes"))


@ops_task
def config(c):
    """Every effective setting, with where it came from (flag, environment, ops-hpc.toml, gcloud, default)."""
    from lib import config as config_lib

    for key, value, source in config_lib.effective():
        print(f"{key:>22} = {value!s:<40} ({source})")


# -- vm.* ------------------------------------------------------------------------------------------------


@ops_task(help={"kind": "analysis or build", "timeouts": "job timeouts in minutes, e.g. 30,60", "spot": "Spot VM",
                "dry_run": "print the VM and worst-case cost only", "delete": "delete VM NAME instead"})
def launch(c, kind="analysis", timeouts="", spot=False, dry_run=False, delete=""):
    """Create an ops-hpc VM (or --delete NAME); see bin/launch --help for every option."""
    if delete:
        script("launch", "--delete", delete)
        return
    script("launch", "--kind", kind, *_opt(timeouts, "--timeouts"), *_flag(spot, "--spot"),
           *_flag(dry_run, "--dry-run"))


@ops_task(help={"name": "VM name"})
def delete(c, name=""):
    """Delete VM NAME now (ops-hpc VMs only): anything not pushed is lost."""
    from lib import controls

    controls.delete_vm(_cfg(), _need_name(name), on_log=print)


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


@ops_task(help={"name": "VM name", "folder": "folder(s) under /tmp/ops-hpc-analysis, comma-separated (default: all)",
                "method": "auto, curl or gcloud"})
def push(c, name="", folder="", method="auto"):
    """Push VM NAME's analysis folders to gs://BUCKET/<folder>_YYYYMMDD-HHMMSS/ (then `make pull`)."""
    script("push", _need_name(name), *[f for f in folder.split(",") if f], "--with", method)


@ops_task(help={"name": "VM name", "path": "file on the VM (relative = under /tmp/ops-hpc-analysis)", "dest": "local folder"})
def download(c, name="", path="", dest="."):
    """Copy ONE small file from VM NAME by scp (folders and files over 50 MB: push, then pull)."""
    from lib import push as push_lib

    if not path:
        raise Exit("error: pass --path FILE", code=2)
    push_lib.download(_cfg(), _need_name(name), path, Path(dest), on_log=print)


# -- image.* ---------------------------------------------------------------------------------------------


@ops_task(name="list", help={"all": "every image of the project, not only ops-hpc's"})
def image_list(c, all=False):
    """The opensees-hpc images: name, family, creation, size, state."""
    from lib import images

    rows = images.list_images(_cfg(), all_images=all)
    for i in rows:
        print(f"{i['name']:45} {i['family'] or '-':16} {i['created'][:19]} {i['size'] / 1e9:8.2f} GB "
              f"{i['deprecated'] or 'ACTIVE'}{'' if i['ours'] else '  (not ops-hpc)'}")
    if not rows:
        print("no ops-hpc images: build one with `make build`")


def _image_name(name: str, action: str) -> str:
    if not name:
        raise Exit(f"error: image {action} needs --name IMAGE (`invoke image.list` lists them)", code=2)
    return name


@ops_task(name="archive", help={"name": "image name"})
def image_archive(c, name=""):
    """Deprecate image NAME: kept, no longer picked by the family."""
    from lib import images

    images.archive(_cfg(), _image_name(name, "archive"), on_log=print)


@ops_task(name="restore", help={"name": "image name"})
def image_restore(c, name=""):
    """Undo archive: image NAME is active again."""
    from lib import images

    images.restore(_cfg(), _image_name(name, "restore"), on_log=print)


@ops_task(name="delete", help={"name": "image name", "yes": "delete without asking"})
def image_delete(c, name="", yes=False):
    """Delete image NAME (asks first unless --yes)."""
    from lib import images

    confirm = None if yes else (lambda q: sys.stdin.isatty() and input(f"{q} [y/N] ").strip().lower() == "y")
    images.delete(_cfg(), _image_name(name, "delete"), on_log=print, on_confirm=confirm)


@ops_task(help={"image_name": "image name (default opensees-hpc-YYYYMMDD-HHMMSS-xxxx)"})
def build(c, image_name=None):
    """Build the opensees-hpc image: spot VM, build OpenSees/OpenSeesMP, image from its disk, VM deleted."""
    from lib import build as build_lib

    cfg = _cfg()
    _need_gcloud(cfg)
    image = build_lib.build_image(cfg, on_log=print, image_name=image_name)
    print(f"built image {image['name']} in family {image['family']}")


# -- run.* -----------------------------------------------------------------------------------------------


def _print_run(out: dict) -> None:
    if "table" in out:
        print(out["table"])
        for vm, secs in out["upload_to_delete_s"].items():
            when = f"{secs:.1f} s" if secs is not None else "(time unknown)"
            print(f"{vm}: deleted {when} after its last result upload ({out['deleted_how'].get(vm) or '?'})")
        print(f"wall time {out['wall_s']:.1f} s, OpenSees time {out['opensees_s']:.1f} s, "
              f"orchestration overhead {out['overhead_s']:.1f} s")


@ops_task(name="staged", help={"batch": "batch file (default batches/example.txt)", "wait": "follow, pull, summarise",
                               "vms": "shard the models across N VMs (balanced by predicted packed makespan)",
                               "spot": "spot VMs (with --wait a preempted VM's unfinished models are relaunched)",
                               "dir": "results folder for --wait", "run_id": "stage into this run id",
                               "no_fallback": "after the spot retries, do not fall back to an on-demand VM",
                               "rerun": "re-run only the unfinished models of run RERUN (its staged inputs)",
                               "machine_type": "machine type of the VMs, or auto: the cheapest of machine_types "
                                               "that fits and finishes soonest",
                               "dry_run": "print the plan and its expected/worst-case cost; create nothing",
                               "json": "with --dry-run: the plan as JSON",
                               "yes": "launch even if the worst-case cost is above confirm_above_usd",
                               "retries": "re-run a failed (not timed-out) model up to N times on its VM "
                                          "(lines with retries= keep theirs)"})
def run_staged(c, batch="batches/example.txt", wait=False, vms=1, spot=False, dir=None, run_id=None,
               no_fallback=False, rerun=None, machine_type=None, yes=False, dry_run=False, json=False, retries=0):
    """Stage BATCH, launch self-deleting VM(s) that run it; --wait follows, pulls each result and summarises."""
    from lib import costplan, runstaged

    def ask(question: str) -> bool:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")

    try:
        out = runstaged.run_staged(_cfg(), None if rerun else batch, wait=wait, vms=int(vms), spot=spot or None,
                                   results_dir=dir, run_id=run_id, on_demand_fallback=not no_fallback,
                                   on_log=cli.err, rerun=rerun, machine_type=machine_type or None, dry_run=dry_run,
                                   yes=yes, ask=ask if sys.stdin.isatty() else None, retries=int(retries)).to_json()
    except KeyboardInterrupt:
        if not wait:
            raise
        raise Exit(WAIT_INTERRUPTED, code=cli.EXIT_INTERRUPTED) from None
    if dry_run:
        if json:
            cli.print_json(out["plan"])
        else:
            print("\n".join(costplan.format_preview(out["plan"])))
            print("dry run: nothing was staged or created")
        return
    print(out["run_id"])
    _print_run(out)
    if out.get("lost"):
        raise Exit(code=1)


@ops_task(help={"batch": "batch file", "run_id": "stage into this run id (default: a new one)"})
def stage(c, batch="batches/example.txt", run_id=None):
    """Zip and upload BATCH's models to _uploads/RUN_ID/ (same as bin/stage)."""
    script("stage", batch, *_opt(run_id, "--run-id"))


@ops_task(help={"run_id": "run id (default: the latest run)", "tail": "log lines to show",
                "follow": "print the logs as they grow until the run ends (Ctrl+C leaves the run alone)",
                "model": "with --follow: only this model (default: all, each line prefixed MODEL| )"})
def log(c, run_id=None, tail=20, follow=False, model=None):
    """Progress of a run-staged run and the tail of its current (or last) model's log; -f follows it live."""
    from lib import runlog

    if follow:
        runlog.follow(_cfg(), run_id, model, on_line=lambda line: print(line, flush=True), on_event=cli.err)
        return
    print(runlog.format_log(runlog.run_log(_cfg(), run_id, tail=int(tail))))


@ops_task(help={"limit": "newest N runs (0: all; default 20)", "since": "only runs since: 7d, 12h, 2026-12-01",
                "dir": "results folder whose downloads count", "json": "machine-readable"})
def runs(c, limit=20, since=None, dir="", json=False):
    """Every run, newest first: VMs, models ok/failed/timeout/running/lost, duration, cost, results pulled."""
    script("runs", "--limit", str(limit), *_opt(since, "--since"), *_opt(dir, "--dir"), *_flag(json, "--json"))


@ops_task(help={"tail": "also print the models' log lines while they run"})
def demo(c, tail=False):
    """The whole run-staged pipeline on the local cloud with real OpenSees; results in ./results/."""
    from lib.demo import demo as run_demo

    _need_opensees()
    home = paths.REPO if paths.CHECKOUT else Path.cwd()
    out = run_demo(home / ".state", home / "results", on_log=cli.err, tail=tail)
    _print_run(out)
    print(f"results verified against their manifests in {out['results_dir']}; bucket holds no results; "
          f"local cloud stopped, no process left; demo took {out['demo_wall_s']:.1f} s")
    print(f"report: {out['report']}")


def _need_opensees() -> None:
    """The local cloud's VMs run `python -m opensees`: say so in one line where it has no wheel."""
    import importlib.util

    if importlib.util.find_spec("opensees") is None:
        raise Exit("error: the demo's local VMs need the OpenSees Python package, which is not installed here (it has "
                   "wheels for Linux x86_64 and Windows x64 only): `pip install 'ops-hpc[local]'` on one of those, "
                   "or run against real GCP (README: quick start)", code=cli.EXIT_USAGE)


@ops_task(name="jobs", help={"jobs": "jobs file (batch format: FOLDER [main=] [cores=] [timeout=MINUTES])",
                             "name": "VM name"})
def run_jobs(c, jobs="batches/jobs.txt", name=None):
    """Run JOBS on one VM over ssh: per-job deadlines (make extend), output streamed, results pushed per job."""
    from lib import runjobs

    cfg = _cfg()
    _need_gcloud(cfg)
    result = runjobs.run_jobs(cfg, jobs, on_log=print, on_line=print, name=name)
    if not result.ok:
        raise Exit("some jobs did not finish or their results were not pushed (see above)", code=1)


# -- development -----------------------------------------------------------------------------------------


@ops_task(help={"k": "only tests matching this expression", "workers": "parallel workers (default 2)"})
def test(c, k="", workers=2):
    """Lint (ruff), then the test suite on the local cloud (what `make test` runs)."""
    for argv in ([sys.executable, "-m", "ruff", "check", str(paths.REPO)],
                 [sys.executable, "-m", "pytest", "-q", "-n", str(workers), *(["-k", k] if k else [])]):
        code = subprocess.run(argv, cwd=paths.REPO).returncode
        if code:
            raise Exit(code=code)


# -- the namespace -----------------------------------------------------------------------------------------


def namespace() -> Collection:
    """The task tree: namespaces for each area, the everyday jobs also at the top (the Makefile's flat names)."""
    ns = Collection()
    ns.add_collection(Collection("localcloud", localcloud_up, localcloud_down, localcloud_status))
    ns.add_collection(Collection("results", pull, watch, verify))
    vm = Collection("vm", launch, delete, abort, emergency, monitor, extend, push, download)
    ns.add_collection(vm)
    ns.add_collection(Collection("image", image_list, image_archive, image_restore, image_delete, build))
    run = Collection("run", stage, log, demo, runs)
    run.add_task(run_staged, name="staged")
    run.add_task(run_jobs, name="jobs")
    ns.add_collection(run)
    for job in (setup, status, cleanup, sweep, config, build, demo, test, pull, watch, verify, stage, log, runs):
        ns.add_task(job)
    ns.add_task(run_staged, name="run-staged")  # `run` itself is the namespace: the ssh pipeline is run.jobs
    for name, job in (("launch", launch), ("push", push), ("monitor", monitor), ("extend", extend), ("abort", abort),
                      ("emergency", emergency), ("delete-vm", delete), ("download", download)):
        ns.add_task(job, name=name)
    ns.add_task(delete, name="stop-vm")  # the older name of delete-vm
    return ns


ns = namespace()


def program_run(argv: Sequence[str], *, name: str = "ops-hpc") -> None:
    """Run invoke's command line over this namespace (what `invoke` and `ops-hpc TASK` do)."""
    from invoke import Program

    Program(namespace=ns, name=name, binary=name, version="").run([name, *argv])
