"""`ops-hpc`: every bin/ script and pipeline under one command, with the grouped names as aliases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Exit

from lib import cli, console, tasks

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_script_and_pipeline(capsys):
    assert console.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in [*console.SCRIPTS, *console.TASKS]:
        assert f"\n  {name} " in out, name
    scripts = {p.name for p in (REPO / "bin").iterdir() if p.is_file()}
    assert scripts == set(console.SCRIPTS)  # a new bin/ script needs its subcommand


@pytest.mark.parametrize(("argv", "expected"), [
    (["results", "download", "--yes"], ("script", "pull", ["--yes"])),
    (["results", "list"], ("script", "pull", ["--list"])),
    (["vm", "push", "vm-1", "TTFlat"], ("script", "push", ["vm-1", "TTFlat"])),
    (["status", "--usage"], ("script", "status", ["--usage"])),
    (["run-staged", "--wait"], ("task", "run-staged", ["--wait"])),
    (["run", "--jobs", "j.txt"], ("task", "run.jobs", ["--jobs", "j.txt"])),
    (["vm", "delete", "--name", "x"], ("task", "delete-vm", ["--name", "x"])),
    (["image", "archive", "--name", "i"], ("task", "image.archive", ["--name", "i"])),
    (["localcloud", "up"], ("script", "localcloud", ["up"])),
])
def test_names_resolve(argv, expected):
    assert console.resolve(argv) == expected


def test_every_task_target_exists():
    for path in console.TASKS.values():
        assert tasks.ns[path] is not None
    for argv in console.ALIASES.values():
        assert console.resolve(argv)[0] in ("script", "task")


def test_unknown_command_is_a_usage_error():
    with pytest.raises(cli.UsageError, match="ops-hpc --help"):
        console.resolve(["frobnicate"])


def test_script_subcommand_runs_the_scripts_main(monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        console.main(["pull", "--help"])
    assert info.value.code == 0 and "--watch" in capsys.readouterr().out


def test_task_subcommand_goes_through_invoke_and_the_boundary(monkeypatch):
    """`ops-hpc log` with a broken config: invoke's Exit carries the boundary's one line and code."""
    monkeypatch.setenv("OPS_HPC_ZONE", "nowhere")
    with pytest.raises(SystemExit) as info:
        console.main(["log"])
    assert info.value.code == 2


def test_demo_without_opensees_says_so_in_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "opensees" else real(name, *a))
    with pytest.raises(Exit) as info:
        tasks._need_opensees()
    assert info.value.code == 2 and "\n" not in info.value.message and "Windows" in info.value.message


def test_python_dash_m_entry_point_is_fast_and_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "lib.console", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "run-staged" in proc.stdout


def test_config_prints_every_value_with_its_source(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPS_HPC_CONFIG", str(tmp_path / "ops-hpc.toml"))
    (tmp_path / "ops-hpc.toml").write_text('project = "my-project-1"\n')
    monkeypatch.setenv("OPS_HPC_ZONE", "europe-west1-b")
    assert console.main(["config"]) == 0
    out = capsys.readouterr().out
    assert "my-project-1" in out and str(tmp_path / "ops-hpc.toml") in out
    assert "europe-west1-b" in out and "environment variable OPS_HPC_ZONE" in out
    assert "machine_type" in out and "(default)" in out
