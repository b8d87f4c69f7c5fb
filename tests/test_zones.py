"""Zones: a VM goes to the first zone with capacity (ZONE_RESOURCE_POOL_EXHAUSTED moves it on, one line per try,
nothing left where it failed; spot then on demand when allowed), and the safety nets see VMs in every zone."""

from __future__ import annotations

import time

import pytest

from lib import compute, guard, status, sweep, vmplan
from lib.config import Config
from lib.errors import ConfigError
from lib.state import SessionState
from tests.support.vms import SMALL, reap, vm_env

A, B, C, F = (f"us-central1-{z}" for z in "abcf")


@pytest.fixture
def vms(localcloud, tmp_path):
    """The VMs these tests create stay up until here (what each test asserts about zones is checked in it)."""
    env_gen = vm_env(localcloud, tmp_path)
    env = next(env_gen)
    yield env
    reap(env.cfg, env.prefix)  # every zone
    next(env_gen, None)  # the usual check: nothing of the test left alive


def plan(vms, *, spot: bool = False, zones: str = "", **kw):
    cfg = vms.cfg.replace(zones=zones) if zones else vms.cfg
    return cfg, compute.plan_vm(cfg, name=vms.name(), kind="build", run_id=vms.prefix, startup_script="sleep 600",
                                spot=spot, **kw)


def tries(logs: list[str]) -> list[str]:
    return [line for line in logs if "ZONE_RESOURCE_POOL_EXHAUSTED" in line]


# ----------------------------------------------------------------------------------------------- which zones


def test_default_zones_are_the_regions_zones_that_offer_the_machine_type(vms):
    assert vmplan.candidate_zones(vms.cfg, SMALL) == [A, B, C, F]  # the configured zone first
    assert vmplan.candidate_zones(vms.cfg.replace(zone=C), SMALL) == [C, A, B, F]
    assert vmplan.candidate_zones(vms.cfg.replace(zone=F), "h3-standard-88") == [A, B, C]  # F has no H3


def test_configured_zones_are_tried_in_their_order(vms):
    _, spec = plan(vms, zones=f"{C},{A}")
    assert spec.zone == C and spec.zones == (C, A)
    assert spec.describe()["zones"] == [C, A]
    assert vmplan.candidate_zones(vms.cfg.replace(zones=f"{F},{B}"), "h3-standard-88") == [B]  # F has no H3


def test_zones_config_takes_a_toml_list_and_refuses_another_region(tmp_path):
    file = tmp_path / "ops-hpc.toml"
    file.write_text(f'zones = ["{B}", "{C}"]\n', encoding="utf-8")
    assert Config.load(env={}, path=file).zone_list == [B, C]
    assert Config.load({"zones": f"{C},{A}"}, env={}, path="").zone_list == [C, A]
    with pytest.raises(ConfigError, match="us-east1-b not in region us-central1"):
        Config.load({"zones": f"{A},us-east1-b"}, env={}, path="")
    with pytest.raises(ConfigError, match="expected zones like"):
        Config.load({"zones": "central"}, env={}, path="")


# ----------------------------------------------------------------------------------------------- failover


def test_a_stockout_moves_the_vm_to_the_next_zone_with_one_line_per_try(vms, faults):
    faults("compute", "stockout", match=f"zones/{A}/")
    cfg, spec = plan(vms)
    vm = compute.create_vm(cfg, spec, on_log=vms.log)
    assert vm.zone == B and vm.status == "RUNNING"
    assert tries(vms.logs) == [f"{A}: no capacity for on-demand {SMALL} (ZONE_RESOURCE_POOL_EXHAUSTED); trying {B}"]
    assert [line for line in vms.logs if line.startswith("creating")][0].count(f"in {A}") == 1
    assert compute.get_vm(cfg, spec.name) is None  # nothing in the zone that failed
    assert SessionState(cfg).vms()[spec.name]["zone"] == B


def test_failover_follows_the_configured_order(vms, faults):
    faults("compute", "stockout", match=f"zones/{C}/")
    faults("compute", "stockout", match=f"zones/{B}/")
    cfg, spec = plan(vms, zones=f"{C},{B},{A}")
    assert compute.create_vm(cfg, spec, on_log=vms.log).zone == A
    assert [line.split(":")[0] for line in tries(vms.logs)] == [C, B]
    assert tries(vms.logs)[1].endswith(f"trying {A}")


def test_spot_tries_every_zone_then_on_demand_when_allowed(vms, faults):
    faults("compute", "stockout", count=4, match=r"zones/us-central1-./instances")
    cfg, spec = plan(vms, spot=True)
    vm = compute.create_vm(cfg, spec, on_log=vms.log, on_demand_fallback=True)
    assert vm.zone == A and not vm.spot
    assert len(tries(vms.logs)) == 4 and tries(vms.logs)[-1].endswith(f"trying {A} on demand")
    assert all("spot" in line for line in tries(vms.logs))


