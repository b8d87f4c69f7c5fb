"""Every bin/ command, fed Google's real error bodies, says one short line and exits with the documented code.

A pytest-httpserver stands in for Google: its token endpoint signs the test in (or answers `invalid_grant`),
and every Compute and Storage URL answers the error under test, with the body Google sends. The commands
run in-process through `cli.run`, exactly as `python bin/NAME` runs them (a few also as real subprocesses).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import google.oauth2.credentials
import pytest
from werkzeug import Response

from lib import cli, clients, errors

REPO = Path(__file__).resolve().parents[1]
PROJECT = "ops-hpc-test"

SERVICE_DISABLED = {"error": {
    "code": 403,
    "message": f"Compute Engine API has not been used in project {PROJECT} before or it is disabled. Enable it by "
               f"visiting https://console.developers.google.com/apis/api/compute.googleapis.com/overview?project="
               f"{PROJECT} then retry.",
    "errors": [{"message": "Compute Engine API has not been used ...", "domain": "usageLimits",
                "reason": "accessNotConfigured", "extendedHelp": "https://console.developers.google.com"}],
    "status": "PERMISSION_DENIED",
    "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED", "domain": "googleapis.com",
         "metadata": {"service": "compute.googleapis.com", "consumer": f"projects/{PROJECT}",
                      "serviceTitle": "Compute Engine API", "containerInfo": PROJECT,
                      "activationUrl": "https://console.developers.google.com/apis/api/compute.googleapis.com/overview"}},
        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
         "message": "Compute Engine API has not been used in project before or it is disabled."},
    ],
}}
PERMISSION = {"error": {
    "code": 403,
    "message": "alice@example.com does not have storage.objects.list access to the Google Cloud Storage bucket. "
               "Permission 'storage.objects.list' denied on resource (or it may not exist).",
    "errors": [{"message": "alice@example.com does not have storage.objects.list access ...", "domain": "global",
                "reason": "forbidden"}],
}}
COMPUTE_PERMISSION = {"error": {
    "code": 403, "message": f"Required 'compute.instances.list' permission for 'projects/{PROJECT}'",
    "errors": [{"message": f"Required 'compute.instances.list' permission for 'projects/{PROJECT}'",
                "domain": "global", "reason": "forbidden"}],
}}
NO_BUCKET = {"error": {"code": 404, "message": "The specified bucket does not exist.",
                       "errors": [{"message": "The specified bucket does not exist.", "domain": "global",
                                   "reason": "notFound"}]}}
UNAUTHENTICATED = {"error": {
    "code": 401, "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                            "cookie or other valid authentication credential.",
    "errors": [{"message": "Invalid Credentials", "domain": "global", "reason": "authError",
                "locationType": "header", "location": "Authorization"}],
    "status": "UNAUTHENTICATED",
}}
RATE_LIMITED = {"error": {"code": 429, "message": "The rate of change requests to the object is too high.",
                          "errors": [{"message": "rate limited", "domain": "usageLimits",
                                      "reason": "rateLimitExceeded"}]}}
INVALID_GRANT = {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
TOKEN = {"access_token": "ya29.test-token", "expires_in": 3600, "token_type": "Bearer"}

# scenario -> (token answer, compute answer, storage answer, exit code, words the line must contain)
SCENARIOS = {
    "service_disabled": ((200, TOKEN), (403, SERVICE_DISABLED), (403, SERVICE_DISABLED), 2,
                         ["gcloud services enable compute.googleapis.com --project ops-hpc-test"]),
    "permission": ((200, TOKEN), (403, COMPUTE_PERMISSION), (403, PERMISSION), 2, ["permission", "make setup"]),
    "no_bucket": ((200, TOKEN), (200, {}), (404, NO_BUCKET), 2, ["does not exist", "make setup"]),
    "unauthenticated": ((200, TOKEN), (401, UNAUTHENTICATED), (401, UNAUTHENTICATED), 2,
                        ["gcloud auth application-default login"]),
    "rate_limited": ((200, TOKEN), (429, RATE_LIMITED), (429, RATE_LIMITED), 1, ["quota or rate limit", "retry"]),
    "invalid_grant": ((400, INVALID_GRANT), None, None, 2, ["expired or was revoked",
                                                            "gcloud auth application-default login"]),
    "unreachable": (None, None, None, 1, ["cannot reach", "proxy"]),
}


def _load_bin(name: str):
    """A bin/ script as a module (they have no .py suffix), so main() runs in this process."""
    loader = importlib.machinery.SourceFileLoader(f"bin_{name}", str(REPO / "bin" / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture
def fake_google(httpserver, tmp_path, monkeypatch):
    """Point the gcp backend at the fake Google; returns set(scenario) which arms the answers."""
    creds = tmp_path / "adc.json"  # a user login, as `gcloud auth application-default login` writes it
    creds.write_text(json.dumps({"type": "authorized_user", "client_id": "id.apps.googleusercontent.com",
                                 "client_secret": "secret", "refresh_token": "1//refresh"}))
    # google-auth always sends a user login's refresh to Google's token endpoint: point it here
    monkeypatch.setattr(google.oauth2.credentials, "_GOOGLE_OAUTH2_TOKEN_ENDPOINT", httpserver.url_for("/token"))
    (tmp_path / "results").mkdir()
    batch = tmp_path / "batch.txt"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "main.tcl").write_text("puts hello\n")
    batch.write_text("model timeout=5\n")
    base = httpserver.url_for("").rstrip("/")
    env = {"OPS_HPC_BACKEND": "gcp", "OPS_HPC_PROJECT": PROJECT, "OPS_HPC_COMPUTE_ENDPOINT": base,
           "OPS_HPC_STORAGE_ENDPOINT": base, "OPS_HPC_STATE_DIR": str(tmp_path / "state"),
           "OPS_HPC_CONFIG": str(tmp_path / "none.toml"), "GOOGLE_APPLICATION_CREDENTIALS": str(creds),
           "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "OPS_HPC_MACHINE_TYPE": "n2-standard-2"}
    (tmp_path / "none.toml").write_text("")
    for key in [k for k in os.environ if k.startswith(("OPS_HPC_", "CLOUDSDK_", "GOOGLE_", "STORAGE_EMULATOR"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)

    def clear_caches():
        for cached in (clients.credentials, clients.compute_client, clients.storage, clients.monitoring):
            cached.cache_clear()

    def arm(scenario: str):
        token, compute, storage, *_ = SCENARIOS[scenario]
        clear_caches()
        if token is None:  # nothing listens on port 9 of this host: connection refused
            monkeypatch.setenv("OPS_HPC_COMPUTE_ENDPOINT", "http://127.0.0.1:9")
            monkeypatch.setenv("OPS_HPC_STORAGE_ENDPOINT", "http://127.0.0.1:9")
            monkeypatch.setattr(google.oauth2.credentials, "_GOOGLE_OAUTH2_TOKEN_ENDPOINT", "http://127.0.0.1:9/token")
            return
        compute = compute or (500, {"error": {"code": 500, "message": "not reached"}})
        storage = storage or compute

        def handler(request):
            if request.path == "/token":
                status, body = token
            elif "/storage/" in request.path or request.path.startswith(("/upload/", "/download/", "/b/")):
                status, body = storage
            else:
                status, body = compute
            return Response(json.dumps(body), status=status, content_type="application/json")

        httpserver.expect_request("").respond_with_handler(handler)

    yield {"arm": arm, "env": env, "tmp": tmp_path, "batch": batch}
    clear_caches()


# Each bin/ command with arguments that make it reach Google (a storage-only command skips Compute answers).
COMMANDS = {
    "launch": ["--timeouts", "30"],
    "pull": ["--yes", "--dir", "results"],
    "stage": ["batch.txt"],
    "status": [],
    "sweep": [],
    "verify": ["--dir", "results"],
}
COMPUTE_ONLY = {"launch", "sweep"}
# bin/push reaches the VM through `gcloud compute ssh`, not through the Python clients: gcloud reports
# Google's errors itself, and a missing gcloud is its own one-line error (tested below).


def _cases():
    for command in COMMANDS:
        for scenario in SCENARIOS:
            if scenario == "no_bucket" and (command in COMPUTE_ONLY or command in ("status", "stage")):
                continue  # stage creates a missing bucket; status reports it as a section error (tested below)
            yield command, scenario


def _run(name: str, argv: list[str], capsys) -> tuple[int, str, str]:
    module = _load_bin(name)
    with pytest.raises(SystemExit) as exit_info:
        cli.run(module.main, argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize(("command", "scenario"), list(_cases()))
def test_google_errors_become_one_line(fake_google, capsys, command, scenario):
    fake_google["arm"](scenario)
    code, _, err = _run(command, COMMANDS[command], capsys)
    expected_code, words = SCENARIOS[scenario][3:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and len(lines[0]) < 400, err
    for word in words:
        assert word in lines[0], err
    assert code == expected_code, err


def test_status_with_no_bucket_says_run_setup_but_still_lists_vms(fake_google, capsys):
    """status keeps going when the bucket is missing (it must not hide VMs that bill), and says what to do."""
    fake_google["arm"]("no_bucket")
    code, out, err = _run("status", [], capsys)
    assert code == errors.EXIT_FAILED and "Traceback" not in err
    bucket_lines = [line for line in out.splitlines() if "bucket gs://" in line and line.startswith("error:")]
    assert len(bucket_lines) == 1 and "make setup" in bucket_lines[0] and "404 GET" not in out


def test_a_file_where_a_folder_belongs_is_one_line(fake_google, capsys):
    fake_google["arm"]("no_bucket")
    (fake_google["tmp"] / "afile").write_text("x")
    code, _, err = _run("localcloud", ["up", "--state-dir", "afile/state"], capsys)
    assert "Traceback" not in err and err.startswith("error: ") and "afile" in err
    assert code == errors.EXIT_USAGE


def test_push_without_gcloud_is_one_line(fake_google, capsys, monkeypatch):
    fake_google["arm"]("service_disabled")
    monkeypatch.setenv("PATH", str(fake_google["tmp"]))  # no gcloud here
    code, _, err = _run("push", ["ops-hpc-analysis-x"], capsys)
    assert "Traceback" not in err and err.count("error:") == 1 and "gcloud CLI is needed" in err
    assert code != 0


def test_an_unknown_error_is_a_bug_and_keeps_its_traceback(capsys):
    def main(argv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        cli.run(main, [])


def test_verbose_prints_the_traceback_before_the_line(capsys):
    def main(argv):
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, ["--verbose"])
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: cannot reach")
    assert exit_info.value.code == errors.EXIT_FAILED


def test_ctrl_c_is_one_line_and_130(capsys):
    def main(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, [])
    assert exit_info.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"


@pytest.mark.parametrize("scenario", ["invalid_grant"])
def test_real_processes_print_no_traceback_and_no_warning(fake_google, scenario):
    """The same through `python bin/NAME` (warnings filters, import-time behaviour), all commands at once."""
    fake_google["arm"](scenario)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    token_uri = google.oauth2.credentials._GOOGLE_OAUTH2_TOKEN_ENDPOINT
    launcher = ("import runpy, sys, google.oauth2.credentials as c; c._GOOGLE_OAUTH2_TOKEN_ENDPOINT = sys.argv.pop(1); "
                "sys.argv.pop(0); runpy.run_path(sys.argv[0], run_name='__main__')")
    procs = {name: subprocess.Popen([sys.executable, "-c", launcher, token_uri, str(REPO / "bin" / name), *argv], env=env,
                                    cwd=fake_google["tmp"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, argv in COMMANDS.items()}
    expected_code, words = SCENARIOS[scenario][3:]
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert "Traceback" not in err and "Warning" not in err, (name, err)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and all(word in lines[0] for word in words), (name, err)
        assert proc.returncode == expected_code, (name, err)


def test_bin_script_without_the_packages_says_how_to_run_it(tmp_path):
    """A Python without the toolkit's packages (here: -S -I, no site-packages) gets one line, exit 2."""
    proc = subprocess.run([sys.executable, "-S", "-I", str(REPO / "bin" / "status")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "make venv" in proc.stderr and "bin/status" in proc.stderr


def test_a_missing_local_extra_says_which_extra(capsys):
    def main(argv):
        raise ModuleNotFoundError("No module named 'werkzeug'", name="werkzeug")

    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, [])
    err = capsys.readouterr().err
    assert exit_info.value.code == errors.EXIT_USAGE and "ops-hpc[local]" in err and err.count("\n") == 1


@pytest.mark.parametrize(("exc", "words", "code"), [
    (PermissionError(13, "Permission denied", "D:\\Results\\x.out"), "may write", 1),
    (NotADirectoryError(20, "Not a directory", "results/file"), "a file is in the way", 2),
    (ConnectionResetError(104, "Connection reset by peer"), "cannot reach", 1),
])
def test_os_errors_say_what_and_where(exc, words, code):
    known = errors.explain(exc)
    assert known is not None and words in str(known) and known.code == code


@pytest.mark.parametrize(("code", "words"), [("ZONE_RESOURCE_POOL_EXHAUSTED", "stockout"),
                                             ("QUOTA_EXCEEDED", "quota")])
def test_failed_compute_operations_give_zone_or_quota_advice(code, words):
    """What `op.result()` raises for a failed insert: the operation's error codes say stockout or quota."""
    from google.api_core import exceptions as gexc
    from google.cloud import compute_v1

    op = compute_v1.Operation(error=compute_v1.Error(errors=[compute_v1.Errors(code=code, message="no room")]),
                              http_error_status_code=503 if "ZONE" in code else 403)
    exc = gexc.from_http_status(op.http_error_status_code, "no room", response=op)
    known = errors.explain(exc, what="creating VM ops-hpc-analysis-x failed")
    assert words in str(known) and str(known).startswith("creating VM ops-hpc-analysis-x failed: ")
    assert known.code == errors.EXIT_FAILED
