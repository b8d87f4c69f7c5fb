"""Follow a launched run to its end: observe the bucket and the VMs, decide with a pure plan, then act.

    Follower.poll()            -> Observation  (VMs gone since the last look and how they went, every VM's
                                                status, the result zips in the bucket)
    plan(obs, followed, policy) -> Actions     (pull these models; relaunch those as spot or on-demand;
                                                mark these lost; rescue stranded results; delete these VMs)
    Follower.apply(actions)                    (does it, logs it, records it in `followed`)

The rules live in `plan`, which touches nothing, so they are table-tested without a cloud:
- a spot VM that went away before its status said done has its unfinished models (no result in the
  bucket or on the PC) relaunched: as spot `spot_retries` times per chain, then on demand if allowed;
  finished models are never rerun; any other loss is reported in `lost`;
- a VM that reports done and is still there `done_grace_s` later (its self-delete was refused) is deleted;
  one that reports self_delete_refused is deleted at once;
- a VM that reports stranded results (their upload failed) has them rescued first, then is deleted;
- a result set the pull refused is retried only when its generation changes or after a backoff, and it
  is logged once per generation; when no VM is left, such a model is lost (its result stays in the bucket).

(Over 400 lines on purpose: poll, plan and apply share the Observation/Actions records and read best
side by side; plan is the pure part and is tested alone.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lib import clients, compute, retry, storage
from lib.config import Config
from lib.log import Log, quiet
from lib.naming import vm_name
from lib.runstaged.launch import VmRun, launch
from lib.runstatus import FINAL, SELF_DELETE_REFUSED, VM_DONE, read_statuses, running_models, stranded
from lib.stage import StagedModel

if TYPE_CHECKING:
    from lib.state import SessionState

PULLED = ("cleaned", "downloaded", "done")


@dataclass(frozen=True)
class Policy:
    """The knobs of the follow rules."""

    spot_retries: int = 2
    on_demand_fallback: bool = True
    done_grace_s: float = 5.0  # a VM still there this long after its status said done is deleted by the PC
    pull_backoff_s: float = 5.0  # first wait before a refused result set is tried again (doubles)
    pull_backoff_max_s: float = 300.0


@dataclass
class FailedPull:
    generation: int
    retry_at: float
    backoff: float


@dataclass
class Followed:
    """What following a run observed and did (the history `plan` decides from)."""

    run_id: str
    vms: list[VmRun]
    expected: list[str] = field(default_factory=list)
    pulled: dict[str, str] = field(default_factory=dict)  # model -> pull status
    lost: dict[str, str] = field(default_factory=dict)  # model -> why it has no result
    relaunches: int = 0
    failed_pulls: dict[str, FailedPull] = field(default_factory=dict)
    done_seen: dict[str, float] = field(default_factory=dict)  # VM -> when it was first seen done and still there
    rescued: dict[str, list[str]] = field(default_factory=dict)  # VM -> results copied off it by the PC
    deleted: list[str] = field(default_factory=list)  # VMs the follower deleted
    deadline: float = float("inf")  # time.time() after which unaccounted models are given up

    @property
    def complete(self) -> bool:
        return not self.lost


@dataclass
class Observation:
    """One look at the world; `gone` is read first, so a gone VM's last status and zips are in the rest."""

    now: float
    gone: dict[str, tuple[float | None, str]] = field(default_factory=dict)  # VM -> (when, how) found gone now
    present: set[str] = field(default_factory=set)  # VMs checked now and still there
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # VM -> its newest status
    landed: dict[str, int] = field(default_factory=dict)  # model -> generation of RUN_ID/MODEL.zip


@dataclass(frozen=True)
class Relaunch:
    models: tuple[str, ...]
    spot: bool
    machine_type: str
    attempt: int
    after: str  # the VM that went away


