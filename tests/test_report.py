"""The run report: real OpenSees results of the two example models, and recorder files that are not fit to plot."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from lib import manifest, report, storage
from lib import report_plots as plots
from lib.errors import UsageError
from tests.support.bins import REPO, run_bin

RUN = "run-20261122-101500-ab12"
MODELS = ("frame_pushover", "truss_transient")


def write_set(folder: Path, model: str, state: str = "ok", seconds: float = 1.5, exit_code: int = 0) -> None:
    """MANIFEST.json of everything in `folder`, as the VM writes it into each result zip."""
    files = [{"path": p, "size": (folder / p).stat().st_size, "crc32c": storage.crc32c_file(folder / p)}
             for p in manifest.local_files(folder) if p != manifest.NAME]
    (folder / manifest.NAME).write_text(json.dumps({
        "format": 1, "run_id": folder.parent.name, "model": model, "state": state, "exit_code": exit_code,
        "started": "2026-11-22T10:15:02Z", "finished": "2026-11-22T10:15:05Z", "seconds": seconds,
        "vm": "ops-hpc-20261122-101500-ab12", "files": files}))


def build_demo_run(results: Path) -> Path:
    """results/RUN/MODEL/ for both example models, run with real OpenSees as the VM runs them (python -m opensees)."""
    run = results / RUN
    for model in MODELS:
        folder = run / model
        shutil.copytree(REPO / "batches" / "examples" / model, folder)
        with open(folder / "opensees.log", "wb") as log:
            subprocess.run([sys.executable, "-u", "-m", "opensees", "main.tcl"], cwd=folder, stdout=log,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=True, timeout=120)
        (folder / "main.tcl").unlink()  # inputs are not part of a result set
        write_set(folder, model)
    return run


@pytest.fixture(scope="module")
def demo_results(tmp_path_factory) -> Path:
    return build_demo_run(tmp_path_factory.mktemp("report") / "results").parent


@pytest.fixture
def results(demo_results, tmp_path) -> Path:
    """A private copy of the demo run, so each test may change it."""
    shutil.copytree(demo_results, tmp_path / "results")
    return tmp_path / "results"


@pytest.fixture
def light(results) -> Path:
    """The copy without its one wide file (27 columns: 16 panels take seconds to draw on a busy machine)."""
    truss = results / RUN / "truss_transient"
    (truss / "output" / "member_forces.out").unlink()
    write_set(truss, "truss_transient")
    return results


class Page(HTMLParser):
    """What a reader of index.html can reach: images, links, table cells, text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.links: list[str] = []
        self.cells: list[str] = []
        self.text: list[str] = []
        self._cell = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "td":
            self._cell = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = False

    def handle_data(self, data):
        self.text.append(data)
        if self._cell:
            self.cells[-1] += data.strip()


def assert_local_links(index: Path, page: Page) -> None:
    """Every image and link is relative and names a file or folder inside the run folder."""
    for ref in [i["src"] for i in page.images] + page.links:
        parts = urlsplit(ref)
        if not parts.path:  # an anchor in the page
            assert parts.fragment
            continue
        assert not parts.scheme and not parts.netloc and not ref.startswith("/"), ref
        target = (index.parent / unquote(parts.path)).resolve()
        assert target.exists(), ref
        assert index.parent.resolve() in target.parents, ref


