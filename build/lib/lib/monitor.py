"""CPU, memory and disk of a running VM: the Monitoring API first, the VM's /proc over ssh when it has no points.

Monitoring needs no ssh and costs nothing, but a new VM has no points for a few minutes and memory/disk
need the Ops Agent; so each figure missing from Monitoring is read over ssh (`/proc/stat` twice,
`/proc/meminfo`, `df`), and every sample says where its figures came from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lib import clients, compute, retry, ssh
from lib.config import Config
from lib.errors import OpsError, Refused

METRICS = {
    "cpu_percent": ("compute.googleapis.com/instance/cpu/utilization", 100.0),  # fraction of the vCPUs
    "memory_percent": ("agent.googleapis.com/memory/percent_used", 1.0),
    "disk_percent": ("agent.googleapis.com/disk/percent_used", 1.0),
}
WINDOW_S = 300


def from_monitoring(cfg: Config, vm: dict[str, Any], *, window_s: int = WINDOW_S,
                    now: float | None = None) -> dict[str, float]:
    """The newest point of each metric in the last window_s seconds (figures without points are left out)."""
    from google.cloud import monitoring_v3

    cfg = clients.resolve(cfg)
    client = clients.monitoring(cfg)
    end = int(now if now is not None else time.time()) + 1
    interval = monitoring_v3.TimeInterval(end_time={"seconds": end}, start_time={"seconds": end - window_s})
    out: dict[str, float] = {}
    for key, (metric, scale) in METRICS.items():
        request = {"name": f"projects/{cfg.project}",
                   "filter": f'metric.type = "{metric}" AND resource.labels.instance_id = "{vm["id"]}"',
                   "interval": interval,
                   "view": monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL}

        def fetch(request: dict[str, Any] = request) -> list[Any]:
            return list(client.list_time_series(request=request, retry=None))

        newest = None
        for series in retry.call(fetch):
            for point in series.points:
                t = point.interval.end_time.timestamp()
                if newest is None or t > newest[0]:
                    newest = (t, point.value.double_value)
        if newest is not None:
            out[key] = round(newest[1] * scale, 1)
    return out


PROC_COMMAND = ("head -n1 /proc/stat; sleep {sample}; head -n1 /proc/stat; "
                "grep -E '^(MemTotal|MemAvailable):' /proc/meminfo; "
                "df -P \"${{OPS_HPC_VM_ROOT:-/}}\" | tail -n1")


def parse_proc(text: str) -> dict[str, float]:
    """CPU % between two /proc/stat 'cpu' lines, memory % used from meminfo, disk % from `df -P`."""
    cpu = [list(map(int, line.split()[1:])) for line in text.splitlines() if line.startswith("cpu ")]
    out: dict[str, float] = {}
    if len(cpu) >= 2:
        a, b = cpu[0], cpu[1]
        idle = (b[3] + (b[4] if len(b) > 4 else 0)) - (a[3] + (a[4] if len(a) > 4 else 0))
        total = sum(b) - sum(a)
        out["cpu_percent"] = round(100.0 * (total - idle) / total, 1) if total > 0 else 0.0
    mem = {}
    for line in text.splitlines():
        if line.startswith(("MemTotal:", "MemAvailable:")):
            key, value = line.split(":", 1)
            mem[key] = int(value.split()[0])
    if mem.get("MemTotal"):
        out["memory_percent"] = round(100.0 * (mem["MemTotal"] - mem.get("MemAvailable", 0)) / mem["MemTotal"], 1)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[4].endswith("%") and fields[4][:-1].isdigit():
            out["disk_percent"] = float(fields[4][:-1])
    return out


def from_ssh(cfg: Config, name: str, *, sample_s: float = 1.0) -> dict[str, float]:
    code, text = ssh.capture(cfg, name, PROC_COMMAND.format(sample=sample_s))
    if code:
        raise OpsError(f"could not read /proc on {name} over ssh (exit {code}): {text.strip()[-200:]}")
    return parse_proc(text)


def sample(cfg: Config, name: str, *, window_s: int = WINDOW_S, sample_s: float = 1.0) -> dict[str, Any]:
    """One reading: {vm, time, cpu_percent, memory_percent, disk_percent, source: {figure: monitoring|ssh}}."""
    cfg = clients.resolve(cfg)
    vm = compute.get_vm(cfg, name)
    if vm is None:
        raise Refused(f"VM {name} does not exist in {cfg.zone}")
    figures = from_monitoring(cfg, vm, window_s=window_s)
    source = dict.fromkeys(figures, "monitoring")
    missing = [k for k in METRICS if k not in figures]
    if missing and vm["status"] == "RUNNING":
        fallback = from_ssh(cfg, name, sample_s=sample_s)
        for key in missing:
            if key in fallback:
                figures[key] = fallback[key]
                source[key] = "ssh"
    return {"vm": name, "status": vm["status"], "time": time.time(), **{k: figures.get(k) for k in METRICS},
            "source": source}


def format_sample(s: dict[str, Any]) -> str:
    def fig(key: str) -> str:
        value = s.get(key)
        return "n/a" if value is None else f"{value:5.1f}%"

    sources = sorted(set(s["source"].values())) or ["none"]
    return (f"{time.strftime('%H:%M:%S', time.localtime(s['time']))} {s['vm']}  CPU {fig('cpu_percent')}  "
            f"memory {fig('memory_percent')}  disk {fig('disk_percent')}  ({'+'.join(sources)})")


def follow(cfg: Config, name: str, *, on_metrics: Callable[[dict[str, Any]], None], interval: float = 10.0,
           count: int | None = None, sleep: Callable[[float], None] = time.sleep, sample_s: float = 1.0) -> int:
    """Sample every `interval` s until the VM is gone (or `count` samples); returns how many were taken."""
    taken = 0
    while count is None or taken < count:
        try:
            s = sample(cfg, name, sample_s=sample_s)
        except OpsError:
            if taken and compute.get_vm(cfg, name) is None:
                return taken  # the VM finished and was deleted: following is over
            raise
        on_metrics(s)
        taken += 1
        if count is not None and taken >= count:
            break
        sleep(interval)
    return taken