@dataclass
class Actions:
    pull: list[str] = field(default_factory=list)
    relaunch: list[Relaunch] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)  # VMs to record as gone
    done_seen: list[str] = field(default_factory=list)  # VMs seen done (and still there) for the first time
    rescue: list[str] = field(default_factory=list)  # VMs whose stranded results go to the bucket, then delete
    delete: list[str] = field(default_factory=list)  # VMs that finished but are still there
    finished: bool = False


def plan(obs: Observation, followed: Followed, policy: Policy = Policy()) -> Actions:
    """Decide what to do about one observation. Pure: reads `obs` and `followed`, changes neither."""
    acts = Actions()
    for model, generation in sorted(obs.landed.items()):
        if model not in followed.expected or model in followed.pulled:
            continue
        failed = followed.failed_pulls.get(model)
        if failed and failed.generation == generation and obs.now < failed.retry_at:
            continue
        acts.pull.append(model)
    relaunched: set[str] = set()
    for vm in followed.vms:
        if vm.gone:
            continue
        status = obs.statuses.get(vm.name) or vm.status
        state = status.get("state", "launching")
        if vm.name in obs.gone:
            acts.gone.append(vm.name)
            _, how = obs.gone[vm.name]
            missing = [m for m in vm.models if m not in followed.pulled and m not in obs.landed
                       and m not in followed.lost]
            if not missing:
                continue
            if state in VM_DONE or vm.name in followed.deleted:  # finished, or the PC deleted it after a rescue
                why = "stranded on it" if set(missing) & set(stranded(status)) else "not produced"
                for m in missing:
                    acts.lost[m] = f"VM {vm.name} ended ({state}) and went away ({how}) with the result {why}"
            elif vm.spot and (vm.attempt < policy.spot_retries or policy.on_demand_fallback):
                acts.relaunch.append(Relaunch(tuple(missing), vm.attempt < policy.spot_retries, vm.machine_type,
                                              vm.attempt + 1, vm.name))
                relaunched.update(missing)
            else:
                for m in missing:
                    acts.lost[m] = f"VM {vm.name} went away ({how}) before it finished"
        elif vm.name in obs.present and state in VM_DONE and vm.name not in followed.deleted:
            if stranded(status) and vm.name not in followed.rescued:
                acts.rescue.append(vm.name)
            elif state == SELF_DELETE_REFUSED:  # it said so itself: no grace to wait out
                acts.delete.append(vm.name)
            elif vm.name not in followed.done_seen:
                acts.done_seen.append(vm.name)
            elif obs.now - followed.done_seen[vm.name] >= policy.done_grace_s:
                acts.delete.append(vm.name)
    accounted = set(followed.pulled) | set(followed.lost) | set(acts.lost)
    waiting = [m for m in followed.expected if m not in accounted]
    vms_left = any(not v.gone and v.name not in acts.gone for v in followed.vms) or bool(acts.relaunch)
    if not vms_left:
        for m in waiting:
            failed = followed.failed_pulls.get(m)
            if m in obs.landed and failed and failed.generation == obs.landed[m] and m not in acts.pull:
                acts.lost[m] = "the pull refused its result (kept in the bucket; see the pull's reason above)"
            elif m not in obs.landed and m not in relaunched:
                acts.lost[m] = "no VM is left to produce it"
        waiting = [m for m in waiting if m not in acts.lost]
    if not waiting and not vms_left:
        acts.finished = True
    elif obs.now > followed.deadline:
        for m in waiting:
            acts.lost.setdefault(m, "no result before the follow deadline (it may still come: `bin/pull` later)")
        acts.finished = True
    return acts