def test_report_of_real_example_results_has_the_table_every_recorder_and_the_pushover(results):
    index = report.write_report(results, RUN, rows=[
        {"model": "frame_pushover", "cores": 1, "cost": 0.0047, "vm": "vm-a"},
        {"model": "truss_transient", "cores": 2, "cost": None}])
    assert index == results / RUN / "index.html"
    page = Page(index.read_text(encoding="utf-8"))
    assert_local_links(index, page)
    # the summary table: state, run time, cores, files, size, cost, log per model
    assert page.cells[:6] == ["frame_pushover", "ok", "1.5 s", "1", "4", page.cells[5]]
    assert "$0.0047" in page.cells and "2" in page.cells
    assert page.links.count("frame_pushover/opensees.log") == 1 and "truss_transient/opensees.log" in page.links
    # one picture per recorder file, plus the pushover curve of the frame only
    recorders = sorted(p.relative_to(results / RUN).as_posix() for p in (results / RUN).rglob("*.out"))
    assert len(recorders) == 7
    alts = [i["alt"] for i in page.images]
    assert sorted(a for a in alts if a.startswith("output/")) == sorted(r.split("/", 1)[1] for r in recorders)
    assert alts.count("pushover curve of frame_pushover") == 1 and "pushover curve of truss_transient" not in alts
    from PIL import Image

    for img in page.images:
        with Image.open(index.parent / unquote(img["src"])) as picture:
            assert picture.format == "PNG" and picture.size == (int(img["width"]), int(img["height"]))
    assert not (results / RUN / "_report.new").exists() and not (results / RUN / "index.html.tmp").exists()


def test_the_pushover_pair_from_file_names_is_the_base_shear_the_model_prints(demo_results):
    folder = demo_results / RUN / "frame_pushover"
    tables = [plots.read_table(folder / rel, rel) for rel in ("output/roof_disp.out", "output/floor_disp.out",
                                                                "output/base_reactions.out")]
    pair = plots.find_pushover(tables)
    assert (pair.x_file, pair.x_cols, pair.y_file, pair.y_cols) == ("output/roof_disp.out", (2,),
                                                                      "output/base_reactions.out", (2, 5))
    x, y = plots.pair_values(pair, {t.path: t for t in tables})
    roof, shear_kn = map(float, re.search(r"roof ([\d.]+) m, base shear ([\d.]+) kN",
                                          (folder / "opensees.log").read_text()).groups())
    assert x[-1] == pytest.approx(roof, abs=1e-4)
    assert y[-1] / 1000 == pytest.approx(shear_kn, rel=1e-3)  # the sum of both columns' Fx, sign turned
    # the truss has reactions and a midspan displacement, but nothing says roof: no pushover
    truss = demo_results / RUN / "truss_transient"
    assert plots.find_pushover([plots.read_table(truss / "output" / n, f"output/{n}")
                                for n in ("midspan_disp.out", "support_reactions.out")]) is None


def test_a_named_pair_is_drawn_and_a_wrong_one_is_a_note(light):
    index = report.write_report(light, RUN, plots_by_model={
        "truss_transient": ["output/midspan_disp.out:3,output/support_reactions.out:3+5"],
        "*": ["output/nothing.out:2,output/roof_disp.out:2"]})
    page = Page(index.read_text(encoding="utf-8"))
    assert [i["alt"] for i in page.images].count("pushover curve of truss_transient") == 1
    text = " ".join(page.text)
    assert text.count("output/nothing.out is not a plottable recorder file of this model") == 2
    with pytest.raises(UsageError, match="not file:column"):
        report.write_report(light, RUN, plots_by_model={"*": ["output/a.out,output/b.out:2"]})
    with pytest.raises(UsageError, match="count from 1"):
        report.write_report(light, RUN, plots_by_model={"*": ["output/a.out:0,output/b.out:2"]})


def test_rebuild_keeps_what_the_pc_knew_and_drops_stale_pictures(light):
    report.write_report(light, RUN, rows=[{"model": "frame_pushover", "cores": 4, "cost": 0.0123}])
    stale = light / RUN / "_report" / "old-picture.png"
    stale.write_bytes(b"x")
    index = report.write_report(light, RUN)  # what bin/report does later, on any PC
    page = Page(index.read_text(encoding="utf-8"))
    assert "$0.0123" in page.cells and "4" in page.cells
    assert not stale.exists()
    assert_local_links(index, page)


