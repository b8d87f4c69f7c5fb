"""Client factories: the only place that knows whether we talk to Google or to the local cloud.

On GCP the official clients use Application Default Credentials and Google's
endpoints. On the local cloud the same clients get anonymous credentials and the
local endpoints, from config or from the running local cloud's state file. Nothing
else in lib/ branches on the backend.
"""

from __future__ import annotations

import functools
from typing import Any

from lib.config import Config
from lib.errors import OpsError

ADC_HINT = (
    "no Google credentials found: run `gcloud auth application-default login` "
    "(or set GOOGLE_APPLICATION_CREDENTIALS), or rehearse locally with `make demo`"
)


def resolve(cfg: Config) -> Config:
    """Fill in the local cloud's endpoints when the backend is local and none were configured."""
    if not cfg.local or (cfg.compute_endpoint and cfg.storage_endpoint and cfg.monitoring_endpoint):
        return cfg.require_project()
    from lib.localcloud import LocalCloudError, running_endpoints

    try:
        ep = running_endpoints(cfg.state_path)
    except LocalCloudError as exc:
        raise OpsError(str(exc)) from None
    return cfg.replace(
        compute_endpoint=cfg.compute_endpoint or ep["compute"],
        storage_endpoint=cfg.storage_endpoint or ep["storage"],
        monitoring_endpoint=cfg.monitoring_endpoint or ep["monitoring"],
    )


@functools.lru_cache(maxsize=8)
def credentials(cfg: Config) -> Any:
    """ADC on GCP (a clear message when there are none); anonymous on the local cloud."""
    if cfg.local:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        creds, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"], quota_project_id=None
        )
    except DefaultCredentialsError:
        raise OpsError(ADC_HINT) from None
    return creds


def _compute(cls_name: str, cfg: Config) -> Any:
    from google.cloud import compute_v1

    options = {"api_endpoint": cfg.compute_endpoint} if cfg.compute_endpoint else None
    client = getattr(compute_v1, cls_name)(credentials=credentials(cfg), client_options=options)
    if cls_name in OPERATION_CLIENTS:
        route_operations(client, cfg)
    return client


# The Compute clients whose calls return operations that lib/ waits on (`wait_operation`, `op.result()`).
OPERATION_CLIENTS = frozenset({"InstancesClient", "ImagesClient", "DisksClient"})


# -- the three places that reach into a client library's private attributes ---------------------------
# Gathered here so a library upgrade that moves them fails in one file, loudly (tests/test_clients.py
# checks each against the installed versions), instead of silently losing a feature.


class LibraryChanged(OpsError):
    """An installed Google library no longer has a private attribute the toolkit relies on."""


def _private(obj: Any, attr: str, what: str) -> Any:
    try:
        return getattr(obj, attr)
    except AttributeError:
        raise LibraryChanged(f"{type(obj).__module__}.{type(obj).__name__} has no {attr} any more ({what}): "
                             "the installed Google library differs from the pinned one; run `make venv`") from None


def route_operations(client: Any, cfg: Config) -> None:
    """Make a Compute client's extended operations poll our endpoint.

    `op.result()` polls through operation clients the transport built with the default
    endpoint; on the local cloud (or any endpoint override) it must use ours.
    """
    transport = _private(client, "_transport", "Compute operation polling")
    services = _private(transport, "_extended_operations_services", "Compute operation polling")
    services["zone_operations"] = compute_client("ZoneOperationsClient", cfg)
    services["global_operations"] = compute_client("GlobalOperationsClient", cfg)
    services["region_operations"] = compute_client("RegionOperationsClient", cfg)


def batch_responses(batch: Any) -> list[Any]:
    """The per-item HTTP responses of a finished GCS batch, in request order (the library keeps them private)."""
    return list(_private(batch, "_responses", "batched deletes"))


def widen_pool(client: Any, size: int) -> None:
    """Let a storage client keep `size` connections per host (requests keeps 10, so more threads would reconnect)."""
    import requests.adapters

    session = _private(client, "_http", "parallel downloads")
    if getattr(session, "_ops_hpc_pool", 0) >= size:
        return
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session._ops_hpc_pool = size


@functools.lru_cache(maxsize=64)
def compute_client(cls_name: str, cfg: Config) -> Any:
    """A google.cloud.compute_v1 REST client by class name, e.g. compute_client('InstancesClient', cfg)."""
    return _compute(cls_name, cfg)


def instances(cfg: Config) -> Any:
    return compute_client("InstancesClient", cfg)


def images(cfg: Config) -> Any:
    return compute_client("ImagesClient", cfg)


def zone_operations(cfg: Config) -> Any:
    return compute_client("ZoneOperationsClient", cfg)


def global_operations(cfg: Config) -> Any:
    return compute_client("GlobalOperationsClient", cfg)


@functools.lru_cache(maxsize=8)
def quotas(cfg: Config) -> Any:
    """A Cloud Quotas client (REST): per-family CPU quota; the local cloud serves it on its compute port."""
    from google.cloud import cloudquotas_v1

    options = {"api_endpoint": cfg.compute_endpoint} if cfg.compute_endpoint else None
    return cloudquotas_v1.CloudQuotasClient(credentials=credentials(cfg), transport="rest", client_options=options)


@functools.lru_cache(maxsize=8)
def storage(cfg: Config) -> Any:
    """A google.cloud.storage Client; on the local cloud it speaks to fake-gcs-server through its door."""
    from google.cloud import storage as gcs

    if cfg.storage_endpoint:
        return gcs.Client(
            project=cfg.project,
            credentials=credentials(cfg),
            client_options={"api_endpoint": cfg.storage_endpoint},
        )
    return gcs.Client(project=cfg.project, credentials=credentials(cfg))


STORAGE_API = "https://storage.googleapis.com"


def storage_http(cfg: Config, size: int) -> Any:
    """google-auth's urllib3 transport to the storage API, for whole small-object downloads.

    Same credentials and endpoint as `storage(cfg)`, a third of the CPU per request of the requests-based
    session under google-cloud-storage: a pull of thousands of recorder files is CPU-bound there (on 2 cores,
    2,000 files took 1.75 s of CPU instead of 0.68 s). What requests does for a PC on its own is kept: the
    proxy from the environment or Windows' settings, and REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE. urllib3's own
    retries are off: lib/retry.py is the one policy.
    """
    import os
    import urllib.request
    from urllib.parse import urlsplit

    import certifi
    import urllib3
    from google.auth.transport.urllib3 import AuthorizedHttp

    url = urlsplit(cfg.storage_endpoint or STORAGE_API)
    options: dict[str, Any] = {"maxsize": size, "retries": False, "timeout": urllib3.Timeout(connect=60, read=60)}
    if url.scheme == "https":
        options["ca_certs"] = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    proxy = None if urllib.request.proxy_bypass(url.hostname or "") else urllib.request.getproxies().get(url.scheme)
    http = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
    return AuthorizedHttp(credentials(cfg), http=http)


@functools.lru_cache(maxsize=8)
def monitoring(cfg: Config) -> Any:
    """Monitoring has no REST transport: gRPC to Google, or an insecure channel to the local fake."""
    from google.cloud import monitoring_v3

    if cfg.monitoring_endpoint:
        import grpc
        from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport

        channel = grpc.insecure_channel(cfg.monitoring_endpoint)
        return monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))
    return monitoring_v3.MetricServiceClient(credentials=credentials(cfg))
