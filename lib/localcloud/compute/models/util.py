"""Pure helpers of the Compute emulator: names, timestamps, fingerprints, links, machine-type shapes."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any

from lib.localcloud import DEFAULT_OP_DELAY, REALISTIC_OP_DELAY  # noqa: F401 - re-exported
from lib.localcloud.compute.exceptions import (
    InvalidValue,
)

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
# The regions and zones lists show (get accepts any well-formed zone); families only some zones offer.
REGIONS = {"us-central1": "abcf", "us-east1": "bcd", "europe-west4": "abc", "asia-southeast1": "abc"}
FAMILY_ZONES = {"h3": "abc", "c3d": "abcd", "c4": "abcd"}
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


def same_fingerprint(given: Any, current: str) -> bool:
    """Fingerprints compare as the bytes they encode: gcloud sends URL-safe base64, the Python clients standard."""
    if not isinstance(given, str) or not given:
        return False
    try:
        return _b64bytes(given) == _b64bytes(current)
    except ValueError:
        return False


def _b64bytes(text: str) -> bytes:
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


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


def disk_parts(source: str, default_project: str | None = None) -> tuple[str, str, str]:
    m = re.search(r"(?:projects/([^/]+)/)?zones/([^/]+)/disks/([^/]+)$", source)
    if not m or not (m.group(1) or default_project):
        raise InvalidValue(f"Invalid value for field 'sourceDisk': '{source}'. The URL is malformed.")
    return m.group(1) or default_project or "", m.group(2), m.group(3)


def check_name(name: str, field: str) -> None:
    if not NAME_RX.fullmatch(name or ""):
        raise InvalidValue(f"Invalid value for field '{field}': '{name}'. Must be a match of regex "
                           "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?|[1-9][0-9]{0,19})'")


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > 64:
        raise InvalidValue("Invalid value for field 'labels': too many labels (max 64).")
    for k, v in labels.items():
        if not LABEL_KEY_RX.fullmatch(k) or not LABEL_VALUE_RX.fullmatch(v or ""):
            raise InvalidValue(f"Invalid value for field 'labels': '{k}={v}'. Label keys and values may contain "
                               "only lowercase letters, digits, '_' and '-'; keys start with a letter.")
    return dict(labels)


def metadata_value(inst: dict[str, Any], key: str) -> str | None:
    for item in inst["metadata"].get("items", []):
        if item["key"] == key:
            return item.get("value", "")
    return None


def check_op_delay(delay: tuple[float, float] | list[float]) -> tuple[float, float]:
    low, high = (float(x) for x in delay)
    if not 0 <= low <= high:
        raise InvalidValue(f"operation delay must be 0 <= low <= high seconds, not {low}..{high}")
    return low, high


def offered_in(family: str, zone: str) -> bool:
    """Whether the zone offers the machine family (machineTypes.get answers 404 where it does not)."""
    return zone.rsplit("-", 1)[-1] in FAMILY_ZONES.get(family, zone.rsplit("-", 1)[-1])


def predefined_machine_types() -> list[str]:
    """Every predefined shape name (shared-core included), in a stable order."""
    names = list(SHARED_CORE)
    for family, (per_cpu, counts, _) in FAMILIES.items():
        names += [f"{family}-{shape}-{n}" for shape in per_cpu for n in counts
                  if parse_machine_type(f"{family}-{shape}-{n}")]
    return names
