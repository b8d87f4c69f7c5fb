"""Check that a wheel of ops-hpc installs from wheels alone on every platform its users have.

Builds the project's wheel, then asks pip to resolve it (no extras: what `pip install ops-hpc` on a PC
needs for real GCP) for each platform and Python 3.10-3.13 with `--only-binary=:all:`, so a dependency
without a wheel for that platform fails here instead of on a user's machine. With the local extra it also
checks that the local cloud installs where OpenSees has wheels. Needs PyPI. `make check-platforms` runs it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
PLATFORMS = {
    "Windows x64": ["win_amd64"],
    "macOS arm64": ["macosx_14_0_arm64"],
    "macOS x86_64": ["macosx_13_0_x86_64"],
    "Linux x86_64": ["manylinux_2_28_x86_64"],
    "Linux aarch64": ["manylinux_2_28_aarch64"],
}
WITH_LOCAL = {"Windows x64", "Linux x86_64"}  # where OpenSees (the local cloud's VMs) has wheels


def build_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)], check=True)
    return next(out.glob("ops_hpc-*.whl"))


def resolve(wheel: Path, platform: list[str], python: str, extra: str = "") -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as target:
        argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--only-binary=:all:",
                "--python-version", python, "--target", target, "--ignore-installed",
                *[f"--platform={p}" for p in platform], f"{wheel}{extra}"]
        proc = subprocess.run(argv, capture_output=True, text=True)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return proc.returncode == 0, last


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(Path(tmp))
        jobs = [(name, python, "") for name in PLATFORMS for python in PYTHONS]
        jobs += [(name, python, "[local]") for name in sorted(WITH_LOCAL) for python in PYTHONS]
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda job: (job, resolve(wheel, PLATFORMS[job[0]], job[1], job[2])), jobs))
    failed = 0
    for (name, python, extra), (ok, why) in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name:<14} Python {python} {extra or '(runtime)':<10} {'' if ok else why}")
        failed += not ok
    print(f"{len(results) - failed}/{len(results)} platform/Python combinations resolve to wheels only")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
