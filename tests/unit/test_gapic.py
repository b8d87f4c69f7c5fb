"""google-cloud-compute through lib.gapic: the same classes, without importing ~100 unused clients."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.bins import REPO

PROBE = """
import sys, lib
from google.cloud import compute_v1 as c
from google.cloud.compute_v1.services.instances import client as direct
assert c.InstancesClient is direct.InstancesClient
from google.cloud.compute_v1.types import compute
assert c.Instance is compute.Instance and c.Scheduling.ProvisioningModel is compute.Scheduling.ProvisioningModel
assert c.ZoneOperationsClient.__module__.endswith("services.zone_operations.client")
assert c.types.compute is compute and c.gapic_version.__version__
unused = [m for m in sys.modules if m.startswith("google.cloud.compute_v1.services.network_attachments")]
print(len(unused))
"""


def test_compute_names_resolve_to_the_library_classes_and_unused_clients_stay_unimported():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_an_unknown_name_is_an_attribute_error():
    from google.cloud import compute_v1

    assert {"InstancesClient", "RegionsClient", "Instance"} <= set(dir(compute_v1))

    with pytest.raises(AttributeError):
        compute_v1.NoSuchThing  # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        compute_v1.NoSuchClient  # noqa: B018
