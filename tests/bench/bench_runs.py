"""Benchmark: how long `ops-hpc runs` takes to list 40 runs from the bucket (`make bench-runs`; not in `make test`).

40 finished run-staged runs are written to a fresh bucket as their VMs and launches leave them (a status
file per VM, two VMs for every fourth run, a `_runs/RUN/VM.json` launch record each), then `bin/runs`
is timed as a user runs it: a new process, Python start and imports included, median of 3. The
in-process `runs.list_runs` is timed too.
"""

from __future__ import annotations

import json
import os
import statistics
import time

from lib import runs, storage
from tests.support.bins import run_bin
from tests.support.vms import vm_config

RUNS = 40


def _fill(cfg) -> None:
    for i in range(RUNS):
        run_id = f"run-20261201-{i // 60:02d}{i % 60:02d}00-{i:04x}"
        for shard in range(1 + (i % 4 == 0)):
            vm = f"ops-hpc-{run_id[4:]}-{shard + 1}"
            status = (f"format=1\nrun_id={run_id}\nvm={vm}\nstate=done\nstarted=2026-12-01T00:00:05Z\n"
                      f"updated=2026-12-01T00:10:00Z\nmodel.frame{shard}=ok 12.5\nmodel.truss{shard}=failed 3.0\n")
            storage.upload_bytes(cfg, f"_status/{run_id}/{vm}.txt", status.encode())
            record = {"format": 1, "run_id": run_id, "vm": vm, "machine_type": "h3-standard-88", "spot": False,
                      "zone": cfg.zone, "launched": 1764547200.0, "host": "pc-a", "models": [f"frame{shard}"]}
            storage.upload_bytes(cfg, f"_runs/{run_id}/{vm}.json", json.dumps(record).encode())


def test_bench_runs_lists_40_runs(localcloud, tmp_path):
    bucket = localcloud.new_bucket("runs").bucket_name
    cfg = vm_config(localcloud, tmp_path / "state", bucket=bucket, results_dir=str(tmp_path / "results"))
    _fill(cfg)
    t0 = time.perf_counter()
    rows = runs.list_runs(cfg, limit=None)
    in_process = time.perf_counter() - t0
    if os.environ.get("BENCH_PROFILE"):
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(runs.list_runs, cfg, limit=None)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
    assert len(rows) == RUNS and all(r["models"]["ok"] for r in rows)
    env = localcloud.env(bucket=cfg.bucket_name, state_dir=cfg.state_dir, results_dir=cfg.results_dir)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        done = run_bin("runs", "--limit", "0", env=env)
        times.append(time.perf_counter() - t0)
        assert done.returncode == 0 and done.stdout.count("run-20261201-") == RUNS, done.stderr
    print(f"\nbin/runs: {RUNS} runs listed in {statistics.median(times):.2f} s (median of 3, new process); "
          f"runs.list_runs in process: {in_process:.2f} s")
