"""One polling loop: ask until the answer is yes or the time is up, with the clock and sleep injectable (tests)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(predicate: Callable[[], T], timeout: float, interval: float, *,
               sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic) -> T | None:
    """Call `predicate` every `interval` s until it returns something truthy (returned) or `timeout` s have
    passed (None). It is always called at least once; no sleep outlasts the timeout. Exceptions propagate:
    a predicate raises when waiting longer cannot help."""
    if not interval > 0:
        raise ValueError("poll interval must be above 0")
    started = clock()
    while True:
        answer = predicate()
        if answer:
            return answer
        if clock() - started + interval > timeout:
            return None
        sleep(interval)
