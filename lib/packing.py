"""Packing models onto a VM's cores: usable cores, the VM's scheduling rule, its makespan bound, fan-out shards.

A VM runs its models concurrently (vm-scripts/ops_helpers.py `pick`, called by run_analysis.sh):
pending models wait in *pack order* (largest cores x timeout first, then batch order); whenever cores
(or memory) free up, every pending model that fits is started, scanning the whole queue (a model that
does not fit does not block smaller ones behind it). `simulate` here runs that very `pick` (loaded
from the file the VMs get) on predicted durations.

Everything here is pure arithmetic on duck-typed models (`name`, `cores`, `timeout_min`, optional
`mem_gb`, `retries`, `size`): lib/batches.Model and lib/stage.StagedModel both qualify.

Usable cores rule: a VM's vCPUs are hardware threads. On machine types with two threads per core
(SMT: e2, n1, n2, n2d, n4, c2, c2d, c3, c3d, c4, c4d, m*, ...) two OpenSees processes on sibling threads
share one core's floating-point units, so the usable cores are the physical cores, vCPUs / 2. Families
with one thread per core (h3, h4d, t2d, t2a, c4a, n4a) use every vCPU; shared-core types (e2-micro/small/
medium, f1, g1) get 1. A batch's `#cores N` header line overrides the rule (e.g. models that mostly
wait on I/O can use every vCPU).
"""

from __future__ import annotations

import functools
import heapq
import importlib.util
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lib import paths
from lib.errors import Refused, UsageError

T = TypeVar("T")

NO_SMT_FAMILIES = frozenset({"h3", "h4d", "t2d", "t2a", "c4a", "n4a"})
SHARED_CORE = frozenset({"e2-micro", "e2-small", "e2-medium", "f1-micro", "g1-small"})
BOOT_S = 300  # boot, guest agent, fetching the VM scripts and batch.json: before the first model starts
MODEL_OVERHEAD_S = 60  # per model: its input download and unzip, the timeout's 10 s kill grace, zipping
DOWNLOAD_BYTES_S = 20e6  # a conservative input download rate (bytes/s) for large staged zips
POLL_S = 1.0  # the VM's scheduler notices a finished model within this long


def _vcpus_of(machine_type: str) -> int:
    """vCPUs from a machine type's name (FAMILY-KIND-N or [FAMILY-]custom-N-MB); UsageError if it has none."""
    m = re.fullmatch(r"(?:[a-z0-9]+-)?custom-(\d+)-\d+(?:-ext)?", machine_type) or \
        re.fullmatch(r"[a-z0-9]+-[a-z]+-(\d+)(?:-[a-z0-9]+)?", machine_type)
    if not m:
        raise UsageError(f"machine type {machine_type!r}: cannot tell its vCPUs from the name; pass them")
    return int(m.group(1))


