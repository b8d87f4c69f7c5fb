"""Images: folders under <root>/images, created from a stopped boot disk or from another image."""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib.localcloud.compute.exceptions import (
    AlreadyExists,
    ConditionNotMet,
    InvalidValue,
    ResourceInUse,
    ResourceNotFound,
    ResourceNotReady,
)
from lib.localcloud.compute.models.base import ModelBase
from lib.localcloud.compute.models.filters import compile_filter
from lib.localcloud.compute.models.util import (
    GOOGLE,
    check_labels,
    check_name,
    disk_parts,
    fingerprint,
    folder_bytes,
    new_id,
    now_rfc3339,
    same_fingerprint,
)


class ImagesMixin(ModelBase):
    """Images are folders copied from a boot disk or another image; READY once the copy is done."""

    def _image_resource(self, project: str, name: str, *, family: str | None, disk_gb: int, folder: Path,
                        description: str = "", labels: dict[str, str] | None = None,
                        source_disk: str | None = None, source_image: str | None = None) -> dict[str, Any]:
        labels = labels or {}
        image: dict[str, Any] = {
            "kind": "compute#image", "id": new_id(), "creationTimestamp": now_rfc3339(), "name": name,
            "description": description, "sourceType": "RAW", "status": "READY",
            "archiveSizeBytes": str(folder_bytes(folder)), "diskSizeGb": str(disk_gb), "labels": labels,
            "labelFingerprint": fingerprint(labels), "selfLink": f"{GOOGLE}/projects/{project}/global/images/{name}",
            "storageLocations": ["us"], "architecture": "X86_64",
        }
        if family:
            image["family"] = family
        if source_disk:
            image["sourceDisk"] = source_disk
        if source_image:
            image["sourceImage"] = source_image
        return image

    def get_image(self, project: str, name: str) -> dict[str, Any]:
        with self.lock:
            image = self.images.get(f"{project}/{name}")
            if image is None:
                raise ResourceNotFound(f"projects/{project}/global/images/{name}")
            return copy.deepcopy(image)

    def image_from_family(self, project: str, family: str) -> dict[str, Any]:
        """Newest READY image of the family that is not deprecated, as getFromFamily answers."""
        with self.lock:
            images = [i for k, i in self.images.items() if k.split("/", 1)[0] == project and i.get("family") == family
                      and i.get("status") == "READY" and "deprecated" not in i]
            if not images:
                raise ResourceNotFound(f"projects/{project}/global/images/family/{family}")
            return copy.deepcopy(max(images, key=lambda i: (i["creationTimestamp"], i["name"])))

    def resolve_image(self, ref: str) -> tuple[str, dict[str, Any]]:
        """'projects/P/global/images/NAME' or '.../images/family/F' (URL or relative) -> (project, image)."""
        m = re.search(r"projects/([^/]+)/global/images/(?:(family)/)?([^/]+)$", ref)
        if not m:
            raise InvalidValue(f"Invalid value for field 'sourceImage': '{ref}'. The URL is malformed.")
        project, is_family, name = m.group(1), m.group(2), m.group(3)
        image = self.image_from_family(project, name) if is_family else self.get_image(project, name)
        if image.get("status") != "READY":
            raise ResourceNotReady(f"The resource 'projects/{project}/global/images/{image['name']}' is not ready")
        state = image.get("deprecated", {}).get("state")
        if state in ("OBSOLETE", "DELETED"):
            raise InvalidValue(f"The resource 'projects/{project}/global/images/{name}' is {state.lower()}")
        return project, image

    def list_images(self, project: str, flt: str | None = None) -> list[dict[str, Any]]:
        match = compile_filter(flt)
        with self.lock:
            items = [copy.deepcopy(i) for k, i in self.images.items() if k.split("/", 1)[0] == project and match(i)]
        return sorted(items, key=lambda i: i["name"])

    def insert_image(self, project: str, body: dict[str, Any], *, force_create: bool = False,
                     request_id: str | None = None) -> dict[str, Any]:
        """Image from a boot disk folder (instance stopped unless forceCreate) or from another image."""

        def work() -> dict[str, Any]:
            name = body.get("name") or ""
            check_name(name, "resource.name")
            labels = check_labels(body.get("labels") or {})
            source_disk, source_image = body.get("sourceDisk"), body.get("sourceImage")
            with self.lock:
                if f"{project}/{name}" in self.images:
                    raise AlreadyExists(f"projects/{project}/global/images/{name}")
                if source_disk:
                    dp, dz, dn = disk_parts(source_disk, project)
                    src_folder = self.disk_dir(dp, dz, dn)
                    owner = self._disk_owner(dp, dz, dn)
                    if owner is None or not src_folder.exists():
                        raise ResourceNotFound(f"projects/{dp}/zones/{dz}/disks/{dn}")
                    _, inst = owner
                    if inst["status"] not in ("TERMINATED", "STOPPED") and not force_create:
                        raise ResourceInUse(
                            f"The disk resource 'projects/{dp}/zones/{dz}/disks/{dn}' is already being used by "
                            f"'projects/{dp}/zones/{dz}/instances/{inst['name']}'")
                    disk_gb = int(self._boot_disk(inst).get("diskSizeGb", 10))
                    source_link = f"{self.zone_link(dp, dz)}/disks/{dn}"
                    src_image_link = None
                elif source_image:
                    ip, img = self.resolve_image(source_image)
                    src_folder = self.image_dir(ip, img["name"])
                    disk_gb = int(img["diskSizeGb"])
                    source_link, src_image_link = None, img["selfLink"]
                else:
                    raise InvalidValue("Invalid value for field 'resource': exactly one of sourceDisk, sourceImage "
                                       "must be specified (the local cloud supports these two).")
                dest = self.image_dir(project, name)
                if dest.exists():
                    shutil.rmtree(dest)
                dest.mkdir(parents=True)
                image = self._image_resource(project, name, family=body.get("family"), disk_gb=disk_gb, folder=dest,
                                             description=body.get("description", ""), labels=labels,
                                             source_disk=source_link, source_image=src_image_link)
                image["status"] = "PENDING"  # while the folder copies, without the lock
                self.images[f"{project}/{name}"] = image

            def copy_folder() -> None:  # without the lock: images are large
                try:
                    shutil.copytree(src_folder, dest, symlinks=True, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("console.log") if source_disk else None)
                except OSError as exc:
                    with self.lock:
                        self.images.pop(f"{project}/{name}", None)
                    shutil.rmtree(dest, ignore_errors=True)
                    raise InvalidValue(f"Could not create image '{name}': {exc}") from None
                with self.lock:
                    image.update({"status": "READY", "archiveSizeBytes": str(folder_bytes(dest))})

            return self._pending(project, None, "insert", image["selfLink"], image["id"], [copy_folder])

        return self._idempotent(project, request_id, work)

    def _disk_owner(self, project: str, zone: str, disk: str) -> tuple[str, dict[str, Any]] | None:
        for key, inst in self.instances.items():
            for d in inst["disks"]:
                if disk_parts(d["source"]) == (project, zone, disk):
                    return key, inst
        return None

    def deprecate_image(self, project: str, name: str, body: dict[str, Any],
                        request_id: str | None = None) -> dict[str, Any]:
        state = body.get("state") or "ACTIVE"
        if state not in ("ACTIVE", "DEPRECATED", "OBSOLETE", "DELETED"):
            raise InvalidValue(f"Invalid value for field 'deprecationStatusResource.state': '{state}'.")

        def apply(image: dict[str, Any]) -> None:
            if state == "ACTIVE":
                image.pop("deprecated", None)
            else:
                image["deprecated"] = {"state": state, **{k: body[k] for k in
                                                           ("replacement", "deprecated", "obsolete", "deleted")
                                                           if body.get(k)}}

        return self._update_image(project, name, "deprecate", lambda _image: None, apply, request_id)

    def set_image_labels(self, project: str, name: str, body: dict[str, Any],
                         request_id: str | None = None) -> dict[str, Any]:
        labels = check_labels(body.get("labels") or {})

        def check(image: dict[str, Any]) -> None:
            if not same_fingerprint(body.get("labelFingerprint"), image["labelFingerprint"]):
                raise ConditionNotMet("Labels fingerprint either invalid or resource labels have changed")

        def apply(image: dict[str, Any]) -> None:
            image["labels"] = dict(labels)
            image["labelFingerprint"] = fingerprint(labels)

        return self._update_image(project, name, "setLabels", check, apply, request_id)

    def delete_image(self, project: str, name: str, request_id: str | None = None) -> dict[str, Any]:
        """DELETING until the operation removes the folder."""

        def mark(image: dict[str, Any]) -> None:
            image["status"] = "DELETING"

        def remove(image: dict[str, Any]) -> None:
            self.images.pop(f"{project}/{name}", None)
            shutil.rmtree(self.image_dir(project, name), ignore_errors=True)

        return self._update_image(project, name, "delete", mark, remove, request_id)

    def _update_image(self, project: str, name: str, op_type: str, now: Callable[[dict[str, Any]], None],
                      later: Callable[[dict[str, Any]], None], request_id: str | None) -> dict[str, Any]:
        """`now` checks (or marks) at request time; `later` applies when the operation runs (it re-checks too)."""

        def find() -> dict[str, Any]:
            image = self.images.get(f"{project}/{name}")
            if image is None:
                raise ResourceNotFound(f"projects/{project}/global/images/{name}")
            return image

        def work() -> dict[str, Any]:
            with self.lock:
                image = find()
                now(image)

            def step() -> None:
                with self.lock:
                    current = find()
                    if op_type != "delete":
                        now(current)
                    later(current)

            return self._pending(project, None, op_type, image["selfLink"], image["id"], [step])

        return self._idempotent(project, request_id, work)
