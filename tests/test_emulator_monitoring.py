"""The Monitoring gRPC fake through the real MetricServiceClient: CPU, uptime, memory, disk, faults."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from google.api_core import exceptions as gexc
from google.cloud import monitoring_v3
from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport

from lib.localcloud.compute import ComputeEmulator
from lib.localcloud.faults import FaultRegistry
from lib.localcloud.monitoring import serve_monitoring
from lib.localcloud.vms import VM_MARKER

PROJECT = "test-proj"
ZONE = "us-east1-b"


class Env:
    def __init__(self, root: Path) -> None:
        self.faults = FaultRegistry()
        self.emu = ComputeEmulator(root, faults=self.faults)
        self.server, port = serve_monitoring(self.emu.model, self.faults)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.client = monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=self.channel))

    def series(self, metric: str, extra: str = "", seconds: float = 300, **kw: Any) -> list[Any]:
        now = time.time()
        interval = monitoring_v3.TimeInterval(end_time={"seconds": int(now) + 1},
                                              start_time={"seconds": int(now - seconds)})
        flt = f'metric.type = "{metric}"' + (f" AND {extra}" if extra else "")
        request = monitoring_v3.ListTimeSeriesRequest(
            name=f"projects/{PROJECT}", filter=flt, interval=interval,
            view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL, **kw)
        return list(self.client.list_time_series(request=request, retry=None))

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None)
        self.emu.shutdown()


def vm_body(name: str, script: str) -> dict[str, Any]:
    return {"name": name, "machineType": f"zones/{ZONE}/machineTypes/e2-standard-2",
            "disks": [{"boot": True, "initializeParams": {
                "sourceImage": "projects/cloud-hpc-image-public/global/images/hpc-rocky-linux-8-v20260115"}}],
            "metadata": {"items": [{"key": "startup-script", "value": script}]}}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path / "compute")
    try:
        yield e
    finally:
        e.close()
        left = []
        for proc in psutil.process_iter():
            try:
                env = proc.environ()
                if VM_MARKER in env and env.get("OPS_HPC_VM_ROOT", "").startswith(str(tmp_path)):
                    left.append(proc)
            except psutil.Error:
                pass
        assert not left


def test_cpu_uptime_memory_disk_for_a_running_vm(env: Env) -> None:
    env.emu.model.wait(env.emu.model.insert_instance(PROJECT, ZONE, vm_body("busy", "while :; do :; done\n")))
    env.emu.model.wait(env.emu.model.insert_instance(PROJECT, ZONE, vm_body("idle", "sleep 300\n")))
    time.sleep(1.3)  # let the sampler take a couple of samples
    cpu = env.series("compute.googleapis.com/instance/cpu/utilization", 'metric.labels.instance_name = "busy"')
    assert len(cpu) == 1
    ts = cpu[0]
    assert ts.resource.type == "gce_instance" and ts.resource.labels["zone"] == ZONE
    assert ts.metric.labels["instance_name"] == "busy"
    assert ts.resource.labels["instance_id"] == env.emu.model.get_instance(PROJECT, ZONE, "busy")["id"]
    values = [p.value.double_value for p in ts.points]
    assert values and 0.1 < max(values) <= 1.0  # one of 2 vCPUs busy -> about 0.5 (less on a loaded host)
    times = [p.interval.end_time.timestamp() for p in ts.points]
    assert times == sorted(times, reverse=True)

    idle_id = env.emu.model.get_instance(PROJECT, ZONE, "idle")["id"]
    idle = env.series("compute.googleapis.com/instance/cpu/utilization", f'resource.labels.instance_id = "{idle_id}"')
    assert len(idle) == 1 and max(p.value.double_value for p in idle[0].points) < min(0.2, max(values))

    uptime = env.series("compute.googleapis.com/instance/uptime")
    assert {t.metric.labels["instance_name"] for t in uptime} == {"busy", "idle"}
    assert all(0.5 < sum(p.value.double_value for p in t.points) < 10 for t in uptime)
    total = env.series("compute.googleapis.com/instance/uptime_total", 'metric.labels.instance_name = "idle"')
    assert total[0].points[0].value.int64_value >= 1
    mem = env.series("agent.googleapis.com/memory/percent_used", 'metric.labels.instance_name = "busy"')
    assert 0 < mem[0].points[0].value.double_value < 100
    disk = env.series("agent.googleapis.com/disk/percent_used", 'metric.labels.instance_name = "busy"')
    assert 0 < disk[0].points[0].value.double_value < 1

    # uptime survives deletion (usage reports), and sums per alignment period
    env.emu.model.wait(env.emu.model.delete_instance(PROJECT, ZONE, "busy"))
    agg = monitoring_v3.Aggregation(alignment_period={"seconds": 3600},
                                    per_series_aligner=monitoring_v3.Aggregation.Aligner.ALIGN_SUM)
    summed = env.series("compute.googleapis.com/instance/uptime", 'metric.labels.instance_name = "busy"',
                        aggregation=agg)
    assert len(summed) == 1 and len(summed[0].points) == 1 and summed[0].points[0].value.double_value > 1


def test_no_points_when_metrics_disabled_and_faults(env: Env) -> None:
    env.emu.model.wait(env.emu.model.insert_instance(PROJECT, ZONE, vm_body("vm", "sleep 300\n")))
    env.emu.model.set_metrics_enabled(False)
    assert env.series("compute.googleapis.com/instance/cpu/utilization") == []
    env.emu.model.set_metrics_enabled(True)
    assert len(env.series("compute.googleapis.com/instance/cpu/utilization")) == 1
    env.faults.add("monitoring", "http:429")
    with pytest.raises(gexc.ResourceExhausted):
        env.series("compute.googleapis.com/instance/uptime")
    env.faults.add("monitoring", "http:503")
    with pytest.raises(gexc.ServiceUnavailable):
        env.series("compute.googleapis.com/instance/uptime")
    with pytest.raises(gexc.InvalidArgument):
        env.client.list_time_series(name=f"projects/{PROJECT}", filter='resource.type = "gce_instance"',
                                    interval=monitoring_v3.TimeInterval(end_time={"seconds": int(time.time())}),
                                    view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL, retry=None)
