"""What a run-staged launch will cost before it exists: shards, machine choice and the expected / worst-case bill.

    candidates(cfg) -> choose_machine (auto) -> plan(models, vms, machine) -> preview (dict) / format_preview (lines)
    -> needs_confirmation (worst case above cfg.confirm_above_usd)

Pure apart from `machine()` (asks Compute for a shape its name does not spell) and the price table.
Costs are list prices from lib/prices.toml (or cfg.price_table), machine plus boot disk, and always
say so. Expected cost: every model runs to its timeout on the packed VM (lib/packing.py), plus boot
and the upload allowance; worst case: the VM lives until Google deletes it at its max run duration.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lib import packing, pricing, vmplan
from lib.config import Config
from lib.errors import Refused, UsageError

# GB of memory per vCPU by family and class (Compute Engine's predefined shapes).
_MEMORY_PER_VCPU: dict[str, dict[str, float]] = {
    "e2": {"standard": 4, "highmem": 8, "highcpu": 1},
    "n1": {"standard": 3.75, "highmem": 6.5, "highcpu": 0.9},
    "n2": {"standard": 4, "highmem": 8, "highcpu": 1},
    "n2d": {"standard": 4, "highmem": 8, "highcpu": 1},
    "c2": {"standard": 4},
    "c2d": {"standard": 4, "highmem": 8, "highcpu": 2},
    "c3": {"standard": 4, "highmem": 8, "highcpu": 2},
    "c3d": {"standard": 4, "highmem": 8, "highcpu": 2},
    "h3": {"standard": 4},
    "t2d": {"standard": 4},
}
_CUSTOM_RX = re.compile(r"(?:([a-z0-9]+)-)?custom-(\d+)-(\d+)(?:-ext)?")


class PlannedModel(Protocol):
    """What planning needs of a model (lib/batches.Model and lib/stage.StagedModel both have it)."""

    name: str
    cores: int
    timeout_min: int


@dataclass(frozen=True)
class Machine:
    """A machine type as the planner sees it: shape, list price per hour (machine + boot disk), SMT.

    `usable_cores` is lib/packing.usable_cores, what the VM packs models into: the physical cores on
    SMT families (two threads share a core's floating-point units), unless the batch's `#cores N`
    header (`cores`) says otherwise.
    """

    name: str
    vcpus: int
    memory_gb: float
    usd_per_hour: float | None = None
    cores: int | None = None  # a batch's `#cores N`

    @property
    def usable_cores(self) -> int:
        return packing.usable_cores(self.name, self.vcpus, override=self.cores)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "vcpus": self.vcpus, "memory_gb": self.memory_gb,
                "usable_cores": self.usable_cores,
                "usd_per_hour": None if self.usd_per_hour is None else round(self.usd_per_hour, 4)}


def shape(name: str) -> tuple[int, float] | None:
    """(vCPUs, memory GB) spelled by a predefined or custom machine type name; None if not."""
    m = _CUSTOM_RX.fullmatch(name)
    if m:
        return int(m.group(2)), int(m.group(3)) / 1024
    parts = name.split("-")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    per_vcpu = _MEMORY_PER_VCPU.get(parts[0], {}).get(parts[1])
    if per_vcpu is None:
        return None
    vcpus = int(parts[2])
    return vcpus, vcpus * per_vcpu


def machine(cfg: Config, name: str, *, spot: bool = False) -> Machine:
    """The Machine for a type name, priced from the table (None when unlisted); asks Compute only for odd names."""
    found = shape(name)
    if found is None:
        info = vmplan.machine_type_info(cfg, name)
        found = (int(info.guest_cpus), int(info.memory_mb) / 1024)
    vcpus, memory = found
    try:
        price: float | None = pricing.vm_hourly(cfg, name, spot=spot, disk_gb=cfg.disk_size_gb)
    except UsageError:  # not in the table: shown as unknown, and a real run then asks first
        price = None
    return Machine(name, vcpus, memory, price)


def candidates(cfg: Config, *, spot: bool = False) -> list[Machine]:
    """The machine types `--machine-type auto` chooses from (config machine_types), cheapest first."""
    machines = [machine(cfg, name, spot=spot) for name in cfg.machine_type_list]
    return sorted(machines, key=lambda m: (m.usd_per_hour is None, m.usd_per_hour or 0.0, m.vcpus))


@dataclass(frozen=True)
class Shard:
    """One VM's share of the batch and what it takes: peak cores, predicted makespan, max run duration."""

    models: tuple[Any, ...]
    cores_used: int
    makespan_s: int
    expected_s: int
    max_run_s: int


def plan_shards(models: Sequence[PlannedModel], vms: int, machine: Machine, *,
                upload_timeout_min: int = 30) -> list[Shard]:
    """Split the models over at most `vms` VMs of `machine` and bound each VM's time, as packed VMs run them.

    Shards balance the predicted packed makespans (packing.shards); a VM's makespan is the packing
    rule's schedule when every model runs to its timeout (packing.predicted_makespan), its max run
    duration the packed bound (packing.max_run_seconds, never above the serial sum), its expected time
    boot + makespan + the upload allowance. A model needing more cores or memory than the VM has is refused.
    """
    cores, mem_mb = machine.usable_cores, int(machine.memory_gb * 1024)
    too_big = [m for m in models if m.cores > cores]
    if too_big:
        names = ", ".join(f"{m.name} (cores={m.cores})" for m in too_big)
        raise UsageError(f"{names}: more cores than {machine.name} has ({cores} usable): choose a "
                         "bigger --machine-type, or --machine-type auto, or lower cores= in the batch")
    too_fat = [m for m in models if packing.mem_mb(m) > mem_mb]
    if too_fat:
        names = ", ".join(f"{m.name} (mem={getattr(m, 'mem_gb', 0):g})" for m in too_fat)
        raise UsageError(f"{names}: more memory than {machine.name} has ({machine.memory_gb:g} GB): choose a "
                         "bigger --machine-type, or --machine-type auto, or lower mem= in the batch")
    shards = []
    for group in packing.shards(list(models), vms, cores, mem_total_mb=mem_mb):
        span, schedule = packing.simulate(group, cores, [packing.slot_seconds(m) for m in group], mem_total_mb=mem_mb)
        max_run = packing.max_run_seconds(group, cores, upload_timeout_min, mem_total_mb=mem_mb)
        expected = min(int(packing.BOOT_S + span) + (upload_timeout_min + 1) * 60, max_run)
        shards.append(Shard(models=tuple(group), cores_used=_peak_cores(group, schedule), makespan_s=int(span),
                            expected_s=expected, max_run_s=max_run))
    return shards


def _peak_cores(models: Sequence[PlannedModel], schedule: Sequence[tuple[str, float, float]]) -> int:
    """The most cores a predicted schedule uses at once."""
    cores = {m.name: m.cores for m in models}
    events = sorted([(end, -cores[n]) for n, _, end in schedule] + [(start, cores[n]) for n, start, _ in schedule])
    used = peak = 0
    for _, step in events:  # at equal times ends (negative) come first
        used += step
        peak = max(peak, used)
    return peak


@dataclass(frozen=True)
class Plan:
    """A launch as it would be: the machine, spot or not, and every VM's shard."""

    machine: Machine
    spot: bool
    shards: tuple[Shard, ...]
    chosen_from: tuple[str, ...] = field(default_factory=tuple)  # the candidates, when auto chose

    @property
    def makespan_s(self) -> int:
        return max(s.makespan_s for s in self.shards)

    @property
    def max_run_s(self) -> int:
        return max(s.max_run_s for s in self.shards)

    def _usd(self, seconds: float) -> float | None:
        price = self.machine.usd_per_hour
        return None if price is None else round(price * seconds / 3600, 2)

    @property
    def expected_usd(self) -> float | None:
        return self._usd(sum(s.expected_s for s in self.shards))

    @property
    def worst_usd(self) -> float | None:
        return self._usd(sum(s.max_run_s for s in self.shards))


def plan(models: Sequence[PlannedModel], vms: int, machine: Machine, *, upload_timeout_min: int = 30,
         spot: bool = False) -> Plan:
    """The Plan of running `models` on up to `vms` VMs of `machine`."""
    if vms < 1:
        raise UsageError(f"--vms {vms}: the number of VMs must be at least 1")
    if not models:
        raise UsageError("nothing to plan: the batch has no models")
    return Plan(machine, spot, tuple(plan_shards(models, vms, machine, upload_timeout_min=upload_timeout_min)))


def choose_machine(models: Sequence[PlannedModel], vms: int, machines: Sequence[Machine], *,
                   upload_timeout_min: int = 30, spot: bool = False) -> Plan:
    """`--machine-type auto`: the cheapest (expected cost) machine that fits the largest model and finishes
    the batch as soon as the plan can (the shortest predicted makespan any fitting candidate reaches).

    Unpriced candidates are skipped (their cost is unknown); ties go to fewer vCPUs.
    """
    plans = []
    for m in machines:
        if m.usd_per_hour is None or any(x.cores > m.usable_cores for x in models):
            continue
        plans.append(plan(models, vms, m, upload_timeout_min=upload_timeout_min, spot=spot))
    if not plans:
        largest = max(models, key=lambda x: x.cores)
        raise UsageError(f"--machine-type auto: no priced machine type in machine_types fits {largest.name} "
                         f"(cores={largest.cores}): add a bigger one to machine_types in ops-hpc.toml")
    soonest = min(p.makespan_s for p in plans)
    best = min((p for p in plans if p.makespan_s <= soonest),
               key=lambda p: (p.expected_usd or 0.0, p.worst_usd or 0.0, p.machine.vcpus))
    return Plan(best.machine, best.spot, best.shards, tuple(m.name for m in machines))


def preview(p: Plan, *, confirm_above_usd: float | None = None, prices: str = "") -> dict[str, Any]:
    """The plan as JSON-ready data (`run-staged --dry-run --json`)."""
    return {
        "machine_type": p.machine.name, "machine": p.machine.to_json(), "spot": p.spot, "vms": len(p.shards),
        "chosen_from": list(p.chosen_from),
        "per_vm": [{"models": [m.name for m in s.models], "cores_used": s.cores_used, "makespan_s": s.makespan_s,
                    "expected_s": s.expected_s, "max_run_s": s.max_run_s} for s in p.shards],
        "makespan_s": p.makespan_s, "max_run_s": p.max_run_s,
        "expected_usd": p.expected_usd, "worst_usd": p.worst_usd, "usd_are": "list prices (machine + boot disk)",
        "confirm_above_usd": confirm_above_usd,
        "needs_confirmation": None if confirm_above_usd is None else needs_confirmation(p, confirm_above_usd),
        "prices": prices,
    }


def _hm(seconds: int) -> str:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _usd(value: float | None) -> str:
    return "? USD (machine type not in the price table)" if value is None else f"{value:.2f} USD"


def format_preview(data: dict[str, Any]) -> list[str]:
    """Lines for a terminal from preview()'s data."""
    m = data["machine"]
    how = f" (auto: cheapest of {', '.join(data['chosen_from'])} that fits and finishes soonest)" \
        if data["chosen_from"] else ""
    lines = [f"plan: {data['vms']} VM(s) of {data['machine_type']}{' spot' if data['spot'] else ''}{how}, "
             f"{m['vcpus']} vCPUs ({m['usable_cores']} usable cores), {m['memory_gb']:g} GB"]
    for i, vm in enumerate(data["per_vm"], start=1):
        lines.append(f"  VM {i}: {len(vm['models'])} model(s) ({', '.join(vm['models'])}), {vm['cores_used']} core(s) "
                     f"used, makespan {_hm(vm['makespan_s'])}, max run duration {_hm(vm['max_run_s'])}")
    lines.append(f"predicted makespan {_hm(data['makespan_s'])}, max run duration {_hm(data['max_run_s'])}")
    lines.append(f"cost (list prices, machine + boot disk): expected {_usd(data['expected_usd'])} (every model "
                 f"runs to its timeout, packed; boot and upload allowances used), worst case {_usd(data['worst_usd'])} (every VM "
                 "lives to its max run duration)")
    if data.get("prices"):
        lines.append(data["prices"])
    return lines


def needs_confirmation(p: Plan, confirm_above_usd: float) -> bool:
    """Whether a real launch must be confirmed: worst case above the threshold, or not known at all."""
    return p.worst_usd is None or p.worst_usd > confirm_above_usd


def confirm_cost(p: Plan, cfg: Config, *, yes: bool, ask: Callable[[str], bool] | None) -> None:
    """Raise Refused unless the launch may go ahead: cheap enough, --yes, or a 'y' typed on a terminal (`ask`)."""
    if yes or not needs_confirmation(p, cfg.confirm_above_usd):
        return
    worst = _usd(p.worst_usd)
    if ask is None:
        raise Refused(f"worst-case cost {worst} is above confirm_above_usd = {cfg.confirm_above_usd:g} and there is "
                      "no terminal to confirm on: rerun with --yes, or --dry-run to see the plan (nothing was created)")
    if not ask(f"worst-case cost {worst} (list prices) is above confirm_above_usd = {cfg.confirm_above_usd:g}. "
               "Launch?"):
        raise Refused("not launched: the cost was not confirmed (nothing was created)")
