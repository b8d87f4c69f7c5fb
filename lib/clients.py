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
    # Extended operations' .result() polls through operation clients the transport builds
    # with the default endpoint; hand it ours so .result() works against any endpoint.
    services = getattr(client._transport, "_extended_operations_services", None)
    if services is not None and cls_name not in ("ZoneOperationsClient", "GlobalOperationsClient", "RegionOperationsClient"):
        services["zone_operations"] = compute_client("ZoneOperationsClient", cfg)
        services["global_operations"] = compute_client("GlobalOperationsClient", cfg)
        services["region_operations"] = compute_client("RegionOperationsClient", cfg)
    return client


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
