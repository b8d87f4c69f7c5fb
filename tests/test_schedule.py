"""Scheduler entries that work unattended: state folder and config spelled out, short Windows action, no console."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lib import schedule
from lib.config import Config
from lib.errors import UsageError

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
