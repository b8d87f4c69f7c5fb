"""Compute Engine state and rules for the local cloud: instances, images, operations, quotas. No HTTP here.

Resources are kept as the JSON dicts the Compute REST API v1 returns, so responses.py only wraps them.
Per-instance bookkeeping that Google does not show (process ids, metadata port, script exit) lives in
`self.local`. Everything persists in <root>/compute.json; disks and images are folders under <root>.

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

import base64
import copy
import datetime as dt
import fnmatch
import hashlib
import json
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from lib.jsonfile import write_atomic
from lib.localcloud import vms
from lib.localcloud.compute.exceptions import (
    AlreadyExists,
    ComputeError,
    ConditionNotMet,
    InvalidValue,
    QuotaExceeded,
    ResourceInUse,
    ResourceNotFound,
    ResourceNotReady,
)
from lib.localcloud.faults import FaultRegistry
from lib.localcloud.metadata import MetadataServer

GOOGLE = "https://www.googleapis.com/compute/v1"
PUBLIC_IMAGE_PROJECT = "cloud-hpc-image-public"
SEED_IMAGE = "hpc-rocky-linux-8-v20260115"
SEED_FAMILY = "hpc-rocky-linux-8"
DEFAULT_CPUS_LIMIT = 1024.0
NAME_RX = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
ZONE_RX = re.compile(r"([a-z]+-[a-z]+[0-9]+)-[a-z]")
LABEL_KEY_RX = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE_RX = re.compile(r"[a-z0-9_-]{0,63}")
USAGE_KEEP_SECONDS = 40 * 86400
MAX_OPERATIONS = 2000
STOP_GRACE = 3.0
REAP_S = 5.0  # how often processes of deleted VMs are looked for (vms.reap_strays)
ACTIVE = ("PROVISIONING", "STAGING", "RUNNING", "STOPPING", "REPAIRING")

# family -> (MB of memory per vCPU by shape, allowed vCPU counts, family quota metric or None)
FAMILIES: dict[str, tuple[dict[str, int], tuple[int, ...], str | None]] = {
    "e2": ({"standard": 4096, "highmem": 8192, "highcpu": 1024}, (2, 4, 8, 16, 32), None),
    "n1": ({"standard": 3840, "highmem": 6656, "highcpu": 922}, (1, 2, 4, 8, 16, 32, 64, 96), None),
    "n2": ({"standard": 4096, "highmem": 8192, "highcpu": 1024}, (2, 4, 8, 16, 32, 48, 64, 80, 96, 128), "N2_CPUS"),
    "n2d": ({"standard": 4096, "highmem": 8192, "highcpu": 1024},
            (2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 224), "N2D_CPUS"),
    "n4": ({"standard": 4096, "highmem": 8192, "highcpu": 2048}, (2, 4, 8, 16, 32, 48, 64, 80), "N4_CPUS"),
    "c2": ({"standard": 4096}, (4, 8, 16, 30, 60), "C2_CPUS"),
    "c2d": ({"standard": 4096, "highmem": 8192, "highcpu": 2048}, (2, 4, 8, 16, 32, 56, 112), "C2D_CPUS"),
    "c3": ({"standard": 4096, "highmem": 8192, "highcpu": 2048}, (4, 8, 22, 44, 88, 176), "C3_CPUS"),
    "c3d": ({"standard": 4096, "highmem": 8192, "highcpu": 2048},
            (4, 8, 16, 30, 60, 90, 180, 360), "C3D_CPUS"),
    "c4": ({"standard": 3840, "highmem": 7936, "highcpu": 2048}, (2, 4, 8, 16, 32, 48, 96, 192), "C4_CPUS"),
    "h3": ({"standard": 4096}, (88,), "H3_CPUS"),
}
SHARED_CORE = {"e2-micro": (2, 1024), "e2-small": (2, 2048), "e2-medium": (2, 4096),
               "f1-micro": (1, 614), "g1-small": (1, 1740)}
CUSTOM_RX = re.compile(r"(?:(e2|n2|n2d|n4)-)?custom-(\d+)-(\d+)(-ext)?")
FAMILY_METRICS = sorted({m for _, _, m in FAMILIES.values() if m})


def parse_machine_type(name: str) -> dict[str, Any] | None:
    """guestCpus, memoryMb and quota metric of a predefined or custom machine type name; None if no such shape."""
    if name in SHARED_CORE:
        cpus, mem = SHARED_CORE[name]
        return {"name": name, "guestCpus": cpus, "memoryMb": mem, "family": name.split("-")[0],
                "isSharedCpu": True, "metric": None}
    m = CUSTOM_RX.fullmatch(name)
    if m:
        family, cpus, mem = m.group(1) or "n1", int(m.group(2)), int(m.group(3))
        per_cpu = mem / max(cpus, 1)
        if cpus < 1 or (cpus > 1 and cpus % 2) or mem % 256 or cpus > 224:
            return None
        if not m.group(4) and not (512 <= per_cpu <= 8192):
            return None
        return {"name": name, "guestCpus": cpus, "memoryMb": mem, "family": family, "isSharedCpu": False,
                "metric": FAMILIES[family][2]}
    parts = name.split("-")
    if len(parts) != 3 or parts[0] not in FAMILIES or not parts[2].isdigit():
        return None
    per_cpu, counts, metric = FAMILIES[parts[0]]
    cpus = int(parts[2])
    if parts[1] not in per_cpu or cpus not in counts or (parts[1] == "highcpu" and cpus < 2):
        return None
    return {"name": name, "guestCpus": cpus, "memoryMb": per_cpu[parts[1]] * cpus, "family": parts[0],
            "isSharedCpu": False, "metric": metric}


def now_rfc3339(t: float | None = None) -> str:
    """RFC3339 with milliseconds and offset, as Compute renders creationTimestamp."""
    stamp = dt.datetime.fromtimestamp(time.time() if t is None else t, tz=dt.timezone.utc)
    return stamp.isoformat(timespec="milliseconds")


def parse_rfc3339(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def fingerprint(data: Any) -> str:
    """Opaque 8-byte base64 fingerprint that changes when the content changes (Google's optimistic lock)."""
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).digest()[:8]
    return base64.b64encode(digest).decode()


def numeric_project(project: str) -> str:
    """A stable 12-digit project number, as GCE pairs with every project id."""
    return str(int(hashlib.sha256(project.encode()).hexdigest(), 16) % 900_000_000_000 + 100_000_000_000)


def new_id() -> str:
    return str(random.getrandbits(63) | (1 << 60))


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def folder_bytes(path: Path) -> int:
    total = 0
    for base, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total


def last_segment(value: str, kind: str) -> str:
    """'zones/z/machineTypes/e2-standard-4', a full URL or a bare name -> 'e2-standard-4'."""
    marker = f"{kind}/"
    return value.rsplit(marker, 1)[-1] if marker in value else value.rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------------------------- filters

_TOKEN_RX = re.compile(r'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|(!=|=|:|~|!~)|([^\s()=!:~"]+))')


def compile_filter(text: str | None) -> Callable[[dict[str, Any]], bool]:
    """Compute list `filter`: `field = value`, `!=`, `:` (has), `eq`/`ne` (regex); AND/OR/NOT, space, parens.

    Fields are dotted paths into the resource (labels.env, scheduling.provisioningModel); a URL field
    matches its last segment (zone = us-central1-a); `=` accepts `*` wildcards.
    """
    if not text or not text.strip():
        return lambda _r: True
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RX.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise InvalidValue(f"Invalid value for field 'filter': '{text}'. Invalid list filter expression.")
        pos = m.end()
        if m.group(1):
            tokens.append(("(", "("))
        elif m.group(2):
            tokens.append((")", ")"))
        elif m.group(3) is not None:
            tokens.append(("str", re.sub(r"\\(.)", r"\1", m.group(3))))
        elif m.group(4):
            tokens.append(("op", m.group(4)))
        else:
            word = m.group(5)
            tokens.append(("op", word) if word in ("eq", "ne") else ("word", word))
    parser = _FilterParser(tokens, text)
    fn = parser.expr()
    if parser.i != len(tokens):
        raise InvalidValue(f"Invalid value for field 'filter': '{text}'. Invalid list filter expression.")
    return fn


