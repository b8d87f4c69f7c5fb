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


# ------------------------------------------------- the small-object transport keeps what requests did for a PC


def _gcs_cfg(endpoint: str = "https://storage.googleapis.com") -> Config:
    return Config.load({"backend": "local", "compute_endpoint": "http://127.0.0.1:9", "storage_endpoint": endpoint,
                        "monitoring_endpoint": "127.0.0.1:9"}, env={}, path="")


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY",
                 "all_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_small_object_transport_goes_through_the_environment_proxy(no_proxy_env):
    import urllib3

    no_proxy_env.setenv("HTTPS_PROXY", "http://proxy.corp.example:3128")
    no_proxy_env.setenv("REQUESTS_CA_BUNDLE", "/etc/corp/ca.pem")
    http = clients.storage_http(_gcs_cfg(), 12).http
    assert isinstance(http, urllib3.ProxyManager)
    assert (http.proxy.host, http.proxy.port) == ("proxy.corp.example", 3128)
    assert http.connection_pool_kw["ca_certs"] == "/etc/corp/ca.pem"  # the corporate CA, as requests would use
    assert http.connection_pool_kw["maxsize"] == 12
    assert http.connection_pool_kw["retries"].total is False  # lib/retry.py is the one retry policy


def test_small_object_transport_honours_no_proxy_and_certifi(no_proxy_env):
    import certifi
    import urllib3

    no_proxy_env.setenv("HTTPS_PROXY", "http://proxy.corp.example:3128")
    no_proxy_env.setenv("NO_PROXY", "storage.googleapis.com")
    http = clients.storage_http(_gcs_cfg(), 4).http
    assert not isinstance(http, urllib3.ProxyManager)
    assert http.connection_pool_kw["ca_certs"] == certifi.where()


def test_a_pull_behind_a_forwarding_proxy(bucket, tmp_path, no_proxy_env):
    """Every storage request of a pull, the small-object GETs included, goes through the user's HTTP proxy."""
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    from lib import results
    from tests.support.results import put_tree, recorder_files

    seen: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            url = urlsplit(self.path)  # a forward proxy gets the absolute URL
            seen.append(f"{self.command} {url.path}")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            upstream = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
            upstream.request(self.command, url.path + (f"?{url.query}" if url.query else ""), body or None, headers)
            resp = upstream.getresponse()
            data = resp.read()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            upstream.close()

        do_POST = do_DELETE = do_PUT = do_PATCH = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    files = recorder_files(6, "p")
    put_tree(bucket, "Proxied_20261121-101500", files)
    try:
        no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
        report = results.pull(bucket, tmp_path / "out", settle=0)
    finally:
        server.shutdown()
        server.server_close()
    assert report.ok and [o.status for o in report.outcomes] == ["cleaned"], report.to_dict()
    gets = [s for s in seen if s.startswith("GET /download/storage/v1/")]
    assert len(gets) == len(files), seen  # each small object came through the proxy
    for rel, data in files.items():
        assert (tmp_path / "out" / "Proxied_20261121-101500" / rel).read_bytes() == data
