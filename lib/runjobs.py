"""The run pipeline: one VM from the opensees-hpc image runs a jobs file over ssh, job after job.

    plan + create VM -> VMGuard -> wait_for_ssh -> for each job:
        upload its folder -> Deadline(job.timeout_min) + watchdog -> `openseesmp N main.tcl` streamed
        to on_line and a log file -> on deadline: kill it (what it wrote stays) -> push its folder to
        gs://BUCKET/<job>_<stamp>/ in the background
    -> wait for the pushes -> delete the VM -> disarm
Interrupted (Ctrl+C, kill), the guard also waits for the pushes in flight (upload_timeout_min at most;
a second Ctrl+C deletes the VM at once), so a finished job's results are not cut off mid-upload.

A job that fails or times out does not stop the run: the next job starts. The jobs file is the batch
format (lib/batches.py). Deadlines are extended with `make extend MINUTES=N` from any terminal
(lib/deadline.py); the VM's ops-hpc-end label follows, so the sweeper leaves an extended run alone.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lib import clients, compute, push, runs, ssh, storage
from lib.batches import Model, parse_batch
from lib.config import Config
from lib.deadline import CHECK_S, Channel, Deadline, Watchdog
from lib.errors import OpsError
from lib.guard import VMGuard
from lib.log import Log
from lib.naming import new_run_id, vm_name
from lib.state import SessionState

PID_DIR = "/tmp/ops-hpc/jobs"


@dataclass
class JobResult:
    name: str
    state: str = "pending"  # finished | failed | timeout | pending
    exit_code: int | None = None
    seconds: float = 0.0
    extended_min: float = 0.0
    log: str = ""
    pushed: list[dict[str, Any]] = field(default_factory=list)
    push_error: str = ""


@dataclass
class RunResult:
    run_id: str
    vm: str
    jobs: list[JobResult]
    deleted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "vm": self.vm, "deleted": self.deleted, "jobs": [asdict(j) for j in self.jobs]}

    @property
    def ok(self) -> bool:
        return all(j.state == "finished" and not j.push_error for j in self.jobs)


def job_command(job: Model, remote_dir: str) -> str:
    """cd into the job's folder, record the pid for the deadline kill, and become openseesmp (exec keeps the pid)."""
    pidfile = ssh.rpath(f"{PID_DIR}/{job.name}.pid")
    return (f"mkdir -p {ssh.rpath(PID_DIR)} && cd {ssh.rpath(remote_dir)} && echo $$ > {pidfile} && "
            f"exec openseesmp {int(job.cores)} {shlex.quote(job.main)}")


def kill_command(job_name: str, grace_s: int = 5) -> str:
    """TERM the job's process group (mpirun and its ranks, or OpenSees), KILL it after grace_s."""
    pidfile = ssh.rpath(f"{PID_DIR}/{job_name}.pid")
    return (f"p=$(cat {pidfile} 2>/dev/null) || exit 0; [ -n \"$p\" ] || exit 0; "
            f"kill -TERM -- -\"$p\" 2>/dev/null || kill -TERM \"$p\" 2>/dev/null; "
            f"for i in $(seq {grace_s * 5}); do kill -0 \"$p\" 2>/dev/null || exit 0; sleep 0.2; done; "
            f"kill -KILL -- -\"$p\" 2>/dev/null || kill -KILL \"$p\" 2>/dev/null; exit 0")


