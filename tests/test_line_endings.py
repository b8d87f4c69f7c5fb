"""Scripts that reach a VM are LF-only, even from a CRLF checkout (Git for Windows without .gitattributes).

A CRLF startup script dies at `set: pipefail: invalid option`; on GCP the VM would never report and bill
until its guard gave up. The end-to-end test runs a real local VM from CRLF copies of every vm-script.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from lib import compute, paths, runstaged, storage
from tests.support.vms import vm_config

REPO = Path(__file__).resolve().parents[1]


def _crlf_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "vm-scripts-crlf"
    folder.mkdir()
    for script in (REPO / "vm-scripts").iterdir():
        if not script.is_file():  # caches of linters run on the helpers
            continue
        data = script.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        (folder / script.name).write_bytes(data)
    return folder


def test_vm_text_makes_lf_and_drops_a_bom():
    assert paths.vm_text("\ufeffset -euo pipefail\r\necho a\rb\n") == "set -euo pipefail\necho a\nb\n"


def test_vm_script_ships_lf_from_a_crlf_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "VM_SCRIPTS", _crlf_copy(tmp_path))
    for name in (*paths.STAGED_SCRIPTS, *paths.SSH_TOOLS, "startup.sh"):
        shipped = paths.vm_script(name)
        data = shipped.read_bytes()
        assert b"\r" not in data and data == (REPO / "vm-scripts" / name).read_bytes().replace(b"\r\n", b"\n")
        if name.endswith(".sh"):  # ops_helpers.py is checked by its own tests (Python 3.6)
            assert subprocess.run(["bash", "-n", str(shipped)]).returncode == 0


def test_an_lf_tree_is_shipped_as_is():
    assert paths.vm_script("startup.sh") == paths.VM_SCRIPTS / "startup.sh"


def test_gitattributes_pin_lf_for_what_the_vm_runs():
    names = ["vm-scripts/startup.sh", "vm-scripts/lib.sh", "bin/pull", "batches/examples/frame_pushover/main.tcl"]
    out = subprocess.run(["git", "check-attr", "eol", "--", *names], cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        pytest.skip("not a git checkout")
    assert out.stdout.count(": eol: lf") == len(names), out.stdout


def test_a_crlf_startup_script_in_metadata_becomes_lf(localcloud, image, tmp_path):
    cfg = vm_config(localcloud, tmp_path / "state")
    spec = compute.plan_vm(cfg, name="crlf-check", kind="analysis", run_id="r1", job_timeouts_min=[5],
                           image=image, startup_script="#!/bin/bash\r\nset -euo pipefail\r\necho ok\r\n")
    assert spec.metadata["startup-script"] == "#!/bin/bash\nset -euo pipefail\necho ok\n"


def test_a_crlf_checkout_still_runs_a_model_on_a_local_vm(localcloud, image, tmp_path, monkeypatch):
    """Every vm-script in CRLF: the VM still boots, runs OpenSees, uploads its result and deletes itself."""
    monkeypatch.setattr(paths, "VM_SCRIPTS", _crlf_copy(tmp_path))
    cfg = vm_config(localcloud, tmp_path / "state", bucket=f"t-{uuid.uuid4().hex[:10]}", time_scale=30)
    storage.ensure_bucket(cfg)
    base = tmp_path / "batch"
    shutil.copytree(REPO / "batches" / "examples" / "truss_transient", base / "truss")
    (base / "batch.txt").write_text("truss timeout=5\r\n")
    out = runstaged.run_staged(cfg, base / "batch.txt", wait=True, results_dir=tmp_path / "results", image=image).to_json()
    assert {r["model"]: r["state"] for r in out["rows"]} == {"truss": "ok"}
    assert (tmp_path / "results" / out["run_id"] / "truss" / "output" / "member_forces.out").stat().st_size > 0
    assert all(compute.get_vm(cfg, vm) is None for vm in out["vms"])
