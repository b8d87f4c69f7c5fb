"""What the tests share: bin/ runners (bins), VM fixtures (vms), the ssh pipelines' image and jobs (pipelines),
the emulators served in-process (emulator) and result-set builders (results)."""

from collections.abc import Callable
from typing import Any

from lib.polling import poll_until


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "", interval: float = 0.05) -> Any:
    """`lib.polling.poll_until` that fails the test on timeout: what `predicate` returned, when true."""
    value = poll_until(predicate, timeout, interval)
    if not value:
        raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
    return value
