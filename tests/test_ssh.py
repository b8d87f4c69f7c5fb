"""lib/ssh: the gcloud command lines (checked by the real gcloud too), retries only where safe, the local branch."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lib import compute, ssh
from lib.config import Config
from lib.errors import OpsError
from tests.support.bins import needs_gcloud
from tests.support.pipelines import boot, quiet
from tests.support.vms import unique, vm_config

GCP = dict(backend="gcp", project="my-proj-123", zone="europe-west4-b")


def gcp_cfg(**extra) -> Config:
    return Config.load({**GCP, **extra}, env={}, path="")


# -- command lines --------------------------------------------------------------


def test_ssh_argv_has_zone_project_and_the_command_as_one_argument():
    argv = ssh.ssh_argv(gcp_cfg(), "vm-1", "cd '/tmp/a b' && openseesmp 4 main.tcl")
    assert argv == ["gcloud", "compute", "ssh", "vm-1", "--zone", "europe-west4-b", "--project", "my-proj-123",
                    "--strict-host-key-checking=no", "--quiet", "--command", "cd '/tmp/a b' && openseesmp 4 main.tcl"]


def test_iap_flag_only_when_configured():
    assert "--tunnel-through-iap" not in ssh.ssh_argv(gcp_cfg(), "vm-1", "true")
    argv = ssh.ssh_argv(gcp_cfg(use_iap=True), "vm-1", "true")
    assert argv[argv.index("--project") + 2] == "--tunnel-through-iap"
    assert "--tunnel-through-iap" in ssh.scp_argv(gcp_cfg(use_iap=True), ["a"], "vm-1:/tmp/")


def test_scp_argv_keeps_paths_with_spaces_and_windows_paths_whole():
    sources = [r"C:\Users\Ana María\OpenSees runs\TT Flat\main.tcl", Path("/home/me/my models/wall.tcl")]
    argv = ssh.scp_argv(gcp_cfg(), sources, ssh.remote_spec("vm-1", "/tmp/ops-hpc-analysis/TT Flat/"), recurse=True)
    assert argv[:4] == ["gcloud", "compute", "scp", "--zone"]
    assert "--recurse" in argv
    assert argv[-3] == r"C:\Users\Ana María\OpenSees runs\TT Flat\main.tcl"  # one argv item, untouched
    assert argv[-2] == "/home/me/my models/wall.tcl"
    assert argv[-1] == "vm-1:'/tmp/ops-hpc-analysis/TT Flat/'"  # quoted for the VM's shell
    assert ssh.remote_spec("vm-1", "/tmp/plain/path.txt") == "vm-1:/tmp/plain/path.txt"


def test_remote_paths_in_commands_are_quoted_and_rooted():
    assert ssh.rpath("/tmp/a b/it's.txt") == '"${OPS_HPC_VM_ROOT:-}"' + "'/tmp/a b/it'\"'\"'s.txt'"
    out = subprocess.run(["bash", "-c", f"printf '%s' {ssh.rpath('/tmp/a b')}"], capture_output=True, text=True,
                         env={"OPS_HPC_VM_ROOT": "/disk", "PATH": os.environ["PATH"]}).stdout
    assert out == "/disk/tmp/a b"
    with pytest.raises(ValueError):
        ssh.rpath("relative/path")
    assert ssh.sudo("bash x.sh 8", gcp_cfg()) == "sudo bash x.sh 8"


@needs_gcloud
def test_real_gcloud_parses_our_ssh_and_scp_command_lines(localcloud, tmp_path):
    """gcloud --dry-run against the local Compute emulator prints the ssh/scp it would run from our argv."""
    cfg = vm_config(localcloud, tmp_path / "state")
    name = unique("dry")
    spec = compute.plan_vm(cfg, name=name, kind="build", run_id="dry", startup_script="sleep 60")
    compute.create_vm(cfg, spec, on_log=quiet)
    env = {**localcloud.env(), "HOME": str(tmp_path / "home"), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")}
    try:
        command = "cd '/tmp/ops-hpc-analysis/TT Flat' && openseesmp 4 main.tcl"
        out = subprocess.run(ssh.ssh_argv(cfg, name, command) + ["--dry-run"], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        line = out.stdout.strip().splitlines()[-1]
        assert "StrictHostKeyChecking=no" in line and line.endswith(f"-- {command}")
        local = tmp_path / "my models" / "TT Flat.tcl"
        scp = ssh.scp_argv(cfg, [local], ssh.remote_spec(name, "/tmp/ops-hpc-analysis/TT Flat/")) + ["--dry-run"]
        out = subprocess.run(scp, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"{local} " in out.stdout and out.stdout.strip().endswith(":'/tmp/ops-hpc-analysis/TT Flat/'")
        iap = subprocess.run(ssh.ssh_argv(cfg.replace(use_iap=True), name, "true") + ["--dry-run"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert iap.returncode == 0 and "start-iap-tunnel" in iap.stdout, iap.stderr
    finally:
        compute.delete_vm(cfg, name, on_log=quiet)


# -- retries only where safe (a fake gcloud on PATH records every call) -----------


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
    """A `gcloud` that logs its argv and exits with the next code of codes.json (then 0)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log, codes = tmp_path / "calls.jsonl", tmp_path / "codes.json"
    script = bindir / "gcloud"
    script.write_text(f"""#!{sys.executable}
import json, sys
with open({str(log)!r}, "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
codes = json.load(open({str(codes)!r}))
code = codes.pop(0) if codes else 0
json.dump(codes, open({str(codes)!r}, "w"))
print("line one"); print("line two")
sys.exit(code)
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    def arm(*exit_codes: int) -> None:
        codes.write_text(json.dumps(list(exit_codes)))

    def calls() -> list[list[str]]:
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    arm()
    return arm, calls


def test_run_streams_lines_and_is_never_retried(fake_gcloud):
    arm, calls = fake_gcloud
    arm(255)
    lines: list[str] = []
    assert ssh.run(gcp_cfg(), "vm-1", "openseesmp 2 main.tcl", on_line=lines.append) == 255
    assert lines == ["line one", "line two"]
    assert len(calls()) == 1  # a command that may have run is not run again


def test_upload_retries_connection_failures_only(fake_gcloud, tmp_path, no_retry_sleep):
    arm, calls = fake_gcloud
    src = tmp_path / "my models" / "main.tcl"
    src.parent.mkdir()
    src.write_text("puts hi\n")
    arm(255, 0, 255, 0)  # mkdir: refused once; scp: refused once
    ssh.upload(gcp_cfg(), "vm-1", [src], "/tmp/ops-hpc-analysis/job")
    made = calls()
    assert [c[1] for c in made] == ["ssh", "ssh", "scp", "scp"]
    assert made[-1][-2:] == [str(src), "vm-1:/tmp/ops-hpc-analysis/job/"]
    assert len(no_retry_sleep) == 2
    arm(1)  # a real failure (not 255) is not retried
    with pytest.raises(OpsError, match="exit 1"):
        ssh.download(gcp_cfg(), "vm-1", "/tmp/x.txt", tmp_path)
    assert len(calls()) == len(made) + 1


def test_missing_gcloud_says_what_to_install(monkeypatch):
    monkeypatch.setattr(ssh.shutil, "which", lambda _: None)
    with pytest.raises(OpsError, match="install the Google Cloud SDK"):
        ssh.run(gcp_cfg(), "vm-1", "true")


# -- the local branch -----------------------------------------------------------


def test_local_branch_runs_in_the_vm_disk_with_its_environment(localcloud, tmp_path):
    cfg = vm_config(localcloud, tmp_path / "state")
    name = unique("sshl")
    boot(cfg, name)
    try:
        info = ssh.local_vm(cfg, name)
        lines: list[str] = []
        code = ssh.run(cfg, name, 'pwd; echo "$OPS_HPC_VM_ROOT"; command -v openseesmp; echo oops >&2; exit 3',
                       on_line=lines.append)
        assert code == 3
        assert lines[:2] == [info["disk"], info["disk"]]
        assert lines[2] == str(Path(info["disk"]) / "opt/ops-hpc/bin/openseesmp")
        assert lines[3] == "oops"
        src = tmp_path / "with space" / "a b.txt"
        src.parent.mkdir()
        src.write_text("payload\n")
        ssh.upload(cfg, name, [src.parent], "/tmp/in dir")
        assert ssh.capture(cfg, name, f"cat {ssh.rpath('/tmp/in dir/with space/a b.txt')}") == (0, "payload")
        got = ssh.download(cfg, name, "/tmp/in dir/with space/a b.txt", tmp_path / "out.txt")
        assert got.read_text() == "payload\n"
    finally:
        compute.delete_vm(cfg, name, on_log=quiet)
    with pytest.raises(OpsError, match="does not exist"):
        ssh.run(cfg, name, "true")


def test_wait_for_ssh_gives_a_clear_error_after_the_timeout(localcloud, tmp_path):
    cfg = vm_config(localcloud, tmp_path / "state")
    name = unique("sshw")
    boot(cfg, name)
    try:
        compute.stop_vm(cfg, name, on_log=quiet)  # a stopped VM refuses connections, like one still booting
        now = [0.0]
        sleeps: list[float] = []

        def fake_sleep(s: float) -> None:
            sleeps.append(s)
            now[0] += s

        with pytest.raises(OpsError) as err:
            ssh.wait_for_ssh(cfg, name, 20, interval=5, sleep=fake_sleep, clock=lambda: now[0])
        assert "did not accept ssh within 20 s" in str(err.value) and "tcp:22" in str(err.value)
        assert sleeps == [5, 5, 5, 5]  # probes at 0, 5, 10, 15 and 20 s
    finally:
        compute.delete_vm(cfg, name, on_log=quiet)
