"""Benchmark: how busy a packed VM keeps the cores it pays for.

Run with `make bench-pack` (pytest -q -s tests/bench/bench_pack.py); not part of `make test`.

16 one-core models that each take ~3 s, mostly waiting (Tcl `after 3000`), on one local VM of 8 vCPUs
(e2-standard-8 with a `#cores 8` header: waiting models may use every vCPU), then the same batch with
`--vms 2`. VM-core utilization, from the pulled manifests:

    sum(model seconds x cores) / (vCPUs x (last finish - first start))      per VM, then over the VMs

(start = a model's OpenSees end minus its seconds). Goal >= 0.85; one model at a time gave 0.11.
BENCH_MODELS / BENCH_SECONDS change the batch.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from lib import build, manifest, runstaged, storage
from tests.support.vms import vm_config

MODELS = int(os.environ.get("BENCH_MODELS", "16"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
MACHINE = "e2-standard-8"
VCPUS = 8
GOAL = 0.85


def _batch(base: Path) -> Path:
    for i in range(MODELS):
        folder = base / f"wait{i:02d}"
        folder.mkdir(parents=True)
        (folder / "main.tcl").write_text(f"after {int(SECONDS * 1000)}\nputs done\n")
    path = base / "batch.txt"
    path.write_text(f"#cores {VCPUS}\n" + "".join(f"wait{i:02d} timeout=1\n" for i in range(MODELS)))
    return path


def utilization(manifests: list[dict]) -> dict[str, float]:
    """Per VM and overall: sum(seconds x cores) / (vCPUs x (last end - first start)) over the VMs' windows."""
    by_vm: dict[str, list[dict]] = {}
    for m in manifests:
        by_vm.setdefault(m["vm"], []).append(m)
    out, busy, paid = {}, 0.0, 0.0
    for vm, ms in by_vm.items():
        start = min(m["ended_at"] - m["seconds"] for m in ms)
        end = max(m["ended_at"] for m in ms)
        work = sum(m["seconds"] * 1 for m in ms)  # every model here has cores=1
        out[vm] = work / (VCPUS * (end - start))
        busy, paid = busy + work, paid + VCPUS * (end - start)
    out["all"] = busy / paid
    return out


@pytest.mark.parametrize("vms", [1, 2])
def test_bench_pack_utilization(localcloud, tmp_path, vms):
    cfg = vm_config(localcloud, tmp_path / "state", bucket=f"b-{uuid.uuid4().hex[:10]}")
    storage.ensure_bucket(cfg)
    image = build.ensure_image(cfg)
    t0 = time.time()
    out = runstaged.run_staged(cfg, _batch(tmp_path / "batch"), wait=True, vms=vms, machine_type=MACHINE,
                               results_dir=tmp_path / "r", image=image, tail=False)
    wall = time.time() - t0
    assert not out.lost, out.lost
    mans = [manifest.read(tmp_path / "r" / out.run_id / f"wait{i:02d}") for i in range(MODELS)]
    assert all(m["state"] == "ok" for m in mans)
    u = utilization(mans)
    print(f"\nbench-pack: {MODELS} x {SECONDS:g} s one-core models, {vms} VM(s) of {VCPUS} vCPUs ({MACHINE}, "
          f"#cores {VCPUS}): VM-core utilization {u['all']:.2f} (goal {GOAL}); per VM "
          + ", ".join(f"{k}={v:.2f}" for k, v in u.items() if k != "all")
          + f"; model seconds {min(m['seconds'] for m in mans):.2f}-{max(m['seconds'] for m in mans):.2f}; "
          f"run-staged wall {wall:.1f} s")
    assert u["all"] >= GOAL