def _deletion(cfg: Config, vm: VmRun) -> tuple[float | None, str]:
    """When and how a VM went away, from its zone operations (GCE and the local cloud record them alike)."""
    if not vm.id:
        return None, "unknown"
    from google.cloud import compute_v1 as c

    cfg = cfg.replace(zone=vm.zone) if vm.zone else cfg
    request = c.ListZoneOperationsRequest(project=cfg.project, zone=cfg.zone, filter=f'targetId = "{vm.id}"')
    try:
        ops = retry.listing(clients.zone_operations(cfg).list, request=request)
    except Exception:
        return None, "unknown"
    ends = [o for o in ops if o.operation_type in ("delete", "compute.instances.preempted",
                                                     "compute.instances.maxRunDurationExceeded")]
    if not ends:
        return None, "unknown"
    op = max(ends, key=lambda o: o.end_time or o.insert_time)
    return compute._epoch(op.end_time or op.insert_time), op.operation_type


Puller = Callable[[list[str]], list[Any]]  # set ids -> results.Outcome-like (id, status, reason, model_state)


class Follower:
    """The observe / plan / apply loop over one run; `run()` returns the Followed record."""

    def __init__(self, cfg: Config, run_id: str, models: list[StagedModel], runs: list[VmRun], *,
                 results_dir: Path, policy: Policy = Policy(), image: str | None = None, on_log: Log = quiet,
                 tail: bool = True, log_every: float = 2.0, deadline_s: float | None = None,
                 state: SessionState | None = None, puller: Puller | None = None) -> None:
        from lib.state import SessionState  # state imports compute: here, as everywhere in the run pipeline

        self.cfg = clients.resolve(cfg)
        self.state = state or SessionState(self.cfg)
        self.models = {m.name: m for m in models}
        self.results_dir = Path(results_dir)
        self.policy, self.image, self.on_log, self.tail, self.log_every = policy, image, on_log, tail, log_every
        total_s = sum(m.timeout_min * (1 + m.retries) for m in models) * 60 / max(self.cfg.time_scale, 1e-9) + 600
        self.followed = Followed(run_id=run_id, vms=list(runs), expected=[m.name for m in models],
                                 deadline=time.time() + (deadline_s if deadline_s is not None else total_s))
        self.puller = puller or self._pull
        self._cache: dict[str, Any] = {}
        self._checked: dict[str, float] = {}
        self._shown: dict[str, str] = {}
        self._started: set[str] = set()
        self._log_lines: dict[str, int] = {}
        self._last_tail = 0.0

    # -- observe

    def poll(self) -> Observation:
        """VMs first (a VM found gone has already published its last status and uploaded its zips)."""
        cfg, run_id = self.cfg, self.followed.run_id
        obs = Observation(now=time.time())
        for vm in self.followed.vms:
            if vm.gone:
                continue
            # a VM that says it is done is watched closely (its deletion is timed); others every 2 s
            if vm.state not in VM_DONE + ("preempted",) and time.monotonic() - self._checked.get(vm.name, 0.0) < 2.0:
                continue
            self._checked[vm.name] = time.monotonic()
            if compute.get_vm(self._at(vm.name), vm.name) is not None:
                obs.present.add(vm.name)
                continue
            when, how = _deletion(cfg, vm)
            obs.gone[vm.name] = (when or time.time(), how)
        obs.statuses = read_statuses(cfg, run_id, self._cache)
        obs.landed = {b.name[len(run_id) + 1:-4]: int(b.generation or 0)
                      for b in storage.list_blobs(cfg, f"{run_id}/") if b.name.endswith(".zip")}
        return obs

    # -- act

    def apply(self, obs: Observation, acts: Actions) -> None:
        f, log = self.followed, self.on_log
        for vm in f.vms:
            vm.status = obs.statuses.get(vm.name, vm.status)
            self._show(vm)
        if acts.pull:
            self._apply_pulls(obs, acts.pull)
        if self.tail and time.monotonic() - self._last_tail > self.log_every:
            self._last_tail = time.monotonic()
            for vm in f.vms:
                if vm.state == "running" and not vm.gone:
                    for cur in running_models(vm.status):
                        _tail(self.cfg, f.run_id, cur, self._log_lines, log)
        for name in acts.done_seen:
            f.done_seen[name] = obs.now
        for name in acts.rescue:
            self._rescue_and_delete(name, obs)
        for name in acts.delete:
            vm = self._vm(name)
            if vm.state == SELF_DELETE_REFUSED:
                log(f"{name}: reports its self-delete was refused: deleting it")
            else:
                log(f"{name}: reported {vm.state} but is still there {obs.now - f.done_seen.get(name, obs.now):.0f} "
                    "s later (its self-delete was refused?): deleting it")
            compute.delete_vm(self._at(name), name, on_log=log, state=self.state)
            f.deleted.append(name)
        for name in acts.gone:
            vm = self._vm(name)
            vm.gone = True
            vm.gone_at, vm.how = obs.gone[name]
            self.state.unregister_vm(name)
            unfinished = [m for m in vm.models if m not in f.pulled and m not in obs.landed]
            if name in f.deleted:
                log(f"{name}: was deleted by ops-hpc ({_since_upload(vm)})")
            elif vm.state in VM_DONE and not unfinished:
                log(f"{name}: deleted itself ({_since_upload(vm)})")
            else:
                log(f"{name}: gone while {vm.state} ({vm.how}); unfinished: {', '.join(unfinished) or 'none'}")
        for r in acts.relaunch:
            name = vm_name(f.run_id, relaunch=f.relaunches + 1)  # unique within the run
            log(f"relaunching {', '.join(r.models)} on {'spot' if r.spot else 'on-demand'} VM {name}")
            new = launch(self.cfg, f.run_id, [[self.models[m] for m in r.models]], total=len(f.expected),
                         spot=r.spot, image=self.image, machine_type=r.machine_type, names=[name], on_log=log,
                         state=self.state, on_demand_fallback=self.policy.on_demand_fallback,
                         cores=self._vm(r.after).cores or None)[0]
            new.attempt = r.attempt
            f.vms.append(new)
            f.relaunches += 1
        f.lost.update(acts.lost)
        if acts.finished and acts.lost:
            log("giving up following: " + ", ".join(f"{m} ({why})" for m, why in acts.lost.items()))

    def _apply_pulls(self, obs: Observation, models: list[str]) -> None:
        f, log = self.followed, self.on_log
        for o in self.puller([f"{f.run_id}/{m}" for m in models]):
            model = o.id.split("/", 1)[1]
            if o.status in PULLED:
                f.pulled[model] = o.status
                f.failed_pulls.pop(model, None)
                log(f"{model}: result pulled into {self.results_dir / f.run_id / model} ({o.model_state or '?'})")
                continue
            generation = obs.landed.get(model, 0)
            before = f.failed_pulls.get(model)
            if before is None or before.generation != generation:
                backoff = self.policy.pull_backoff_s
                log(f"{model}: pull {o.status}: {o.reason} (kept in the bucket; tried again when it changes or "
                    f"in {backoff:.0f} s)")
            else:
                backoff = min(before.backoff * 2, self.policy.pull_backoff_max_s)
            f.failed_pulls[model] = FailedPull(generation, obs.now + backoff, backoff)

    def _rescue_and_delete(self, name: str, obs: Observation) -> None:
        from lib import controls

        f, vm = self.followed, self._vm(name)
        wanted = stranded(vm.status)
        self.on_log(f"{name}: reports stranded result(s) {', '.join(wanted)}: copying them to the bucket over ssh")
        try:
            rescued = controls.rescue_stranded(self._at(name), name, on_log=self.on_log)
        except Exception as exc:  # ssh may be closed: the VM keeps retrying its uploads itself
            self.on_log(f"{name}: rescue failed ({exc}); the VM keeps retrying its uploads until its max run end")
            f.rescued[name] = []
            return
        f.rescued[name] = rescued
        if {f"{f.run_id}/{m}.zip" for m in wanted} <= set(rescued):
            compute.delete_vm(self._at(name), name, on_log=self.on_log, state=self.state)
            f.deleted.append(name)
            f.done_seen.setdefault(name, obs.now)

    def _at(self, name: str) -> Config:
        """The config addressing VM `name` in the zone it was created in (a failover may have moved it)."""
        zone = next((v.zone for v in self.followed.vms if v.name == name and v.zone), "")
        return self.cfg.replace(zone=zone) if zone else compute.placed(self.cfg, name)

    def _vm(self, name: str) -> VmRun:
        return next(v for v in self.followed.vms if v.name == name)

    def _show(self, vm: VmRun) -> None:
        running = running_models(vm.status)
        line = f"{vm.state} {vm.status.get('current')}/{vm.status.get('models')} {running}"
        if vm.status and self._shown.get(vm.name) != line:
            self._shown[vm.name] = line
            self.on_log(f"{vm.name}: {vm.state}" + (f", started {vm.status.get('current')}/{vm.status.get('models')}"
                                                    f", running {', '.join(running)}" if running else ""))
        for model, info in vm.status.get("per_model", {}).items():
            key = f"{vm.name}/{model}"
            if info["state"] == "running" and key not in self._started:
                self._started.add(key)
                self.state.job_started(vm.name, model)
            elif info["state"] in FINAL and key in self._started:
                self._started.discard(key)
                self.state.job_finished(vm.name, model, info["state"])

    def _pull(self, set_ids: list[str]) -> list[Any]:
        from lib import results

        return results.pull(self.cfg, self.results_dir, only=set_ids, on_log=self.on_log).outcomes

    # -- the loop

    def run(self, interval: float = 0.5) -> Followed:
        try:
            while True:
                obs = self.poll()
                acts = plan(obs, self.followed, self.policy)
                self.apply(obs, acts)
                if acts.finished:
                    return self.followed
                time.sleep(interval)
        except KeyboardInterrupt:
            self.hand_over()
            raise

    def hand_over(self) -> None:
        """Ctrl+C: the VMs run on and delete themselves. Their models stop being 'running' in session state, so
        the next command does not call the analysis interrupted when a VM it no longer follows is gone."""
        for key in sorted(self._started):
            vm, _, model = key.partition("/")
            try:
                self.state.job_finished(vm, model, "handed-over")
            except Exception:  # a locked or unreadable state file must not hide the interruption
                pass
        self._started.clear()


