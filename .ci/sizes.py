"""Measure what `pip install ops-hpc` puts on a PC (no extras) and what the dev venv weighs.

Builds the wheel, installs it into a fresh temporary venv, reports its site-packages size (goal: under
250 MB), checks that the installed `ops-hpc` runs and carries bin/ and vm-scripts/ as data, then reports
the size of the repository's .venv (all extras). Needs PyPI; `make sizes` runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_MB = 250


def size_mb(folder: Path) -> float:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total / 1e6


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
                       check=True)
        wheel = next(tmp_path.glob("ops_hpc-*.whl"))
        env_dir = tmp_path / "venv"
        venv.create(env_dir, with_pip=True)
        bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
        python = bindir / "python"
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True)
        site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        pip_mb = sum(size_mb(p) for p in site.glob("pip*"))
        runtime = size_mb(site) - pip_mb
        helped = subprocess.run([str(bindir / "ops-hpc"), "--help"], capture_output=True, text=True, cwd=tmp)
        data = subprocess.run([str(python), "-c", "from lib import paths; print(paths.CHECKOUT, "
                               "(paths.VM_SCRIPTS / 'startup.sh').is_file(), (paths.BIN / 'pull').is_file())"],
                              capture_output=True, text=True, cwd=tmp)
    dev = size_mb(REPO / ".venv") if (REPO / ".venv").is_dir() else float("nan")
    print(f"runtime install (no extras, pip itself excluded): {runtime:.0f} MB (goal < {GOAL_MB} MB)")
    print(f"dev .venv (local + dev extras): {dev:.0f} MB")
    print(f"installed ops-hpc --help: exit {helped.returncode}; checkout?, vm-scripts, bin present: {data.stdout.strip()}")
    ok = runtime < GOAL_MB and helped.returncode == 0 and data.stdout.strip() == "False True True"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
