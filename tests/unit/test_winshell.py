"""Which bash local VMs run under on Windows: Git for Windows' bash.exe, found from simulated PATHs and install
folders (fake trees under tmp_path), never System32's WSL launcher; a python3 and GNU timeout that resolve first."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lib import ssh
from lib.errors import OpsError
from lib.localcloud import control, vms, winshell
from lib.localcloud.winshell import GitBashMissing


def _file(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _git_install(root: Path, *, bin_bash: bool = True) -> Path:
    """A Git for Windows tree: cmd\\git.exe, bin\\bash.exe, usr\\bin\\{bash,timeout}.exe, mingw64\\bin\\{git,curl}.exe."""
    _file(root / "cmd" / "git")
    if bin_bash:
        _file(root / "bin" / "bash.exe")
    _file(root / "usr" / "bin" / "bash.exe")
    _file(root / "usr" / "bin" / "timeout.exe")
    _file(root / "mingw64" / "bin" / "git")
    _file(root / "mingw64" / "bin" / "curl.exe")
    return root


def _system32(tmp_path: Path) -> Path:
    """C:\\Windows\\System32 with the WSL launcher bash.exe and Windows' own timeout.exe."""
    folder = tmp_path / "Windows" / "System32"
    _file(folder / "bash.exe")
    _file(folder / "timeout.exe")
    return folder


@pytest.fixture
def windows(monkeypatch):
    monkeypatch.setattr(winshell, "is_windows", lambda: True)


def _env(tmp_path: Path, *path: Path, **more: str) -> dict[str, str]:
    return {"PATH": os.pathsep.join(str(p) for p in path), "SYSTEMROOT": str(tmp_path / "Windows"), **more}


def test_git_on_path_leads_to_its_bin_bash(tmp_path, windows):
    git = _git_install(tmp_path / "Tools" / "Git")
    found = winshell.find_git_bash(_env(tmp_path, _system32(tmp_path), git / "cmd"))
    assert found.bash == str(git / "bin" / "bash.exe")


def test_git_from_mingw64_bin_is_two_folders_below_the_root(tmp_path, windows):
    git = _git_install(tmp_path / "Git")
    found = winshell.find_git_bash(_env(tmp_path, git / "mingw64" / "bin"))
    assert found.bash == str(git / "bin" / "bash.exe")


def test_usr_bin_bash_when_there_is_no_bin_bash(tmp_path, windows):
    git = _git_install(tmp_path / "Git", bin_bash=False)
    assert winshell.find_git_bash(_env(tmp_path, git / "cmd")).bash == str(git / "usr" / "bin" / "bash.exe")


def test_program_files_install_without_git_on_path(tmp_path, windows):
    program_files = tmp_path / "Program Files"
    git = _git_install(program_files / "Git")
    found = winshell.find_git_bash(_env(tmp_path, _system32(tmp_path), ProgramFiles=str(program_files)))
    assert found.bash == str(git / "bin" / "bash.exe")


def test_per_user_install_under_localappdata(tmp_path, windows):
    local = tmp_path / "Users" / "eng" / "AppData" / "Local"
    git = _git_install(local / "Programs" / "Git")
    found = winshell.find_git_bash(_env(tmp_path, ProgramFiles=str(tmp_path / "Program Files"), LOCALAPPDATA=str(local)))
    assert found.bash == str(git / "bin" / "bash.exe")


def test_git_on_path_wins_over_the_standard_folders(tmp_path, windows):
    program_files = tmp_path / "Program Files"
    _git_install(program_files / "Git")
    portable = _git_install(tmp_path / "PortableGit")
    found = winshell.find_git_bash(_env(tmp_path, portable / "cmd", ProgramFiles=str(program_files)))
    assert found.bash == str(portable / "bin" / "bash.exe")


def test_wsl_bash_on_path_is_never_taken(tmp_path, windows):
    """Only System32's bash.exe on PATH (WSL), no Git: one line saying to install Git for Windows."""
    with pytest.raises(GitBashMissing) as info:
        winshell.find_git_bash(_env(tmp_path, _system32(tmp_path), ProgramFiles=str(tmp_path / "Program Files")))
    message = str(info.value)
    assert "install Git for Windows" in message and "\n" not in message


def test_a_git_inside_the_windows_folder_is_not_used(tmp_path, windows):
    """Even a git.exe in System32 must not lead to the Windows folder's bash.exe."""
    system32 = _system32(tmp_path)
    _file(system32 / "git")
    _file(tmp_path / "Windows" / "bin" / "bash.exe")  # <System32>\..\bin\bash.exe
    with pytest.raises(GitBashMissing):
        winshell.find_git_bash(_env(tmp_path, system32))


@pytest.mark.parametrize(("path", "wsl"), [
    (r"C:\Windows\System32\bash.exe", True),
    (r"c:\WINDOWS\system32\BASH.EXE", True),
    (r"C:\Users\eng\AppData\Local\Microsoft\WindowsApps\bash.exe", True),
    (r"C:\Program Files\Git\bin\bash.exe", False),
    (r"D:\Tools\Git\usr\bin\bash.exe", False),
])
def test_wsl_launchers_are_recognised(path, wsl):
    assert winshell.is_wsl_launcher(path, {"SYSTEMROOT": r"C:\Windows"}) is wsl


