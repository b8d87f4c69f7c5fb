"""The private attributes of the Google libraries that lib/clients.py relies on still exist in the installed versions.

If one of these fails after a library upgrade, the feature named in the failure (operation polling on
a custom endpoint, batched deletes, parallel downloads) would otherwise break silently.
"""

from __future__ import annotations

import pytest
import requests

from lib import clients, storage
from lib.config import Config


@pytest.fixture
def offline_cfg() -> Config:
    return Config.load({"backend": "local", "compute_endpoint": "http://127.0.0.1:9", "storage_endpoint":
                        "http://127.0.0.1:9", "monitoring_endpoint": "127.0.0.1:9"}, env={}, path="")


def test_compute_operations_poll_the_configured_endpoint(offline_cfg):
    for name in clients.OPERATION_CLIENTS:
        client = clients.compute_client(name, offline_cfg)
        services = client._transport._extended_operations_services
        polling = services["zone_operations"]._transport._host
        assert "127.0.0.1:9" in polling, f"{name}: operations would poll {polling}"


def test_widen_pool_mounts_a_bigger_pool_on_the_storage_session(offline_cfg):
    gcs = clients.storage(offline_cfg)
    clients.widen_pool(gcs, 32)
    adapter = gcs._http.get_adapter("https://storage.googleapis.com/")
    assert isinstance(adapter, requests.adapters.HTTPAdapter) and adapter._pool_maxsize == 32


def test_batch_responses_are_the_per_item_answers(bucket):
    """A real batch against the local cloud: one answer per delete, in order, each with its status."""
    storage.upload_bytes(bucket, "a.txt", b"a")
    gcs = clients.storage(clients.resolve(bucket))
    batch = gcs.batch(raise_exception=False)
    with batch:
        gcs.bucket(bucket.bucket_name).blob("a.txt").delete(retry=None)
        gcs.bucket(bucket.bucket_name).blob("missing.txt").delete(retry=None)
    answers = [r.status_code for r in clients.batch_responses(batch)]
    assert len(answers) == 2 and answers[0] < 300 and answers[1] == 404, answers


def test_a_missing_private_attribute_fails_loudly():
    with pytest.raises(clients.LibraryChanged, match="_responses.*make venv"):
        clients.batch_responses(object())