def test_failed_and_lost_models_show_their_state_and_the_end_of_the_log(light):
    broken = light / RUN / "broken"
    (broken / "output").mkdir(parents=True)
    (broken / "opensees.log").write_text("".join(f"step {i}\n" for i in range(100)) + "WARNING: did not converge\n")
    (broken / "output" / "disp.out").write_text("0.1 0.0\n0.2 0.001\n")
    write_set(broken, "broken", state="failed", exit_code=1)
    index = report.write_report(light, RUN, rows=[{"model": "gone", "state": "lost", "note": "VM preempted"}])
    page = Page(index.read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert "failed" in page.cells and "lost" in page.cells
    assert "WARNING: did not converge" in text and "step 99" in text and "step 10\n" not in text
    assert "no results on this PC: VM preempted" in text
    assert_local_links(index, page)


def _bad_model(results: Path) -> Path:
    folder = results / RUN / "odd"
    (folder / "output").mkdir(parents=True)
    out = folder / "output"
    (out / "good.out").write_text("".join(f"{i * 0.1:.1f} {i * 2.0} {-i * 1.0}\n" for i in range(50)))
    (out / "words.out").write_text("0.1 1.0\nanalysis failed at step 2\n")
    (out / "text.txt").write_text("gravity analysis done\nmodes: 3\n")
    (out / "ragged.out").write_text("0.1 1.0 2.0\n0.2 1.5\n0.3 1.0 2.0\n")
    (out / "empty.out").write_text("")
    (out / "blank.out").write_text("\n\n  \n")
    (out / "binary.out").write_bytes(b"\x00\x01\x02" * 100)
    (out / "header.txt").write_text("time,drift,shear\n0,0,0\n1,0.01,250\n2,0.02,410\n")
    (out / "huge.out").write_text("0.1 1.0\n" * 160000)  # 1.2 MB: over the limit the test sets
    rng = np.random.default_rng(7)
    big = np.column_stack([np.arange(30000) * 0.01, rng.normal(size=30000)])
    big[12345, 1] = 99.0  # one spike the decimated picture must keep
    np.savetxt(out / "long.out", big, fmt="%.6g")
    write_set(folder, "odd")
    return folder


def test_malformed_recorder_files_are_notes_and_the_rest_is_plotted(light):
    folder = _bad_model(light)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "output").iterdir()}
    index = report.write_report(light, RUN, max_bytes=1_000_000, max_points=2000)
    page = Page(index.read_text(encoding="utf-8"))
    text = " ".join("".join(page.text).split())
    assert "output/words.out: not numeric (line 2: 'analysis failed at step 2')" in text
    assert "output/text.txt: not numeric (line 1: 'gravity analysis done')" in text
    assert "output/ragged.out: ragged columns (line 2 has 2 values, line 1 has 3)" in text
    assert "output/empty.out: empty" in text and "output/blank.out: empty" in text
    assert "output/binary.out: binary, not text" in text
    assert "output/huge.out: too large to plot (1.2 MB; the limit is 976.6 KB)" in text
    drawn = [i["alt"] for i in page.images if "/odd--" in i["src"]]
    assert sorted(drawn) == ["output/good.out", "output/header.txt", "output/long.out"]
    assert "output/long.out: 30000 rows, 2 column(s); drawn from" in text and "the file is unchanged" in text
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "output").iterdir()} == before
    assert_local_links(index, page)


def test_a_model_with_many_recorders_draws_the_first_ones_and_names_the_rest(light):
    folder = light / RUN / "many"
    for i in range(7):
        (folder / f"Node_{i}.out").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"Node_{i}.out").write_text(f"0 0\n1 {i}\n2 {2 * i}\n")
    write_set(folder, "many")
    page = Page(report.write_report(light, RUN, max_figures=3).read_text(encoding="utf-8"))
    drawn = sorted(i["alt"] for i in page.images if "/many--" in i["src"])
    assert drawn == ["Node_0.out", "Node_1.out", "Node_2.out"]
    text = " ".join("".join(page.text).split())
    assert "4 more recorder file(s) not drawn (Node_3.out ... Node_6.out)" in text
    page = Page(report.write_report(light, RUN, max_figures=0).read_text(encoding="utf-8"))
    assert len([i for i in page.images if "/many--" in i["src"]]) == 7


