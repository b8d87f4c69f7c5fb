"""costplan: machine shapes, the SMT rule, shards and their bounds, auto machine choice, costs, confirmation."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lib import costplan, packing, pricing, vmplan
from lib.config import Config
from lib.costplan import Machine
from lib.errors import ConfigError, Refused, UsageError


@dataclass(frozen=True)
class M:
    name: str
    cores: int = 1
    timeout_min: int = 5


@dataclass(frozen=True)
class Fat(M):
    mem_gb: float = 0.0


@pytest.fixture
def cfg():
    return Config.load({"project": "cost-project-1"}, env={}, path="")


def _m(name: str, vcpus: int, price: float | None = 1.0) -> Machine:
    return Machine(name, vcpus, vcpus * 4.0, price)


@pytest.mark.parametrize(("name", "expected"), [
    ("e2-standard-2", (2, 8)), ("h3-standard-88", (88, 352)), ("c2d-highcpu-16", (16, 32)),
    ("n2-highmem-8", (8, 64)), ("n2-custom-8-32768", (8, 32)), ("custom-4-8192", (4, 8)),
    ("zz-standard-4", None), ("e2-micro", None),
])
def test_shapes_are_read_off_the_name(name, expected):
    assert costplan.shape(name) == expected


def test_usable_cores_is_the_smt_rule(cfg):
    assert _m("c2d-standard-8", 8).usable_cores == 4  # SMT: the physical cores
    h3 = Machine("h3-standard-88", 88, 352, 5.0)
    assert h3.usable_cores == 88  # SMT off: every vCPU is a whole core
    assert Machine("c2d-standard-8", 8, 32, 1.0, cores=8).usable_cores == 8  # a batch's `#cores N`
    for name in ("e2-standard-2", "h3-standard-88", "c2d-highcpu-16", "n2-highmem-8", "t2d-standard-8"):
        assert costplan.machine(cfg, name).usable_cores == packing.usable_cores(name)  # what the VM packs into


def test_machine_is_priced_from_the_table_with_its_boot_disk(cfg):
    m = costplan.machine(cfg, "e2-standard-2")
    assert (m.vcpus, m.memory_gb, m.usable_cores) == (2, 8, 1)
    assert m.usd_per_hour == pytest.approx(pricing.vm_hourly(cfg, "e2-standard-2", disk_gb=cfg.disk_size_gb))
    assert m.usd_per_hour > pricing.hourly(cfg, "e2-standard-2")  # the disk is billed too


def test_a_machine_type_missing_from_the_price_table_has_no_price(cfg):
    assert costplan.machine(cfg, "n1-standard-4").usd_per_hour is None


def test_plan_shards_pack_balance_and_bound_each_vm():
    models = [M("a", timeout_min=50), M("b", timeout_min=30), M("c", timeout_min=20), M("d", timeout_min=10)]
    shards = costplan.plan_shards(models, 2, _m("x", 4), upload_timeout_min=30)  # 2 usable cores per VM
    assert [[m.name for m in s.models] for s in shards] == [["a"], ["b", "c", "d"]]
    for s in shards:
        timeouts = [m.timeout_min for m in s.models]
        assert s.makespan_s == int(packing.predicted_makespan(s.models, 2, mem_total_mb=16384))
        assert s.max_run_s == packing.max_run_seconds(s.models, 2, 30, mem_total_mb=16384)
        assert s.max_run_s <= vmplan.max_run_seconds(timeouts, 30)  # never above the serial sum
        assert s.makespan_s <= s.expected_s <= s.max_run_s


def test_more_vms_than_models_gives_one_model_each():
    shards = costplan.plan_shards([M("a"), M("b")], 5, _m("x", 2))
    assert len(shards) == 2 and all(len(s.models) == 1 for s in shards)


def test_cores_used_is_the_largest_model_while_models_run_one_at_a_time():
    shards = costplan.plan_shards([M("a", cores=2), M("b", cores=1)], 1, _m("x", 4))
    assert shards[0].cores_used == 2


def test_a_model_larger_than_the_machine_is_refused_naming_it():
    with pytest.raises(UsageError, match=r"big \(cores=8\).*e2-standard-4 has \(2 usable\)"):
        costplan.plan_shards([M("small"), M("big", cores=8)], 1, _m("e2-standard-4", 4))
    fat = Fat("fat", mem_gb=64)
    with pytest.raises(UsageError, match=r"fat \(mem=64\).*more memory than e2-standard-4 has \(16 GB\)"):
        costplan.plan_shards([fat], 1, _m("e2-standard-4", 4))


def test_plan_refuses_no_vms_and_no_models():
    with pytest.raises(UsageError, match="at least 1"):
        costplan.plan([M("a")], 0, _m("x", 2))
    with pytest.raises(UsageError, match="no models"):
        costplan.plan([], 1, _m("x", 2))


def test_expected_and_worst_cost_add_up_every_vm():
    p = costplan.plan([M("a", timeout_min=5), M("b", timeout_min=5)], 2, _m("x", 2, price=0.5), upload_timeout_min=30)
    assert p.worst_usd == pytest.approx(round(2 * 0.5 * 43 / 60, 2))     # 2 VMs x 43 min (packed bound) x 0.5 USD/h
    assert p.expected_usd == pytest.approx(round(2 * 0.5 * 42 / 60, 2))  # boot 5 + 5 + 1 + upload 30 + 1 min each
    assert p.makespan_s == 360 and p.max_run_s == 43 * 60 < 3600


def test_an_unpriced_machine_has_unknown_costs_and_always_needs_confirmation():
    p = costplan.plan([M("a")], 1, _m("x", 2, price=None))
    assert p.expected_usd is None and p.worst_usd is None
    assert costplan.needs_confirmation(p, 1e9)


def test_the_example_batch_figures(cfg):
    """What the README quotes: the example batch (2 models, 5 min each) at list prices."""
    two = [M("frame_pushover"), M("truss_transient")]
    small = costplan.plan(two, 2, costplan.machine(cfg, "e2-standard-2"), upload_timeout_min=cfg.upload_timeout_min)
    assert (small.expected_usd, small.worst_usd) == (0.13, 0.14)
    big = costplan.plan(two, 1, costplan.machine(cfg, "h3-standard-88"), upload_timeout_min=cfg.upload_timeout_min)
    assert (big.expected_usd, big.worst_usd) == (3.47, 3.55)
    auto = costplan.choose_machine(two, 1, costplan.candidates(cfg), upload_timeout_min=cfg.upload_timeout_min)
    assert (auto.machine.name, auto.expected_usd, auto.worst_usd) == ("e2-standard-4", 0.11, 0.12)


def test_auto_picks_the_cheapest_machine_that_fits_the_largest_model():
    machines = [_m("h3-standard-16", 16, 2.0), _m("tiny", 2, 0.1), _m("mid", 8, 0.8)]  # 16 (SMT off), 1, 4 usable cores
    assert costplan.choose_machine([M("a")], 1, machines).machine.name == "tiny"
    assert costplan.choose_machine([M("a"), M("b")], 1, machines).machine.name == "mid"  # packed: both at once
    assert costplan.choose_machine([M("a", cores=3), M("b", cores=4)], 1, machines).machine.name == "h3-standard-16"
    p = costplan.choose_machine([M("a", cores=12)], 1, machines)
    assert p.machine.name == "h3-standard-16" and p.chosen_from == ("h3-standard-16", "tiny", "mid")


def test_auto_skips_unpriced_machines_and_refuses_when_nothing_fits():
    machines = [_m("free-looking", 2, None), _m("priced", 2, 0.3)]
    assert costplan.choose_machine([M("a")], 1, machines).machine.name == "priced"
    with pytest.raises(UsageError, match=r"fits a \(cores=4\)"):
        costplan.choose_machine([M("a", cores=4)], 1, machines)


def test_auto_never_picks_a_machine_that_finishes_later(monkeypatch):
    """A cheaper machine whose plan ends later loses to one that finishes as soon as the plan can."""
    real = costplan.plan_shards

    def fake(models, vms, machine, *, upload_timeout_min=30):
        shards = real(models, vms, machine, upload_timeout_min=upload_timeout_min)
        if machine.name == "slow":  # as packing would predict for a machine with fewer cores
            return [costplan.Shard(s.models, s.cores_used, s.makespan_s * 4, s.expected_s * 4, s.max_run_s * 4)
                    for s in shards]
        return shards

    monkeypatch.setattr(costplan, "plan_shards", fake)
    assert costplan.choose_machine([M("a")], 1, [_m("slow", 2, 0.1), _m("fast", 8, 0.3)]).machine.name == "fast"


def test_candidates_come_from_config_cheapest_first(cfg):
    names = [m.name for m in costplan.candidates(cfg.replace(machine_types="h3-standard-88, e2-standard-4,e2-standard-2"))]
    assert names == ["e2-standard-2", "e2-standard-4", "h3-standard-88"]


def test_config_machine_types_takes_a_toml_list_or_text_and_checks_names(tmp_path):
    file = tmp_path / "ops-hpc.toml"
    file.write_text('machine_types = ["e2-standard-2", "c2d-standard-56"]\nconfirm_above_usd = 5\n')
    cfg = Config.load(env={}, path=file)
    assert cfg.machine_type_list == ["e2-standard-2", "c2d-standard-56"] and cfg.confirm_above_usd == 5
    assert Config.load(env={"OPS_HPC_MACHINE_TYPES": "e2-standard-8"}, path="").machine_type_list == ["e2-standard-8"]
    assert "h3-standard-88" in Config.load(env={}, path="").machine_type_list
    with pytest.raises(ConfigError, match="machine_types.*'e2 standard'"):
        Config.load(env={"OPS_HPC_MACHINE_TYPES": "e2-standard-2,e2 standard"}, path="")


def test_preview_carries_the_plan_and_the_price_label(cfg):
    p = costplan.plan([M("a"), M("b", cores=2)], 1, costplan.machine(cfg, "e2-standard-4"))  # 2 usable cores
    data = costplan.preview(p, confirm_above_usd=20, prices=pricing.note(cfg))
    assert data["machine_type"] == "e2-standard-4" and data["vms"] == 1 and data["needs_confirmation"] is False
    assert data["per_vm"][0] == {"models": ["a", "b"], "cores_used": 2, "makespan_s": 720,  # one after the other
                                 "expected_s": p.shards[0].expected_s, "max_run_s": 49 * 60}
    assert "list prices" in data["usd_are"]
    text = "\n".join(costplan.format_preview(data))
    for needle in ("1 VM(s) of e2-standard-4", "2 core(s) used", "makespan 0h12m", "max run duration 0h49m",
                   f"worst case {p.worst_usd:.2f} USD", "list prices", "taken 2026-"):
        assert needle in text


def test_confirm_cost_passes_cheap_runs_and_yes_and_asks_otherwise(cfg):
    cheap = costplan.plan([M("a")], 1, _m("x", 2, 0.5))
    dear = costplan.plan([M("a", timeout_min=600)], 1, _m("x", 2, 5.0))
    asked: list[str] = []
    costplan.confirm_cost(cheap, cfg, yes=False, ask=None)                     # 0.50 <= 20: no question
    costplan.confirm_cost(dear, cfg, yes=True, ask=None)                       # --yes
    costplan.confirm_cost(dear, cfg, yes=False, ask=lambda q: asked.append(q) or True)
    assert "53.17 USD" in asked[0] and "confirm_above_usd = 20" in asked[0]
    with pytest.raises(Refused, match="not confirmed"):
        costplan.confirm_cost(dear, cfg, yes=False, ask=lambda q: False)


def test_without_a_terminal_an_expensive_run_is_refused_with_exit_3(cfg):
    dear = costplan.plan([M("a", timeout_min=600)], 1, _m("x", 2, 5.0))
    with pytest.raises(Refused) as err:
        costplan.confirm_cost(dear, cfg, yes=False, ask=None)
    assert err.value.code == 3 and "--yes" in str(err.value) and "\n" not in str(err.value)
    costplan.confirm_cost(dear, cfg.replace(confirm_above_usd=100.0), yes=False, ask=None)
