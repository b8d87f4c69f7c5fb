"""One grammar for run ids and VM names (lib/naming.py), used by every pipeline."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from lib import naming
from lib.errors import UsageError


def test_run_id_format():
    run_id = naming.new_run_id(dt.datetime(2026, 1, 21, 9, 30, tzinfo=dt.timezone.utc))
    assert re.fullmatch(r"run-20260121-093000-[0-9a-f]{4}", run_id)
    assert naming.check_run_id(run_id) == run_id
    with pytest.raises(UsageError):
        naming.check_run_id("Run 7!")


@pytest.mark.parametrize(("args", "name"), [
    (("run-20260121-093000-ab12",), "ops-hpc-20260121-093000-ab12"),
    (("run-20260121-093000-ab12", "analysis", 2), "ops-hpc-20260121-093000-ab12-2"),
    (("run-20260121-093000-ab12", "analysis", 2, 1), "ops-hpc-20260121-093000-ab12-2-r1"),
    (("run-20260121-093000-ab12", "analysis", None, 3), "ops-hpc-20260121-093000-ab12-r3"),
    (("run-20260121-093000-ab12", "build"), "ops-hpc-build-20260121-093000-ab12"),
    (("nightly", "analysis"), "ops-hpc-nightly"),
])
def test_vm_name_grammar(args, name):
    assert naming.vm_name(*args) == name


def test_vm_name_refuses_what_gce_would():
    with pytest.raises(UsageError):
        naming.vm_name("run-x", "gpu")
    with pytest.raises(UsageError):
        naming.vm_name("x" * 60)