class _FilterParser:
    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.t, self.i, self.text = tokens, 0, text

    def bad(self) -> InvalidValue:
        return InvalidValue(f"Invalid value for field 'filter': '{self.text}'. Invalid list filter expression.")

    def peek(self) -> tuple[str, str] | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def expr(self) -> Callable[[dict[str, Any]], bool]:
        terms = [self.conj()]
        while self.peek() == ("word", "OR"):
            self.i += 1
            terms.append(self.conj())
        return terms[0] if len(terms) == 1 else (lambda r: any(f(r) for f in terms))

    def conj(self) -> Callable[[dict[str, Any]], bool]:
        terms = [self.unary()]
        while self.peek() is not None and self.peek() not in ((")", ")"), ("word", "OR")):
            if self.peek() == ("word", "AND"):
                self.i += 1
            terms.append(self.unary())
        return terms[0] if len(terms) == 1 else (lambda r: all(f(r) for f in terms))

    def unary(self) -> Callable[[dict[str, Any]], bool]:
        tok = self.peek()
        if tok is None:
            raise self.bad()
        if tok == ("word", "NOT"):
            self.i += 1
            inner = self.unary()
            return lambda r: not inner(r)
        if tok[0] == "(":
            self.i += 1
            inner = self.expr()
            if self.peek() != (")", ")"):
                raise self.bad()
            self.i += 1
            return inner
        if tok[0] != "word" or self.i + 2 >= len(self.t) or self.t[self.i + 1][0] != "op" \
                or self.t[self.i + 2][0] not in ("word", "str"):
            raise self.bad()
        field, op, value = tok[1], self.t[self.i + 1][1], self.t[self.i + 2][1]
        self.i += 3
        return _term(field, op, value)


def _field(resource: dict[str, Any], path: str) -> Any:
    node: Any = resource
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _term(field: str, op: str, value: str) -> Callable[[dict[str, Any]], bool]:
    def matches_one(actual: Any) -> bool:
        text = _as_text(actual)
        candidates = [text] + ([text.rsplit("/", 1)[-1]] if "/" in text else [])
        if op in ("eq", "ne", "~", "!~"):
            return any(re.fullmatch(value, c) for c in candidates)
        if op == ":":
            return value == "*" or any(value in c for c in candidates)
        return any(fnmatch.fnmatchcase(c, value) if "*" in value else c == value for c in candidates)

    def check(resource: dict[str, Any]) -> bool:
        actual = _field(resource, field)
        if actual is None:
            found = False
        elif isinstance(actual, list):
            found = any(matches_one(a) for a in actual)
        else:
            found = matches_one(actual)
        return not found if op in ("!=", "ne", "!~") else found

    return check


# ----------------------------------------------------------------------------------------------- model


