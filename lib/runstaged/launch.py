"""Launch: plan every VM of a run (quota summed over the fan-out), create each under a guard, wait for its first status.

    plan_vms (nothing created; every check that can fail is here) -> create each under a VMGuard
    -> wait until each VM writes its first status (it booted, read its metadata, reached the bucket)
    -> disarm: from here the VM runs on its own and deletes itself after its last upload

A VM whose startup script dies (its exit status shows in the serial console) or that publishes an
`error` status ends the wait at once: the guards then delete every VM of the launch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lib import clients, compute, notify, packing, paths, retry, storage, vmplan
from lib.config import Config
from lib.errors import OpsError
from lib.log import Log, quiet
from lib.naming import vm_name
from lib.runs import record_vm
from lib.runstatus import parse_status
from lib.stage import StagedModel
from lib.units import duration

if TYPE_CHECKING:
    from lib.state import SessionState

BOOT_TIMEOUT_LOCAL_S = 90.0
BOOT_TIMEOUT_GCE_S = 600.0


@dataclass
class VmRun:
    """One VM of a run, as the PC follows it."""

    name: str
    models: list[str]
    spot: bool
    machine_type: str
    attempt: int = 0
    id: str = ""
    created: float = 0.0
    confirmed: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)
    gone: bool = False
    gone_at: float | None = None
    how: str = ""  # delete (itself or someone) | compute.instances.preempted | ...maxRunDurationExceeded | unknown
    hourly: float | None = None
    cores: int = 0  # the usable cores it packs models into (a relaunch keeps them)
    zone: str = ""  # where it was created (a zone failover may move it out of the configured zone)

    @property
    def state(self) -> str:
        return self.status.get("state", "launching")


def _metadata(cfg: Config, run_id: str, models: Sequence[str], total: int, max_run_end: float,
              capacity: tuple[int, int]) -> dict[str, str]:
    """What run_analysis.sh reads: run, bucket, its shard, the clock scale, when Google will delete it, and
    the cores and memory (MB) it packs models into."""
    meta = {"ops-hpc-run-id": run_id, "ops-hpc-bucket": cfg.bucket_name, "ops-hpc-max-run-end": f"{max_run_end:.0f}",
            "ops-hpc-cores": str(capacity[0]), "ops-hpc-mem-mb": str(capacity[1])}
    if len(models) != total:
        meta["ops-hpc-models"] = ",".join(models)
    if cfg.local and cfg.time_scale != 1.0:
        meta["ops-hpc-time-scale"] = f"{cfg.time_scale:g}"
    meta.update(notify.vm_metadata(cfg))  # webhook URLs only: the VM tells them when its run ends
    return meta


def check_quota(specs: Sequence[compute.VmSpec],
                quota: Callable[[str, int, bool], list[dict[str, Any]]]) -> None:
    """Refuse a fan-out whose VMs do not fit the regional CPU quota together (each alone may fit).

    `quota(machine_type, vcpus, spot)` returns compute.cpu_quota's rows for that many vCPUs at once.
    """
    groups: dict[tuple[str, bool], list[compute.VmSpec]] = {}
    for spec in specs:
        groups.setdefault((spec.machine_type, spec.spot), []).append(spec)
    for (machine_type, spot), group in groups.items():
        needed = sum(s.guest_cpus for s in group)
        for row in quota(machine_type, needed, spot):
            if not row["ok"]:
                raise OpsError(
                    f"not enough {row['metric']} quota for {len(group)} VM(s) of {machine_type}: they need "
                    f"{needed} vCPUs, limit {row['limit']:g}, in use {row['usage']:g}; use fewer VMs (--vms) or "
                    "request an increase on the console's Quotas page (nothing was created)")


def vm_capacity(cfg: Config, machine_type: str | None, cores: int | None = None) -> tuple[int, int]:
    """(usable cores, memory MB) models are packed into on a VM of this machine type (lib/packing.usable_cores).

    cores: a batch's `#cores N` header, overriding the rule.
    """
    name = machine_type or cfg.machine_type
    info = vmplan.machine_type_info(cfg, name)
    return packing.usable_cores(name, int(info.guest_cpus), override=cores), int(info.memory_mb)


def plan_vms(cfg: Config, run_id: str, shards: Sequence[Sequence[StagedModel]], *, total: int,
             spot: bool = False, image: str | None = None, machine_type: str | None = None,
             names: Sequence[str] | None = None, cores: int | None = None) -> list[compute.VmSpec]:
    """Every VM of a launch, validated (machine type, image, max run duration, quota summed) before any exists.

    A model needing more cores or memory than the VM has is refused here. cores: the batch's `#cores N`.
    """
    cfg = clients.resolve(cfg)
    capacity = vm_capacity(cfg, machine_type, cores)
    packing.check_fits([m for shard in shards for m in shard], *capacity,
                       where=f"machine type {machine_type or cfg.machine_type}")
    names = list(names or [vm_name(run_id, shard=i + 1 if len(shards) > 1 else None) for i in range(len(shards))])
    script = paths.vm_script("startup.sh").read_text(encoding="utf-8")
    specs = []
    now = time.time()
    for name, shard in zip(names, shards, strict=True):
        timeouts = [m.timeout_min for m in shard]
        max_run_s = packing.max_run_seconds(shard, capacity[0], cfg.upload_timeout_min, mem_total_mb=capacity[1])
        end = now + max_run_s / (cfg.time_scale if cfg.local else 1.0)
        meta = _metadata(cfg, run_id, [m.name for m in shard], total, end, capacity)
        if "ops-hpc-notify" in meta:  # the VM's cost in its end message (list price)
            price = _price(cfg, machine_type or cfg.machine_type, spot)
            meta.update({"ops-hpc-hourly": f"{price:.6f}"} if price is not None else {})
        specs.append(compute.plan_vm(cfg, name=name, kind="analysis", run_id=run_id, image=image, spot=spot,
                                     machine_type=machine_type, job_timeouts_min=timeouts, startup_script=script, reports_status=True,
                                     metadata=meta, now=now, max_run_s=max_run_s))
    if len(specs) > 1:
        check_quota(specs, lambda mt, cpus, sp: compute.cpu_quota(cfg, mt, cpus, sp))
    return specs


def launch(cfg: Config, run_id: str, shards: Sequence[Sequence[StagedModel]], *, total: int | None = None,
           spot: bool = False, image: str | None = None, machine_type: str | None = None,
           names: Sequence[str] | None = None, boot_timeout: float | None = None, on_log: Log = quiet,
           state: SessionState | None = None, specs: Sequence[compute.VmSpec] | None = None,
           on_demand_fallback: bool = False, cores: int | None = None) -> list[VmRun]:
    """Create one VM per shard, each guarded until it reports its first status; then they run on their own.

    Each VM goes to the first zone with capacity (compute.create_vm); a zone that ran out for one VM is
    tried last for the next ones; spot VMs fall back to on-demand only when `on_demand_fallback`.

    Every VM is planned (machine type, image, quota) before any is created (or `specs` from plan_vms
    are used). If one fails to come up, every VM of this launch is deleted (the guards) and OpsError
    says why: a launch leaves all or nothing.
    """
    from lib.guard import VMGuard  # guard and state import compute: here only when VMs are created
    from lib.state import SessionState

    cfg = clients.resolve(cfg)
    state = state or SessionState(cfg)
    total = total if total is not None else sum(len(s) for s in shards)
    specs = list(specs or plan_vms(cfg, run_id, shards, total=total, spot=spot, image=image,
                                   machine_type=machine_type, names=names, cores=cores))
    runs = [VmRun(name=s.name, models=[m.name for m in shard], spot=s.spot, machine_type=s.machine_type,
                  hourly=_hourly(cfg, s), cores=int(s.metadata.get("ops-hpc-cores") or 0))
            for s, shard in zip(specs, shards, strict=True)]
    timeout = boot_timeout or (BOOT_TIMEOUT_LOCAL_S if cfg.local else BOOT_TIMEOUT_GCE_S)
    exhausted: set[tuple[str, bool]] = set()
    for spec in specs:
        for note in spec.notes:
            on_log(note)
    with contextlib.ExitStack() as stack:
        guards = []
        for spec, run in zip(specs, runs, strict=True):
            guards.append(stack.enter_context(VMGuard(cfg, spec.name, on_log=on_log, state=state)))
            sent = time.time()  # the VM may be up before create_vm returns: its cost counts from the insert
            vm = compute.create_vm(cfg, spec, on_log=on_log, state=state, on_demand_fallback=on_demand_fallback,
                                   exhausted=exhausted)
            run.id, run.created, run.zone, run.spot = vm.id, sent, vm.zone, vm.spot
            record_vm(cfg, run_id, spec.name, on_log=on_log, kind="run-staged", machine_type=spec.machine_type,
                      zone=vm.zone, spot=vm.spot, launched=round(run.created, 3), models=run.models,
                      hourly=run.hourly)
            on_log(f"{spec.name}: {len(run.models)} model(s) ({', '.join(run.models)}); "
                   f"deleted by Google after {duration(spec.max_run_s)} at the latest")
        _confirm_up(cfg, run_id, runs, timeout, on_log)
        for guard in guards:
            guard.disarm()
    return runs


def _hourly(cfg: Config, spec: compute.VmSpec) -> float | None:
    return _price(cfg, spec.machine_type, spec.spot, spec.disk_size_gb)


def _price(cfg: Config, machine_type: str, spot: bool, disk_gb: float | None = None) -> float | None:
    try:
        from lib import pricing

        return pricing.vm_hourly(cfg, machine_type, spot=spot, disk_gb=cfg.disk_size_gb if disk_gb is None else disk_gb)
    except Exception:  # a missing price must not stop a run
        return None


def startup_exit(cfg: Config, name: str) -> str | None:
    """The startup script's exit line from the VM's serial console, or None while it runs.

    GCE's guest agent writes "startup-script exit status N" there, and the local cloud does the same.
    """
    try:
        out = retry.google(clients.instances(cfg).get_serial_port_output, project=cfg.project, zone=cfg.zone,
                           instance=name)
    except Exception:  # the console is a hint only: a failed read means "not known yet"
        return None
    for line in reversed((out.contents or "").splitlines()):
        if "startup-script exit status" in line:
            return line.strip()
    return None


def _confirm_up(cfg: Config, run_id: str, runs: list[VmRun], timeout: float, on_log: Log,
                check_every: float = 2.0) -> None:
    """Wait until every VM has written _status/RUN_ID/VM.txt; raises OpsError (guards then delete the VMs)."""
    pending = {r.name: r for r in runs}
    deadline = time.monotonic() + timeout
    checked = time.monotonic()
    while pending:
        for name in list(pending):
            raw = storage.download_bytes(cfg, f"_status/{run_id}/{name}.txt")
            if raw is None:
                continue
            status = parse_status(raw.decode("utf-8", "replace"))
            if status.get("state") == "error":
                raise OpsError(f"VM {name} failed to start the run: {status.get('error') or 'see its serial console'}"
                               "; deleting the run's VMs")
            pending.pop(name).confirmed = time.time()
            on_log(f"{name}: up and running the batch")
        if not pending:
            return
        if time.monotonic() > deadline:
            raise OpsError(f"VM(s) {', '.join(pending)} did not report within {timeout:.0f} s of creation: deleting "
                           "the run's VMs (see the VM's serial console for why)")
        if time.monotonic() - checked > check_every:
            checked = time.monotonic()
            for name in list(pending):
                if compute.get_vm(compute.placed(cfg, name), name) is None:
                    raise OpsError(f"VM {name} disappeared before it reported (preempted or deleted)")
                line = startup_exit(compute.placed(cfg, name), name)
                if line is not None:
                    raise OpsError(f"VM {name}: the startup script ended before the first status ({line}); "
                                   "deleting the run's VMs (its serial console says why)")
        time.sleep(0.25)
