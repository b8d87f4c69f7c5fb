"""`make demo`: the whole run-staged pipeline on a fresh local cloud, checked, then torn down."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lib import clients, paths
from lib.config import Config
from lib.errors import OpsError
from lib.log import Log, quiet


def demo(state_dir: Path, results_dir: Path, batch: Path | str = paths.REPO / "batches" / "example.txt", *,
         on_log: Log = quiet, tail: bool = False) -> dict[str, Any]:
    """`make demo`: local cloud up -> image -> run-staged with wait -> verify ./results -> local cloud down.

    Uses its own state folder (the repo's .state/), never the user's, and no ops-hpc.toml or OPS_HPC_*
    variables, so it behaves the same on every fresh clone. Returns the run's figures plus "verified",
    "bucket_results_left", "leftover_processes" and "demo_wall_s"; raises OpsError if any check fails.
    """
    import psutil

    from lib import report, results
    from lib.localcloud import LocalCloudError, control
    from lib.runstaged import run_staged

    t0 = time.time()
    state_dir, results_dir = Path(state_dir).resolve(), Path(results_dir).resolve()
    try:
        control.up(state_dir, on_log=on_log)
    except LocalCloudError as exc:
        raise OpsError(str(exc)) from None
    try:
        cfg = clients.resolve(Config.load({"backend": "local", "state_dir": str(state_dir)}, env={}, path=""))
        out = run_staged(cfg, batch, wait=True, results_dir=results_dir, on_log=on_log, tail=tail).to_json()
        sets = [f"{out['run_id']}/{r['model']}" for r in out["rows"]]
        checks = results.verify(None, results_dir, sets)
        out["verified"] = {v.id: (not v.differences and v.source != "none") for v in checks}
        out["bucket_results_left"] = [s.id for s in results.list_sets(cfg).sets]
        out["report"] = str(report.write_report(results_dir, out["run_id"], rows=out["rows"]))  # the run's index.html
    finally:
        control.down(state_dir, on_log=on_log)
    out["leftover_processes"] = [p.pid for p in psutil.process_iter(["cmdline"])
                                 if str(state_dir) in " ".join(p.info["cmdline"] or [])]
    out["demo_wall_s"] = round(time.time() - t0, 2)
    problems = [f"{k} not verified" for k, ok in out["verified"].items() if not ok]
    problems += [f"model {m}: {why}" for m, why in out["lost"].items()]
    problems += [f"result {s} still in the bucket" for s in out["bucket_results_left"]]
    problems += [f"process {p} of the local cloud still running" for p in out["leftover_processes"]]
    if problems:
        raise OpsError("demo failed: " + "; ".join(problems))
    return out
