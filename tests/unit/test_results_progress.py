"""Progress output: plain percentage lines off a terminal, a tqdm bar with bytes, rate and ETA on one."""

from __future__ import annotations

import io

from lib import progress


def test_plain_lines_every_ten_percent_once():
    out = io.StringIO()
    p = progress.factory(out, tty=False)
    for done in (0, 5, 10, 15, 55, 99, 100, 100):
        p("run-1/frame", done, 100)
    p("other", 0, 0)
    assert out.getvalue().splitlines() == ["run-1/frame: 0%", "run-1/frame: 10%", "run-1/frame: 50%",
                                           "run-1/frame: 90%", "run-1/frame: 100%", "other: 100%"]


def test_tty_bar_shows_bytes_rate_and_eta():
    out = io.StringIO()
    p = progress.Progress(out, tty=True)
    p("run-1/frame", 512 * 1024, 2 * 1024 * 1024)
    p("run-1/frame", 2 * 1024 * 1024, 2 * 1024 * 1024)
    p.close()
    text = out.getvalue()
    assert "run-1/frame" in text and "2.00M/2.00M" in text and "B/s" in text and "100%" in text
    assert "<" in text  # tqdm's elapsed<remaining (ETA)


def test_disabled_is_silent():
    fn = progress.factory(io.StringIO(), enabled=False)
    assert fn("x", 1, 2) is None
