"""A real process holding a VMGuard, for the signal tests: create VM, enter the guard, print 'ready', block.

usage: python tests/guard_child.py NAME [--guard-first]   (config from OPS_HPC_* environment)

--guard-first enters the guard before creating the VM, as the pipelines do (the guard covers the insert
itself); it prints 'guarded' first, so a test can interrupt the insert.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib import compute
from lib.config import Config
from lib.guard import VMGuard


def main() -> int:
    name = sys.argv[1]
    cfg = Config.load(path="")
    spec = compute.plan_vm(cfg, name=name, kind="build", run_id="guard-child", startup_script="sleep 600")
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if "--guard-first" in sys.argv:
        with VMGuard(cfg, name, on_log=lambda line: print(line, flush=True)):
            print("guarded", flush=True)
            compute.create_vm(cfg, spec, on_log=log)
            print("ready", flush=True)
            while True:
                time.sleep(0.05)
    compute.create_vm(cfg, spec, on_log=log)
    with VMGuard(cfg, name, on_log=lambda line: print(line, flush=True)):
        print("ready", flush=True)
        while True:
            time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
