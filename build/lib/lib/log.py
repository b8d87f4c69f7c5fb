"""The callback type every lib function takes for progress lines, and its silent default.

lib/ never prints: a caller that wants lines passes `on_log=cli.err` (or print);
a caller that passes nothing gets `quiet`.
"""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]


def quiet(_: str) -> None:
    """The default `on_log`: say nothing."""
