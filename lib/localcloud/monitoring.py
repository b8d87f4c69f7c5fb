"""gRPC fake of Cloud Monitoring's MetricService.ListTimeSeries for local VMs (no generated stubs needed).

google-cloud-monitoring has no REST transport, so this speaks gRPC with the library's own message classes.
CPU, memory and disk come from a background sampler (every second) over each VM's process tree and disk
folder; uptime comes from the running intervals the Compute model persists, so usage reports still work
for deleted instances and after restarts (30+ days are kept).

Metric types (resource type gce_instance, labels project_id / zone / instance_id; metric label instance_name;
metadata: user_labels = the instance's labels at boot, system_labels machine_type and name, as Google fills them):
  compute.googleapis.com/instance/cpu/utilization   GAUGE DOUBLE  0..1 of the machine type's vCPUs
  compute.googleapis.com/instance/uptime            DELTA DOUBLE  running seconds per 60 s bucket
  compute.googleapis.com/instance/uptime_total      GAUGE INT64   seconds since the VM last started
  agent.googleapis.com/memory/percent_used          GAUGE DOUBLE  tree RSS vs machine type memory (0..100)
  agent.googleapis.com/disk/percent_used            GAUGE DOUBLE  disk folder bytes vs disk size (0..100)
Aggregation: alignment_period with ALIGN_SUM/MEAN/MAX/MIN/COUNT/DELTA/RATE/NEXT_OLDER per series;
cross-series reducers are ignored.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from concurrent import futures
from typing import Any

import grpc
import psutil
from google.api import metric_pb2
from google.cloud.monitoring_v3.types import (
    Aggregation,
    ListTimeSeriesRequest,
    ListTimeSeriesResponse,
    Point,
    TimeSeries,
)

from lib.localcloud import vms
from lib.localcloud.compute.models import ComputeModel
from lib.localcloud.compute.models.util import folder_bytes
from lib.localcloud.faults import FaultRegistry

CPU = "compute.googleapis.com/instance/cpu/utilization"
UPTIME = "compute.googleapis.com/instance/uptime"
UPTIME_TOTAL = "compute.googleapis.com/instance/uptime_total"
MEMORY = "agent.googleapis.com/memory/percent_used"
DISK = "agent.googleapis.com/disk/percent_used"
SAMPLED = {CPU: 1, MEMORY: 2, DISK: 3}
UPTIME_BUCKET = 60
HISTORY = 6 * 3600
GRPC_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
              403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
              409: grpc.StatusCode.ABORTED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
              500: grpc.StatusCode.INTERNAL, 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}


class Sampler:
    """Samples (t, cpu fraction, memory %, disk %) per running instance id into a bounded history."""

    def __init__(self, model: ComputeModel, period: float = 1.0) -> None:
        self.model = model
        self.period = period
        self.history: dict[str, collections.deque[tuple[float, float, float, float]]] = {}
        self._cpu: dict[str, tuple[float, float]] = {}  # id -> (wall, tree cpu seconds) of the last sample
        self._disk: dict[str, tuple[float, float]] = {}  # id -> (wall, percent): folder walks are costly
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="monitoring-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.sample_all()
            except Exception:
                pass

    def sample_all(self, only: set[str] | None = None) -> None:
        for vm in self.model.monitored():
            if only is None or vm["id"] in only:
                self._sample(vm)

    def _sample(self, vm: dict[str, Any]) -> None:
        t = time.time()
        procs = vms.vm_members(vm["pid"], vm["create_time"], vm["id"], deep=False) if vm["pid"] else []
        cpu_s, rss, first_start = 0.0, 0, t
        for proc in procs:
            try:
                times = proc.cpu_times()
                cpu_s += times.user + times.system
                rss += proc.memory_info().rss
                first_start = min(first_start, proc.create_time())
            except psutil.Error:
                continue
        prev = self._cpu.get(vm["id"])
        if prev is None:
            wall, base = max(t - first_start, 1e-3), 0.0
        else:
            wall, base = max(t - prev[0], 1e-3), prev[1]
        cpu = min(max((cpu_s - base) / wall / max(vm["guestCpus"], 1), 0.0), 1.0)
        self._cpu[vm["id"]] = (t, cpu_s)
        mem = min(100.0 * rss / (vm["memoryMb"] * 1024 * 1024), 100.0)
        disk_prev = self._disk.get(vm["id"])
        if disk_prev is None or t - disk_prev[0] > 10:
            disk_pct = 100.0 * folder_bytes(vm["disk"]) / (vm["diskSizeGb"] * 1024 ** 3)
            self._disk[vm["id"]] = disk_prev = (t, min(disk_pct, 100.0))
        with self._lock:
            hist = self.history.setdefault(vm["id"], collections.deque(maxlen=HISTORY))
            hist.append((t, cpu, mem, disk_prev[1]))

    def points(self, instance_id: str, column: int, start: float, end: float) -> list[tuple[float, float]]:
        with self._lock:
            hist = list(self.history.get(instance_id, ()))
        return [(row[0], row[column]) for row in hist if start <= row[0] <= end]


def _filter_terms(text: str) -> dict[str, str]:
    """`metric.type = "X" AND resource.labels.instance_id = "Y"` -> {"metric.type": "X", ...}."""
    terms = dict(re.findall(r'([\w.]+)\s*=\s*"([^"]*)"', text or ""))
    if "metric.type" not in terms:
        raise ValueError("filter must restrict metric.type")
    return terms


def _ts(seconds: float) -> dict[str, Any]:
    return {"seconds": int(seconds), "nanos": int((seconds % 1) * 1e9)}


def _uptime_points(intervals: list[list[Any]], start: float, end: float, now: float) -> list[tuple[float, float, float]]:
    """(bucket start, bucket end, running seconds) for 60 s buckets overlapping [start, end]."""
    out: dict[float, float] = {}
    for iv_start, iv_end in intervals:
        iv_end = now if iv_end is None else iv_end
        lo, hi = max(iv_start, start), min(iv_end, end)
        if hi <= lo:
            continue
        b = lo - lo % UPTIME_BUCKET
        while b < hi:
            overlap = min(hi, b + UPTIME_BUCKET) - max(lo, b)
            if overlap > 0:
                out[b] = out.get(b, 0.0) + overlap
            b += UPTIME_BUCKET
    return [(b, min(b + UPTIME_BUCKET, now), v) for b, v in sorted(out.items())]


def _align(points: list[tuple[float, float, float]], aggregation: Aggregation, end: float,
           is_int: bool) -> tuple[list[tuple[float, float, float]], bool]:
    """Per-series alignment into periods ending at `end`; returns points and whether values stay integers."""
    period = aggregation.alignment_period.total_seconds() if aggregation.alignment_period else 0
    aligner = Aggregation.Aligner(aggregation.per_series_aligner)
    if not period or aligner == Aggregation.Aligner.ALIGN_NONE:
        return points, is_int
    buckets: dict[int, list[float]] = {}
    for _, p_end, value in points:
        k = int((end - p_end) // period)
        buckets.setdefault(k, []).append(value)
    A = Aggregation.Aligner
    out = []
    for k, values in buckets.items():
        b_end = end - k * period
        if aligner in (A.ALIGN_SUM, A.ALIGN_DELTA):
            v = sum(values)
        elif aligner == A.ALIGN_MAX:
            v = max(values)
        elif aligner == A.ALIGN_MIN:
            v = min(values)
        elif aligner == A.ALIGN_COUNT:
            v = float(len(values))
        elif aligner == A.ALIGN_RATE:
            v, is_int = sum(values) / period, False
        elif aligner == A.ALIGN_NEXT_OLDER:
            v = values[-1]
        else:  # ALIGN_MEAN and anything else
            v, is_int = sum(values) / len(values), False
        out.append((b_end - period, b_end, v))
    return sorted(out), is_int or aligner == A.ALIGN_COUNT


class MonitoringFake:
    """ListTimeSeries over the Compute model and a Sampler."""

    def __init__(self, model: ComputeModel, faults: FaultRegistry | None = None, sampler: Sampler | None = None):
        self.model = model
        self.faults = faults
        self.sampler = sampler or Sampler(model)

    def list_time_series(self, request: ListTimeSeriesRequest, context: grpc.ServicerContext) -> ListTimeSeriesResponse:
        self._fault(context)
        try:
            terms = _filter_terms(request.filter)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        metric_type = terms["metric.type"]
        if not self.model.metrics_enabled:
            return ListTimeSeriesResponse()
        now = time.time()
        end = request.interval.end_time.timestamp() if request.interval.end_time else now
        start = request.interval.start_time.timestamp() if request.interval.start_time else end - 60
        project = request.name.split("/")[1] if request.name.startswith("projects/") else ""
        series = []
        for inst in self._instances(project, terms):
            points = self._points(metric_type, inst, start, end, now)
            if points is None:
                continue
            kind, is_int, raw = points
            aligned, is_int = _align(raw, request.aggregation, end, is_int)
            if not aligned:
                continue
            ts = TimeSeries(
                metric={"type": metric_type, "labels": {"instance_name": inst["name"]}},
                resource={"type": "gce_instance", "labels": {"project_id": inst["project"], "zone": inst["zone"],
                                                             "instance_id": inst["id"]}},
                metadata={"user_labels": dict(inst.get("labels") or {}),
                          "system_labels": {"machine_type": inst.get("machineType", ""), "name": inst["name"]}},
                metric_kind=kind, value_type=metric_pb2.MetricDescriptor.ValueType.INT64 if is_int
                else metric_pb2.MetricDescriptor.ValueType.DOUBLE,
            )
            if request.view != ListTimeSeriesRequest.TimeSeriesView.HEADERS:
                ts.points = [Point(interval={"start_time": _ts(p_start if kind == metric_pb2.MetricDescriptor.DELTA
                                                               else p_end), "end_time": _ts(p_end)},
                                   value={"int64_value": int(v)} if is_int else {"double_value": float(v)})
                             for p_start, p_end, v in reversed(aligned)]  # newest first, as the API answers
            series.append(ts)
        return ListTimeSeriesResponse(time_series=series)

    def _instances(self, project: str, terms: dict[str, str]) -> list[dict[str, Any]]:
        """Every instance with a usage record (deleted ones too), restricted by the filter's label terms."""
        out = []
        for iid, rec in self.model.usage_records().items():
            labels = {"resource.labels.instance_id": iid, "resource.labels.project_id": rec["project"],
                      "resource.labels.zone": rec["zone"], "metric.labels.instance_name": rec["name"],
                      "resource.type": "gce_instance"}
            if project and rec["project"] != project and not project.isdigit():
                continue
            if all(labels.get(k, v) == v for k, v in terms.items() if k != "metric.type"):
                out.append({"id": iid, **rec})
        return out

    def _points(self, metric_type: str, inst: dict[str, Any], start: float, end: float,
                now: float) -> tuple[int, bool, list[tuple[float, float, float]]] | None:
        gauge, delta = metric_pb2.MetricDescriptor.GAUGE, metric_pb2.MetricDescriptor.DELTA
        if metric_type == UPTIME:
            return delta, False, _uptime_points(inst["intervals"], start, end, now)
        if metric_type == UPTIME_TOTAL:
            pts = []
            for iv_start, iv_end in inst["intervals"]:
                stop = min(end, now if iv_end is None else iv_end)
                t = max(start, iv_start)
                while t <= stop:
                    pts.append((t, t, float(int(t - iv_start))))
                    t += UPTIME_BUCKET
                if iv_end is None and stop > iv_start and (not pts or pts[-1][1] < stop):
                    pts.append((stop, stop, float(int(stop - iv_start))))
            return gauge, True, pts
        column = SAMPLED.get(metric_type)
        if column is None:
            return None
        if inst.get("live") and not self.sampler.points(inst["id"], column, now - 5, now) and end >= now - 5:
            self.sampler.sample_all(only={inst["id"]})  # first query right after boot: sample now
        return gauge, False, [(t, t, v) for t, v in self.sampler.points(inst["id"], column, start, end)]

    def _fault(self, context: grpc.ServicerContext) -> None:
        if self.faults is None:
            return
        fault = self.faults.take("monitoring", "POST", "/google.monitoring.v3.MetricService/ListTimeSeries")
        if fault is None:
            return
        if fault.kind.startswith("http:"):
            code = int(fault.kind[5:])
            context.abort(GRPC_CODES.get(code, grpc.StatusCode.UNKNOWN), f"injected fault: HTTP {code}")
        if fault.kind == "reset":
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected fault: connection reset")
        if fault.kind == "stall":
            time.sleep(fault.seconds)


def serve_monitoring(model: ComputeModel, faults: FaultRegistry | None = None, host: str = "127.0.0.1",
                     port: int = 0) -> tuple[grpc.Server, int]:
    """Start the gRPC MetricService fake (and its sampler); returns the server and its port.

    server.stop() also stops the sampler.
    """
    sampler = Sampler(model).start()
    fake = MonitoringFake(model, faults, sampler)
    handler = grpc.method_handlers_generic_handler("google.monitoring.v3.MetricService", {
        "ListTimeSeries": grpc.unary_unary_rpc_method_handler(
            fake.list_time_series, request_deserializer=ListTimeSeriesRequest.deserialize,
            response_serializer=ListTimeSeriesResponse.serialize),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="monitoring"))
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    grpc_stop = server.stop

    def stop(grace: float | None) -> threading.Event:
        sampler.stop()
        return grpc_stop(grace)

    server.stop = stop  # type: ignore[method-assign]
    server.sampler = sampler  # type: ignore[attr-defined]
    return server, bound
