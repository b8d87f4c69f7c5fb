"""The pure rules behind `ops-hpc runs`, `log -f` and the notification bodies: tables, no cloud."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lib import console, notify, runlog, runrules
from lib.errors import UsageError
from lib.runrules import RunFacts, model_states, summarize

NOW = runrules.run_time("run-20261206-120000-aaaa")
assert NOW is not None


def status(state: str, updated: str = "2026-12-06T12:00:10Z", started: str = "2026-12-06T12:00:05Z",
           **models: str) -> dict:
    per = {}
    for name, text in models.items():
        s, _, secs = text.partition(" ")
        per[name] = {"state": s, "seconds": float(secs) if secs else None}
    return {"state": state, "updated": updated, "started": started, "per_model": per}


def test_run_time_comes_from_the_run_id():
    assert runrules.run_time("run-20261206-120000-aaaa") == NOW
    assert runrules.run_time("t-abc") is None


@pytest.mark.parametrize(("text", "ago"), [("7d", 7 * 86400), ("12h", 12 * 3600), ("30m", 1800), ("2w", 14 * 86400)])
def test_since_ages(text, ago):
    assert runrules.parse_since(text, NOW) == NOW - ago


def test_since_dates_are_utc_and_bad_text_is_one_line():
    assert runrules.parse_since("2026-12-06", NOW) == NOW - 12 * 3600
    assert runrules.parse_since("2026-12-06T12:00", NOW) == NOW
    with pytest.raises(UsageError, match="7d"):
        runrules.parse_since("last tuesday", NOW)


@pytest.mark.parametrize(("statuses", "alive", "expected"), [
    # one VM still working: unfinished models are running
    ({"vm1": status("running", a="ok 1.0", b="running")}, {"vm1": "RUNNING"}, {"a": "ok", "b": "running"}),
    # the VM is gone while its status said running (killed hard): lost
    ({"vm1": status("running", a="ok 1.0", b="running")}, {}, {"a": "ok", "b": "lost"}),
    # preempted, nothing relaunched it
    ({"vm1": status("preempted", a="failed 2.0", b="interrupted", c="pending")}, {},
     {"a": "failed", "b": "lost", "c": "lost"}),
    # a relaunch finished what the preempted VM left: the finished state wins whichever file is newer
    ({"vm1": status("preempted", updated="2026-12-06T12:00:20Z", a="ok 1", b="interrupted"),
      "vm1-r1": status("done", updated="2026-12-06T12:00:10Z", b="timeout 9")}, {},
     {"a": "ok", "b": "timeout"}),
    # a VM that says done and still exists (deleting itself) works on nothing
    ({"vm1": status("done", a="ok 1", b="pending")}, {"vm1": "RUNNING"}, {"a": "ok", "b": "lost"}),
    # nobody can list the VMs: an unfinished model is presumed running
    ({"vm1": status("running", a="running")}, None, {"a": "running"}),
])
def test_model_states(statuses, alive, expected):
    assert model_states(RunFacts("run-20261206-120000-aaaa", statuses=statuses, alive=alive)) == expected


def test_a_pulled_manifest_has_the_last_word_and_ssh_jobs_come_from_their_record():
    f = RunFacts("r", statuses={"vm": status("done", a="upload_failed 1")}, pulled_states={"a": "ok"}, alive={})
    assert model_states(f) == {"a": "ok"}
    jobs = RunFacts("r", records={"vm": {"kind": "run", "models": ["x", "y", "z"],
                                        "jobs": {"x": "finished", "y": "timeout"}}}, alive={})
    assert model_states(jobs) == {"x": "ok", "y": "timeout", "z": "lost"}


def test_summary_of_a_finished_run_costs_launch_to_last_status_at_list_prices():
    launched = NOW + 2
    f = RunFacts("run-20261206-120000-aaaa", alive={}, in_bucket={"b"}, pulled={"a": "cleaned"},
                 statuses={"vm1": status("done", updated="2026-12-06T13:00:02Z", a="ok 10", b="failed 5")},
                 records={"vm1": {"machine_type": "e2-standard-2", "spot": False, "launched": launched, "hourly": 2.0,
                                  "host": "pc-a", "zone": "us-central1-a"}})
    row = summarize(f, now=NOW + 86400)
    assert row["state"] == "failed" and row["models"] == {"ok": 1, "failed": 1, "timeout": 0, "running": 0, "lost": 0}
    assert row["cost_usd"] == 2.0 and row["cost_complete"] and row["cost_basis"] == "list prices"
    assert row["duration_s"] == 3600.0 and row["ended"] == "2026-12-06T13:00:02Z"
    assert row["results"] == {"total": 2, "pulled_verified": 1, "in_bucket": 1, "elsewhere": 0, "folder": ""}
    assert row["vms"][0]["state"] == "deleted" and row["vms"][0]["exists"] is False


def test_summary_of_a_running_run_costs_until_now_and_prices_an_unrecorded_rate():
    f = RunFacts("run-20261206-120000-aaaa", alive={"vm1": "RUNNING"},
                 statuses={"vm1": status("running", a="running")},
                 records={"vm1": {"machine_type": "m", "spot": True, "launched": NOW}})
    row = summarize(f, now=NOW + 1800, hourly=lambda mt, spot: 1.0 if (mt, spot) == ("m", True) else None)
    assert row["state"] == "running" and row["ended"] is None and row["duration_s"] == 1800.0
    assert row["cost_usd"] == 0.5 and row["vms"][0]["state"] == "running"


def test_results_pulled_by_another_pc_are_said_to_be_elsewhere_and_an_unpriced_vm_marks_the_cost():
    f = RunFacts("r", alive={}, statuses={"vm1": status("done", a="ok 1")}, records={"vm1": {"launched": NOW}})
    row = summarize(f, now=NOW + 60)
    assert row["results"]["elsewhere"] == 1 and row["results"]["pulled_verified"] == 0
    assert not row["cost_complete"]
    assert "1/1" not in runrules.format_runs([row]) and "pulled elsewhere" in runrules.format_runs([row])


def test_the_table_says_the_prices_are_list_prices():
    assert "no runs known" in runrules.format_runs([])
    row = summarize(RunFacts("run-20261206-120000-aaaa", alive={}, statuses={"v": status("done", a="ok 1")}),
                    now=NOW)
    assert "list prices" in runrules.format_runs([row], "prices taken 2026-01-01")


@pytest.mark.parametrize(("statuses", "alive", "over"), [
    ({}, set(), False),
    ({"v": {"state": "running"}}, {"v"}, False),
    ({"v": {"state": "done"}}, {"v"}, True),  # it says done and is deleting itself
    ({"v": {"state": "running"}}, set(), True),  # gone whatever it said
    ({"v": {"state": "preempted"}}, {"v", "v-r1"}, False),  # a relaunch is booting
    ({"v": {"state": "upload_failed"}}, None, True),
    ({"v": {"state": "running"}}, None, False),
])
def test_when_a_followed_run_is_over(statuses, alive, over):
    assert runlog.run_over(statuses, alive) is over


@pytest.mark.parametrize(("argv", "flags"), [
    (["-f"], ["--follow"]),
    (["-f", "run-20261206-120000-aaaa"], ["--follow", "--run-id", "run-20261206-120000-aaaa"]),
    (["-f", "run-20261206-120000-aaaa", "frame"], ["--follow", "--run-id", "run-20261206-120000-aaaa",
                                                    "--model", "frame"]),
    (["-f", "frame"], ["--follow", "--model", "frame"]),
    (["--tail", "5", "run-x"], ["--tail", "5", "--run-id", "run-x"]),
])
def test_log_positionals_become_the_tasks_flags(argv, flags):
    assert console.resolve(["log", *argv]) == ("task", "log", flags)


def _vm_helpers():
    path = Path(__file__).resolve().parents[2] / "vm-scripts" / "ops_helpers.py"
    spec = importlib.util.spec_from_file_location("ops_helpers_for_test", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("url", [
    "https://hooks.slack.com/services/T/B/x", "https://discord.com/api/webhooks/1/x",
    "https://acme.webhook.office.com/webhookb2/x", "https://ntfy.sh/my-runs", "http://127.0.0.1:9/hook",
])
def test_the_vm_and_the_pc_shape_a_webhook_body_alike(url):
    pc = notify.payload(url, "end", "title", "line 1\nline 2", {"run_id": "r"})
    vm = _vm_helpers().notify_body(url, "end", "title", "line 1\nline 2", {"run_id": "r"})
    assert pc == vm


def test_bodies_follow_the_host():
    assert notify.payload("https://hooks.slack.com/x", "end", "T", "x")[1] == {"text": "*T*\nx"}
    assert "content" in notify.payload("https://discord.com/api/webhooks/1/x", "end", "T", "x")[1]
    assert notify.payload("https://a.webhook.office.com/x", "end", "T", "x")[1]["@type"] == "MessageCard"
    assert notify.payload("https://ntfy.sh/topic", "end", "T", "x") == (
        "https://ntfy.sh/", {"topic": "topic", "title": "T", "message": "x"})
    url, body = notify.payload("https://example.org/hook", "pulled", "T", "x", {"sets": ["r/a"]})
    assert url == "https://example.org/hook" and body["event"] == "pulled" and body["sets"] == ["r/a"]
    assert notify.where("https://hooks.slack.com/services/SECRET") == "webhook hooks.slack.com"


@pytest.mark.parametrize(("statuses", "records", "needed"), [
    ({"v": {"state": "done"}}, {}, False),
    ({"v": {"state": "preempted"}, "w": {"state": "error"}}, {}, False),
    ({"v": {"state": "running"}}, {}, True),
    ({}, {"v": {"kind": "run"}}, True),  # a `make run` VM that has not recorded its end
    ({}, {"v": {"kind": "run", "state": "done"}}, False),
])
def test_the_vm_list_is_asked_only_for_runs_whose_vms_have_not_finished(statuses, records, needed):
    assert runrules.needs_vm_list(RunFacts("r", statuses=statuses, records=records)) is needed
