"""The opensees-hpc images: create from a build VM's disk, list, archive (deprecate), restore, delete.

Archive = DEPRECATED, not deleted: the image stays usable by name but the family no longer picks it,
so a bad build is rolled back by archiving the newest image, and undone by restoring it. Delete only
touches images ops-hpc made (label ops-hpc=true or in our family), never someone else's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from lib import clients, compute, retry
from lib.config import Config
from lib.errors import OpsError, Refused
from lib.log import Log

LABELS = {"ops-hpc": "true", "ops-hpc-kind": "opensees-hpc"}
OP_TIMEOUT_S = 1800.0  # imaging a 200 GB disk takes minutes on GCP


def to_dict(image: Any, cfg: Config | None = None) -> dict[str, Any]:
    """A compute_v1.Image as a plain dict: name, family, created, size, status, deprecated, labels, ours."""
    labels = dict(image.labels)
    deprecated = image.deprecated.state if image.deprecated and image.deprecated.state else ""
    return {
        "name": image.name,
        "family": image.family,
        "created": image.creation_timestamp,
        "size": int(image.archive_size_bytes or 0),
        "disk_size_gb": int(image.disk_size_gb or 0),
        "status": image.status,
        "deprecated": deprecated,
        "description": image.description,
        "labels": labels,
        "ours": labels.get("ops-hpc") == "true" or (cfg is not None and image.family == cfg.image_family),
        "self_link": image.self_link,
    }


def _project(cfg: Config) -> str:
    return cfg.image_project_id


def get_image(cfg: Config, name: str) -> dict[str, Any] | None:
    from google.api_core import exceptions as gexc

    cfg = clients.resolve(cfg)
    try:
        return to_dict(retry.google(clients.images(cfg).get, project=_project(cfg), image=name), cfg)
    except gexc.NotFound:
        return None


def list_images(cfg: Config, *, all_images: bool = False) -> list[dict[str, Any]]:
    """Our images (label or family), newest first; all_images=True lists the whole project."""
    cfg = clients.resolve(cfg)

    def fetch() -> list[Any]:
        return list(clients.images(cfg).list(project=_project(cfg), retry=None))

    images = [to_dict(i, cfg) for i in retry.call(fetch)]
    if not all_images:
        images = [i for i in images if i["ours"]]
    return sorted(images, key=lambda i: (i["created"], i["name"]), reverse=True)


def create_from_disk(cfg: Config, source_disk: str, image_name: str, *, description: str = "",
                     on_log: Log = print) -> dict[str, Any]:
    """An image in cfg.image_family from a (stopped) VM's boot disk, labelled ours."""
    from google.cloud import compute_v1 as c

    cfg = clients.resolve(cfg)
    body = c.Image(name=image_name, family=cfg.image_family, source_disk=source_disk, labels=dict(LABELS),
                   description=description or "OpenSees + OpenSeesMP built by ops-hpc")
    on_log(f"creating image {image_name} (family {cfg.image_family}) from {source_disk.rsplit('/', 1)[-1]}")
    request_id = str(uuid.uuid4())  # one request however often the insert is retried
    request = c.InsertImageRequest(project=_project(cfg), image_resource=body, request_id=request_id)
    op = retry.google(clients.images(cfg).insert, request=request)
    compute.wait_operation(op, f"creating image {image_name}", timeout=OP_TIMEOUT_S)
    image = get_image(cfg, image_name)
    if image is None:
        raise OpsError(f"image {image_name} was created but cannot be read back")
    on_log(f"image {image_name} ready ({image['size'] / 1e6:.1f} MB)")
    return image


def _require_ours(cfg: Config, name: str, verb: str) -> dict[str, Any]:
    image = get_image(cfg, name)
    if image is None:
        raise Refused(f"image {name} does not exist in project {_project(cfg)}")
    if not image["ours"]:
        raise Refused(f"refusing to {verb} image {name}: it is not an ops-hpc image (no ops-hpc=true label and "
                       f"not in family {cfg.image_family})")
    return image


def _deprecate(cfg: Config, name: str, state: str) -> None:
    from google.cloud import compute_v1 as c

    cfg = clients.resolve(cfg)
    status = c.DeprecationStatus(state=state)
    request = c.DeprecateImageRequest(project=_project(cfg), image=name, deprecation_status_resource=status,
                                      request_id=str(uuid.uuid4()))
    op = retry.google(clients.images(cfg).deprecate, request=request)
    compute.wait_operation(op, f"setting image {name} to {state}", timeout=OP_TIMEOUT_S)


def archive(cfg: Config, name: str, *, on_log: Log = print) -> dict[str, Any]:
    """Deprecate: the family stops choosing it; runs fall back to the previous image (if any)."""
    _require_ours(cfg, name, "archive")
    _deprecate(cfg, name, "DEPRECATED")
    on_log(f"archived image {name} (DEPRECATED: `image restore {name}` undoes it)")
    return get_image(cfg, name) or {}


def restore(cfg: Config, name: str, *, on_log: Log = print) -> dict[str, Any]:
    """Clear the deprecation: the image is eligible for its family again."""
    _require_ours(cfg, name, "restore")
    _deprecate(cfg, name, "ACTIVE")
    on_log(f"restored image {name}")
    return get_image(cfg, name) or {}


def delete(cfg: Config, name: str, *, on_log: Log = print,
           on_confirm: Callable[[str], bool] | None = None) -> bool:
    """Delete one of our images (after on_confirm, when given); False if the user declined."""
    image = _require_ours(cfg, name, "delete")
    if on_confirm is not None and not on_confirm(f"delete image {name} (created {image['created']})?"):
        on_log("nothing deleted")
        return False
    from google.cloud import compute_v1 as c

    cfg = clients.resolve(cfg)
    request = c.DeleteImageRequest(project=_project(cfg), image=name, request_id=str(uuid.uuid4()))
    op = retry.google(clients.images(cfg).delete, request=request)
    compute.wait_operation(op, f"deleting image {name}", timeout=OP_TIMEOUT_S)
    on_log(f"deleted image {name}")
    return True
