"""Opt-in: the example batch on a real small GCE VM. Skipped unless OPS_HPC_REAL_GCP=1 and a project are set.

Uses the configured bucket, the opensees-hpc image (build it first with `make build`) and an e2-standard-2;
the run id is unique, and `finally` deletes the run's VMs and objects whatever happened.
"""

from __future__ import annotations

import os

import pytest

from lib import compute, runstaged, storage
from lib.config import Config

pytestmark = pytest.mark.skipif(
    os.environ.get("OPS_HPC_REAL_GCP") != "1" or not os.environ.get("OPS_HPC_PROJECT"),
    reason="real GCP is opt-in: set OPS_HPC_REAL_GCP=1 and OPS_HPC_PROJECT (costs a few cents)",
)


def test_example_batch_on_a_real_vm(tmp_path):
    cfg = Config.load({"backend": "gcp", "machine_type": os.environ.get("OPS_HPC_MACHINE_TYPE", "e2-standard-2"),
                       "state_dir": str(tmp_path / "state")})
    run_id = None
    logs: list[str] = []
    try:
        out = runstaged.run_staged(cfg, "batches/example.txt", wait=True, results_dir=tmp_path / "results",
                                   on_log=logs.append, boot_timeout=900)
        run_id = out.run_id
        assert {r["state"] for r in out.rows} == {"ok"}, "\n".join(logs)
        assert all(how == "delete" for how in out.deleted_how.values())
        assert all(s is not None and s < 120 for s in out.upload_to_delete_s.values())
    finally:
        run_id = run_id or next((line.split()[1].rstrip(":") for line in logs if line.startswith("run run-")), None)
        if run_id:
            for vm in compute.list_vms(cfg):
                if vm.run_id == run_id:
                    compute.delete_vm(cfg, vm.name, on_log=lambda _: None)
            for prefix in (f"_uploads/{run_id}/", f"{run_id}/", f"_status/{run_id}", f"_logs/{run_id}/"):
                storage.delete_prefix(cfg, prefix)
