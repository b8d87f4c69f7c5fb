"""The state every Compute mixin shares, declared once so each mixin file reads on its own."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from lib.localcloud.faults import FaultRegistry


class ModelBase:
    """Attributes of ComputeModel (set in its __init__); mixins add behaviour, never state of their own.

    Resources are the JSON dicts Compute v1 returns. `local` holds per-instance bookkeeping Google does
    not show (process ids, metadata port, script exit); `_runtime` holds live objects that are not saved.
    """

    root: Path
    state_path: Path
    faults: FaultRegistry | None
    time_scale: float
    op_delay: tuple[float, float]  # seconds each step of an operation takes: (low, high)
    vm_env: dict[str, str]
    metrics_enabled: bool
    lock: threading.RLock
    instances: dict[str, dict[str, Any]]
    local: dict[str, dict[str, Any]]
    images: dict[str, dict[str, Any]]
    operations: dict[str, dict[str, Any]]
    request_ids: dict[str, str]
    quotas: dict[str, Any]
    usage: dict[str, dict[str, Any]]
    heartbeat: float
    _runtime: dict[str, dict[str, Any]]
    _wake: threading.Condition
    _stopping: bool