def usable_cores(machine_type_or_vcpus: str | int, vcpus: int | None = None, *, override: int | None = None) -> int:
    """Cores the VM's scheduler fills: `override` (a batch's `#cores N`), else the SMT rule (module docstring).

    An int is taken as a count of usable vCPUs as they are (no SMT rule: the caller knows the hardware).
    """
    if override is not None:
        return int(override)
    if isinstance(machine_type_or_vcpus, int):
        return max(1, machine_type_or_vcpus)
    name = machine_type_or_vcpus.rsplit("/", 1)[-1]
    if name in SHARED_CORE:
        return 1
    count = int(vcpus) if vcpus is not None else _vcpus_of(name)
    family = name.split("-", 1)[0]
    return max(1, count if family in NO_SMT_FAMILIES else count // 2)


def mem_mb(model: Any) -> int:
    """The memory a model asked for (mem=GB on its line), in MB; 0 when it did not ask."""
    return int(round(float(getattr(model, "mem_gb", 0) or 0) * 1024))


def pack_order(models: Sequence[T]) -> list[T]:
    """The VM's queue order: largest cores x timeout first, ties in batch order."""
    def key(item: tuple[int, Any]) -> tuple[int, int]:
        return -item[1].cores * item[1].timeout_min, item[0]

    return [m for _, m in sorted(enumerate(models), key=key)]


@functools.lru_cache(maxsize=1)
def _vm_helpers() -> Any:
    """vm-scripts/ops_helpers.py, the file that ships to VMs (standard library only, so it loads here too)."""
    spec = importlib.util.spec_from_file_location("ops_hpc_vm_helpers", paths.VM_SCRIPTS / "ops_helpers.py")
    if spec is None or spec.loader is None:  # pragma: no cover - the file ships with the package
        raise ImportError(f"cannot load {paths.VM_SCRIPTS / 'ops_helpers.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pick(pending: Sequence[tuple[str, int, int]], free_cores: int, free_mem_mb: int | None) -> list[str]:
    """The scheduling rule: scan (name, cores, mem_mb) in queue order, start every one that fits what is free.

    The VM's own code (vm-scripts/ops_helpers.py `pick`), so the prediction cannot drift from what a VM
    does. free_mem_mb None: no memory limit.
    """
    return list(_vm_helpers().pick(pending, free_cores, free_mem_mb))


def slot_seconds(model: Any, overhead_s: float = MODEL_OVERHEAD_S) -> float:
    """The longest a model holds its cores: every attempt (1 + retries) up to its timeout, plus its overhead."""
    over = overhead_s + float(getattr(model, "size", 0) or 0) / DOWNLOAD_BYTES_S
    return (1 + int(getattr(model, "retries", 0) or 0)) * (model.timeout_min * 60.0 + over)


def simulate(models: Sequence[Any], cores: int, durations: Sequence[float], *, mem_total_mb: int | None = None,
             order: Callable[[Sequence[Any]], list[Any]] = pack_order) -> tuple[float, list[tuple[str, float, float]]]:
    """Run the VM's rule on known durations (seconds, by model index): (makespan, [(name, start, end)]).

    Event driven: at time 0 and whenever a model ends, `pick` starts what fits. Used by the prediction
    (durations = slot_seconds) and by the tests (adversarial durations).
    """
    index = {id(m): i for i, m in enumerate(models)}
    queue = order(models)
    free, mem = cores, mem_total_mb
    running: list[tuple[float, int, int]] = []  # (end, model index, mem)
    out: list[tuple[str, float, float]] = []
    now = 0.0
    while queue or running:
        started = set(pick([(m.name, m.cores, mem_mb(m)) for m in queue], free, mem))
        for m in [m for m in queue if m.name in started]:
            i = index[id(m)]
            heapq.heappush(running, (now + durations[i], i, mem_mb(m)))
            out.append((m.name, now, now + durations[i]))
            free -= m.cores
            if mem is not None:
                mem -= mem_mb(m)
        queue = [m for m in queue if m.name not in started]
        if not running:
            raise Refused(f"model(s) {', '.join(m.name for m in queue)} can never start on {cores} core(s)")
        now, i, used = heapq.heappop(running)
        free += models[i].cores
        if mem is not None:
            mem += used
        while running and running[0][0] <= now:  # everything ending at the same moment frees together
            _, j, used = heapq.heappop(running)
            free += models[j].cores
            if mem is not None:
                mem += used
    return now, out


def makespan_bound(models: Sequence[Any], cores: int, *, mem_total_mb: int | None = None,
                   overhead_s: float = MODEL_OVERHEAD_S, poll_s: float = POLL_S) -> float:
    """Seconds within which the VM's rule finishes `models` for ANY run times up to their timeouts.

    Proof (greedy list scheduling with widths, Graham-style). Let t_i <= T_i be the actual slot times
    (T_i = slot_seconds) and j the model that ends last, started at S_j. The rule scans the whole queue
    at time 0 and at every end, so at any moment before S_j model j was waiting because it did not fit:
    either the busy cores exceeded m - c_j (core-blocked) or the busy memory exceeded M - mem_j
    (memory-blocked). In core-blocked time at least m - c_j + 1 cores run other models, so it lasts at
    most A_c / (m - c_j + 1) with A_c = sum_{i != j} c_i t_i; it also lasts at most sum_{i != j} t_i (some
    other model runs all along). Memory-blocked time likewise lasts at most A_m / (M - mem_j) with
    A_m = sum_{i != j} mem_i t_i, and at most sum_{i != j, mem_i > 0} t_i. The scheduler reacts to an end
    within poll_s, at most n times. So makespan = S_j + t_j <= blocked + n * poll_s + T_j, and since every
    term grows with t_i, putting t_i = T_i gives a bound for every j; the answer is the max over j.
    """
    if not models:
        return 0.0
    slots = [slot_seconds(m, overhead_s) for m in models]
    area_c = sum(m.cores * t for m, t in zip(models, slots, strict=True))
    area_m = sum(mem_mb(m) * t for m, t in zip(models, slots, strict=True))
    total = sum(slots)
    total_mem = sum(t for m, t in zip(models, slots, strict=True) if mem_mb(m) > 0)
    worst = 0.0
    for m, t in zip(models, slots, strict=True):
        if m.cores > cores or (mem_total_mb is not None and mem_mb(m) > mem_total_mb):
            raise Refused(f"model {m.name} needs more than the VM has ({cores} core(s)"
                          + (f", {mem_total_mb} MB" if mem_total_mb is not None else "") + ")")
        blocked_c = min((area_c - m.cores * t) / (cores - m.cores + 1), total - t)
        blocked_m = 0.0
        if mem_total_mb is not None and total_mem:
            others = total_mem - (t if mem_mb(m) > 0 else 0.0)
            room = mem_total_mb - mem_mb(m)
            blocked_m = min((area_m - mem_mb(m) * t) / room, others) if room > 0 else others
        worst = max(worst, min(blocked_c + blocked_m, total - t) + len(models) * poll_s + t)
    return worst


def max_run_seconds(models: Sequence[Any], cores: int, upload_timeout_min: int, *, mem_total_mb: int | None = None,
                    boot_s: float = BOOT_S, overhead_s: float = MODEL_OVERHEAD_S) -> int:
    """A packed VM's max run duration: boot + the makespan bound + the last upload, in whole minutes.

    Never above the serial sum (lib/vmplan.max_run_seconds: sum of timeouts + upload + 1 min, whole hours).
    """
    from lib.vmplan import max_run_seconds as serial

    old = serial([m.timeout_min for m in models], upload_timeout_min)
    bound = boot_s + makespan_bound(models, cores, mem_total_mb=mem_total_mb, overhead_s=overhead_s) \
        + upload_timeout_min * 60 + 60
    return min(old, int(math.ceil(bound / 60) * 60))


def predicted_makespan(models: Sequence[Any], cores: int, *, mem_total_mb: int | None = None,
                       overhead_s: float = MODEL_OVERHEAD_S) -> float:
    """The rule's makespan if every model used its whole slot (what shards are balanced on)."""
    if not models:
        return 0.0
    return simulate(models, cores, [slot_seconds(m, overhead_s) for m in models], mem_total_mb=mem_total_mb)[0]


def shards(models: Sequence[T], vms: int, cores: int, *, mem_total_mb: int | None = None) -> list[list[T]]:
    """Split `models` over at most `vms` VMs so that their predicted makespans are balanced.

    Largest first (pack order), each model goes to the VM whose predicted makespan ends lowest with it;
    the prediction while assigning is the packed VM's steady state, max(core-seconds / cores, MB-seconds /
    memory, longest slot), which the rule reaches when models are many and small (exact `predicted_makespan` per step
    would cost a simulation per model and VM). Each shard keeps the batch order; empty shards are dropped.
    """
    if vms < 1:
        raise UsageError("the number of VMs must be at least 1")
    count = min(vms, len(models))
    bins: list[list[T]] = [[] for _ in range(count)]
    area, mem_area, longest = [0.0] * count, [0.0] * count, [0.0] * count
    for m in pack_order(models):
        slot = slot_seconds(m)
        work, mem_work = m.cores * slot, mem_mb(m) * slot  # type: ignore[attr-defined]
        spans = []
        for b in range(count):
            span = max((area[b] + work) / cores, longest[b], slot)
            if mem_total_mb:
                span = max(span, (mem_area[b] + mem_work) / mem_total_mb)
            spans.append((span, area[b], b))
        _, _, best = min(spans)
        bins[best].append(m)
        area[best] += work
        mem_area[best] += mem_work
        longest[best] = max(longest[best], slot)
    position = {id(m): i for i, m in enumerate(models)}
    return [sorted(b, key=lambda m: position[id(m)]) for b in bins if b]


def check_fits(models: Sequence[Any], cores: int, mem_total_mb: int | None, where: str) -> None:
    """Refuse, naming every model, a batch with a model needing more cores or memory than the VM has."""
    problems = []
    for m in models:
        if m.cores > cores:
            problems.append(f"model {m.name} needs cores={m.cores} but {where} has {cores} usable core(s)")
        if mem_total_mb is not None and mem_mb(m) > mem_total_mb:
            problems.append(f"model {m.name} needs mem={getattr(m, 'mem_gb', 0):g} GB but {where} has "
                            f"{mem_total_mb / 1024:g} GB")
    if problems:
        raise Refused("; ".join(problems) + ": lower cores=/mem= on those lines, raise `#cores N`, or choose a "
                      "bigger machine_type (nothing was uploaded or created)")
