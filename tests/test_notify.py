"""Notifications, received by pytest-httpserver: from the VM (its run's end, a model's failure) with the PC off,
and from the PC when results land verified (watch, sweep --pull); receivers that are down, broken or slow
never fail a run or a pull."""

from __future__ import annotations

import json
import smtplib
import time
import uuid
from pathlib import Path

from werkzeug import Response

from lib import notify, runstaged, storage
from lib.config import Config
from tests.support.bins import run_bin
from tests.support.results import make_zip, manifest_for, put
from tests.support.vms import vm_config, wait_gone

DOWN = "http://127.0.0.1:9/down"  # nothing listens there: connection refused
RUN = "run-20261206-090000-beef"


def _bodies(httpserver, path: str) -> list[dict]:
    return [json.loads(req.get_data()) for req, _ in httpserver.log if req.path == path]


# -- from the VM ------------------------------------------------------------------------------------------


def test_the_vm_posts_a_failure_and_its_end_with_the_pc_off_and_a_bad_receiver_fails_nothing(
        localcloud, image, tmp_path, httpserver):
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    httpserver.expect_request("/broken", method="POST").respond_with_data("no", status=500)
    hooks = f"{httpserver.url_for('/hook')}, {DOWN}, {httpserver.url_for('/broken')}, mailto:me@example.org"
    cfg = vm_config(localcloud, tmp_path / "state", bucket=f"t-{uuid.uuid4().hex[:10]}", time_scale=30,
                    notify=hooks, notify_on="end,failure")
    storage.ensure_bucket(cfg)
    base = tmp_path / "batch"
    for name, tcl in (("good", 'puts "fine"\n'), ("bad", 'error "deliberate failure"\n')):
        (base / name).mkdir(parents=True)
        (base / name / "main.tcl").write_text(tcl)
    (base / "batch.txt").write_text("good\nbad\n")
    out = runstaged.run_staged(cfg, base / "batch.txt", wait=False, image=image)  # then the PC is "off"
    (vm,) = out.vms
    assert wait_gone(cfg, vm, 120), "the VM did not finish and delete itself"
    assert {b.name for b in storage.list_blobs(cfg, f"{out.run_id}/")} == {f"{out.run_id}/good.zip",
                                                                          f"{out.run_id}/bad.zip"}
    status = storage.download_bytes(cfg, f"_status/{out.run_id}/{vm}.txt").decode()
    assert "state=done" in status  # the receivers that were down or broken did not fail the run

    bodies = _bodies(httpserver, "/hook")
    failure = [b for b in bodies if b["event"] == "failure"]
    end = [b for b in bodies if b["event"] == "end"]
    assert len(failure) == 1 and failure[0]["model"] == "bad" and failure[0]["state"] == "failed"
    assert len(end) == 1
    assert end[0]["run_id"] == out.run_id and end[0]["vm"] == vm and end[0]["state"] == "done"
    assert end[0]["models"] == "good:ok,bad:failed"
    assert end[0]["results"] == f"gs://{cfg.bucket_name}/{out.run_id}/"
    assert float(end[0]["cost_usd"]) > 0 and "list prices" in end[0]["text"]
    assert "good: ok" in end[0]["text"] and "bad: failed" in end[0]["text"]
    assert len([r for r, _ in httpserver.log if r.path == "/broken"]) == 3 * 2  # 3 tries for each of 2 messages


def test_run_staged_wait_posts_when_it_has_pulled_the_results(localcloud, image, tmp_path, httpserver):
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    cfg = vm_config(localcloud, tmp_path / "state", bucket=f"t-{uuid.uuid4().hex[:10]}", time_scale=30,
                    notify=httpserver.url_for("/hook"), notify_on="pulled")
    storage.ensure_bucket(cfg)
    (tmp_path / "batch" / "one").mkdir(parents=True)
    (tmp_path / "batch" / "one" / "main.tcl").write_text('puts "fine"\n')
    (tmp_path / "batch" / "batch.txt").write_text("one\n")
    out = runstaged.run_staged(cfg, tmp_path / "batch" / "batch.txt", wait=True, image=image,
                               results_dir=tmp_path / "results")
    assert not out.lost
    (body,) = _bodies(httpserver, "/hook")  # only "pulled" was asked for: the VM posted nothing
    assert body["event"] == "pulled" and body["sets"] == [f"{out.run_id}/one"] and f"{out.run_id}: one ok" in body["text"]


def test_only_webhooks_travel_in_the_vm_metadata():
    cfg = Config.load({"backend": "local", "notify": "https://hooks.slack.com/services/T/B/x, mailto:me@example.org",
                       "notify_on": "end,pulled"}, env={}, path="")
    assert notify.vm_metadata(cfg) == {"ops-hpc-notify": "https://hooks.slack.com/services/T/B/x",
                                       "ops-hpc-notify-on": "end"}
    assert notify.vm_metadata(cfg.replace(notify_on="pulled")) == {}
    assert notify.vm_metadata(cfg.replace(notify="mailto:me@example.org")) == {}


# -- from the PC ------------------------------------------------------------------------------------------


def _a_result_in(cfg: Config, model: str = "frame", state: str = "ok") -> str:
    files = {"output/disp.out": b"0.0 1.0\n1.0 2.0\n"}
    put(cfg, f"{RUN}/{model}.zip", make_zip(files, manifest=manifest_for(files, run_id=RUN, model=model, state=state)))
    return f"{RUN}/{model}"