def follow(cfg: Config, run_id: str, models: list[StagedModel], runs: list[VmRun], *, results_dir: Path,
           spot_retries: int = 2, on_demand_fallback: bool = True, poll: float = 0.5, log_every: float = 2.0,
           image: str | None = None, on_log: Log = quiet, tail: bool = True, deadline_s: float | None = None,
           state: SessionState | None = None) -> Followed:
    """Follow a launched run to its end: progress, log tails, pull each result as it lands, handle preemption."""
    policy = Policy(spot_retries=spot_retries, on_demand_fallback=on_demand_fallback)
    return Follower(cfg, run_id, models, runs, results_dir=results_dir, policy=policy, image=image, on_log=on_log,
                    tail=tail, log_every=log_every, deadline_s=deadline_s, state=state).run(poll)


def _since_upload(vm: VmRun) -> str:
    seconds = upload_to_delete_s(vm)
    return f"{seconds:.1f} s after its last result upload" if seconds is not None else "no upload recorded"


def upload_to_delete_s(vm: VmRun) -> float | None:
    """Seconds between the VM's last result upload (its own clock) and its deletion."""
    try:
        last = float(vm.status.get("last_upload") or "")
    except ValueError:
        return None
    return None if vm.gone_at is None else max(0.0, vm.gone_at - last)


def _tail(cfg: Config, run_id: str, model: str, seen: dict[str, int], on_log: Log) -> None:
    raw = storage.download_bytes(cfg, f"_logs/{run_id}/{model}.log")
    if raw is None:
        return
    lines = raw.decode("utf-8", "replace").splitlines()
    for line in lines[seen.get(model, 0):]:
        on_log(f"  [{model}] {line}")
    seen[model] = len(lines)
