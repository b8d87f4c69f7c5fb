"""Packing models onto a VM: the one scheduling rule, its makespan bound against adversarial run times, shards."""

from __future__ import annotations

import heapq
import importlib.util
import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from lib import packing, vmplan
from lib.errors import Refused

REPO = Path(__file__).resolve().parents[2]


def _helpers():
    spec = importlib.util.spec_from_file_location("ops_helpers", REPO / "vm-scripts" / "ops_helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H = _helpers()


@dataclass(frozen=True)
class M:
    name: str
    cores: int = 1
    timeout_min: int = 1
    mem_gb: float = 0.0
    retries: int = 0


def _random_models(rng: random.Random, cores: int, n: int, mem: bool = False) -> list[M]:
    return [M(f"m{i}", rng.randint(1, cores), rng.choice([1, 2, 5, 30, 60, 240]),
              mem_gb=rng.choice([0, 0.5, 1, 4]) if mem else 0.0, retries=rng.choice([0, 0, 1]))
            for i in range(n)]


def _vm_schedule(models: list[M], cores: int, durations: list[float], mem_mb: int | None) -> list[tuple]:
    """What run_analysis.sh does, driven by the VM's own helpers: queue from `models`, starts from `pick`."""
    rows = H.pack_order([{"name": m.name, "cores": m.cores, "timeout_min": m.timeout_min, "mem": packing.mem_mb(m)}
                         for m in models])
    queue = [(r["name"], r["cores"], r["mem"]) for r in rows]
    by_name = {m.name: i for i, m in enumerate(models)}
    free, mem, now, running, out = cores, mem_mb, 0.0, [], []
    while queue or running:
        for name in H.pick(queue, free, mem):
            i = by_name[name]
            heapq.heappush(running, (now + durations[i], i))
            out.append((name, now, now + durations[i]))
            free -= models[i].cores
            mem = None if mem is None else mem - packing.mem_mb(models[i])
        queue = [q for q in queue if q[0] not in {o[0] for o in out}]
        now, i = heapq.heappop(running)
        free += models[i].cores
        mem = None if mem is None else mem + packing.mem_mb(models[i])
        while running and running[0][0] <= now:
            _, j = heapq.heappop(running)
            free += models[j].cores
            mem = None if mem is None else mem + packing.mem_mb(models[j])
    return out


def _peak(schedule: list[tuple], weight) -> float:
    """The most of `weight` (cores or MB) in use at any moment of a schedule."""
    events = sorted([(s, 1, n) for n, s, _ in schedule] + [(e, 0, n) for n, _, e in schedule])  # ends first
    used = peak = 0.0
    for _, start, name in events:
        used += weight(name) if start else -weight(name)
        peak = max(peak, used)
    return peak


def test_pick_starts_in_queue_order_and_skips_what_does_not_fit():
    pending = [("big", 6, 0), ("mid", 3, 0), ("a", 1, 0), ("b", 1, 0), ("c", 1, 0)]
    assert H.pick(pending, 8, None) == ["big", "a", "b"]  # mid does not fit after big; smaller ones behind it do
    assert H.pick(pending, 8, None) == packing.pick(pending, 8, None)
    assert H.pick([("x", 1, 4096), ("y", 1, 1024), ("z", 1, 1024)], 8, 2048) == ["y", "z"]
    assert H.pick(pending, 0, None) == []


@pytest.mark.parametrize("seed", range(40))
def test_the_vm_rule_never_oversubscribes_and_the_prediction_follows_it(seed):
    rng = random.Random(seed)
    cores = rng.choice([2, 4, 8, 88])
    mem_mb = rng.choice([None, 4096, 16384])
    models = _random_models(rng, cores, rng.randint(1, 30), mem=mem_mb is not None)
    if mem_mb is not None:
        models = [m for m in models if packing.mem_mb(m) <= mem_mb]
    durations = [rng.uniform(0, packing.slot_seconds(m)) for m in models]
    vm = _vm_schedule(models, cores, durations, mem_mb)
    span, predicted = packing.simulate(models, cores, durations, mem_total_mb=mem_mb)
    assert sorted(vm) == sorted(predicted)  # lib/packing.py predicts with the VM's own rule
    by_name = {m.name: m for m in models}
    assert _peak(vm, lambda n: by_name[n].cores) <= cores
    if mem_mb is not None:
        assert _peak(vm, lambda n: packing.mem_mb(by_name[n])) <= mem_mb
    assert len(vm) == len(models)


def _adversarial_durations(rng: random.Random, models: list[M]) -> list[list[float]]:
    slots = [packing.slot_seconds(m) for m in models]
    out = [slots, [rng.uniform(0, s) for s in slots], [s * rng.choice([0.0, 0.01, 1.0]) for s in slots]]
    for victim in range(min(len(models), 4)):  # everything instant except one (or all but one) full-length
        out.append([s if i == victim else 1e-3 for i, s in enumerate(slots)])
        out.append([1e-3 if i == victim else s for i, s in enumerate(slots)])
    return out


@pytest.mark.parametrize("seed", range(60))
def test_the_makespan_bound_holds_for_any_run_times_and_queue_order(seed):
    rng = random.Random(1000 + seed)
    cores = rng.choice([1, 2, 3, 4, 8, 16])
    mem_mb = rng.choice([None, None, 4096])
    models = _random_models(rng, cores, rng.randint(1, 14), mem=mem_mb is not None)
    bound = packing.makespan_bound(models, cores, mem_total_mb=mem_mb, poll_s=0)
    orders = [packing.pack_order, lambda ms: list(ms), lambda ms: list(reversed(ms))]
    orders += [lambda ms, r=random.Random(seed + k): r.sample(list(ms), len(ms)) for k in range(5)]
    for durations in _adversarial_durations(rng, models):
        for order in orders:
            span, _ = packing.simulate(models, cores, durations, mem_total_mb=mem_mb, order=order)
            assert span <= bound + 1e-6, (models, durations)
    assert bound <= sum(packing.slot_seconds(m) for m in models) + 1e-6  # never worse than one after another


def test_the_bound_is_close_to_graham_s_worst_case():
    """m(m-1) unit models then one of length m on m cores: greedy needs 2m - 1, the bound allows no more than 2m."""
    cores = 4
    unit = packing.slot_seconds(M("u"))
    models = [M(f"u{i}") for i in range(cores * (cores - 1))] + [M("long", timeout_min=5)]
    long_slot = packing.slot_seconds(models[-1])
    durations = [unit] * (len(models) - 1) + [long_slot]
    worst, _ = packing.simulate(models, cores, durations, order=lambda ms: list(ms))  # the long one queued last
    bound = packing.makespan_bound(models, cores, poll_s=0)
    assert worst <= bound <= worst + long_slot


def test_max_run_duration_of_a_packed_vm_is_far_below_the_sum_and_never_above_it():
    models = [M(f"m{i}", 1, 60) for i in range(88)]
    packed = packing.max_run_seconds(models, 88, 30)
    serial = vmplan.max_run_seconds([60] * 88, 30)
    assert serial == 89 * 3600
    assert packed <= 3 * 3600  # one hour of running plus allowances, not 89 hours
    assert packed >= packing.BOOT_S + 3600 + 30 * 60  # boot, a full model, and the last upload are covered
    one = [M("only", 1, 5)]
    assert packing.max_run_seconds(one, 1, 30) <= vmplan.max_run_seconds([5], 30)
    assert packing.max_run_seconds(one, 1, 30) % 60 == 0


def test_usable_cores_rule():
    assert packing.usable_cores("h3-standard-88") == 88  # one thread per core
    assert packing.usable_cores("t2d-standard-8") == 8
    assert packing.usable_cores("c3-standard-88") == 44  # SMT: physical cores
    assert packing.usable_cores("e2-standard-2") == 1
    assert packing.usable_cores("n2-custom-8-16384") == 4
    assert packing.usable_cores("e2-medium") == 1
    assert packing.usable_cores("c2d-standard-32", 32, override=32) == 32  # a batch's #cores N wins
    assert packing.usable_cores(6) == 6


def test_shards_balance_predicted_makespans():
    ones = [M(f"m{i}", 1, 1) for i in range(16)]
    two = packing.shards(ones, 2, 8)
    assert [len(s) for s in two] == [8, 8]
    mixed = [M("wide", 8, 60)] + [M(f"s{i}", 1, 10) for i in range(24)] + [M(f"l{i}", 2, 30) for i in range(6)]
    spans = [packing.predicted_makespan(s, 8) for s in packing.shards(mixed, 3, 8)]
    assert max(spans) <= 1.5 * min(spans)
    assert max(spans) < packing.predicted_makespan(mixed, 8)  # spreading helps
    rr = [mixed[i::3] for i in range(3)]  # round robin for comparison
    assert max(spans) <= max(packing.predicted_makespan(s, 8) for s in rr) + 1e-6
    assert len(packing.shards(ones[:2], 5, 8)) == 2  # never an empty shard
    names = [m.name for s in packing.shards(mixed, 3, 8) for m in s]
    assert sorted(names) == sorted(m.name for m in mixed)
    for shard in packing.shards(mixed, 3, 8):  # batch order kept within a shard
        assert shard == sorted(shard, key=mixed.index)


def test_a_model_larger_than_the_vm_is_refused():
    with pytest.raises(Refused, match=r"model big needs cores=16 but machine type x has 8"):
        packing.check_fits([M("ok"), M("big", 16)], 8, 32768, "machine type x")
    with pytest.raises(Refused, match=r"model fat needs mem=64 GB"):
        packing.check_fits([M("fat", mem_gb=64)], 8, 32768, "machine type x")
    packing.check_fits([M("ok", 8, mem_gb=32)], 8, 32768, "machine type x")


def test_pack_order_is_largest_first_then_batch_order():
    ms = [M("a", 1, 10), M("b", 4, 10), M("c", 2, 20), M("d", 1, 10)]
    assert [m.name for m in packing.pack_order(ms)] == ["b", "c", "a", "d"]
    as_json = [{"name": m.name, "cores": m.cores, "timeout_min": m.timeout_min} for m in ms]
    assert [r["name"] for r in H.pack_order(as_json)] == ["b", "c", "a", "d"]
    assert list(itertools.chain(packing.shards(ms, 1, 4))) == [ms]
