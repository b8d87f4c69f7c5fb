"""Benchmark: is a pull's cost per result set constant as the results folder's history grows?

Run with `make bench-pull-scale` (pytest -q -s tests/bench/bench_pull_scale.py); not part of `make test`.

10,000 one-file zip sets are pulled in three rounds into the same results folder: the first 1,000
into an empty download state, then 8,000, then the last 1,000 with 9,000 sets already recorded. Each
round's sets are uploaded first (not timed), then one `results.pull` is timed. If a status change cost
grew with the history (the JSON state file was rewritten whole ~4 times per set), the last round's
time per set would be several times the first's. The total can be changed with BENCH_SCALE_SETS.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lib import results, storage
from lib.downloads import Tracker
from tests.support.results import make_zip

TOTAL = int(os.environ.get("BENCH_SCALE_SETS", "10000"))
pytestmark = pytest.mark.timeout(7200)  # a benchmark, not a test: it may take several minutes


def _upload(cfg, first: int, count: int) -> None:
    bucket = storage.bucket(cfg)

    def one(i: int) -> None:
        data = make_zip({f"Node_Disp_{i}.out": f"{i} 0.0 0.1 0.2\n".encode() * 20}, with_manifest=False)
        bucket.blob(f"run-scale/m{i:05d}.zip").upload_from_string(data, if_generation_match=0)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(first, first + count)))


def test_bench_pull_cost_per_set_stays_constant(localcloud, tmp_path):
    cfg = localcloud.new_bucket("scale")
    folder = tmp_path / "results"
    tenth = TOTAL // 10
    rounds = [("first", tenth), ("middle", TOTAL - 2 * tenth), ("last", tenth)]
    done, rows = 0, []
    for label, count in rounds:
        _upload(cfg, done, count)
        start = time.perf_counter()
        report = results.pull(cfg, folder, settle=0)
        seconds = time.perf_counter() - start
        assert report.ok and len(report.outcomes) == count, report.failed[:3]
        assert {o.status for o in report.outcomes} == {"cleaned"}
        done += count
        rows.append((label, count, done, seconds))
    assert len(Tracker(folder).sets()) == TOTAL
    assert not storage.list_blobs(cfg)
    print(f"\npull of one-file zip sets into one results folder ({TOTAL} sets in all)")
    print(f"{'round':<8} {'sets':>6} {'recorded after':>15} {'seconds':>9} {'ms per set':>11}")
    for label, count, after, seconds in rows:
        print(f"{label:<8} {count:>6} {after:>15} {seconds:>9.1f} {seconds / count * 1000:>11.1f}")
    first, last = rows[0][3] / rows[0][1], rows[-1][3] / rows[-1][1]
    print(f"time per set at {rows[-1][2]} recorded / at {rows[0][2]}: {last / first:.2f}x")