def test_header_names_and_single_columns(tmp_path):
    (tmp_path / "h.txt").write_text("time drift shear\n0 0 0\n1 0.01 250\n")
    table = plots.read_table(tmp_path / "h.txt", "h.txt")
    assert plots.read_table(Path(__file__), "py") == "not numeric (line 1: '\"\"\"The run report: real OpenSees result…')"
    assert table.names == ["col 1 time", "col 2 drift", "col 3 shear"] and table.data.shape == (2, 3)
    (tmp_path / "one.out").write_text("1\n2\n4\n")
    one = plots.read_table(tmp_path / "one.out", "one.out")
    drawn = plots.draw_columns(one, tmp_path / "one.png")
    assert drawn["panels"] == 1 and (tmp_path / "one.png").stat().st_size > 1000
    (tmp_path / "row.out").write_text("1 2 3\n")
    assert plots.read_table(tmp_path / "row.out", "row.out") == "only one row: nothing to draw"


def test_decimation_keeps_every_peak_and_bounds_the_points():
    rng = np.random.default_rng(3)
    n = 1_000_003
    data = np.column_stack([np.arange(n) * 1e-3, rng.normal(size=n), rng.normal(size=n)])
    data[777_777, 1], data[123_456, 2] = 50.0, -50.0
    data[5, 2] = np.nan
    rows = plots.decimate(data, 4000)
    assert len(rows) <= 4000 + 2 and rows[0] == 0 and rows[-1] == n - 1
    assert 777_777 in rows and 123_456 in rows
    assert np.all(np.diff(rows) > 0)  # in order, no duplicates: the curve is drawn left to right
    small = data[:100]
    assert list(plots.decimate(small, 4000)) == list(range(100))


def test_hostile_model_and_file_names_are_escaped_and_still_link(light):
    folder = light / RUN / 'a b&<i>"c'
    (folder / "out put").mkdir(parents=True)
    (folder / "out put" / 'x"<y>#1.out').write_text("0 0\n1 1\n2 4\n")
    write_set(folder, folder.name)
    index = report.write_report(light, RUN)
    raw = index.read_text(encoding="utf-8")
    assert "<i>" not in raw and 'a b&amp;&lt;i&gt;&quot;c' in raw
    page = Page(raw)
    assert_local_links(index, page)
    assert any(unquote(link) == 'a b&<i>"c/out put/x"<y>#1.out' for link in page.links)


def test_no_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="no pulled results for run 'nope'"):
        report.write_report(tmp_path, "nope")
    with pytest.raises(UsageError, match="no pulled run in"):
        report.latest_run(tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_bin_report_rebuilds_the_newest_run_and_refuses_bad_input(light):
    env = {**os.environ, "OPS_HPC_CHROMIUM": str(light / "no-such-browser")}
    older = light / "run-20260101-000000-0000" / "m"
    older.mkdir(parents=True)
    (older / "r.out").write_text("0 0\n1 1\n")
    write_set(older, "m")
    os.utime(older / manifest.NAME, (1, 1))
    done = run_bin("report", "--dir", str(light), env=env)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == light / RUN / "index.html" and Path(done.stdout.strip()).is_file()
    bad = run_bin("report", RUN, "--dir", str(light), "--plot", "output/x.out", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: plot='output/x.out': expected x_file:col,y_file:col")
    missing = run_bin("report", "run-nope", "--dir", str(light), env=env)
    assert missing.returncode == 2 and "no pulled results for run 'run-nope'" in missing.stderr
    shot = run_bin("report", RUN, "--dir", str(light), "--screenshot", str(light / "s.png"), env=env)
    assert shot.returncode == 2 and "install Chromium" in shot.stderr and not (light / "s.png").exists()


def test_after_a_pull_each_run_gets_its_report_and_a_failure_is_only_a_line(light):
    logs = []
    (light / "lone").mkdir()  # a legacy tree set id has no run folder above it: not a run
    written = report.refresh_after_pull(light, [f"{RUN}/frame_pushover", f"{RUN}/truss_transient", "lone",
                                                "run-gone/m"], on_log=logs.append)
    assert written == [light / RUN / "index.html"] and written[0].is_file()
    assert logs == [f"report: {written[0]}", f"report of run-gone not written: {light / 'run-gone'} is not a folder: "
                    "no pulled results for run 'run-gone'"]
