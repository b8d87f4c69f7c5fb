"""What the tests share: bin/ runners (bins), VM fixtures (vms), the ssh pipelines' image and jobs (pipelines),
the emulators served in-process (emulator) and result-set builders (results)."""

import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "", interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something true (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
