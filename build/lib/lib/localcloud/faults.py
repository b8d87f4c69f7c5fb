"""Fault injection for the local cloud: make the next N matching calls fail.

A test (through `bin/localcloud` admin calls or the fixtures in tests/conftest.py)
arms a fault for one API: 'storage', 'compute', 'metadata' or 'monitoring'. The
kinds are what a real network and a real Google API do to you:

  http:429, http:503 (any http:CODE) - Google's JSON error with that code
  reset                              - the TCP connection is dropped with an RST, no answer
  stall                              - the answer is held back for `seconds` (the client times out)
  corrupt                            - storage media downloads only: one byte flipped, same size
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

APIS = ("storage", "compute", "metadata", "monitoring")


@dataclass
class Fault:
    api: str
    kind: str
    count: int = 1
    match: str = ""  # regex searched in "METHOD path?query"
    seconds: float = 5.0
    hits: int = 0
    _rx: Any = field(default=None, repr=False, compare=False)

    def matches(self, api: str, line: str) -> bool:
        if api != self.api or self.count <= 0:
            return False
        if self._rx is None:
            self._rx = re.compile(self.match)
        return bool(self._rx.search(line))

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_rx")
        return data


class FaultRegistry:
    """Thread-safe list of armed faults; `take` consumes one firing of the first match."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, api: str, kind: str, count: int = 1, match: str = "", seconds: float = 5.0) -> Fault:
        if api not in APIS:
            raise ValueError(f"unknown api {api!r}: one of {', '.join(APIS)}")
        if not (kind in ("reset", "stall", "corrupt") or re.fullmatch(r"http:[1-5][0-9][0-9]", kind)):
            raise ValueError(f"unknown fault kind {kind!r}: http:CODE, reset, stall or corrupt")
        re.compile(match)
        fault = Fault(api=api, kind=kind, count=int(count), match=match, seconds=float(seconds))
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, api: str, method: str, path: str) -> Fault | None:
        line = f"{method} {path}"
        with self._lock:
            for fault in self._faults:
                if fault.matches(api, line):
                    fault.count -= 1
                    fault.hits += 1
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.public() for f in self._faults]