def test_spot_without_fallback_stops_after_the_last_zone_and_creates_nothing(vms, faults):
    faults("compute", "stockout", count=10, match=r"zones/us-central1-./instances")
    cfg, spec = plan(vms, spot=True)
    with pytest.raises(compute.Stockout, match=r"no capacity for e2-standard-2 in .*\(spot\).*nothing was created"):
        compute.create_vm(cfg, spec, on_log=vms.log)
    assert len(tries(vms.logs)) == 4
    assert spec.name not in {vm.name for vm in compute.list_vms_in_zones(cfg, ours_only=False)}
    assert spec.name not in SessionState(cfg).vms()


def test_a_zone_that_ran_out_earlier_in_the_launch_is_tried_last(vms):
    exhausted = {(A, False)}
    cfg, spec = plan(vms)
    assert compute.create_vm(cfg, spec, on_log=vms.log, exhausted=exhausted).zone == B
    assert f"in {B}" in vms.logs[0]


def test_an_instance_left_in_the_failed_zone_is_deleted(vms, monkeypatch):
    """GCE may leave a failed instance behind; the failover deletes it before trying the next zone."""
    real = compute.wait_operation
    calls = []

    def stocked_out_once(op, what, **kw):
        real(op, what, **kw)
        calls.append(what)
        if len(calls) == 1:
            raise compute.Stockout(f"{what} failed: ZONE_RESOURCE_POOL_EXHAUSTED")

    monkeypatch.setattr(compute, "wait_operation", stocked_out_once)
    cfg, spec = plan(vms, zones=f"{A},{B}")
    assert compute.create_vm(cfg, spec, on_log=vms.log).zone == B
    monkeypatch.setattr(compute, "wait_operation", real)
    assert compute.get_vm(cfg.replace(zone=A), spec.name) is None
    assert compute.get_vm(cfg.replace(zone=B), spec.name) is not None


def test_the_guard_deletes_the_vm_in_the_zone_it_landed_in(vms, faults):
    faults("compute", "stockout", match=f"zones/{A}/")
    cfg, spec = plan(vms)
    with guard.VMGuard(cfg, spec.name, on_log=vms.log):
        assert compute.create_vm(cfg, spec, on_log=vms.log).zone == B
    assert compute.get_vm(cfg.replace(zone=B), spec.name) is None


# ----------------------------------------------------------------------------------------------- every zone


def test_list_vms_in_zones_sees_every_zone_in_one_call(vms):
    a = vms.create()
    cfg, spec = plan(vms, zones=C)
    compute.create_vm(cfg, spec, on_log=vms.log)
    found = {vm.name: vm.zone for vm in compute.list_vms_in_zones(vms.cfg)}
    assert found[a] == A and found[spec.name] == C
    assert spec.name not in {vm.name for vm in compute.list_vms(vms.cfg)}  # the zone list alone misses it


def test_sweep_and_cleanup_see_a_vm_in_another_zone(vms):
    cfg, spec = plan(vms, zones=C)
    compute.create_vm(cfg, spec, on_log=vms.log)
    result = sweep.sweep(vms.cfg, dry_run=True, now=time.time() + 3 * 3600)
    assert any(item.name == spec.name and item.zone == C for item in result.would_delete)
    asked = []
    sweep.cleanup(vms.cfg, confirm=lambda question: asked.append(question) and False)
    assert spec.name in asked[0]


def test_status_shows_a_vm_in_another_zone(vms):
    cfg, spec = plan(vms, zones=C)
    compute.create_vm(cfg, spec, on_log=vms.log)
    info = status.status(vms.cfg)
    assert {row["name"]: row["zone"] for row in info["vms"]}[spec.name] == C
    assert any(line.startswith(f"  {spec.name}  RUNNING  in {C}  ") for line in status.format_status(info))


def test_a_fan_out_shares_what_ran_out_and_follows_the_spot_policy(vms, monkeypatch):
    import importlib

    from lib.stage import StagedModel

    launching = importlib.import_module("lib.runstaged.launch")  # the package re-exports its function `launch`

    calls = []

    def create(cfg, spec, *, on_log, state, on_demand_fallback, exhausted):
        calls.append((spec.name, on_demand_fallback, exhausted))
        exhausted.add((A, True))  # the first VM found zone A out of spot capacity
        return compute.Vm(name=spec.name, status="RUNNING", zone=B, spot=False)

    monkeypatch.setattr(compute, "create_vm", create)
    monkeypatch.setattr(launching, "_confirm_up", lambda *a, **k: None)
    specs = [plan(vms, spot=True)[1] for _ in range(2)]
    shards = [[StagedModel(name=f"m{i}", main="main.tcl", cores=1, timeout_min=5)] for i in range(2)]
    runs = launching.launch(vms.cfg, vms.prefix, shards, specs=specs, on_log=vms.log, on_demand_fallback=True)
    assert [(r.zone, r.spot) for r in runs] == [(B, False), (B, False)]  # where and how each VM really runs
    assert [fallback for _, fallback, _ in calls] == [True, True]
    assert calls[0][2] is calls[1][2] and calls[1][2] == {(A, True)}
