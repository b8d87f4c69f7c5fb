"""Pure parts of the Compute emulator, no server: the list filter language and machine-type shapes."""

from __future__ import annotations

import pytest

from lib.localcloud.compute.exceptions import InvalidValue
from lib.localcloud.compute.models.filters import compile_filter
from lib.localcloud.compute.models.util import parse_machine_type

ZONE = "us-central1-a"



@pytest.mark.parametrize("flt,expected", [
    ('labels.env = "prod"', True), ("labels.env=prod", True), ("labels.env = dev", False),
    ("name = vm-1 status = RUNNING", True), ("name=vm-1 AND status=TERMINATED", False),
    ("(labels.env = prod) (labels.team = a)", True), ('(name = "vm-*") OR (name = x)', True),
    ("labels.missing != x", True), ("zone = us-central1-a", True), ("name eq vm-.*", True),
    ("NOT labels.env = prod", False), ("scheduling.preemptible = true", True),
])
def test_list_filter(flt: str, expected: bool) -> None:
    resource = {"name": "vm-1", "status": "RUNNING", "labels": {"env": "prod", "team": "a"},
                "zone": f"https://www.googleapis.com/compute/v1/projects/p/zones/{ZONE}",
                "scheduling": {"preemptible": True}}
    assert compile_filter(flt)(resource) is expected


def test_machine_types() -> None:
    assert parse_machine_type("c2d-standard-32")["guestCpus"] == 32
    assert parse_machine_type("n2-standard-8")["memoryMb"] == 32768
    assert parse_machine_type("h3-standard-88")["metric"] == "H3_CPUS"
    assert parse_machine_type("c3-highcpu-22")["guestCpus"] == 22
    assert parse_machine_type("n2-custom-8-32768")["memoryMb"] == 32768
    assert parse_machine_type("e2-micro")["guestCpus"] == 2
    for bad in ("e2-standard-3", "zz-standard-4", "h3-standard-8", "n2-custom-7-1024", "e2"):
        assert parse_machine_type(bad) is None


def test_list_filter_matches_any_element_of_a_list_field_and_quoted_values() -> None:
    resource = {"name": "vm 1", "tags": {"items": ["web", "hpc"]}, "status": "RUNNING"}
    assert compile_filter("tags.items = hpc")(resource)
    assert not compile_filter("tags.items = db")(resource)
    assert compile_filter('name = "vm 1"')(resource)
    assert compile_filter("name:vm")(resource) and compile_filter("tags:*")(resource)
    assert compile_filter("status ne RUN.*")(resource) is False
    assert compile_filter("NOT (status = RUNNING OR name = x)")(resource) is False


@pytest.mark.parametrize("flt", ["", "   ", None])
def test_empty_filter_matches_everything(flt: str | None) -> None:
    assert compile_filter(flt)({"name": "anything"})


@pytest.mark.parametrize("flt", ["name =", "(name = a", "name = a)", "= a", "name = a OR", "NOT"])
def test_malformed_filter_is_a_400_naming_the_filter(flt: str) -> None:
    with pytest.raises(InvalidValue) as err:
        compile_filter(flt)
    assert err.value.code == 400 and "Invalid list filter expression" in err.value.message
