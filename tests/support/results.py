"""Builders shared by the results tests: zip and tree sets in a bucket, and 'nothing escaped' checks."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path

import google_crc32c

from lib import storage
from lib.config import Config


def crc(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def manifest_for(files: dict[str, bytes], *, run_id: str = "run-1", model: str = "frame", state: str = "ok") -> dict:
    return {"format": 1, "run_id": run_id, "model": model, "state": state, "exit_code": 0 if state == "ok" else 1,
            "started": "2026-11-21T10:15:00Z", "finished": "2026-11-21T10:16:00Z", "seconds": 60.0,
            "files": [{"path": p, "size": len(d), "crc32c": crc(d)} for p, d in sorted(files.items())]}


def make_zip(files: dict[str, bytes], *, with_manifest: bool = True, manifest: dict | None = None,
             raw: list[tuple[zipfile.ZipInfo | str, bytes]] = ()) -> bytes:
    """A result zip: `files`, MANIFEST.json at the root (unless told otherwise), then `raw` members verbatim."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        if with_manifest:
            zf.writestr("MANIFEST.json", json.dumps(manifest or manifest_for(files)))
        for info, data in raw:
            zf.writestr(info, data)
    return buf.getvalue()


def put(cfg: Config, name: str, data: bytes) -> int:
    """Upload one object directly (bypassing lib.storage's name-safety expectations); returns its generation."""
    blob = storage.bucket(cfg).blob(name)
    blob.upload_from_string(data, content_type="application/octet-stream")
    return blob.generation


def put_tree(cfg: Config, prefix: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        put(cfg, f"{prefix}/{rel}", data)


def names(cfg: Config) -> list[str]:
    return sorted(b.name for b in storage.list_blobs(cfg))


def recorder_files(n: int = 5, tag: str = "") -> dict[str, bytes]:
    """Small recorder-like outputs, with a subfolder."""
    files = {f"Node_Disp_{i}.out": f"{tag}{i} 0.0 0.1 0.2\n".encode() * (50 + i) for i in range(n)}
    files["sub/Element_Force.out"] = f"{tag}force 1 2 3\n".encode() * 80
    return files


def assert_same_files(folder: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (folder / rel).read_bytes() == data, rel


def assert_nothing_escaped(parent: Path, folder: Path) -> None:
    """`parent` holds only `folder`: nothing was written beside or above the results folder."""
    assert sorted(p.name for p in parent.iterdir()) == [folder.name]


def temp_leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith((".part", ".tmp"))]
