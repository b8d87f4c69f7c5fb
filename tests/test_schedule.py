"""Scheduler entries that work unattended: state folder and config spelled out, short Windows action, no console."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path, PureWindowsPath

import pytest

from lib import schedule
from lib.config import Config
from lib.errors import OpsError, UsageError

REPO = Path(__file__).resolve().parents[1]


def _config(localcloud, tmp_path) -> tuple[Config, Path]:
    """A local config whose state folder is the test's own (endpoints named, so the cloud is found anyway)."""
    ep = localcloud.endpoints
    file = tmp_path / "conf" / "ops-hpc.toml"
    file.parent.mkdir()
    file.write_text(f'backend = "local"\nstate_dir = "{(tmp_path / "state").as_posix()}"\n'
                    f'compute_endpoint = "{ep["compute"]}"\nstorage_endpoint = "{ep["storage"]}"\n'
                    f'monitoring_endpoint = "{ep["monitoring"]}"\n')
    return Config.load(env={}, path=file), file


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OPS_HPC_", "CLOUDSDK_"))}


def test_cron_line_works_from_any_folder(localcloud, tmp_path):
    cfg, file = _config(localcloud, tmp_path)
    line = schedule.cron_line(cfg, file)
    assert line.startswith("*/5 * * * * ") and "--state-dir" in line and str(file) in line
    command = shlex.split(line[len("*/5 * * * * "):].split(" >> ")[0])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([*command, "--dry-run"], cwd=elsewhere, env=_clean_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(dry run)" in proc.stdout and "sweep:" in proc.stdout


def test_windows_task_logs_to_the_file_with_no_console(localcloud, faults, tmp_path):
    """The generated .pyw under a pythonw-like interpreter (no stdout/stderr): every line, retries included,
    lands in STATE/sweep.log and no "Logging error" appears."""
    cfg, file = _config(localcloud, tmp_path)
    script = schedule.write_task_script(cfg, file, extra=["--dry-run"])
    faults("compute", "http:503", count=2)  # two retries: the retry policy logs the second
    runner = "import sys; sys.stdout = sys.stderr = None; p = sys.argv[1]; exec(compile(open(p).read(), p, 'exec'))"
    proc = subprocess.run([sys.executable, "-c", runner, str(script)], cwd=tmp_path, env=_clean_env(),
                          capture_output=True, text=True, timeout=120)
    log = (cfg.state_path / schedule.LOG_FILE).read_text(encoding="utf-8")
    assert proc.returncode == 0, log
    assert "sweep:" in log and "(dry run)" in log and "retrying" in log
    assert "Logging error" not in log and "Traceback" not in log


def test_schtasks_action_is_short_and_uses_pythonw(tmp_path):
    cfg = Config.load({"backend": "local", "state_dir": r"C:\Users\a.very.long.user.name\AppData\Local\ops-hpc"},
                      env={}, path="")
    python = r"C:\Users\a.very.long.user.name\Documents\structural\ops-hpc\.venv\Scripts\python.exe"
    argv = schtasks = schedule.schtasks_command(cfg, Path(cfg.state_dir) / schedule.TASK_FILE, python=python)
    action = argv[argv.index("/TR") + 1]
    assert "pythonw.exe" in action and action.endswith('sweep-task.pyw"') and len(action) <= schedule.TR_LIMIT
    assert schtasks[0] == "schtasks"
    deep = Config.load({"backend": "local", "state_dir": "C:\\" + "\\".join(["deep-folder"] * 25)}, env={}, path="")
    with pytest.raises(UsageError, match="261"):
        schedule.schtasks_command(deep, Path(deep.state_dir) / schedule.TASK_FILE, python=python)


def test_task_script_names_state_and_config(localcloud, tmp_path):
    cfg, file = _config(localcloud, tmp_path)
    text = schedule.task_script(cfg, file)
    compile(text, "sweep-task.pyw", "exec")
    assert str(cfg.state_path) in text and str(file) in text and "sys.stdout = sys.stderr = log" in text


def _offline(tmp_path, state: str = "state") -> Config:
    return Config.load({"backend": "local", "state_dir": str(tmp_path / state)}, env={}, path="")


def _fake_crontab(tmp_path) -> tuple[str, Path]:
    """A `crontab` that keeps the table in a file: -l prints it (exit 1 when there is none), - replaces it."""
    store = tmp_path / "crontab.txt"
    script = tmp_path / "crontab"
    script.write_text(f"#!{sys.executable}\nimport sys\nstore = {str(store)!r}\n"
                      "if sys.argv[1] == '-l':\n"
                      "    try:\n        sys.stdout.write(open(store).read())\n"
                      "    except FileNotFoundError:\n        sys.exit('no crontab for user')\n"
                      "else:\n    open(store, 'w').write(sys.stdin.read())\n")
    script.chmod(0o755)
    return str(script), store


def test_installing_twice_keeps_one_cron_line(tmp_path):
    cfg = _offline(tmp_path)
    crontab, store = _fake_crontab(tmp_path)
    file = tmp_path / "ops-hpc.toml"
    file.write_text('backend = "local"\n')
    first = schedule.install(cfg, file, yes=True, windows=False, crontab=crontab)
    second = schedule.install(cfg, file, yes=True, windows=False, crontab=crontab)
    assert first["installed"] and second.get("already")
    lines = store.read_text().splitlines()
    assert lines == [first["line"]] and "--state-dir" in lines[0] and str(file.resolve()) in lines[0]


def test_install_replaces_an_earlier_sweep_line_and_keeps_the_rest(tmp_path):
    cfg, other = _offline(tmp_path), _offline(tmp_path, "other-state")
    crontab, store = _fake_crontab(tmp_path)
    older = f"*/5 * * * * cd /opt/ops-hpc && .venv/bin/python bin/sweep >> {cfg.state_path / 'sweep.log'} 2>&1"
    theirs = schedule.cron_line(other, None)
    store.write_text(f"MAILTO=me\n0 3 * * * backup.sh\n{older}\n{theirs}\n")
    result = schedule.install(cfg, None, yes=True, windows=False, crontab=crontab)
    assert result["replaced"] == 1
    assert store.read_text().splitlines() == ["MAILTO=me", "0 3 * * * backup.sh", theirs, result["line"]]


def test_a_percent_in_a_path_is_escaped_for_cron(tmp_path):
    cfg = _offline(tmp_path, "state%1")
    line = schedule.cron_line(cfg, None)
    assert "state\\%1" in line and "%" not in line.replace("\\%", "")
    assert schedule.is_sweep_line(line, cfg)


def test_a_failing_crontab_is_one_line(tmp_path):
    cfg = _offline(tmp_path)
    broken = tmp_path / "crontab"
    broken.write_text("#!/bin/sh\n[ \"$1\" = -l ] && exit 1\necho 'crontab: permission denied' >&2; exit 1\n")
    broken.chmod(0o755)
    with pytest.raises(OpsError, match="installing the schedule failed .*permission denied") as info:
        schedule.install(cfg, None, yes=True, windows=False, crontab=str(broken))
    assert "\n" not in str(info.value)


def test_windows_install_writes_the_task_script_and_replaces_the_task(tmp_path, monkeypatch):
    cfg = _offline(tmp_path)
    ran = []
    monkeypatch.setattr(schedule, "_run", lambda argv, stdin=None: ran.append(list(argv)))
    shown = schedule.install(cfg, None, windows=True)
    assert not ran and Path(shown["script"]).is_file() and "sweep-task.pyw" in shown["line"]
    installed = schedule.install(cfg, None, yes=True, windows=True)
    argv = ran[0]
    assert installed["installed"] and argv[0] == "schtasks" and argv[-1] == "/F"  # /F: a second install replaces
    assert argv[argv.index("/TR") + 1].endswith(f'"{PureWindowsPath(installed["script"])}"')
    assert len(argv[argv.index("/TR") + 1]) <= schedule.TR_LIMIT


def test_bin_sweep_install_prints_a_line_naming_state_and_config(tmp_path, monkeypatch, capsys):
    from lib.tasks import load_script

    file = tmp_path / "conf" / "ops-hpc.toml"
    file.parent.mkdir()
    file.write_text(f'backend = "local"\nstate_dir = "{(tmp_path / "state").as_posix()}"\n')
    monkeypatch.delenv("OPS_HPC_STATE_DIR", raising=False)
    assert load_script("sweep").main(["--install", "--config", str(file)]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("*/5 "))
    assert f"--state-dir {tmp_path / 'state'}" in line and f"--config {file.resolve()}" in line
    assert f">> {tmp_path / 'state' / 'sweep.log'} 2>&1" in line and "not installed" in out