def test_gnu_tools_come_before_system32_on_the_vm_path(tmp_path, windows):
    """`timeout` on the VM's PATH is Git's GNU one (timeout -k), not Windows' pause command; curl is found too."""
    git = _git_install(tmp_path / "Git")
    system32 = _system32(tmp_path)
    env = _env(tmp_path, system32, git / "cmd")
    own = [str(tmp_path / "disk" / "opt" / "ops-hpc" / "bin")]
    path = winshell.vm_path(own, env["PATH"], shim_dir=str(tmp_path / "disk" / "usr" / "bin"), env=env).split(";")
    assert path[:4] == [own[0], str(tmp_path / "disk" / "usr" / "bin"), str(git / "usr" / "bin"),
                        str(git / "mingw64" / "bin")]
    assert path[4] == os.path.dirname(sys.executable)  # the venv's Python, then the inherited PATH
    first_timeout = next(d for d in path if (Path(d) / "timeout.exe").exists())
    assert first_timeout == str(git / "usr" / "bin")


def test_posix_vm_path_needs_no_git(tmp_path):
    path = winshell.vm_path(["/disk/bin"], "/usr/bin:/bin", env={"PATH": ""})
    assert path.split(":") == ["/disk/bin", os.path.dirname(sys.executable), "/usr/bin", "/bin"]


def test_python3_shim_runs_this_interpreter(tmp_path):
    folder = winshell.python_shim(tmp_path / "shim")
    out = subprocess.run(["sh", str(folder / "python3"), "-c", "import sys; print(sys.executable)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == sys.executable


def test_python3_shim_on_windows_uses_forward_slashes_and_quotes(tmp_path, windows):
    folder = winshell.python_shim(tmp_path, python=r"C:\Users\O'Neil\ops-hpc\.venv\Scripts\python.exe")
    text = (folder / "python3").read_bytes().decode()
    assert "exec 'C:/Users/O'\\''Neil/ops-hpc/.venv/Scripts/python.exe' \"$@\"" in text and "\r" not in text


def test_shell_and_session_keywords(tmp_path, monkeypatch):
    assert winshell.shell() == ["bash"] and winshell.session_kwargs() == {"start_new_session": True}
    assert winshell.no_window_kwargs() == {}
    monkeypatch.setattr(winshell, "is_windows", lambda: True)
    git = _git_install(tmp_path / "Git")
    assert winshell.shell(_env(tmp_path, git / "cmd")) == [str(git / "bin" / "bash.exe")]
    flags = winshell.session_kwargs()["creationflags"]
    assert flags & winshell.CREATE_NO_WINDOW and flags & winshell.CREATE_NEW_PROCESS_GROUP
    assert winshell.no_window_kwargs() == {"creationflags": winshell.CREATE_NO_WINDOW}


def test_a_local_vm_starts_under_git_bash_with_no_window(tmp_path, monkeypatch, windows):
    git = _git_install(tmp_path / "Git")
    monkeypatch.setenv("PATH", os.pathsep.join([str(_system32(tmp_path)), str(git / "cmd")]))
    started = {}

    def fake_popen(argv, **kwargs):
        started.update(argv=argv, **kwargs)
        return "proc"

    monkeypatch.setattr(vms.subprocess, "Popen", fake_popen)
    disk = tmp_path / "disk"
    vms.prepare_disk(disk)
    env = vms.vm_environment(disk, "127.0.0.1:1", "42", {})
    assert vms.launch(disk, "echo hi\n", env) == "proc"
    assert started["argv"][0] == str(git / "bin" / "bash.exe")
    assert started["creationflags"] & winshell.CREATE_NO_WINDOW
    assert (disk / "usr" / "bin" / "python3").is_file()  # the shim, on the VM's PATH before Git's tools
    path = re.split("[;:]", env["PATH"])  # the inherited tail keeps this machine's separator
    assert path.index(str(disk / "usr" / "bin")) < path.index(str(git / "usr" / "bin")) < path.index(
        str(tmp_path / "Windows" / "System32"))


def test_ssh_to_a_local_vm_without_git_bash_is_one_line(tmp_path, monkeypatch, windows):
    monkeypatch.setenv("PATH", str(_system32(tmp_path)))
    for var in ("ProgramFiles", "ProgramW6432", "ProgramFiles(x86)", "LOCALAPPDATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(ssh, "local_vm", lambda cfg, name: {"status": "RUNNING", "metadata_host": "h", "disk": str(tmp_path)})
    cfg = type("Cfg", (), {"local": True})()
    with pytest.raises(OpsError, match="install Git for Windows") as info:
        ssh._popen(cfg, "vm-1", "true")  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_localcloud_up_refuses_before_starting_anything(tmp_path, monkeypatch, windows):
    monkeypatch.setenv("PATH", str(_system32(tmp_path)))
    for var in ("ProgramFiles", "ProgramW6432", "ProgramFiles(x86)", "LOCALAPPDATA"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(GitBashMissing, match="Git for Windows"):
        control.up(tmp_path / "state")
    assert not (tmp_path / "state").exists()
