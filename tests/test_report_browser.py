"""The run report in a real headless Chromium: no console error, every image loaded, a screenshot written.

Skipped when no Chromium is installed (Debian/Ubuntu: apt-get install chromium); CI machines may lack it.
"""

from __future__ import annotations

import os
import shutil

import pytest

from lib import report, report_browser
from tests.test_report import RUN, Page, build_demo_run

pytestmark = [
    pytest.mark.skipif(report_browser.find_chromium() is None,
                       reason=f"no Chromium for the browser check: {report_browser.INSTALL_HINT}"),
    pytest.mark.skipif(os.name == "nt", reason="the browser check passes pipes to Chromium the POSIX way"),
]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    results = build_demo_run(tmp_path_factory.mktemp("browser") / "results").parent
    odd = results / RUN / "frame_pushover" / "output"
    (odd / "words.out").write_text("not numbers\n")  # a note in the page, not a broken image
    return report.write_report(results, RUN, rows=[{"model": "frame_pushover", "cores": 1, "cost": 0.0047}])


def test_the_demo_report_loads_cleanly_with_every_image_and_gives_a_screenshot(index, tmp_path):
    shot = tmp_path / "shot.png"
    checked = report_browser.check(index, screenshot=shot)
    assert checked.problems == []
    assert checked.images == len(Page(index.read_text(encoding="utf-8")).images) == 8
    from PIL import Image

    with Image.open(shot) as picture:
        assert picture.format == "PNG" and picture.width == report_browser.WIDTH and picture.height > 2000


def test_the_check_fails_on_a_missing_image_and_a_script_error(index, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(index.parent, broken)
    victim = sorted((broken / report.REPORT_DIR).glob("*.png"))[0]
    victim.unlink()
    page = broken / "index.html"
    page.write_text(page.read_text(encoding="utf-8").replace(
        "</main>", "<script>console.error('deliberate'); undefinedFunction();</script></main>"), encoding="utf-8")
    checked = report_browser.check(page)
    text = "\n".join(checked.problems)
    assert f"image {report.REPORT_DIR}/{victim.name} did not load" in text
    assert "console error: deliberate" in text and "uncaught exception" in text
    assert "ERR_FILE_NOT_FOUND" in text