class ComputeModel:
    """All Compute state of the local cloud, thread-safe behind one re-entrant lock."""

    def __init__(self, root: Path, *, faults: FaultRegistry | None = None, time_scale: float = 1.0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_path = self.root / "compute.json"
        self.faults = faults
        self.time_scale = float(time_scale)
        self.vm_env: dict[str, str] = {}
        self.metrics_enabled = True
        self.lock = threading.RLock()
        self.instances: dict[str, dict[str, Any]] = {}
        self.local: dict[str, dict[str, Any]] = {}
        self.images: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.request_ids: dict[str, str] = {}
        self.quotas: dict[str, Any] = {"default": {"CPUS": DEFAULT_CPUS_LIMIT}, "regions": {}}
        self.usage: dict[str, dict[str, Any]] = {}
        self.heartbeat = 0.0
        self._runtime: dict[str, dict[str, Any]] = {}  # key -> {"popen", "metadata"}
        self._wake = threading.Condition(self.lock)
        self._stopping = False
        self._load()
        self._seed()
        self._recover()
        self._save()
        self._scheduler = threading.Thread(target=self._schedule_loop, name="compute-scheduler", daemon=True)
        self._scheduler.start()

    # ------------------------------------------------------------------ persistence

    def _load(self) -> None:
        if not self.state_path.exists():
            return
        data = json.loads(self.state_path.read_text(encoding="utf-8"))
        self.instances = data.get("instances", {})
        self.local = data.get("local", {})
        self.images = data.get("images", {})
        self.operations = data.get("operations", {})
        self.request_ids = data.get("request_ids", {})
        self.quotas = data.get("quotas", self.quotas)
        self.usage = data.get("usage", {})
        self.heartbeat = float(data.get("heartbeat", 0.0))
        self.metrics_enabled = bool(data.get("metrics_enabled", True))

    def _save(self) -> None:
        with self.lock:
            self._prune()
            data = {"instances": self.instances, "local": self.local, "images": self.images,
                    "operations": self.operations, "request_ids": self.request_ids, "quotas": self.quotas,
                    "usage": self.usage, "heartbeat": self.heartbeat, "metrics_enabled": self.metrics_enabled}
            write_atomic(self.state_path, data)

    def _prune(self) -> None:
        if len(self.operations) > MAX_OPERATIONS:
            for key in sorted(self.operations, key=lambda k: self.operations[k]["insertTime"])[:-MAX_OPERATIONS]:
                del self.operations[key]
            live = set(self.operations)
            self.request_ids = {k: v for k, v in self.request_ids.items() if v in live}
        horizon = time.time() - USAGE_KEEP_SECONDS
        for iid in list(self.usage):
            rec = self.usage[iid]
            rec["intervals"] = [iv for iv in rec["intervals"] if iv[1] is None or iv[1] >= horizon]
            if not rec["intervals"] and not rec.get("live"):
                del self.usage[iid]

    def _seed(self) -> None:
        """The public base image every ops-hpc image build starts from (a near-empty Rocky Linux 8 stand-in)."""
        key = f"{PUBLIC_IMAGE_PROJECT}/{SEED_IMAGE}"
        if key in self.images:
            return
        folder = self.image_dir(PUBLIC_IMAGE_PROJECT, SEED_IMAGE)
        (folder / "etc").mkdir(parents=True, exist_ok=True)
        (folder / "etc" / "os-release").write_text(
            'NAME="Rocky Linux"\nVERSION="8.10 (Green Obsidian)"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
            'VERSION_ID="8.10"\nPLATFORM_ID="platform:el8"\nPRETTY_NAME="Rocky Linux 8.10 (Green Obsidian)"\n'
            "# localcloud stand-in: a folder, not a real OS image\n")
        self.images[key] = self._image_resource(PUBLIC_IMAGE_PROJECT, SEED_IMAGE, family=SEED_FAMILY, disk_gb=20,
                                                folder=folder, description="Rocky Linux 8 for HPC (localcloud)")

    def _recover(self) -> None:
        """Apply the host lifecycle rules (module docstring) to instances recorded as running."""
        boot = psutil.boot_time()
        stop_at = min(time.time(), self.heartbeat or time.time())
        for key, inst in self.instances.items():
            local = self.local.setdefault(key, {})
            local.pop("ending", None)
            if inst["status"] not in ACTIVE:
                continue
            started = local.get("last_start", 0.0)
            alive = vms.process(local.get("pid"), local.get("create_time")) is not None
            if inst["status"] != "RUNNING" or boot > started or (not alive and local.get("pid")
                                                                 and not local.get("script_done")):
                if alive:
                    vms.end_tree(local.get("pid"), local.get("create_time"), inst["id"], grace=1.0)
                inst["status"] = "TERMINATED"
                inst["lastStopTimestamp"] = now_rfc3339(stop_at)
                self._close_usage(inst["id"], stop_at)
                disk = self.disk_dir_of(inst)
                if disk.exists():
                    vms.console_append(disk, "localcloud: the local host restarted; instance TERMINATED\n")
                local["pid"] = None
                continue
            self._start_metadata(key, local.get("metadata_port", 0))
            if alive:
                vms.watch(None, local["pid"], local["create_time"], self._exit_callback(key, local["pid"]))

    # ------------------------------------------------------------------ paths and links

    def disk_dir(self, project: str, zone: str, name: str) -> Path:
        return self.root / "disks" / project / zone / name

    def image_dir(self, project: str, name: str) -> Path:
        return self.root / "images" / project / name

    def disk_dir_of(self, inst: dict[str, Any]) -> Path:
        boot = self._boot_disk(inst)
        project, zone, name = _disk_parts(boot["source"])
        return self.disk_dir(project, zone, name)

    @staticmethod
    def _boot_disk(inst: dict[str, Any]) -> dict[str, Any]:
        return next((d for d in inst["disks"] if d.get("boot")), inst["disks"][0])

    @staticmethod
    def zone_link(project: str, zone: str) -> str:
        return f"{GOOGLE}/projects/{project}/zones/{zone}"

    def instance_link(self, project: str, zone: str, name: str) -> str:
        return f"{self.zone_link(project, zone)}/instances/{name}"

    # ------------------------------------------------------------------ operations

    def _operation(self, project: str, zone: str | None, op_type: str, target: str, target_id: str,
                   error: ComputeError | None = None, user: str = "localcloud-user@localcloud",
                   started: float | None = None) -> dict[str, Any]:
        t = time.time()
        name = f"operation-{int(t * 1000)}-{random.getrandbits(52):013x}-{random.getrandbits(32):08x}-" \
               f"{random.getrandbits(32):08x}"
        scope = f"zones/{zone}" if zone else "global"
        op: dict[str, Any] = {
            "kind": "compute#operation", "id": new_id(), "name": name, "operationType": op_type,
            "targetLink": target, "targetId": target_id, "status": "DONE", "user": user, "progress": 100,
            "insertTime": now_rfc3339(started or t), "startTime": now_rfc3339(started or t),
            "endTime": now_rfc3339(t), "selfLink": f"{GOOGLE}/projects/{project}/{scope}/operations/{name}",
        }
        if zone:
            op["zone"] = self.zone_link(project, zone)
        if error is not None:
            op["error"] = {"errors": [{"code": error.op_code, "message": error.message}]}
            op["httpErrorStatusCode"] = error.code
            op["httpErrorMessage"] = error.http_message
        self.operations[f"{project}/{scope}/{name}"] = op
        return op

    def _idempotent(self, project: str, request_id: str | None, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """requestId: a retried mutation returns the first attempt's operation and does nothing again."""
        if request_id:
            with self.lock:
                known = self.request_ids.get(f"{project}/{request_id}")
                if known and known in self.operations:
                    return copy.deepcopy(self.operations[known])
        op = fn()
        with self.lock:
            if request_id:
                scope = f"zones/{op['zone'].rsplit('/', 1)[-1]}" if "zone" in op else "global"
                self.request_ids[f"{project}/{request_id}"] = f"{project}/{scope}/{op['name']}"
            self._save()
            return copy.deepcopy(op)

    def get_operation(self, project: str, zone: str | None, name: str) -> dict[str, Any]:
        scope = f"zones/{zone}" if zone else "global"
        with self.lock:
            op = self.operations.get(f"{project}/{scope}/{name}")
            if op is None:
                raise ResourceNotFound(f"projects/{project}/{scope}/operations/{name}")
            return copy.deepcopy(op)

    def list_operations(self, project: str, zone: str | None, flt: str | None = None) -> list[dict[str, Any]]:
        scope = f"{project}/zones/{zone}/" if zone else f"{project}/global/"
        match = compile_filter(flt)
        with self.lock:
            ops = [copy.deepcopy(o) for k, o in self.operations.items() if k.startswith(scope) and match(o)]
        return sorted(ops, key=lambda o: o["insertTime"])

    def delete_operation(self, project: str, zone: str | None, name: str) -> None:
        scope = f"zones/{zone}" if zone else "global"
        with self.lock:
            if self.operations.pop(f"{project}/{scope}/{name}", None) is None:
                raise ResourceNotFound(f"projects/{project}/{scope}/operations/{name}")
            self._save()

    # ------------------------------------------------------------------ regions, zones, machine types, quota

    def check_zone(self, project: str, zone: str) -> None:
        if not ZONE_RX.fullmatch(zone):
            raise ResourceNotFound(f"projects/{project}/zones/{zone}")

    def machine_type(self, project: str, zone: str, name: str) -> dict[str, Any]:
        self.check_zone(project, zone)
        shape = parse_machine_type(name)
        if shape is None:
            raise ResourceNotFound(f"projects/{project}/zones/{zone}/machineTypes/{name}")
        return {"kind": "compute#machineType", "id": str(int(hashlib.md5(name.encode()).hexdigest()[:12], 16)),
                "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": name,
                "description": f"{shape['guestCpus']} vCPUs, {shape['memoryMb'] / 1024:g} GB RAM",
                "guestCpus": shape["guestCpus"], "memoryMb": shape["memoryMb"], "maximumPersistentDisks": 128,
                "maximumPersistentDisksSizeGb": "263168", "zone": zone, "isSharedCpu": shape["isSharedCpu"],
                "selfLink": f"{self.zone_link(project, zone)}/machineTypes/{name}", "architecture": "X86_64"}

    def quota_limit(self, region: str, metric: str) -> float:
        with self.lock:
            regional = self.quotas["regions"].get(region, {})
            if metric in regional:
                return float(regional[metric])
            return float(self.quotas["default"].get(metric, DEFAULT_CPUS_LIMIT))

    def set_quota(self, metric: str, limit: float, region: str | None = None) -> None:
        with self.lock:
            if region:
                self.quotas["regions"].setdefault(region, {})[metric] = float(limit)
            else:
                self.quotas["default"][metric] = float(limit)
            self._save()

    def quota_usage(self, project: str, region: str) -> dict[str, float]:
        """vCPUs held by non-TERMINATED instances of the region, by metric (CPUS counts everything)."""
        usage: dict[str, float] = {"CPUS": 0.0, "INSTANCES": 0.0}
        with self.lock:
            for key, inst in self.instances.items():
                p, zone, _ = key.split("/")
                if p != project or region_of(zone) != region or inst["status"] == "TERMINATED":
                    continue
                shape = parse_machine_type(last_segment(inst["machineType"], "machineTypes")) or {}
                cpus = float(shape.get("guestCpus", 0))
                usage["CPUS"] += cpus
                usage["INSTANCES"] += 1
                if shape.get("metric"):
                    usage[shape["metric"]] = usage.get(shape["metric"], 0.0) + cpus
        return usage

    def region(self, project: str, region: str) -> dict[str, Any]:
        if not re.fullmatch(r"[a-z]+-[a-z]+[0-9]+", region):
            raise ResourceNotFound(f"projects/{project}/regions/{region}")
        usage = self.quota_usage(project, region)
        quotas = [{"metric": m, "limit": self.quota_limit(region, m), "usage": usage.get(m, 0.0)}
                  for m in ["CPUS", *FAMILY_METRICS]]
        quotas.append({"metric": "INSTANCES", "limit": self.quota_limit(region, "INSTANCES") if
                       "INSTANCES" in self.quotas["default"] else 6000.0, "usage": usage["INSTANCES"]})
        quotas.append({"metric": "PREEMPTIBLE_CPUS", "limit": 0.0, "usage": 0.0})
        base = f"{GOOGLE}/projects/{project}"
        return {"kind": "compute#region", "id": str(int(hashlib.md5(region.encode()).hexdigest()[:10], 16)),
                "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": region, "description": region,
                "status": "UP", "zones": [f"{base}/zones/{region}-{s}" for s in "abcf"], "quotas": quotas,
                "selfLink": f"{base}/regions/{region}", "supportsPzs": False}

    def zone(self, project: str, zone: str) -> dict[str, Any]:
        self.check_zone(project, zone)
        base = f"{GOOGLE}/projects/{project}"
        return {"kind": "compute#zone", "id": str(int(hashlib.md5(zone.encode()).hexdigest()[:10], 16)),
                "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": zone, "description": zone,
                "status": "UP", "region": f"{base}/regions/{region_of(zone)}", "selfLink": f"{base}/zones/{zone}",
                "availableCpuPlatforms": ["Intel Sapphire Rapids", "AMD Milan", "Intel Cascade Lake"],
                "supportsPzs": False}

    def project(self, project: str) -> dict[str, Any]:
        return {"kind": "compute#project", "id": numeric_project(project), "name": project,
                "creationTimestamp": "2020-01-01T00:00:00.000-08:00",
                "commonInstanceMetadata": {"kind": "compute#metadata", "fingerprint": fingerprint([])},
                "defaultServiceAccount": self.default_sa(project), "xpnProjectStatus": "UNSPECIFIED_XPN_PROJECT_STATUS",
                "selfLink": f"{GOOGLE}/projects/{project}"}

    @staticmethod
    def default_sa(project: str) -> str:
        return f"{numeric_project(project)}-compute@developer.gserviceaccount.com"

    # ------------------------------------------------------------------ images

    def _image_resource(self, project: str, name: str, *, family: str | None, disk_gb: int, folder: Path,
                        description: str = "", labels: dict[str, str] | None = None,
                        source_disk: str | None = None, source_image: str | None = None) -> dict[str, Any]:
        labels = labels or {}
        image: dict[str, Any] = {
            "kind": "compute#image", "id": new_id(), "creationTimestamp": now_rfc3339(), "name": name,
            "description": description, "sourceType": "RAW", "status": "READY",
            "archiveSizeBytes": str(folder_bytes(folder)), "diskSizeGb": str(disk_gb), "labels": labels,
            "labelFingerprint": fingerprint(labels), "selfLink": f"{GOOGLE}/projects/{project}/global/images/{name}",
            "storageLocations": ["us"], "architecture": "X86_64",
        }
        if family:
            image["family"] = family
        if source_disk:
            image["sourceDisk"] = source_disk
        if source_image:
            image["sourceImage"] = source_image
        return image

    def get_image(self, project: str, name: str) -> dict[str, Any]:
        with self.lock:
            image = self.images.get(f"{project}/{name}")
            if image is None:
                raise ResourceNotFound(f"projects/{project}/global/images/{name}")
            return copy.deepcopy(image)

    def image_from_family(self, project: str, family: str) -> dict[str, Any]:
        """Newest READY image of the family that is not deprecated, as getFromFamily answers."""
        with self.lock:
            images = [i for k, i in self.images.items() if k.split("/", 1)[0] == project and i.get("family") == family
                      and i.get("status") == "READY" and "deprecated" not in i]
            if not images:
                raise ResourceNotFound(f"projects/{project}/global/images/family/{family}")
            return copy.deepcopy(max(images, key=lambda i: (i["creationTimestamp"], i["name"])))

    def resolve_image(self, ref: str) -> tuple[str, dict[str, Any]]:
        """'projects/P/global/images/NAME' or '.../images/family/F' (URL or relative) -> (project, image)."""
        m = re.search(r"projects/([^/]+)/global/images/(?:(family)/)?([^/]+)$", ref)
        if not m:
            raise InvalidValue(f"Invalid value for field 'sourceImage': '{ref}'. The URL is malformed.")
        project, is_family, name = m.group(1), m.group(2), m.group(3)
        image = self.image_from_family(project, name) if is_family else self.get_image(project, name)
        if image.get("status") != "READY":
            raise ResourceNotReady(f"The resource 'projects/{project}/global/images/{image['name']}' is not ready")
        state = image.get("deprecated", {}).get("state")
        if state in ("OBSOLETE", "DELETED"):
            raise InvalidValue(f"The resource 'projects/{project}/global/images/{name}' is {state.lower()}")
        return project, image

    def list_images(self, project: str, flt: str | None = None) -> list[dict[str, Any]]:
        match = compile_filter(flt)
        with self.lock:
            items = [copy.deepcopy(i) for k, i in self.images.items() if k.split("/", 1)[0] == project and match(i)]
        return sorted(items, key=lambda i: i["name"])

    def insert_image(self, project: str, body: dict[str, Any], *, force_create: bool = False,
                     request_id: str | None = None) -> dict[str, Any]:
        """Image from a boot disk folder (instance stopped unless forceCreate) or from another image."""

        def work() -> dict[str, Any]:
            name = body.get("name") or ""
            _check_name(name, "resource.name")
            labels = _check_labels(body.get("labels") or {})
            source_disk, source_image = body.get("sourceDisk"), body.get("sourceImage")
            with self.lock:
                if f"{project}/{name}" in self.images:
                    raise AlreadyExists(f"projects/{project}/global/images/{name}")
                if source_disk:
                    dp, dz, dn = _disk_parts(source_disk, project)
                    src_folder = self.disk_dir(dp, dz, dn)
                    owner = self._disk_owner(dp, dz, dn)
                    if owner is None or not src_folder.exists():
                        raise ResourceNotFound(f"projects/{dp}/zones/{dz}/disks/{dn}")
                    _, inst = owner
                    if inst["status"] not in ("TERMINATED", "STOPPED") and not force_create:
                        raise ResourceInUse(
                            f"The disk resource 'projects/{dp}/zones/{dz}/disks/{dn}' is already being used by "
                            f"'projects/{dp}/zones/{dz}/instances/{inst['name']}'")
                    disk_gb = int(self._boot_disk(inst).get("diskSizeGb", 10))
                    source_link = f"{self.zone_link(dp, dz)}/disks/{dn}"
                    src_image_link = None
                elif source_image:
                    ip, img = self.resolve_image(source_image)
                    src_folder = self.image_dir(ip, img["name"])
                    disk_gb = int(img["diskSizeGb"])
                    source_link, src_image_link = None, img["selfLink"]
                else:
                    raise InvalidValue("Invalid value for field 'resource': exactly one of sourceDisk, sourceImage "
                                       "must be specified (the local cloud supports these two).")
                dest = self.image_dir(project, name)
                if dest.exists():
                    shutil.rmtree(dest)
                dest.mkdir(parents=True)
                image = self._image_resource(project, name, family=body.get("family"), disk_gb=disk_gb, folder=dest,
                                             description=body.get("description", ""), labels=labels,
                                             source_disk=source_link, source_image=src_image_link)
                image["status"] = "PENDING"  # while the folder copies, without the lock
                self.images[f"{project}/{name}"] = image
            try:
                shutil.copytree(src_folder, dest, symlinks=True, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("console.log") if source_disk else None)
            except OSError as exc:
                with self.lock:
                    self.images.pop(f"{project}/{name}", None)
                shutil.rmtree(dest, ignore_errors=True)
                raise InvalidValue(f"Could not create image '{name}': {exc}") from None
            with self.lock:
                image.update({"status": "READY", "archiveSizeBytes": str(folder_bytes(dest))})
                return self._operation(project, None, "insert", image["selfLink"], image["id"])

        return self._idempotent(project, request_id, work)

    def _disk_owner(self, project: str, zone: str, disk: str) -> tuple[str, dict[str, Any]] | None:
        for key, inst in self.instances.items():
            for d in inst["disks"]:
                if _disk_parts(d["source"]) == (project, zone, disk):
                    return key, inst
        return None

    def deprecate_image(self, project: str, name: str, body: dict[str, Any],
                        request_id: str | None = None) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            with self.lock:
                image = self.images.get(f"{project}/{name}")
                if image is None:
                    raise ResourceNotFound(f"projects/{project}/global/images/{name}")
                state = body.get("state") or "ACTIVE"
                if state not in ("ACTIVE", "DEPRECATED", "OBSOLETE", "DELETED"):
                    raise InvalidValue(f"Invalid value for field 'deprecationStatusResource.state': '{state}'.")
                if state == "ACTIVE":
                    image.pop("deprecated", None)
                else:
                    image["deprecated"] = {"state": state, **{k: body[k] for k in
                                                               ("replacement", "deprecated", "obsolete", "deleted")
                                                               if body.get(k)}}
                return self._operation(project, None, "deprecate", image["selfLink"], image["id"])

        return self._idempotent(project, request_id, work)

    def set_image_labels(self, project: str, name: str, body: dict[str, Any],
                         request_id: str | None = None) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            with self.lock:
                image = self.images.get(f"{project}/{name}")
                if image is None:
                    raise ResourceNotFound(f"projects/{project}/global/images/{name}")
                if body.get("labelFingerprint") != image["labelFingerprint"]:
                    raise ConditionNotMet("Labels fingerprint either invalid or resource labels have changed")
                image["labels"] = _check_labels(body.get("labels") or {})
                image["labelFingerprint"] = fingerprint(image["labels"])
                return self._operation(project, None, "setLabels", image["selfLink"], image["id"])

        return self._idempotent(project, request_id, work)

    def delete_image(self, project: str, name: str, request_id: str | None = None) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            with self.lock:
                image = self.images.pop(f"{project}/{name}", None)
                if image is None:
                    raise ResourceNotFound(f"projects/{project}/global/images/{name}")
                shutil.rmtree(self.image_dir(project, name), ignore_errors=True)
                return self._operation(project, None, "delete", image["selfLink"], image["id"])

        return self._idempotent(project, request_id, work)

    # ------------------------------------------------------------------ instances: reads

    def _instance(self, project: str, zone: str, name: str) -> tuple[str, dict[str, Any]]:
        key = f"{project}/{zone}/{name}"
        inst = self.instances.get(key)
        if inst is None:
            self.check_zone(project, zone)
            raise ResourceNotFound(f"projects/{project}/zones/{zone}/instances/{name}")
        return key, inst

    def get_instance(self, project: str, zone: str, name: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._instance(project, zone, name)[1])

    def list_instances(self, project: str, zone: str | None, flt: str | None = None) -> list[dict[str, Any]]:
        """Instances of a zone (or, with zone None, of every zone) that match the filter, by name."""
        if zone:
            self.check_zone(project, zone)
        match = compile_filter(flt)
        with self.lock:
            items = [copy.deepcopy(i) for k, i in self.instances.items()
                     if k.split("/")[0] == project and (zone is None or k.split("/")[1] == zone) and match(i)]
        return sorted(items, key=lambda i: (i["zone"], i["name"]))

    def serial_port_output(self, project: str, zone: str, name: str, start: int = 0) -> dict[str, Any]:
        """The VM console (boot lines + startup script stdout/stderr); GCE keeps the last 1 MiB."""
        with self.lock:
            _, inst = self._instance(project, zone, name)
            path = vms.console_path(self.disk_dir_of(inst))
        data = path.read_bytes() if path.exists() else b""
        size = len(data)
        start = max(start, size - (1 << 20), 0) if start >= 0 else max(size + start, 0)
        start = min(start, size)
        return {"kind": "compute#serialPortOutput", "contents": data[start:].decode("utf-8", "replace"),
                "start": str(start), "next": str(size),
                "selfLink": f"{self.instance_link(project, zone, name)}/serialPort"}

    # ------------------------------------------------------------------ instances: insert

    def insert_instance(self, project: str, zone: str, body: dict[str, Any],
                        request_id: str | None = None) -> dict[str, Any]:
        """Validate everything, then create the boot disk from the image and boot the VM.

        Quota exhaustion is reported in a failed operation (as GCE does); the other errors are HTTP errors.
        """

        def work() -> dict[str, Any]:
            self.check_zone(project, zone)
            name = body.get("name") or ""
            _check_name(name, "resource.name")
            mt_ref = body.get("machineType") or ""
            mt_name = last_segment(mt_ref, "machineTypes")
            shape = parse_machine_type(mt_name)
            if shape is None:
                raise InvalidValue(f"Invalid value for field 'resource.machineType': '{mt_ref}'. Machine type with "
                                   f"name '{mt_name}' does not exist in zone '{zone}'.")
            disks = body.get("disks") or []
            boot = next((d for d in disks if d.get("boot")), disks[0] if disks else None)
            if boot is None:
                raise InvalidValue("Invalid value for field 'resource.disks': ''. Boot disk must be specified.")
            params = boot.get("initializeParams") or {}
            if boot.get("source") or not params.get("sourceImage"):
                raise InvalidValue("Invalid value for field 'resource.disks[0].initializeParams.sourceImage': ''. "
                                   "The local cloud creates boot disks from images only.")
            image_project, image = self.resolve_image(params["sourceImage"])
            disk_gb = int(params.get("diskSizeGb") or image["diskSizeGb"])
            if disk_gb < int(image["diskSizeGb"]):
                raise InvalidValue(f"Invalid value for field 'resource.disks[0].initializeParams.diskSizeGb': "
                                   f"'{disk_gb}'. Requested disk size cannot be smaller than the image size "
                                   f"({image['diskSizeGb']} GB)")
            labels = _check_labels(body.get("labels") or {})
            scheduling = _scheduling(body.get("scheduling") or {})
            disk_name = params.get("diskName") or name
            region = region_of(zone)
            with self.lock:
                key = f"{project}/{zone}/{name}"
                if key in self.instances:
                    raise AlreadyExists(f"projects/{project}/zones/{zone}/instances/{name}")
                link = self.instance_link(project, zone, name)
                try:
                    usage = self.quota_usage(project, region)
                    for metric in ["CPUS"] + ([shape["metric"]] if shape["metric"] else []):
                        limit = self.quota_limit(region, metric)
                        if usage.get(metric, 0.0) + shape["guestCpus"] > limit:
                            raise QuotaExceeded(metric, limit, region)
                    if self._disk_owner(project, zone, disk_name):
                        raise AlreadyExists(f"projects/{project}/zones/{zone}/disks/{disk_name}")
                except QuotaExceeded as exc:
                    return self._operation(project, zone, "insert", link, new_id(), error=exc)
                t = now_rfc3339()
                items = [{"key": i["key"], "value": i.get("value", "")} for i in
                         (body.get("metadata") or {}).get("items", [])]
                nics = copy.deepcopy(body.get("networkInterfaces") or [{}])
                for n, nic in enumerate(nics):
                    nic.setdefault("network", f"{GOOGLE}/projects/{project}/global/networks/default")
                    nic.update({"kind": "compute#networkInterface", "name": f"nic{n}", "networkIP": "127.0.0.1",
                                "fingerprint": fingerprint(n)})
                    for ac in nic.get("accessConfigs", []):
                        ac.update({"kind": "compute#accessConfig", "natIP": "127.0.0.1"})
                        ac.setdefault("type", "ONE_TO_ONE_NAT")
                        ac.setdefault("name", "External NAT")
                inst = {
                    "kind": "compute#instance", "id": new_id(), "creationTimestamp": t, "name": name,
                    "description": body.get("description", ""), "tags": body.get("tags") or {"fingerprint": ""},
                    "machineType": f"{self.zone_link(project, zone)}/machineTypes/{mt_name}",
                    "status": "PROVISIONING",
                    "zone": self.zone_link(project, zone), "canIpForward": False, "networkInterfaces": nics,
                    "disks": [{"kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": "READ_WRITE",
                               "source": f"{self.zone_link(project, zone)}/disks/{disk_name}",
                               "deviceName": boot.get("deviceName") or disk_name, "index": 0, "boot": True,
                               "autoDelete": boot.get("autoDelete", True) is not False, "interface": "SCSI",
                               "diskSizeGb": str(disk_gb), "architecture": "X86_64",
                               "licenses": [], "guestOsFeatures": []}],
                    "metadata": {"kind": "compute#metadata", "fingerprint": fingerprint(items), "items": items},
                    "serviceAccounts": body.get("serviceAccounts") or [],
                    "selfLink": link, "scheduling": scheduling, "cpuPlatform": "Intel Cascade Lake",
                    "labels": labels, "labelFingerprint": fingerprint(labels), "startRestricted": False,
                    "deletionProtection": bool(body.get("deletionProtection", False)),
                    "fingerprint": fingerprint([name, t]), "lastStartTimestamp": t,
                }
                if not items:
                    del inst["metadata"]["items"]
                self.instances[key] = inst
                self.local[key] = {"image": image["selfLink"]}
            # the copy runs without the lock (images can be large); PROVISIONING holds the name and the quota
            disk = self.disk_dir(project, zone, disk_name)
            try:
                if disk.exists():
                    shutil.rmtree(disk)
                disk.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(self.image_dir(image_project, image["name"]), disk, symlinks=True)
            except OSError as exc:
                with self.lock:
                    if self.instances.get(key) is inst:
                        del self.instances[key]
                        self.local.pop(key, None)
                shutil.rmtree(disk, ignore_errors=True)
                raise InvalidValue(f"Could not create the boot disk of '{name}' from the image: {exc}") from None
            with self.lock:
                if self.instances.get(key) is not inst or inst["status"] != "PROVISIONING":
                    if self.instances.get(key) is not inst:
                        shutil.rmtree(disk, ignore_errors=True)
                    raise ResourceNotFound(f"projects/{project}/zones/{zone}/instances/{name}")  # deleted meanwhile
                inst["status"] = "RUNNING"
                self._boot(key)
                self._wake.notify_all()
                return self._operation(project, zone, "insert", link, inst["id"])

        return self._idempotent(project, request_id, work)

    # ------------------------------------------------------------------ instances: power

    def _boot(self, key: str) -> None:
        """Power on (lock held): metadata server, uptime record, startup script as a process tree."""
        inst, local = self.instances[key], self.local[key]
        disk = self.disk_dir_of(inst)
        vms.prepare_disk(disk)
        t = time.time()
        local.update({"last_start": t, "preempted": False, "expiring": False, "script_done": False, "exit_code": None, "pid": None,
                      "create_time": None})
        project, zone, name = key.split("/")
        rec = self.usage.setdefault(inst["id"], {"project": project, "zone": zone, "name": name, "intervals": []})
        rec.update({"machineType": last_segment(inst["machineType"], "machineTypes"), "live": True})
        rec["intervals"].append([t, None])
        vms.console_append(disk, f"localcloud: booting {name} ({now_rfc3339(t)})\n")
        md = self._start_metadata(key, 0)
        script = _metadata_value(inst, "startup-script")
        if script is None:
            return
        env = vms.vm_environment(disk, md.host, inst["id"], self.vm_env)
        popen = vms.launch(disk, script, env)
        try:
            ctime = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            ctime = t
        local.update({"pid": popen.pid, "create_time": ctime})
        self._runtime[key]["popen"] = popen
        vms.watch(popen, popen.pid, ctime, self._exit_callback(key, popen.pid))

    def _start_metadata(self, key: str, port: int) -> MetadataServer:
        rt = self._runtime.setdefault(key, {})
        if rt.get("metadata") is None:
            rt["metadata"] = MetadataServer(lambda: self.metadata_view(key), self.faults, port=port).start()
            self.local[key]["metadata_port"] = rt["metadata"].port
        return rt["metadata"]

    def _exit_callback(self, key: str, pid: int) -> Callable[[int | None], None]:
        def on_exit(code: int | None) -> None:
            with self.lock:
                local, inst = self.local.get(key), self.instances.get(key)
                if not local or not inst or local.get("pid") != pid or local.get("ending") or self._stopping:
                    return
                local.update({"script_done": True, "exit_code": code})
                vms.console_append(self.disk_dir_of(inst), f"localcloud: startup-script exit status {code}\n")
                self._save()

        return on_exit

    def _power_off(self, key: str, grace: float = STOP_GRACE) -> bool:
        """End the VM's process tree and metadata server. False if someone else is already ending it.

        The lock is released while processes end: the caller may be a request made by this very VM.
        """
        with self.lock:
            inst, local = self.instances.get(key), self.local.get(key)
            if inst is None or local is None or local.get("ending"):
                return False
            local["ending"] = True
            if inst["status"] != "TERMINATED":
                inst["status"] = "STOPPING"
            pid, ctime, vm_id = local.get("pid"), local.get("create_time"), inst["id"]
            rt = self._runtime.pop(key, {})
        vms.end_tree(pid, ctime, vm_id, grace=grace)
        if rt.get("metadata") is not None:
            rt["metadata"].stop()
        with self.lock:
            local["pid"] = None
            self._close_usage(vm_id, time.time())
        return True

    def _close_usage(self, instance_id: str, t: float) -> None:
        rec = self.usage.get(instance_id)
        if rec:
            rec["live"] = False
            if rec["intervals"] and rec["intervals"][-1][1] is None:
                rec["intervals"][-1][1] = max(t, rec["intervals"][-1][0])

    def _finish_delete(self, key: str) -> str:
        """Remove a powered-off instance and its auto-delete disks; returns its self link."""
        with self.lock:
            inst = self.instances.pop(key)
            self.local.pop(key, None)
            for d in inst["disks"]:
                if d.get("autoDelete"):
                    shutil.rmtree(self.disk_dir(*_disk_parts(d["source"])), ignore_errors=True)
            return inst["selfLink"]

    def _finish_stop(self, key: str) -> None:
        with self.lock:
            inst, local = self.instances[key], self.local[key]
            inst["status"] = "TERMINATED"
            inst["lastStopTimestamp"] = now_rfc3339()
            local.pop("ending", None)

    def delete_instance(self, project: str, zone: str, name: str, request_id: str | None = None) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            with self.lock:
                key, inst = self._instance(project, zone, name)
                if inst.get("deletionProtection"):
                    raise InvalidValue("Invalid resource usage: 'Resource cannot be deleted if it's protected "
                                       "against deletion.'.")
                started = time.time()
                iid = inst["id"]
            if not self._power_off(key):
                # already being ended (by another delete, stop, preemption): wait for it, then finish
                self._wait_not_ending(key)
                with self.lock:
                    if key not in self.instances:
                        return self._operation(project, zone, "delete", self.instance_link(project, zone, name), iid,
                                               started=started)
                return work()
            link = self._finish_delete(key)
            with self.lock:
                return self._operation(project, zone, "delete", link, iid, started=started)

        return self._idempotent(project, request_id, work)

    def _wait_not_ending(self, key: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                local = self.local.get(key)
                if local is None or not local.get("ending"):
                    return
            time.sleep(0.05)

    def stop_instance(self, project: str, zone: str, name: str, request_id: str | None = None) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            with self.lock:
                key, inst = self._instance(project, zone, name)
                started = time.time()
                if inst["status"] == "TERMINATED":
                    return self._operation(project, zone, "stop", inst["selfLink"], inst["id"], started=started)
            if not self._power_off(key):
                self._wait_not_ending(key)
            else:
                self._finish_stop(key)
            with self.lock:
                _, inst = self._instance(project, zone, name)
                return self._operation(project, zone, "stop", inst["selfLink"], inst["id"], started=started)

        return self._idempotent(project, request_id, work)

    def start_instance(self, project: str, zone: str, name: str, request_id: str | None = None) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            with self.lock:
                key, inst = self._instance(project, zone, name)
                if inst["status"] == "STOPPING":
                    raise ResourceNotReady(f"The resource 'projects/{project}/zones/{zone}/instances/{name}' is not "
                                           "ready")
                if inst["status"] == "TERMINATED":
                    region = region_of(zone)
                    shape = parse_machine_type(last_segment(inst["machineType"], "machineTypes")) or {}
                    usage = self.quota_usage(project, region)
                    for metric in ["CPUS"] + ([shape["metric"]] if shape.get("metric") else []):
                        limit = self.quota_limit(region, metric)
                        if usage.get(metric, 0.0) + shape.get("guestCpus", 0) > limit:
                            return self._operation(project, zone, "start", inst["selfLink"], inst["id"],
                                                   error=QuotaExceeded(metric, limit, region))
                    inst["status"] = "RUNNING"
                    inst["lastStartTimestamp"] = now_rfc3339()
                    self._boot(key)
                    self._wake.notify_all()
                return self._operation(project, zone, "start", inst["selfLink"], inst["id"])

        return self._idempotent(project, request_id, work)

    # ------------------------------------------------------------------ instances: metadata and labels

    def set_metadata(self, project: str, zone: str, name: str, body: dict[str, Any],
                     request_id: str | None = None) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            with self.lock:
                _, inst = self._instance(project, zone, name)
                if body.get("fingerprint") != inst["metadata"]["fingerprint"]:
                    raise ConditionNotMet("Supplied fingerprint does not match current metadata fingerprint.")
                items = [{"key": i["key"], "value": i.get("value", "")} for i in body.get("items") or []]
                keys = [i["key"] for i in items]
                if len(set(keys)) != len(keys):
                    raise InvalidValue("Invalid value for field 'metadata.items': duplicate keys.")
                inst["metadata"] = {"kind": "compute#metadata", "fingerprint": fingerprint(items)}
                if items:
                    inst["metadata"]["items"] = items
                return self._operation(project, zone, "setMetadata", inst["selfLink"], inst["id"])

        return self._idempotent(project, request_id, work)

    def set_labels(self, project: str, zone: str, name: str, body: dict[str, Any],
                   request_id: str | None = None) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            with self.lock:
                _, inst = self._instance(project, zone, name)
                if body.get("labelFingerprint") != inst["labelFingerprint"]:
                    raise ConditionNotMet("Labels fingerprint either invalid or resource labels have changed")
                inst["labels"] = _check_labels(body.get("labels") or {})
                inst["labelFingerprint"] = fingerprint(inst["labels"])
                return self._operation(project, zone, "setLabels", inst["selfLink"], inst["id"])

        return self._idempotent(project, request_id, work)

    def metadata_view(self, key: str) -> dict[str, Any] | None:
        """What the VM's metadata server shows, read live."""
        with self.lock:
            inst, local = self.instances.get(key), self.local.get(key)
            if inst is None or local is None:
                return None
            project, zone, name = key.split("/")
            accounts = inst.get("serviceAccounts") or []
            return {"project": project, "numeric_project": numeric_project(project), "zone": zone, "name": name,
                    "id": inst["id"], "machine_type": last_segment(inst["machineType"], "machineTypes"),
                    "attributes": {i["key"]: i.get("value", "") for i in inst["metadata"].get("items", [])},
                    "preempted": bool(local.get("preempted")),
                    "email": accounts[0]["email"] if accounts and accounts[0].get("email") != "default"
                    else self.default_sa(project),
                    "scopes": accounts[0].get("scopes") if accounts else None}

    # ------------------------------------------------------------------ system events

    def preempt(self, project: str, zone: str, name: str) -> dict[str, Any]:
        """Spot preemption: preempted=TRUE, SIGTERM (30 s scaled grace), then the termination action."""
        with self.lock:
            key, inst = self._instance(project, zone, name)
            sched = inst["scheduling"]
            if not sched.get("preemptible"):
                raise InvalidValue(f"Instance '{name}' is not a Spot or preemptible VM.")
            if inst["status"] != "RUNNING":
                raise ResourceNotReady(f"The resource 'projects/{project}/zones/{zone}/instances/{name}' is not "
                                       "running")
            self.local[key]["preempted"] = True
        return self._system_terminate(key, "compute.instances.preempted", sched.get("instanceTerminationAction", "STOP"),
                                      grace=max(1.0, 30.0 / self.time_scale))

    def _system_terminate(self, key: str, op_type: str, action: str, grace: float = STOP_GRACE) -> dict[str, Any]:
        project, zone, _ = key.split("/")
        with self.lock:
            inst = self.instances[key]
            started, iid, link = time.time(), inst["id"], inst["selfLink"]
            vms.console_append(self.disk_dir_of(inst), f"localcloud: {op_type}, action {action}\n")
        if not self._power_off(key, grace=grace):
            raise ResourceNotReady(f"The resource '{link}' is already stopping")
        if action == "DELETE":
            self._finish_delete(key)
        else:
            self._finish_stop(key)
        with self.lock:
            op = self._operation(project, zone, op_type, link, iid, user="system", started=started)
            self._save()
            return copy.deepcopy(op)

    def set_time_scale(self, scale: float) -> None:
        if scale <= 0:
            raise InvalidValue("time_scale must be > 0")
        with self.lock:
            self.time_scale = float(scale)
            self._wake.notify_all()

    def set_metrics_enabled(self, enabled: bool) -> None:
        with self.lock:
            self.metrics_enabled = bool(enabled)
            self._save()

    def _deadlines(self) -> list[tuple[float, str]]:
        out = []
        for key, inst in self.instances.items():
            sched, local = inst.get("scheduling", {}), self.local.get(key, {})
            mrd = sched.get("maxRunDuration")
            if inst["status"] == "RUNNING" and mrd and not local.get("ending") and not local.get("expiring"):
                out.append((local.get("last_start", 0.0) + int(mrd["seconds"]) / self.time_scale, key))
        return sorted(out)

    def _schedule_loop(self) -> None:
        """Enforce maxRunDuration (deadline = lastStart + seconds / time_scale) and keep a heartbeat."""
        last_beat = last_reap = 0.0
        while True:
            with self.lock:
                if self._stopping:
                    return
                t = time.time()
                live = {i["id"] for k, i in self.instances.items()
                        if i["status"] in ACTIVE and not self.local.get(k, {}).get("ending")}
                due = [key for deadline, key in self._deadlines() if deadline <= t]
                for key in due:
                    self.local[key]["expiring"] = True
                pending = [deadline for deadline, _ in self._deadlines() if deadline > t]
                if t - last_beat > 30 and any(i["status"] == "RUNNING" for i in self.instances.values()):
                    self.heartbeat, last_beat = t, t
                    self._save()
            if t - last_reap > REAP_S:
                last_reap = t
                vms.reap_strays(self.root / "disks", live)
            for key in due:
                inst = self.instances.get(key)
                if inst is None:
                    continue
                action = inst["scheduling"].get("instanceTerminationAction", "STOP")
                threading.Thread(target=self._expire, args=(key, action), daemon=True).start()
            with self.lock:
                if self._stopping:
                    return
                wait = min([d - time.time() for d in pending] + [5.0])
                if not due:
                    self._wake.wait(timeout=max(wait, 0.01))
                else:
                    self._wake.wait(timeout=0.05)

    def _expire(self, key: str, action: str) -> None:
        try:
            self._system_terminate(key, "compute.instances.maxRunDurationExceeded", action)
        except (ComputeError, KeyError):
            pass  # deleted or stopped meanwhile

    # ------------------------------------------------------------------ admin / daemon views

    def vm_info(self, key: str) -> dict[str, Any]:
        with self.lock:
            inst, local = self.instances[key], self.local.get(key, {})
            project, zone, name = key.split("/")
            disk = self.disk_dir_of(inst)
            md = self._runtime.get(key, {}).get("metadata")
            host = md.host if md is not None else None
            pid, ctime, iid = local.get("pid"), local.get("create_time"), inst["id"]
        members = vms.vm_members(pid, ctime, iid, deep=False) if pid else []
        env = vms.vm_environment(disk, host or "", iid, self.vm_env) if host else {}
        return {"project": project, "zone": zone, "name": name, "id": iid, "status": inst["status"],
                "disk": str(disk), "metadata_host": host, "pids": sorted(p.pid for p in members), "env": env,
                "script_done": bool(local.get("script_done")), "exit_code": local.get("exit_code"),
                "preempted": bool(local.get("preempted"))}

    def vms_info(self) -> list[dict[str, Any]]:
        with self.lock:
            keys = sorted(self.instances)
        return [self.vm_info(k) for k in keys if k in self.instances]

    def vm_processes(self) -> list[tuple[int, float]]:
        """(pid, create_time) of each live VM root process (or its orphans once the root script exited)."""
        out: list[tuple[int, float]] = []
        with self.lock:
            roots = [(loc.get("pid"), loc.get("create_time"), self.instances[k]["id"])
                     for k, loc in self.local.items() if loc.get("pid") and k in self.instances]
        for pid, ctime, iid in roots:
            if vms.process(pid, ctime) is not None:
                out.append((pid, ctime))
                continue
            for proc in vms.vm_members(pid, ctime, iid, deep=False):
                try:
                    out.append((proc.pid, proc.create_time()))
                except psutil.Error:
                    pass
        return out

    def monitored(self) -> list[dict[str, Any]]:
        """Snapshot for the monitoring fake: running instances with their shape, disk and process root."""
        out = []
        with self.lock:
            for key, inst in self.instances.items():
                if inst["status"] != "RUNNING":
                    continue
                project, zone, name = key.split("/")
                local = self.local.get(key, {})
                shape = parse_machine_type(last_segment(inst["machineType"], "machineTypes")) or {}
                out.append({"key": key, "project": project, "zone": zone, "name": name, "id": inst["id"],
                            "guestCpus": shape.get("guestCpus", 1), "memoryMb": shape.get("memoryMb", 1024),
                            "disk": self.disk_dir_of(inst), "diskSizeGb": int(self._boot_disk(inst)["diskSizeGb"]),
                            "pid": local.get("pid"), "create_time": local.get("create_time")})
        return out

    def usage_records(self) -> dict[str, dict[str, Any]]:
        """Per instance id: project, zone, name, machineType and running intervals [[start, end|None]]."""
        with self.lock:
            return copy.deepcopy(self.usage)

    def shutdown(self) -> None:
        """Daemon stop = host power off: end every VM tree and metadata server; statuses stay (see module doc)."""
        with self.lock:
            self._stopping = True
            self._wake.notify_all()
            jobs = []
            for key, local in self.local.items():
                inst = self.instances.get(key)
                if inst is None:
                    continue
                jobs.append((local.get("pid"), local.get("create_time"), inst["id"]))
            runtimes, self._runtime = self._runtime, {}
            self.heartbeat = time.time()
        threads = [threading.Thread(target=vms.end_tree, args=job, daemon=True) for job in jobs]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=10)
        for rt in runtimes.values():
            if rt.get("metadata") is not None:
                rt["metadata"].stop()
        with self.lock:
            self._save()


# ----------------------------------------------------------------------------------------------- helpers


def _disk_parts(source: str, default_project: str | None = None) -> tuple[str, str, str]:
    m = re.search(r"(?:projects/([^/]+)/)?zones/([^/]+)/disks/([^/]+)$", source)
    if not m or not (m.group(1) or default_project):
        raise InvalidValue(f"Invalid value for field 'sourceDisk': '{source}'. The URL is malformed.")
    return m.group(1) or default_project or "", m.group(2), m.group(3)


def _check_name(name: str, field: str) -> None:
    if not NAME_RX.fullmatch(name or ""):
        raise InvalidValue(f"Invalid value for field '{field}': '{name}'. Must be a match of regex "
                           "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?|[1-9][0-9]{0,19})'")


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > 64:
        raise InvalidValue("Invalid value for field 'labels': too many labels (max 64).")
    for k, v in labels.items():
        if not LABEL_KEY_RX.fullmatch(k) or not LABEL_VALUE_RX.fullmatch(v or ""):
            raise InvalidValue(f"Invalid value for field 'labels': '{k}={v}'. Label keys and values may contain "
                               "only lowercase letters, digits, '_' and '-'; keys start with a letter.")
    return dict(labels)


def _metadata_value(inst: dict[str, Any], key: str) -> str | None:
    for item in inst["metadata"].get("items", []):
        if item["key"] == key:
            return item.get("value", "")
    return None


def _scheduling(raw: dict[str, Any]) -> dict[str, Any]:
    """Scheduling as GCE stores it, with the defaults GCE fills in for Spot and standard VMs."""
    model = raw.get("provisioningModel") or ("SPOT" if raw.get("preemptible") else "STANDARD")
    if model not in ("SPOT", "STANDARD"):
        raise InvalidValue(f"Invalid value for field 'resource.scheduling.provisioningModel': '{model}'.")
    spot = model == "SPOT" or bool(raw.get("preemptible"))
    out: dict[str, Any] = {
        "provisioningModel": model, "preemptible": spot,
        "onHostMaintenance": raw.get("onHostMaintenance") or ("TERMINATE" if spot else "MIGRATE"),
        "automaticRestart": False if spot else raw.get("automaticRestart", True),
    }
    action = raw.get("instanceTerminationAction")
    if action and action not in ("STOP", "DELETE"):
        raise InvalidValue(f"Invalid value for field 'resource.scheduling.instanceTerminationAction': '{action}'.")
    mrd = raw.get("maxRunDuration")
    if mrd:
        seconds = int(mrd.get("seconds", 0))
        if not 30 <= seconds <= 120 * 86400:
            raise InvalidValue(f"Invalid value for field 'resource.scheduling.maxRunDuration.seconds': '{seconds}'. "
                               "Must be between 30 seconds and 120 days.")
        if not action:
            raise InvalidValue("Invalid value for field 'resource.scheduling.instanceTerminationAction': ''. "
                               "instanceTerminationAction must be set when maxRunDuration is set.")
        out["maxRunDuration"] = {"seconds": str(seconds)}
    if spot or action:
        out["instanceTerminationAction"] = action or "STOP"
    return out
