"""Compute Engine VMs: create, stop, delete, list (planning them: lib/vmplan.py). Every call goes through lib/retry.

Safety rules that hold for every VM created here:
- labels {ops-hpc: true, ops-hpc-run, ops-hpc-kind, ops-hpc-end, ops-hpc-host, ops-hpc-launched} mark it
  as ours and say who launched it when, so the sweeper, status and cleanup can find it, and nothing
  without them is ever deleted unless forced;
- scheduling.maxRunDuration is always set with instanceTerminationAction DELETE, so Google deletes the
  VM even if this PC, its guard, its session state and the sweeper all fail;
- on-demand unless spot is asked for (preemption loses work);
- machine type, image and CPU quota (regional and family) are checked before anything is created (lib/vmplan.py);
- a zone out of capacity (ZONE_RESOURCE_POOL_EXHAUSTED) moves the insert to the next zone of the spec, then
  (spot, when allowed) on demand; nothing is left in a zone that failed;
- mutations carry a request_id chosen before the first attempt, so a retry cannot create twice, and an
  insert is recorded in session state before it is sent.

The planning names (plan_vm, VmSpec, labels, ...) are re-exported here: callers need one module for VMs.
(Over 400 lines on purpose: create, the zone failover and the guard's in-flight record share one lock and state.)
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lib import clients, errors, retry
from lib.config import Config
from lib.errors import OpsError, Refused
from lib.log import Log, quiet
from lib.state import SessionState
from lib.units import duration
from lib.vmplan import (
    BUILD_MAX_RUN_S,
    KINDS,
    LABEL_END,
    LABEL_HOST,
    LABEL_KEY,
    LABEL_KIND,
    LABEL_LAUNCHED,
    LABEL_REPORTS,
    LABEL_RUN,
    MAX_RUN_LIMIT_S,
    SCOPES,
    ImageNotFound,
    VmSpec,
    _not_found,
    cpu_quota,
    expected_seconds,
    instance_resource,
    label_value,
    max_run_seconds,
    plan_vm,
    resolve_image,
    this_host,
    worst_case_cost,
)

__all__ = [
    "BUILD_MAX_RUN_S", "KINDS", "LABEL_END", "LABEL_HOST", "LABEL_KEY", "LABEL_KIND", "LABEL_LAUNCHED",
    "LABEL_REPORTS", "LABEL_RUN", "MAX_RUN_LIMIT_S", "OP_TIMEOUT_S", "SCOPES", "STOPPED_STATES", "ImageNotFound",
    "OperationFailed", "Stockout", "Vm", "VmSpec", "cpu_quota", "create_vm", "delete_vm", "expected_seconds",
    "get_vm", "insert_in_flight", "instance_resource", "label_value", "list_vms", "list_vms_in_zones",
    "max_run_seconds", "placed", "plan_vm",
    "resolve_image", "set_expected_end", "settle_insert", "stop_vm", "this_host", "wait_operation",
    "worst_case_cost",
]

OP_TIMEOUT_S = 900.0
STOPPED_STATES = ("STOPPED", "TERMINATED", "SUSPENDED")


# ----------------------------------------------------------------------------- instances


def _epoch(stamp: str) -> float | None:
    if not stamp:
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Vm:
    """A VM as the rest of ops-hpc sees it: typed, so a misspelt field is an error, not a silent None."""

    name: str
    status: str
    zone: str
    machine_type: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    ours: bool = False
    run_id: str = ""
    kind: str = ""
    expected_end: int | None = None
    spot: bool = False
    created_epoch: float | None = None
    max_run_s: int | None = None
    max_run_end: float | None = None
    id: str = ""
    created: str = ""
    last_start_epoch: float | None = None
    termination_action: str = ""
    self_link: str = ""
    owner_host: str = ""  # label ops-hpc-host: the PC that launched it
    launched: int | None = None  # label ops-hpc-launched: when the insert was sent (epoch s)
    reports_status: bool = False  # label ops-hpc-reports=status: it publishes _status/RUN/VM.txt once up
    bucket: str = ""  # metadata ops-hpc-bucket: where it publishes its status and results

    @classmethod
    def from_instance(cls, inst: Any) -> Vm:
        """A compute_v1.Instance as a Vm."""
        labels = dict(inst.labels)
        meta = {i.key: i.value for i in inst.metadata.items} if inst.metadata else {}
        sched = inst.scheduling
        max_run = (int(sched.max_run_duration.seconds)
                   if sched.max_run_duration and sched.max_run_duration.seconds else None)
        end = labels.get(LABEL_END, "")
        launched = labels.get(LABEL_LAUNCHED, "")
        last_start = _epoch(inst.last_start_timestamp)
        termination = _epoch(getattr(sched, "termination_time", "") or "")
        if termination is None and max_run and last_start:
            termination = last_start + max_run
        return cls(
            name=inst.name, id=str(inst.id), status=inst.status, zone=inst.zone.rsplit("/", 1)[-1],
            machine_type=inst.machine_type.rsplit("/", 1)[-1], labels=labels, ours=labels.get(LABEL_KEY) == "true",
            run_id=labels.get(LABEL_RUN, ""), kind=labels.get(LABEL_KIND, ""),
            expected_end=int(end) if end.isdigit() else None,
            spot=sched.provisioning_model == "SPOT" or bool(sched.preemptible),
            created=inst.creation_timestamp, created_epoch=_epoch(inst.creation_timestamp),
            last_start_epoch=last_start, max_run_s=max_run, max_run_end=termination,
            termination_action=sched.instance_termination_action or "", self_link=inst.self_link,
            owner_host=labels.get(LABEL_HOST, ""), launched=int(launched) if launched.isdigit() else None,
            reports_status=labels.get(LABEL_REPORTS) == "status", bucket=meta.get("ops-hpc-bucket", ""),
        )

    def to_dict(self) -> dict[str, Any]:
        """For JSON output (--json)."""
        data = asdict(self)
        data["labels"] = dict(self.labels)
        return data


class OperationFailed(OpsError):
    """Google answered: the operation ended in an error (so it will not complete later)."""


class Stockout(OperationFailed):
    """The zone has no capacity for the machine type now (the insert's operation failed): try another zone."""


def wait_operation(op: Any, what: str, *, timeout: float = OP_TIMEOUT_S) -> None:
    """Wait for a zone or global operation; a failed one becomes a one-line OperationFailed (Stockout)."""
    from google.api_core import exceptions as gexc  # heavy: imported at first use, keeps --help fast

    try:
        op.result(timeout=timeout)
    except gexc.GoogleAPICallError as exc:
        told = errors.explain(exc, what=f"{what} failed")  # quota, stockout, permission: the advice with it
        raise (Stockout if errors.is_stockout(exc) else OperationFailed)(str(told or f"{what} failed: {getattr(exc, 'message', exc)}"),
                              code=told.code if told else None) from None
    if getattr(op, "error_code", None):
        raise OperationFailed(f"{what} failed: {op.error_message or op.error_code}")


def get_vm(cfg: Config, name: str) -> Vm | None:
    """The VM, or None if it does not exist."""
    cfg = clients.resolve(cfg)
    try:
        return Vm.from_instance(retry.google(clients.instances(cfg).get, project=cfg.project, zone=cfg.zone, instance=name))
    except Exception as exc:
        if _not_found(exc):
            return None
        raise


def list_vms(cfg: Config, *, ours_only: bool = True) -> list[Vm]:
    """VMs of the configured zone; only ops-hpc's unless ours_only=False (filtered here: no server filter dialect)."""
    cfg = clients.resolve(cfg)

    def fetch() -> list[Any]:
        return list(clients.instances(cfg).list(project=cfg.project, zone=cfg.zone, retry=None))

    vms = [Vm.from_instance(i) for i in retry.call(fetch)]
    return [v for v in vms if v.ours] if ours_only else vms


def list_vms_in_zones(cfg: Config, *, ours_only: bool = True) -> list[Vm]:
    """VMs of every zone of the project in one instances.aggregatedList (a failover may have put one anywhere
    in the region; the sweeper, status, reconcile and cleanup must see them all). Each Vm's zone says where."""
    from google.cloud import compute_v1 as c  # heavy: imported at first use, keeps --help fast

    cfg = clients.resolve(cfg)
    request = c.AggregatedListInstancesRequest(project=cfg.project)
    pages = retry.listing(clients.instances(cfg).aggregated_list, request=request)
    vms = [Vm.from_instance(i) for _, scoped in pages for i in scoped.instances]
    return [v for v in vms if v.ours] if ours_only else vms


# Where this process put (or is putting) each VM it created: a failover moves a VM out of the configured zone,
# and the guard, launch and follow must address it there.
_PLACED: dict[str, str] = {}


def placed(cfg: Config, name: str) -> Config:
    """`cfg` with the zone this process created VM `name` in (unchanged for a VM it did not create)."""
    zone = _PLACED.get(name)
    return cfg.replace(zone=zone) if zone and zone != cfg.zone else cfg


# Inserts sent by this process and not yet answered, by VM name: a VMGuard that fires meanwhile (Ctrl+C during
# the insert) re-sends the same request (same requestId: Google answers with the first one's operation, or
# creates the VM if the first never arrived), waits for it and deletes what it created.
_IN_FLIGHT: dict[str, tuple[Config, Any]] = {}
_IN_FLIGHT_LOCK = threading.RLock()  # re-entrant: a signal handler may run while the main thread holds it


def insert_in_flight(name: str) -> bool:
    with _IN_FLIGHT_LOCK:
        return name in _IN_FLIGHT


def _landed(name: str) -> None:
    with _IN_FLIGHT_LOCK:
        _IN_FLIGHT.pop(name, None)


def settle_insert(name: str, *, timeout: float = OP_TIMEOUT_S, on_log: Log = quiet) -> bool:
    """If this process has an insert of `name` in flight, wait for its operation; True if there was one."""
    with _IN_FLIGHT_LOCK:
        pending = _IN_FLIGHT.get(name)
    if pending is None:
        return False
    cfg, request = pending
    on_log(f"waiting for the creation of VM {name} in flight (request {request.request_id}) to finish")
    try:
        op = retry.google(clients.instances(cfg).insert, request=request)
        wait_operation(op, f"creating VM {name}", timeout=timeout)
    except Exception as exc:  # it failed or timed out: the caller's get/delete decides what is left
        on_log(f"the creation of VM {name} in flight ended: {exc}")
    finally:
        _landed(name)
    return True


def create_vm(cfg: Config, spec: VmSpec, *, on_log: Log = quiet, state: SessionState | None = None,
              on_demand_fallback: bool = False, exhausted: set[tuple[str, bool]] | None = None) -> Vm:
    """Create the VM in the first of spec.zones with capacity; returns get_vm() (its zone says where it is).

    A zone out of capacity is one line and the next zone is tried; a spot VM that finds none is tried on demand
    in the same order when `on_demand_fallback` (run-staged's spot policy). `exhausted` (zone, spot) pairs that
    ran out earlier in the same launch are tried last. Anything else that fails ends the attempt.
    """
    cfg = clients.resolve(cfg)
    state = state or SessionState(cfg)
    exhausted = set() if exhausted is None else exhausted
    zones = list(spec.zones or (spec.zone,))
    tries = [(z, spec.spot) for z in zones] + ([(z, False) for z in zones] if spec.spot and on_demand_fallback else [])
    tries.sort(key=lambda t: (t[1] != spec.spot, t in exhausted))
    on_log(f"creating {spec.kind} VM {spec.name} ({spec.machine_type}, {'spot' if tries[0][1] else 'on-demand'}, "
           f"image {spec.image_name}, in {tries[0][0]}, deleted by Google after {duration(spec.max_run_s)} at the latest)")
    for n, (zone, spot) in enumerate(tries):
        try:
            return _create_in(cfg.replace(zone=zone), spec.in_zone(zone, spot=spot), on_log, state)
        except Stockout:
            exhausted.add((zone, spot))
            kind = "spot" if spot else "on-demand"
            if n + 1 < len(tries):
                zone2, spot2 = tries[n + 1]
                on_log(f"{zone}: no capacity for {kind} {spec.machine_type} (ZONE_RESOURCE_POOL_EXHAUSTED); trying "
                       f"{zone2}" + (" on demand" if spot and not spot2 else ""))
            else:
                on_log(f"{zone}: no capacity for {kind} {spec.machine_type} (ZONE_RESOURCE_POOL_EXHAUSTED)")
    tried = ", ".join(dict.fromkeys(z for z, _ in tries))
    raise Stockout(f"creating VM {spec.name} failed: no capacity for {spec.machine_type} in {tried} right now "
                   f"({'spot, then on demand' if len(tries) > len(zones) else 'spot' if spec.spot else 'on-demand'}): "
                   "retry later, list more zones (`zones` in ops-hpc.toml) or choose another machine_type "
                   "(nothing was created)")


def _create_in(cfg: Config, spec: VmSpec, on_log: Log, state: SessionState) -> Vm:
    """One insert in spec.zone. Session state records the VM and the insert's requestId BEFORE it is sent, so a
    process killed mid-insert leaves an entry that reconcile keeps until the insert can no longer land."""
    from google.api_core import exceptions as gexc  # heavy: imported at first use, keeps --help fast
    from google.cloud import compute_v1 as c  # heavy: imported at first use, keeps --help fast

    request_id = str(uuid.uuid4())  # chosen once: every retry of this insert is the same request
    state.register_vm(spec.name, run_id=spec.run_id, kind=spec.kind, zone=spec.zone, expected_end=spec.expected_end,
                      max_run_end=spec.max_run_end, phase="creating", machine_type=spec.machine_type, spot=spec.spot,
                      request_id=request_id)
    request = c.InsertInstanceRequest(project=spec.project, zone=spec.zone, request_id=request_id,
                                      instance_resource=instance_resource(spec))
    with _IN_FLIGHT_LOCK:
        _PLACED[spec.name] = spec.zone
        _IN_FLIGHT[spec.name] = (cfg, request)
    # Ctrl+C or a kill arriving now leaves the record in _IN_FLIGHT on purpose: the guard settles it.
    try:
        op = retry.google(clients.instances(cfg).insert, request=request)
        wait_operation(op, f"creating VM {spec.name}")
    except Exception as exc:
        _landed(spec.name)
        # A definite refusal (4xx) created nothing: forget the entry. Anything else (timeout, 5xx after the
        # retries) may still land: the entry stays, and reconcile deletes or drops it once that is known.
        refused = isinstance(exc, (gexc.ClientError, OperationFailed))
        if isinstance(exc, Stockout) and _quiet_get(cfg, spec.name) is not None:  # leave nothing in that zone
            delete_vm(cfg, spec.name, on_log=on_log, state=state)
        if refused and _quiet_get(cfg, spec.name) is None:
            state.unregister_vm(spec.name)
        if isinstance(exc, gexc.Conflict):
            raise OpsError(f"a VM named {spec.name} already exists in {spec.zone}: choose another name") from None
        if isinstance(exc, gexc.GoogleAPICallError):
            raise errors.explain(exc, what=f"creating VM {spec.name} failed") or OpsError(str(exc)) from None
        raise
    _landed(spec.name)
    state.register_vm(spec.name, run_id=spec.run_id, kind=spec.kind, zone=spec.zone, expected_end=spec.expected_end,
                      max_run_end=spec.max_run_end, phase="running")
    vm = get_vm(cfg, spec.name) or Vm(name=spec.name, status="UNKNOWN", zone=spec.zone)
    on_log(f"VM {spec.name} is {vm.status} in {vm.zone}")
    return vm


def _quiet_get(cfg: Config, name: str) -> Vm | None:
    try:
        return get_vm(cfg, name)
    except Exception:
        return None


def _check_ours(vm: Vm, force: bool, verb: str) -> None:
    if not vm.ours and not force:
        raise Refused(f"refusing to {verb} VM {vm.name}: it has no {LABEL_KEY}=true label, so ops-hpc did not "
                       "create it; pass --force if you are sure")


def _forget(state: SessionState, name: str, on_log: Log) -> None:
    """Drop the entry of a deleted VM; an unreadable state file must not undo (or hide) the delete."""
    try:
        state.unregister_vm(name)
    except OpsError as exc:
        on_log(f"warning: session state not updated: {exc}")


def delete_vm(cfg: Config, name: str, *, force: bool = False, on_log: Log = quiet,
              state: SessionState | None = None) -> bool:
    """Delete a VM of ours (idempotent): False if it was already gone; Refused for a VM without our label.

    Works from labels alone: a corrupt session state file is reported, never a reason not to delete.
    """
    from google.cloud import compute_v1 as c  # heavy: imported at first use, keeps --help fast

    cfg = clients.resolve(cfg)
    state = state or SessionState(cfg)
    vm = get_vm(cfg, name)
    if vm is None:
        _forget(state, name, on_log)
        return False
    _check_ours(vm, force, "delete")
    request = c.DeleteInstanceRequest(project=cfg.project, zone=cfg.zone, instance=name, request_id=str(uuid.uuid4()))
    try:
        op = retry.google(clients.instances(cfg).delete, request=request)
        wait_operation(op, f"deleting VM {name}")
    except Exception as exc:
        if not _not_found(exc):
            raise
        _forget(state, name, on_log)
        return False
    _forget(state, name, on_log)
    on_log(f"deleted VM {name}")
    return True


def stop_vm(cfg: Config, name: str, *, force: bool = False, on_log: Log = quiet) -> None:
    """Stop a VM of ours (its disk stays and still bills; image builds stop before imaging)."""
    cfg = clients.resolve(cfg)
    vm = get_vm(cfg, name)
    if vm is None:
        raise OpsError(f"VM {name} does not exist in {cfg.zone}")
    _check_ours(vm, force, "stop")
    from google.cloud import compute_v1 as c  # heavy: imported at first use, keeps --help fast

    request = c.StopInstanceRequest(project=cfg.project, zone=cfg.zone, instance=name, request_id=str(uuid.uuid4()))
    op = retry.google(clients.instances(cfg).stop, request=request)
    wait_operation(op, f"stopping VM {name}")
    on_log(f"stopped VM {name}")


def set_expected_end(cfg: Config, name: str, expected_end: float) -> None:
    """Move the ops-hpc-end label and the session state entry (a deadline extension), so the sweeper does not
    delete a run given more time. It cannot move maxRunDuration: Google's hard limit stays."""
    from google.api_core import exceptions as gexc  # heavy: imported at first use, keeps --help fast
    from google.cloud import compute_v1 as c  # heavy: imported at first use, keeps --help fast

    cfg = clients.resolve(cfg)
    client = clients.instances(cfg)

    def attempt() -> None:
        inst = client.get(project=cfg.project, zone=cfg.zone, instance=name, retry=None)
        labels = dict(inst.labels)
        if labels.get(LABEL_KEY) != "true":
            raise Refused(f"VM {name} is not an ops-hpc VM")
        labels[LABEL_END] = str(int(expected_end))
        body = c.InstancesSetLabelsRequest(labels=labels, label_fingerprint=inst.label_fingerprint)
        # the fingerprint makes this idempotent: a lost response followed by a retry gets 412 and re-reads
        request = c.SetLabelsInstanceRequest(project=cfg.project, zone=cfg.zone, instance=name,
                                             instances_set_labels_request_resource=body, request_id=str(uuid.uuid4()))
        wait_operation(client.set_labels(request=request, retry=None), f"labelling VM {name}")

    for _ in range(5):
        try:
            retry.call(attempt)
            SessionState(cfg).set_expected_end(name, expected_end)
            return
        except gexc.PreconditionFailed:
            continue
    raise OpsError(f"could not update the expected end of VM {name}: its labels kept changing")
