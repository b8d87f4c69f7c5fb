"""The follow rules as a table: observation + history -> actions, with no cloud and no daemon."""

from __future__ import annotations

import pytest

from lib.runstaged.follow import FailedPull, Followed, Observation, Policy, Relaunch, plan
from lib.runstaged.launch import VmRun

RUN = "run-20260101-000000-abcd"


def _vm(name="vm1", models=("a", "b"), spot=True, attempt=0, state=None, gone=False, stranded=""):
    status = {}
    if state:
        status = {"state": state, "per_model": {m: {"state": "pending", "seconds": None} for m in models}}
        if stranded:
            status["stranded"] = stranded
    return VmRun(name=name, models=list(models), spot=spot, machine_type="e2-standard-2", attempt=attempt,
                 status=status, gone=gone)


def _followed(*vms, expected=("a", "b"), **kw):
    return Followed(run_id=RUN, vms=list(vms), expected=list(expected), **kw)


@pytest.mark.parametrize(("attempt", "retries", "fallback", "want"), [
    (0, 2, True, Relaunch(("b",), True, "e2-standard-2", 1, "vm1")),   # first preemption: spot again
    (1, 2, True, Relaunch(("b",), True, "e2-standard-2", 2, "vm1")),   # second: still spot
    (2, 2, True, Relaunch(("b",), False, "e2-standard-2", 3, "vm1")),  # after two spot relaunches: on demand
    (2, 2, False, None),                                               # no fallback: lost
    (0, 0, True, Relaunch(("b",), False, "e2-standard-2", 1, "vm1")),  # no spot retries at all
])
def test_spot_chain(attempt, retries, fallback, want):
    vm = _vm(attempt=attempt, state="running")
    f = _followed(vm, pulled={"a": "cleaned"})
    obs = Observation(now=100.0, gone={"vm1": (99.0, "compute.instances.preempted")})
    acts = plan(obs, f, Policy(spot_retries=retries, on_demand_fallback=fallback))
    assert acts.gone == ["vm1"]
    if want is None:
        assert not acts.relaunch and "b" in acts.lost and acts.finished
    else:
        assert acts.relaunch == [want] and not acts.lost and not acts.finished


def test_finished_models_are_never_rerun_landed_or_pulled():
    vm = _vm(models=("a", "b", "c"), state="running")
    f = _followed(vm, expected=("a", "b", "c"), pulled={"a": "cleaned"})
    obs = Observation(now=1.0, gone={"vm1": (1.0, "compute.instances.preempted")}, landed={"b": 7})
    acts = plan(obs, f)
    assert [r.models for r in acts.relaunch] == [("c",)]
    assert acts.pull == ["b"]


def test_on_demand_vm_that_vanishes_loses_its_unfinished_models():
    vm = _vm(spot=False, state="running")
    acts = plan(Observation(now=1.0, gone={"vm1": (1.0, "delete")}), _followed(vm))
    assert not acts.relaunch and set(acts.lost) == {"a", "b"} and acts.finished


def test_done_vm_still_there_is_deleted_after_the_grace():
    vm = _vm(state="done")
    f = _followed(vm, pulled={"a": "cleaned", "b": "cleaned"})
    first = plan(Observation(now=10.0, present={"vm1"}), f, Policy(done_grace_s=5))
    assert first.done_seen == ["vm1"] and not first.delete
    f.done_seen["vm1"] = 10.0
    assert not plan(Observation(now=14.0, present={"vm1"}), f, Policy(done_grace_s=5)).delete
    assert plan(Observation(now=15.5, present={"vm1"}), f, Policy(done_grace_s=5)).delete == ["vm1"]
    f.deleted.append("vm1")
    assert not plan(Observation(now=20.0, present={"vm1"}), f, Policy(done_grace_s=5)).delete  # once


def test_a_vm_whose_self_delete_was_refused_is_deleted_at_once():
    f = _followed(_vm(state="self_delete_refused"), pulled={"a": "cleaned", "b": "cleaned"})
    acts = plan(Observation(now=10.0, present={"vm1"}), f, Policy(done_grace_s=5))
    assert acts.delete == ["vm1"] and not acts.done_seen  # no grace: the VM said it cannot delete itself
    f.deleted.append("vm1")
    assert not plan(Observation(now=10.5, present={"vm1"}), f).delete  # once


def test_vm_with_stranded_results_is_rescued_before_any_delete():
    vm = _vm(state="upload_failed", stranded="b")
    f = _followed(vm, pulled={"a": "cleaned"})
    acts = plan(Observation(now=1.0, present={"vm1"}), f)
    assert acts.rescue == ["vm1"] and not acts.delete and not acts.done_seen
    f.rescued["vm1"] = [f"{RUN}/b.zip"]
    assert not plan(Observation(now=2.0, present={"vm1"}), f).rescue  # rescued once