def run_jobs(
    cfg: Config,
    jobs_file: str | Path,
    *,
    on_log: Log = print,
    on_line: Log | None = None,
    on_deadline: Callable[[Deadline], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    name: str | None = None,
    image: str | None = None,
    log_dir: Path | None = None,
    time_scale: float = 1.0,
    check_s: float = CHECK_S,
    ssh_timeout: float = 600.0,
    push_method: str = "auto",
    state: SessionState | None = None,
) -> RunResult:
    """Run every job of `jobs_file` on one new VM; returns each job's outcome. The VM is deleted however it ends.

    image: NAME or family/F (default: the newest of cfg.image_family). time_scale makes the jobs' minutes pass that many times faster (tests: a few seconds per "minute"); check_s is the watchdog period.
    """
    batch = parse_batch(jobs_file)
    minute_s = 60.0 / time_scale  # the one clock knob is time_scale, as in config and Deadline
    cfg = clients.resolve(cfg)
    run_id = new_run_id()
    name = name or vm_name(run_id)
    state = state or SessionState(cfg)
    log_dir = Path(log_dir) if log_dir else cfg.state_path / "logs" / run_id
    log_dir.mkdir(parents=True, exist_ok=True)
    line_out = on_line or print
    results = [JobResult(m.name) for m in batch.models]
    run = RunResult(run_id, name, results)

    storage.ensure_bucket(cfg, on_log=on_log)  # before paying for a VM: results need somewhere to go
    spec = compute.plan_vm(cfg, name=name, kind="analysis", run_id=run_id, job_timeouts_min=batch.timeouts_min,
                           image=image, metadata={"ops-hpc-bucket": cfg.bucket_name})
    on_log(f"run {run_id}: {len(batch.models)} job(s) on {name}; results to gs://{cfg.bucket_name}/")
    uploads: list[threading.Thread] = []
    limit = cfg.upload_timeout_min * minute_s
    # entered first: it covers the creation too; an interrupt lets the pushes in flight finish (at most `limit`)
    with VMGuard(cfg, name, on_log=on_log, state=state, pending=lambda: uploads, hold_s=limit) as guard:
        sent = time.time()  # the VM may be up before create_vm returns: its cost counts from the insert
        vm = compute.create_vm(cfg, spec, on_log=on_log, state=state)
        cfg = cfg.replace(zone=vm.zone)  # where it landed: a zone out of capacity moves it on
        runs.record_vm(cfg, run_id, name, on_log=on_log, kind="run", machine_type=spec.machine_type, zone=vm.zone,
                       spot=vm.spot, launched=round(sent, 3), models=[m.name for m in batch.models])
        ssh.wait_for_ssh(cfg, name, ssh_timeout, on_log=on_log)
        push.install_tools(cfg, name, on_log=on_log)
        for index, (job, result) in enumerate(zip(batch.models, results, strict=True)):
            if on_progress is not None:
                on_progress(job.name, index + 1, len(batch.models))
            remaining_min = sum(m.timeout_min for m in batch.models[index + 1:])
            _run_one(cfg, name, job, result, spec, state, log_dir, line_out, on_log, on_deadline, minute_s,
                     check_s, remaining_min)
            if compute.get_vm(cfg, name) is None:
                on_log(f"VM {name} is gone (deleted or preempted): the run stops here")
                break
            uploads.append(_push_in_background(cfg, name, job.name, result, on_log, push_method))
        waited = time.monotonic()
        for thread in uploads:
            thread.join(max(0.0, limit - (time.monotonic() - waited)))
        late = [t.name for t in uploads if t.is_alive()]
        if late:
            on_log(f"uploads still running after {cfg.upload_timeout_min} min: {', '.join(late)}; deleting the VM anyway")
        run.deleted = compute.delete_vm(cfg, name, on_log=on_log, state=state)
        guard.disarm()
    runs.record_vm(cfg, run_id, name, on_log=on_log, ended=round(time.time(), 3), state="done",
                   jobs={r.name: r.state for r in results})
    for r in results:
        on_log(f"  {r.name}: {r.state}{' (exit ' + str(r.exit_code) + ')' if r.exit_code else ''}, {r.seconds:.0f} s"
               f"{', extended ' + format(r.extended_min, 'g') + ' min' if r.extended_min else ''}"
               f"{', pushed to ' + r.pushed[0]['prefix'] if r.pushed else ''}{', PUSH FAILED: ' + r.push_error if r.push_error else ''}")
    return run


def _run_one(cfg: Config, name: str, job: Model, result: JobResult, spec: compute.VmSpec, state: SessionState,
             log_dir: Path, on_line: Log, on_log: Log, on_deadline: Callable[[Deadline], None] | None,
             minute_s: float, check_s: float, remaining_min: int) -> None:
    remote_dir = f"{push.ANALYSIS_ROOT}/{job.name}"
    on_log(f"job {job.name}: uploading {job.folder}")
    ssh.upload(cfg, name, sorted(job.folder.iterdir()), remote_dir, on_log=on_log)
    log_path = log_dir / f"{job.name}.log"
    result.log = str(log_path)
    state.job_started(name, job.name)
    deadline = Deadline(job.timeout_min, time_scale=60.0 / minute_s)
    if on_deadline is not None:
        on_deadline(deadline)

    def expire() -> None:
        on_log(f"job {job.name}: deadline reached after {deadline.elapsed_s:.0f} s: killing it (its files stay)")
        ssh.run(cfg, name, kill_command(job.name), on_line=lambda s: on_log(f"  kill: {s}"))

    extended_to = [0.0]

    def on_watch(text: str) -> None:
        on_log(f"job {job.name}: {text}")
        if deadline.extended_min > extended_to[0]:  # keep the sweeper's view of the run's end in step
            extended_to[0] = deadline.extended_min
            end = deadline.end_epoch() + (remaining_min + cfg.upload_timeout_min + 1) * minute_s
            try:
                compute.set_expected_end(cfg, name, end)
            except Exception as exc:  # the job goes on; the sweeper's grace period still applies
                on_log(f"job {job.name}: could not move the VM's expected end: {exc}")

    channel = Channel(cfg, name, job.name, max_run_end=spec.max_run_end)
    watchdog = Watchdog(deadline, expire, channel=channel, interval=check_s, on_log=on_watch)
    on_log(f"job {job.name}: openseesmp {job.cores} {job.main} (deadline {job.timeout_min} min)")
    started = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:
        def line(text: str) -> None:
            log.write(text + "\n")
            log.flush()
            on_line(text)

        watchdog.start()
        try:
            code = ssh.run(cfg, name, job_command(job, remote_dir), on_line=line)
        finally:
            watchdog.stop()
    result.seconds = time.monotonic() - started
    result.exit_code = code
    result.extended_min = deadline.extended_min
    result.state = "timeout" if watchdog.fired else ("finished" if code == 0 else "failed")
    state.job_finished(name, job.name, result.state)
    on_log(f"job {job.name}: {result.state} after {result.seconds:.1f} s (exit {code})")


def _push_in_background(cfg: Config, name: str, job: str, result: JobResult, on_log: Log,
                        method: str) -> threading.Thread:
    def work() -> None:
        try:
            result.pushed = push.push(cfg, name, [job], on_log=on_log, method=method, install=False)
        except OpsError as exc:
            result.push_error = str(exc)
            on_log(f"job {job}: {exc}")
        except Exception as exc:  # a failed upload must not kill the run; it is reported
            result.push_error = f"{type(exc).__name__}: {exc}"
            on_log(f"job {job}: push failed: {result.push_error}")

    thread = threading.Thread(target=work, name=f"push-{job}", daemon=True)
    thread.start()
    return thread