def test_watch_posts_once_when_results_land_verified(localcloud, bucket, tmp_path, httpserver):
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    set_id = _a_result_in(bucket)
    env = localcloud.env(bucket=bucket.bucket_name, notify=httpserver.url_for("/hook"), state_dir=str(tmp_path / "s"))
    done = run_bin("pull", "--yes", "--watch", "--interval", "0.2", "--max-polls", "3", "--dir", str(tmp_path / "r"),
                   env=env)
    assert done.returncode == 0, done.stderr
    (body,) = _bodies(httpserver, "/hook")  # three polls, one set landed: one message
    assert body["event"] == "pulled" and body["sets"] == [set_id] and body["runs"] == [RUN]
    assert f"{RUN}: frame ok" in body["text"] and body["folder"] == str((tmp_path / "r").resolve())
    assert (tmp_path / "r" / RUN / "frame" / "output" / "disp.out").exists()


def test_sweep_pull_posts_and_a_receiver_that_is_down_fails_nothing(localcloud, bucket, tmp_path, httpserver):
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    _a_result_in(bucket, "truss", "timeout")
    env = localcloud.env(bucket=bucket.bucket_name, notify=f"{DOWN} {httpserver.url_for('/hook')}",
                         state_dir=str(tmp_path / "s"), results_dir=str(tmp_path / "r"))
    swept = run_bin("sweep", "--pull", env=env)
    assert swept.returncode == 0, swept.stderr
    (body,) = _bodies(httpserver, "/hook")
    assert body["event"] == "pulled" and f"{RUN}: truss timeout" in body["text"]
    assert "notification to webhook 127.0.0.1 failed" in swept.stdout + swept.stderr
    assert "/down" not in swept.stdout + swept.stderr  # a webhook's path is its secret: logs show the host
    assert (tmp_path / "r" / RUN / "truss" / "MANIFEST.json").exists()


def test_a_pull_with_notifications_off_for_pulled_posts_nothing(localcloud, bucket, tmp_path, httpserver):
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    _a_result_in(bucket)
    env = localcloud.env(bucket=bucket.bucket_name, notify=httpserver.url_for("/hook"), notify_on="end",
                         state_dir=str(tmp_path / "s"))
    assert run_bin("pull", "--yes", "--dir", str(tmp_path / "r"), env=env).returncode == 0
    # the worker's httpserver is shared: count only the hook (a stray request of another test may land too)
    assert not [request for request, _ in httpserver.log if request.path == "/hook"]


def test_a_slow_receiver_is_given_up_after_bounded_tries(httpserver, no_retry_sleep):
    def slow(request):
        time.sleep(0.6)
        return Response("late")

    httpserver.expect_request("/slow", method="POST").respond_with_handler(slow)
    cfg = Config.load({"backend": "local", "notify": httpserver.url_for("/slow")}, env={}, path="")
    logged: list[str] = []
    started = time.monotonic()
    out = notify.send(cfg, "pulled", "t", "x", on_log=logged.append, timeout=0.2)
    assert time.monotonic() - started < 10
    assert out == [{"target": "webhook localhost", "ok": False, "error": out[0]["error"]}]
    assert "timed out" in out[0]["error"].lower() and no_retry_sleep == [1.0, 2.0]
    assert logged and "the run is not affected" in logged[0] and "/slow" not in logged[0]


def test_a_receiver_that_refuses_is_not_retried(httpserver, no_retry_sleep):
    httpserver.expect_request("/gone", method="POST").respond_with_data("no such hook", status=404)
    cfg = Config.load({"backend": "local", "notify": httpserver.url_for("/gone")}, env={}, path="")
    (out,) = notify.send(cfg, "pulled", "t", "x")
    assert not out["ok"] and "404" in out["error"] and no_retry_sleep == []
    assert len([r for r, _ in httpserver.log if r.path == "/gone"]) == 1


class FakeSMTP:
    sent: list = []
    logins: list = []

    def __init__(self, host, port, timeout):
        self.host, self.port = host, port

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def starttls(self):
        pass

    def login(self, user, password):
        FakeSMTP.logins.append((user, password))

    def send_message(self, message):
        FakeSMTP.sent.append(message)


def test_mail_logs_in_with_the_password_from_the_environment_only(monkeypatch):
    monkeypatch.setattr(smtplib, "SMTP", FakeSMTP)
    FakeSMTP.sent, FakeSMTP.logins = [], []
    cfg = Config.load({"backend": "local", "notify": "mailto:me@example.org", "smtp_server": "smtp.example.org:587",
                       "smtp_user": "robot"}, env={}, path="")
    logged: list[str] = []
    monkeypatch.delenv(notify.PASSWORD_ENV, raising=False)
    (out,) = notify.send(cfg, "pulled", "results", "text", on_log=logged.append)
    assert not out["ok"] and notify.PASSWORD_ENV in out["error"] and not FakeSMTP.sent
    monkeypatch.setenv(notify.PASSWORD_ENV, "s3cret-pw")
    logged.clear()
    (out,) = notify.send(cfg, "pulled", "results", "text", on_log=logged.append)
    assert out["ok"] and FakeSMTP.logins == [("robot", "s3cret-pw")] and not logged
    (message,) = FakeSMTP.sent
    assert message["To"] == "me@example.org" and message["Subject"] == "results" and message["From"] == "robot"
    assert "s3cret-pw" not in json.dumps([str(v) for v in vars(cfg).values()])


def test_the_vm_helper_shapes_what_lib_notify_shapes(tmp_path):
    import subprocess
    import sys

    text = tmp_path / "text"
    text.write_text("a\nb\n")
    out = tmp_path / "body.json"
    helper = Path(__file__).resolve().parents[1] / "vm-scripts" / "ops_helpers.py"
    url = subprocess.run([sys.executable, str(helper), "notify_body", "https://ntfy.sh/runs", "end", "T", str(text),
                          str(out), "run_id=r"], capture_output=True, text=True, check=True).stdout.strip()
    assert (url, json.loads(out.read_text())) == notify.payload("https://ntfy.sh/runs", "end", "T", "a\nb")
