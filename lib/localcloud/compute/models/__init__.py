"""Compute Engine state and rules for the local cloud: instances, images, operations, quotas. No HTTP here.

Built the way moto builds its backends: one mixin per concern, composed into `ComputeModel`.

  persistence.py  load/save <root>/compute.json, the seed image, host-restart recovery, paths and links
  operations.py   Operation resources, requestId idempotency
  regions.py      regions, zones, machine types, projects, quotas
  images.py       images (folders under <root>/images)
  instances.py    instance reads, insert, metadata and labels
  power.py        boot, stop, start, delete (VM process trees, see ../../vms.py)
  scheduler.py    maxRunDuration, preemption, the heartbeat
  host.py         what the daemon, the admin API and the Monitoring fake read
  filters.py      the list `filter` language (pure)
  util.py         names, timestamps, fingerprints, machine-type shapes (pure)

Host lifecycle (documented behaviour of the local "host"):
- When the daemon stops (shutdown) or the PC loses power, VM processes end but their recorded status stays.
- On the next start an instance recorded RUNNING becomes TERMINATED if its startup script was still
  running (the local host "rebooted" under it) or if the PC rebooted since it started. One whose startup
  script had already finished stays RUNNING: real GCE keeps an idle VM running and billing, which is why
  ops-hpc VMs delete themselves. A VM process that survived a daemon crash is adopted again.
- maxRunDuration / preemption record a zone operation with operationType
  "compute.instances.maxRunDurationExceeded" / "compute.instances.preempted" and user "system",
  the names GCE shows in the audit log for these system events.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from lib.localcloud.compute.models.filters import compile_filter
from lib.localcloud.compute.models.host import HostMixin
from lib.localcloud.compute.models.images import ImagesMixin
from lib.localcloud.compute.models.instances import InstancesMixin
from lib.localcloud.compute.models.operations import OperationsMixin
from lib.localcloud.compute.models.persistence import PersistenceMixin
from lib.localcloud.compute.models.power import PowerMixin
from lib.localcloud.compute.models.regions import RegionsMixin
from lib.localcloud.compute.models.scheduler import SchedulerMixin
from lib.localcloud.compute.models.util import (
    DEFAULT_CPUS_LIMIT,
    DEFAULT_OP_DELAY,
    GOOGLE,
    check_op_delay,
    parse_machine_type,
)
from lib.localcloud.faults import FaultRegistry

__all__ = ["GOOGLE", "ComputeModel", "compile_filter", "parse_machine_type"]


class ComputeModel(PersistenceMixin, OperationsMixin, RegionsMixin, ImagesMixin, InstancesMixin, PowerMixin,
                   SchedulerMixin, HostMixin):
    """All Compute state of the local cloud, thread-safe behind one re-entrant lock."""

    def __init__(self, root: Path, *, faults: FaultRegistry | None = None, time_scale: float = 1.0,
                 op_delay: tuple[float, float] = DEFAULT_OP_DELAY) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_path = self.root / "compute.json"
        self.faults = faults
        self.time_scale = float(time_scale)
        self.op_delay = check_op_delay(op_delay)
        self.vm_env = {}
        self.metrics_enabled = True
        self.lock = threading.RLock()
        self.instances = {}
        self.local = {}
        self.images = {}
        self.operations = {}
        self.request_ids = {}
        self.quotas: dict[str, Any] = {"default": {"CPUS": DEFAULT_CPUS_LIMIT}, "regions": {}}
        self.usage = {}
        self.heartbeat = 0.0
        self._runtime = {}  # key -> {"popen", "metadata"}
        self._wake = threading.Condition(self.lock)
        self._stopping = False
        self._load()
        self._seed()
        self._recover()
        self._save()
        self._scheduler = threading.Thread(target=self._schedule_loop, name="compute-scheduler", daemon=True)
        self._scheduler.start()