def test_stranded_result_gone_with_its_vm_is_lost_and_says_so():
    vm = _vm(state="upload_failed", stranded="b")
    f = _followed(vm, pulled={"a": "cleaned"})
    acts = plan(Observation(now=1.0, gone={"vm1": (1.0, "compute.instances.maxRunDurationExceeded")}), f)
    assert "stranded" in acts.lost["b"] and acts.finished and not acts.relaunch


def test_a_refused_pull_is_not_retried_for_the_same_generation_until_its_backoff():
    vm = _vm(state="running")
    f = _followed(vm, failed_pulls={"a": FailedPull(generation=5, retry_at=50.0, backoff=5.0)})
    assert plan(Observation(now=10.0, landed={"a": 5}), f).pull == []  # same generation, backing off
    assert plan(Observation(now=10.0, landed={"a": 6}), f).pull == ["a"]  # a new generation: at once
    assert plan(Observation(now=51.0, landed={"a": 5}), f).pull == ["a"]  # after the backoff


def test_refused_result_with_no_vm_left_ends_the_follow_instead_of_spinning():
    vm = _vm(state="done", gone=True)
    f = _followed(vm, pulled={"b": "cleaned"}, failed_pulls={"a": FailedPull(5, 50.0, 5.0)})
    acts = plan(Observation(now=10.0, landed={"a": 5}), f)
    assert acts.finished and "refused" in acts.lost["a"] and not acts.pull


def test_everything_pulled_and_every_vm_gone_finishes():
    vm = _vm(state="done")
    f = _followed(vm, pulled={"a": "cleaned", "b": "cleaned"})
    acts = plan(Observation(now=1.0, gone={"vm1": (1.0, "delete")}), f)
    assert acts.finished and not acts.lost and acts.gone == ["vm1"]


def test_deadline_gives_up_what_is_missing():
    vm = _vm(state="running")
    f = _followed(vm, pulled={"a": "cleaned"}, deadline=100.0)
    assert not plan(Observation(now=99.0, present={"vm1"}), f).finished
    acts = plan(Observation(now=101.0, present={"vm1"}), f)
    assert acts.finished and "deadline" in acts.lost["b"] and "a" not in acts.lost


def test_fan_out_quota_is_checked_for_all_vms_together():
    from types import SimpleNamespace

    from lib.errors import OpsError
    from lib.runstaged.launch import check_quota

    specs = [SimpleNamespace(machine_type="e2-standard-2", spot=False, guest_cpus=2) for _ in range(3)]
    asked = []

    def quota(machine_type, cpus, spot):
        asked.append(cpus)
        return [{"metric": "CPUS", "limit": 4.0, "usage": 0.0, "needed": cpus, "ok": cpus <= 4}]

    with pytest.raises(OpsError, match=r"not enough CPUS quota for 3 VM\(s\) of e2-standard-2: they need 6 vCPUs, "
                                       r"limit 4, in use 0; use fewer VMs"):
        check_quota(specs, quota)
    assert asked == [6]
    check_quota(specs[:2], quota)  # two fit


def test_a_vm_the_follower_deleted_after_a_rescue_is_not_relaunched():
    vm = _vm(state="preempted", stranded="b")  # its TERM trap wrote `preempted` as the PC deleted it
    f = _followed(vm, pulled={"a": "cleaned"}, deleted=["vm1"])
    acts = plan(Observation(now=1.0, gone={"vm1": (1.0, "delete")}, landed={"b": 3}), f)
    assert not acts.relaunch and not acts.lost and acts.pull == ["b"]


def test_a_preempted_packed_vm_relaunches_only_its_unfinished_models():
    """A packed VM ran several models at once: the finished ones (landed or pulled) are never run again."""
    models = ("a", "b", "c", "d", "e")
    vm = _vm(models=models, state="preempted")
    vm.status["per_model"] = {"a": {"state": "ok", "seconds": 3.0}, "b": {"state": "interrupted", "seconds": None},
                              "c": {"state": "interrupted", "seconds": None}, "d": {"state": "ok", "seconds": 2.0},
                              "e": {"state": "pending", "seconds": None}}
    vm.status["running"] = "b,c"
    f = _followed(vm, expected=models, pulled={"a": "cleaned"})
    obs = Observation(now=5.0, gone={"vm1": (5.0, "compute.instances.preempted")}, landed={"d": 3})
    acts = plan(obs, f)
    assert [r.models for r in acts.relaunch] == [("b", "c", "e")]
    assert acts.pull == ["d"] and not acts.lost
